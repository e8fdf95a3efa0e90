//! What the process uses of the machine, read as client_golang's process
//! collector reads it on Linux: `/proc/self/stat` (CPU time, resident and
//! virtual memory, start), `/proc/self/fd` (open descriptors), the soft
//! `RLIMIT_NOFILE`; and the memory limit of the process's cgroup, which no
//! client library exports but which an alert on resident memory needs.
//!
//! Every file is kernel-served and small; each is read with a size cap, and
//! the whole read runs under one deadline (`files::with_deadline`): a read
//! stuck in the kernel must not hold the hub's render, which runs under its
//! lock. The start time and where the cgroup's files are do not change and
//! are worked out once. On another system, or where `/proc` is hidden, each
//! value is `None` and its family absent, never a made-up 0.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The process's resources at one moment; each `None` when it could not be
/// read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessResources {
    /// User and system CPU time (seconds).
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    /// The soft limit of open files (what `open` runs into).
    pub max_fds: Option<f64>,
    /// Unix seconds.
    pub start_time: Option<f64>,
    /// The lowest memory limit of the process's cgroup and its parents;
    /// `None` when unlimited or unreadable.
    pub memory_limit_bytes: Option<f64>,
}

/// The whole read gives up after this: it takes well under a millisecond.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The cap of each small file read (`stat` is a few hundred bytes, a
/// `cgroup` listing of twelve controllers with long Kubernetes paths a few
/// KiB, `memory.max` one number).
const SMALL_FILE_MAX: u64 = 16 * 1024;
/// The cap of `/proc/stat`, read once for `btime`: it follows a line per CPU
/// and the interrupt counts, tens of KiB on a large machine.
const PROC_STAT_MAX: u64 = 1024 * 1024;
/// At or past this a cgroup v1 limit means none (`PAGE_COUNTER_MAX` in
/// pages: 9223372036854771712 on 4 KiB pages).
const UNLIMITED: u64 = 1 << 62;

impl ProcessResources {
    /// Reads them now, within [`READ_TIMEOUT`]; all `None` past it.
    pub fn read() -> ProcessResources {
        crate::files::with_deadline(READ_TIMEOUT, || Ok(read_now())).unwrap_or_default()
    }
}

#[cfg(target_os = "linux")]
fn read_now() -> ProcessResources {
    let stat = read_small(Path::new("/proc/self/stat")).and_then(|s| Stat::parse(&s));
    let tick = sysconf(libc::_SC_CLK_TCK);
    let page = sysconf(libc::_SC_PAGESIZE);
    ProcessResources {
        cpu_seconds: stat
            .as_ref()
            .zip(tick)
            .map(|(s, t)| (s.utime + s.stime) as f64 / t),
        resident_bytes: stat.as_ref().zip(page).map(|(s, p)| s.rss_pages as f64 * p),
        virtual_bytes: stat.as_ref().map(|s| s.vsize as f64),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
        max_fds: max_fds(),
        start_time: start_time(),
        memory_limit_bytes: memory_limit(cgroup_files()),
    }
}

#[cfg(not(target_os = "linux"))]
fn read_now() -> ProcessResources {
    ProcessResources {
        max_fds: max_fds(),
        ..Default::default()
    }
}

/// When the process started (Unix seconds), from `/proc`: its start in
/// clock ticks after boot, and the boot time. Read once.
pub fn start_time() -> Option<f64> {
    static START: Settled<f64> = Settled::new();
    START
        .get_or_try(|| {
            if !cfg!(target_os = "linux") {
                return None;
            }
            let stat = Stat::parse(&read_small(Path::new("/proc/self/stat"))?)?;
            let tick = sysconf(libc::_SC_CLK_TCK)?;
            let file = std::fs::File::open("/proc/stat").ok()?;
            let btime = boot_time(std::io::BufReader::new(file.take(PROC_STAT_MAX)))?;
            Some(btime + stat.starttime as f64 / tick)
        })
        .copied()
}

/// A fact of the process worked out once it could be. A failed try (a
/// read at the open-files limit, `EMFILE`) is not kept: the next call
/// tries again, else the family would be absent for the process's life
/// (and the memory alert silent) after one bad moment.
struct Settled<T>(OnceLock<T>);

impl<T> Settled<T> {
    const fn new() -> Self {
        Settled(OnceLock::new())
    }

    fn get_or_try(&self, f: impl FnOnce() -> Option<T>) -> Option<&T> {
        if let Some(v) = self.0.get() {
            return Some(v);
        }
        let v = f()?;
        Some(self.0.get_or_init(|| v))
    }
}

/// `btime` of `/proc/stat`: the boot time, Unix seconds.
fn boot_time(r: impl BufRead) -> Option<f64> {
    r.lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        .map(|b| b as f64)
}

/// The fields of `/proc/self/stat` the families read.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    /// `pid (comm) state ppid ...`: the command may hold spaces and `)`,
    /// so the fields are counted from the last `)`.
    fn parse(s: &str) -> Option<Stat> {
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Field n of proc(5) (1-based) is f[n - 3].
        let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: n(14)?,
            stime: n(15)?,
            starttime: n(22)?,
            vsize: n(23)?,
            // Negative only in theory (a signed field); such a line is refused.
            rss_pages: n(24)?,
        })
    }
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

fn max_fds() -> Option<f64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which outlives the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur as f64)
}

/// A file of at most [`SMALL_FILE_MAX`] bytes, as text; `None` when it
/// cannot be read or is longer.
fn read_small(path: &Path) -> Option<String> {
    let mut out = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(SMALL_FILE_MAX + 1)
        .read_to_string(&mut out)
        .ok()?;
    (out.len() as u64 <= SMALL_FILE_MAX).then_some(out)
}

/// The limit files of the process's cgroup and of each parent up to the
/// mount, worked out once (a process does not move between cgroups).
#[cfg(target_os = "linux")]
fn cgroup_files() -> &'static [PathBuf] {
    static FILES: Settled<Vec<PathBuf>> = Settled::new();
    FILES
        .get_or_try(|| {
            read_small(Path::new("/proc/self/cgroup"))
                .map(|c| limit_files(&c, Path::new("/sys/fs/cgroup")))
        })
        .map_or(&[], Vec::as_slice)
}

/// From `/proc/self/cgroup` and the mount point of the cgroup file
/// systems: the files that hold the memory limit of the process's cgroup
/// and of its parents. cgroup v2 (`0::/path`) keeps it in `memory.max` under
/// the mount; v1 in `memory.limit_in_bytes` under the `memory` controller's.
/// In a container the mount is often the container's own cgroup while the
/// listing names its full path: a path that does not exist under the mount
/// is that case, and the mount's own file is the container's.
fn limit_files(cgroup: &str, mount: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            (mount.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (mount.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let rel = path.trim().trim_start_matches('/');
        let mut dir = base.join(rel);
        // Under a cgroup namespace a cgroup outside it reads `/../..`:
        // never climb out of the mount.
        if rel.split('/').any(|c| c == "..") || !dir.is_dir() {
            dir = base.clone();
        }
        loop {
            out.push(dir.join(file));
            if dir == base || !dir.pop() {
                break;
            }
        }
    }
    out
}

/// The lowest limit the files hold; `None` when none holds one ("max", or a
/// v1 number that means none).
fn memory_limit(files: &[PathBuf]) -> Option<f64> {
    files
        .iter()
        .filter_map(|f| read_small(f)?.trim().parse::<u64>().ok())
        .filter(|&v| v > 0 && v < UNLIMITED)
        .min()
        .map(|v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command with a space and a ")" of its own, as proc(5) allows.
        let line = "4242 (clawmesh ex) r) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 4096 17 1 0 0 0 0 0";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 250,
                stime: 75,
                starttime: 123456,
                vsize: 987654321,
                rss_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("4242 (cut short) S 1 2"), None);
        assert_eq!(Stat::parse("no parenthesis at all"), None);
    }

    /// The start time and the cgroup's files are worked out once; a first
    /// try that failed (at the open-files limit) is tried again, not kept.
    #[test]
    fn a_failed_first_try_of_a_settled_fact_is_tried_again() {
        let s: Settled<u32> = Settled::new();
        assert_eq!(s.get_or_try(|| None), None);
        assert_eq!(s.get_or_try(|| Some(7)), Some(&7));
        assert_eq!(
            s.get_or_try(|| Some(8)),
            Some(&7),
            "settled, not read again"
        );
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        let text =
            "cpu  1 2 3 4\ncpu0 1 2 3 4\nintr 5 0 0\nctxt 99\nbtime 1764950400\nprocesses 7\n";
        assert_eq!(boot_time(text.as_bytes()), Some(1_764_950_400.0));
        assert_eq!(boot_time("cpu 1 2\n".as_bytes()), None);
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cmx-cgroup-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn write(path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cgroup_v2_takes_the_lowest_limit_of_the_cgroup_and_its_parents() {
        let root = dir();
        write(root.join("system.slice/x.service/memory.max"), "max\n");
        write(root.join("system.slice/memory.max"), "536870912\n");
        let files = limit_files("0::/system.slice/x.service\n", &root);
        assert_eq!(
            files,
            vec![
                root.join("system.slice/x.service/memory.max"),
                root.join("system.slice/memory.max"),
                root.join("memory.max"),
            ]
        );
        assert_eq!(memory_limit(&files), Some(536_870_912.0));
        // A cgroup outside the namespace is never looked for above the mount.
        assert_eq!(
            limit_files("0::/../../elsewhere\n", &root),
            vec![root.join("memory.max")]
        );
        // Unlimited all the way up: no limit, not 0 and not "max".
        write(root.join("system.slice/memory.max"), "max\n");
        assert_eq!(memory_limit(&files), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cgroup_v1_in_a_container_reads_the_mounts_own_file() {
        let root = dir();
        // The listing names the host's path; the container sees its own
        // cgroup as the mount.
        write(root.join("memory/memory.limit_in_bytes"), "268435456\n");
        let listing =
            "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n";
        let files = limit_files(listing, &root);
        assert_eq!(
            files,
            vec![
                root.join("memory/memory.limit_in_bytes"),
                root.join("memory.max")
            ]
        );
        assert_eq!(memory_limit(&files), Some(268_435_456.0));
        // v1's "no limit" is a huge number.
        write(
            root.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        assert_eq!(memory_limit(&files), None);
        // Garbage, or a file too long to be a limit, is no limit either.
        write(root.join("memory/memory.limit_in_bytes"), "lots\n");
        assert_eq!(memory_limit(&files), None);
        write(
            root.join("memory/memory.limit_in_bytes"),
            &"1".repeat(SMALL_FILE_MAX as usize + 1),
        );
        assert_eq!(memory_limit(&files), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// What a hostile or broken `/proc/self/cgroup` and limit file can
    /// hold: never a panic, never more files than the mount's depth, and a
    /// number no limit can be is no limit.
    #[test]
    fn odd_cgroup_listings_and_limits_are_bounded_and_never_panic() {
        let root = dir();
        std::fs::create_dir_all(&root).unwrap();
        let long = format!("0::/{}\n", "x/".repeat(100_000));
        for listing in [
            "",
            "\n\n",
            "garbage",
            "0:",
            "0::",
            "0::/",
            "::::::",
            "0::/./.",
            "0::/a/../../..",
            "0::/..",
            "7:memory,memory:/../x",
            "\u{0}::\u{0}",
            long.as_str(),
        ] {
            let files = limit_files(listing, &root);
            assert!(files.len() <= 2, "{listing:.60?}: {files:?}");
            assert!(
                files.iter().all(|f| f.starts_with(&root)),
                "{listing:.60?} climbed out: {files:?}"
            );
        }
        let file = root.join("memory.max");
        for text in [
            "-1",
            "0",
            "18446744073709551616",
            "99999999999999999999999999",
            "max max",
            "1e9",
            " \n",
            "\u{0}",
        ] {
            write(file.clone(), text);
            assert_eq!(memory_limit(std::slice::from_ref(&file)), None, "{text:?}");
        }
        // A missing file is no limit; the readable one still counts.
        write(file.clone(), "1073741824\n");
        let files = [root.join("gone/memory.max"), file];
        assert_eq!(memory_limit(&files), Some(1_073_741_824.0));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The live numbers of this test process are all there and sane.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_with_sane_values() {
        // Something to count: the test process has run some code already.
        let r = ProcessResources::read();
        let cpu = r.cpu_seconds.expect("cpu");
        assert!(cpu >= 0.0, "{r:?}");
        assert!(r.resident_bytes.expect("rss") > 1024.0 * 1024.0, "{r:?}");
        assert!(
            r.virtual_bytes.expect("vsz") >= r.resident_bytes.unwrap(),
            "{r:?}"
        );
        let (open, max) = (r.open_fds.expect("open fds"), r.max_fds.expect("max fds"));
        assert!(open >= 3.0 && open <= max, "{r:?}");
        // The start, from another source: now minus the time since boot
        // (/proc/uptime) plus the start's ticks after boot. btime is whole
        // seconds, so within 2 s.
        let start = r.start_time.expect("start");
        let now = crate::api::types::Timestamp::host_now().as_secs_f64();
        let uptime: f64 = read_small(Path::new("/proc/uptime"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ticks = Stat::parse(&read_small(Path::new("/proc/self/stat")).unwrap())
            .unwrap()
            .starttime;
        let want = now - uptime + ticks as f64 / sysconf(libc::_SC_CLK_TCK).unwrap();
        assert!(
            (start - want).abs() < 2.0 && start <= now,
            "start {start}, from uptime {want}, now {now}"
        );
        if let Some(limit) = r.memory_limit_bytes {
            assert!(limit >= r.resident_bytes.unwrap(), "{r:?}");
        }
        // CPU time never goes down.
        assert!(ProcessResources::read().cpu_seconds.unwrap() >= cpu);
    }
}
