//! Operator inputs that could hang or exhaust the process: a config, key,
//! secret or web-config file that is a device, a FIFO, huge or nested
//! 100,000 deep is refused in one line at start and refused on reload (the
//! old configuration keeps running, memory stays bounded); SIGTERM does not
//! wait for a reload; webhook event ids are bounded.

use crate::util::*;
use clawmesh_exporter::sim::{SimConfig, DEMO_KEY};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bad files an operator could name by mistake (or an attacker plant).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bad {
    DevZero,
    Fifo,
    /// 4 GiB, sparse: reading it would take seconds and all the memory.
    Huge,
    /// `[` 100,000 times: quadratic work for the YAML parser.
    Deep,
    Directory,
}

impl Bad {
    const ALL: [Bad; 5] = [
        Bad::DevZero,
        Bad::Fifo,
        Bad::Huge,
        Bad::Deep,
        Bad::Directory,
    ];

    /// Put this kind of file at `path` (replacing what was there).
    fn make(self, path: &Path) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir_all(path);
        match self {
            Bad::DevZero => std::os::unix::fs::symlink("/dev/zero", path).unwrap(),
            Bad::Fifo => {
                let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }
            Bad::Huge => std::fs::File::create(path)
                .unwrap()
                .set_len(4 << 30)
                .unwrap(),
            Bad::Deep => std::fs::write(path, "[".repeat(100_000)).unwrap(),
            Bad::Directory => std::fs::create_dir(path).unwrap(),
        }
    }

    /// What the one line says about it.
    fn said(self) -> &'static str {
        match self {
            Bad::DevZero => "is a character device, not a regular file",
            Bad::Fifo => "is a FIFO, not a regular file",
            Bad::Huge => "is larger than 1048576 bytes (--files.max-size)",
            // A key or secret file holding it is not refused for depth.
            Bad::Deep => "nested deeper than 64 levels (--files.max-yaml-depth)",
            Bad::Directory => "is a directory, not a regular file",
        }
    }
}

/// Run to the end within `limit` (killed and failed past it): exit code and stderr.
fn run_within(mut c: Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}: {c:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_one_line_exit_2(what: &str, (code, err): (Option<i32>, String), needles: &[&str]) {
    assert_eq!(code, Some(2), "{what}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: not one line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{what}: {n:?} missing in {err}");
    }
}

#[test]
fn bad_files_are_refused_at_start_in_one_line() {
    let dir = temp_dir("start");
    let limit = Duration::from_secs(20);
    for bad in Bad::ALL {
        let f = dir.join(format!("{bad:?}"));
        bad.make(&f);
        let path = f.to_str().unwrap();
        // The YAML files: depth is theirs to refuse, and size by the
        // lower YAML bound (--files.max-yaml-size, below --files.max-size).
        let said = if bad == Bad::Huge {
            "is YAML larger than 262144 bytes (--files.max-yaml-size)"
        } else {
            bad.said()
        };
        for flag in ["--config.file", "--web.config.file"] {
            let mut c = bin();
            c.env("CLAWMESH_API_KEY", "k").args([flag, path]);
            let what = format!("{flag} {bad:?}");
            assert_one_line_exit_2(&what, run_within(c, limit), &[path, said]);
        }
        // Key and secret files: a deep file is plain text (one line of `[`)
        // and passes, so only the others.
        if bad == Bad::Deep {
            continue;
        }
        for flag in ["--api-key-file", "--webhook.secret-file"] {
            let mut c = bin();
            c.env("CLAWMESH_API_KEY", "k").args([flag, path]);
            let what = format!("{flag} {bad:?}");
            assert_one_line_exit_2(&what, run_within(c, limit), &[flag, path, bad.said()]);
        }
        // Named inside the files: a workspace's key, the TLS certificate.
        let cfg = dir.join(format!("{bad:?}.yml"));
        std::fs::write(
            &cfg,
            format!("workspaces:\n  - name: a\n    api_key_file: {path}\n"),
        )
        .unwrap();
        let mut c = bin();
        c.args(["--config.file", cfg.to_str().unwrap()]);
        let what = format!("api_key_file {bad:?}");
        assert_one_line_exit_2(
            &what,
            run_within(c, limit),
            &["workspaces[0].api_key_file", path, bad.said()],
        );
        let web = dir.join(format!("{bad:?}.web.yml"));
        std::fs::write(
            &web,
            format!("tls_server_config:\n  cert_file: {path}\n  key_file: {path}\n"),
        )
        .unwrap();
        let mut c = bin();
        c.env("CLAWMESH_API_KEY", "k")
            .args(["--web.config.file", web.to_str().unwrap()]);
        let what = format!("cert_file {bad:?}");
        assert_one_line_exit_2(
            &what,
            run_within(c, limit),
            &["tls_server_config", path, bad.said()],
        );
    }
}

#[test]
fn the_file_limits_are_flags() {
    let dir = temp_dir("flags");
    let f = dir.join("key");
    std::fs::write(&f, "k".repeat(2000)).unwrap();
    let mut c = bin();
    c.args([
        "--api-key-file",
        f.to_str().unwrap(),
        "--files.max-size",
        "1KiB",
    ]);
    assert_one_line_exit_2(
        "--files.max-size 1KiB",
        run_within(c, Duration::from_secs(20)),
        &["is larger than 1024 bytes"],
    );
    let cfg = dir.join("c.yml");
    std::fs::write(&cfg, "workspaces: [[[[[[[[[[]]]]]]]]]]\n").unwrap();
    let mut c = bin();
    c.args([
        "--config.file",
        cfg.to_str().unwrap(),
        "--files.max-yaml-depth",
        "8",
    ]);
    assert_one_line_exit_2(
        "--files.max-yaml-depth 8",
        run_within(c, Duration::from_secs(20)),
        &["deeper than 8 levels"],
    );
    for (flag, v) in [
        ("--files.max-size", "0"),
        ("--files.max-size", "1 parsec"),
        ("--files.read-timeout", "0s"),
        ("--files.max-yaml-depth", "2"),
        ("--webhook.max-id-length", "0"),
    ] {
        let mut c = bin();
        c.env("CLAWMESH_API_KEY", "k")
            .env("CLAWMESH_WEBHOOK_SECRET", "whsec_x")
            .args([flag, v]);
        assert_one_line_exit_2(flag, run_within(c, Duration::from_secs(20)), &[flag]);
    }
}

/// A quieter simulated workspace than [`workspace_fleet`]'s.
async fn quiet_workspace_sim(id: &str, seed: u64) -> Sim {
    Sim::start(SimConfig {
        agents: 5,
        history_tasks: 5,
        task_changes_per_minute: 60.0,
        ..workspace_fleet(id, seed)
    })
    .await
}

/// A good config file of one workspace (`ws_op`), and its key file.
fn write_good(dir: &Path, sim_url: &str) {
    let (config, key) = (dir.join("clawmesh.yml"), dir.join("key"));
    for p in [&config, &key] {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_dir_all(p);
    }
    std::fs::write(&key, format!("{DEMO_KEY}\n")).unwrap();
    std::fs::write(
        &config,
        format!(
            "workspaces:\n  - name: a\n    api_url: {sim_url}\n    api_key_file: key\n    poll_interval: 1s\n    overlap: 5s\n"
        ),
    )
    .unwrap();
}

/// An exporter process over a config file of one workspace.
struct Exporter {
    child: Child,
    dir: PathBuf,
    sim_url: String,
    metrics: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    fn config(&self) -> PathBuf {
        self.dir.join("clawmesh.yml")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key")
    }

    /// A good config file and key file.
    fn write_good(&self) {
        write_good(&self.dir, &self.sim_url);
    }

    async fn start(name: &str, sim: &Sim) -> Exporter {
        let dir = temp_dir(name);
        let port = free_port();
        write_good(&dir, &sim.url());
        let child = bin()
            .args([
                "--config.file",
                dir.join("clawmesh.yml").to_str().unwrap(),
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Exporter {
            child,
            dir,
            sim_url: sim.url(),
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        };
        e.wait_for_reload_ok(1.0).await;
        e
    }

    async fn scrape(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        let r = reqwest::get(&self.metrics).await.ok()?;
        Some(parse(&r.text().await.ok()?))
    }

    /// Until the workspace polls and the last reload's verdict is `ok`.
    async fn wait_for_reload_ok(&self, ok: f64) {
        wait_for(
            Duration::from_secs(30),
            &format!("reload successful = {ok}"),
            || async {
                self.scrape().await.is_some_and(|m| {
                    value(&m, "clawmesh_up", &[("workspace", "ws_op")]) == Some(1.0)
                        && value(&m, "clawmesh_exporter_config_last_reload_successful", &[])
                            == Some(ok)
                })
            },
        )
        .await;
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// The peak resident memory of the process.
    fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_on_reload_are_refused_and_the_old_configuration_keeps_running() {
    let sim = quiet_workspace_sim("ws_op", 41).await;
    let e = Exporter::start("reload", &sim).await;
    for (which, bad) in Bad::ALL.iter().map(|b| ("config file", *b)).chain(
        [Bad::DevZero, Bad::Fifo, Bad::Huge, Bad::Directory]
            .iter()
            .map(|b| ("key file", *b)),
    ) {
        let path = if which == "config file" {
            e.config()
        } else {
            e.key()
        };
        bad.make(&path);
        let t = Instant::now();
        e.signal("-HUP");
        // Refused (the gauge says so) while the workspace keeps polling.
        e.wait_for_reload_ok(0.0).await;
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{which} {bad:?}: refused only after {:?}",
            t.elapsed()
        );
        e.write_good();
        e.signal("-HUP");
        e.wait_for_reload_ok(1.0).await;
    }
    let hwm = e.vm_hwm_kib();
    println!("peak RSS after the bad reloads: {hwm} KiB");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_reload_of_a_fifo_exits_promptly() {
    let sim = quiet_workspace_sim("ws_op", 42).await;
    let mut e = Exporter::start("sigterm", &sim).await;
    // A FIFO no one writes to: opened blocking, its read would never end.
    Bad::Fifo.make(&e.config());
    e.signal("-HUP");
    e.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = e.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGTERM waited for the reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}

const SECRET: &str = "whsec_operator";

/// A signed `task.completed` event with this id for a task the simulator never had.
fn event(id: &str, task: &str, workspace: &str) -> Vec<u8> {
    let now = now_rfc3339(2);
    serde_json::json!({
        "id": id, "type": "task.completed", "created_at": now, "workspace_id": workspace,
        "data": {"object": {
            "id": task, "agent_id": "agt_x", "status": "completed",
            "instructions": "Summarise", "labels": {},
            "created_at": now, "updated_at": now, "started_at": now, "finished_at": now,
            "transitions": [], "outputs": [], "error": null,
            "metrics": {"queue_seconds": 1.0, "run_seconds": 2.0, "input_tokens": 1, "output_tokens": 1}
        }}
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_ids_longer_than_the_limit_are_refused_and_not_remembered() {
    let sim = Sim::start(busy_fleet(43)).await;
    sim.sim.pause();
    let secret = temp_file("op-whsec", &format!("{SECRET}\n"));
    let cfg = exporter_config(&sim, &["--webhook.secret-file", secret.to_str().unwrap()]);
    assert_eq!(cfg.webhook.as_ref().unwrap().max_id_length, 256);
    let exporter = start_exporter(&cfg).await;
    let ws = exporter.workspace.clone();
    converge(&sim, &exporter).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks/clawmesh", exporter.addr);
    let post = |body: Vec<u8>| {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-clawmesh-signature", signature(SECRET, &body))
            .body(body);
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let results = |m: &std::collections::BTreeMap<String, f64>, r: &str| {
        value(m, "clawmesh_webhook_requests_total", &[("result", r)]).unwrap_or(0.0)
    };
    let finished = |m: &std::collections::BTreeMap<String, f64>| {
        must(
            m,
            "clawmesh_tasks_finished_total",
            &[("status", "completed")],
        )
    };
    let before = parse(&scrape(exporter.addr).await);
    // 200 signed deliveries with ids just under the 1 MiB body limit.
    let long = "e".repeat(1_000_000);
    for i in 0..200 {
        let id = format!("{long}{i}");
        assert_eq!(
            post(event(&id, &format!("tsk_op_long_{i}"), &ws)).await,
            (400, "bad_request\n".to_string()),
            "id of {} bytes",
            id.len()
        );
    }
    // One byte over the limit, and at it.
    let over = "x".repeat(257);
    assert_eq!(post(event(&over, "tsk_op_257", &ws)).await.0, 400);
    let at = "y".repeat(256);
    assert_eq!(
        post(event(&at, "tsk_op_256", &ws)).await,
        (200, "accepted\n".into())
    );
    assert_eq!(
        post(event(&at, "tsk_op_256", &ws)).await,
        (200, "duplicate\n".into())
    );
    // Deliveries are applied in order: once the accepted one shows, so
    // would any refused one that had been queued before it.
    wait_for(
        Duration::from_secs(20),
        "the accepted event applied",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            finished(&m) > finished(&before)
                && results(&m, "duplicate") > results(&before, "duplicate")
        },
    )
    .await;
    let after = parse(&scrape(exporter.addr).await);
    assert_eq!(
        results(&after, "bad_request") - results(&before, "bad_request"),
        201.0
    );
    assert_eq!(
        results(&after, "accepted") - results(&before, "accepted"),
        1.0
    );
    assert_eq!(
        finished(&after) - finished(&before),
        1.0,
        "only the accepted event counts"
    );
    exporter.shutdown().await;
}

/// A SIGHUP with the file unchanged keeps the workspace running as it is
/// (no new key check, no counter lower); one that changes a duration
/// applies it. The reload's comparison and the file reader both go through
/// the modules' DURATIONS tables since the settings moved into the modules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_an_unchanged_workspace_and_applies_a_changed_poll_interval() {
    let sim = quiet_workspace_sim("ws_op", 43).await;
    let e = Exporter::start("reload-durations", &sim).await;
    const RELOADED: &str = "clawmesh_exporter_config_last_reload_success_timestamp_seconds";
    let tasks_synced = |m: &std::collections::BTreeMap<String, f64>| {
        value(
            m,
            "clawmesh_last_sync_timestamp_seconds",
            &[("workspace", "ws_op"), ("resource", "tasks")],
        )
    };
    // Reload with `text` as the file; the scrape once the reload is done
    // and the workspace is up.
    let reload = |text: Option<String>| {
        let e = &e;
        async move {
            let before = e.scrape().await.and_then(|m| value(&m, RELOADED, &[]));
            match text {
                Some(t) => std::fs::write(e.config(), t).unwrap(),
                None => e.write_good(),
            }
            e.signal("-HUP");
            let after = std::sync::Mutex::new(None);
            wait_for(Duration::from_secs(30), "the reload", || {
                let after = &after;
                async move {
                    let Some(m) = e.scrape().await else {
                        return false;
                    };
                    let done = value(&m, RELOADED, &[]) > before
                        && value(&m, "clawmesh_up", &[("workspace", "ws_op")]) == Some(1.0);
                    if done {
                        *after.lock().unwrap() = Some(m);
                    }
                    done
                }
            })
            .await;
            let m = after.lock().unwrap().take();
            m.unwrap()
        }
    };
    // Let a sync or two pass so the counters have values to keep.
    wait_for(Duration::from_secs(30), "a task sync", || async {
        e.scrape().await.is_some_and(|m| tasks_synced(&m).is_some())
    })
    .await;
    let m0 = e.scrape().await.unwrap();
    let m1 = reload(None).await;
    for (series, v0) in m0.iter().filter(|(k, _)| {
        k.starts_with("clawmesh_api_requests_total{")
            || k.starts_with("clawmesh_tasks_finished_total{")
    }) {
        let v1 = m1.get(series).copied().unwrap_or(0.0);
        assert!(
            v1 >= *v0,
            "{series} went from {v0} to {v1} on an unchanged reload"
        );
    }
    let key_checks = |m: &std::collections::BTreeMap<String, f64>| {
        value(
            m,
            "clawmesh_api_requests_total",
            &[("endpoint", "/auth/token")],
        )
    };
    assert_eq!(
        key_checks(&m1),
        key_checks(&m0),
        "an unchanged reload restarted the workspace (its key was checked again)"
    );

    let file = |interval: &str| {
        format!(
            "workspaces:\n  - name: a\n    api_url: {}\n    api_key_file: key\n    poll_interval: {interval}\n    overlap: 5s\n",
            sim.url()
        )
    };
    // 1h: after the restarted slot's first sync, no other for a while.
    reload(Some(file("1h"))).await;
    let seen = std::sync::Mutex::new(None);
    wait_for(Duration::from_secs(30), "the first sync at 1h", || {
        let seen = &seen;
        let e = &e;
        async move {
            // A sync of the restarted slot: started after the reload.
            let Some(m) = e.scrape().await else {
                return false;
            };
            let t = tasks_synced(&m).filter(|t| Some(*t) >= value(&m, RELOADED, &[]));
            *seen.lock().unwrap() = t;
            t.is_some()
        }
    })
    .await;
    let first = seen.lock().unwrap().take();
    let again = holds_within(Duration::from_secs(3), || async {
        e.scrape().await.as_ref().and_then(tasks_synced) > first
    })
    .await;
    assert!(!again, "tasks synced again within 3s at poll_interval 1h");
    // Back to 1s: two more syncs follow within seconds.
    reload(Some(file("1s"))).await;
    wait_for(
        Duration::from_secs(30),
        "syncs every second again",
        || async {
            e.scrape()
                .await
                .as_ref()
                .and_then(tasks_synced)
                .zip(first)
                .is_some_and(|(t, f)| t >= f + 2.0)
        },
    )
    .await;
}
