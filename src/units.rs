//! Sizes as flags and the configuration file write them, and the one shape
//! of a module's table of per-workspace durations.

use std::time::Duration;

/// A module's per-workspace durations, a row each: the config-file key, the
/// flag's value, and the setting both fill. The flags, the config file and
/// a reload's comparison go through the same rows, so a new duration is a
/// flag, a field and a row.
pub type DurationRows<A, C> = [(
    &'static str,
    fn(&A) -> Duration,
    fn(&mut C) -> &mut Duration,
)];

/// Every duration of `rows` from the flags into `cfg`.
pub fn fill_durations<A, C>(rows: &DurationRows<A, C>, flags: &A, cfg: &mut C) {
    for (_, flag, field) in rows {
        *field(cfg) = flag(flags);
    }
}

/// A size in bytes: a whole number with an optional unit, `B`, `KiB`,
/// `MiB`, `GiB` (or `KB`, `MB`, `GB`, powers of ten; any case): `8MiB`,
/// `512KiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 8MiB, 512KiB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_size("2kb"), Ok(2_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("8 parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
