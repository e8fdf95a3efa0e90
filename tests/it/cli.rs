//! Bad input at the command line: one readable line, exit code 2.

use crate::util::{bin, said, temp_file};

fn run(args: &[&str], key: Option<&str>) -> (Option<i32>, String) {
    let mut c = bin();
    c.args(args);
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
        (&["--storage.interval", "5s"][..], "--storage.path"),
        (
            &["--storage.path", "/tmp", "--storage.interval", "0s"][..],
            "--storage.interval",
        ),
        (
            &["--storage.path", "/tmp", "--storage.interval", "2m"][..],
            "--storage.interval",
        ),
        (
            &["--storage.path", "/proc/clawmesh-no-such-dir"][..],
            "--storage.path",
        ),
        (
            &["--storage.path", "/tmp", "--storage.max-size", "1KiB"][..],
            "--storage.max-size",
        ),
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
    let mut c = bin();
    let out = c
        .env("CLAWMESH_API_KEY", "k")
        .env("CLAWMESH_POLL_INTERVAL", "never")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never"));
}

#[test]
fn bad_otlp_compression_and_client_certificates_are_one_line_and_exit_code_2() {
    let crt = temp_file(
        "otlp-client.crt",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let bad_key = temp_file(
        "otlp-client.key",
        "-----BEGIN PRIVATE KEY-----\nkey_canary_31c7!!\n-----END PRIVATE KEY-----\n",
    );
    let (crt, bad_key) = (crt.to_str().unwrap(), bad_key.to_str().unwrap());
    let endpoint = ["--otlp.endpoint", "https://127.0.0.1:4318"];
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--otlp.compression", "brotli"], vec![], "brotli"),
        (
            vec![],
            vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")],
            "OTEL_EXPORTER_OTLP_COMPRESSION \"brotli\": expected one of none, gzip",
        ),
        (
            vec!["--otlp.client-certificate", crt],
            vec![],
            "--otlp.client-key",
        ),
        (
            vec!["--otlp.client-key", bad_key],
            vec![],
            "--otlp.client-certificate",
        ),
        (
            vec!["--otlp.client-certificate", "/nonexistent/client.crt"],
            vec![("OTEL_EXPORTER_OTLP_CLIENT_KEY", bad_key)],
            "/nonexistent/client.crt",
        ),
        (
            vec![
                "--otlp.client-certificate",
                crt,
                "--otlp.client-key",
                bad_key,
            ],
            vec![],
            "no PEM",
        ),
    ];
    for (flags, vars, needle) in cases {
        let mut args = endpoint.to_vec();
        args.extend(flags);
        let mut env = vec![("CLAWMESH_API_KEY", "k")];
        env.extend(vars);
        let (code, _, err) = run_env(&args, &env);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            said(&err).contains(needle),
            "{args:?} wants {needle}: {err}"
        );
        assert!(!err.contains("canary"), "the key file shows: {err}");
    }
}

#[test]
fn help_and_version_exit_0() {
    for a in ["--help", "--version"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clawmesh-exporter"))
            .arg(a)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    }
}

// ---- the small frictions a new user met ----

fn run_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut c = bin();
    c.args(args).envs(env.iter().copied());
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_config_without_a_file_says_what_is_missing_and_honours_the_environment() {
    let (code, _, err) = run_env(&["check-config"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("no file to check") && err.contains("CLAWMESH_CONFIG_FILE"),
        "{err}"
    );
    let good = temp_file("env.yml", "workspaces:\n  - name: a\n    api_key_env: K\n");
    let (code, out, err) = run_env(
        &["check-config"],
        &[("CLAWMESH_CONFIG_FILE", good.to_str().unwrap()), ("K", "k")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("OK, 1 workspace(s): a"), "{out}");
    // The argument wins over the environment.
    let (code, _, err) = run_env(
        &["check-config", "/nonexistent/named.yml"],
        &[("CLAWMESH_CONFIG_FILE", good.to_str().unwrap())],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/named.yml"), "{err}");
}

#[test]
fn a_missing_file_is_named_once() {
    for (args, path) in [
        (
            &["--config.file", "/nonexistent/c.yml"][..],
            "/nonexistent/c.yml",
        ),
        (
            &["check-config", "/nonexistent/d.yml"][..],
            "/nonexistent/d.yml",
        ),
        (
            &["--api-key-file", "/nonexistent/key"][..],
            "/nonexistent/key",
        ),
        (
            &["--web.config.file", "/nonexistent/w.yml"][..],
            "/nonexistent/w.yml",
        ),
    ] {
        let (code, _, err) = run_env(args, &[("CLAWMESH_API_KEY", "k")]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert_eq!(err.matches(path).count(), 1, "{args:?}: {err}");
        assert!(err.contains("No such file"), "{args:?}: {err}");
    }
}

#[test]
fn a_bad_default_is_reported_once() {
    let f = temp_file(
        "defaults.yml",
        "defaults:\n  poll_interval: fast\nworkspaces:\n  - name: a\n    api_key_env: K\n  - name: b\n    api_key_env: K\n  - name: c\n    api_key_env: K\n",
    );
    let (code, _, err) = run_env(&["check-config", f.to_str().unwrap()], &[("K", "k")]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("defaults.poll_interval: bad duration \"fast\""),
        "{err}"
    );
    let (code, _, err) = run_env(&["--config.file", f.to_str().unwrap()], &[("K", "k")]);
    assert_eq!(code, Some(2));
    assert_eq!(err.matches("poll_interval").count(), 1, "{err}");
}

#[test]
fn clap_s_did_you_mean_tip_is_kept_on_the_one_line() {
    let (code, _, err) = run_env(&["--poll-intervall", "5s"], &[("CLAWMESH_API_KEY", "k")]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("'--poll-intervall'")
            && err.contains("tip: a similar argument exists: '--poll-interval'"),
        "{err}"
    );
    let (code, _, err) = run_env(&["chek-config"], &[("CLAWMESH_API_KEY", "k")]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("check-config"), "{err}");
}

/// The help paragraph of `flag` in `--help` output.
fn help_of(help: &str, flag: &str) -> String {
    let start = help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("{flag} not in help"));
    help[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn log_flags_have_help_text() {
    let (_, help, _) = run_env(&["--help"], &[]);
    for flag in ["--log.level", "--log.format"] {
        let text = help_of(&help, flag);
        let first = text.lines().next().unwrap_or("").trim();
        assert!(
            !first.is_empty() && !first.starts_with('['),
            "{flag} has no help text:\n{text}"
        );
    }
}

#[test]
fn demo_help_shows_the_demo_s_own_defaults() {
    let (code, help, _) = run_env(&["demo", "--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(
        help_of(&help, "--web.listen-address").contains("[default: 127.0.0.1:9817]"),
        "{help}"
    );
    assert!(
        help_of(&help, "--poll-interval").contains("[default: 5s]"),
        "{help}"
    );
    // The exporter's own defaults are unchanged.
    let (_, help, _) = run_env(&["--help"], &[]);
    assert!(help_of(&help, "--web.listen-address").contains("[default: :9817]"));
    assert!(help_of(&help, "--poll-interval").contains("[default: 15s]"));
}

#[test]
fn the_readme_and_the_shipped_prometheus_config_agree() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let file = std::fs::read_to_string(root.join("deploy/prometheus/prometheus.yml")).unwrap();
    let section = &readme[readme.find("## Pointing Prometheus at it").unwrap()..];
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let ours: serde_norway::Value = serde_norway::from_str(block).unwrap();
    let shipped: serde_norway::Value = serde_norway::from_str(&file).unwrap();
    let job = |v: &serde_norway::Value| v["scrape_configs"][0].clone();
    for k in ["job_name", "scrape_interval", "scrape_timeout"] {
        assert_eq!(job(&ours)[k], job(&shipped)[k], "{k} differs");
    }
    // Both say what the file is: a complete configuration.
    assert!(shipped.get("rule_files").is_some() && shipped.get("global").is_some());
    assert!(
        !file.to_lowercase().contains("snippet"),
        "the file calls itself a snippet"
    );
    assert!(readme.contains("`deploy/prometheus/prometheus.yml` is a complete"));
}

#[test]
fn every_flag_is_documented_in_the_readme() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The flag tables: docs/configuration.md, and the webhook, OTLP and breakdown ones.
    let readme: String = ["configuration", "webhooks", "otlp", "metrics"]
        .iter()
        .map(|page| std::fs::read_to_string(root.join(format!("docs/{page}.md"))).unwrap())
        .collect();
    let (_, help, _) = run_env(&["--help"], &[]);
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '=', ',']).next().unwrap())
        .filter(|f| !matches!(*f, "help" | "version"))
        .collect();
    assert!(flags.len() > 20, "{flags:?}");
    let missing: Vec<_> = flags
        .iter()
        .filter(|f| !readme.contains(&format!("`--{f}")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags without a row in docs/{{configuration,webhooks,otlp,metrics}}.md: {missing:?}"
    );
}

/// What a new user reads first: every flag and argument of every command
/// says what it does, `[env: NAME]` carries no stray `=` (nor the value of
/// a variable that is set), and --version names the revision and the day
/// of the build, as Prometheus' exporters do.
#[test]
fn every_flag_of_every_command_has_help_text_and_an_env_without_a_stray_equals() {
    for (command, at_least) in [
        (vec![], 80),
        (vec!["simulate"], 13),
        (vec!["demo"], 80),
        (vec!["check-config"], 2),
    ] {
        let mut args = command.clone();
        args.push("--help");
        let (code, help, err) = run_env(&args, &[("CLAWMESH_POLL_INTERVAL", "7s")]);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!help.contains("=]"), "{args:?}: a stray = in:\n{help}");
        assert!(
            !help.contains("7s"),
            "{args:?}: the environment's value shows:\n{help}"
        );
        let lines: Vec<&str> = help.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        let (mut in_options, mut entries) = (false, 0);
        for (i, l) in lines.iter().enumerate() {
            if l.is_empty() {
                continue;
            }
            if !l.starts_with(' ') {
                in_options = matches!(l.trim_end(), "Options:" | "Arguments:");
                continue;
            }
            if !in_options || l.trim().is_empty() || indent(l) >= 10 {
                continue;
            }
            entries += 1;
            // Short entries carry their help on the same line.
            let same_line = l.trim().split_once("  ").map(|(_, h)| h.trim());
            let first = same_line
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    lines[i + 1..]
                        .iter()
                        .take_while(|n| n.trim().is_empty() || indent(n) >= 10)
                        .find(|n| !n.trim().is_empty())
                        .map(|n| n.trim())
                })
                .unwrap_or("");
            assert!(
                !first.is_empty() && !first.starts_with('['),
                "{args:?}: {} has no help text",
                l.trim()
            );
        }
        assert!(
            entries >= at_least,
            "{args:?}: read only {entries} entries:\n{help}"
        );
    }
}

#[test]
fn version_names_the_revision_and_the_build_date() {
    let (code, out, err) = run_env(&["--version"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let line = out.trim_end();
    let prefix = format!(
        "clawmesh-exporter, version {} (revision: ",
        env!("CARGO_PKG_VERSION")
    );
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"));
    let (revision, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", date: "))
        .unwrap_or_else(|| panic!("no revision and date in {line:?}"));
    let hash = revision.strip_suffix("-dirty").unwrap_or(revision);
    let built_from_git = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    if built_from_git {
        assert!(
            hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "revision {revision:?} is not a short git hash"
        );
    } else {
        assert_eq!(revision, "unknown");
    }
    let parts: Vec<&str> = date.split('-').collect();
    assert!(
        parts.len() == 3
            && [4, 2, 2] == [parts[0].len(), parts[1].len(), parts[2].len()]
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "date {date:?} is not YYYY-MM-DD"
    );
}

/// build.rs, compiled on its own and run as cargo runs it: in `dir`, with
/// `CARGO_MANIFEST_DIR` there. Its `cargo:` lines.
fn build_script_in(script: &std::path::Path, dir: &std::path::Path, epoch: &str) -> Vec<String> {
    let out = std::process::Command::new(script)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("CARGO_MANIFEST_DIR", dir)
        .env("SOURCE_DATE_EPOCH", epoch)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The revision is this package's repository's, or "unknown": a source
/// tarball unpacked inside some other git repository (a packaging tree, a
/// home directory kept in git) took that repository's HEAD. The build
/// reruns on this branch's commits, not on any branch's (every commit in
/// another worktree rebuilt this one), and SOURCE_DATE_EPOCH sets the date.
#[test]
fn version_revision_is_the_packages_own_repository_or_unknown() {
    let (Some(git), Some(rustc)) = (
        crate::util::require_tool("git"),
        crate::util::require_tool("rustc"),
    ) else {
        return;
    };
    let d = crate::util::temp_dir("buildrs");
    let script = d.join("build-script");
    let built = std::process::Command::new(&rustc)
        .args(["--edition", "2021", "-o"])
        .arg(&script)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/build.rs"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let repo = d.join("repo");
    let tarball = repo.join("unpacked");
    std::fs::create_dir_all(&tarball).unwrap();
    std::fs::write(repo.join("tracked"), "x").unwrap();
    std::fs::write(tarball.join("Cargo.toml"), "").unwrap();
    let git_in = |args: &[&str]| {
        let o = std::process::Command::new(&git)
            .current_dir(&repo)
            .env("HOME", &repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {o:?}");
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    git_in(&["init", "-q", "-b", "trunk"]);
    git_in(&["add", "tracked"]);
    git_in(&["commit", "-q", "-m", "one"]);
    let head = git_in(&["rev-parse", "--short=12", "HEAD"]);

    let own = build_script_in(&script, &repo, "951782400");
    assert!(
        own.contains(&format!("cargo:rustc-env=CLAWMESH_GIT_REVISION={head}")),
        "{own:?}"
    );
    assert!(
        own.contains(&"cargo:rustc-env=CLAWMESH_BUILD_DATE=2000-02-29".to_string()),
        "{own:?}"
    );
    let watched: Vec<&String> = own
        .iter()
        .filter(|l| l.starts_with("cargo:rerun-if-changed="))
        .collect();
    assert!(
        watched.iter().any(|l| l.ends_with("refs/heads/trunk")),
        "{watched:?}"
    );
    assert!(
        !watched.iter().any(|l| l.ends_with("refs/heads")),
        "the whole refs/heads is watched: {watched:?}"
    );

    let inside = build_script_in(&script, &tarball, "0");
    assert!(
        inside.contains(&"cargo:rustc-env=CLAWMESH_GIT_REVISION=unknown".to_string()),
        "a tarball inside another repository took its revision: {inside:?}"
    );
    assert!(
        inside.contains(&"cargo:rustc-env=CLAWMESH_BUILD_DATE=1970-01-01".to_string()),
        "{inside:?}"
    );
    assert!(
        !inside.iter().any(|l| l.contains(".git")),
        "the other repository's files are watched: {inside:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The demo's banner, up to its last line, and the demo still running.
fn demo_banner(extra: &[&str]) -> (std::process::Child, Vec<String>) {
    use std::io::BufRead;
    let mut child = bin()
        .arg("demo")
        .args([
            "--web.listen-address",
            &format!("127.0.0.1:{}", crate::util::free_port()),
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let last = l == "Ctrl-C stops.";
            let _ = tx.send(l);
            if last {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    while banner.last().is_none_or(|l| l != "Ctrl-C stops.") {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l) => banner.push(l),
            Err(e) => {
                let _ = child.kill();
                panic!("no whole banner ({e}): {banner:?}");
            }
        }
    }
    (child, banner)
}

fn banner_line<'a>(banner: &'a [String], key: &str) -> &'a str {
    banner
        .iter()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {banner:?}"))
        .trim()
}

#[test]
fn the_demo_says_which_breakdowns_it_turns_on_and_its_example_prints_a_screenful() {
    let (mut child, banner) = demo_banner(&[]);
    let breakdowns = banner_line(&banner, "breakdowns:").to_string();
    let metrics = banner_line(&banner, "metrics:").to_string();
    let example = banner_line(&banner, "try:").to_string();
    let run = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let shown = crate::util::require_tool("curl")
        .map(|_| (run(&example), run(&format!("curl -s {metrics}"))));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        breakdowns,
        "provider, model, agent labels (team, env) (the demo's; any --breakdown.* flag replaces them)"
    );
    if let Some((shown, all)) = shown {
        let lines = shown.lines().count();
        assert!(
            (5..=24).contains(&lines),
            "`{example}` printed {lines} lines, not a screenful:\n{shown}"
        );
        assert!(
            shown.contains("clawmesh_up{workspace=\"ws_sim\"} "),
            "{shown}"
        );
        assert!(
            all.lines().count() > 10 * lines,
            "the whole exposition is not much longer: the example shows nothing special"
        );
    }
    let (mut child, banner) = demo_banner(&["--breakdown.provider"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        banner_line(&banner, "breakdowns:"),
        "provider (from the command line)"
    );
}
