//! `clawmesh-exporter demo`: the simulator and the exporter in one process,
//! talking real HTTP over loopback. No key, no network.

use crate::config::{ProcessEnv, RunArgs};
use crate::secret::Secret;
use crate::sim::{SimConfig, Simulator, DEMO_KEY};
use std::time::Duration;

pub async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    let sim = Simulator::new(SimConfig::default());
    tokio::spawn(sim.serve(sim_listener));

    args.api_url = format!("http://{sim_addr}/v1");
    // The demo should move visibly within seconds, and stay on loopback,
    // unless the user asked otherwise.
    if args.poll_interval == Duration::from_secs(15) {
        args.poll_interval = Duration::from_secs(5);
    }
    if args.listen_address == ":9817" {
        args.listen_address = "127.0.0.1:9817".into();
    }
    let cfg = args.validate_with_key_in(Secret::new(DEMO_KEY), &ProcessEnv)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (choose another with --web.listen-address)",
                cfg.listen
            )
        })?;
    let running = crate::exporter::start(&cfg, listener).await?;
    let m = format!("http://{}{}", running.addr, cfg.telemetry_path);
    println!("ClawMesh exporter demo");
    println!("  metrics:      {m}");
    println!("  simulator:    http://{sim_addr}/v1 (key {DEMO_KEY})");
    println!("  ground truth: http://{sim_addr}/_sim/ground_truth");
    println!("  try:          curl -s {m} | grep -E '^clawmesh_(agents|tasks)'");
    match &cfg.otlp {
        Some(o) => println!(
            "  otlp:         {} ({:?}, every {}, {:?})",
            o.endpoint,
            o.protocol,
            humantime::format_duration(o.interval),
            o.temporality
        ),
        None => println!(
            "  otlp:         off (try --otlp.endpoint http://127.0.0.1:4317 --otlp.protocol grpc)"
        ),
    }
    println!("Ctrl-C stops.");
    crate::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}
