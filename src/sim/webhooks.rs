//! Webhook delivery, as the contract describes it: each change of the
//! living fleet becomes a signed event POSTed to a configured URL, retried
//! after 5 s, 30 s, 1 min, 5 min, 30 min and 2 h (scaled by `time_scale` so
//! tests take milliseconds), with faults: lost for good, duplicated,
//! reordered (a random delay before the first attempt), failed attempts.
//!
//! Signing is done here independently of the exporter's `webhook` module
//! (as the rest of the simulator is independent of `api`), so a bug on
//! either side shows.

use super::model::Ts;
use super::state::Inner;
use hmac::{Hmac, Mac};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The contract's retry delays after the first attempt, in seconds.
const RETRY_SCHEDULE_SECS: [f64; 6] = [5.0, 30.0, 60.0, 300.0, 1800.0, 7200.0];

/// `POST /_sim/webhooks`: where and how to deliver. An empty `url` stops
/// delivery (and event generation).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
    /// Probability that a delivery is lost for good (every attempt lost);
    /// decided when the event happens and counted then.
    pub drop: f64,
    /// Probability that an acknowledged delivery is sent once more (same
    /// event id, new delivery id) after a random delay up to `reorder_ms`.
    pub duplicate: f64,
    /// Probability that one attempt is lost in transit (and retried).
    pub fail_attempt: f64,
    /// Each delivery waits uniformly 0..=reorder_ms before its first attempt.
    pub reorder_ms: u64,
    /// Multiplies the retry schedule; 0 means 1 (the contract's own).
    pub time_scale: f64,
}

/// Delivery counts per event type, for the ground truth.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookCounts {
    /// Events the fleet's changes produced while delivery was on.
    pub generated: BTreeMap<String, u64>,
    /// Events acknowledged with a 2xx (each once, duplicates not counted).
    pub delivered: BTreeMap<String, u64>,
    /// Events lost for good: by the `drop` fault, or after the last retry.
    pub dropped_for_good: BTreeMap<String, u64>,
    /// Extra copies sent by the `duplicate` fault.
    pub duplicates_sent: u64,
    /// Attempts that failed (lost in transit, or a non-2xx answer).
    pub failed_attempts: u64,
    /// Events still being delivered (waiting for an attempt or a retry).
    pub in_flight: u64,
}

/// An event the fleet produced, before it is wrapped and signed.
#[derive(Debug)]
pub struct SimEvent {
    pub kind: String,
    pub object: Value,
    /// When it happened (the event's `created_at`).
    pub at: Ts,
}

pub struct Deliverer {
    pub settings: WebhookSettings,
    pub counts: WebhookCounts,
    rng: rand::rngs::StdRng,
    next_id: u64,
    client: reqwest::Client,
}

impl Deliverer {
    pub fn new(seed: u64) -> Self {
        Deliverer {
            settings: WebhookSettings::default(),
            counts: WebhookCounts::default(),
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0x00de_11ce),
            next_id: 0,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.settings.url.is_empty()
    }
}

fn bump(m: &mut BTreeMap<String, u64>, k: &str) {
    *m.entry(k.to_string()).or_default() += 1;
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let d = mac.finalize().into_bytes();
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Plan one delivery per event and spawn it (on the current runtime).
pub fn dispatch(inner: &Arc<Inner>, events: Vec<SimEvent>) {
    let mut d = inner.webhooks();
    if !d.enabled() {
        return;
    }
    for ev in events {
        d.next_id += 1;
        let id = format!("evt_{:010}", d.next_id);
        bump(&mut d.counts.generated, &ev.kind);
        let s = d.settings.clone();
        if s.drop > 0.0 && d.rng.random_bool(s.drop.min(1.0)) {
            bump(&mut d.counts.dropped_for_good, &ev.kind);
            continue;
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "id": id,
            "type": ev.kind,
            "created_at": ev.at.format(),
            "workspace_id": inner.cfg.workspace_id,
            "data": {"object": ev.object},
        }))
        .expect("serialisable");
        let delay = d.rng.random_range(0..=s.reorder_ms);
        d.counts.in_flight += 1;
        let seed: u64 = d.rng.random();
        let client = d.client.clone();
        let inner = inner.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let scale = if s.time_scale > 0.0 {
                s.time_scale
            } else {
                1.0
            };
            let waits = std::iter::once(0.0).chain(RETRY_SCHEDULE_SECS.iter().map(|w| w * scale));
            let mut ok = false;
            for wait in waits {
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                let lost = s.fail_attempt > 0.0 && rng.random_bool(s.fail_attempt.min(1.0));
                // The contract: the same delivery id on every retry.
                let delivery = format!("dlv_{id}");
                if !lost && post(&client, &s, &ev.kind, &delivery, &body).await {
                    ok = true;
                    break;
                }
                inner.webhooks().counts.failed_attempts += 1;
            }
            let dup = ok && s.duplicate > 0.0 && rng.random_bool(s.duplicate.min(1.0));
            {
                let mut d = inner.webhooks();
                let m = if ok {
                    &mut d.counts.delivered
                } else {
                    &mut d.counts.dropped_for_good
                };
                bump(m, &ev.kind);
                if dup {
                    d.counts.duplicates_sent += 1;
                }
            }
            if dup {
                let later = rng.random_range(0..=s.reorder_ms);
                tokio::time::sleep(Duration::from_millis(later)).await;
                post(&client, &s, &ev.kind, &format!("dlv_{id}_dup"), &body).await;
            }
            inner.webhooks().counts.in_flight -= 1;
        });
    }
}

async fn post(
    client: &reqwest::Client,
    s: &WebhookSettings,
    kind: &str,
    delivery: &str,
    body: &[u8],
) -> bool {
    client
        .post(&s.url)
        .header("content-type", "application/json")
        .header("x-clawmesh-signature", sign(&s.secret, body))
        .header("x-clawmesh-event", kind)
        .header("x-clawmesh-delivery", delivery)
        .body(body.to_vec())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}
