//! All integration tests, compiled into one test binary (ripgrep style).
//! Each module tests one part against the real binary, real files and real
//! sockets on loopback.

mod channel;
mod config_report;
mod dashboard;
mod demo;
mod enrich;
mod export;
mod faults;
mod file_safety;
mod fleet;
mod footprint;
mod fuzz;
mod hostile_files;
mod hostile_net;
mod kafka;
mod lag;
mod lag_report;
mod otlp;
mod parse;
mod prometheus;
mod recovery;
mod replay;
mod safety;
mod service;
mod service_ops;
mod simulate;
mod status;
mod status_listener;
mod support;
mod support_kafka;
mod support_tools;
mod support_upstream;
mod tail_cases;
mod tail_harness;
mod tail_kill;
mod tail_random;
mod upstream;
mod upstream_tls;
