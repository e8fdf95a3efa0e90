//! The HTTP face: axum handlers, auth, keyset pagination, rate limiting,
//! fault injection, and the `/_sim/` control endpoints.

use super::config::{Incident, SimKey};
use super::faults::{Faults, Hostile, NOT_UTF8_MARK};
use super::model::{imf_fixdate, Agent, AgentOut, Hit, Listing, Order, Task, MICROS};
use super::simulator::Simulator;
use super::state::{Inner, KeyEntry};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl Simulator {
    /// `/v1/...` (the contract) and `/_sim/...` (control).
    pub fn router(&self) -> Router {
        router(self.clone())
    }

    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.start();
        axum::serve(listener, self.router()).await
    }
}

fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/v1/auth/token", get(token))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(get_agent))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/_sim/ground_truth", get(ground_truth))
        .route("/_sim/pause", post(pause))
        .route("/_sim/resume", post(resume))
        .route("/_sim/faults", post(set_faults))
        .route("/_sim/incident", post(set_incident))
        .route("/_sim/prices", post(set_prices))
        .route("/_sim/keys", post(add_key))
        .route("/_sim/webhooks", post(set_webhooks))
        .fallback(fallback)
        .with_state(sim)
}

/// An error answer in the contract's envelope.
pub struct ApiErr {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
    /// Sent as `Retry-After` (whole seconds).
    retry_after: Option<i64>,
}

impl ApiErr {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiErr {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        ApiErr::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

fn error_body(e: &ApiErr, request_id: &str) -> Vec<u8> {
    let mut err = json!({"code": e.code, "message": e.message, "request_id": request_id});
    if let Some(d) = &e.details {
        err["details"] = d.clone();
    }
    serde_json::to_vec(&json!({ "error": err })).expect("serialisable")
}

/// Rate-limit state of the window a request fell in.
struct RateHeaders {
    limit: u32,
    remaining: u64,
    reset_secs: i64,
}

enum Injected {
    Outage,
    Html500,
    Empty502,
    Unavailable503,
    RateLimit429,
}

/// Everything a request needs decided up front under the HTTP lock.
struct Admission {
    request_id: String,
    rate: RateHeaders,
    over_limit: bool,
    key: Option<KeyEntry>,
    hang: bool,
    injected: Option<Injected>,
    page_retry: bool,
    cursor_fault: bool,
    truncate: bool,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn admit(
    inner: &Inner,
    endpoint: &str,
    headers: &HeaderMap,
    has_cursor: bool,
    f: &Faults,
) -> Admission {
    let now = inner.clock.now_us();
    let secret = bearer(headers);
    let mut h = inner.http();
    h.next_request += 1;
    let r: u32 = h.rng.random();
    let request_id = format!("req_{:08x}{:08x}", h.next_request, r);
    h.counters.requests_total += 1;
    *h.counters
        .requests_by_endpoint
        .entry(endpoint.to_string())
        .or_default() += 1;
    let key = secret.and_then(|s| h.keys.get(&s).cloned());
    let key_name = key
        .as_ref()
        .map_or_else(|| "unauthenticated".to_string(), |k| k.key.id.clone());
    *h.counters.requests_by_key.entry(key_name).or_default() += 1;
    if let Some(k) = &key {
        if h.not_before.get(&k.key.id).is_some_and(|nb| now < *nb) {
            h.counters.retry_after_violations += 1;
        }
    }

    // Fixed one-minute windows; every /v1 request counts, errors included.
    let window = now.div_euclid(60 * MICROS);
    if window != h.window {
        h.window = window;
        h.window_count = 0;
    }
    h.window_count += 1;
    let end = (window + 1) * 60 * MICROS;
    let limit = inner.cfg.rate_limit_per_minute;
    let rate = RateHeaders {
        limit,
        remaining: (limit as u64).saturating_sub(h.window_count),
        reset_secs: (end - now + MICROS - 1) / MICROS,
    };
    let over_limit = h.window_count > limit as u64;

    let mut roll = |p: f64| p > 0.0 && h.rng.random_bool(p.min(1.0));
    let hang = roll(f.hang);
    let injected = if f.outage {
        Some(Injected::Outage)
    } else if roll(f.html_500) {
        Some(Injected::Html500)
    } else if roll(f.empty_502) {
        Some(Injected::Empty502)
    } else if roll(f.unavailable_503) {
        Some(Injected::Unavailable503)
    } else if roll(f.rate_limit_429) {
        Some(Injected::RateLimit429)
    } else {
        None
    };
    let page_retry = has_cursor && roll(f.page_retry_after);
    let cursor_fault = has_cursor && roll(f.cursor_expired);
    let truncate = roll(f.truncated_json);
    Admission {
        request_id,
        rate,
        over_limit,
        key,
        hang,
        injected,
        page_retry,
        cursor_fault,
        truncate,
    }
}

fn count_fault(inner: &Inner) {
    inner.http().counters.faults_injected += 1;
}

/// Remembers that `key` was told to wait `secs`.
fn record_retry_after(inner: &Inner, key: &Option<KeyEntry>, secs: i64) {
    if let Some(k) = key {
        let until = inner.clock.now_us() + secs * MICROS;
        inner.http().not_before.insert(k.key.id.clone(), until);
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("valid"),
    );
    r
}

fn with_retry_after(mut r: Response, secs: i64) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(0)));
    r
}

const HTML_500: &str = "<html><head><title>500 Internal Server Error</title></head>\
<body><center><h1>500 Internal Server Error</h1></center><hr><center>nginx</center></body></html>\n";
const HTML_503: &str = "<html><head><title>503 Service Temporarily Unavailable</title></head>\
<body><center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>\n";

/// Runs one /v1 request: latency, bookkeeping, faults, rate limit, auth,
/// then `handler`, which answers the JSON body of a 200.
async fn serve_v1(
    inner: &Inner,
    endpoint: &str,
    scope: Option<&str>,
    headers: &HeaderMap,
    has_cursor: bool,
    handler: impl FnOnce(&Inner, &KeyEntry) -> Result<Vec<u8>, ApiErr>,
) -> Response {
    let faults = inner.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let adm = admit(inner, endpoint, headers, has_cursor, &faults);
    let resp = answer(inner, scope, &faults, &adm, handler).await;
    finish(resp, &adm, inner.clock.now_us())
}

async fn answer(
    inner: &Inner,
    scope: Option<&str>,
    faults: &Faults,
    adm: &Admission,
    handler: impl FnOnce(&Inner, &KeyEntry) -> Result<Vec<u8>, ApiErr>,
) -> Response {
    let err = |e: ApiErr| {
        let r = respond(
            e.status,
            "application/json",
            error_body(&e, &adm.request_id),
        );
        match e.retry_after {
            Some(secs) => with_retry_after(r, secs),
            None => r,
        }
    };
    if adm.hang {
        count_fault(inner);
        tokio::time::sleep(Duration::from_millis(faults.hang_ms)).await;
    }
    let retry = faults.retry_after_secs.max(1) as i64;
    if let Some(inj) = &adm.injected {
        count_fault(inner);
        return match inj {
            Injected::Outage => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/html",
                HTML_503.into(),
            ),
            Injected::Html500 => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/html",
                HTML_500.into(),
            ),
            Injected::Empty502 => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                r
            }
            Injected::Unavailable503 => {
                record_retry_after(inner, &adm.key, retry);
                with_retry_after(
                    err(ApiErr::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service_unavailable",
                        "the service is temporarily unavailable",
                    )),
                    retry,
                )
            }
            Injected::RateLimit429 => {
                inner.http().counters.rate_limited_total += 1;
                record_retry_after(inner, &adm.key, retry);
                with_retry_after(err(rate_limited()), retry)
            }
        };
    }
    if adm.over_limit {
        let secs = adm.rate.reset_secs.max(1);
        inner.http().counters.rate_limited_total += 1;
        record_retry_after(inner, &adm.key, secs);
        return with_retry_after(err(rate_limited()), secs);
    }
    let Some(key) = &adm.key else {
        return err(ApiErr::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing or unknown API key",
        ));
    };
    if key
        .key
        .expires_at
        .is_some_and(|e| e.timestamp_micros() <= inner.clock.now_us())
    {
        return err(ApiErr::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "the API key has expired",
        ));
    }
    if let Some(s) = scope {
        if !key.key.scopes.iter().any(|k| k == s) {
            let mut e = ApiErr::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this request needs the scope {s}"),
            );
            e.details = Some(json!({ "required_scope": s }));
            return err(e);
        }
    }
    if adm.page_retry {
        count_fault(inner);
        inner.http().counters.rate_limited_total += 1;
        record_retry_after(inner, &adm.key, retry);
        return with_retry_after(err(rate_limited()), retry);
    }
    if adm.cursor_fault {
        count_fault(inner);
        return err(cursor_expired());
    }
    match handler(inner, key) {
        Ok(mut body) => {
            if adm.truncate {
                count_fault(inner);
                body.truncate(body.len() / 2);
            }
            respond(StatusCode::OK, "application/json", body)
        }
        Err(e) => err(e),
    }
}

/// The `tail_page_retry_after` fault: a page of an incremental listing
/// whose cursor is within the visibility lag of now (where changes behind
/// the cursor may still become visible) answers 429 with `Retry-After`.
fn stall_the_tail(
    inner: &Inner,
    key: &KeyEntry,
    p: &ListParams,
    kind: CursorKind,
    after: Option<&(i64, String)>,
    now_us: i64,
) -> Result<(), ApiErr> {
    let f = inner.faults();
    let lag = inner.cfg.visibility_lag_max.as_micros() as i64;
    let at_tail = kind == CursorKind::TasksUpdated
        && p.cursor.is_some()
        && after.is_some_and(|(k, _)| *k > now_us - lag);
    if !at_tail || f.tail_page_retry_after <= 0.0 {
        return Ok(());
    }
    let hit = inner
        .http()
        .rng
        .random_bool(f.tail_page_retry_after.min(1.0));
    if !hit {
        return Ok(());
    }
    let secs = f.retry_after_secs.max(1) as i64;
    count_fault(inner);
    inner.http().counters.rate_limited_total += 1;
    record_retry_after(inner, &Some(key.clone()), secs);
    let mut e = rate_limited();
    e.retry_after = Some(secs);
    Err(e)
}

fn rate_limited() -> ApiErr {
    ApiErr::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests for this workspace",
    )
}

fn cursor_expired() -> ApiErr {
    ApiErr::new(
        StatusCode::BAD_REQUEST,
        "cursor_expired",
        "the cursor has expired; start the listing again",
    )
}

/// Headers every /v1 answer carries, `Date` from the API's clock (hyper
/// adds its own, from the host's, only when there is none).
fn finish(mut r: Response, adm: &Admission, now_us: i64) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::DATE,
        HeaderValue::from_str(&imf_fixdate(now_us)).expect("ascii"),
    );
    h.insert(
        "x-request-id",
        HeaderValue::from_str(&adm.request_id).expect("ascii"),
    );
    h.insert("x-ratelimit-limit", HeaderValue::from(adm.rate.limit));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(adm.rate.remaining),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(adm.rate.reset_secs));
    r
}

// ---- /v1 handlers ----

#[derive(Serialize)]
struct TokenOut<'a> {
    id: &'a str,
    name: &'a str,
    workspace_id: &'a str,
    scopes: &'a [String],
    created_at: String,
    expires_at: Option<String>,
}

async fn token(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    serve_v1(
        &sim.inner,
        "/auth/token",
        None,
        &headers,
        false,
        |inner, k| {
            let out = TokenOut {
                id: &k.key.id,
                name: &k.key.id,
                workspace_id: &inner.cfg.workspace_id,
                scopes: &k.key.scopes,
                created_at: inner.api_ts(k.created_us),
                expires_at: k.key.expires_at.map(|e| inner.api_ts(e.timestamp_micros())),
            };
            Ok(serde_json::to_vec(&json!({ "data": out })).expect("serialisable"))
        },
    )
    .await
}

fn has_cursor(q: &QueryPairs) -> bool {
    q.as_ref()
        .is_ok_and(|Query(p)| p.iter().any(|(k, v)| k == "cursor" && !v.is_empty()))
}

async fn list_agents(State(sim): State<Simulator>, headers: HeaderMap, q: QueryPairs) -> Response {
    let hc = has_cursor(&q);
    serve_v1(
        &sim.inner,
        "/agents",
        Some("agents:read"),
        &headers,
        hc,
        |inner, _| {
            let Query(q) = q.map_err(|e| ApiErr::bad(e.body_text()))?;
            let p = ListParams::parse(&q, false)?;
            let now = inner.clock.now_us();
            let after = p.after(inner, CursorKind::Agents, now)?;
            let listing = inner.fleet().agents.list(
                Order::Created,
                false,
                after,
                p.created_before,
                now,
                p.limit,
                |a| {
                    p.status_ok(&a.status)
                        && p.labels
                            .iter()
                            .all(|(k, v)| a.labels.get(k).is_some_and(|x| x == v))
                },
            );
            Ok(page(inner, CursorKind::Agents, listing, now))
        },
    )
    .await
}

async fn list_tasks(State(sim): State<Simulator>, headers: HeaderMap, q: QueryPairs) -> Response {
    let hc = has_cursor(&q);
    serve_v1(
        &sim.inner,
        "/tasks",
        Some("tasks:read"),
        &headers,
        hc,
        |inner, key| {
            let Query(q) = q.map_err(|e| ApiErr::bad(e.body_text()))?;
            let p = ListParams::parse(&q, true)?;
            let now = inner.clock.now_us();
            let kind = match p.order {
                Order::Created => CursorKind::TasksCreated,
                Order::Updated => CursorKind::TasksUpdated,
            };
            let after = p.after(inner, kind, now)?;
            stall_the_tail(inner, key, &p, kind, after.as_ref(), now)?;
            // Open-only listings in created order scan the small open index.
            let only_open = p
                .statuses
                .as_ref()
                .is_some_and(|s| s.iter().all(|s| s == "pending" || s == "running"));
            let listing = inner.fleet().tasks.list(
                p.order,
                only_open,
                after,
                p.created_before,
                now,
                p.limit,
                |t| {
                    p.status_ok(&t.status)
                        && p.agent_id
                            .as_ref()
                            .is_none_or(|a| t.agent_id.as_ref() == Some(a))
                        && p.created_after.is_none_or(|c| t.created_at.us > c)
                        && p.updated_after.is_none_or(|u| t.updated_at.us > u)
                },
            );
            Ok(page(inner, kind, listing, now))
        },
    )
    .await
}

async fn get_agent(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    serve_v1(
        &sim.inner,
        "/agents/{id}",
        Some("agents:read"),
        &headers,
        false,
        |inner, _| {
            let now = inner.clock.now_us();
            let a = inner.fleet().agents.visible(&id, now).cloned();
            let a = a.ok_or_else(|| not_found("agent", &id))?;
            Ok(single(inner, &id, &*a, now))
        },
    )
    .await
}

async fn get_task(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    serve_v1(
        &sim.inner,
        "/tasks/{id}",
        Some("tasks:read"),
        &headers,
        false,
        |inner, _| {
            let now = inner.clock.now_us();
            let t = inner.fleet().tasks.visible(&id, now).cloned();
            let t = t.ok_or_else(|| not_found("task", &id))?;
            Ok(single(inner, &id, &*t, now))
        },
    )
    .await
}

fn not_found(what: &str, id: &str) -> ApiErr {
    ApiErr::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} {id}"),
    )
}

async fn fallback(State(sim): State<Simulator>, uri: Uri, headers: HeaderMap) -> Response {
    if !uri.path().starts_with("/v1/") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    serve_v1(&sim.inner, "other", None, &headers, false, |_, _| {
        Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ))
    })
    .await
}

// ---- pagination ----

/// How an object is written in an answer as of an instant (agents derive
/// their heartbeat from it).
trait Wire {
    fn write<S: serde::Serializer>(&self, now_us: i64, s: S) -> Result<S::Ok, S::Error>;
}

impl Wire for Agent {
    fn write<S: serde::Serializer>(&self, now_us: i64, s: S) -> Result<S::Ok, S::Error> {
        AgentOut {
            agent: self,
            last_heartbeat_at: self.heartbeat_at(now_us),
        }
        .serialize(s)
    }
}

impl Wire for Task {
    fn write<S: serde::Serializer>(&self, _: i64, s: S) -> Result<S::Ok, S::Error> {
        self.serialize(s)
    }
}

/// An object (of id `.3`) as written at an instant, hostile
/// (`Faults::hostile_every`) when `hostile` says so.
struct One<'a, T>(&'a T, i64, Option<Hostile>, &'a str);
impl<T: Wire> Serialize for One<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(h) = self.2 else {
            return self.0.write(self.1, s);
        };
        use serde::ser::Error;
        let text =
            serde_json::to_string(&One(self.0, self.1, None, self.3)).map_err(S::Error::custom)?;
        // Written as it is: serde_json takes a raw value's text verbatim
        // (a lone surrogate escape included).
        serde_json::value::RawValue::from_string(h.mangle(self.3, &text))
            .map_err(S::Error::custom)?
            .serialize(s)
    }
}

/// Which objects are written hostile, and how.
fn hostile_of(inner: &Inner) -> Option<(u32, Hostile)> {
    let f = inner.faults();
    (f.hostile_every > 0).then_some((f.hostile_every, f.hostile))
}

/// `body` with every [`NOT_UTF8_MARK`] a 0xFF byte (not UTF-8).
fn break_utf8(body: Vec<u8>) -> Vec<u8> {
    let mut mark = [0u8; 4];
    let mark = NOT_UTF8_MARK.encode_utf8(&mut mark).as_bytes();
    if memchr::memmem::find(&body, mark).is_none() {
        return body;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = &body[..];
    while let Some(i) = memchr::memmem::find(rest, mark) {
        out.extend_from_slice(&rest[..i]);
        out.push(0xFF);
        rest = &rest[i + mark.len()..];
    }
    out.extend_from_slice(rest);
    out
}

struct Items<'a, T>(&'a [Hit<T>], i64, Option<(u32, Hostile)>);
impl<T: Wire> Serialize for Items<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for h in self.0 {
            let hostile = self
                .2
                .filter(|(every, _)| Hostile::chosen(*every, &h.id))
                .map(|(_, how)| how);
            seq.serialize_element(&One(&*h.obj, self.1, hostile, &h.id))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
#[serde(bound = "")]
struct PageOut<'a, T: Wire> {
    data: Items<'a, T>,
    has_more: bool,
    next_cursor: Option<String>,
}

/// Serialises a page; `next_cursor` is null exactly when `has_more` is false.
fn page<T: Wire>(inner: &Inner, kind: CursorKind, listing: Listing<T>, now_us: i64) -> Vec<u8> {
    let next_cursor = match (listing.has_more, listing.items.last()) {
        (true, Some(h)) => Some(encode_cursor(inner, kind, h, now_us)),
        _ => None,
    };
    let body = serde_json::to_vec(&PageOut {
        data: Items(&listing.items, now_us, hostile_of(inner)),
        has_more: next_cursor.is_some(),
        next_cursor,
    })
    .expect("serialisable");
    break_utf8(body)
}

fn single<T: Wire>(inner: &Inner, id: &str, obj: &T, now_us: i64) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(bound = "")]
    struct Data<'a, T: Wire> {
        data: One<'a, T>,
    }
    let hostile = hostile_of(inner)
        .filter(|(every, _)| Hostile::chosen(*every, id))
        .map(|(_, how)| how);
    let body = serde_json::to_vec(&Data {
        data: One(obj, now_us, hostile, id),
    })
    .expect("serialisable");
    break_utf8(body)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CursorKind {
    Agents,
    TasksCreated,
    TasksUpdated,
}

impl CursorKind {
    fn tag(self) -> &'static str {
        match self {
            CursorKind::Agents => "a",
            CursorKind::TasksCreated => "c",
            CursorKind::TasksUpdated => "u",
        }
    }
}

/// FNV-1a over the server's secret and the payload.
fn sign(secret: u64, payload: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in secret.to_le_bytes().iter().chain(payload.as_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Opaque cursor: hex of "kind|sort key|id|issued at|signature".
fn encode_cursor<T>(inner: &Inner, kind: CursorKind, last: &Hit<T>, now_us: i64) -> String {
    let payload = format!("{}|{}|{}|{}", kind.tag(), last.key, last.id, now_us);
    let sig = sign(inner.cursor_secret, &payload);
    let text = format!("{payload}|{sig:016x}");
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The (sort key, id) a cursor continues after, if it is one we issued for
/// this listing and still valid.
fn decode_cursor(
    inner: &Inner,
    kind: CursorKind,
    c: &str,
    now_us: i64,
) -> Result<(i64, String), ApiErr> {
    let invalid = || {
        ApiErr::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "the cursor is not valid for this listing",
        )
    };
    if c.len() % 2 != 0 || !c.is_ascii() {
        return Err(invalid());
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&c[i..i + 2], 16).ok())
        .collect();
    let text = String::from_utf8(bytes.ok_or_else(invalid)?).map_err(|_| invalid())?;
    let (payload, sig) = text.rsplit_once('|').ok_or_else(invalid)?;
    if u64::from_str_radix(sig, 16).ok() != Some(sign(inner.cursor_secret, payload)) {
        return Err(invalid());
    }
    let parts: Vec<&str> = payload.splitn(4, '|').collect();
    let [tag, key, id, issued] = parts[..] else {
        return Err(invalid());
    };
    if tag != kind.tag() {
        return Err(invalid());
    }
    let key: i64 = key.parse().map_err(|_| invalid())?;
    let issued: i64 = issued.parse().map_err(|_| invalid())?;
    if now_us - issued > inner.cfg.cursor_ttl.as_micros() as i64 {
        return Err(cursor_expired());
    }
    Ok((key, id.to_string()))
}

/// Sorts after every id (ids are ASCII), for exclusive instant bounds.
const ID_MAX: &str = "\u{10ffff}";

struct ListParams {
    limit: usize,
    cursor: Option<String>,
    statuses: Option<Vec<String>>,
    labels: Vec<(String, String)>,
    agent_id: Option<String>,
    created_after: Option<i64>,
    created_before: Option<i64>,
    updated_after: Option<i64>,
    order: Order,
}

fn parse_instant(name: &str, v: &str) -> Result<i64, ApiErr> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|d| d.timestamp_micros())
        .map_err(|_| ApiErr::bad(format!("{name} must be an RFC 3339 instant")))
}

impl ListParams {
    fn parse(q: &[(String, String)], tasks: bool) -> Result<Self, ApiErr> {
        let mut p = ListParams {
            limit: 20,
            cursor: None,
            statuses: None,
            labels: Vec::new(),
            agent_id: None,
            created_after: None,
            created_before: None,
            updated_after: None,
            order: Order::Created,
        };
        for (k, v) in q {
            match k.as_str() {
                "limit" => {
                    p.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| ApiErr::bad("limit must be an integer from 1 to 100"))?
                }
                "cursor" if !v.is_empty() => p.cursor = Some(v.clone()),
                "status" if !v.trim().is_empty() => {
                    p.statuses = Some(
                        v.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    )
                }
                "label" if !tasks => {
                    let (lk, lv) = v
                        .split_once(':')
                        .ok_or_else(|| ApiErr::bad("label must be key:value"))?;
                    p.labels.push((lk.to_string(), lv.to_string()));
                }
                "created_after" => p.created_after = Some(parse_instant(k, v)?),
                "created_before" => p.created_before = Some(parse_instant(k, v)?),
                "agent_id" if tasks => p.agent_id = Some(v.clone()),
                "updated_after" if tasks => p.updated_after = Some(parse_instant(k, v)?),
                "sort" if tasks => {
                    p.order = match v.as_str() {
                        "created_at" => Order::Created,
                        "updated_at" => Order::Updated,
                        _ => return Err(ApiErr::bad("sort must be created_at or updated_at")),
                    }
                }
                _ => {}
            }
        }
        Ok(p)
    }

    fn status_ok(&self, status: &str) -> bool {
        self.statuses
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == status))
    }

    /// Where the page starts: after the cursor, and after the strict lower
    /// bound of the sort key, whichever is later.
    fn after(
        &self,
        inner: &Inner,
        kind: CursorKind,
        now_us: i64,
    ) -> Result<Option<(i64, String)>, ApiErr> {
        let cursor = match &self.cursor {
            Some(c) => Some(decode_cursor(inner, kind, c, now_us)?),
            None => None,
        };
        let bound = match self.order {
            Order::Created => self.created_after,
            Order::Updated => self.updated_after,
        }
        .map(|t| (t, ID_MAX.to_string()));
        Ok(cursor.max(bound))
    }
}

// ---- /_sim control ----

async fn ground_truth(State(sim): State<Simulator>) -> Response {
    Json(sim.ground_truth()).into_response()
}

async fn pause(State(sim): State<Simulator>) -> Response {
    sim.pause();
    Json(json!({"paused": true})).into_response()
}

async fn resume(State(sim): State<Simulator>) -> Response {
    sim.resume();
    Json(json!({"paused": false})).into_response()
}

async fn set_faults(State(sim): State<Simulator>, Json(f): Json<Faults>) -> Response {
    sim.set_faults(f.clone());
    Json(f).into_response()
}

/// `{"kind": "provider-outage", "provider": "openai"}`,
/// `{"kind": "heartbeat-loss", "team": "growth"}`,
/// `{"kind": "spend-spike", "team": "research"}` or `{"kind": "none"}`.
async fn set_incident(State(sim): State<Simulator>, Json(v): Json<serde_json::Value>) -> Response {
    if v.get("kind").and_then(|k| k.as_str()) == Some("none") {
        sim.set_incident(None);
        return Json(v).into_response();
    }
    match serde_json::from_value::<Incident>(v.clone()) {
        Ok(i) => {
            sim.set_incident(Some(i));
            Json(v).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad incident: {e}\n")).into_response(),
    }
}

/// A list of `SimPrice` (`since` RFC 3339 or absent), replacing the list.
async fn set_prices(
    State(sim): State<Simulator>,
    Json(prices): Json<Vec<super::pricing::SimPrice>>,
) -> Response {
    match sim.set_prices(prices.clone()) {
        Ok(()) => Json(prices).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad prices: {e}\n")).into_response(),
    }
}

async fn set_webhooks(
    State(sim): State<Simulator>,
    Json(w): Json<super::webhooks::WebhookSettings>,
) -> Response {
    sim.set_webhooks(w.clone());
    Json(w).into_response()
}

/// `SimKey` as JSON, `expires_at` RFC 3339 or null.
#[derive(Deserialize)]
struct KeyIn {
    id: String,
    secret: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

async fn add_key(State(sim): State<Simulator>, Json(k): Json<KeyIn>) -> Response {
    let expires_at = match k
        .expires_at
        .as_deref()
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        None => None,
        Some(Ok(d)) => Some(d.with_timezone(&chrono::Utc)),
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                "expires_at must be RFC 3339 or null",
            )
                .into_response()
        }
    };
    sim.add_key(SimKey {
        id: k.id.clone(),
        secret: k.secret,
        scopes: k.scopes,
        expires_at,
    });
    Json(json!({"id": k.id})).into_response()
}
