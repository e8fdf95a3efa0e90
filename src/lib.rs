//! clawmesh-exporter: ClawMesh fleet metrics for Prometheus and OpenTelemetry.
//!
//! Data flows one way: `api -> poll -> fleet -> metrics -> expose`.
//! See ARCHITECTURE.md.

pub mod api;
pub mod histogram;
pub mod secret;
pub mod sim;
