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
