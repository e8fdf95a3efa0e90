//! Delivering the fleet's webhook events as webhooks.rs describes them: each
//! event planned (dropped, delayed, signed) when it happens, then attempted
//! and retried on its own task. Apart from webhooks.rs because it needs the
//! shared state ([`Inner`]), which holds the [`super::webhooks::Deliverer`].

use super::state::Inner;
use super::webhooks::{sign, SimEvent, WebhookSettings};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The contract's retry delays after the first attempt, in seconds.
const RETRY_SCHEDULE_SECS: [f64; 6] = [5.0, 30.0, 60.0, 300.0, 1800.0, 7200.0];

fn bump(m: &mut BTreeMap<String, u64>, k: &str) {
    *m.entry(k.to_string()).or_default() += 1;
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
