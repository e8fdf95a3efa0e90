//! Hostile clients: each pushes past one bound of the HTTP server (headers
//! sent a byte at a time, a body that never ends, idle keep-alive
//! connections, too many connections, the open-files limit, a flood of
//! wrong passwords, hashes bcrypt cannot use) and the server cuts it off at
//! that bound while /healthz and an authorized scrape keep answering.

use crate::util::*;
use clawmesh_exporter::sim::{SimConfig, DEMO_KEY};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn quiet_sim() -> Sim {
    Sim::start(SimConfig {
        agents: 5,
        history_tasks: 5,
        task_changes_per_minute: 60.0,
        ..SimConfig::default()
    })
    .await
}

/// A connection to `addr`, and the instant just before it was made: the
/// server's timers start at the connect, and the blocking read that
/// measures them may begin late.
fn connect(addr: std::net::SocketAddr) -> (TcpStream, Instant) {
    let since = Instant::now();
    (TcpStream::connect(addr).unwrap(), since)
}

/// A blocking socket read until the server closes the connection: returns
/// what it sent before, and how long since `start` (from [`connect`]).
/// Panics after `limit`.
fn read_until_closed(mut s: TcpStream, start: Instant, limit: Duration) -> (String, Duration) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break, // reset: closed as well
        }
        assert!(
            start.elapsed() < limit,
            "the server kept the connection open for {limit:?}"
        );
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

/// Wait until `clawmesh_exporter_http_refusals_total{reason}` counts one
/// (the exposition is rendered at each sync: every second here).
async fn counted(addr: SocketAddr, reason: &str) {
    wait_for(Duration::from_secs(15), reason, || async {
        let m = parse(&scrape(addr).await);
        value(
            &m,
            "clawmesh_exporter_http_refusals_total",
            &[("reason", reason)],
        ) >= Some(1.0)
    })
    .await;
}

async fn healthz(addr: SocketAddr) -> bool {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    matches!(c.get(format!("http://{addr}/healthz")).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_headers_are_cut_at_the_header_timeout() {
    let sim = quiet_sim().await;
    let cfg = exporter_config(&sim, &["--web.read-header-timeout", "1s"]);
    let exporter = start_exporter(&cfg).await;
    let (s, since) = connect(exporter.addr);
    let mut w = s.try_clone().unwrap();
    // A byte every 100 ms of a header that never ends: progress, no request.
    let writer = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .chain([b'a'; 400].iter())
        {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (got, took) =
        tokio::task::spawn_blocking(move || read_until_closed(s, since, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the bound"
    );
    assert!(
        !got.contains("200 OK"),
        "the slow request was answered: {got}"
    );
    assert!(healthz(exporter.addr).await, "the server is fine after it");
    counted(exporter.addr, "header_timeout").await;
    let _ = writer.join();
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    let sim = quiet_sim().await;
    let cfg = exporter_config(
        &sim,
        &[
            "--web.idle-timeout",
            "1s",
            "--web.read-header-timeout",
            "30s",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let (mut s, since) = connect(exporter.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (got, took) =
        tokio::task::spawn_blocking(move || read_until_closed(s, since, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("ok\n"),
        "{got}"
    );
    assert!(
        !got.to_ascii_lowercase().contains("connection: close"),
        "not kept alive: {got}"
    );
    // Closed by the idle bound (1 s), long before the header bound (30 s).
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    counted(exporter.addr, "idle_timeout").await;
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_body_that_stops_arriving_gets_408_at_the_body_timeout() {
    let sim = quiet_sim().await;
    let dir = temp_dir("body");
    let secret = dir.join("secret");
    std::fs::write(&secret, "whsec_hostile\n").unwrap();
    let cfg = exporter_config(
        &sim,
        &[
            "--webhook.secret-file",
            secret.to_str().unwrap(),
            "--web.read-body-timeout",
            "1s",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let (mut s, since) = connect(exporter.addr);
    let sig = format!("sha256={}", "0".repeat(64));
    // Promises 1,000 bytes, sends 10, then waits.
    write!(
        s,
        "POST /webhooks/clawmesh HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-ClawMesh-Signature: {sig}\r\nContent-Length: 1000\r\n\r\n{{\"id\":\"ev"
    )
    .unwrap();
    let (got, took) =
        tokio::task::spawn_blocking(move || read_until_closed(s, since, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("body_timeout"), "{got}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    wait_for(Duration::from_secs(15), "the timeout counted", || async {
        let m = parse(&scrape(exporter.addr).await);
        let labels = [("result", "body_timeout")];
        value(&m, "clawmesh_webhook_unattributed_requests_total", &labels) == Some(1.0)
    })
    .await;
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_connection_is_closed_at_once() {
    let sim = quiet_sim().await;
    let cfg = exporter_config(
        &sim,
        &[
            "--web.max-connections",
            "4",
            "--web.read-header-timeout",
            "60s",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(exporter.addr).unwrap())
        .collect();
    // The fifth is accepted and closed, not left waiting.
    let (fifth, since) = connect(exporter.addr);
    let (got, took) = tokio::task::spawn_blocking(move || {
        read_until_closed(fifth, since, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(got.is_empty(), "{got}");
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    assert!(!healthz(exporter.addr).await, "served past the cap");
    drop(held);
    wait_for(
        Duration::from_secs(15),
        "/healthz once the held connections closed",
        || healthz(exporter.addr),
    )
    .await;
    counted(exporter.addr, "max_connections").await;
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_cut_at_the_header_timeout() {
    let sim = quiet_sim().await;
    let dir = temp_dir("tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    )
    .unwrap();
    let cfg = exporter_config(
        &sim,
        &[
            "--web.config.file",
            web.to_str().unwrap(),
            "--web.read-header-timeout",
            "1s",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let (mut s, since) = connect(exporter.addr);
    s.write_all(&[0x16, 0x03, 0x01]).unwrap(); // the start of a ClientHello
    let (_, took) =
        tokio::task::spawn_blocking(move || read_until_closed(s, since, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    exporter.shutdown().await;
}

/// Under a soft limit of 1,024 open files, 1,100 idle connections exhaust
/// the exporter's descriptors (the connection cap set above the limit, so
/// that they do); it answers /healthz and /metrics again within 15 s, by
/// itself, with the default header timeout (10 s) closing the idle ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_descriptor_exhaustion_recovers_by_itself() {
    // This process holds the 1,100 client ends.
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    let want = lim
        .maximum
        .map_or(8192, |h| h.min(8192))
        .max(lim.current.unwrap_or(0));
    assert!(
        want >= 2048,
        "the hard open-files limit {:?} is too low for this test",
        lim.maximum
    );
    lim.current = Some(want);
    setrlimit(Resource::Nofile, lim).expect("raise this test's open-files limit");

    let sim = quiet_sim().await;
    let port = free_port();
    let dir = temp_dir("fd");
    let log = dir.join("stderr");
    let cmd = format!(
        "ulimit -n 1024 && exec {} --api-url {} --web.listen-address 127.0.0.1:{port} --web.max-connections 4096 --poll-interval 1s 2>{}",
        env!("CARGO_BIN_EXE_clawmesh-exporter"),
        sim.url(),
        log.display()
    );
    let mut child = Command::new("/bin/sh")
        .args(["-c", &cmd])
        .env_clear()
        .env("CLAWMESH_API_KEY", DEMO_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(30), "the exporter to serve", || {
        healthz(addr)
    })
    .await;

    // Four threads connect at once: the kernel drops some SYNs of a burst,
    // and their retries (a second each) should not run one after another.
    let idle: Vec<TcpStream> = std::thread::scope(|t| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                t.spawn(|| {
                    (0..275)
                        .map(|_| TcpStream::connect(addr).expect("connect"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let opened = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "/healthz after 1,100 idle connections",
        || healthz(addr),
    )
    .await;
    let metrics = || async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        matches!(c.get(format!("http://{addr}/metrics")).send().await, Ok(r) if r.status() == 200)
    };
    let left =
        Duration::from_secs(15).saturating_sub(opened.elapsed()) + Duration::from_millis(100);
    wait_for(
        left,
        "/metrics within 15 s of the 1,100 connections",
        metrics,
    )
    .await;
    assert!(
        opened.elapsed() < Duration::from_secs(15),
        "took {:?}",
        opened.elapsed()
    );
    // The process families, which read /proc (itself short of descriptors
    // at the limit: absent then, never 0), are back with the limit it
    // runs under, and its start as before.
    let families = || async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        match c.get(format!("http://{addr}/metrics")).send().await {
            Ok(r) => parse(&r.text().await.unwrap_or_default()),
            Err(_) => Default::default(),
        }
    };
    wait_for(
        Duration::from_secs(15),
        "the process families after the descriptors ran out",
        || async {
            let m = families().await;
            value(&m, "process_open_fds", &[]).is_some()
                && value(&m, "process_cpu_seconds_total", &[]).is_some()
        },
    )
    .await;
    let m = families().await;
    assert_eq!(value(&m, "process_max_fds", &[]), Some(1024.0));
    let open = must(&m, "process_open_fds", &[]);
    assert!((3.0..=1024.0).contains(&open), "open fds {open}");
    assert!(value(&m, "process_start_time_seconds", &[]).is_some());
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("cannot accept connections"),
        "the descriptors never ran out, so this tested nothing:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(idle);
}

fn basic_auth_exporter_args(dir: &std::path::Path, yaml: &str) -> String {
    let web = dir.join("web.yml");
    std::fs::write(&web, yaml).unwrap();
    web.to_str().unwrap().to_string()
}

/// Many clients sending wrong passwords: bcrypt runs are bounded, excess
/// checks get a quick 503, and a scraper whose login is cached, and
/// /healthz, keep being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_flood_does_not_starve_cached_scrapes_or_healthz() {
    let sim = quiet_sim().await;
    let dir = temp_dir("flood");
    let hash = bcrypt::hash("correct horse", 8).unwrap();
    let web = basic_auth_exporter_args(&dir, &format!("basic_auth_users:\n  prometheus: {hash}\n"));
    let cfg = exporter_config(
        &sim,
        &[
            "--web.config.file",
            &web,
            "--web.basic-auth.max-concurrent",
            "1",
            "--web.basic-auth.max-wait",
            "200ms",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let url = format!("http://{}/metrics", exporter.addr);
    let scraper = reqwest::Client::new();
    let scrape_ok = || async {
        matches!(
            scraper.get(&url).basic_auth("prometheus", Some("correct horse")).send().await,
            Ok(r) if r.status() == 200
        )
    };
    assert!(scrape_ok().await, "the first login");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..64 {
        let (url, stop) = (url.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let user = if i % 2 == 0 { "prometheus" } else { "mallory" };
                let t = Instant::now();
                let r = c
                    .get(&url)
                    .basic_auth(user, Some(format!("guess{i}")))
                    .send()
                    .await;
                statuses.push((r.map(|r| r.status().as_u16()).unwrap_or(0), t.elapsed()));
            }
            statuses
        }));
    }
    // Let the flood fill the bcrypt slot and its queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Generous bounds (a loaded 2-core CI machine, a debug build, the flood
    // in this very process); before the bound on bcrypt, 64 such clients
    // took scrapes to seconds and 600 made them fail for half a minute.
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (mut scrapes, mut probes) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        assert!(scrape_ok().await, "a cached scrape failed during the flood");
        scrapes.push(t.elapsed());
        let t = Instant::now();
        let r = health
            .get(format!("http://{}/healthz", exporter.addr))
            .send()
            .await;
        assert!(
            matches!(r, Ok(r) if r.status() == 200),
            "/healthz failed during the flood"
        );
        probes.push(t.elapsed());
    }
    for (what, mut d) in [("cached scrape", scrapes), ("/healthz", probes)] {
        d.sort();
        assert!(d[19] < Duration::from_secs(10), "a {what} took {:?}", d[19]);
        assert!(d[10] < Duration::from_secs(2), "{what}: median {:?}", d[10]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for f in flood {
        all.extend(f.await.unwrap());
    }
    assert!(
        all.iter().all(|(s, _)| *s == 401 || *s == 503),
        "{:?}",
        all.iter()
            .filter(|(s, _)| *s != 401 && *s != 503)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        all.iter().any(|(s, _)| *s == 401),
        "no password was ever checked"
    );
    assert!(
        all.iter().any(|(s, _)| *s == 503),
        "the bcrypt queue was never full"
    );
    let slowest = all.iter().map(|(_, d)| *d).max().unwrap();
    assert!(
        slowest < Duration::from_secs(10),
        "a flood request waited {slowest:?}"
    );
    exporter.shutdown().await;
}

#[test]
fn invalid_bcrypt_hashes_are_refused_at_start_naming_the_user() {
    let dir = temp_dir("hashes");
    let good = bcrypt::hash("x", 4).unwrap();
    let tail = &good[7..];
    for (user, hash, why) in [
        ("mallory", format!("$2y$99${tail}"), "cost 99"),
        ("trudy", format!("$2y$03${tail}"), "cost 3"),
        (
            "eve",
            format!("$2y$10${}*{}", &tail[..3], &tail[4..]),
            "not bcrypt base64",
        ),
    ] {
        let web = basic_auth_exporter_args(
            &dir,
            &format!("basic_auth_users:\n  alice: {good}\n  {user}: {hash}\n"),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_clawmesh-exporter"))
            .args([
                "--web.config.file",
                &web,
                "--web.listen-address",
                "127.0.0.1:0",
            ])
            .env_clear()
            .env("CLAWMESH_API_KEY", "k")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{user}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("basic_auth_users.{user}")) && stderr.contains(why),
            "{stderr}"
        );
        assert!(!stderr.contains(&hash), "the hash is not echoed: {stderr}");
    }
}

/// More wrong-password clients than connection slots: failed logins close
/// their connections and slots go first come, first served, so a scraper
/// opening a new connection for every scrape still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_connection_cap_leaves_room_for_a_new_scraper() {
    let sim = quiet_sim().await;
    let dir = temp_dir("flood-cap");
    let hash = bcrypt::hash("correct horse", 4).unwrap();
    let web = basic_auth_exporter_args(&dir, &format!("basic_auth_users:\n  prometheus: {hash}\n"));
    let cfg = exporter_config(
        &sim,
        &["--web.config.file", &web, "--web.max-connections", "8"],
    );
    let exporter = start_exporter(&cfg).await;
    let url = format!("http://{}/metrics", exporter.addr);
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let login = |c: reqwest::Client| {
        let url = url.clone();
        async move {
            matches!(
                c.get(&url).basic_auth("prometheus", Some("correct horse")).send().await,
                Ok(r) if r.status() == 200
            )
        }
    };
    assert!(login(fresh()).await, "the first login");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..32 {
        let (url, stop) = (url.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c
                    .get(&url)
                    .basic_auth("prometheus", Some(format!("guess{i}")))
                    .send()
                    .await;
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        let mut ok = false;
        for _ in 0..3 {
            if login(fresh()).await {
                ok = true;
                break;
            }
        }
        assert!(
            ok,
            "scrape {i} on a new connection failed three times during the flood"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for f in flood {
        sent += f.await.unwrap();
    }
    assert!(sent > 32, "the flood sent only {sent} requests");
    exporter.shutdown().await;
}

/// Headers that never end, sent as fast as the server takes them: refused
/// at `--web.max-header-size` (431 or a closed connection) long before the
/// header timeout, so that many such clients cannot hold hundreds of KB each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_past_the_size_bound_are_refused_at_once() {
    let sim = quiet_sim().await;
    let cfg = exporter_config(
        &sim,
        &[
            "--web.max-header-size",
            "16KiB",
            "--web.read-header-timeout",
            "60s",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let (s, since) = connect(exporter.addr);
    let mut w = s.try_clone().unwrap();
    // 100 KB of one header, no end: under hyper's default buffer (~400 KB)
    // this waited for the header timeout.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
        let _ = w.write_all(&[b'a'; 100_000]);
    });
    let (got, took) =
        tokio::task::spawn_blocking(move || read_until_closed(s, since, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 431"),
        "not refused: {got}"
    );
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
    let _ = writer.join();
    // Headers under the bound are served.
    let (mut s, since) = connect(exporter.addr);
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fine: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8000)
    )
    .unwrap();
    let (got, _) =
        tokio::task::spawn_blocking(move || read_until_closed(s, since, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    exporter.shutdown().await;
}

/// One slow delivery holding the whole `--webhook.max-inflight-size`
/// budget: another is answered 503 with Retry-After at once (counted as
/// `busy`), not buffered too, and is served again once the first is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bodies_past_the_inflight_budget_get_503_at_once() {
    let sim = quiet_sim().await;
    let dir = temp_dir("inflight");
    let secret = dir.join("secret");
    std::fs::write(&secret, "whsec_hostile\n").unwrap();
    let cfg = exporter_config(
        &sim,
        &[
            "--webhook.secret-file",
            secret.to_str().unwrap(),
            "--webhook.max-inflight-size",
            "1MiB",
            "--web.read-body-timeout",
            "60s",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let sig = format!("sha256={}", "0".repeat(64));
    // Declares the largest body, sends 1,000 bytes of it, then waits.
    let mut holder = TcpStream::connect(exporter.addr).unwrap();
    write!(
        holder,
        "POST /webhooks/clawmesh HTTP/1.1\r\nHost: x\r\nX-ClawMesh-Signature: {sig}\r\nContent-Length: 1048576\r\n\r\n{}",
        "a".repeat(1000)
    )
    .unwrap();
    let url = format!("http://{}/webhooks/clawmesh", exporter.addr);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deliver = || async {
        c.post(&url)
            .header("X-ClawMesh-Signature", &sig)
            .body("{}")
            .send()
            .await
            .ok()
            .map(|r| {
                let after = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), after)
            })
    };
    // 401 (a wrong signature) while the budget is free; 503 once the
    // holder's handler took it.
    wait_for(
        Duration::from_secs(15),
        "a 503 with Retry-After while the budget is held",
        || async { deliver().await == Some((503, true)) },
    )
    .await;
    wait_for(Duration::from_secs(15), "busy counted", || async {
        let m = parse(&scrape(exporter.addr).await);
        let labels = [("result", "busy")];
        value(&m, "clawmesh_webhook_unattributed_requests_total", &labels) >= Some(1.0)
    })
    .await;
    drop(holder);
    wait_for(
        Duration::from_secs(15),
        "the budget back once the holder left",
        || async { matches!(deliver().await, Some((401, _))) },
    )
    .await;
    exporter.shutdown().await;
}

/// A TCP connection whose receive buffer is 2 KB (set before connecting,
/// so that the window stays small): each small read lets the server write
/// a little more.
fn connect_with_small_receive_buffer(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it hands it to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 2048;
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "SO_RCVBUF");
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

/// A client pipelining scrapes on a 2 KB receive buffer and reading a
/// trickle (100 bytes every 100 ms) lets the server write something every
/// so often, so it never looks stalled to
/// `--web.idle-timeout` (30 s here); `--web.write-timeout` (2 s), counted
/// from the first write the client's socket refused (or a response's
/// start), closes it anyway, for large responses and pipelined tiny ones,
/// and /healthz is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_trickle_is_cut_at_the_write_timeout() {
    let sim = quiet_sim().await;
    let cfg = exporter_config(
        &sim,
        &["--web.idle-timeout", "30s", "--web.write-timeout", "2s"],
    );
    let exporter = start_exporter(&cfg).await;
    // Large responses, then many tiny ones (each written at once, the
    // backlog shared by the pipeline).
    for (n, path) in [(1.0, "/metrics"), (2.0, "/healthz")] {
        trickle(exporter.addr, path, n).await;
    }
    exporter.shutdown().await;
}

/// Pipelines `path` on a small receive buffer, reads 100 bytes every
/// 100 ms, and waits until `response_stalled` counts `n`.
async fn trickle(addr: SocketAddr, path: &str, n: f64) {
    let s = connect_with_small_receive_buffer(addr);
    let mut w = s.try_clone().unwrap();
    // Far more responses than the socket buffers hold.
    let reqs = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(20_000);
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(reqs.as_bytes());
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut s = s;
        std::thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 100];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_for(Duration::from_secs(15), path, || async {
        let m = parse(&scrape(addr).await);
        let labels = [("reason", "response_stalled")];
        value(&m, "clawmesh_exporter_http_refusals_total", &labels) >= Some(n)
    })
    .await;
    assert!(healthz(addr).await, "the server is fine after it");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    let _ = writer.join();
}

/// The peak memory of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 200 connections each declaring a 1 MiB webhook body, sending almost all
/// of it, then waiting: before the in-flight budget each was buffered
/// (over 200 MB of peak RSS); now the exporter holds the budget (16 MiB)
/// and answers the rest 503 `busy`, and its peak stays far below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_webhook_bodies_cost_at_most_the_inflight_budget() {
    let sim = quiet_sim().await;
    let port = free_port();
    let dir = temp_dir("inflight-mem");
    let secret = dir.join("secret");
    std::fs::write(&secret, "whsec_hostile\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clawmesh-exporter"))
        .args([
            "--api-url",
            &sim.url(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--webhook.secret-file",
            secret.to_str().unwrap(),
            "--web.read-body-timeout",
            "60s",
            "--poll-interval",
            "1s",
        ])
        .env_clear()
        .env("CLAWMESH_API_KEY", DEMO_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(30), "the exporter to serve", || {
        healthz(addr)
    })
    .await;
    let before = vm_hwm_kib(child.id());
    let head = format!(
        "POST /webhooks/clawmesh HTTP/1.1\r\nHost: x\r\nX-ClawMesh-Signature: sha256={}\r\nContent-Length: 1048576\r\n\r\n",
        "0".repeat(64)
    );
    let held: Vec<TcpStream> = std::thread::scope(|t| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                t.spawn(|| {
                    let body = vec![b'a'; 1_040_000];
                    (0..50)
                        .map(|_| {
                            let mut s = TcpStream::connect(addr).expect("connect");
                            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                            // A refused one is closed under the writer: fine.
                            let _ = s
                                .write_all(head.as_bytes())
                                .and_then(|()| s.write_all(&body));
                            s
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    wait_for(Duration::from_secs(15), "busy counted", || async {
        let m = parse(&scrape(addr).await);
        let labels = [("result", "busy")];
        value(&m, "clawmesh_webhook_unattributed_requests_total", &labels) >= Some(100.0)
    })
    .await;
    let peak = vm_hwm_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    drop(held);
    assert!(
        peak < before + 64 * 1024,
        "peak RSS went from {before} KiB to {peak} KiB"
    );
}
