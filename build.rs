//! Stamps the git revision and the build date into the binary: the
//! `revision` label of `clawmesh_exporter_build_info` and `--version`.
//! Without git (a source tarball) the revision is "unknown".
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
}

/// Whether git's work tree here is this package's own: a source tarball
/// unpacked inside another repository (a packaging tree, a home directory
/// kept in git) is not that repository's revision.
fn own_repository() -> bool {
    let here = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let top = git(&["rev-parse", "--show-toplevel"]).map(std::path::PathBuf::from);
    match (here, top) {
        (Some(here), Some(top)) => {
            let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
            canon(&here).is_some() && canon(&here) == canon(&top)
        }
        _ => false,
    }
}

fn main() {
    let own = own_repository();
    let rev = git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|s| own && !s.is_empty())
        .map(|rev| {
            // Tracked files changed since the commit: the binary is not
            // that revision.
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CLAWMESH_GIT_REVISION={rev}");
    println!("cargo:rustc-env=CLAWMESH_BUILD_DATE={}", build_date());
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=src");
    if own {
        for path in watched() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// The git files whose change means a new revision or a dirty tree: HEAD,
/// the index (a commit, a checkout, a staged change), and the checked-out
/// branch's own ref (loose, else packed). Not the whole `refs/heads`: a
/// commit on any other branch (another worktree's) would rebuild this one.
/// In a worktree `.git` is a file, so git says where its files are; a
/// path that does not exist is left out (cargo would rerun on every build).
fn watched() -> Vec<String> {
    let mut paths = vec!["HEAD".to_string(), "index".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(branch);
    }
    paths.push("packed-refs".into());
    paths
        .iter()
        .filter_map(|p| git(&["rev-parse", "--git-path", p]))
        .filter(|p| std::path::Path::new(p).exists())
        .collect()
}

/// The day of the build (UTC), or of SOURCE_DATE_EPOCH for a reproducible
/// build: YYYY-MM-DD.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
