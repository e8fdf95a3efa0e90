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
use hmac::{Hmac, Mac};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

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
    pub(super) rng: rand::rngs::StdRng,
    pub(super) next_id: u64,
    pub(super) client: reqwest::Client,
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

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let d = mac.finalize().into_bytes();
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}
