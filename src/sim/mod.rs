//! Simulated Local Edition traffic: a seeded [`Generator`] of API calls,
//! each rendered in any input format together with the record a correct
//! parser must produce from it, and a [`run`] loop that writes them into a
//! directory at a given rate, rotating files the way Local Edition does.
//!
//! Operators use it (through `calllog-bridge simulate`) to try the bridge
//! without a Local Edition; tests and benchmarks use [`Generator`],
//! [`SimCall::render`] and [`SimCall::expected`] directly.
//!
//! The simulated estate (services, endpoints, keys, plans, packages,
//! organizations) matches the lookup tables shipped in `examples/lookups/`,
//! so enriching `le-json` output with them fills every name. A few ids come
//! from the reference samples, so the same tables also enrich those.
//!
//! Invariant: the same seed gives the same calls (ids, statuses, timings);
//! only `request_time` follows the clock the caller passes in.

mod call;
mod estate;
#[cfg(test)]
mod tests;
mod writer;

pub use call::*;
pub use estate::*;
pub use writer::*;
