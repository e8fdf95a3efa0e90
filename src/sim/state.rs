//! The simulator's shared state: the fleet, the request side (keys,
//! rate-limit window, counters), the faults and the webhook deliverer, behind
//! one `Arc` that the HTTP handlers, the fleet's tick and the deliveries share.

use super::config::{SimConfig, SimKey};
use super::faults::Faults;
use super::life::Fleet;
use super::model::{self, format_us, whole_second, Clock};
use super::{truth, webhooks};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};

/// A key as the simulator knows it.
#[derive(Clone, Debug)]
pub(super) struct KeyEntry {
    pub(super) key: SimKey,
    pub(super) created_us: i64,
}

/// Request-side state: keys, rate-limit window, counters, fault dice.
pub(super) struct HttpState {
    pub(super) keys: HashMap<String, KeyEntry>,
    pub(super) window: i64,
    pub(super) window_count: u64,
    /// Per key id: the instant before which it must not come back.
    pub(super) not_before: HashMap<String, i64>,
    pub(super) counters: truth::RequestCounters,
    pub(super) rng: rand::rngs::StdRng,
    pub(super) next_request: u64,
}

pub(super) struct Inner {
    pub(super) cfg: SimConfig,
    /// The API's clock.
    pub(super) clock: Clock,
    pub(super) start_us: i64,
    pub(super) fleet: Mutex<Fleet>,
    pub(super) http: Mutex<HttpState>,
    pub(super) faults: Mutex<Faults>,
    pub(super) started: AtomicBool,
    /// Signs cursors so that a cursor never issued is told apart.
    pub(super) cursor_secret: u64,
    pub(super) webhooks: Mutex<webhooks::Deliverer>,
}

impl Inner {
    pub(super) fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn http(&self) -> MutexGuard<'_, HttpState> {
        self.http.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn webhooks(&self) -> MutexGuard<'_, webhooks::Deliverer> {
        self.webhooks.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// An instant as the API prints it outside the fleet's objects (keys):
    /// six digits, or a whole second under whole-second stamps.
    pub(super) fn api_ts(&self, us: i64) -> String {
        if self.cfg.latitude.whole_second_stamps {
            model::Ts {
                us: whole_second(us),
                digits: 0,
            }
            .format()
        } else {
            format_us(us)
        }
    }
    pub(super) fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
