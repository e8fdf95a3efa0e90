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
    let spend = demo_spend(&mut cfg);
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
    println!("  spend:        {spend}");
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

/// The demo workspace's monthly budget, in the example table's currency:
/// sized so that the default demo stays below every budget alert.
pub const DEMO_MONTHLY_BUDGET: &str = "1500000";
/// The demo's daily budget.
pub const DEMO_DAILY_BUDGET: &str = "50000";

/// The price table the demo prices with (unless `--prices.file` names
/// another): the simulator's own models at their list prices, in our YAML.
fn demo_prices_yaml() -> &'static str {
    // The example table the repository ships: the simulator's four models
    // at the prices its ground truth uses, and a few more.
    include_str!("../deploy/prices.example.yaml")
}

/// Price the demo with its example table and hold its workspace to a
/// `demo` budget, unless the command line named a table; the banner's
/// line. A table or budget the demo cannot read leaves spend unpriced
/// (said in the banner) rather than stopping the demo.
fn demo_spend(cfg: &mut crate::config::Config) -> String {
    if let Some(s) = &cfg.prices.source {
        return format!(
            "priced with {} ({}, {} entries)",
            s.file.display(),
            cfg.prices.table.currency(),
            cfg.prices.table.entries()
        );
    }
    let table = match crate::prices::PriceTable::parse(
        demo_prices_yaml().as_bytes(),
        "the demo's price table",
        &crate::prices::PriceOptions::default(),
    ) {
        Ok(t) => t,
        Err(e) => {
            return format!(
                "not priced (the demo's price table is refused: {})",
                e.join("; ")
            )
        }
    };
    let currency = table.currency().to_string();
    let mut line = format!(
        "priced with the demo's example table ({currency}, {} entries)",
        table.entries()
    );
    cfg.prices.table = std::sync::Arc::new(table);
    let amounts = crate::prices::Money::parse_decimal(DEMO_MONTHLY_BUDGET, 0).and_then(|m| {
        Ok((
            m,
            crate::prices::Money::parse_decimal(DEMO_DAILY_BUDGET, 0)?,
        ))
    });
    match amounts {
        Ok((monthly, daily)) => {
            for w in &mut cfg.workspaces {
                w.poll.budgets = vec![crate::fleet::BudgetConfig {
                    name: "demo".into(),
                    matches: Default::default(),
                    monthly: Some(monthly),
                    daily: Some(daily),
                }];
            }
            line.push_str(&format!(
                "; budget demo: {DEMO_MONTHLY_BUDGET} {currency} a month, {DEMO_DAILY_BUDGET} a day"
            ));
        }
        Err(e) => line.push_str(&format!("; no budget ({DEMO_MONTHLY_BUDGET:?}: {e})")),
    }
    line
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo prices every model of the simulator at the price its
    /// ground truth uses, and its budgets hold the default fleet below
    /// every budget alert (docs/spend.md: a month's amount above 744 times
    /// the hourly spend, a day's above 24 times; the simulator's own test
    /// keeps its default fleet under 1,500 USD an hour).
    #[test]
    fn the_demo_prices_with_its_table_and_holds_a_budget() {
        let table = crate::prices::PriceTable::parse(
            demo_prices_yaml().as_bytes(),
            "demo",
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("the demo's table: {e:?}"));
        assert_eq!(table.currency(), "USD");
        let at = crate::api::types::Timestamp::from_micros(1_800_000_000_000_000);
        for p in crate::sim::SimConfig::default().prices {
            let got = table
                .lookup(&p.provider, &p.model, at)
                .unwrap_or_else(|| panic!("{}/{} is not in the demo's table", p.provider, p.model));
            let per_million = |t: &str| crate::prices::Money::parse_decimal(t, -6).unwrap();
            assert_eq!(got.input, per_million(&p.input_per_million), "{}", p.model);
            assert_eq!(
                got.output,
                per_million(&p.output_per_million),
                "{}",
                p.model
            );
        }
        let p = table.lookup("anthropic", "claude-sonnet-4", at).unwrap();
        // 3 and 15 per million tokens.
        assert_eq!(p.input, crate::prices::Money(3 * 10u128.pow(21)));
        assert_eq!(p.output, crate::prices::Money(15 * 10u128.pow(21)));
        let monthly = crate::prices::Money::parse_decimal(DEMO_MONTHLY_BUDGET, 0).unwrap();
        let daily = crate::prices::Money::parse_decimal(DEMO_DAILY_BUDGET, 0).unwrap();
        let usd = |n: u128| crate::prices::Money(n * 10u128.pow(crate::prices::MONEY_DIGITS));
        assert!(monthly > usd(744 * 1500), "the demo's month would page");
        assert!(daily > usd(24 * 1500), "the demo's day would page");
    }
}
