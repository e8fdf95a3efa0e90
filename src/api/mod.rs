//! The ClawMesh API client. The only module that knows reqwest and the JSON.

pub mod types;
