//! Bad input at the command line: one readable line, exit code 2.

use std::process::Command;

fn run(args: &[&str], key: Option<&str>) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clawmesh-exporter"));
    c.env_clear().args(args);
    if let Some(k) = key {
        c.env("CLAWMESH_API_KEY", k);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_flags_are_one_line_and_exit_code_2() {
    for (args, needle) in [
        (&["--poll-interval", "soon"][..], "--poll-interval"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--log.format", "xml"][..], "xml"),
        (&["--tasks.overlap", "1s"][..], "visibility lag"),
        (
            &["--api-key", "secret-on-the-command-line"][..],
            "--api-key",
        ),
    ] {
        let (code, err) = run(args, Some("k"));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("secret-on-the-command-line"),
            "echoed a key given as a flag: {err}"
        );
    }
}

#[test]
fn bad_simulator_latitude_is_one_line_and_exit_code_2() {
    for (args, needle) in [
        (
            &["simulate", "--latitude", "late-everything"][..],
            "late-everything",
        ),
        (&["demo", "--latitude", "whole-seconds,bogus"][..], "bogus"),
        (
            &["simulate", "--clock-offset", "soon"][..],
            "--clock-offset",
        ),
        (&["demo", "--clock-offset", "--15s"][..], "--clock-offset"),
    ] {
        let (code, err) = run(args, None);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn simulator_latitude_flags_parse() {
    use clap::Parser;
    use clawmesh_exporter::config::{Cli, Command};
    use clawmesh_exporter::sim::Latitude;
    let cli = Cli::try_parse_from([
        "clawmesh-exporter",
        "simulate",
        "--latitude",
        "all",
        "--clock-offset",
        "-15s",
    ])
    .unwrap();
    let Some(Command::Simulate(s)) = cli.command else {
        panic!("not simulate")
    };
    assert_eq!(s.latitude.to_latitude(), Latitude::all(-15_000));
    let cli = Cli::try_parse_from([
        "clawmesh-exporter",
        "demo",
        "--latitude",
        "late-metrics,lag-always-max",
        "--clock-offset=+1m",
    ])
    .unwrap();
    let Some(Command::Demo(d)) = cli.command else {
        panic!("not demo")
    };
    let l = d.latitude.to_latitude();
    assert!(l.late_metrics && l.lag_always_max && !l.whole_second_stamps);
    assert_eq!(l.clock_offset_ms, 60_000);
    let cli = Cli::try_parse_from(["clawmesh-exporter", "simulate"]).unwrap();
    let Some(Command::Simulate(s)) = cli.command else {
        panic!("not simulate")
    };
    assert_eq!(s.latitude.to_latitude(), Latitude::default());
}

#[test]
fn a_missing_key_says_where_to_put_one() {
    let (code, err) = run(&[], None);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("CLAWMESH_API_KEY") && err.contains("--api-key-file"),
        "{err}"
    );
}

#[test]
fn flags_can_come_from_the_environment() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clawmesh-exporter"));
    let out = c
        .env_clear()
        .env("CLAWMESH_API_KEY", "k")
        .env("CLAWMESH_POLL_INTERVAL", "never")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never"));
}

#[test]
fn help_and_version_exit_0() {
    for a in ["--help", "--version"] {
        let out = Command::new(env!("CARGO_BIN_EXE_clawmesh-exporter"))
            .arg(a)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    }
}
