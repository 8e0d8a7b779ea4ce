//! The files a daemon keeps: its private directories and JSON files
//! written whole.
//!
//! State directories are owner-only whatever the umask, and tightened if
//! they already let others in. A JSON file is written aside and renamed
//! in, so a reader (or a power cut) must never see half of one. Nothing
//! here logs a file's content.

use std::path::Path;

use serde::Serialize;

/// Creates `dir` (and its parents) with mode 0700, and takes group and
/// other access away from it if it already had any. State directories hold
/// sensor data, identities, leases and keys, so the umask of whoever
/// started the daemon must not decide.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
        log::info!(
            "{} was mode {mode:o}; made it {:o} (owner only)",
            dir.display(),
            mode & 0o700
        );
    }
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700 if it is missing, and
/// leaves one that exists as its owner set it (an admin group may have
/// been given read access on purpose).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `value` as JSON to `path` whole and durably, mode 0600.
pub fn write_private<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_json(path, value, true)
}

/// Writes `value` as JSON to `path` whole, mode 0600; with `durable`,
/// synced before and after the rename (identities, leases), else left to
/// the kernel (a status report must not wear an SD card).
pub fn write_json<T: Serialize>(path: &Path, value: &T, durable: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(value).expect("plain data always serializes"))?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let (true, Some(dir)) = (durable, path.parent()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The page size the kernel writes back (4 KiB on most gateways; 16 KiB on
/// some ARM kernels).
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn directories_and_files_are_owner_only_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        private_dir(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        let file = state.join("x.json");
        write_json(&file, &serde_json::json!({"a": 1}), false).unwrap();
        write_private(&file, &serde_json::json!({"a": 2})).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(!state.join("x.json.tmp").exists());
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(back["a"], 2);
    }
}
