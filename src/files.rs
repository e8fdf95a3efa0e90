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
/// The YAML parser holds every event of a document before it is read:
/// about 50 times the text's size for a hostile one (a price table of
/// `- {}` lines: 5 MB took 253 MB). 256 KiB peaks near 13 MB, within the
/// shipped 64 MiB limit beside the exporter's own; real config files and
/// price tables are a few KiB.
pub const DEFAULT_MAX_YAML_BYTES: u64 = 256 * 1024;

/// Reads whose thread has not returned yet (a hung read outlives its
/// deadline). Past this many, new reads are refused at once instead of
/// piling up threads behind a dead mount.
const MAX_IN_FLIGHT: usize = 8;
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Everything wrong with a file an operator wrote (the config file, the web
/// config), one problem per line, each with its path in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Problems(pub Vec<String>);

/// The bounds of every operator file (`--files.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
    pub max_yaml_depth: usize,
    /// YAML longer than this is refused before the parser sees it.
    pub max_yaml_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            timeout: DEFAULT_TIMEOUT,
            max_yaml_depth: DEFAULT_MAX_YAML_DEPTH,
            max_yaml_bytes: DEFAULT_MAX_YAML_BYTES,
        }
    }
}

/// The `--files.*` flags: the bounds of every file an operator names.
#[derive(Debug, Clone, clap::Args)]
pub struct FilesArgs {
    /// Largest file read: the config file, key and secret files, the web config and its certificates, OTLP headers and CA (e.g. 1MiB).
    #[arg(long = "files.max-size", env = "CLAWMESH_FILES_MAX_SIZE", default_value = "1MiB", value_parser = crate::units::parse_size)]
    pub files_max_size: u64,
    /// How long reading one of those files may take (a hung network file system cannot hang start or reload).
    #[arg(long = "files.read-timeout", env = "CLAWMESH_FILES_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub files_read_timeout: Duration,
    /// Deepest nesting accepted in the YAML files (config file, web config).
    #[arg(long = "files.max-yaml-depth", env = "CLAWMESH_FILES_MAX_YAML_DEPTH", default_value_t = DEFAULT_MAX_YAML_DEPTH)]
    pub files_max_yaml_depth: usize,
    /// Largest YAML file read (config file, web config, a price table in YAML): the YAML parser holds about 50 times the text while it reads, so this bounds its memory (LiteLLM's JSON table is bounded by --prices.max-size instead).
    #[arg(long = "files.max-yaml-size", env = "CLAWMESH_FILES_MAX_YAML_SIZE", default_value = "256KiB", value_parser = crate::units::parse_size)]
    pub files_max_yaml_size: u64,
}

impl FilesArgs {
    /// The bounds, checked; errors name the flags.
    pub fn limits(&self) -> Result<FileLimits, String> {
        if self.files_max_size == 0 {
            return Err("--files.max-size: must be at least 1 byte, e.g. 1MiB".into());
        }
        if self.files_read_timeout.is_zero() {
            return Err("--files.read-timeout: must be longer than zero, e.g. 5s".into());
        }
        if self.files_max_yaml_depth < 4 {
            return Err("--files.max-yaml-depth: must be at least 4 (the configuration file itself nests 4 deep)".into());
        }
        if self.files_max_yaml_size == 0 {
            return Err("--files.max-yaml-size: must be at least 1 byte, e.g. 256KiB".into());
        }
        Ok(FileLimits {
            max_bytes: self.files_max_size,
            timeout: self.files_read_timeout,
            max_yaml_depth: self.files_max_yaml_depth,
            max_yaml_bytes: self.files_max_yaml_size,
        })
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
    #[error("is YAML larger than {0} bytes (--files.max-yaml-size): the YAML parser holds about 50 times that while it reads")]
    YamlTooLarge(u64),
    #[error("is YAML whose aliases (*name) expand past {0} values, more than its text could hold written out: write the values out instead of repeating aliases")]
    YamlAliasBomb(usize),
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
    let limits = FileLimits {
        max_bytes: limits.max_bytes.min(limits.max_yaml_bytes),
        ..*limits
    };
    let text = read_to_string(path, &limits).map_err(|e| match e {
        FileError::TooLarge { max } if max == limits.max_yaml_bytes => FileError::YamlTooLarge(max),
        e => e,
    })?;
    check_yaml_depth(&text, limits.max_yaml_depth)?;
    check_yaml_aliases(&text)?;
    Ok(text)
}

/// Refuse YAML whose aliases expand to more values than its text could
/// hold written out (two per byte, and some), by walking the document as
/// the parser would expand it and stopping at that count.
///
/// The text's size bounds the parser's events, not what they expand to:
/// serde_norway bounds alias jumps at 100 times the events, but a jump
/// replays a whole anchored node, so 3 KB of `&a [0,0,...]` and
/// `[*b,*b,...]` became 10^7 values and 650 MB in a `Value`. Run after
/// `check_yaml_depth` (the walk recurses as deep as the document). A text
/// the parser refuses passes here: the caller's parse says why.
pub fn check_yaml_aliases(text: &str) -> Result<(), FileError> {
    use serde::de::{
        DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
    };
    use std::cell::Cell;
    let max = text.len().saturating_mul(2).saturating_add(64);
    struct Count<'a> {
        left: &'a Cell<usize>,
        over: &'a Cell<bool>,
    }
    impl<'de> DeserializeSeed<'de> for Count<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl Count<'_> {
        fn again(&self) -> Self {
            Count {
                left: self.left,
                over: self.over,
            }
        }
        /// One more value; `Err` past the budget.
        fn one<E: serde::de::Error>(&self) -> Result<(), E> {
            match self.left.get().checked_sub(1) {
                Some(n) => {
                    self.left.set(n);
                    Ok(())
                }
                None => {
                    self.over.set(true);
                    Err(E::custom("too many values"))
                }
            }
        }
    }
    impl<'de> Visitor<'de> for Count<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any YAML")
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
            self.one()
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
            self.one()
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
            self.one()
        }
        fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<(), E> {
            self.one()
        }
        fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<(), E> {
            self.one()
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
            self.one()
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
            self.one()
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            self.one()
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
            self.one()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            self.one()?;
            while s.next_element_seed(self.again())?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            self.one()?;
            while m.next_key_seed(self.again())?.is_some() {
                m.next_value_seed(self.again())?;
            }
            Ok(())
        }
        // A tagged value (`!t [...]`): its content counts like any other.
        fn visit_enum<A: EnumAccess<'de>>(self, e: A) -> Result<(), A::Error> {
            self.one()?;
            let (_, v) = e.variant::<serde::de::IgnoredAny>()?;
            v.newtype_variant_seed(self.again())
        }
    }
    let (left, over) = (Cell::new(max), Cell::new(false));
    for doc in serde_norway::Deserializer::from_str(text) {
        let counted = Count {
            left: &left,
            over: &over,
        }
        .deserialize(doc);
        if over.get() {
            return Err(FileError::YamlAliasBomb(max));
        }
        if counted.is_err() {
            break;
        }
    }
    Ok(())
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
/// An upper bound of the parser's depth: block nesting is counted from
/// indentation (a stack of columns, each `- ` or `? ` of a compact
/// sequence one level more), flow nesting from `[` and `{`. Quotes,
/// comments and block scalars are recognised where YAML recognises them
/// (a quote or a flow collection only where a node begins), so that none
/// can hide brackets the parser would nest; where unsure, it counts more.
pub fn check_yaml_depth(text: &str, max: usize) -> Result<(), FileError> {
    let mut s = DepthScan {
        max,
        indents: Vec::new(),
        flow: 0,
        quote: None,
        block_scalar_over: None,
    };
    for line in text.lines() {
        s.line(line.as_bytes())?;
    }
    Ok(())
}

struct DepthScan {
    max: usize,
    /// Columns of the open block collections.
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// The open quote, in flow context (a block-context quote ends with
    /// its line: see `line`).
    quote: Option<u8>,
    /// In a block scalar (`|`, `>`): its lines are those indented more than this.
    block_scalar_over: Option<usize>,
}

impl DepthScan {
    fn too_deep(&self) -> Result<(), FileError> {
        if self.indents.len() + self.flow > self.max {
            Err(FileError::TooDeep(self.max))
        } else {
            Ok(())
        }
    }

    fn line(&mut self, b: &[u8]) -> Result<(), FileError> {
        let col = b.iter().take_while(|c| **c == b' ').count();
        let blank = col == b.len();
        if let Some(over) = self.block_scalar_over {
            if blank || col > over {
                return Ok(());
            }
            self.block_scalar_over = None;
        }
        let mut i = 0;
        let mut at_node = true;
        if self.flow == 0 && self.quote.is_none() {
            if blank || b[col] == b'#' {
                return Ok(());
            }
            while self.indents.last().is_some_and(|top| *top > col) {
                self.indents.pop();
            }
            if self.indents.last() != Some(&col) {
                self.indents.push(col);
            }
            i = col;
            if b[i..].starts_with(b"---") && b.get(i + 3).is_none_or(|c| *c == b' ') {
                i += 3;
            }
            // `- - - x`: each marker opens one more level.
            while i < b.len()
                && matches!(b[i], b'-' | b'?' | b':')
                && b.get(i + 1).is_none_or(|c| *c == b' ')
            {
                i += 1;
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                self.indents.push(i);
            }
            self.too_deep()?;
        }
        let mut prev = b' ';
        while i < b.len() {
            let c = b[i];
            if let Some(q) = self.quote {
                if c == b'\\' && q == b'"' {
                    i += 1;
                } else if c == q {
                    // '' inside '...' is an escaped quote.
                    if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        self.quote = None;
                        at_node = false;
                    }
                }
                prev = c;
                i += 1;
                continue;
            }
            let flow = self.flow > 0;
            match c {
                b' ' | b'\t' => {
                    // `key: value`: a node begins after the colon.
                    if prev == b':' && !flow {
                        at_node = true;
                    }
                }
                b'#' if prev == b' ' || prev == b'\t' => break,
                b'"' | b'\'' if at_node => self.quote = Some(c),
                // Properties of the node that follows.
                b'&' | b'!' if at_node => {
                    while i + 1 < b.len()
                        && !matches!(b[i + 1], b' ' | b',' | b'[' | b']' | b'{' | b'}')
                    {
                        i += 1;
                    }
                }
                b'|' | b'>' if at_node && !flow => {
                    self.block_scalar_over = Some(self.indents.last().copied().unwrap_or(0));
                    break;
                }
                // In flow context these are always indicators; in block
                // context only where a node begins.
                b'[' | b'{' if flow || at_node => {
                    self.flow += 1;
                    self.too_deep()?;
                    at_node = true;
                }
                b']' | b'}' if flow => {
                    self.flow -= 1;
                    at_node = false;
                }
                b',' | b':' | b'?' if flow => at_node = true,
                _ => at_node = false,
            }
            prev = c;
            i += 1;
        }
        if self.flow == 0 {
            // A quote in block context that runs past its line is taken
            // as ended: a multi-line quoted scalar is then counted as
            // code (more, never less), and a quote the parser does not
            // see (in a multi-line plain scalar) cannot hide lines.
            self.quote = None;
        }
        Ok(())
    }
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
        // Nothing hides nesting the parser would build: quotes and comments
        // where the parser sees none, block scalars that ended.
        let hidden = "[".repeat(200);
        for trick in [
            format!("k: a \"b\nn: {hidden}"),
            format!("k: -\"x\nn: {hidden}"),
            format!("k: a:\"x\nn: {hidden}"),
            format!("k: a\n  \"b\nn: {hidden}"),
            format!("k: [\"a #\", {hidden}"),
            format!("k: [a \"b, {hidden}"),
            format!("k: &a {hidden}"),
            format!("k: !!seq {hidden}"),
            format!("k: ['it''s', {hidden}"),
            format!("- k: |\n    text \"\n  n: {hidden}"),
            format!("--- {hidden}"),
            format!("k: [\"]]]]\", {hidden}"),
        ] {
            let e = check_yaml_depth(&trick, 64);
            assert!(e.is_err(), "not refused: {}", &trick[..trick.len().min(40)]);
        }
        // A block scalar's text is not YAML.
        check_yaml_depth("k: |\n  [[[[[[[[[[\n  \"x\nn: 1\n", 4).unwrap();
        check_yaml_depth(&"[".repeat(63), 64).unwrap();
        assert!(check_yaml_depth(&"[".repeat(65), 64).is_err());
    }

    /// Nesting of a parsed YAML value: collections count, scalars do not.
    fn depth(v: &serde_norway::Value) -> usize {
        use serde_norway::Value::*;
        match v {
            Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
            Mapping(m) => 1 + m.values().map(depth).max().unwrap_or(0),
            Tagged(t) => depth(&t.value),
            _ => 0,
        }
    }

    #[test]
    fn the_scan_never_counts_less_than_the_parser() {
        for text in [
            "a: [1, [2, [3]]]",
            "a:\n  b:\n    - c\n    - [d, {e: f}]",
            "- - - x",
            "? [a]\n: {b: [c]}",
            "k: \"[[[\"\nl: '{{'\n",
            "k: &x [1]\nl: *x\n",
            "k: >\n  folded [\n  text\nl: [[1]]\n",
        ] {
            let v: serde_norway::Value = serde_norway::from_str(text).unwrap();
            let d = depth(&v);
            assert!(
                check_yaml_depth(text, d - 1).is_err(),
                "{text}: {d} deep, not seen"
            );
            check_yaml_depth(text, d + 2).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn the_scan_never_counts_less_than_the_parser_on_the_repository_s_yaml() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut stack = vec![root.join("deploy"), root.join("alerts"), root.join("docs")];
        let mut checked = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let name = p.to_string_lossy();
                if !(name.ends_with(".yml") || name.ends_with(".yaml")) {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let Ok(v) = serde_norway::from_str::<serde_norway::Value>(&text) else {
                    continue; // templates, several documents
                };
                let actual = depth(&v);
                check_yaml_depth(&text, DEFAULT_MAX_YAML_DEPTH)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                if actual > 0 {
                    assert!(
                        check_yaml_depth(&text, actual - 1).is_err(),
                        "{name}: {actual} deep, not seen"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 5, "only {checked} files");
    }

    /// Any YAML the process reads (the config file, the web config) is
    /// walked before it is parsed: 3 KB of aliases that would expand to
    /// 10^7 values is refused at once; aliases that stay small are read.
    #[test]
    fn a_yaml_alias_bomb_is_refused_before_the_parser_expands_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clawmesh.yml");
        let bomb = format!(
            "x: &a [{}]\ny: &b [{}]\nworkspaces: [{}]\n",
            vec!["0"; 1000].join(","),
            vec!["*a"; 100].join(","),
            vec!["*b"; 100].join(",")
        );
        std::fs::write(&file, &bomb).unwrap();
        let t = std::time::Instant::now();
        let e = read_yaml(&file, &FileLimits::default()).unwrap_err();
        assert!(matches!(e, FileError::YamlAliasBomb(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Tagged content counts too.
        let tagged = bomb.replace("workspaces: [", "workspaces: !t [");
        assert!(check_yaml_aliases(&tagged).is_err());
        let fine = "defaults: &d {poll_interval: 5s}\nworkspaces:\n  - {name: a, <<: *d}\n  - {name: b, <<: *d}\n";
        std::fs::write(&file, fine).unwrap();
        read_yaml(&file, &FileLimits::default()).unwrap();
        // Without aliases, no text is refused: at most a value per byte.
        for text in [
            "{a,b,c,d}",
            "[[],[],[]]",
            "- \n- \n- \n",
            "a:\nb:\nc:\n",
            "? a\n? b\n",
        ] {
            check_yaml_aliases(text).unwrap();
        }
    }
}
