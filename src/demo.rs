//! `clawmesh-exporter demo`: the simulator and the exporter in one process,
//! talking real HTTP over loopback. No key, no network.

use crate::config::RunArgs;
use crate::env::ProcessEnv;
use crate::secret::Secret;
use crate::sim::{Incident, Latitude, SimConfig, Simulator, WebhookSettings, DEMO_KEY};

/// `latitude`: what the simulator does beyond its defaults (`--latitude`,
/// `--clock-offset`); `incident`: a part of the fleet going wrong.
pub async fn run(
    mut args: RunArgs,
    latitude: Latitude,
    incident: Option<Incident>,
) -> anyhow::Result<()> {
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    let sim = Simulator::new(SimConfig {
        latitude,
        incident: incident.clone(),
        ..SimConfig::default()
    });
    // The demo shows where: breakdowns by provider, model, team and env,
    // unless the command line chose its own.
    let chosen = args.breakdown.breakdown_provider
        || args.breakdown.breakdown_model
        || !args.breakdown.breakdown_agent_labels.is_empty()
        || !args.breakdown.breakdown_task_labels.is_empty();
    if !chosen {
        args.breakdown.breakdown_provider = true;
        args.breakdown.breakdown_model = true;
        args.breakdown.breakdown_agent_labels = vec!["team".into(), "env".into()];
    }
    let breakdowns = describe_breakdowns(&args, chosen);
    tokio::spawn(sim.clone().serve(sim_listener));

    // Loopback and a 5 s poll are the demo's own defaults (`DemoArgs`).
    args.api.api_url = format!("http://{sim_addr}/v1");
    let mut cfg = args.validate_with_key_in(Secret::new(DEMO_KEY), &ProcessEnv)?;
    // Webhooks on, in-process: the simulator delivers signed events to the
    // exporter's receiver with a secret made for this run.
    if cfg.webhook.is_none() {
        let made = format!("whsec_demo_{:032x}", rand::random::<u128>());
        cfg.webhook = Some(
            args.webhook
                .config(vec![Secret::new(made)])
                .map_err(anyhow::Error::msg)?,
        );
    }
    let webhook_secret = cfg
        .webhook
        .as_ref()
        .and_then(|w| w.secrets.first())
        .map(|s| s.expose().to_string())
        .unwrap_or_default();
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
    let hook = format!(
        "http://127.0.0.1:{}{}",
        running.addr.port(),
        crate::webhook::PATH
    );
    sim.set_webhooks(WebhookSettings {
        url: hook.clone(),
        secret: webhook_secret,
        ..WebhookSettings::default()
    });
    println!("ClawMesh exporter demo");
    println!("  metrics:      {m}");
    println!("  simulator:    http://{sim_addr}/v1 (key {DEMO_KEY})");
    println!("  ground truth: http://{sim_addr}/_sim/ground_truth");
    println!("  webhooks:     the simulator delivers signed events to {hook}");
    println!("  breakdowns:   {breakdowns}");
    // The workspace totals (series with at most one label beside
    // `workspace`): a screenful, where every sliced series would be some
    // two thousand lines.
    println!("  try:          curl -s {m} | grep -E '{TOTALS}'");
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
    match &incident {
        Some(i) => println!("  {}", i.describe()),
        None => println!(
            "  incident:     none (try --incident provider-outage or --incident heartbeat-loss)"
        ),
    }
    println!("Ctrl-C stops.");
    crate::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

/// What the banner's example keeps: `clawmesh_up`, open and finished tasks
/// and the breakdown values per dimension, for the workspace as a whole.
const TOTALS: &str = r#"^clawmesh_(up|tasks|tasks_finished_total|breakdown_values)\{workspace="[^"]*"(,[a-z_]+="[^"]*")?\}"#;

/// The breakdowns in force, for the banner: the demo's own unless the
/// command line chose some.
fn describe_breakdowns(args: &RunArgs, chosen: bool) -> String {
    let mut on = Vec::new();
    if args.breakdown.breakdown_provider {
        on.push("provider".to_string());
    }
    if args.breakdown.breakdown_model {
        on.push("model".to_string());
    }
    if !args.breakdown.breakdown_agent_labels.is_empty() {
        on.push(format!(
            "agent labels ({})",
            args.breakdown.breakdown_agent_labels.join(", ")
        ));
    }
    if !args.breakdown.breakdown_task_labels.is_empty() {
        on.push(format!(
            "task labels ({})",
            args.breakdown.breakdown_task_labels.join(", ")
        ));
    }
    let on = if on.is_empty() {
        "none".to_string()
    } else {
        on.join(", ")
    };
    if chosen {
        format!("{on} (from the command line)")
    } else {
        format!("{on} (the demo's; any --breakdown.* flag replaces them)")
    }
}
