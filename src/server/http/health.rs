//! Whether the broker is healthy (`/healthz`, `brook_healthy`, the status page's reasons) and
//! the space on the data directory's filesystem.

use std::path::Path;

use super::HttpState;

/// The data directory's filesystem, as `statvfs` reports it.
#[derive(Clone, Copy, Debug)]
pub struct DiskSpace {
    pub read_only: bool,
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// The filesystem's size.
    pub total: u64,
}

/// Why the broker is degraded (empty when healthy).
pub fn health(state: &HttpState) -> Vec<String> {
    let mut problems = Vec::new();
    let store = state.broker.store();
    let dir = store.dir();
    if let Some(cause) = store.usage().failing() {
        problems.push(format!("appends are failing: {cause}"));
    }
    match disk_space(dir) {
        Some(disk) => {
            if disk.read_only {
                problems.push("filesystem is read-only".to_string());
            }
            if disk.available == 0 {
                problems.push(format!(
                    "no space left on the filesystem of {}",
                    dir.display()
                ));
            }
            if let Some(floor) = store.options().min_free.limit() {
                if disk.available < floor {
                    problems.push(format!(
                        "{} bytes available, below min_free {floor}",
                        disk.available
                    ));
                }
            }
        }
        None => problems.push(format!("cannot stat {}", dir.display())),
    }
    for d in store.usage().damage() {
        problems.push(d.to_string());
    }
    for t in store.topics() {
        for p in t.partitions() {
            if let Some(cause) = p.status().poisoned {
                problems.push(format!("{}/{} refuses writes: {cause}", t.name(), p.id()));
            }
        }
    }
    problems
}

/// The filesystem holding `path` (None when it cannot be asked).
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is NUL-terminated and `st` is a writable statvfs filled in by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // field widths differ between 32- and 64-bit targets
    let (available, total) = (
        st.f_bavail as u64 * st.f_frsize as u64,
        st.f_blocks as u64 * st.f_frsize as u64,
    );
    Some(DiskSpace {
        read_only: (st.f_flag & libc::ST_RDONLY) != 0,
        available,
        total,
    })
}
