//! What a scraper sees: a valid exposition (promtool agrees), gzip, health
//! endpoints, and scrapes that never reach the API.

use crate::util::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_reports_nothing_on_a_live_exposition() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let sim = Sim::start(clawmesh_exporter::sim::SimConfig {
        unknown_agent_statuses: true,
        ..busy_fleet(41)
    })
    .await;
    let exporter = start_exporter(&exporter_config(&sim, &[])).await;
    wait_for(
        Duration::from_secs(30),
        "a finished task on /metrics",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(
                &m,
                "clawmesh_tasks_finished_total",
                &[("status", "completed")],
            )
            .is_some_and(|v| v > 0.0)
                && value(&m, "clawmesh_task_failures_total", &[]).is_some()
        },
    )
    .await;
    let text = scrape(exporter.addr).await;
    let (ok, report) = promtool_check_metrics(&promtool, &text);
    assert!(
        ok && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_scrapers_cost_nothing_upstream() {
    let sim = Sim::start(busy_fleet(42)).await;
    // A long poll interval: between syncs, no request may reach the API.
    let exporter = start_exporter(&exporter_config(
        &sim,
        &["--poll-interval", "1h", "--agents.interval", "1h"],
    ))
    .await;
    let ready = format!("http://{}/readyz", exporter.addr);
    wait_for(Duration::from_secs(30), "ready", || {
        let ready = ready.clone();
        async move { matches!(reqwest::get(ready).await, Ok(r) if r.status() == 200) }
    })
    .await;
    let before = sim.truth().requests_total;
    let client = reqwest::Client::new();
    let mut scrapes = Vec::new();
    for _ in 0..50 {
        let (c, addr) = (client.clone(), exporter.addr);
        scrapes.push(tokio::spawn(async move {
            let r = c
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }));
    }
    for s in scrapes {
        assert!(s
            .await
            .unwrap()
            .contains("clawmesh_agents_active{workspace=\"ws_sim\"}"));
    }
    assert_eq!(
        sim.truth().requests_total,
        before,
        "a scrape reached the API"
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_when_asked_and_health_endpoints() {
    let sim = Sim::start(busy_fleet(43)).await;
    let exporter = start_exporter(&exporter_config(&sim, &[])).await;
    let base = format!("http://{}", exporter.addr);
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = plain
        .get(format!("{base}/metrics"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "not a gzip stream");
    let r = plain.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(
        plain
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let landing = plain
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(landing.contains("/metrics"));
    wait_for(Duration::from_secs(30), "ready", || {
        let (c, u) = (plain.clone(), format!("{base}/readyz"));
        async move { c.get(u).send().await.unwrap().status() == 200 }
    })
    .await;
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_keeps_the_last_good_numbers_and_shows_in_health() {
    let sim = Sim::start(busy_fleet(44)).await;
    let exporter = start_exporter(&exporter_config(&sim, &["--api.max-attempts", "2"])).await;
    let good = converge(&sim, &exporter).await;
    assert_eq!(must(&good, "clawmesh_up", &[]), 1.0);
    sim.faults(clawmesh_exporter::sim::Faults {
        outage: true,
        ..Default::default()
    });
    wait_for(
        Duration::from_secs(30),
        "clawmesh_up to drop to 0 with failed syncs of both resources",
        || async {
            // up drops with the first resource that fails; wait for both.
            let m = parse(&scrape(exporter.addr).await);
            value(&m, "clawmesh_up", &[]) == Some(0.0)
                && ["agents", "tasks"].iter().all(|r| {
                    value(&m, "clawmesh_sync_failures_total", &[("resource", r)])
                        .is_some_and(|n| n >= 1.0)
                })
        },
    )
    .await;
    let bad = parse(&scrape(exporter.addr).await);
    assert!(
        must(
            &bad,
            "clawmesh_sync_failures_total",
            &[("resource", "tasks")]
        ) >= 1.0
    );
    for s in ["idle", "busy", "error"] {
        assert_eq!(
            must(&bad, "clawmesh_agents", &[("status", s)]),
            must(&good, "clawmesh_agents", &[("status", s)])
        );
    }
    assert_eq!(
        must(
            &bad,
            "clawmesh_tasks_finished_total",
            &[("status", "completed")]
        ),
        must(
            &good,
            "clawmesh_tasks_finished_total",
            &[("status", "completed")]
        )
    );
    sim.faults(Default::default());
    wait_for(Duration::from_secs(30), "clawmesh_up back to 1", || async {
        value(&parse(&scrape(exporter.addr).await), "clawmesh_up", &[]) == Some(1.0)
    })
    .await;
    exporter.shutdown().await;
}

/// The standard process families, from a real exporter process: all six
/// there, each agreeing with what the kernel says of that process (its
/// /proc seen from outside), the soft open-files limit it was started
/// with, and a start between its spawn and its first answer.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_process_exports_its_cpu_memory_descriptors_and_start() {
    use std::os::unix::process::CommandExt;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let sim = Sim::start(busy_fleet(43)).await;
    let port = free_port();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let spawned = now();
    let mut cmd = bin();
    cmd.env("CLAWMESH_API_KEY", clawmesh_exporter::sim::DEMO_KEY)
        .args([
            "--api-url",
            &sim.url(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--poll-interval",
            "1s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // A soft limit of its own, below the hard one, so that
    // process_max_fds is shown to be this process's soft limit.
    unsafe {
        cmd.pre_exec(|| {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            r.rlim_cur = 777.min(r.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = Kill(cmd.spawn().unwrap());
    let pid = child.0.id();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let get = || async {
        match reqwest::get(&url).await {
            Ok(r) => parse(&r.text().await.unwrap_or_default()),
            Err(_) => Default::default(),
        }
    };
    wait_for(
        Duration::from_secs(30),
        "the process families after a sync",
        || async {
            let m = get().await;
            value(&m, "clawmesh_up", &[]) == Some(1.0)
                && value(&m, "process_cpu_seconds_total", &[]).is_some()
        },
    )
    .await;
    let m = get().await;
    let answered = now();
    let proc_file = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap();
    let cpu = must(&m, "process_cpu_seconds_total", &[]);
    assert!(cpu >= 0.0 && cpu < answered - spawned + 1.0, "cpu {cpu}");
    // Resident memory, against the kernel's VmRSS now (it moves a little
    // between the render and this read).
    let rss = must(&m, "process_resident_memory_bytes", &[]);
    let vm_rss_kib: f64 = proc_file("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss > 1024.0 * 1024.0, "rss {rss}");
    assert!(
        (rss / (vm_rss_kib * 1024.0) - 1.0).abs() < 0.5,
        "rss {rss}, VmRSS {vm_rss_kib} KiB"
    );
    let vsz = must(&m, "process_virtual_memory_bytes", &[]);
    assert!(vsz >= rss, "virtual {vsz} < resident {rss}");
    // The soft limit it was started with, and open descriptors near what
    // /proc/<pid>/fd lists (connections come and go between the reads).
    assert_eq!(must(&m, "process_max_fds", &[]), 777.0);
    let open = must(&m, "process_open_fds", &[]);
    let listed = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    assert!((3.0..=777.0).contains(&open), "open fds {open}");
    assert!(
        (open - listed).abs() <= 16.0,
        "open fds {open}, /proc lists {listed}"
    );
    // Started between the spawn and the first answer (the boot time is
    // whole seconds).
    let start = must(&m, "process_start_time_seconds", &[]);
    assert!(
        start >= spawned - 1.5 && start <= answered + 0.5,
        "start {start}, spawned {spawned}, answered {answered}"
    );
    assert!(start > now() - 60.0, "start {start} more than a minute ago");
    // A memory limit, where the machine sets one, above what is resident.
    if let Some(limit) = value(&m, "clawmesh_exporter_memory_limit_bytes", &[]) {
        assert!(limit > rss, "limit {limit}, resident {rss}");
    }
    // CPU time only goes up from render to render.
    wait_for(Duration::from_secs(30), "more CPU time", || async {
        value(&get().await, "process_cpu_seconds_total", &[]).is_some_and(|c| c > cpu)
    })
    .await;
    drop(child);
}
