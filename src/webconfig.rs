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

use crate::config_file::Problems;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field(
                "basic_auth_users",
                &self.auth.as_ref().map(|a| a.users.len()),
            )
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
    for (user, hash) in &raw.basic_auth_users {
        if hash.parse::<bcrypt::HashParts>().is_err() {
            problems.push(format!(
                "{}: basic_auth_users.{user}: not a bcrypt hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')",
                path.display()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let auth =
        (!raw.basic_auth_users.is_empty()).then(|| Arc::new(BasicAuth::new(raw.basic_auth_users)));
    Ok(WebConfig { tls, auth })
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

/// Basic auth against bcrypt hashes. bcrypt is slow on purpose, so verdicts
/// are cached by a hash of user and password (never the password itself);
/// an unknown user costs the same bcrypt run as a known one.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    cache: Mutex<HashMap<[u8; 32], bool>>,
}

/// A bcrypt hash of nothing anyone knows, to spend the same time on unknown users.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DSmV5kBQJzzRUETiFR5Ty";
const CACHE_MAX: usize = 1024;

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        BasicAuth {
            users,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, user: &str, password: &str) -> bool {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let k: [u8; 32] = h.finalize().into();
        if let Some(v) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            return *v;
        }
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(k, ok);
        ok
    }
}

/// Axum middleware: every path but the probes needs valid credentials.
pub async fn require_basic_auth(
    State(auth): State<Arc<BasicAuth>>,
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
    let ok = match creds.as_deref().and_then(|c| c.split_once(':')) {
        Some((u, p)) => {
            let auth = auth.clone();
            let (u, p) = (u.to_string(), p.to_string());
            // bcrypt takes tens of milliseconds: off the async threads.
            tokio::task::spawn_blocking(move || auth.check(&u, &p))
                .await
                .unwrap_or(false)
        }
        None => false,
    };
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"clawmesh-exporter\"",
            )],
            "Unauthorized\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_verification_with_cache_and_unknown_users() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let a = BasicAuth::new([("alice".to_string(), hash)].into_iter().collect());
        assert!(a.check("alice", "s3cret"));
        assert!(a.check("alice", "s3cret"), "cached");
        assert!(!a.check("alice", "wrong"));
        assert!(!a.check("mallory", "s3cret"));
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
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
