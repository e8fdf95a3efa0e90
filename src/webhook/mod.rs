//! The webhook receiver: ClawMesh pushes signed events; the exporter
//! verifies them, drops replays and duplicates, and applies them to the
//! fleet through the same functions as polled objects.
//!
//! A request goes through, in this order and touching no state before the
//! signature holds: the signature header's form (`sha256=` and 64 lowercase
//! hex digits), the body read with a 1 MiB cap (the declared length first,
//! then counted while streaming) and within the in-flight budget of all
//! bodies being read (503 `busy` past it), the HMAC-SHA256 of the exact bytes under
//! one of at most two secrets (rotation), the JSON, the event's age (older
//! than the retry horizon: refused), the workspace it names, its type, and
//! finally de-duplication by event id with a non-blocking push into the
//! workspace's bounded queue. A worker per workspace (in `poll`) drains the
//! queue, so the answer never waits for the fleet.

mod dedup;
mod reconcile;
pub mod settings;
mod verify;

pub use dedup::Dedup;
pub use reconcile::Reconciler;
pub use verify::{parse_signature, verify};

use crate::api::types::{parse_object, Agent, Malformed, Task, Timestamp};
use crate::fleet::{Applied, Fleet};
use crate::secret::Secret;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Where the receiver listens on the exporter's HTTP server.
pub const PATH: &str = "/webhooks/clawmesh";
/// The contract's largest body.
pub const MAX_BODY: usize = 1024 * 1024;
/// The contract retries after 5 s, 30 s, 1 min, 5 min, 30 min and 2 h: the
/// last retry comes about 2 h 36 min after the event. Ids are remembered,
/// and older events refused, past that with a margin.
pub const RETRY_HORIZON: Duration = Duration::from_secs(3 * 3600);
/// Bound on remembered event ids, whatever the event rate.
const MAX_REMEMBERED_IDS: usize = 2_000_000;
/// The contract's ids look like `evt_01J8KA`; one of 1 MiB is no event id.
pub const DEFAULT_MAX_ID_LENGTH: usize = 256;

/// The result of a request refused for lack of in-flight budget (503).
pub const BUSY: &str = "busy";

pub const SIGNATURE_HEADER: &str = "x-clawmesh-signature";

/// Every result a request can have; all are exported, zeros included.
pub const RESULTS: [&str; 10] = [
    "accepted",
    "duplicate",
    "ignored",
    "unknown_type",
    "bad_signature",
    "too_large",
    "bad_request",
    "stale",
    "unknown_workspace",
    "queue_full",
];

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// One or two secrets (the current one and the one being rotated in or out).
    pub secrets: Vec<Secret>,
    /// Poll interval while webhooks are healthy (an event arrived within it).
    pub poll_interval: Duration,
    /// How long after polling counted a terminal transition a webhook may
    /// still arrive before the event counts as missed.
    pub missed_grace: Duration,
    /// Events queued per workspace before the receiver answers 503.
    pub queue_capacity: usize,
    /// Longest event id accepted, in bytes (`--webhook.max-id-length`).
    pub max_id_length: usize,
    /// Memory for remembered event ids (`--webhook.dedup-max-size`).
    pub dedup_max_bytes: usize,
    /// Body bytes held by all requests at once before the signature is
    /// checked (`--webhook.max-inflight-size`); past it a request gets 503.
    pub max_inflight_bytes: usize,
}

/// The smallest in-flight budget: one body of the largest size.
pub const MIN_INFLIGHT_BYTES: usize = MAX_BODY;

/// A verified event, as its workspace's worker applies it.
#[derive(Debug)]
pub enum Change {
    /// A task event; `terminal_event` for task.completed, task.failed and
    /// task.cancelled (the events the missed-event count is about).
    Task {
        task: Task,
        terminal_event: bool,
    },
    Agent(Agent),
    AgentDeleted(Agent),
    /// The event's object could not be read: counted as a refused object.
    Refused(Malformed),
}

/// Requests per result.
#[derive(Debug, Default)]
struct Counts(Mutex<BTreeMap<&'static str, u64>>);

impl Counts {
    fn add(&self, result: &'static str) {
        *lock(&self.0).entry(result).or_default() += 1;
    }
}

struct Route {
    tx: mpsc::Sender<Change>,
    /// Tells the worker that counts changed without an event to apply.
    changed: Arc<Notify>,
    counts: Arc<Counts>,
    last_event: Arc<Mutex<Option<Timestamp>>>,
}

/// The receiver of one exporter process, shared by the HTTP handler and the
/// workspaces that registered with it.
pub struct Receiver {
    cfg: WebhookConfig,
    dedup: Mutex<Dedup>,
    routes: RwLock<HashMap<String, Route>>,
    /// Requests refused before a verified body named a workspace.
    unattributed: Arc<Counts>,
    /// The bytes of bodies being read, one permit a byte: a request takes
    /// its declared length before reading (or each chunk as it comes), so
    /// that many slow senders cannot hold more than the budget between them.
    inflight: tokio::sync::Semaphore,
}

/// A workspace's end of the receiver: its queue and its webhook state.
pub struct Inbox {
    pub rx: mpsc::Receiver<Change>,
    /// Requests were counted that queued nothing: publish the counts.
    pub changed: Arc<Notify>,
    pub tracker: Tracker,
}

impl Receiver {
    pub fn new(cfg: WebhookConfig) -> Arc<Self> {
        Arc::new(Receiver {
            dedup: Mutex::new(Dedup::new(
                RETRY_HORIZON,
                MAX_REMEMBERED_IDS,
                cfg.dedup_max_bytes,
            )),
            routes: RwLock::new(HashMap::new()),
            unattributed: Arc::new(Counts::default()),
            inflight: tokio::sync::Semaphore::new(
                cfg.max_inflight_bytes
                    .clamp(MIN_INFLIGHT_BYTES, tokio::sync::Semaphore::MAX_PERMITS),
            ),
            cfg,
        })
    }

    /// Route events naming `workspace` to a new queue (replacing any
    /// earlier one), from when its polling starts.
    pub fn register(&self, workspace: &str) -> Inbox {
        let (tx, rx) = mpsc::channel(self.cfg.queue_capacity.max(1));
        let counts = Arc::new(Counts::default());
        let changed = Arc::new(Notify::new());
        let last_event = Arc::new(Mutex::new(None));
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                workspace.to_string(),
                Route {
                    tx,
                    changed: changed.clone(),
                    counts: counts.clone(),
                    last_event: last_event.clone(),
                },
            );
        Inbox {
            rx,
            changed,
            tracker: Tracker {
                poll_interval: self.cfg.poll_interval,
                counts,
                unattributed: self.unattributed.clone(),
                last_event,
                reconciler: Reconciler::new(self.cfg.missed_grace),
            },
        }
    }

    /// Events naming `workspace` are no longer this process's (its slot
    /// stopped on a reload or moved shard): they get 404, not a dead queue.
    pub fn unregister(&self, workspace: &str) {
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(workspace);
    }

    /// `POST /webhooks/clawmesh`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(receive))
            .with_state(self.clone())
    }

    async fn handle(&self, headers: &HeaderMap, body: Body) -> Outcome {
        use Outcome::Refused;
        let mut sigs = headers.get_all(SIGNATURE_HEADER).iter();
        let digest = match (sigs.next(), sigs.next()) {
            (Some(v), None) => parse_signature(v.as_bytes()),
            _ => None,
        };
        let Some(digest) = digest else {
            return Refused(StatusCode::UNAUTHORIZED, "bad_signature");
        };
        let (body, _held) = match read_capped(headers, body, &self.inflight).await {
            Ok(b) => b,
            Err(o) => return o,
        };
        if !verify(&self.cfg.secrets, &body, &digest) {
            return Refused(StatusCode::UNAUTHORIZED, "bad_signature");
        }
        // Invalid UTF-8 reads as U+FFFD, as in a page: the object it is
        // in counts, marked (the signature was checked on the bytes sent).
        let (text, replaced) = crate::api::types::lossy_text(&body);
        // A lone surrogate escape outside the object (in the event's id,
        // say) would refuse the event, and every retry of it: the event is
        // read with them as U+FFFD, the object from the text as sent (the
        // repair keeps every length, so it sits at the same place), so
        // that it is marked repaired when it holds one.
        let envelope = crate::api::types::repair_surrogates(&text);
        let Ok(ev) = serde_json::from_str::<EventIn>(&envelope) else {
            return Refused(StatusCode::BAD_REQUEST, "bad_request");
        };
        if ev.created_at < Timestamp::host_now().saturating_sub(RETRY_HORIZON) {
            // Past the last retry: a replay, whoever sends it.
            return Refused(StatusCode::BAD_REQUEST, "stale");
        }
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let Some(route) = routes.get(&ev.workspace_id) else {
            return Refused(StatusCode::NOT_FOUND, "unknown_workspace");
        };
        let answer = |status, result| Outcome::Routed {
            status,
            result,
            counts: route.counts.clone(),
            changed: route.changed.clone(),
        };
        if ev.id.is_empty() || ev.id.len() > self.cfg.max_id_length {
            // Remembering it would cost its length for three hours.
            return answer(StatusCode::BAD_REQUEST, "bad_request");
        }
        *lock(&route.last_event) = Some(Timestamp::host_now());
        let object = ev.data.object.get();
        let start = (object.as_ptr() as usize).wrapping_sub(envelope.as_ptr() as usize);
        let object = start
            .checked_add(object.len())
            .and_then(|end| text.get(start..end))
            .unwrap_or(object);
        let lossy = crate::api::types::replaced_within(&text, &replaced, object);
        let change = match Change::from_event(&ev.kind, object, lossy) {
            Some(c) => c,
            None if KNOWN_UNUSED.contains(&ev.kind.as_str()) => {
                return answer(StatusCode::OK, "ignored")
            }
            None => return answer(StatusCode::OK, "unknown_type"),
        };
        let mut dedup = lock(&self.dedup);
        if dedup.contains(&ev.id) {
            return answer(StatusCode::OK, "duplicate");
        }
        match route.tx.try_send(change) {
            Ok(()) => {
                dedup.insert(&ev.id, Instant::now());
                answer(StatusCode::OK, "accepted")
            }
            // Not remembered: the platform's retry gets another chance.
            Err(_) => answer(StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
        }
    }
}

/// Event types the exporter knows and has no use for.
const KNOWN_UNUSED: [&str; 1] = ["skill.activated"];

const TERMINAL_EVENTS: [&str; 3] = ["task.completed", "task.failed", "task.cancelled"];

const TASK_EVENTS: [&str; 6] = [
    "task.created",
    "task.started",
    "task.completed",
    "task.failed",
    "task.cancelled",
    "task.output_received",
];

impl Change {
    /// `None` for types without a change to apply. An object that cannot
    /// be read is one refused object (`Refused`), acknowledged and
    /// remembered like any event: a retry would carry the same bytes.
    fn from_event(kind: &str, object: &str, lossy: bool) -> Option<Change> {
        Some(match kind {
            k if TASK_EVENTS.contains(&k) => match parse_object::<Task>(object, lossy) {
                Ok(task) => Change::Task {
                    task,
                    terminal_event: TERMINAL_EVENTS.contains(&k),
                },
                Err(m) => Change::Refused(m),
            },
            "agent.created" | "agent.status_changed" | "agent.deleted" => {
                match parse_object::<Agent>(object, lossy) {
                    Ok(a) if kind == "agent.deleted" => Change::AgentDeleted(a),
                    Ok(a) => Change::Agent(a),
                    Err(m) => Change::Refused(m),
                }
            }
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
struct EventIn<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created_at: Timestamp,
    workspace_id: String,
    #[serde(borrow)]
    data: DataIn<'a>,
}

#[derive(Deserialize)]
struct DataIn<'a> {
    /// Read on its own: one that cannot be read is refused alone.
    #[serde(borrow)]
    object: &'a serde_json::value::RawValue,
}

enum Outcome {
    /// Refused before a verified body named a known workspace.
    Refused(StatusCode, &'static str),
    Routed {
        status: StatusCode,
        result: &'static str,
        counts: Arc<Counts>,
        changed: Arc<Notify>,
    },
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Body,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, result) = match r.handle(&headers, body).await {
        Outcome::Refused(s, result) => {
            r.unattributed.add(result);
            let routes = r.routes.read().unwrap_or_else(|p| p.into_inner());
            routes.values().for_each(|route| route.changed.notify_one());
            (s, result)
        }
        Outcome::Routed {
            status,
            result,
            counts,
            changed,
        } => {
            counts.add(result);
            // Also after "accepted": the worker may have published the
            // event before this count.
            changed.notify_one();
            (status, result)
        }
    };
    if status.is_client_error() || status.is_server_error() {
        tracing::debug!(result, status = status.as_u16(), "webhook refused");
    }
    let body = format!("{result}\n");
    if result == BUSY {
        // Other deliveries hold the budget; theirs end within the body timeout.
        return (status, [(header::RETRY_AFTER, "5")], body).into_response();
    }
    (status, body).into_response()
}

/// The body, refused past [`MAX_BODY`]: by its declared length before
/// reading, and by counting while reading (a chunked or lying sender); and
/// refused with 503 (`busy`) when the bytes it needs are not free in
/// `inflight`. Returns it with the permits it holds.
async fn read_capped<'a>(
    headers: &HeaderMap,
    mut body: Body,
    inflight: &'a tokio::sync::Semaphore,
) -> Result<(Vec<u8>, Option<tokio::sync::SemaphorePermit<'a>>), Outcome> {
    let too_large = || Outcome::Refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let busy = || Outcome::Refused(StatusCode::SERVICE_UNAVAILABLE, BUSY);
    let mut held: Option<tokio::sync::SemaphorePermit<'a>> = None;
    let mut take = |n: usize| -> Result<(), Outcome> {
        if n == 0 {
            return Ok(());
        }
        let n = u32::try_from(n).map_err(|_| too_large())?;
        let p = inflight.try_acquire_many(n).map_err(|_| busy())?;
        match held.as_mut() {
            Some(h) => h.merge(p),
            None => held = Some(p),
        }
        Ok(())
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let declared = declared.unwrap_or(0) as usize;
    take(declared)?;
    let mut buf = Vec::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match crate::server::BodyTimeout::caused(&e) {
            // The sender stopped sending (--web.read-body-timeout).
            true => Outcome::Refused(StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            false => Outcome::Refused(StatusCode::BAD_REQUEST, "bad_request"),
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            // Past the declared length (chunked): take the rest as it comes.
            take((buf.len() + data.len()).saturating_sub(declared.max(buf.len())))?;
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf, held))
}

/// What the metric table shows about a workspace's webhooks (carried by
/// the workspace's snapshot, so defined beside it).
pub use crate::fleet::WebhookHealth;

/// A workspace's webhook state, kept beside its fleet (under the same lock).
pub struct Tracker {
    poll_interval: Duration,
    counts: Arc<Counts>,
    unattributed: Arc<Counts>,
    last_event: Arc<Mutex<Option<Timestamp>>>,
    pub reconciler: Reconciler,
}

impl Tracker {
    /// The poll interval to use now: the webhook one while events arrive,
    /// else `normal`.
    pub fn poll_interval(&self, normal: Duration) -> Duration {
        let recent = lock(&self.last_event)
            .is_some_and(|t| t > Timestamp::host_now().saturating_sub(self.poll_interval));
        if recent {
            self.poll_interval.max(normal)
        } else {
            normal
        }
    }

    /// What applying a polled task did: a terminal transition counted by
    /// polling first is suspected missed.
    pub fn polled(&mut self, t: &Task, applied: Applied) {
        if applied == Applied::Finished {
            self.reconciler.suspect(&t.id, Instant::now());
        }
    }

    pub fn health(&mut self) -> WebhookHealth {
        self.reconciler.sweep(Instant::now());
        let count = |counts: &Counts| -> BTreeMap<&'static str, u64> {
            let mut m: BTreeMap<&'static str, u64> = RESULTS.iter().map(|r| (*r, 0)).collect();
            for (r, n) in lock(&counts.0).iter() {
                *m.entry(r).or_default() += n;
            }
            m
        };
        WebhookHealth {
            requests: count(&self.counts),
            unattributed: count(&self.unattributed),
            missed_events: self.reconciler.missed(),
            last_event: lock(&self.last_event).map(|t| t.as_secs_f64()),
        }
    }
}

/// Apply one verified change to the fleet, through the functions polling uses.
pub fn apply(fleet: &mut Fleet, tracker: &mut Tracker, change: Change) {
    match change {
        Change::Task {
            task,
            terminal_event,
        } => {
            // Older than anything polling still reads: the ledger may have
            // forgotten the task, so a late `task.created` could re-open it.
            let applied = if task.updated_at > fleet.floor() {
                fleet.apply_task(&task)
            } else {
                Applied::Unchanged
            };
            if terminal_event {
                tracker.reconciler.event_seen(&task.id);
            } else if applied == Applied::Finished {
                // Counted from a later event (output_received) carrying
                // the finished task: its own terminal event is still due.
                tracker.reconciler.suspect(&task.id, Instant::now());
            }
        }
        Change::Agent(a) => fleet.apply_agent_event(&a, false),
        Change::AgentDeleted(a) => fleet.apply_agent_event(&a, true),
        Change::Refused(m) => fleet.reject_malformed(&m),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
