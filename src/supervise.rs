//! Loops that cannot end silently. Every long-lived loop of the exporter
//! (the poll loops, the webhook worker, the OTLP pusher, a workspace's key
//! check) runs each round inside [`guard`]: a panic in a round is caught
//! there, logged once with its message and place, counted in
//! `clawmesh_exporter_task_restarts_total{task}`, and the loop goes on after
//! a [`Backoff`]. The loop's own health (`clawmesh_up`) says what the panic
//! cost; the round's state is what the next round repairs (an unfinished
//! listing is read again, so counting stays exact).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

/// The loops that are guarded, each a value of the `task` label (present
/// at 0 from the start, so that `increase()` sees the first restart).
pub const TASKS: [&str; 6] = [
    "key_check",
    "poll_agents",
    "poll_tasks",
    "webhook_worker",
    "otlp_pusher",
    "checkpoint",
];

/// A panic caught in a guarded round.
#[derive(Debug, Clone, PartialEq)]
pub struct Caught {
    pub message: String,
    /// `file:line:column` where it panicked, when the hook saw it.
    pub location: Option<String>,
}

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(l) => write!(f, "{} (at {l})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

thread_local! {
    /// Inside a guarded poll: the hook keeps the place instead of printing.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keep the default panic output for panics nobody catches (a test's
/// failed assertion among them), and let a guarded round's panic be
/// reported once, by its loop, in the log's format.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let place = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                LAST_LOCATION.with(|l| *l.borrow_mut() = place);
            } else {
                default(info);
            }
        }));
    });
}

/// Run `fut` to its end, or to a panic in it.
pub fn guard<F: Future>(fut: F) -> Guarded<F> {
    Guarded {
        inner: Some(Box::pin(fut)),
    }
}

pub struct Guarded<F> {
    /// `None` once it panicked: never polled again.
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for Guarded<F> {
    type Output = Result<F::Output, Caught>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(Caught {
                message: "polled after a panic".into(),
                location: None,
            }));
        };
        let outer = GUARDED.with(|g| g.replace(true));
        let polled = catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx)));
        GUARDED.with(|g| g.set(outer));
        match polled {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                // Dropping what panicked may panic again: keep that inside.
                let inner = self.inner.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(inner)));
                Poll::Ready(Err(caught(payload)))
            }
        }
    }
}

/// [`guard`] for a plain function.
pub fn guard_sync<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    let outer = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.map_err(caught)
}

fn caught(payload: Box<dyn Any + Send>) -> Caught {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    };
    Caught {
        message: crate::text::shorten(&message, 300),
        location: LAST_LOCATION.with(|l| l.borrow_mut().take()),
    }
}

/// The wait before a loop's next round after a panic: 1 s, doubling to
/// 60 s while rounds keep panicking; one good round resets it.
#[derive(Debug, Default)]
pub struct Backoff {
    in_a_row: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(60);

    /// A round panicked: how long to wait before the next.
    pub fn failed(&mut self) -> Duration {
        let d = Self::FIRST
            .saturating_mul(1u32 << self.in_a_row.min(6))
            .min(Self::MAX);
        self.in_a_row = self.in_a_row.saturating_add(1);
        d
    }

    /// A round ended without a panic.
    pub fn succeeded(&mut self) {
        self.in_a_row = 0;
    }
}

/// Log a caught panic once: which loop, what and where, and when it goes on.
pub fn report(task: &str, workspace: &str, c: &Caught, restart_in: Duration) {
    tracing::error!(
        task,
        workspace,
        panic = %c.message,
        location = c.location.as_deref().unwrap_or("unknown"),
        restart_in = %humantime::format_duration(restart_in),
        "a loop panicked; it is counted in clawmesh_exporter_task_restarts_total and goes on after a pause"
    );
}

/// A test seam: make the next `times` rounds of `task` in `workspace`
/// panic. A panic is the one fault no upstream or client can cause once
/// every input is bounded, so the supervision is tested by injecting it.
/// Nothing outside the process reaches this (no flag, no variable).
#[doc(hidden)]
pub fn inject_panics(workspace: &str, task: &'static str, times: u32) {
    let mut planned = PLANNED.lock().unwrap_or_else(|p| p.into_inner());
    planned.push((workspace.to_string(), task, times));
    ANY_PLANNED.store(true, std::sync::atomic::Ordering::SeqCst);
}

static ANY_PLANNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
type Plan = Vec<(String, &'static str, u32)>;
static PLANNED: std::sync::Mutex<Plan> = std::sync::Mutex::new(Vec::new());

/// Panic here when a test planned it for this round (see [`inject_panics`]).
pub(crate) fn injected(workspace: &str, task: &'static str) {
    if !ANY_PLANNED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let due = {
        let mut planned = PLANNED.lock().unwrap_or_else(|p| p.into_inner());
        let hit = planned
            .iter_mut()
            .find(|(w, t, n)| w == workspace && *t == task && *n > 0);
        hit.map(|(_, _, n)| *n -= 1).is_some()
    };
    if due {
        panic!("a panic injected by a test into {task}");
    }
}

/// Sleep until `until`; true when told to stop first.
pub async fn sleep_or_stop(
    until: tokio::time::Instant,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(until) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_round_is_caught_with_its_place_and_the_next_runs() {
        install_panic_hook();
        let mut rounds = 0;
        let mut caught = Vec::new();
        for i in 0..3 {
            let r = guard(async {
                tokio::task::yield_now().await;
                if i == 1 {
                    panic!("round {i} broke");
                }
                i * 10
            })
            .await;
            match r {
                Ok(v) => rounds += v,
                Err(c) => caught.push(c),
            }
        }
        assert_eq!(rounds, 20, "rounds 0 and 2 ran to their end");
        assert_eq!(caught.len(), 1);
        assert_eq!(caught[0].message, "round 1 broke");
        let place = caught[0].location.as_deref().unwrap_or("");
        assert!(place.contains("supervise.rs"), "{place}");
        // A panic outside a guard still reaches the default hook (and its
        // thread): the guard's flag does not leak.
        assert!(!GUARDED.with(Cell::get));
        let r = guard_sync(|| -> u32 { panic!("{}", String::from("owned message")) });
        assert_eq!(r.unwrap_err().message, "owned message");
        assert_eq!(guard_sync(|| 7), Ok(7));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.succeeded();
        assert_eq!(b.failed(), Backoff::FIRST);
    }
}
