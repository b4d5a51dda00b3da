//! The exclusive lock on a data directory: one `brook serve` per directory, and `brook check`
//! never beside a running one.
//!
//! The lock is `flock(LOCK_EX)` on `<dir>/lock`, which holds the PID of its holder for the
//! message a refused process prints. The kernel drops it when the holder exits, however it
//! exits (a crash or `kill -9` leaves no stale lock behind).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{LogError, Result};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// Held for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let io = |op, e| LogError::io(op, &path, e);
        let (mut file, writable) = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            Ok(f) => (f, true),
            // A read-only copy (or file system) a Brook once ran on: the lock still works on
            // a read-only descriptor; only the PID is not written.
            Err(e) => (File::open(&path).map_err(|_| io("open", e))?, false),
        };
        // SAFETY: flock on a descriptor this function owns; no memory is shared with the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io("lock", err));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LogError::DirLocked {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                },
            });
        }
        if writable {
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| write!(file, "{}", std::process::id()))
                .map_err(|e| io("write", e))?;
        }
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path()).expect("first lock");
        match DirLock::acquire(dir.path()) {
            Err(LogError::DirLocked { holder, .. }) => {
                assert_eq!(holder, format!("process {}", std::process::id()));
            }
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        DirLock::acquire(dir.path()).expect("lock after release");
    }
}
