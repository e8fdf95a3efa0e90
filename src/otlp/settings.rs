//! OTLP settings: the `--otlp.*` flags over the standard `OTEL_*`
//! environment variables (read through the [`Env`] seam) over defaults, to
//! one validated [`OtlpConfig`]. Flags win; OTLP is off without an endpoint.

use crate::env::Env;
use crate::secret::Secret;
use clap::{Args, ValueEnum};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// OTLP push, off unless an endpoint is given (here or in
/// OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT). The
/// flags win over the standard OTEL_* variables; see `otlp::settings`.
#[derive(Debug, Clone, Default, Args)]
pub struct OtlpArgs {
    /// OTLP endpoint to push to, e.g. http://collector:4317 (gRPC) or http://collector:4318 (HTTP; /v1/metrics is added to a bare host:port).
    #[arg(
        long = "otlp.endpoint",
        env = "CLAWMESH_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// OTLP transport [default: http/protobuf, or OTEL_EXPORTER_OTLP_PROTOCOL].
    #[arg(long = "otlp.protocol", env = "CLAWMESH_OTLP_PROTOCOL", value_enum)]
    pub protocol: Option<Protocol>,
    /// How often to push [default: 60s, or OTEL_METRIC_EXPORT_INTERVAL in ms].
    #[arg(long = "otlp.interval", env = "CLAWMESH_OTLP_INTERVAL", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Timeout of one push attempt, and of the last push at shutdown [default: 10s, or OTEL_EXPORTER_OTLP_TIMEOUT in ms].
    #[arg(long = "otlp.timeout", env = "CLAWMESH_OTLP_TIMEOUT", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Cumulative totals, or deltas since the last delivered push (Datadog) [default: cumulative].
    #[arg(
        long = "otlp.temporality",
        env = "CLAWMESH_OTLP_TEMPORALITY",
        value_enum
    )]
    pub temporality: Option<Temporality>,
    /// Histograms as the explicit buckets of /metrics, or base-2 exponential [default: explicit].
    #[arg(long = "otlp.histogram", env = "CLAWMESH_OTLP_HISTOGRAM", value_enum)]
    pub histogram: Option<HistogramMode>,
    /// File of extra request headers, one name=value per line (e.g. dd-api-key=...); values are secrets. Merged over OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(
        long = "otlp.headers-file",
        env = "CLAWMESH_OTLP_HEADERS_FILE",
        value_name = "PATH"
    )]
    pub headers_file: Option<PathBuf>,
    /// PEM file of a CA to trust for the collector, besides the system roots.
    #[arg(
        long = "otlp.ca-file",
        env = "CLAWMESH_OTLP_CA_FILE",
        value_name = "PATH"
    )]
    pub ca_file: Option<PathBuf>,
    /// Compress each push: gzip or none [default: none, or OTEL_EXPORTER_OTLP_COMPRESSION].
    #[arg(
        long = "otlp.compression",
        env = "CLAWMESH_OTLP_COMPRESSION",
        value_enum
    )]
    pub compression: Option<Compression>,
    /// PEM certificate (chain) the exporter presents to the collector (mutual TLS); needs --otlp.client-key and an https:// endpoint.
    #[arg(
        long = "otlp.client-certificate",
        env = "CLAWMESH_OTLP_CLIENT_CERTIFICATE",
        value_name = "PATH"
    )]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of --otlp.client-certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long = "otlp.client-key",
        env = "CLAWMESH_OTLP_CLIENT_KEY",
        value_name = "PATH"
    )]
    pub client_key: Option<PathBuf>,
    /// Largest request sent (its protobuf before compression); a bigger export goes out as several requests [default: 3MiB, under a Collector's 4MiB gRPC receive limit].
    #[arg(id = "otlp_max_request_size", long = "otlp.max-request-size", env = "CLAWMESH_OTLP_MAX_REQUEST_SIZE", value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub max_request_size: Option<u64>,
    /// Largest collector reply read (HTTP body, gRPC message); the rest is left unread [default: 64KiB].
    #[arg(id = "otlp_max_response_size", long = "otlp.max-response-size", env = "CLAWMESH_OTLP_MAX_RESPONSE_SIZE", value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub max_response_size: Option<u64>,
    /// Longest wait granted to a collector's Retry-After (HTTP 429/503) or RetryInfo (gRPC) [default: 5m].
    #[arg(id = "otlp_max_retry_after", long = "otlp.max-retry-after", env = "CLAWMESH_OTLP_MAX_RETRY_AFTER", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub max_retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with a protobuf body, at `/v1/metrics` (port 4318).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Temporality {
    /// Totals since the exporter started (Prometheus-style backends, the Collector).
    Cumulative,
    /// Increments since the previous delivered export (Datadog).
    Delta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistogramMode {
    /// The buckets /metrics shows.
    Explicit,
    /// Base-2 exponential buckets recorded from the raw observations.
    Exponential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    /// The protobuf as it is.
    None,
    /// gzip: the HTTP body (`Content-Encoding: gzip`) or each gRPC message (`grpc-encoding: gzip`).
    Gzip,
}

/// The certificate and key the exporter presents to the collector (mutual
/// TLS). `Debug` shows sizes only; the key is a [`Secret`].
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

/// The defaults of the OpenTelemetry specification.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SERVICE_NAME: &str = "clawmesh-exporter";
/// Under the 4 MiB a Collector's gRPC receiver takes by default, with room
/// for the frame and headers.
pub const DEFAULT_MAX_REQUEST_SIZE: u64 = 3 << 20;
/// An ExportMetricsServiceResponse (a partial-success count and message) or
/// an error text fits many times over.
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 64 << 10;
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A validated OTLP setup. `Debug` shows header names, never their values.
#[derive(Clone)]
pub struct OtlpConfig {
    /// Where to send: for HTTP the full URL including `/v1/metrics`.
    pub endpoint: String,
    pub protocol: Protocol,
    pub interval: Duration,
    /// Timeout of one attempt; also the deadline of the flush at shutdown.
    pub timeout: Duration,
    pub temporality: Temporality,
    pub histogram: HistogramMode,
    /// Extra request headers (lower-case names); the values are secrets.
    pub headers: Vec<(String, Secret)>,
    /// PEM of the CA that signs the collector's certificate, besides the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Where that CA came from (`--otlp.ca-file /path`), for TLS errors.
    pub ca_source: Option<String>,
    pub compression: Compression,
    /// For a collector that requires a client certificate.
    pub client_identity: Option<ClientIdentity>,
    /// Resource attributes, `service.name` first.
    pub resource: Vec<(String, String)>,
    /// Largest request (encoded protobuf, before compression): an export
    /// goes out in as many requests as it takes.
    pub max_request_size: usize,
    /// Largest reply read from the collector.
    pub max_response_size: usize,
    /// Cap on a collector's Retry-After.
    pub max_retry_after: Duration,
}

impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("temporality", &self.temporality)
            .field("histogram", &self.histogram)
            .field("headers", &self.headers)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("compression", &self.compression)
            .field("client_identity", &self.client_identity)
            .field("resource", &self.resource)
            .field("max_request_size", &self.max_request_size)
            .field("max_response_size", &self.max_response_size)
            .field("max_retry_after", &self.max_retry_after)
            .finish()
    }
}

impl OtlpConfig {
    pub fn service_name(&self) -> &str {
        self.resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_SERVICE_NAME)
    }
}

fn first(env: &dyn Env, names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        env.var(n)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (n.to_string(), v))
    })
}

fn parse_enum<T: ValueEnum + Copy>(
    source: &str,
    v: &str,
    extra: &[(&str, T)],
) -> Result<T, String> {
    if let Some((_, t)) = extra.iter().find(|(k, _)| k.eq_ignore_ascii_case(v)) {
        return Ok(*t);
    }
    T::from_str(v, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|t| t.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!("{source} {v:?}: expected one of {}", names.join(", "))
    })
}

fn millis(source: &str, v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{source} {v:?}: expected milliseconds, e.g. 60000"))
}

/// Resolve the OTLP settings; `Ok(None)` when no endpoint is given anywhere.
pub fn resolve(
    args: &OtlpArgs,
    env: &dyn Env,
    files: &crate::files::FileLimits,
) -> Result<Option<OtlpConfig>, String> {
    let protocol = match (
        &args.protocol,
        first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        ),
    ) {
        (Some(p), _) => *p,
        (None, Some((name, v))) => {
            if v.eq_ignore_ascii_case("http/json") {
                return Err(format!(
                    "{name} {v:?}: http/json is not supported; use grpc or http/protobuf"
                ));
            }
            parse_enum(&name, &v, &[])?
        }
        // The specification's default.
        (None, None) => Protocol::HttpProtobuf,
    };
    let endpoint = match (
        &args.endpoint,
        first(env, &["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]),
        first(env, &["OTEL_EXPORTER_OTLP_ENDPOINT"]),
    ) {
        (Some(e), _, _) => {
            endpoint_url("--otlp.endpoint", e.trim(), protocol, Base::UnlessPathGiven)?
        }
        (None, Some((name, e)), _) => endpoint_url(&name, &e, protocol, Base::Never)?,
        (None, None, Some((name, e))) => endpoint_url(&name, &e, protocol, Base::Always)?,
        (None, None, None) => return Ok(None),
    };
    let interval = match (args.interval, first(env, &["OTEL_METRIC_EXPORT_INTERVAL"])) {
        (Some(d), _) => d,
        (None, Some((name, v))) => millis(&name, &v)?,
        (None, None) => DEFAULT_INTERVAL,
    };
    if interval < Duration::from_millis(100) {
        return Err("--otlp.interval: must be at least 100ms".into());
    }
    let timeout = match (
        args.timeout,
        first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
        ),
    ) {
        (Some(d), _) => d,
        (None, Some((name, v))) => millis(&name, &v)?,
        (None, None) => DEFAULT_TIMEOUT,
    };
    if timeout < Duration::from_millis(10) {
        return Err("--otlp.timeout: must be at least 10ms".into());
    }
    let temporality = match (
        args.temporality,
        first(env, &["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"]),
    ) {
        (Some(t), _) => t,
        // lowmemory: delta for counters and histograms, which is all ours have.
        (None, Some((name, v))) => parse_enum(&name, &v, &[("lowmemory", Temporality::Delta)])?,
        (None, None) => Temporality::Cumulative,
    };
    let histogram = match (
        args.histogram,
        first(
            env,
            &["OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"],
        ),
    ) {
        (Some(h), _) => h,
        (None, Some((name, v))) => parse_enum(
            &name,
            &v,
            &[
                ("explicit_bucket_histogram", HistogramMode::Explicit),
                (
                    "base2_exponential_bucket_histogram",
                    HistogramMode::Exponential,
                ),
            ],
        )?,
        (None, None) => HistogramMode::Explicit,
    };
    let mut headers: Vec<(String, Secret)> = Vec::new();
    for (name, list) in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ]
    .iter()
    .filter_map(|n| first(env, &[n]))
    {
        for (k, v) in parse_pairs(&name, &list, ',')? {
            set_header(&mut headers, &name, k, v)?;
        }
    }
    if let Some(path) = &args.headers_file {
        let source = format!("--otlp.headers-file {}", path.display());
        let raw =
            crate::files::read_to_string(path, files).map_err(|e| format!("{source}: {e}"))?;
        let lines = raw
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for line in lines {
            let (k, v) = line
                .split_once('=')
                .or_else(|| line.split_once(':'))
                .ok_or_else(|| format!("{source}: expected one name=value per line"))?;
            set_header(
                &mut headers,
                &source,
                k.trim().to_string(),
                Secret::new(v.trim()),
            )?;
        }
    }
    let ca_path = path_setting(
        &args.ca_file,
        "--otlp.ca-file",
        env,
        &[
            "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ],
    );
    let ca_source = ca_path
        .as_ref()
        .map(|(source, path)| format!("{source} {}", path.display()));
    let ca_pem = match ca_path {
        None => None,
        Some((source, path)) => {
            let pem = crate::files::read(&path, files)
                .map_err(|e| format!("{source} {}: {e}", path.display()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "{source} {}: no PEM certificate in the file",
                    path.display()
                ));
            }
            Some(pem)
        }
    };
    let compression = match (
        args.compression,
        first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ],
        ),
    ) {
        (Some(c), _) => c,
        (None, Some((name, v))) => parse_enum(&name, &v, &[])?,
        (None, None) => Compression::None,
    };
    let client_identity = client_identity(args, env, files, &endpoint)?;
    let max_request_size = args.max_request_size.unwrap_or(DEFAULT_MAX_REQUEST_SIZE);
    // Below this not even one ordinary data point with its attributes fits.
    if max_request_size < 1024 {
        return Err("--otlp.max-request-size: must be at least 1KiB; the default is 3MiB".into());
    }
    let max_response_size = args.max_response_size.unwrap_or(DEFAULT_MAX_RESPONSE_SIZE);
    if max_response_size < 64 {
        return Err(
            "--otlp.max-response-size: must be at least 64B to read a collector's answer; the default is 64KiB"
                .into(),
        );
    }
    Ok(Some(OtlpConfig {
        endpoint,
        protocol,
        interval,
        timeout,
        temporality,
        histogram,
        headers,
        ca_pem,
        ca_source,
        compression,
        client_identity,
        resource: resource(env)?,
        max_request_size: usize::try_from(max_request_size).unwrap_or(usize::MAX),
        max_response_size: usize::try_from(max_response_size).unwrap_or(usize::MAX),
        max_retry_after: args.max_retry_after.unwrap_or(DEFAULT_MAX_RETRY_AFTER),
    }))
}

/// A path from its flag, else the first of the variables set.
fn path_setting(
    flag: &Option<std::path::PathBuf>,
    flag_name: &str,
    env: &dyn Env,
    vars: &[&str],
) -> Option<(String, std::path::PathBuf)> {
    match (flag, first(env, vars)) {
        (Some(p), _) => Some((flag_name.to_string(), p.clone())),
        (None, Some((name, p))) => Some((name, p.into())),
        (None, None) => None,
    }
}

/// The client certificate and key, both or neither, checked now so that a
/// bad one is a start-up error rather than a failed handshake later. No
/// message carries anything read from the key file.
fn client_identity(
    args: &OtlpArgs,
    env: &dyn Env,
    files: &crate::files::FileLimits,
    endpoint: &str,
) -> Result<Option<ClientIdentity>, String> {
    let cert = path_setting(
        &args.client_certificate,
        "--otlp.client-certificate",
        env,
        &[
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ],
    );
    let key = path_setting(
        &args.client_key,
        "--otlp.client-key",
        env,
        &[
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ],
    );
    let ((cert_src, cert_path), (key_src, key_path)) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some((s, _)), None) => {
            return Err(format!(
                "{s} is given without its key: set --otlp.client-key (or OTEL_EXPORTER_OTLP_CLIENT_KEY) too"
            ))
        }
        (None, Some((s, _))) => {
            return Err(format!(
                "{s} is given without its certificate: set --otlp.client-certificate (or OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE) too"
            ))
        }
        (Some(c), Some(k)) => (c, k),
    };
    let cert_at = format!("{cert_src} {}", cert_path.display());
    let key_at = format!("{key_src} {}", key_path.display());
    if !endpoint.starts_with("https://") {
        return Err(format!(
            "{cert_at}: a client certificate is only sent over TLS; use an https:// endpoint (it is {endpoint})"
        ));
    }
    let cert_pem = crate::files::read(&cert_path, files).map_err(|e| format!("{cert_at}: {e}"))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{cert_at}: not a readable PEM certificate file"))?;
    if certs.is_empty() {
        return Err(format!("{cert_at}: no PEM certificate in the file"));
    }
    // The file's errors (size, type, timeout) never quote its content.
    let key_pem = crate::files::read(&key_path, files).map_err(|e| format!("{key_at}: {e}"))?;
    // The parser's own error can quote a byte of the key: not passed on.
    let key = match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
        Ok(Some(k)) => k,
        _ => {
            return Err(format!(
                "{key_at}: no PEM private key in the file (PKCS#8, PKCS#1 or SEC1)"
            ))
        }
    };
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| format!("{key_at}: a private key of a kind TLS cannot use"))?;
    // The certificate's public key, read from its DER here rather than by
    // rustls' `keys_match`: that parses the whole certificate with webpki,
    // which refuses X.509 v1 (no extensions) though the key matches, and a
    // collector (Go's crypto/x509) takes a v1 client certificate.
    let cert_key = subject_public_key_info(&certs[0]).ok_or_else(|| {
        format!("{cert_at}: the first certificate is not a readable X.509 certificate")
    })?;
    match signer.public_key() {
        Some(k) if k.as_ref() != cert_key => {
            return Err(format!(
                "{key_at}: not the key of the certificate in {cert_at}"
            ))
        }
        // A key kind whose public half rustls cannot tell: the handshake will.
        _ => {}
    }
    let key_pem = String::from_utf8(key_pem)
        .map_err(|_| format!("{key_at}: no PEM private key in the file"))?;
    Ok(Some(ClientIdentity {
        cert_pem,
        key_pem: Secret::new(key_pem),
    }))
}

/// One DER element at the start of `der`: its tag, the whole element and
/// what follows it.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in der.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, der.get(..end)?, der.get(end..)?))
}

/// The inside of a DER element.
fn der_content(element: &[u8]) -> Option<&[u8]> {
    let first = *element.get(1)? as usize;
    let head = if first < 0x80 { 2 } else { 2 + (first & 0x7f) };
    element.get(head..)
}

/// The SubjectPublicKeyInfo of a certificate, v1 or v3 alike:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL (absent in v1), serial, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, ... }, ... }`.
fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = der_element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_element(der_content(cert)?)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = der_content(tbs)?;
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    // serial, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = der_element(rest)?.2;
    }
    let (tag, spki, _) = der_element(rest)?;
    (tag == SEQUENCE).then_some(spki)
}

enum Base {
    /// OTEL_EXPORTER_OTLP_ENDPOINT: a base URL, `v1/metrics` always added for HTTP.
    Always,
    /// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: used as given.
    Never,
    /// The flag: added to a bare `http://host:port`, kept when a path is given.
    UnlessPathGiven,
}

fn endpoint_url(source: &str, raw: &str, protocol: Protocol, base: Base) -> Result<String, String> {
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or_else(|| {
            format!(
                "{source} {raw:?}: must start with http:// or https://, e.g. http://localhost:4317"
            )
        })?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() || raw.parse::<http::Uri>().is_err() {
        return Err(format!(
            "{source} {raw:?}: not a URL, e.g. http://localhost:4317"
        ));
    }
    if protocol == Protocol::Grpc {
        // gRPC has its own path (the service and method); only the authority counts.
        let scheme = if raw.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        return Ok(format!("{scheme}://{authority}"));
    }
    let add = match base {
        Base::Always => true,
        Base::Never => false,
        Base::UnlessPathGiven => path.trim_matches('/').is_empty(),
    };
    Ok(if add {
        format!("{}/v1/metrics", raw.trim_end_matches('/'))
    } else {
        raw.to_string()
    })
}

fn set_header(
    headers: &mut Vec<(String, Secret)>,
    source: &str,
    name: String,
    value: Secret,
) -> Result<(), String> {
    let name = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{source}: {name:?} is not a valid header name"));
    }
    // Never echo the value: it is a secret.
    if http::HeaderValue::from_str(value.expose()).is_err() {
        return Err(format!(
            "{source}: the value of header {name} has characters a header cannot carry"
        ));
    }
    headers.retain(|(n, _)| *n != name);
    headers.push((name, value));
    Ok(())
}

/// `k1=v1,k2=v2` with percent-encoded values (W3C Baggage style, as the
/// specification defines OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES).
fn parse_pairs(source: &str, list: &str, sep: char) -> Result<Vec<(String, Secret)>, String> {
    let mut out = Vec::new();
    for item in list.split(sep).map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{source}: expected key=value pairs separated by commas"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{source}: an entry has an empty key"));
        }
        let v = percent_decode(v.trim())
            .ok_or_else(|| format!("{source}: bad percent-encoding in the value of {k}"))?;
        out.push((k.to_string(), Secret::new(v)));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The resource: the exporter process. `service.name` from OTEL_SERVICE_NAME,
/// else OTEL_RESOURCE_ATTRIBUTES, else the default; `service.version` is the
/// build; `service.instance.id` a random UUID unless given.
fn resource(env: &dyn Env) -> Result<Vec<(String, String)>, String> {
    let mut given: Vec<(String, String)> = match first(env, &["OTEL_RESOURCE_ATTRIBUTES"]) {
        Some((name, list)) => parse_pairs(&name, &list, ',')?
            .into_iter()
            .map(|(k, v)| (k, v.expose().to_string()))
            .collect(),
        None => Vec::new(),
    };
    let mut take = |key: &str| {
        given
            .iter()
            .position(|(k, _)| k == key)
            .map(|i| given.remove(i).1)
    };
    let from_attributes = take("service.name");
    let name = first(env, &["OTEL_SERVICE_NAME"])
        .map(|(_, v)| v)
        .or(from_attributes)
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    let instance = take("service.instance.id").unwrap_or_else(random_uuid);
    let version = take("service.version").unwrap_or_else(|| crate::metrics::version().to_string());
    let mut out = vec![
        ("service.name".to_string(), name),
        ("service.version".to_string(), version),
        ("service.instance.id".to_string(), instance),
    ];
    out.extend(given);
    Ok(out)
}

/// A version-4 UUID, as the specification suggests for `service.instance.id`.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The SPKI reader fed hostile DER: it answers or refuses, never panics,
/// and what it answers lies inside what it was given.
#[cfg(test)]
mod hostile_der {
    use super::subject_public_key_info;
    use proptest::prelude::*;

    fn inside(outer: &[u8], inner: &[u8]) -> bool {
        let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
        i >= o && i + inner.len() <= o + outer.len()
    }

    fn real_cert() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["exporter".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn crafted_lengths_and_nesting_are_refused() {
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00], // indefinite length
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30], // 4 GiB, past the end
            &[0x30, 0x85, 1, 0, 0, 0, 0, 0], // five length bytes
            &[0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x02, 0x30, 0x05],       // inner past the outer
            &[0x30, 0x03, 0x30, 0x01, 0xa0], // version, nothing after
        ] {
            assert_eq!(subject_public_key_info(der), None, "{der:02x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 100_000)
            .flatten()
            .collect();
        assert_eq!(subject_public_key_info(&deep), None);
        let cert = real_cert();
        let spki = subject_public_key_info(&cert).expect("a real certificate reads");
        assert!(inside(&cert, spki));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(spki) = subject_public_key_info(&bytes) {
                prop_assert!(inside(&bytes, spki));
            }
        }

        #[test]
        fn a_real_certificate_cut_or_changed_never_panics(
            cut in 0usize..2000,
            at in 0usize..2000,
            to in any::<u8>(),
        ) {
            let mut cert = real_cert();
            let at = at % cert.len();
            cert[at] = to;
            cert.truncate(cut.min(cert.len()));
            if let Some(spki) = subject_public_key_info(&cert) {
                prop_assert!(inside(&cert, spki));
            }
        }
    }
}
