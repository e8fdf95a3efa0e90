//! Event ids seen within the retry horizon, in time buckets so that
//! forgetting is dropping whole buckets: memory is bounded by the events
//! received in one horizon plus one bucket, and by a count and a size of
//! ids, whichever comes first (past them the oldest bucket goes early).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Buckets per horizon: forgetting is up to 1/12 of the horizon late.
const BUCKETS: u32 = 12;
/// What one remembered id costs besides its bytes: the boxed pointer and
/// length in the table, its control byte and spare capacity, the
/// allocator's rounding.
pub const ENTRY_OVERHEAD: usize = 48;

#[derive(Debug)]
pub struct Dedup {
    horizon: Duration,
    width: Duration,
    /// Hard cap on remembered ids; past it the oldest bucket goes early.
    max_ids: usize,
    /// Hard cap on the memory of remembered ids (their bytes plus
    /// [`ENTRY_OVERHEAD`] each).
    max_bytes: usize,
    len: usize,
    bytes: usize,
    buckets: VecDeque<(Instant, HashSet<Box<str>>)>,
}

impl Dedup {
    pub fn new(horizon: Duration, max_ids: usize, max_bytes: usize) -> Self {
        Dedup {
            horizon,
            width: horizon / BUCKETS,
            max_ids,
            max_bytes,
            len: 0,
            bytes: 0,
            buckets: VecDeque::new(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.buckets.iter().any(|(_, ids)| ids.contains(id))
    }

    /// Remember `id` as received at `now`. Forgets ids received more than
    /// the horizon (plus up to one bucket) ago.
    pub fn insert(&mut self, id: &str, now: Instant) {
        self.prune(now, cost(id));
        let fresh = self
            .buckets
            .back()
            .is_some_and(|(start, _)| now.saturating_duration_since(*start) < self.width);
        if !fresh {
            self.buckets.push_back((now, HashSet::new()));
        }
        if let Some((_, ids)) = self.buckets.back_mut() {
            if ids.insert(id.into()) {
                self.len += 1;
                self.bytes += cost(id);
            }
        }
    }

    /// Undo an insert (the event could not be queued and will come again).
    pub fn remove(&mut self, id: &str) {
        for (_, ids) in self.buckets.iter_mut().rev() {
            if ids.remove(id) {
                self.len -= 1;
                self.bytes -= cost(id);
                return;
            }
        }
    }

    /// Forget what expired, and the oldest buckets while one more id of
    /// `incoming` bytes would pass a cap.
    fn prune(&mut self, now: Instant, incoming: usize) {
        while let Some((start, ids)) = self.buckets.front() {
            // Every id in a bucket arrived before start + width.
            let expired = now.saturating_duration_since(*start) >= self.horizon + self.width;
            let full = self.len >= self.max_ids || self.bytes + incoming > self.max_bytes;
            if !(expired || full) {
                break;
            }
            self.len -= ids.len();
            self.bytes -= ids.iter().map(|id| cost(id)).sum::<usize>();
            self.buckets.pop_front();
        }
    }

    /// The memory the remembered ids are accounted for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn cost(id: &str) -> usize {
    id.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_the_horizon_then_forgets_in_buckets() {
        let h = Duration::from_secs(1200);
        let mut d = Dedup::new(h, 1_000_000, usize::MAX);
        let t0 = Instant::now();
        d.insert("a", t0);
        d.insert("b", t0 + Duration::from_secs(50));
        assert!(d.contains("a") && d.contains("b"));
        // Still there just before the horizon.
        d.insert("c", t0 + h - Duration::from_secs(1));
        assert!(d.contains("a"));
        // Gone after horizon plus one bucket; the later ones stay.
        d.insert("d", t0 + h + Duration::from_secs(100));
        assert!(!d.contains("a") && !d.contains("b"));
        assert!(d.contains("c") && d.contains("d"));
        assert_eq!(d.len(), 2);
        d.remove("d");
        assert!(!d.contains("d"));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn the_cap_bounds_memory() {
        let mut d = Dedup::new(Duration::from_secs(1200), 100, usize::MAX);
        let t0 = Instant::now();
        for i in 0..1000u64 {
            d.insert(&i.to_string(), t0 + Duration::from_secs(i * 2));
        }
        assert!(d.len() <= 100 + 50, "{}", d.len());
    }

    #[test]
    fn the_size_cap_bounds_memory_whatever_the_id_lengths() {
        let cap = 64 * 1024;
        let mut d = Dedup::new(Duration::from_secs(10_800), 2_000_000, cap);
        let t0 = Instant::now();
        for i in 0..2000u64 {
            let id = format!("{i:0>200}");
            d.insert(&id, t0 + Duration::from_secs(i));
            assert!(d.bytes() <= cap, "{} > {cap}", d.bytes());
        }
        // The newest ids are still remembered.
        assert!(d.contains(&format!("{:0>200}", 1999)));
        assert!(d.len() > 100, "{}", d.len());
        let before = d.bytes();
        d.remove(&format!("{:0>200}", 1999));
        assert_eq!(d.bytes(), before - 200 - ENTRY_OVERHEAD);
    }
}
