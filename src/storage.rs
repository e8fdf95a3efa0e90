//! Checkpoints (`--storage.path`): one file per workspace holding what
//! exactly-once counting needs to survive a restart (`fleet::SavedFleet`)
//! and where the incremental listing resumes.
//!
//! A checkpoint is replaced whole, never edited: it is written to a
//! temporary file in the same directory, flushed to disk, renamed over
//! the old one (atomic on POSIX file systems) and the directory flushed,
//! so a crash at any byte leaves the previous checkpoint or the new one,
//! never a mix. The file names its format, version and length and carries
//! a CRC-32 of its body: a torn or flipped file is refused, not misread.
//!
//! ```text
//! "CLAWCKPT" | version u32 LE | body length u64 LE | CRC-32 of body u32 LE | body
//! body = gzip(JSON of Checkpoint)
//! ```

use crate::fleet::SavedFleet;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAGIC: &[u8; 8] = b"CLAWCKPT";
/// Bumped with every change of what a checkpoint holds; another version
/// is refused (`version`), never guessed at.
pub const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 4;

/// Why a checkpoint was not used; the label values of
/// `clawmesh_exporter_checkpoint_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// Not a checkpoint, torn, flipped bytes, or content no fleet has.
    Corrupt,
    /// Written by another version of the checkpoint format.
    Version,
    /// Written for another workspace (a file copied or renamed).
    Workspace,
    /// Written while this replica had another shard assignment: another
    /// replica may have counted the workspace since.
    Shard,
    /// Larger than `--storage.max-size`.
    TooLarge,
    /// Could not be read (permissions, I/O errors).
    Unreadable,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Corrupt,
        Refusal::Version,
        Refusal::Workspace,
        Refusal::Shard,
        Refusal::TooLarge,
        Refusal::Unreadable,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Corrupt => "corrupt",
            Refusal::Version => "version",
            Refusal::Workspace => "workspace",
            Refusal::Shard => "shard",
            Refusal::TooLarge => "too_large",
            Refusal::Unreadable => "unreadable",
        }
    }
}

/// One workspace's checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub workspace: String,
    /// (index, total) of the shard assignment it was written under.
    pub shard: (u32, u32),
    /// When it was written, Unix micros: the host's clock and the API's.
    pub saved_at: i64,
    pub api_saved_at: i64,
    /// Where the incremental listing resumes (API micros).
    pub watermark: i64,
    pub fleet: SavedFleet,
}

/// Where and how checkpoints are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub dir: PathBuf,
    /// At most one checkpoint per workspace this often (after a sync).
    pub interval: Duration,
    /// The largest checkpoint written or read (its uncompressed body).
    pub max_size: u64,
}

impl StorageConfig {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_SIZE: u64 = 512 * 1024 * 1024;

    /// The file of `workspace` under the shard assignment `shard`: its id
    /// made safe for a file name, a hash of the exact id (so that two ids
    /// never share a file), and the assignment (so that a start under
    /// another one can tell the files it must not use; see [`sweep`]).
    pub fn path_of(&self, workspace: &str, shard: (u32, u32)) -> PathBuf {
        let mut p = self.dir.join(stem(workspace));
        p.set_extension(format!("{}-of-{}.ckpt", shard.0, shard.1));
        p
    }
}

/// A workspace's part of its checkpoint's file name, whatever the shard
/// assignment.
fn stem(workspace: &str) -> String {
    let safe: String = workspace
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = crc32fast::hash(workspace.as_bytes());
    format!("{safe}-{hash:08x}")
}

impl StorageConfig {
    /// Check at start that checkpoints can be written here: the directory
    /// exists (made if not) and takes a file.
    pub fn check(&self) -> Result<(), String> {
        let d = &self.dir;
        std::fs::create_dir_all(d)
            .map_err(|e| format!("--storage.path {}: cannot create it: {e}", d.display()))?;
        tempfile::NamedTempFile::new_in(d).map(drop).map_err(|e| {
            format!(
                "--storage.path {}: cannot write there ({e}); give the exporter a writable directory",
                d.display()
            )
        })
    }
}

/// The storage as a workspace's slot uses it: where, under which shard
/// assignment, and what the start's [`sweep`] removed.
#[derive(Debug, Clone)]
pub struct Storage {
    pub cfg: StorageConfig,
    pub shard: (u32, u32),
    pub swept: std::sync::Arc<std::collections::BTreeSet<String>>,
}

impl Storage {
    /// At the process's start: sweep what other assignments wrote.
    pub fn open(cfg: StorageConfig, shard: (u32, u32)) -> Storage {
        let swept = std::sync::Arc::new(sweep(&cfg, shard));
        Storage { cfg, shard, swept }
    }
}

/// Why a write failed: the label values of
/// `clawmesh_exporter_checkpoint_write_failures_total`.
#[derive(Debug)]
pub enum WriteError {
    TooLarge(u64),
    Io(std::io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::TooLarge(n) => write!(
                f,
                "the checkpoint would be {n} bytes, more than --storage.max-size; raise it (the previous checkpoint stays)"
            ),
            WriteError::Io(e) => write!(
                f,
                "{e} (a full or read-only volume? the previous checkpoint stays)"
            ),
        }
    }
}

impl WriteError {
    pub fn reason(&self) -> &'static str {
        match self {
            WriteError::TooLarge(_) => "too_large",
            WriteError::Io(_) => "io",
        }
    }
}

/// The bytes of a checkpoint file.
pub fn encode(c: &Checkpoint, max_size: u64) -> Result<Vec<u8>, WriteError> {
    let json = serde_json::to_vec(c).map_err(|e| WriteError::Io(e.into()))?;
    if json.len() as u64 > max_size {
        return Err(WriteError::TooLarge(json.len() as u64));
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(json.len() / 8),
        flate2::Compression::fast(),
    );
    gz.write_all(&json).map_err(WriteError::Io)?;
    let body = gz.finish().map_err(WriteError::Io)?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A checkpoint from the bytes of its file; `max_size` bounds the body
/// once uncompressed (a small file must not inflate without end).
pub fn decode(bytes: &[u8], max_size: u64) -> Result<Checkpoint, (Refusal, String)> {
    let corrupt = |what: String| (Refusal::Corrupt, what);
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("not a checkpoint (no header)".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err((
            Refusal::Version,
            format!("written by checkpoint format {version}, this exporter reads {VERSION}"),
        ));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let body = &bytes[HEADER..];
    if body.len() as u64 != len {
        return Err(corrupt(format!(
            "{} bytes of a body of {len}: torn (an interrupted copy?)",
            body.len()
        )));
    }
    if crc32fast::hash(body) != u32_at(20) {
        return Err(corrupt("the checksum does not match: damaged".into()));
    }
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max_size.saturating_add(1))
        .read_to_end(&mut json)
        .map_err(|e| corrupt(format!("cannot be decompressed: {e}")))?;
    if json.len() as u64 > max_size {
        return Err((
            Refusal::TooLarge,
            "larger than --storage.max-size once decompressed".into(),
        ));
    }
    serde_json::from_slice(&json).map_err(|e| corrupt(format!("not a checkpoint's content: {e}")))
}

/// Replace the file at `path` with `bytes`, atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".checkpoint-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

/// At a start under the shard assignment `shard`: remove the checkpoints
/// written under any other (and the temporary files of writes a kill cut
/// short). The number of shards changed since they were
/// written, so another replica may have counted their workspaces since;
/// and were they kept, a later change back to their assignment would
/// resume counters that another replica's series went on meanwhile.
/// Returns the workspace parts of the names removed (a workspace whose
/// checkpoint went counts it refused, `shard`).
pub fn sweep(cfg: &StorageConfig, shard: (u32, u32)) -> std::collections::BTreeSet<String> {
    let mine = format!(".{}-of-{}.ckpt", shard.0, shard.1);
    let mut removed = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(&cfg.dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        // A write cut short by a kill leaves its temporary file.
        if name.starts_with(".checkpoint-") && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let Some(head) = name.strip_suffix(".ckpt") else {
            continue;
        };
        if name.ends_with(&mine) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        // `<stem>.<i>-of-<n>`; a name of no assignment is not ours to remove.
        let Some((stem, assignment)) = head.rsplit_once('.') else {
            continue;
        };
        if !assignment.contains("-of-") {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::warn!(file = %name, now = %format!("shard {} of {}", shard.0, shard.1), "removed a checkpoint written under another shard assignment: its workspace starts fresh (another replica may have counted it since)");
                removed.insert(stem.to_string());
            }
            Err(err) => {
                tracing::warn!(file = %name, error = %err, "cannot remove a checkpoint of another shard assignment")
            }
        }
    }
    removed
}

/// Keep a refused checkpoint at `path` as `<path>.refused` (replacing an
/// earlier one there) rather than let the next write replace it. `None`
/// when there was no regular file to keep or it could not be renamed.
pub fn set_aside(path: &Path) -> Option<PathBuf> {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let aside = aside_path(path);
    std::fs::rename(path, &aside).ok().map(|()| aside)
}

/// Where [`set_aside`] keeps the checkpoint at `path`: `<path>.refused`
/// (no longer `.ckpt`, so [`sweep`] leaves it).
pub fn aside_path(path: &Path) -> PathBuf {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".refused");
    PathBuf::from(aside)
}

/// Whether [`sweep`] removed `workspace`'s checkpoint.
pub fn swept(removed: &std::collections::BTreeSet<String>, workspace: &str) -> bool {
    removed.contains(&stem(workspace))
}

/// How long reading a checkpoint may take before it is given up
/// (`Refusal::Unreadable`): a hung network file system must not hold the
/// start.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a start found in the storage for a workspace.
#[derive(Debug)]
pub enum Found {
    /// No checkpoint: a first start, or the workspace is new to this replica.
    Nothing,
    Usable(Box<Checkpoint>),
    Refused(Refusal, String),
}

/// Read the checkpoint of `workspace`, refusing one that is not this
/// workspace's under this shard assignment.
pub fn read(cfg: &StorageConfig, workspace: &str, shard: (u32, u32)) -> Found {
    let path = cfg.path_of(workspace, shard);
    // The one way the exporter reads a file: a regular file only (opening
    // a FIFO would block the start for ever), bounded, within a deadline
    // (a hung mount). The compressed file is at most the size of its body.
    let limits = crate::files::FileLimits {
        max_bytes: cfg.max_size.saturating_add(HEADER as u64),
        timeout: READ_TIMEOUT,
        ..Default::default()
    };
    let bytes = match crate::files::read(&path, &limits) {
        Ok(b) => b,
        Err(crate::files::FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Found::Nothing
        }
        Err(crate::files::FileError::TooLarge { .. }) => {
            return Found::Refused(
                Refusal::TooLarge,
                "the file is larger than --storage.max-size".into(),
            )
        }
        Err(e) => return Found::Refused(Refusal::Unreadable, e.to_string()),
    };
    let c = match decode(&bytes, cfg.max_size) {
        Ok(c) => c,
        Err((why, what)) => return Found::Refused(why, what),
    };
    if c.workspace != workspace {
        return Found::Refused(
            Refusal::Workspace,
            format!(
                "written for workspace {:?}",
                crate::api::shorten(&c.workspace, 64)
            ),
        );
    }
    if c.shard != shard {
        return Found::Refused(
            Refusal::Shard,
            format!(
                "written as shard {} of {}, this replica is shard {} of {}: another replica may have counted this workspace since",
                c.shard.0, c.shard.1, shard.0, shard.1
            ),
        );
    }
    Found::Usable(Box::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{Task, Timestamp};
    use crate::fleet::Fleet;
    use rand::{Rng, SeedableRng};

    fn checkpoint() -> Checkpoint {
        let mut f = Fleet::new(Timestamp::from_micros(0));
        for i in 0..50 {
            let status = ["completed", "failed", "running", "pending"][i % 4];
            let t: Task = serde_json::from_value(serde_json::json!({
                "id": format!("task_{i}"),
                "status": status,
                "created_at": "2027-01-01T00:00:00Z",
                "updated_at": format!("2027-01-01T00:00:{:02}Z", i % 60),
                "started_at": "2027-01-01T00:00:00Z",
                "finished_at": if i % 4 < 2 { Some("2027-01-01T00:01:00Z") } else { None },
                "metrics": {"queue_seconds": 1.5, "run_seconds": 2.0, "input_tokens": 10, "output_tokens": 3},
                "error": if status == "failed" { Some(serde_json::json!({"code": "timeout"})) } else { None },
            }))
            .unwrap();
            f.apply_task(&t);
        }
        Checkpoint {
            workspace: "ws_1".into(),
            shard: (0, 1),
            saved_at: 1,
            api_saved_at: 2,
            watermark: 3,
            fleet: f.save(),
        }
    }

    fn same(a: &Checkpoint, b: &Checkpoint) -> bool {
        serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
    }

    /// A torn write (the file cut at any byte) and flipped bytes anywhere
    /// are refused with a reason, never misread and never a panic.
    #[test]
    fn torn_and_flipped_checkpoints_are_refused_never_misread() {
        let c = checkpoint();
        let bytes = encode(&c, u64::MAX).unwrap();
        assert!(same(&decode(&bytes, u64::MAX).unwrap(), &c));
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut], u64::MAX) {
                Err((Refusal::Corrupt, _)) => {}
                other => panic!("cut at {cut}: {:?}", other.map(|_| ())),
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..5000 {
            let mut b = bytes.clone();
            let flips = rng.random_range(1..4);
            for _ in 0..flips {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            match decode(&b, u64::MAX) {
                Ok(d) => assert!(same(&d, &c), "flipped bytes misread"),
                Err((Refusal::Corrupt | Refusal::Version, _)) => {}
                Err((why, what)) => panic!("{why:?}: {what}"),
            }
        }
        // Bytes appended (two writes run together): refused too.
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"junk");
        assert!(matches!(
            decode(&longer, u64::MAX),
            Err((Refusal::Corrupt, _))
        ));
    }

    /// A body whose checksum is right but whose content no fleet has (an
    /// edited file) is refused when restored, never a panic later.
    #[test]
    fn a_checksummed_but_impossible_fleet_is_refused_at_restore() {
        let c = checkpoint();
        let mut v = serde_json::to_value(&c).unwrap();
        v["fleet"]["counters"]["queue_seconds"]["counts"] = serde_json::json!([1, 2, 3]);
        let edited: Checkpoint = serde_json::from_value(v).unwrap();
        let bytes = encode(&edited, u64::MAX).unwrap();
        let back = decode(&bytes, u64::MAX).unwrap();
        let err = Fleet::new(Timestamp::from_micros(0))
            .restore(back.fleet)
            .unwrap_err();
        assert!(err.contains("histogram"), "{err}");

        // One task both open and counted: it would count again.
        let mut v = serde_json::to_value(&c).unwrap();
        let counted = v["fleet"]["ledger"][0]["id"].clone();
        assert!(counted.is_string() && v["fleet"]["open"][0].is_object());
        v["fleet"]["open"][0]["id"] = counted;
        let edited: Checkpoint = serde_json::from_value(v).unwrap();
        let err = Fleet::new(Timestamp::from_micros(0))
            .restore(edited.fleet)
            .unwrap_err();
        assert!(err.contains("both open and counted"), "{err}");
        // Unedited, the same fleet restores.
        assert!(Fleet::new(Timestamp::from_micros(0))
            .restore(c.fleet)
            .is_ok());
    }

    /// A small file must not inflate past the bound.
    #[test]
    fn the_size_bound_holds_before_and_after_decompression() {
        let c = checkpoint();
        let json = serde_json::to_vec(&c).unwrap().len() as u64;
        assert!(matches!(encode(&c, json - 1), Err(WriteError::TooLarge(_))));
        let bytes = encode(&c, u64::MAX).unwrap();
        assert!(matches!(
            decode(&bytes, json - 1),
            Err((Refusal::TooLarge, _))
        ));
    }

    fn cfg(dir: &std::path::Path) -> StorageConfig {
        StorageConfig {
            dir: dir.to_path_buf(),
            interval: StorageConfig::DEFAULT_INTERVAL,
            max_size: StorageConfig::DEFAULT_MAX_SIZE,
        }
    }

    #[test]
    fn another_workspace_or_shard_assignment_is_refused_and_a_missing_file_is_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        assert!(matches!(read(&cfg, "ws_1", (0, 1)), Found::Nothing));
        let c = checkpoint();
        write_atomic(&cfg.path_of("ws_1", (0, 1)), &encode(&c, u64::MAX).unwrap()).unwrap();
        assert!(matches!(read(&cfg, "ws_1", (0, 1)), Found::Usable(_)));
        // Another assignment has a file name of its own; a file copied
        // there is still refused by what it says inside.
        assert!(matches!(read(&cfg, "ws_1", (1, 2)), Found::Nothing));
        std::fs::copy(cfg.path_of("ws_1", (0, 1)), cfg.path_of("ws_1", (1, 2))).unwrap();
        assert!(matches!(
            read(&cfg, "ws_1", (1, 2)),
            Found::Refused(Refusal::Shard, _)
        ));
        // The file of ws_1 copied to where ws_2's goes.
        std::fs::copy(cfg.path_of("ws_1", (0, 1)), cfg.path_of("ws_2", (0, 1))).unwrap();
        assert!(matches!(
            read(&cfg, "ws_2", (0, 1)),
            Found::Refused(Refusal::Workspace, _)
        ));
        // Ids that make the same file-safe name get files of their own.
        assert_ne!(cfg.path_of("a/b", (0, 1)), cfg.path_of("a_b", (0, 1)));
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// 3 shards, then 4, then 3 again: a start under 4 removes what was
    /// written under 3, so the start back under 3 cannot resume counters
    /// that another replica's series went on from meanwhile.
    #[test]
    fn a_start_under_another_shard_assignment_removes_the_old_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let bytes = encode(&checkpoint(), u64::MAX).unwrap();
        write_atomic(&cfg.path_of("ws_1", (0, 3)), &bytes).unwrap();
        write_atomic(&cfg.path_of("ws_2", (0, 3)), &bytes).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        std::fs::write(dir.path().join(".checkpoint-x1.tmp"), "torn").unwrap();
        // The same assignment: nothing goes.
        assert!(sweep(&cfg, (0, 3)).is_empty());
        let s = Storage::open(cfg.clone(), (0, 4));
        assert!(swept(&s.swept, "ws_1") && swept(&s.swept, "ws_2"));
        assert!(!swept(&s.swept, "ws_3"));
        assert!(matches!(read(&cfg, "ws_1", (0, 3)), Found::Nothing));
        assert!(dir.path().join("notes.txt").exists(), "only checkpoints go");
        assert!(!dir.path().join(".checkpoint-x1.tmp").exists());
    }
}

#[cfg(test)]
mod hostile_paths {
    use super::*;

    fn cfg(dir: &std::path::Path) -> StorageConfig {
        StorageConfig {
            dir: dir.to_path_buf(),
            interval: StorageConfig::DEFAULT_INTERVAL,
            max_size: StorageConfig::DEFAULT_MAX_SIZE,
        }
    }

    /// A FIFO where the checkpoint goes (or a file on a hung mount): the
    /// read must give up with a refusal, not block the start for ever
    /// (opening a FIFO for reading blocks until a writer comes).
    #[cfg(unix)]
    #[test]
    fn a_fifo_at_the_checkpoint_path_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let path = cfg.path_of("ws_1", (0, 1));
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let found = read(&cfg, "ws_1", (0, 1));
            let _ = tx.send(format!("{found:?}"));
        });
        let found = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("storage::read still blocked on the FIFO after 5 s: the slot never starts");
        assert!(found.contains("Unreadable"), "{found}");
        // Unblock the reader thread should it still hang (never blocks).
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
    }

    /// A directory where the checkpoint goes: refused as unreadable.
    #[test]
    fn a_directory_at_the_checkpoint_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        std::fs::create_dir(cfg.path_of("ws_1", (0, 1))).unwrap();
        assert!(matches!(
            read(&cfg, "ws_1", (0, 1)),
            Found::Refused(Refusal::Unreadable, _)
        ));
    }
}
