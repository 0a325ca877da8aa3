//! Local files on a shared machine: the session directory (it holds the
//! cluster's token), span directories and the compiled-component cache
//! (wasmtime runs what it loads from there) must belong to the user and be
//! writable by no one else; files in them are opened without following
//! symbolic links, and temporary files are created exclusively. Otherwise
//! another local user could read the token, plant code, or redirect writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// This process's user id.
#[allow(unsafe_code)]
pub fn uid() -> u32 {
    // SAFETY: getuid(2) cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

/// Why `dir` may not be trusted, if it may not: a symbolic link, not a
/// directory, someone else's, or writable by group or others. `what` names
/// it in the message.
pub fn check_private_dir(dir: &Path, what: &str) -> Result<(), String> {
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| format!("{what} {}: {e}", dir.display()))?;
    let refuse = |why: String| Err(format!("{what} {} is refused: {why}", dir.display()));
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link; name the directory itself".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    if meta.uid() != uid() {
        return refuse(format!(
            "it belongs to user {}, not to you ({}); use a directory of your own",
            meta.uid(),
            uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "others can write to it (mode {:o}); run `chmod go-w {}` or use another",
            meta.mode() & 0o777,
            dir.display()
        ));
    }
    Ok(())
}

/// Creates `dir` (and its parents) if needed, new ones with `mode`, then
/// checks it as [`check_private_dir`] does.
pub fn ensure_private_dir(dir: &Path, mode: u32, what: &str) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| format!("cannot create {what} {}: {e}", dir.display()))?;
    check_private_dir(dir, what)
}

/// Opens `path` for appending (created with mode 0644 if absent), refusing a
/// symbolic link.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates `path` anew with `mode`: an error if anything is there already,
/// a symbolic link included.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Opens `path` for writing from the start (created with `mode` if absent),
/// refusing a symbolic link.
pub fn open_truncate(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wtrace-private-{}-{}",
            std::process::id(),
            crate::ids::random_hex(4)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn directories_others_can_write_or_links_are_refused() {
        let base = dir();
        assert_eq!(check_private_dir(&base, "the test directory"), Ok(()));
        let shared = base.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = check_private_dir(&shared, "the span directory").unwrap_err();
        assert!(
            refused.contains("others can write to it (mode 777)"),
            "{refused}"
        );
        let link = base.join("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert!(
            check_private_dir(&link, "x")
                .unwrap_err()
                .contains("symbolic link")
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn files_are_not_opened_through_links_and_new_ones_are_new() {
        let base = dir();
        let target = base.join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let link = base.join("spans.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_append(&link).is_err());
        assert!(open_truncate(&link, 0o600).is_err());
        assert!(create_new(&link, 0o600).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(base).unwrap();
    }
}
