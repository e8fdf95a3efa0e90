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

pub mod settings;

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
    /// Its counting floor, watermark or save time is ahead of the API's
    /// confirmed clock now (by more than `--api.max-timestamp-lead`): the
    /// API's clock went back, or the file came from elsewhere. Used, it
    /// would keep every task finishing until then from counting, unseen.
    Future,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::Corrupt,
        Refusal::Version,
        Refusal::Workspace,
        Refusal::Shard,
        Refusal::TooLarge,
        Refusal::Unreadable,
        Refusal::Future,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Corrupt => "corrupt",
            Refusal::Version => "version",
            Refusal::Workspace => "workspace",
            Refusal::Shard => "shard",
            Refusal::TooLarge => "too_large",
            Refusal::Unreadable => "unreadable",
            Refusal::Future => "future",
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
    /// How long one write may take before it is given up (a frozen or
    /// hung volume): counted as failed, `timeout`.
    pub write_timeout: Duration,
}

impl StorageConfig {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_SIZE: u64 = 512 * 1024 * 1024;
    /// Half the default interval: a hung volume shows at the first write
    /// that hangs, and the final write at a stop stays well inside the
    /// usual 30 s grace of a SIGTERM.
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Checkpoints in `dir`, every other setting its default.
    pub fn new(dir: PathBuf) -> Self {
        StorageConfig {
            dir,
            interval: Self::DEFAULT_INTERVAL,
            max_size: Self::DEFAULT_MAX_SIZE,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
        }
    }

    /// The file of `workspace` under the shard assignment `shard`: its id
    /// made safe for a file name, a hash of the exact id (so that two ids
    /// never share a file), and the assignment (so that a start under
    /// another one can tell the files it must not use; see [`sweep`]).
    pub fn path_of(&self, workspace: &str, shard: (u32, u32)) -> PathBuf {
        self.dir.join(format!("{}.ckpt", owner(workspace, shard)))
    }

    /// The lock file beside [`StorageConfig::path_of`]: whoever holds its
    /// `flock` owns that checkpoint (see [`Lock`]).
    pub fn lock_path_of(&self, workspace: &str, shard: (u32, u32)) -> PathBuf {
        self.dir.join(format!("{}.lock", owner(workspace, shard)))
    }
}

/// `<stem>.<i>-of-<n>`: a checkpoint's name without `.ckpt`, and what its
/// lock file and temporary files are named after.
fn owner(workspace: &str, shard: (u32, u32)) -> String {
    format!("{}.{}-of-{}", stem(workspace), shard.0, shard.1)
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

    /// Take the ownership of `workspace`'s checkpoint under this
    /// assignment: `None` while another process (or slot) holds it.
    pub fn lock(&self, workspace: &str) -> std::io::Result<Option<Lock>> {
        Lock::try_take_within(
            &self.cfg.lock_path_of(workspace, self.shard),
            self.cfg.write_timeout,
        )
    }
}

/// Why a write failed: the label values of
/// `clawmesh_exporter_checkpoint_write_failures_total`.
#[derive(Debug)]
pub enum WriteError {
    TooLarge(u64),
    Io(std::io::Error),
    /// Not done within `--storage.write-timeout`; the writer is abandoned.
    Timeout(Duration),
    /// An abandoned write has not ended yet: none is started meanwhile.
    Stuck,
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
            WriteError::Timeout(d) => write!(
                f,
                "not written within {} (--storage.write-timeout): a frozen or hung volume? the previous checkpoint stays",
                humantime::format_duration(*d)
            ),
            WriteError::Stuck => write!(
                f,
                "the previous write still hangs (a frozen or hung volume?): no new one is started; the previous checkpoint stays"
            ),
        }
    }
}

impl WriteError {
    pub fn reason(&self) -> &'static str {
        match self {
            WriteError::TooLarge(_) => "too_large",
            WriteError::Io(_) => "io",
            WriteError::Timeout(_) | WriteError::Stuck => "timeout",
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

/// At a start under the shard assignment `shard`: remove what was written
/// under an assignment of another number of shards, and the temporary
/// files of writes a kill cut short, but only what no running process
/// owns: a file goes only while its owner's lock ([`Lock`]) is taken here.
/// The number of shards changed since the files of another one were
/// written, so another replica may have counted their workspaces since;
/// and were they kept, a later change back to their assignment would
/// resume counters that another replica's series went on meanwhile.
/// Files of the same number of shards and another index are another
/// replica's sharing the directory (live or restarting): never touched.
/// Returns the workspace parts of the checkpoints removed (a workspace
/// whose checkpoint went counts it refused, `shard`).
pub fn sweep(cfg: &StorageConfig, shard: (u32, u32)) -> std::collections::BTreeSet<String> {
    let mut removed = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(&cfg.dir) else {
        return removed;
    };
    let names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    // `<stem>.<i>-of-<n>` -> (stem, n), for names of an assignment.
    let assignment = |owner: &str| -> Option<(String, u32)> {
        let (stem, a) = owner.rsplit_once('.')?;
        let (i, n) = a.split_once("-of-")?;
        i.parse::<u32>().ok()?;
        Some((stem.to_string(), n.parse().ok()?))
    };
    for name in &names {
        let path = cfg.dir.join(name);
        // A write cut short by a kill leaves its temporary file,
        // `.checkpoint-<owner>.<pid>.<seq>.tmp`: removed when its owner's
        // lock is free (whoever holds it may be writing it now). Others
        // (an older version's, without an owner) are left.
        if let Some(rest) = name
            .strip_prefix(".checkpoint-")
            .and_then(|r| r.strip_suffix(".tmp"))
        {
            let Some(owner) = rest.rsplitn(3, '.').nth(2) else {
                continue;
            };
            if assignment(owner).is_none() {
                continue;
            }
            let lock_path = cfg.dir.join(format!("{owner}.lock"));
            if let Ok(Some(_lock)) = Lock::try_take_within(&lock_path, cfg.write_timeout) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Some(owner) = name.strip_suffix(".ckpt") else {
            continue;
        };
        let Some((stem, total)) = assignment(owner) else {
            continue; // a name of no assignment is not ours to remove
        };
        if total == shard.1 {
            continue;
        }
        let lock_path = cfg.dir.join(format!("{owner}.lock"));
        match Lock::try_take_within(&lock_path, cfg.write_timeout) {
            Ok(Some(lock)) => match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(file = %name, now = %format!("shard {} of {}", shard.0, shard.1), "removed a checkpoint written under another shard assignment: its workspace starts fresh (another replica may have counted it since)");
                    removed.insert(stem);
                    // Held, so no one else can be using it.
                    lock.remove();
                }
                Err(err) => {
                    tracing::warn!(file = %name, error = %err, "cannot remove a checkpoint of another shard assignment")
                }
            },
            Ok(None) => {
                tracing::warn!(file = %name, now = %format!("shard {} of {}", shard.0, shard.1), "a checkpoint of another shard assignment is kept: a running exporter holds its lock (a replica of the old assignment still running?); the next start removes it once it is free")
            }
            Err(err) => {
                tracing::warn!(file = %name, error = %err, "cannot lock a checkpoint of another shard assignment: kept")
            }
        }
    }
    removed
}

/// The ownership of one checkpoint (workspace and shard assignment): an
/// exclusive `flock` on its lock file, held as long as the checkpoint is
/// used, also by a write still running in its child process (see
/// [`Writer`]). A second process of the same workspace and assignment on
/// the same directory cannot take it and stands by; the sweep of another
/// assignment's files takes it first. Released when the last holder ends
/// (the kernel drops it with the last descriptor, even after a kill -9).
#[derive(Debug)]
pub struct Lock {
    file: std::fs::File,
    path: PathBuf,
}

impl Lock {
    /// Take the lock at `path` (made if missing), or `None` when another
    /// open file holds it (another process, or another slot of this one).
    pub fn try_take(path: &Path) -> std::io::Result<Option<Lock>> {
        Self::try_take_within(path, StorageConfig::DEFAULT_WRITE_TIMEOUT)
    }

    /// [`Lock::try_take`], a missing lock file made within `create_within`
    /// (`--storage.write-timeout`): creating a file is a write, and on a
    /// frozen volume it sleeps in the kernel until the thaw. Made in a
    /// child process ([`Writer::create`]), so no thread of the exporter
    /// sleeps there (a reload adding a workspace, a standby slot retrying,
    /// would keep the exporter from exiting); a lock file that exists
    /// opens in the calling thread. Past the deadline: `TimedOut`.
    pub fn try_take_within(path: &Path, create_within: Duration) -> std::io::Result<Option<Lock>> {
        // A lock file removed (by a sweep holding it) between our open and
        // our lock would be a lock on nothing: lock, then check that the
        // path still names what was locked, else again.
        for _ in 0..8 {
            // Read-only first: an open for writing of a name not in the
            // kernel's cache asks for write access to the volume, and
            // sleeps on a frozen one even when the file is missing.
            let file = match std::fs::File::open(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Writer::create(path, create_within)?;
                    std::fs::File::open(path)?
                }
                r => r?,
            };
            // Then for writing where it can be (NFS emulates an exclusive
            // flock with a byte-range lock, which needs it): the name was
            // just looked up, so this writes nothing, frozen or not. On a
            // read-only mount the read-only file locks.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap_or(file);
            if !flock_nb(&file)? {
                return Ok(None);
            }
            if same_file(&file, path) {
                return Ok(Some(Lock {
                    file,
                    path: path.to_path_buf(),
                }));
            }
        }
        Err(std::io::Error::other("the lock file keeps being replaced"))
    }

    /// Remove the lock file while holding it (a sweep, after removing the
    /// checkpoint it guarded).
    fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    #[cfg(unix)]
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }
}

#[cfg(unix)]
fn flock_nb(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn flock_nb(_: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::File, _: &Path) -> bool {
    true
}

/// A checkpoint write running in a child process of its own.
///
/// Why a process and not a thread: a write to a frozen file system
/// (`fsfreeze`, a snapshot in progress) sleeps in the kernel
/// uninterruptibly, and a process cannot exit while one of its threads
/// does, not even on SIGKILL: an abandoned thread would hold every
/// SIGTERM until the volume thaws. A child stuck so holds only itself.
/// It is forked without exec (a new binary cannot be assumed, tests run
/// in-process) and so does only what is safe after a fork in a threaded
/// process: raw system calls on memory prepared before it (no allocation,
/// no lock), then `_exit`. It closes every inherited descriptor but the
/// checkpoint's lock, so it holds no socket (a stuck child must not keep
/// the listening port from the next process) and keeps the lock: no one
/// takes the checkpoint over while its write may still land.
#[derive(Debug)]
pub struct Writer {
    #[cfg(unix)]
    pid: libc::pid_t,
    /// `finished` has reaped it: the pid is no longer ours.
    #[cfg(unix)]
    reaped: bool,
    /// Its temporary file: left behind when it is killed mid-write.
    #[cfg(unix)]
    tmp: PathBuf,
    #[cfg(not(unix))]
    done: std::sync::mpsc::Receiver<std::io::Result<()>>,
}

static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Writer {
    /// Start replacing `path` with `bytes` (atomically and durably, as
    /// [`write_atomic`]), keeping `lock` held in the writer.
    pub fn start(path: &Path, bytes: &[u8], lock: Option<&Lock>) -> std::io::Result<Writer> {
        Self::start_after(path, bytes, lock, None)
    }

    /// [`Writer::start`], the writer first removing `stale`: the temporary
    /// file of an earlier writer killed mid-write (see [`Writer::temporary`]).
    /// Removed by the child, never by a thread of the exporter (a frozen
    /// volume would hold it).
    #[cfg(unix)]
    pub fn start_after(
        path: &Path,
        bytes: &[u8],
        lock: Option<&Lock>,
        stale: Option<&Path>,
    ) -> std::io::Result<Writer> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let seq = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".checkpoint-{name}.{}.{seq}.tmp",
            std::process::id()
        ));
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (c_tmp, c_path, c_dir) = (c(&tmp)?, c(path)?, c(dir)?);
        let c_stale = stale.map(c).transpose()?;
        let keep = lock.map_or(-1, Lock::fd);
        // SAFETY: the child runs `write_child` only: system calls on the
        // prepared strings and bytes, then `_exit` (see the type's doc).
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => unsafe { write_child(&c_tmp, &c_path, &c_dir, bytes, keep, c_stale.as_deref()) },
            pid => Ok(Writer {
                pid,
                reaped: false,
                tmp,
            }),
        }
    }

    /// The temporary file it writes: once it has ended, one that is left
    /// (it was killed mid-write) is for the next writer to remove.
    #[cfg(unix)]
    pub fn temporary(&self) -> &Path {
        &self.tmp
    }

    #[cfg(not(unix))]
    pub fn temporary(&self) -> &Path {
        Path::new("")
    }

    /// `None` while it runs; else how it ended.
    #[cfg(unix)]
    pub fn finished(&mut self) -> Option<std::io::Result<()>> {
        let mut status = 0;
        // SAFETY: waits on our own child, without blocking.
        if self.reaped {
            return Some(Err(std::io::Error::other("the writer was reaped already")));
        }
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            self.reaped = true;
        }
        match r {
            0 => None,
            -1 => Some(Err(std::io::Error::last_os_error())),
            _ if libc::WIFEXITED(status) => match libc::WEXITSTATUS(status) {
                0 => Some(Ok(())),
                errno => Some(Err(std::io::Error::from_raw_os_error(errno))),
            },
            _ => Some(Err(std::io::Error::other("the writer was killed"))),
        }
    }

    /// Give it up: killed (it ends when the kernel lets it, before any
    /// further step; a rename under way completes, which is harmless).
    #[cfg(unix)]
    pub fn abandon(&self) {
        // SAFETY: a signal to our own unreaped child (the pid is not reused
        // before `finished` reaps it).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

/// A writer let go unfinished (its slot stopped while the write hung): a
/// thread of its own waits for it, else it stays a zombie for the life of
/// the exporter, one per reload of a workspace while its volume hangs.
/// The thread waits in `waitpid`, never in the file system, so it cannot
/// keep the exporter from exiting.
#[cfg(unix)]
impl Drop for Writer {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = self.pid;
        let reap = move || loop {
            let mut status = 0;
            // SAFETY: waits on our own child, which nothing else reaps.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("checkpoint-reaper".into())
            .spawn(reap)
        {
            tracing::warn!(pid, error = %e, "cannot start a thread to wait for an unfinished checkpoint writer: it stays a zombie once it ends");
        }
    }
}

impl Writer {
    #[cfg(not(unix))]
    pub fn start_after(
        path: &Path,
        bytes: &[u8],
        _: Option<&Lock>,
        _: Option<&Path>,
    ) -> std::io::Result<Writer> {
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
        std::thread::spawn(move || {
            let _ = tx.send(write_atomic(&path, &bytes));
        });
        Ok(Writer { done })
    }

    #[cfg(not(unix))]
    pub fn finished(&mut self) -> Option<std::io::Result<()>> {
        self.done.try_recv().ok()
    }

    #[cfg(not(unix))]
    pub fn abandon(&self) {}
}

/// Close every descriptor from `lo` to `hi` (in a forked child).
#[cfg(unix)]
unsafe fn close_range(lo: libc::c_int, hi: libc::c_uint) {
    if libc::syscall(libc::SYS_close_range, lo as libc::c_uint, hi, 0) != 0 {
        let mut fd = lo;
        while (fd as libc::c_uint) <= hi.min(65_535) {
            libc::close(fd);
            fd += 1;
        }
    }
}

/// The child of [`Writer::create`]: the file made if missing (never
/// truncated or replaced: it may be a lock someone holds).
#[cfg(unix)]
unsafe fn create_child(path: &std::ffi::CStr) -> ! {
    close_range(0, libc::c_uint::MAX);
    let fd = libc::open(
        path.as_ptr(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
        0o600,
    );
    if fd >= 0 {
        libc::_exit(0)
    }
    let errno = *libc::__errno_location();
    libc::_exit(if errno > 0 && errno < 256 {
        errno
    } else {
        libc::EIO
    })
}

impl Writer {
    /// Make the empty file at `path` if it is missing, in a child process,
    /// waiting at most `within` (the calling thread sleeps meanwhile, in
    /// short steps: a lock file is made once per workspace and directory).
    #[cfg(unix)]
    fn create(path: &Path, within: Duration) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c_path =
            std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: the child runs `create_child` only: system calls on the
        // prepared string, then `_exit` (see the type's doc).
        let mut child = match unsafe { libc::fork() } {
            -1 => return Err(std::io::Error::last_os_error()),
            0 => unsafe { create_child(&c_path) },
            pid => Writer {
                pid,
                reaped: false,
                tmp: PathBuf::new(),
            },
        };
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(r) = child.finished() {
                return r;
            }
            if std::time::Instant::now() >= deadline {
                child.abandon();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "cannot create {} within {} (--storage.write-timeout): a frozen or hung volume?",
                        path.display(),
                        humantime::format_duration(within)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[cfg(not(unix))]
    fn create(path: &Path, _: Duration) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(drop)
    }
}

/// The child of [`Writer::start`]: only async-signal-safe system calls.
#[cfg(unix)]
unsafe fn write_child(
    tmp: &std::ffi::CStr,
    path: &std::ffi::CStr,
    dir: &std::ffi::CStr,
    bytes: &[u8],
    keep: libc::c_int,
    stale: Option<&std::ffi::CStr>,
) -> ! {
    let fail = |unlink: bool| -> ! {
        let errno = *libc::__errno_location();
        if unlink {
            libc::unlink(tmp.as_ptr());
        }
        libc::_exit(if errno > 0 && errno < 256 {
            errno
        } else {
            libc::EIO
        })
    };
    // Every inherited descriptor but the lock's.
    if keep > 0 {
        close_range(0, (keep - 1) as libc::c_uint);
    }
    close_range(keep.max(-1) + 1, libc::c_uint::MAX);
    if let Some(stale) = stale {
        libc::unlink(stale.as_ptr());
    }
    let fd = libc::open(
        tmp.as_ptr(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        0o600,
    );
    if fd < 0 {
        fail(false);
    }
    let mut off = 0;
    while off < bytes.len() {
        let n = libc::write(fd, bytes[off..].as_ptr().cast(), bytes.len() - off);
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            fail(true);
        }
        off += n as usize;
    }
    if libc::fsync(fd) != 0 || libc::close(fd) != 0 {
        fail(true);
    }
    if libc::rename(tmp.as_ptr(), path.as_ptr()) != 0 {
        fail(true);
    }
    // The rename is durable once the directory is.
    let d = libc::open(
        dir.as_ptr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if d < 0 || libc::fsync(d) != 0 {
        fail(false);
    }
    libc::_exit(0)
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
                crate::text::shorten(&c.workspace, 64)
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
        StorageConfig::new(dir.to_path_buf())
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
    /// that another replica's series went on from meanwhile; but nothing
    /// whose lock a running process holds, nothing of another index of the
    /// same number of shards (a replica sharing the directory), and only
    /// the temporary files whose owner's lock is free.
    #[test]
    fn a_start_under_another_shard_assignment_removes_only_unowned_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let bytes = encode(&checkpoint(), u64::MAX).unwrap();
        write_atomic(&cfg.path_of("ws_1", (0, 3)), &bytes).unwrap();
        write_atomic(&cfg.path_of("ws_2", (0, 3)), &bytes).unwrap();
        write_atomic(&cfg.path_of("ws_3", (1, 3)), &bytes).unwrap();
        write_atomic(&cfg.path_of("ws_4", (1, 4)), &bytes).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let tmp_of = |ws: &str, shard: (u32, u32)| {
            let stem = cfg.path_of(ws, shard);
            let stem = stem.file_stem().unwrap().to_string_lossy().to_string();
            dir.path().join(format!(".checkpoint-{stem}.77.0.tmp"))
        };
        std::fs::write(tmp_of("ws_1", (0, 3)), "torn").unwrap();
        std::fs::write(tmp_of("ws_4", (1, 4)), "being written").unwrap();
        // ws_3's owner (shard 1 of 3) runs and holds its lock.
        let held = Lock::try_take(&cfg.lock_path_of("ws_3", (1, 3)))
            .unwrap()
            .unwrap();
        // ws_4's owner, shard 1 of 4, runs beside us.
        let live = Lock::try_take(&cfg.lock_path_of("ws_4", (1, 4)))
            .unwrap()
            .unwrap();
        // The same assignment: nothing of it goes (ws_4's is locked).
        assert!(sweep(&cfg, (0, 3)).is_empty());
        let s = Storage::open(cfg.clone(), (0, 4));
        assert!(swept(&s.swept, "ws_1") && swept(&s.swept, "ws_2"));
        assert!(!swept(&s.swept, "ws_3"), "its owner holds the lock");
        assert!(cfg.path_of("ws_3", (1, 3)).exists());
        assert!(
            cfg.path_of("ws_4", (1, 4)).exists(),
            "another replica's, same shard count"
        );
        assert!(
            tmp_of("ws_4", (1, 4)).exists(),
            "a live replica's write in flight"
        );
        assert!(
            !tmp_of("ws_1", (0, 3)).exists(),
            "a dead write of a free owner"
        );
        assert!(matches!(read(&cfg, "ws_1", (0, 3)), Found::Nothing));
        assert!(dir.path().join("notes.txt").exists(), "only checkpoints go");
        // Released, the next start under 4 removes it.
        drop(held);
        let s = Storage::open(cfg.clone(), (0, 4));
        assert!(swept(&s.swept, "ws_3"));
        drop(live);
    }

    /// One owner per checkpoint: a second lock of the same workspace and
    /// assignment (another process, or another open file of this one) is
    /// refused until the first is released.
    #[test]
    fn a_checkpoint_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(cfg(dir.path()), (0, 1));
        let first = s.lock("ws_1").unwrap().expect("free");
        assert!(s.lock("ws_1").unwrap().is_none());
        assert!(s.lock("ws_2").unwrap().is_some(), "per workspace");
        drop(first);
        assert!(s.lock("ws_1").unwrap().is_some());
    }

    /// The writer: replaces the file, holds the lock while it runs, and a
    /// failure comes back as the system's error.
    #[cfg(unix)]
    #[test]
    fn the_writer_process_replaces_the_file_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let path = cfg.path_of("ws_1", (0, 1));
        let lock = Lock::try_take(&cfg.lock_path_of("ws_1", (0, 1)))
            .unwrap()
            .unwrap();
        let wait = |mut w: Writer| loop {
            if let Some(r) = w.finished() {
                break r;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        wait(Writer::start(&path, b"one", Some(&lock)).unwrap()).unwrap();
        wait(Writer::start(&path, b"two", Some(&lock)).unwrap()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let gone = dir.path().join("missing").join("x.ckpt");
        let e = wait(Writer::start(&gone, b"x", None).unwrap()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[cfg(test)]
mod hostile_paths {
    use super::*;

    fn cfg(dir: &std::path::Path) -> StorageConfig {
        StorageConfig::new(dir.to_path_buf())
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
