//! The ClawMesh API simulator used by the demo and the tests.
//!
//! It serves the contract (`/work/shared/clawmesh-api`) under `/v1` with a
//! living fleet, and unauthenticated control endpoints under `/_sim/`. It has
//! its own object model (not `crate::api::types`) and serialises the full
//! contract shape, so that client bugs show. [`GroundTruth`] is the exact
//! state the tests compare the exporter's numbers against.
//!
//! Control endpoints (JSON, no auth): `GET /_sim/ground_truth`,
//! `POST /_sim/pause`, `POST /_sim/resume`, `POST /_sim/faults` (body: a
//! [`Faults`], replaces all), `POST /_sim/keys` (body: a [`SimKey`] with
//! `expires_at` RFC 3339 or null), `POST /_sim/webhooks` (body: a
//! [`WebhookSettings`]: deliver signed events of every later change),
//! `POST /_sim/incident`, `POST /_sim/prices` (body: a list of [`SimPrice`],
//! replaces the list: tokens committed from then on are priced with it, at
//! their task's finish instant).
//!
//! Notes for test writers:
//! - A change is visible at `updated_at + lag`, lag uniform in
//!   `[0, visibility_lag_max]` (exactly the max under
//!   [`Latitude::lag_always_max`]): the contract's promise is relative to
//!   `updated_at`, which is rounded down to its random digit count. A
//!   deletion that keeps `updated_at` is measured from when it happens.
//! - Every change of the living fleet has timestamps later than
//!   [`Simulator::started_at`]; every seeded one is earlier. Under
//!   [`Latitude::whole_second_stamps`] the start is a whole second and the
//!   living fleet's stamps are at or after it (not strictly later), and
//!   successive versions of one object may carry the same `updated_at`.
//! - Every instant (stamps, visibility, cursors, rate-limit windows,
//!   Retry-After, key expiry, heartbeats, the ground truth's `now` and
//!   `visible_by`) is on the API's clock: the host's plus
//!   [`Latitude::clock_offset_ms`] ([`GroundTruth::clock_offset_ms`]). Every
//!   /v1 answer carries a `Date` header from that clock. A [`SimKey`]'s
//!   `expires_at` is on the API's clock too.
//! - A /v1 request is judged in this order: injected proxy faults
//!   (outage, 500, 502, 503, 429), the workspace rate limit, auth and scope,
//!   the `page_retry_after` fault, the `cursor_expired` fault, the handler,
//!   then `truncated_json`. Every request counts against the rate-limit
//!   window, whatever its answer.
//! - Spend (`GroundTruth::spend`, by breakdown and by finish day) is
//!   counted with the tokens, when their value is committed (at the finish,
//!   or later under late metrics), with the list held then and the price in
//!   force at the task's `finished_at`: a list posted with a `since` in the
//!   past does not reprice tokens already counted, so post changes ahead of
//!   their `since`. Hand the exporter the same list with [`prices_yaml`].
//! - `requests_by_key` counts requests without a known key under
//!   `"unauthenticated"`; `requests_by_endpoint` uses `/auth/token`,
//!   `/agents`, `/agents/{id}`, `/tasks`, `/tasks/{id}` and `other`;
//!   `rate_limited_total` counts every 429 answered, injected ones included.
//!
//! Files, lowest first; each imports only from files before it (the layer
//! test, tests/it/layers.rs, fails on a circle), and this one only declares
//! them and re-exports the public names: `model`, `pricing` (prices and
//! their exact arithmetic, apart from `crate::prices`), `latitude`, `faults`,
//! `config`, `webhooks` (settings, counts, signing), `truth`, `life` (the
//! fleet), `state` (what the handles share), `delivery`, `simulator`, `http`
//! (adds `Simulator::router` and `serve`); `cli` reads `config` and `latitude`.

pub mod cli;
mod config;
mod delivery;
mod faults;
mod http;
mod latitude;
mod life;
mod model;
mod pricing;
mod simulator;
mod state;
mod truth;
mod webhooks;

#[cfg(test)]
mod tests;

pub use config::{
    Incident, LabelSpread, SimConfig, SimKey, DEMO_KEY, DEMO_KEY_ID, MAX_FILL_DELAY,
    SPEND_SPIKE_FACTOR,
};
pub use faults::{Faults, Hostile};
pub use latitude::{parse_signed_ms, Latitude};
pub use pricing::{prices_yaml, SimPrice};
pub use simulator::Simulator;
pub use truth::{GroundTruth, Observations};
/// How the simulator signs a webhook body; tests sign their own events with it.
pub use webhooks::sign as sign_webhook;
pub use webhooks::{WebhookCounts, WebhookSettings};
