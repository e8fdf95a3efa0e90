//! Sending one request: gRPC through the client `opentelemetry-proto`
//! generates for tonic, or HTTP/protobuf through reqwest. Header values are
//! marked sensitive (so they print as `Sensitive`), and any error text is
//! scrubbed of them before it can reach a log line. With gzip, tonic
//! compresses each gRPC message; the HTTP body is compressed here.
//!
//! A reply is read up to `--otlp.max-response-size` (the HTTP body frame by
//! frame; tonic refuses a bigger gRPC message, and inflates a gzip one no
//! further) and within the attempt's
//! timeout: a collector that streams an endless answer costs that much and
//! its connection. The status decides: a 200 whose body runs past the limit
//! was accepted (its partial-success details are lost, said once in the
//! log). A TLS failure says which side refused what.

use super::settings::{Compression, OtlpConfig, Protocol};
use crate::secret::Secret;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
};
use prost::Message;
use std::time::Duration;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Encode a request as it goes on the wire (the HTTP body; gRPC adds a
/// 5-byte frame header).
pub fn encode(
    request: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> bytes::Bytes {
    bytes::Bytes::from(request.encode_to_vec())
}

/// Why a send failed. The text never holds a header value.
#[derive(Debug)]
pub enum SendError {
    /// Worth another attempt: the collector is away, busy or slow;
    /// `retry_after` when it said how long to wait (HTTP `Retry-After`).
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Another attempt would fail the same way (bad request, auth).
    Permanent(String),
}

impl SendError {
    pub fn retryable(message: impl Into<String>) -> SendError {
        SendError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Retryable { message: m, .. } | SendError::Permanent(m) => f.write_str(m),
        }
    }
}

/// The collector accepted the request; it may have dropped some points.
#[derive(Debug, Default)]
pub struct Accepted {
    pub rejected_points: i64,
    pub message: String,
}

pub struct Transport {
    wire: Wire,
    secrets: Vec<Secret>,
    tls: TlsContext,
    max_response_size: usize,
    /// An oversized reply has been logged (once per process).
    warned_oversized: bool,
}

enum Wire {
    Grpc {
        client: MetricsServiceClient<Channel>,
        metadata: MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
}

/// What a TLS error message names: the collector's host and where our CA
/// and client certificate came from.
struct TlsContext {
    /// An https:// endpoint.
    on: bool,
    host: String,
    ca_source: Option<String>,
    client_certificate: bool,
}

impl Transport {
    pub fn new(cfg: &OtlpConfig) -> Result<Transport, String> {
        let secrets: Vec<Secret> = cfg.headers.iter().map(|(_, v)| v.clone()).collect();
        let host = cfg
            .endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        let wire = Transport::wire(cfg)?;
        Ok(Transport {
            wire,
            secrets,
            tls: TlsContext {
                on: cfg.endpoint.starts_with("https://"),
                host,
                ca_source: cfg.ca_source.clone(),
                client_certificate: cfg.client_identity.is_some(),
            },
            max_response_size: cfg.max_response_size,
            warned_oversized: false,
        })
    }

    fn wire(cfg: &OtlpConfig) -> Result<Wire, String> {
        match cfg.protocol {
            Protocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| format!("OTLP endpoint {}: {e}", cfg.endpoint))?
                    .connect_timeout(cfg.timeout)
                    .timeout(cfg.timeout);
                if cfg.endpoint.starts_with("https://") {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = &cfg.ca_pem {
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    if let Some(id) = &cfg.client_identity {
                        tls = tls.identity(Identity::from_pem(&id.cert_pem, id.key_pem.expose()));
                    }
                    endpoint = endpoint
                        .tls_config(tls)
                        .map_err(|e| format!("OTLP TLS setup: {e}"))?;
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in &cfg.headers {
                    let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|_| {
                        format!("OTLP header {name}: not a valid gRPC metadata name")
                    })?;
                    let mut v = MetadataValue::try_from(value.expose())
                        .map_err(|_| format!("OTLP header {name}: the value cannot be sent"))?;
                    v.set_sensitive(true);
                    metadata.insert(key, v);
                }
                // tonic refuses a reply message past the limit (its own
                // default is 4 MiB) before reading it, and stops inflating a
                // gzip one there. gzip replies are taken whatever we send:
                // a Go collector (grpc-go) answers a gzip request in gzip
                // without asking, and tonic refuses an encoding it was not
                // told to accept (UNIMPLEMENTED: every export of a request
                // the collector took would count failed and go out again).
                let mut client = MetricsServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(cfg.max_response_size)
                    .accept_compressed(CompressionEncoding::Gzip);
                if cfg.compression == Compression::Gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                Ok(Wire::Grpc {
                    client,
                    metadata,
                    timeout: cfg.timeout,
                })
            }
            Protocol::HttpProtobuf => {
                let mut builder = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    // A redirect is not followed: reqwest would send the
                    // headers (API keys: dd-api-key, x-tenant-token...; it
                    // drops only Authorization and cookies) to wherever the
                    // collector points, another host included.
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("clawmesh-exporter/", env!("CARGO_PKG_VERSION")));
                if let Some(pem) = &cfg.ca_pem {
                    for cert in reqwest::Certificate::from_pem_bundle(pem)
                        .map_err(|e| format!("OTLP CA file: {e}"))?
                    {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                if let Some(id) = &cfg.client_identity {
                    let mut pem = id.cert_pem.clone();
                    pem.push(b'\n');
                    pem.extend_from_slice(id.key_pem.expose().as_bytes());
                    // reqwest's error is not passed on: it could quote the key.
                    let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                        "OTLP client certificate: the certificate and key cannot be used together"
                            .to_string()
                    })?;
                    builder = builder.identity(identity);
                }
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/x-protobuf"),
                );
                let gzip = cfg.compression == Compression::Gzip;
                if gzip {
                    headers.insert(
                        reqwest::header::CONTENT_ENCODING,
                        reqwest::header::HeaderValue::from_static("gzip"),
                    );
                }
                for (name, value) in &cfg.headers {
                    let key = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("OTLP header {name}: not a valid header name"))?;
                    let mut v = reqwest::header::HeaderValue::from_str(value.expose())
                        .map_err(|_| format!("OTLP header {name}: the value cannot be sent"))?;
                    v.set_sensitive(true);
                    headers.insert(key, v);
                }
                Ok(Wire::Http {
                    client: builder
                        .build()
                        .map_err(|e| format!("OTLP HTTP client: {e}"))?,
                    url: cfg.endpoint.clone(),
                    headers,
                    gzip,
                })
            }
        }
    }

    /// The request as this transport puts it on the wire, encoded once per
    /// export (retries resend it): for HTTP with gzip, the compressed body.
    /// gRPC sends `request` itself (tonic compresses); the bytes only count.
    pub fn body(&self, request: &ExportMetricsServiceRequest) -> bytes::Bytes {
        let raw = encode(request);
        match self.wire {
            Wire::Http { gzip: true, .. } => {
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::with_capacity(raw.len() / 4),
                    flate2::Compression::default(),
                );
                // Writing to a Vec cannot fail.
                std::io::Write::write_all(&mut gz, &raw).expect("gzip into memory");
                bytes::Bytes::from(gz.finish().expect("gzip into memory"))
            }
            _ => raw,
        }
    }

    /// Send one request (its [`Transport::body`], for HTTP).
    pub async fn send(
        &mut self,
        request: &ExportMetricsServiceRequest,
        body: &bytes::Bytes,
    ) -> Result<Accepted, SendError> {
        let secrets = &self.secrets;
        match &mut self.wire {
            Wire::Grpc {
                client,
                metadata,
                timeout,
            } => {
                let mut r = tonic::Request::new(request.clone());
                *r.metadata_mut() = metadata.clone();
                r.set_timeout(*timeout);
                match client.export(r).await {
                    Ok(resp) => Ok(accepted(resp.into_inner(), secrets)),
                    // A reply message only follows an OK status (gRPC sends
                    // an error as trailers alone): the request was taken,
                    // the reply could not be read (past
                    // --otlp.max-response-size, or not a reply), as a 200
                    // over HTTP whose body does not decode.
                    Err(status) if reply_unreadable(&status) => {
                        if !std::mem::replace(&mut self.warned_oversized, true) {
                            tracing::warn!(limit = self.max_response_size, detail = %scrub(status.message(), secrets), "the OTLP collector answered with a gRPC message that could not be read (larger than --otlp.max-response-size, inflated or not, or not a reply); the export counts as accepted (said once)");
                        }
                        Ok(Accepted::default())
                    }
                    Err(status) => {
                        use tonic::Code::*;
                        let tls = tls_problem(&status, &self.tls);
                        let msg = scrub(
                            &match tls {
                                Some(t) => format!("{t} (gRPC status {:?})", status.code()),
                                None => {
                                    format!(
                                        "gRPC status {:?}: {}{}",
                                        status.code(),
                                        status.message(),
                                        causes(&status)
                                    )
                                }
                            },
                            secrets,
                        );
                        match status.code() {
                            Cancelled | DeadlineExceeded | ResourceExhausted | Aborted
                            | OutOfRange | Unavailable | DataLoss => Err(SendError::Retryable {
                                message: msg,
                                retry_after: retry_info(status.details()),
                            }),
                            _ => Err(SendError::Permanent(msg)),
                        }
                    }
                }
            }
            Wire::Http {
                client,
                url,
                headers,
                ..
            } => {
                let sent = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .body(body.clone())
                    .send()
                    .await;
                let mut resp = match sent {
                    Ok(r) => r,
                    Err(e) => {
                        let what = match tls_problem(&e, &self.tls) {
                            Some(t) => t,
                            None if e.is_timeout() => format!("timed out: {e}{}", causes(&e)),
                            None => format!("connection failed: {e}{}", causes(&e)),
                        };
                        // reqwest's error text holds the URL and the cause, never headers.
                        return Err(SendError::retryable(scrub(&what, secrets)));
                    }
                };
                let status = resp.status();
                let location: Option<String> =
                    resp.headers().get(reqwest::header::LOCATION).map(|v| {
                        String::from_utf8_lossy(v.as_bytes())
                            .chars()
                            .take(200)
                            .collect()
                    });
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                // The body frame by frame up to the limit (reqwest's timeout
                // bounds the time); a read error leaves what came.
                let mut text = Vec::new();
                let mut oversized = false;
                while let Ok(Some(chunk)) = resp.chunk().await {
                    let room = self.max_response_size - text.len();
                    if chunk.len() > room {
                        text.extend_from_slice(&chunk[..room]);
                        oversized = true;
                        break;
                    }
                    text.extend_from_slice(&chunk);
                }
                // Unread, the connection cannot carry another request: it is closed.
                drop(resp);
                if oversized && !std::mem::replace(&mut self.warned_oversized, true) {
                    tracing::warn!(%status, limit = self.max_response_size, "the OTLP collector's answer ran past --otlp.max-response-size; the rest was not read and the status decides (said once)");
                }
                if status.is_success() {
                    // A cut body cannot be decoded: accepted, details unknown.
                    let parsed = if oversized {
                        ExportMetricsServiceResponse::default()
                    } else {
                        ExportMetricsServiceResponse::decode(&text[..]).unwrap_or_default()
                    };
                    return Ok(accepted(parsed, secrets));
                }
                let detail: String = String::from_utf8_lossy(&text).chars().take(200).collect();
                let msg = match location.filter(|_| status.is_redirection()) {
                    Some(to) => scrub(&format!("HTTP {status}: the collector redirects to {to}; redirects are not followed (they would carry the headers there): set --otlp.endpoint to where it should go"), secrets),
                    None => scrub(&format!("HTTP {status}: {}", detail.trim()), secrets),
                };
                match status.as_u16() {
                    429 | 502 | 503 | 504 => Err(SendError::Retryable {
                        message: msg,
                        retry_after,
                    }),
                    _ => Err(SendError::Permanent(msg)),
                }
            }
        }
    }
}

/// tonic's errors for a reply message it received and could not read
/// (only an OK status sends one), as opposed to a status the collector
/// sent: past the decoding limit as sent, past it while inflating (a gzip
/// bomb), an encoding that does not inflate, bytes that are not the reply.
fn reply_unreadable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    let m = status.message();
    match status.code() {
        OutOfRange => m.contains("decoded message length too large"),
        ResourceExhausted => m.contains("exceeded while decompressing message"),
        Internal => {
            (m.starts_with("Error decompressing: ") && m.contains("while receiving response"))
                || m.starts_with("failed to decode Protobuf message")
        }
        _ => false,
    }
}

/// google.rpc.Status as gRPC sends it in `grpc-status-details-bin`: only
/// the details are read.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// google.rpc.RetryInfo, which the OTLP specification has a collector send
/// with UNAVAILABLE or RESOURCE_EXHAUSTED to say how long to wait.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<PbDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The wait a gRPC status asks for in its RetryInfo detail, if any.
fn retry_info(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|a| a.type_url.ends_with("/google.rpc.RetryInfo"))?;
    let delay = RetryInfo::decode(&info.value[..]).ok()?.retry_delay?;
    Some(
        Duration::from_secs(u64::try_from(delay.seconds).ok()?)
            + Duration::from_nanos(u64::try_from(delay.nanos).unwrap_or(0)),
    )
}

/// The `grpc-status-details-bin` of an UNAVAILABLE status asking to wait
/// `delay`, as a collector sends it (for tests).
pub fn retry_info_details(delay: Duration) -> Vec<u8> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Full {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<RpcAny>,
    }
    let info = RetryInfo {
        retry_delay: Some(PbDuration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
        }),
    };
    Full {
        code: tonic::Code::Unavailable as i32,
        message: "busy".into(),
        details: vec![RpcAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110 10.2.3); a date past
/// is no wait.
pub fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The alert in rustls' text of one ("received fatal alert: UnknownCA"),
/// for the alerts about certificates.
fn alert_in(text: &str) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    let (_, name) = text.split_once("received fatal alert: ")?;
    let name: String = name
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    [
        A::CertificateRequired,
        A::BadCertificate,
        A::UnknownCA,
        A::CertificateUnknown,
        A::UnsupportedCertificate,
        A::CertificateRevoked,
        A::CertificateExpired,
        A::AccessDenied,
        A::HandshakeFailure,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name)
}

/// The sources of an error, each after ": " (reqwest and tonic say only
/// "error sending request" or "transport error" themselves).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = e.source();
    while let Some(err) = next {
        let text = err.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    out
}

/// The TLS failure somewhere in an error's sources, said as which side
/// refused what and what to do. `None` when TLS is not the cause.
fn tls_problem(e: &(dyn std::error::Error + 'static), ctx: &TlsContext) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let mut next = Some(e);
    let mut found = None;
    let mut cut = false;
    while let Some(err) = next {
        // The error itself, or (where HTTP/2 kept only its text) an alert.
        found = err
            .downcast_ref::<R>()
            .cloned()
            .or_else(|| alert_in(&err.to_string()).map(R::AlertReceived));
        if found.is_some() {
            break;
        }
        use std::io::ErrorKind::*;
        cut |= err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof))
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_canceled() || h.is_closed() || h.is_incomplete_message());
        // io::Error's `source` skips the error it wraps (which may be
        // another io::Error, as reqwest nests them): step into it instead.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    let ca = match &ctx.ca_source {
        Some(s) => format!("the system roots nor the CA of {s}"),
        None => "the system roots (no --otlp.ca-file given)".to_string(),
    };
    let host = &ctx.host;
    let Some(found) = found else {
        // Over gRPC (HTTP/2) a refusal after the handshake (TLS 1.3 checks
        // the client certificate then) reaches us as a cut connection: the
        // alert is lost on the way. Say what it most likely is.
        return (cut && ctx.on).then(|| {
            if ctx.client_certificate {
                "TLS: the collector cut the connection after the handshake; it may have refused our client certificate: is it signed by a CA the collector trusts, valid now, and for client authentication?".to_string()
            } else {
                "TLS: the collector cut the connection after the handshake; does it require a client certificate (--otlp.client-certificate)?".to_string()
            }
        });
    };
    Some(match found {
        R::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS: the certificate of the collector is not trusted: not signed by {ca}; give the CA that signed it with --otlp.ca-file"
        ),
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "TLS: the certificate of the collector is not valid for the host {host} (hostname mismatch); use a host name the certificate lists"
        ),
        R::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => format!(
            "TLS: the certificate of the collector {host} is expired or not yet valid; check its dates and this host's clock"
        ),
        R::InvalidCertificate(c) => {
            format!("TLS: the certificate of the collector {host} was refused: {c:?}")
        }
        R::AlertReceived(A::CertificateRequired) => {
            "TLS: the collector requires a client certificate; set --otlp.client-certificate and --otlp.client-key".to_string()
        }
        R::AlertReceived(A::HandshakeFailure) if !ctx.client_certificate => {
            "TLS: the collector refused the handshake; does it require a client certificate (--otlp.client-certificate)?".to_string()
        }
        R::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::AccessDenied
            | A::HandshakeFailure),
        ) if ctx.client_certificate => format!(
            "TLS: the collector refused our client certificate (alert {a:?}); is it signed by a CA the collector trusts, valid now, and for client authentication?"
        ),
        R::AlertReceived(a) => format!("TLS: the collector ended the handshake (alert {a:?})"),
        other => format!("TLS with {host} failed: {other}"),
    })
}

fn accepted(r: ExportMetricsServiceResponse, secrets: &[Secret]) -> Accepted {
    r.partial_success
        .map(|p| Accepted {
            rejected_points: p.rejected_data_points,
            message: scrub(&p.error_message, secrets),
        })
        .unwrap_or_default()
}

/// Remove every header value from a text that came from elsewhere (a
/// collector may echo what it was sent).
pub fn scrub(text: &str, secrets: &[Secret]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.expose().len() >= 4) {
        out = out.replace(s.expose(), "<redacted>");
    }
    // A collector's message (a partial success's error_message, a gRPC
    // status) may be as long as --otlp.max-response-size, on every export:
    // a log line keeps the start of it. Cut after scrubbing, so a cut never
    // leaves the start of a secret behind.
    crate::text::shorten(&out, MAX_COLLECTOR_TEXT)
}

/// The most of a collector's own text a log line or an error keeps.
const MAX_COLLECTOR_TEXT: usize = 1024;

/// A collector's wait, however it is spelled, reads as a duration or as
/// none, and never panics; a reply error is told from a collector's status.
#[cfg(test)]
mod collector_text {
    use super::*;

    #[test]
    fn a_collector_message_of_64kib_is_cut_and_scrubbed_before_it_is_logged() {
        let key = Secret::new("hdr-secret-value");
        let text = format!(
            "{}{}{}",
            "x".repeat(1000),
            key.expose(),
            "y".repeat(64 * 1024)
        );
        let out = scrub(&text, std::slice::from_ref(&key));
        assert!(out.len() <= MAX_COLLECTOR_TEXT + 3, "{} bytes", out.len());
        assert!(!out.contains("hdr-secret"), "{out}");
        assert!(out.ends_with("..."));
        assert_eq!(scrub("short", &[]), "short");
    }
}

#[cfg(test)]
mod hostile_waits {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn details(seconds: i64, nanos: i32) -> Vec<u8> {
        RpcStatus {
            details: vec![RpcAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: RetryInfo {
                    retry_delay: Some(PbDuration { seconds, nanos }),
                }
                .encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn retry_info_of_any_duration_reads_without_a_panic() {
        assert_eq!(
            retry_info(&details(i64::MAX, i32::MAX)),
            Some(Duration::from_secs(i64::MAX as u64) + Duration::from_nanos(i32::MAX as u64))
        );
        assert_eq!(retry_info(&details(-1, 0)), None);
        assert_eq!(retry_info(&details(i64::MIN, i32::MIN)), None);
        assert_eq!(retry_info(&details(3, -5)), Some(Duration::from_secs(3)));
        assert_eq!(retry_info(&[0xff; 64]), None);
        assert_eq!(retry_info(&[]), None);
    }

    #[test]
    fn retry_after_of_any_spelling_reads_without_a_panic() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&u64::MAX.to_string(), now),
            Some(Duration::from_secs(u64::MAX))
        );
        for v in ["18446744073709551616", "-1", "1.5", "1e9", "３", "", "  "] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).unwrap();
        assert!(far > Duration::from_secs(250_000_000_000 / 1000));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        let _ = parse_retry_after("Mon, 01 Jan 0001 00:00:00 GMT", SystemTime::now());
    }

    #[test]
    fn only_errors_about_a_received_reply_count_as_accepted() {
        use tonic::{Code, Status};
        for s in [
            Status::new(Code::OutOfRange, "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes"),
            Status::new(Code::ResourceExhausted, "Error decompressing: size limit, of 65536 bytes, exceeded while decompressing message"),
            Status::new(Code::Internal, "Error decompressing: invalid gzip header, while receiving response with status: 200 OK"),
            Status::new(Code::Internal, "failed to decode Protobuf message: invalid wire type"),
        ] {
            assert!(reply_unreadable(&s), "{s:?}");
        }
        for s in [
            Status::new(
                Code::OutOfRange,
                "Error, encoded message length too large: found 5 bytes, the limit is: 4 bytes",
            ),
            Status::new(
                Code::ResourceExhausted,
                "data refused due to high memory usage",
            ),
            Status::new(
                Code::Internal,
                "Error decompressing: invalid gzip header, while sending request",
            ),
            Status::new(Code::Unavailable, "failed to decode Protobuf message"),
        ] {
            assert!(!reply_unreadable(&s), "{s:?}");
        }
    }
}
