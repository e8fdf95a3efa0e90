//! Sending one request: gRPC through the client `opentelemetry-proto`
//! generates for tonic, or HTTP/protobuf through reqwest. Header values are
//! marked sensitive (so they print as `Sensitive`), and any error text is
//! scrubbed of them before it can reach a log line. With gzip, tonic
//! compresses each gRPC message; the HTTP body is compressed here.

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

/// Why a send failed. The text never holds a header value.
#[derive(Debug)]
pub enum SendError {
    /// Worth another attempt: the collector is away, busy or slow.
    Retryable(String),
    /// Another attempt would fail the same way (bad request, auth).
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Retryable(m) | SendError::Permanent(m) => f.write_str(m),
        }
    }
}

/// The collector accepted the request; it may have dropped some points.
#[derive(Debug, Default)]
pub struct Accepted {
    pub rejected_points: i64,
    pub message: String,
}

pub enum Transport {
    Grpc {
        client: MetricsServiceClient<Channel>,
        metadata: MetadataMap,
        timeout: Duration,
        secrets: Vec<Secret>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
        secrets: Vec<Secret>,
    },
}

impl Transport {
    pub fn new(cfg: &OtlpConfig) -> Result<Transport, String> {
        let secrets: Vec<Secret> = cfg.headers.iter().map(|(_, v)| v.clone()).collect();
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
                let mut client = MetricsServiceClient::new(endpoint.connect_lazy());
                if cfg.compression == Compression::Gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                Ok(Transport::Grpc {
                    client,
                    metadata,
                    timeout: cfg.timeout,
                    secrets,
                })
            }
            Protocol::HttpProtobuf => {
                let mut builder = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
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
                Ok(Transport::Http {
                    client: builder
                        .build()
                        .map_err(|e| format!("OTLP HTTP client: {e}"))?,
                    url: cfg.endpoint.clone(),
                    headers,
                    gzip,
                    secrets,
                })
            }
        }
    }

    /// The request as this transport puts it on the wire, encoded once per
    /// export (retries resend it): for HTTP with gzip, the compressed body.
    /// gRPC sends `request` itself (tonic compresses); the bytes only count.
    pub fn body(&self, request: &ExportMetricsServiceRequest) -> bytes::Bytes {
        let raw = super::encode(request);
        match self {
            Transport::Http { gzip: true, .. } => {
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
        match self {
            Transport::Grpc {
                client,
                metadata,
                timeout,
                secrets,
            } => {
                let mut r = tonic::Request::new(request.clone());
                *r.metadata_mut() = metadata.clone();
                r.set_timeout(*timeout);
                match client.export(r).await {
                    Ok(resp) => Ok(accepted(resp.into_inner(), secrets)),
                    Err(status) => {
                        use tonic::Code::*;
                        let msg = scrub(
                            &format!("gRPC status {:?}: {}", status.code(), status.message()),
                            secrets,
                        );
                        match status.code() {
                            Cancelled | DeadlineExceeded | ResourceExhausted | Aborted
                            | OutOfRange | Unavailable | DataLoss => Err(SendError::Retryable(msg)),
                            _ => Err(SendError::Permanent(msg)),
                        }
                    }
                }
            }
            Transport::Http {
                client,
                url,
                headers,
                secrets,
                ..
            } => {
                let sent = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .body(body.clone())
                    .send()
                    .await;
                let resp = match sent {
                    Ok(r) => r,
                    Err(e) => {
                        let what = if e.is_timeout() {
                            "timed out"
                        } else {
                            "connection failed"
                        };
                        // reqwest's error text holds the URL and the cause, never headers.
                        return Err(SendError::Retryable(scrub(
                            &format!("{what}: {e}"),
                            secrets,
                        )));
                    }
                };
                let status = resp.status();
                let text = resp.bytes().await.unwrap_or_default();
                if status.is_success() {
                    let parsed = ExportMetricsServiceResponse::decode(text).unwrap_or_default();
                    return Ok(accepted(parsed, secrets));
                }
                let detail: String = String::from_utf8_lossy(&text).chars().take(200).collect();
                let msg = scrub(&format!("HTTP {status}: {}", detail.trim()), secrets);
                match status.as_u16() {
                    429 | 502 | 503 | 504 => Err(SendError::Retryable(msg)),
                    _ => Err(SendError::Permanent(msg)),
                }
            }
        }
    }
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
    out
}
