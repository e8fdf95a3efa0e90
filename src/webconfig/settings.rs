//! The HTTP server's protective limits (`--web.*` timeouts and caps), each
//! a flag with a default.

use super::Limits;
use clap::Args;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Longest wait for a request's headers (from the connection's start for the first request, else from its first byte), and for a TLS handshake.
    #[arg(long = "web.read-header-timeout", env = "CLAWMESH_WEB_READ_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub read_header_timeout: Duration,
    /// Longest wait for a request body once its headers are in (the request then fails with 408).
    #[arg(long = "web.read-body-timeout", env = "CLAWMESH_WEB_READ_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub read_body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request (or a client may stop reading a response) before it is closed.
    #[arg(long = "web.idle-timeout", env = "CLAWMESH_WEB_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Longest time to write one response, from its start: a client reading a trickle is closed after it.
    #[arg(long = "web.write-timeout", env = "CLAWMESH_WEB_WRITE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// Largest request headers (HTTP/1 and HTTP/2), e.g. 64KiB, at least 8KiB; past it the request gets 431 or its connection is closed.
    #[arg(long = "web.max-header-size", env = "CLAWMESH_WEB_MAX_HEADER_SIZE", default_value = "64KiB", value_parser = crate::units::parse_size)]
    pub max_header_size: u64,
    /// HTTP/2 streams (requests) open at once on one connection.
    #[arg(
        long = "web.http2-max-streams",
        env = "CLAWMESH_WEB_HTTP2_MAX_STREAMS",
        default_value_t = 16
    )]
    pub http2_max_streams: u32,
    /// Connections open at once; past it a new connection is closed at once. Keep it below the open-files limit.
    #[arg(
        long = "web.max-connections",
        env = "CLAWMESH_WEB_MAX_CONNECTIONS",
        default_value_t = 512
    )]
    pub max_connections: usize,
    /// Basic-auth password checks (bcrypt) at once; cached logins never wait for them.
    #[arg(
        long = "web.basic-auth.max-concurrent",
        env = "CLAWMESH_WEB_BASIC_AUTH_MAX_CONCURRENT",
        default_value_t = 2
    )]
    pub auth_concurrency: usize,
    /// How long a password check waits for a free bcrypt slot before the request gets 503 with Retry-After.
    #[arg(long = "web.basic-auth.max-wait", env = "CLAWMESH_WEB_BASIC_AUTH_MAX_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub auth_max_wait: Duration,
}

impl ServerArgs {
    /// The server's limits, checked; errors name the flags.
    pub fn limits(&self) -> Result<Limits, String> {
        for (flag, d) in [
            ("--web.read-header-timeout", self.read_header_timeout),
            ("--web.read-body-timeout", self.read_body_timeout),
            ("--web.idle-timeout", self.idle_timeout),
            ("--web.write-timeout", self.write_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(format!("{flag}: must be at least 100ms"));
            }
        }
        if self.max_connections == 0 {
            return Err("--web.max-connections: must be at least 1".into());
        }
        if self.auth_concurrency == 0 {
            return Err("--web.basic-auth.max-concurrent: must be at least 1".into());
        }
        if self.max_header_size < super::MIN_HEADER_BYTES as u64
            || self.max_header_size > u64::from(u32::MAX)
        {
            return Err("--web.max-header-size: must be between 8KiB and 4GiB".into());
        }
        if self.http2_max_streams == 0 {
            return Err("--web.http2-max-streams: must be at least 1".into());
        }
        Ok(Limits {
            read_header_timeout: self.read_header_timeout,
            read_body_timeout: self.read_body_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            max_header_bytes: self.max_header_size as usize,
            max_h2_streams: self.http2_max_streams,
            max_connections: self.max_connections,
            auth_concurrency: self.auth_concurrency,
            auth_max_wait: self.auth_max_wait,
        })
    }
}
