//! Reading the files an operator names (the config file, key and secret
//! files, the web config and the certificates it names, OTLP headers and CA):
//! one way, so that none of them can hang or exhaust the process.
//!
//! A file must be a regular file (a FIFO's open blocks, `/dev/zero` never
//! ends), at most `max_bytes` long, and read within `timeout` (a hung network
//! file system blocks in the kernel: the read runs in its own thread, which is
//! abandoned at the deadline). YAML is refused when nested deeper than
//! `max_yaml_depth`, checked in one linear pass before the parser sees it.
//!
//! Errors name neither the path nor the flag: callers put the path first.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_YAML_DEPTH: usize = 64;

/// Reads whose thread has not returned yet (a hung read outlives its
/// deadline). Past this many, new reads are refused at once instead of
/// piling up threads behind a dead mount.
const MAX_IN_FLIGHT: usize = 8;
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The bounds of every operator file (`--files.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
    pub max_yaml_depth: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            timeout: DEFAULT_TIMEOUT,
            max_yaml_depth: DEFAULT_MAX_YAML_DEPTH,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("is {0}, not a regular file: name a regular file")]
    NotRegular(&'static str),
    #[error("is larger than {max} bytes (--files.max-size)")]
    TooLarge { max: u64 },
    #[error("not read within {} (--files.read-timeout): is it on a hung network file system?", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("not read: {MAX_IN_FLIGHT} earlier reads still hang (a hung network file system?)")]
    Stuck,
    #[error("is not UTF-8 text")]
    NotUtf8,
    #[error("is nested deeper than {0} levels (--files.max-yaml-depth)")]
    TooDeep(usize),
}

/// A size in bytes: a whole number with an optional unit, `B`, `KiB`,
/// `MiB`, `GiB` (or `KB`, `MB`, `GB`, powers of ten): `1MiB`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (examples: 65536, 512KiB, 1MiB)"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| format!("bad size {s:?} (examples: 65536, 512KiB, 1MiB)"))
}

/// The whole file, if it is a regular file within the limits.
pub fn read(path: &Path, limits: &FileLimits) -> Result<Vec<u8>, FileError> {
    let path = path.to_path_buf();
    let max = limits.max_bytes;
    with_deadline(limits.timeout, move || read_now(&path, max))
}

/// The whole file as text.
pub fn read_to_string(path: &Path, limits: &FileLimits) -> Result<String, FileError> {
    String::from_utf8(read(path, limits)?).map_err(|_| FileError::NotUtf8)
}

/// A YAML file as text, refused when nested deeper than the limit.
pub fn read_yaml(path: &Path, limits: &FileLimits) -> Result<String, FileError> {
    let text = read_to_string(path, limits)?;
    check_yaml_depth(&text, limits.max_yaml_depth)?;
    Ok(text)
}

/// Run `f` in its own thread; give up on it at `timeout` (the thread is
/// left to finish, or to hang, on its own).
pub fn with_deadline<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    if IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return Err(FileError::Stuck);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("file-read".into())
        .spawn(move || {
            let r = f();
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return Err(FileError::Io(e));
    }
    rx.recv_timeout(timeout)
        .unwrap_or(Err(FileError::Timeout(timeout)))
}

fn read_now(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    // The type first, from the path: opening a FIFO would block.
    let meta = std::fs::metadata(path)?;
    regular(&meta)?;
    if meta.len() > max {
        return Err(FileError::TooLarge { max });
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Should the path turn into a FIFO between the check and the open.
        open.custom_flags(libc::O_NONBLOCK);
    }
    let file = open.open(path)?;
    // What was opened, which may not be what was checked.
    regular(&file.metadata()?)?;
    let mut buf = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        // It grew while being read.
        return Err(FileError::TooLarge { max });
    }
    Ok(buf)
}

fn regular(meta: &std::fs::Metadata) -> Result<(), FileError> {
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let what = if t.is_dir() {
        "a directory"
    } else {
        unix_kind(&t)
    };
    Err(FileError::NotRegular(what))
}

#[cfg(unix)]
fn unix_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

#[cfg(not(unix))]
fn unix_kind(_: &std::fs::FileType) -> &'static str {
    "something else"
}

/// Refuse YAML nested deeper than `max`, in one pass over the text and
/// before any parser sees it (a parser's own limits come after its work:
/// a 100,000-deep file took serde_norway 33 s).
///
/// An upper bound of the depth, never lower than the parser's: block
/// nesting is counted from indentation (a stack of columns, with each
/// `- ` of a compact sequence one level more), flow nesting from `[` and
/// `{` where a value may begin, outside quotes and comments.
pub fn check_yaml_depth(text: &str, max: usize) -> Result<(), FileError> {
    let too_deep = Err(FileError::TooDeep(max));
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    for line in text.lines() {
        let bytes = line.as_bytes();
        let mut i = 0;
        if flow == 0 && quote.is_none() {
            let col = bytes.iter().take_while(|b| **b == b' ').count();
            let rest = &bytes[col..];
            if rest.is_empty() || rest[0] == b'#' {
                continue;
            }
            while indents.last().is_some_and(|top| *top > col) {
                indents.pop();
            }
            if indents.last() != Some(&col) {
                indents.push(col);
            }
            i = col;
            // `- - - x`: each marker opens one more level.
            while i + 1 < bytes.len() && matches!(bytes[i], b'-' | b'?') && bytes[i + 1] == b' ' {
                i += 2;
                while i < bytes.len() && bytes[i] == b' ' {
                    i += 1;
                }
                indents.push(i);
            }
            if indents.len() > max {
                return too_deep;
            }
        }
        let mut prev = b' ';
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(q) => {
                    if b == b'\\' && q == b'"' {
                        i += 1;
                    } else if b == q {
                        quote = None;
                    }
                }
                None => match b {
                    b'#' if prev == b' ' || prev == b'\t' => break,
                    b'"' | b'\'' if starts_value(prev) => quote = Some(b),
                    b'[' | b'{' if starts_value(prev) => {
                        flow += 1;
                        if indents.len() + flow > max {
                            return too_deep;
                        }
                    }
                    b']' | b'}' if flow > 0 => flow -= 1,
                    _ => {}
                },
            }
            prev = b;
            i += 1;
        }
    }
    Ok(())
}

/// Whether a value (a flow collection, a quoted string) may begin after `prev`.
fn starts_value(prev: u8) -> bool {
    matches!(prev, b' ' | b'\t' | b':' | b',' | b'[' | b'{' | b'-' | b'?')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cmx-files-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn a_regular_file_within_the_cap_is_read() {
        let p = dir().join("ok");
        std::fs::write(&p, "key\n").unwrap();
        assert_eq!(read_to_string(&p, &FileLimits::default()).unwrap(), "key\n");
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_by_type() {
        let d = dir();
        let fifo = d.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (p, what) in [
            (Path::new("/dev/zero"), "a character device"),
            (fifo.as_path(), "a FIFO"),
            (d.as_path(), "a directory"),
        ] {
            let t = Instant::now();
            let e = read(p, &FileLimits::default()).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("not a regular file"), "{e}");
            assert!(t.elapsed() < Duration::from_secs(2));
        }
    }

    #[test]
    fn a_file_over_the_cap_is_refused_without_reading_it() {
        let p = dir().join("big");
        std::fs::write(&p, vec![b'a'; 1001]).unwrap();
        let limits = FileLimits {
            max_bytes: 1000,
            ..FileLimits::default()
        };
        let e = read(&p, &limits).unwrap_err().to_string();
        assert!(e.contains("larger than 1000 bytes"), "{e}");
        std::fs::write(&p, vec![b'a'; 1000]).unwrap();
        assert_eq!(read(&p, &limits).unwrap().len(), 1000);
    }

    #[test]
    fn a_read_that_hangs_is_abandoned_at_the_deadline() {
        // A hung NFS read cannot be made on loopback: a blocked closure
        // stands in for it.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let t = Instant::now();
        let e = with_deadline(Duration::from_millis(200), move || {
            let _ = blocked.recv();
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, FileError::Timeout(_)), "{e}");
        assert!(e.to_string().contains("--files.read-timeout"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(release);
    }

    #[test]
    fn deep_yaml_is_refused_fast_and_normal_yaml_passes() {
        for deep in [
            "[".repeat(100_000),
            "{a: ".repeat(100_000),
            "- ".repeat(100_000) + "x",
            (0..100)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect(),
        ] {
            let t = Instant::now();
            let e = check_yaml_depth(&deep, 64).unwrap_err().to_string();
            assert!(e.contains("deeper than 64"), "{e}");
            assert!(t.elapsed() < Duration::from_secs(1));
        }
        let normal = r#"
defaults:
  api_url: "http://x/[v1"   # a comment with [ and {
workspaces:
  - name: a
    api_key_file: a.key
    labels: {team: "[x", env: prod}
    regex: foo[0-9]{2}
  - name: b
    list: [[1, 2], [3, {a: [4]}]]
"#;
        check_yaml_depth(normal, 8).unwrap();
        check_yaml_depth(&"[".repeat(63), 64).unwrap();
        assert!(check_yaml_depth(&"[".repeat(65), 64).is_err());
    }
}
