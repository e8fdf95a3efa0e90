//! clawmesh-exporter: ClawMesh fleet metrics for Prometheus and OpenTelemetry.
//!
//! Data flows one way: `api -> poll -> fleet -> metrics -> expose | otlp`, and
//! the `hub` hands rendered results to the `server` and snapshots to `otlp`.
//! See ARCHITECTURE.md.

pub mod api;
pub mod config;
pub mod config_file;
pub mod demo;
pub mod env;
pub mod exporter;
pub mod expose;
pub mod files;
pub mod fleet;
pub mod histogram;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod poll;
pub mod prices;
pub mod secret;
pub mod server;
pub mod shard;
pub mod sim;
pub mod storage;
pub mod supervise;
pub mod text;
pub mod units;
pub mod webconfig;
pub mod webhook;

/// Resolves on SIGTERM or Ctrl-C (kept here by its old name; it lives with
/// the other process-wide supervision in `supervise`).
pub use supervise::shutdown_signal;
