//! What polling finds that no webhook delivered.
//!
//! "Missed" is defined precisely, so that it can be checked against the
//! platform (or the simulator) exactly: a **missed event** is a terminal
//! task event (`task.completed`, `task.failed`, `task.cancelled`) that did
//! not arrive although the transition was counted by something else first
//! (`Fleet::apply_task` answered `Applied::Finished` to a polled copy, or to
//! a later `task.output_received` carrying the finished task), within the
//! grace period after that count. A terminal event arriving within the
//! grace only lost a race; one that never arrives was lost for good. Other
//! event kinds are not judged: polling cannot tell which of them a webhook
//! should have brought (a task created and started between two polls shows
//! only its latest state).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Reconciler {
    grace: Duration,
    /// Tasks polling counted first, with the instant their grace ends.
    suspects: HashMap<Box<str>, Instant>,
    missed: u64,
}

impl Reconciler {
    pub fn new(grace: Duration) -> Self {
        Reconciler {
            grace,
            suspects: HashMap::new(),
            missed: 0,
        }
    }

    /// Something other than its terminal event counted `task` finished.
    pub fn suspect(&mut self, task: &str, now: Instant) {
        self.suspects.insert(task.into(), now + self.grace);
    }

    /// The terminal event of `task` arrived.
    pub fn event_seen(&mut self, task: &str) {
        self.suspects.remove(task);
    }

    /// Suspects whose grace ended become missed events.
    pub fn sweep(&mut self, now: Instant) {
        let before = self.suspects.len();
        self.suspects.retain(|_, until| *until > now);
        self.missed += (before - self.suspects.len()) as u64;
    }

    pub fn missed(&self) -> u64 {
        self.missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_webhook_within_the_grace_is_not_missed() {
        let mut r = Reconciler::new(Duration::from_secs(10));
        let t0 = Instant::now();
        r.suspect("a", t0);
        r.suspect("b", t0);
        r.event_seen("a");
        r.sweep(t0 + Duration::from_secs(9));
        assert_eq!(r.missed(), 0);
        r.sweep(t0 + Duration::from_secs(11));
        assert_eq!(r.missed(), 1);
        r.event_seen("b");
        r.sweep(t0 + Duration::from_secs(20));
        assert_eq!(r.missed(), 1);
    }
}
