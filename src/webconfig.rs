//! `--web.config.file`: TLS and basic auth for the HTTP endpoint, in the
//! format of the Prometheus exporter-toolkit (the fields that matter here).
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), VerifyClientCertIfGiven
//!   client_ca_file: ca.crt
//!   min_version: TLS12                              # or TLS13; rustls speaks nothing older
//! basic_auth_users:
//!   prometheus: $2y$10$...                          # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```

pub mod settings;

use crate::files::Problems;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every client connection is held to, so that slow, idle or
/// numerous clients cannot exhaust the process (`--web.*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The TLS handshake, and each request's headers (from the first byte
    /// of the request, or from the connection's start for its first).
    pub read_header_timeout: Duration,
    /// A request body, from the moment its headers were read.
    pub read_body_timeout: Duration,
    /// A keep-alive connection without a request, or a response the client
    /// stopped reading.
    pub idle_timeout: Duration,
    /// Writing one response, from its start: a client reading a trickle
    /// cannot extend it.
    pub write_timeout: Duration,
    /// Connections open at once; past it a new one is closed at once.
    pub max_connections: usize,
    /// bcrypt verifications at once (basic auth).
    pub auth_concurrency: usize,
    /// Bytes of one request's headers (HTTP/1 read buffer, HTTP/2 header
    /// list); past it the request is refused (431) or the connection closed.
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once on one connection.
    pub max_h2_streams: u32,
    /// How long a password check waits for one of them before a 503.
    pub auth_max_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_header_timeout: Duration::from_secs(10),
            read_body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: 512,
            auth_concurrency: 2,
            max_header_bytes: 64 * 1024,
            max_h2_streams: 16,
            auth_max_wait: Duration::from_secs(1),
        }
    }
}

/// hyper's smallest HTTP/1 buffer.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
}

/// The validated web configuration.
#[derive(Clone, Default)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
    /// The bounds on clients, from the `--web.*` flags.
    pub limits: Limits,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field(
                "basic_auth_users",
                &self.auth.as_ref().map(|a| a.users.len()),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

pub fn load(path: &Path, files: &crate::files::FileLimits) -> Result<WebConfig, Problems> {
    let one = |m: String| Problems(vec![format!("{}: {m}", path.display())]);
    let text = crate::files::read_yaml(path, files).map_err(|e| one(e.to_string()))?;
    let raw: RawWebConfig = serde_norway::from_str(&text).map_err(|e| one(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let tls = match raw.tls_server_config {
        None => None,
        Some(t) => match tls_config(&t, dir, files) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                problems.push(format!("{}: tls_server_config: {e}", path.display()));
                None
            }
        },
    };
    let mut users = BTreeMap::new();
    for (user, hash) in raw.basic_auth_users {
        match BcryptHash::parse(&hash) {
            Ok(h) => {
                users.insert(user, h);
            }
            Err(why) => problems.push(format!(
                "{}: basic_auth_users.{user}: {why} (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')",
                path.display()
            )),
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let auth = (!users.is_empty()).then(|| Arc::new(BasicAuth::new(users)));
    Ok(WebConfig {
        tls,
        auth,
        limits: Default::default(),
    })
}

fn tls_config(
    t: &RawTls,
    dir: &Path,
    files: &crate::files::FileLimits,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(v @ ("TLS10" | "TLS11")) => {
            return Err(format!(
                "min_version {v}: not supported; TLS12 is the oldest this exporter speaks"
            ))
        }
        Some(v) => return Err(format!("min_version {v:?}: expected TLS12 or TLS13")),
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let certs = read_certs(&dir.join(&t.cert_file), files)?;
    let key = {
        let path = dir.join(&t.key_file);
        let pem = crate::files::read(&path, files)
            .map_err(|e| format!("key_file {}: {e}", path.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| format!("key_file {}: {e}", path.display()))?
            .ok_or_else(|| format!("key_file {}: no private key in it", path.display()))?
    };
    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca = t.client_ca_file.as_ref().ok_or_else(|| format!("client_auth_type {auth_type} needs client_ca_file"))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(&dir.join(ca), files)? {
                roots.add(c).map_err(|e| format!("client_ca_file: {e}"))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth_type == "VerifyClientCertIfGiven" { v.allow_unauthenticated() } else { v };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("client_ca_file: {e}"))?)
        }
        other => {
            return Err(format!(
                "client_auth_type {other:?}: expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            ))
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file/key_file: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn read_certs(
    path: &Path,
    files: &crate::files::FileLimits,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = crate::files::read(path, files).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// A bcrypt hash checked at start: a known prefix, a cost bcrypt accepts
/// and a salt and digest in bcrypt's base64, so that no login can fail
/// later for a reason nobody sees.
#[derive(Clone)]
pub struct BcryptHash {
    text: String,
    cost: u32,
}

/// bcrypt's own base64 (`./A-Za-z0-9`, no padding, no stray bits), as the
/// bcrypt crate decodes salts and digests.
const BCRYPT_B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::BCRYPT,
    base64::engine::general_purpose::NO_PAD,
);

impl BcryptHash {
    pub fn parse(h: &str) -> Result<BcryptHash, String> {
        let b = h.as_bytes();
        if b.len() != 60 || !h.is_ascii() || b[0] != b'$' || b[3] != b'$' || b[6] != b'$' {
            return Err(
                "not a bcrypt hash ($2y$, two digits of cost, $, 53 characters of salt and digest)"
                    .into(),
            );
        }
        if !["2a", "2b", "2x", "2y"].contains(&&h[1..3]) {
            return Err(format!(
                "bcrypt prefix ${}$: expected $2y$ (or $2a$, $2b$)",
                &h[1..3]
            ));
        }
        let cost = match h[4..6].bytes().all(|c| c.is_ascii_digit()) {
            true => h[4..6].parse::<u32>().unwrap_or(0),
            false => return Err(format!("bcrypt cost {:?}: expected two digits", &h[4..6])),
        };
        if !(4..=31).contains(&cost) {
            return Err(format!("bcrypt cost {cost}: must be 4 to 31"));
        }
        let salt_ok = base64::Engine::decode(&BCRYPT_B64, &h[7..29]).is_ok_and(|s| s.len() == 16);
        let digest_ok = base64::Engine::decode(&BCRYPT_B64, &h[29..]).is_ok_and(|d| d.len() == 23);
        if !(salt_ok && digest_ok) {
            return Err("the salt or digest is not bcrypt base64 (./A-Za-z0-9)".into());
        }
        Ok(BcryptHash {
            text: h.to_string(),
            cost,
        })
    }
}

/// Basic auth against bcrypt hashes. bcrypt is slow on purpose, so
/// successful logins are cached by a hash of user and password (never the
/// password itself); failures are not, so a flood of wrong passwords cannot
/// evict the right ones. Every uncached check costs the same bcrypt work,
/// known user or not, whatever each hash's cost (see [`BasicAuth::plan`]).
pub struct BasicAuth {
    users: BTreeMap<String, BcryptHash>,
    max_cost: u32,
    cache: Mutex<HashSet<[u8; 32]>>,
}

/// The salt and digest of a hash of nothing anyone knows: with any cost in
/// front, a check of that cost that never succeeds.
const DUMMY_TAIL: &str = "QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DSmV5kBQJzzRUETiFR5Ty";
/// Successful logins remembered; only the right passwords get in.
const CACHE_MAX: usize = 1024;

fn dummy(cost: u32) -> String {
    format!("$2y${cost:02}${DUMMY_TAIL}")
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, BcryptHash>) -> Self {
        let max_cost = users.values().map(|h| h.cost).max().unwrap_or(10);
        BasicAuth {
            users,
            max_cost,
            cache: Mutex::new(HashSet::new()),
        }
    }

    fn key(user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether these credentials logged in before: cheap, no bcrypt.
    pub fn cached(&self, user: &str, password: &str) -> bool {
        let k = Self::key(user, password);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&k)
    }

    /// The bcrypt runs for a check of `user`: the user's own hash (a dummy
    /// of the highest configured cost for an unknown user), then dummies of
    /// cost c, c+1, ..., max-1 after a hash of cost c, so that every check
    /// does 2^max rounds' worth: 2^c + (2^c + ... + 2^(max-1)) = 2^max.
    fn plan(&self, user: &str) -> (Option<&str>, Vec<String>) {
        let (first, cost) = match self.users.get(user) {
            Some(h) => (Some(h.text.as_str()), h.cost),
            None => (None, self.max_cost),
        };
        (first, (cost..self.max_cost).map(dummy).collect())
    }

    /// The slow check: bcrypt, on a blocking thread (see [`require_basic_auth`]).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (first, pads) = self.plan(user);
        let ok = match first {
            Some(h) => bcrypt::verify(password, h).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &dummy(self.max_cost));
                false
            }
        };
        for p in &pads {
            let _ = bcrypt::verify(password, p);
        }
        if ok {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(Self::key(user, password));
        }
        ok
    }

    /// [`BasicAuth::cached`], else [`BasicAuth::verify`].
    pub fn check(&self, user: &str, password: &str) -> bool {
        self.cached(user, password) || self.verify(user, password)
    }
}

/// [`BasicAuth`] with a bound on the bcrypt runs at once: they take whole
/// cores, and an unbounded number of them starved every other request.
pub struct AuthGate {
    auth: Arc<BasicAuth>,
    slots: Arc<tokio::sync::Semaphore>,
    max_wait: std::time::Duration,
    busy: std::sync::atomic::AtomicU64,
    stats: Arc<crate::metrics::ServerStats>,
}

impl AuthGate {
    pub fn new(
        auth: Arc<BasicAuth>,
        limits: &Limits,
        stats: Arc<crate::metrics::ServerStats>,
    ) -> Self {
        AuthGate {
            auth,
            slots: Arc::new(tokio::sync::Semaphore::new(limits.auth_concurrency)),
            max_wait: limits.auth_max_wait,
            busy: Default::default(),
            stats,
        }
    }
}

/// Axum middleware: every path but the probes needs valid credentials.
/// Cached credentials pass at once; others wait at most
/// `--web.basic-auth.max-wait` for a bcrypt slot, else get 503.
pub async fn require_basic_auth(
    State(gate): State<Arc<AuthGate>>,
    req: Request,
    next: Next,
) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    // A failed or refused login closes an HTTP/1 connection: a flood of
    // wrong passwords then churns through connections and queues for them
    // (see server::serve) instead of keeping them, while a client that
    // logged in keeps its own.
    let close = req.version() <= axum::http::Version::HTTP_11;
    let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return unauthorized(close);
    };
    if gate.auth.cached(user, password) {
        return next.run(req).await;
    }
    let wait = tokio::time::timeout(gate.max_wait, gate.slots.clone().acquire_owned());
    let Ok(Ok(slot)) = wait.await else {
        gate.stats.refused("auth_busy");
        let n = gate.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_power_of_two() || n == 0 {
            tracing::warn!(
                total = n + 1,
                "password checks refused with 503: --web.basic-auth.max-concurrent checks were busy for --web.basic-auth.max-wait"
            );
        }
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many password checks at once; retry\n",
        )
            .into_response();
        if close {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        return r;
    };
    let auth = gate.auth.clone();
    let (user, password) = (user.to_string(), password.to_string());
    // bcrypt takes tens of milliseconds: off the async threads, and the
    // slot is held until it has finished even if the client went away.
    let ok = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        auth.verify(&user, &password)
    })
    .await
    .unwrap_or(false);
    if ok {
        next.run(req).await
    } else {
        unauthorized(close)
    }
}

fn unauthorized(close: bool) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"clawmesh-exporter\"",
        )],
        "Unauthorized\n",
    )
        .into_response();
    if close {
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(users: &[(&str, &str, u32)]) -> BasicAuth {
        BasicAuth::new(
            users
                .iter()
                .map(|(u, p, cost)| {
                    let h = bcrypt::hash(p, *cost).unwrap();
                    (u.to_string(), BcryptHash::parse(&h).unwrap())
                })
                .collect(),
        )
    }

    #[test]
    fn bcrypt_verification_caches_only_successes() {
        let a = auth(&[("alice", "s3cret", 4)]);
        assert!(!a.cached("alice", "s3cret"));
        assert!(a.check("alice", "s3cret"));
        assert!(a.cached("alice", "s3cret"), "a success is remembered");
        assert!(!a.check("alice", "wrong"));
        assert!(!a.cached("alice", "wrong"), "a failure is not");
        assert!(!a.check("mallory", "s3cret"));
        assert!(BcryptHash::parse(&dummy(10)).is_ok());
    }

    /// Every check does 2^max rounds of bcrypt, for each configured user
    /// (whatever its cost) and for an unknown one, so timing tells nothing.
    #[test]
    fn every_user_and_an_unknown_one_cost_the_same() {
        let a = auth(&[("cheap", "a", 4), ("usual", "b", 5), ("dear", "c", 7)]);
        let rounds = |user: &str| {
            let (first, pads) = a.plan(user);
            let first_cost = first.map_or(a.max_cost, |h| BcryptHash::parse(h).unwrap().cost);
            std::iter::once(first_cost)
                .chain(pads.iter().map(|p| BcryptHash::parse(p).unwrap().cost))
                .map(|c| 1u64 << c)
                .sum::<u64>()
        };
        for user in ["cheap", "usual", "dear", "nobody"] {
            assert_eq!(rounds(user), 1 << 7, "{user}");
        }
        assert!(a.check("cheap", "a") && a.check("dear", "c"));
    }

    #[test]
    fn invalid_hashes_are_refused_with_the_reason() {
        let good = bcrypt::hash("x", 4).unwrap();
        assert!(BcryptHash::parse(&good).is_ok());
        let tail = &good[7..];
        for (bad, why) in [
            (format!("$2y$99${tail}"), "cost 99: must be 4 to 31"),
            (format!("$2y$03${tail}"), "cost 3: must be 4 to 31"),
            (format!("$2y$+9${tail}"), "expected two digits"),
            (format!("$2q$10${tail}"), "prefix $2q$"),
            (
                format!("$2y$10${}!{}", &tail[..5], &tail[6..]),
                "not bcrypt base64",
            ),
            // The 22nd salt character carries 2 bits: only . O e u are canonical.
            (
                format!("$2y$10${}Z{}", &tail[..21], &tail[22..]),
                "not bcrypt base64",
            ),
            (good[..59].to_string(), "not a bcrypt hash"),
            ("plain".to_string(), "not a bcrypt hash"),
        ] {
            let e = BcryptHash::parse(&bad).err().unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e:?}");
        }
    }

    #[test]
    fn problems_name_the_file_and_field() {
        let dir = std::env::temp_dir().join(format!("cmx-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("web.yml");
        std::fs::write(&f, "basic_auth_users:\n  bob: plain\n").unwrap();
        let e = load(&f, &Default::default()).unwrap_err().0;
        assert!(
            e[0].contains("basic_auth_users.bob: not a bcrypt hash"),
            "{e:?}"
        );
        std::fs::write(&f, "tls_server_config:\n  cert_file: none.crt\n  key_file: none.key\n  min_version: TLS11\n").unwrap();
        assert!(load(&f, &Default::default()).unwrap_err().0[0].contains("TLS12 is the oldest"));
        std::fs::write(&f, "tls_config: {}\n").unwrap();
        assert!(load(&f, &Default::default()).unwrap_err().0[0].contains("unknown field"));
    }
}
