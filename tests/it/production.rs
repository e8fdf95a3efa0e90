//! Production: the config file and check-config, reloads that keep
//! unchanged workspaces' counters, sharding across real processes, and TLS
//! and basic auth over real connections.

use crate::util::*;
use clawmesh_exporter::sim::DEMO_KEY;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `workspaces:` entry: name, the sim's URL, a key file, extra YAML.
fn entry(name: &str, sim: &Sim, extra: &str) -> String {
    format!(
        "  - name: {name}\n    api_url: {}\n    api_key_file: key\n    poll_interval: 1s\n    overlap: 5s\n{extra}",
        sim.url()
    )
}

fn write_config(dir: &Path, entries: &[String]) -> PathBuf {
    std::fs::write(dir.join("key"), format!("{DEMO_KEY}\n")).unwrap();
    let f = dir.join("clawmesh.yml");
    std::fs::write(&f, format!("workspaces:\n{}", entries.concat())).unwrap();
    f
}

/// The workspaces an exposition has `clawmesh_up` for.
fn workspaces_in(m: &BTreeMap<String, f64>) -> BTreeSet<String> {
    m.keys()
        .filter_map(|k| k.strip_prefix("clawmesh_up{workspace=\""))
        .map(|r| r.split('"').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_a_good_file_and_names_each_problem_of_a_bad_one() {
    let sim = workspace_sim("ws_cc", 1).await;
    let dir = temp_dir("check");
    let good = write_config(&dir, &[entry("a", &sim, "    labels: {team: payments}\n")]);
    let out = bin()
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK, 1 workspace(s): a"));

    let bad = dir.join("bad.yml");
    std::fs::write(
        &bad,
        "workspaces:\n  - name: a\n    api_key_file: nope.key\n    poll_interval: soon\n    colour: red\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "workspaces[0].colour: unknown key",
        "workspaces[0].poll_interval: bad duration \"soon\"",
        "workspaces[0].api_key_file: cannot read",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // The exporter refuses the same file at start, in one line, exit code 2.
    let out = bin()
        .args(["--config.file", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_unchanged_workspaces_counters_and_a_bad_file_is_refused() {
    let (a, b, c) = (
        workspace_sim("ws_a", 2).await,
        workspace_sim("ws_b", 3).await,
        workspace_sim("ws_c", 4).await,
    );
    let dir = temp_dir("reload");
    let file = write_config(
        &dir,
        &[
            entry("a", &a, ""),
            entry("b", &b, "    labels: {team: one}\n"),
        ],
    );
    let args = clawmesh_exporter::config::RunArgs {
        config_file: Some(file.clone()),
        enable_lifecycle: true,
        listen_address: "127.0.0.1:0".into(),
        ..exporter_args()
    };
    let cfg = args
        .validate(&std::collections::HashMap::<String, String>::new())
        .unwrap();
    let exporter = start_exporter(&cfg).await;
    wait_for(
        Duration::from_secs(60),
        "a task finished in ws_a",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(
                &m,
                "clawmesh_tasks_finished_total",
                &[("workspace", "ws_a"), ("status", "completed")],
            )
            .is_some_and(|v| v > 0.0)
        },
    )
    .await;
    // A goes quiet, so its counters stand still: a restart would zero them.
    let before = converge(&a, &exporter).await;
    let done = |m: &BTreeMap<String, f64>| {
        must(
            m,
            "clawmesh_tasks_finished_total",
            &[("workspace", "ws_a"), ("status", "completed")],
        )
    };
    assert!(done(&before) > 0.0, "nothing finished in ws_a yet");
    assert!(
        value(
            &before,
            "clawmesh_agents_active",
            &[("workspace", "ws_b"), ("team", "one")]
        )
        .is_some(),
        "ws_b lacks its configured label"
    );

    write_config(
        &dir,
        &[
            entry("a", &a, ""),
            entry("b", &b, "    labels: {team: two}\n"),
            entry("c", &c, ""),
        ],
    );
    let url = format!("http://{}/-/reload", exporter.addr);
    let r = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    wait_for(
        Duration::from_secs(30),
        "ws_c and the new label of ws_b",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(&m, "clawmesh_up", &[("workspace", "ws_c")]) == Some(1.0)
                && value(&m, "clawmesh_up", &[("workspace", "ws_b"), ("team", "two")]) == Some(1.0)
        },
    )
    .await;
    let after = parse(&scrape(exporter.addr).await);
    assert_eq!(
        done(&after),
        done(&before),
        "ws_a's counters were reset by the reload"
    );
    assert!(
        value(&after, "clawmesh_up", &[("team", "one")]).is_none(),
        "the old ws_b series linger"
    );
    assert_eq!(
        must(
            &after,
            "clawmesh_exporter_workspaces",
            &[("state", "configured")]
        ),
        3.0
    );

    std::fs::write(&file, "workspaces:\n  - name: a\n    shiny: true\n").unwrap();
    let r = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("workspaces[0].shiny: unknown key"));
    let refused = parse(&scrape(exporter.addr).await);
    assert_eq!(
        must(
            &refused,
            "clawmesh_exporter_config_last_reload_successful",
            &[]
        ),
        0.0
    );
    assert_eq!(
        workspaces_in(&refused),
        ["ws_a", "ws_b", "ws_c"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    exporter.shutdown().await;
}

/// The flags every test exporter shares, as parsed arguments.
fn exporter_args() -> clawmesh_exporter::config::RunArgs {
    use clap::Parser;
    clawmesh_exporter::config::Cli::try_parse_from(["clawmesh-exporter"])
        .unwrap()
        .run
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `total` exporter processes over `file`; the workspaces each polls.
async fn shard_owners(file: &Path, total: u32) -> Vec<BTreeSet<String>> {
    let ports: Vec<u16> = (0..total).map(|_| free_port()).collect();
    let mut procs = Procs(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let child = bin()
            .args([
                "--config.file",
                file.to_str().unwrap(),
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
            ])
            // The pod-name form, as a StatefulSet's downward API gives it.
            .env("CLAWMESH_SHARD", format!("clawmesh-exporter-{i}"))
            .env("CLAWMESH_TOTAL_SHARDS", total.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.0.push(child);
    }
    let mut owned = Vec::new();
    for port in &ports {
        let base = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(60), "a shard to be ready", || {
            let u = format!("{base}/readyz");
            async move { matches!(reqwest::get(u).await, Ok(r) if r.status() == 200) }
        })
        .await;
        let m = parse(
            &reqwest::get(format!("{base}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        let ws = workspaces_in(&m);
        assert_eq!(
            must(&m, "clawmesh_exporter_workspaces", &[("state", "owned")]),
            ws.len() as f64
        );
        assert!(value(
            &m,
            "clawmesh_exporter_shard_info",
            &[("total_shards", &total.to_string())]
        )
        .is_some());
        owned.push(ws);
    }
    owned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_cover_every_workspace_once_and_growing_3_to_4_moves_only_to_the_new_shard() {
    let mut sims = Vec::new();
    for i in 0..10 {
        sims.push(workspace_sim(&format!("ws_{i:02}"), 10 + i).await);
    }
    let dir = temp_dir("shards");
    let entries: Vec<String> = sims
        .iter()
        .enumerate()
        .map(|(i, s)| entry(&format!("w{i}"), s, ""))
        .collect();
    let file = write_config(&dir, &entries);
    let all: BTreeSet<String> = (0..10).map(|i| format!("ws_{i:02}")).collect();

    let owner =
        |shards: &[BTreeSet<String>], ws: &str| shards.iter().position(|s| s.contains(ws)).unwrap();
    let three = shard_owners(&file, 3).await;
    let four = shard_owners(&file, 4).await;
    for shards in [&three, &four] {
        let union: BTreeSet<String> = shards.iter().flatten().cloned().collect();
        assert_eq!(union, all, "not every workspace is covered");
        let total: usize = shards.iter().map(|s| s.len()).sum();
        assert_eq!(total, all.len(), "a workspace is polled twice: {shards:?}");
    }
    for ws in &all {
        let (was, is) = (owner(&three, ws), owner(&four, ws));
        assert!(
            was == is || is == 3,
            "{ws} moved from shard {was} to old shard {is}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let (a, b) = (
        workspace_sim("ws_h1", 30).await,
        workspace_sim("ws_h2", 31).await,
    );
    let dir = temp_dir("sighup");
    let file = write_config(&dir, &[entry("a", &a, "")]);
    let port = free_port();
    let child = bin()
        .args([
            "--config.file",
            file.to_str().unwrap(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let _guard = Procs(vec![child]);
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let has = |ws: &'static str| {
        let u = metrics.clone();
        async move {
            let want = format!("clawmesh_up{{workspace=\"{ws}\",workspace_name=");
            match reqwest::get(u).await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains(&want)),
                Err(_) => false,
            }
        }
    };
    wait_for(Duration::from_secs(30), "ws_h1", || has("ws_h1")).await;
    write_config(&dir, &[entry("a", &a, ""), entry("b", &b, "")]);
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(Duration::from_secs(30), "ws_h2 after SIGHUP", || {
        has("ws_h2")
    })
    .await;
}

mod tls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };

    struct Pki {
        dir: PathBuf,
        ca: String,
        other_ca: String,
        client_identity: String,
    }

    fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn pki(name: &str) -> Pki {
        let dir = temp_dir(name);
        let ca = make_ca("test ca");
        let other = make_ca("another ca");
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        let ckey = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(vec!["prometheus".to_string()]).unwrap();
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = cp.signed_by(&ckey, &ca).unwrap();
        Pki {
            dir,
            ca: ca.pem(),
            other_ca: other.pem(),
            client_identity: client.pem() + &ckey.serialize_pem(),
        }
    }

    fn client(ca: &str, identity: Option<&str>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    async fn exporter_with(web_yaml: &str, p: &Pki) -> (clawmesh_exporter::exporter::Running, Sim) {
        let sim = workspace_sim("ws_tls", 40).await;
        let web = p.dir.join("web.yml");
        std::fs::write(&web, web_yaml).unwrap();
        let web_arg = web.to_str().unwrap().to_string();
        let cfg = exporter_config(&sim, &["--web.config.file", &web_arg]);
        (start_exporter(&cfg).await, sim)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_with_basic_auth() {
        let p = pki("tls");
        let hash = bcrypt::hash("correct horse", 4).unwrap();
        let yaml = format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {hash}\n"
        );
        let (exporter, _sim) = exporter_with(&yaml, &p).await;
        let url = format!("https://localhost:{}/metrics", exporter.addr.port());
        let good = client(&p.ca, None);
        let r = good
            .get(&url)
            .basic_auth("prometheus", Some("correct horse"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("clawmesh_exporter_build_info"));
        for (user, pass) in [("prometheus", "wrong"), ("mallory", "correct horse")] {
            let r = good
                .get(&url)
                .basic_auth(user, Some(pass))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{user}/{pass}");
        }
        assert_eq!(
            good.get(&url).send().await.unwrap().status(),
            401,
            "no credentials"
        );
        let health = format!("https://localhost:{}/healthz", exporter.addr.port());
        assert_eq!(
            good.get(&health).send().await.unwrap().status(),
            200,
            "probes stay open"
        );
        let wrong_ca = client(&p.other_ca, None);
        assert!(
            wrong_ca.get(&url).send().await.is_err(),
            "a client trusting another CA connected"
        );
        let plain = format!("http://localhost:{}/metrics", exporter.addr.port());
        assert!(
            !matches!(reqwest::get(&plain).await, Ok(r) if r.status() == 200),
            "plain HTTP served metrics"
        );

        // TLS 1.1 is refused, while TLS 1.2 works with the same tool.
        if let Some(openssl) = require_tool("openssl") {
            let addr = format!("127.0.0.1:{}", exporter.addr.port());
            let run = |version: &str| {
                let out = Command::new(&openssl)
                    .args([
                        "s_client",
                        "-connect",
                        &addr,
                        version,
                        "-cipher",
                        "DEFAULT:@SECLEVEL=0",
                    ])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr)
            };
            // s_client's exit code is no verdict; the session line is.
            let out12 = run("-tls1_2");
            assert!(
                out12.contains("New, TLSv1.2"),
                "TLS 1.2 should work:\n{out12}"
            );
            let out11 = run("-tls1_1");
            assert!(
                !out11.contains("New, TLSv1.1") && out11.contains("Cipher is (NONE)"),
                "TLS 1.1 was accepted:\n{out11}"
            );
        }
        exporter.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
        let p = pki("mtls");
        let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";
        let (exporter, _sim) = exporter_with(yaml, &p).await;
        let url = format!("https://localhost:{}/metrics", exporter.addr.port());
        let with_cert = client(&p.ca, Some(&p.client_identity));
        assert_eq!(with_cert.get(&url).send().await.unwrap().status(), 200);
        let without = client(&p.ca, None);
        assert!(
            without.get(&url).send().await.is_err(),
            "served a client without a certificate"
        );
        exporter.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_entries_for_one_workspace_are_refused() {
    let sim = workspace_sim("ws_twice", 50).await;
    let dir = temp_dir("twice");
    let file = write_config(&dir, &[entry("a", &sim, ""), entry("b", &sim, "")]);
    let args = clawmesh_exporter::config::RunArgs {
        config_file: Some(file),
        listen_address: "127.0.0.1:0".into(),
        ..exporter_args()
    };
    let cfg = args
        .validate(&std::collections::HashMap::<String, String>::new())
        .unwrap();
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
    let err = match clawmesh_exporter::exporter::start(&cfg, listener).await {
        Ok(_) => panic!("two entries for one workspace were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("ws_twice") && err.contains("already watches"),
        "{err}"
    );
}
