//! Splitting workspaces across replicas: `--shard N --total-shards M`.
//!
//! A workspace belongs to the shard that jump consistent hashing (Lamping and
//! Veach, 2014) gives its id. Both the hash and the jump are fixed
//! arithmetic, so every replica and every version agrees, and when M grows
//! to M+1 only about 1/(M+1) of the workspaces move, all to the new shard.

/// Which part of the workspaces this process watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, total: 1 }
    }
}

impl Shard {
    /// `index` may be a number or a StatefulSet pod name such as
    /// `clawmesh-exporter-2` (the trailing number is taken), so it can come
    /// straight from the downward API.
    pub fn new(index: &str, total: u32) -> Result<Shard, String> {
        let digits = index.rsplit('-').next().unwrap_or(index);
        let index: u32 = digits.parse().map_err(|_| {
            format!("--shard {index:?}: expected a number or a name ending in -NUMBER")
        })?;
        if total == 0 {
            return Err("--total-shards: must be at least 1".into());
        }
        if index >= total {
            return Err(format!(
                "--shard {index}: must be below --total-shards {total} (shards count from 0)"
            ));
        }
        Ok(Shard { index, total })
    }

    pub fn owns(&self, workspace_id: &str) -> bool {
        jump(fnv1a(workspace_id.as_bytes()), self.total) == self.index
    }
}

/// FNV-1a, 64 bit: stable across platforms and releases, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Jump consistent hash: the bucket in `0..buckets` for `key`.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [u32; 6] = [1, 0, 2, 2, 0, 0];

    fn owner(id: &str, total: u32) -> u32 {
        (0..total)
            .find(|i| Shard { index: *i, total }.owns(id))
            .unwrap()
    }

    #[test]
    fn every_workspace_has_exactly_one_owner() {
        for total in 1..6 {
            for i in 0..500 {
                let id = format!("ws_{i}");
                let owners = (0..total)
                    .filter(|s| Shard { index: *s, total }.owns(&id))
                    .count();
                assert_eq!(owners, 1, "{id} with {total} shards");
            }
        }
    }

    #[test]
    fn growing_from_3_to_4_moves_only_a_quarter_and_only_to_the_new_shard() {
        let ids: Vec<String> = (0..4000).map(|i| format!("ws_{i:04x}")).collect();
        let moved: Vec<&String> = ids
            .iter()
            .filter(|id| owner(id, 3) != owner(id, 4))
            .collect();
        assert!(
            moved.iter().all(|id| owner(id, 4) == 3),
            "a workspace moved between old shards"
        );
        let share = moved.len() as f64 / ids.len() as f64;
        assert!((0.2..0.3).contains(&share), "moved {share}");
        // Roughly even: each of 4 shards holds 20-30 %.
        for s in 0..4 {
            let n = ids.iter().filter(|id| owner(id, 4) == s).count() as f64 / ids.len() as f64;
            assert!((0.2..0.3).contains(&n), "shard {s} holds {n}");
        }
    }

    #[test]
    fn the_assignment_is_fixed_arithmetic() {
        // Pinned so that a change of hash, which would reshuffle every
        // deployment on upgrade, cannot slip in unnoticed.
        let got: Vec<u32> = ["ws_sim", "ws_7f3a", "ws_a", "ws_b", "ws_c", "ws_d"]
            .iter()
            .map(|id| owner(id, 3))
            .collect();
        assert_eq!(got, PINNED);
    }

    #[test]
    fn shard_from_a_pod_name() {
        assert_eq!(
            Shard::new("clawmesh-exporter-2", 3).unwrap(),
            Shard { index: 2, total: 3 }
        );
        assert_eq!(Shard::new("1", 3).unwrap(), Shard { index: 1, total: 3 });
        assert!(Shard::new("3", 3).is_err());
        assert!(Shard::new("pod", 3).is_err());
        assert!(Shard::new("0", 0).is_err());
    }
}
