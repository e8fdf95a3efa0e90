//! CLI wiring only: parse, set up logging, dispatch.

use clap::Parser;
use clawmesh_exporter::config::{Cli, Command};
use clawmesh_exporter::env::ProcessEnv;
use clawmesh_exporter::logging::{self, LogFormat, LogLevel};
use clawmesh_exporter::sim::cli::SimArgs;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayVersion => {
            println!("{}", clawmesh_exporter::config::version_line());
            return ExitCode::SUCCESS;
        }
        Err(e) if !e.use_stderr() => {
            // --help
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // clap's own parse errors (an unknown flag, a value of the wrong
        // type) come before the log format is known: one plain line.
        Err(e) => return usage_error(&e.to_string()),
    };
    // Logging first: every later failure, a bad value or configuration
    // file included, is a line in the chosen format that a pipeline parses.
    // check-config is a report for a person (like `promtool check config`).
    let log = match &cli.command {
        Some(Command::CheckConfig { .. }) => None,
        Some(Command::Simulate(_)) => Some((LogLevel::Info, LogFormat::Logfmt)),
        Some(Command::Demo(args)) => Some((args.run.log_level, args.run.log_format)),
        None => Some((cli.run.log_level, cli.run.log_format)),
    };
    if let Some((level, format)) = log {
        logging::init(level, format);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(err = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = dispatch(cli, &runtime);
    // What had to finish did (the server, the last OTLP push); a reload
    // still reading a file on a hung mount is not waited for.
    runtime.shutdown_background();
    code
}

fn dispatch(cli: Cli, runtime: &tokio::runtime::Runtime) -> ExitCode {
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            // The file named here, else the one the exporter would read.
            let Some(file) = file.or(cli.run.config_file.clone()) else {
                return usage_error(
                    "check-config: no file to check: name it (check-config clawmesh.yml), or set --config.file or CLAWMESH_CONFIG_FILE",
                );
            };
            let files = match cli.run.file_limits() {
                Ok(f) => f,
                Err(e) => return usage_error(&e.to_string()),
            };
            match clawmesh_exporter::config_file::check(&file, &ProcessEnv, &files) {
                // And the price table its `prices:` names (the flags winning).
                Ok(report) => match cli.run.check_prices(&file, &ProcessEnv) {
                    Ok(prices) => {
                        println!("{report}");
                        if let Some(prices) = prices {
                            println!("{prices}");
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{}: {}", file.display(), one_line(&e));
                        ExitCode::from(2)
                    }
                },
                Err(problems) => {
                    for p in &problems.0 {
                        eprintln!("{}: {p}", file.display());
                    }
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Simulate(sim)) => report(runtime.block_on(simulate(sim))),
        Some(Command::Demo(args)) => {
            let latitude = args.latitude.to_latitude();
            let incident = args.latitude.incident.clone();
            report(runtime.block_on(clawmesh_exporter::demo::run(args.run, latitude, incident)))
        }
        None => {
            let cfg = match cli.run.validate(&ProcessEnv) {
                Ok(c) => c,
                Err(e) => return fatal("invalid configuration", &e.to_string()),
            };
            runtime.block_on(async {
                let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
                    Ok(l) => l,
                    Err(e) => return fatal("cannot start", &format!("cannot listen on {}: {e}", cfg.listen)),
                };
                let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(%address, path = %cfg.telemetry_path, version = clawmesh_exporter::metrics::version(), "serving metrics");
                // Listened to from now: a SIGTERM while the keys are still
                // being checked is a clean stop too.
                let stop = clawmesh_exporter::shutdown_signal();
                tokio::pin!(stop);
                let started = tokio::select! {
                    r = clawmesh_exporter::exporter::start(&cfg, listener) => r,
                    _ = &mut stop => {
                        tracing::info!("shutting down before the start finished");
                        return ExitCode::SUCCESS;
                    }
                };
                match started {
                    Ok(running) => {
                        stop.await;
                        tracing::info!("shutting down");
                        running.shutdown().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => fatal("cannot start", &e.to_string()),
                }
            })
        }
    }
}

async fn simulate(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "ClawMesh simulator on http://{addr}/v1 (key {})",
        clawmesh_exporter::sim::DEMO_KEY
    );
    println!("ground truth: http://{addr}/_sim/ground_truth");
    let sim = clawmesh_exporter::sim::Simulator::new(cfg);
    tokio::select! {
        r = sim.serve(listener) => r?,
        _ = clawmesh_exporter::shutdown_signal() => {}
    }
    Ok(())
}

/// A bad flag, config or key: one line, exit code 2.
fn usage_error(msg: &str) -> ExitCode {
    eprintln!("clawmesh-exporter: {}", one_line(msg));
    ExitCode::from(2)
}

/// A bad value, configuration or key once logging is set up: one log line
/// in the chosen format (`msg` what failed, `err` why), exit code 2.
fn fatal(msg: &str, err: &str) -> ExitCode {
    tracing::error!(err = %one_line(err), "{msg}");
    ExitCode::from(2)
}

/// clap's message in one line: what is wrong, what is missing and its
/// "did you mean" tip, without the usage that follows.
fn one_line(msg: &str) -> String {
    let kept: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let mut line = String::new();
    for l in kept {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(l.strip_prefix("error: ").unwrap_or(l));
    }
    line
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(err = %format!("{e:#}"), "stopped by an error");
            ExitCode::FAILURE
        }
    }
}
