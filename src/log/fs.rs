//! The filesystem seam: every file the log touches goes through [`Fs`] and [`File`], so tests
//! can inject the faults a power cut or a worn SD card produces.
//!
//! - [`StdFs`]: the real filesystem (positional reads and writes, `fdatasync`, `statvfs`).
//! - [`FaultFs`]: real files too, plus bookkeeping of which bytes were synced, so a test can
//!   simulate power loss (unsynced bytes vanish, or only part of them survive), short writes
//!   followed by ENOSPC, and failing fsyncs.
//! - [`SlowSyncFs`]: adds a fixed delay to every fsync, to imitate a slow SD card in benchmarks.

use crate::units::Narrow;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// An open file: positional I/O only, so readers and the writer share one handle.
pub trait File: Send + Sync {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The directory and file operations the log needs.
pub trait Fs: Send + Sync {
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>>;
    /// Opens an existing file, for writing too when `write` is set.
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn File>>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries in a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (files created, renamed, removed) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Bytes available to an unprivileged writer on the filesystem holding `path`.
    fn available_space(&self, path: &Path) -> io::Result<u64>;
    fn exists(&self, path: &Path) -> bool;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdFile(fs::File);

impl File for StdFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Fs for StdFs {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn File>> {
        let f = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fs::File::open(path)?.sync_all()
    }
    fn available_space(&self, path: &Path) -> io::Result<u64> {
        available_space(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Replaces the file `path` with `bytes` so that a power cut leaves the old file or the new
/// one, never a torn one: written to `<path>.tmp`, fsynced, renamed into place, and the
/// directory fsynced.
pub fn replace_durably(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> super::Result<()> {
    use super::LogError;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = fs
        .create(&tmp)
        .map_err(|e| LogError::io("create", &tmp, e))?;
    f.write_all_at(bytes, 0)
        .map_err(|e| LogError::io("write", &tmp, e))?;
    f.sync_data().map_err(|e| LogError::io("fsync", &tmp, e))?;
    fs.rename(&tmp, path)
        .map_err(|e| LogError::io("rename", &tmp, e))?;
    if let Some(dir) = path.parent() {
        fs.sync_dir(dir)
            .map_err(|e| LogError::io("fsync directory", dir, e))?;
    }
    Ok(())
}

/// Creates `path` and its missing parents, and fsyncs the parent of every directory it
/// created, so the new directories survive a power cut.
pub fn create_dir_durably(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while !fs.exists(p) {
        missing.push(p);
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(path)?;
    for dir in missing.iter().rev() {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs.sync_dir(parent)?;
    }
    Ok(())
}

/// `statvfs(path)`: blocks available to unprivileged users times the fragment size.
pub fn available_space(path: &Path) -> io::Result<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` is a properly sized, writable
    // statvfs that the call fills in; nothing is retained after the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field widths differ between 32- and 64-bit targets
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Wraps another [`Fs`] and sleeps for a fixed time in every fsync (files and directories).
pub struct SlowSyncFs<F> {
    inner: F,
    delay: Duration,
}

impl<F: Fs> SlowSyncFs<F> {
    pub fn new(inner: F, delay: Duration) -> Self {
        SlowSyncFs { inner, delay }
    }
}

struct SlowFile {
    inner: Arc<dyn File>,
    delay: Duration,
}

impl File for SlowFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl<F: Fs> Fs for SlowSyncFs<F> {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let inner = self.inner.create(path)?;
        Ok(Arc::new(SlowFile {
            inner,
            delay: self.delay,
        }))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn File>> {
        let inner = self.inner.open(path, write)?;
        Ok(Arc::new(SlowFile {
            inner,
            delay: self.delay,
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.sync_dir(path)
    }
    fn available_space(&self, path: &Path) -> io::Result<u64> {
        self.inner.available_space(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
}

/// What a [`FaultFs`] does wrong, and what it remembers about synced bytes.
#[derive(Default)]
struct FaultState {
    /// Per file: the length known to be on stable storage.
    synced: HashMap<PathBuf, u64>,
    /// Bytes that may still be written before writes go short and fail with ENOSPC.
    space_left: Option<u64>,
    /// Fail every fsync from now on.
    fail_fsync: bool,
    /// Writes and truncations fail with EROFS (the filesystem was remounted read-only).
    read_only: bool,
    /// Reported by `available_space` instead of the real figure.
    available: Option<u64>,
    writes: u64,
    syncs: u64,
}

/// Real files with fault injection. Cloning shares the state, so a test keeps a handle while
/// the store owns another.
#[derive(Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<FaultState>>,
}

impl FaultFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A test that panicked while holding the lock has already failed; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, writes succeed for `bytes` more bytes; the write that crosses the limit
    /// writes only what fits and then fails with ENOSPC. `None` lifts the limit.
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.lock().space_left = bytes;
    }

    /// Makes every following fsync fail with EIO (or stop failing).
    pub fn set_fail_fsync(&self, fail: bool) {
        self.lock().fail_fsync = fail;
    }

    /// Makes every following write and truncation fail with EROFS, as on a filesystem the
    /// kernel remounted read-only after an error (or stop failing).
    pub fn set_read_only(&self, read_only: bool) {
        self.lock().read_only = read_only;
    }

    /// Makes `available_space` report this figure (or the real one again with `None`).
    pub fn set_available(&self, bytes: Option<u64>) {
        self.lock().available = bytes;
    }

    /// Number of successful file fsyncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Number of write calls so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Simulates a power cut: every file written through this `FaultFs` loses what was not
    /// synced, except that `keep(path, synced_len, len)` more bytes of the unsynced tail may
    /// survive (a torn write). Files created and never synced keep `keep(..)` bytes from 0.
    /// The store must be dropped before this is called.
    pub fn power_loss(&self, mut keep: impl FnMut(&Path, u64, u64) -> u64) -> io::Result<()> {
        let st = self.lock();
        for (path, &synced) in &st.synced {
            let Ok(meta) = fs::metadata(path) else {
                continue; // removed since
            };
            let len = meta.len();
            if len <= synced {
                continue;
            }
            let extra = keep(path, synced, len).min(len - synced);
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(synced + extra)?;
        }
        Ok(())
    }

    fn wrap(&self, path: &Path, file: fs::File, created: bool) -> io::Result<Arc<dyn File>> {
        let len = file.metadata()?.len();
        let mut st = self.lock();
        if created {
            st.synced.insert(path.to_path_buf(), 0);
        } else {
            // A file that existed before is taken as fully synced.
            st.synced.entry(path.to_path_buf()).or_insert(len);
        }
        Ok(Arc::new(FaultFile {
            file,
            path: path.to_path_buf(),
            fs: self.clone(),
        }))
    }
}

struct FaultFile {
    file: fs::File,
    path: PathBuf,
    fs: FaultFs,
}

impl File for FaultFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        st.writes += 1;
        if st.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if let Some(left) = st.space_left {
            if (buf.len() as u64) > left {
                let fits = left.sat_usize();
                st.space_left = Some(0);
                drop(st);
                self.file.write_all_at(&buf[..fits], pos)?;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            st.space_left = Some(left - buf.len() as u64);
        }
        drop(st);
        self.file.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.fs.lock();
        if st.fail_fsync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync_data()?;
        let len = self.file.metadata()?.len();
        st.synced.insert(self.path.clone(), len);
        st.syncs += 1;
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.fs.lock().read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.file.set_len(len)?;
        let mut st = self.fs.lock();
        if let Some(s) = st.synced.get_mut(&self.path) {
            *s = (*s).min(len);
        }
        Ok(())
    }
}

impl Fs for FaultFs {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        self.wrap(path, f, true)
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn File>> {
        let f = OpenOptions::new().read(true).write(write).open(path)?;
        self.wrap(path, f, false)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        StdFs.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)?;
        self.lock().synced.remove(path);
        Ok(())
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)?;
        self.lock().synced.retain(|p, _| !p.starts_with(path));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        let mut st = self.lock();
        if let Some(s) = st.synced.remove(from) {
            st.synced.insert(to.to_path_buf(), s);
        }
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if self.lock().fail_fsync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        StdFs.sync_dir(path)
    }
    fn available_space(&self, path: &Path) -> io::Result<u64> {
        if let Some(a) = self.lock().available {
            return Ok(a);
        }
        available_space(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
