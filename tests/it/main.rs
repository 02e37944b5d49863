//! All integration tests, compiled into one test binary (ripgrep style).
//! Each module tests one part against the real binary, real files and real
//! sockets on loopback.

mod demo;
mod support;
mod service;
mod support_upstream;
mod upstream;
mod dashboard;
mod channel;
mod enrich;
mod simulate;
mod tail_harness;
mod tail_cases;
mod tail_random;
mod tail_kill;
mod lag;
mod status;
mod parse;
mod upstream_tls;
