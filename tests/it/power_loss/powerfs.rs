//! A FUSE file system for power-loss tests: everything lives in memory, in two versions. What
//! a process writes is visible at once (the "page cache"); what is on the "disk" changes only
//! when it asks: `fsync` of a file copies its data to the disk, `fsync` of a directory copies
//! its entries (files created, renamed, removed). [`Control::cut`] is the power cut: every
//! file and directory goes back to what its last fsync left, and what no durable entry reaches
//! is gone. [`Control::tear_next_write`] makes the next write to a chosen file reach the disk
//! only in part (with the writes before it that were not synced yet, as a disk's write-back
//! would), and then the device stops: every later change fails with EIO, as on a dead card.
//!
//! Files are opened with direct I/O, so the kernel keeps no cached copy that could outlive a
//! cut; the test unmounts and mounts again around each cut all the same.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

enum Kind {
    File {
        data: Vec<u8>,
        disk: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        disk: BTreeMap<OsString, u64>,
    },
}

struct Node {
    /// The name it was last given (for choosing which file to tear).
    name: OsString,
    kind: Kind,
}

/// A write to tear: the next one to a file whose name ends with `suffix`.
struct Tear {
    suffix: String,
    /// Picks how many of the write's bytes reach the disk.
    seed: u64,
}

#[derive(Default)]
pub struct Counts {
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub writes: u64,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// The device stopped (after a torn write): every change fails.
    dead: bool,
    tear: Option<Tear>,
    /// What the torn write was: file name, bytes kept, bytes written.
    torn: Option<(String, usize, usize)>,
    counts: Counts,
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, perm, nlink) = match &node.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 0o644, 1),
            Kind::Dir { .. } => (FileType::Directory, 0, 0o755, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    fn entries(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn child(&mut self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn new_node(&mut self, parent: u64, name: &OsStr, kind: Kind) -> Result<u64, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                name: name.to_owned(),
                kind,
            },
        );
        self.entries(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir { entries, .. }) if entries.is_empty())
    }

    fn alive(&self) -> Result<(), Errno> {
        if self.dead { Err(Errno::EIO) } else { Ok(()) }
    }

    /// fsync of a file (its data reaches the disk) or a directory (its entries do).
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        self.alive()?;
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, disk }) => {
                disk.clone_from(data);
                self.counts.file_syncs += 1;
            }
            Some(Kind::Dir { entries, disk }) => {
                disk.clone_from(entries);
                self.counts.dir_syncs += 1;
            }
            None => return Err(Errno::ENOENT),
        }
        Ok(())
    }

    fn write(&mut self, ino: u64, offset: usize, buf: &[u8]) -> Result<usize, Errno> {
        self.alive()?;
        self.counts.writes += 1;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let tear = self
            .tear
            .as_ref()
            .is_some_and(|t| node.name.to_string_lossy().ends_with(&t.suffix));
        let Kind::File { data, disk } = &mut node.kind else {
            return Err(Errno::EISDIR);
        };
        if tear && buf.len() > 1 {
            let seed = self.tear.take().map_or(1, |t| t.seed);
            let keep = 1 + (seed as usize) % (buf.len() - 1);
            let mut torn = data.clone();
            put(&mut torn, offset, &buf[..keep]);
            *disk = torn;
            self.torn = Some((node.name.to_string_lossy().into_owned(), keep, buf.len()));
            self.dead = true;
            return Err(Errno::EIO);
        }
        put(data, offset, buf);
        Ok(buf.len())
    }
}

fn put(data: &mut Vec<u8>, offset: usize, buf: &[u8]) {
    if data.len() < offset + buf.len() {
        data.resize(offset + buf.len(), 0);
    }
    data[offset..offset + buf.len()].copy_from_slice(buf);
}

/// The test's handle on the file system: cut the power, tear a write, read the counts.
#[derive(Clone)]
pub struct Control(Arc<Mutex<State>>);

impl Control {
    pub fn new() -> Control {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                name: OsString::from("/"),
                kind: Kind::Dir {
                    entries: BTreeMap::new(),
                    disk: BTreeMap::new(),
                },
            },
        );
        Control(Arc::new(Mutex::new(State {
            nodes,
            next_ino: ROOT + 1,
            dead: false,
            tear: None,
            torn: None,
            counts: Counts::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts the file system at `dir` (an empty directory) until the session is dropped.
    pub fn mount(&self, dir: &Path) -> fuser::BackgroundSession {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("brook-powerfs".into())];
        fuser::spawn_mount(PowerFs(self.clone()), dir, &config)
            .unwrap_or_else(|e| panic!("mounting the FUSE file system at {}: {e}", dir.display()))
    }

    /// The power cut: everything not fsynced is gone; the device works again.
    pub fn cut(&self) {
        let mut st = self.lock();
        for node in st.nodes.values_mut() {
            match &mut node.kind {
                Kind::File { data, disk } => *data = disk.clone(),
                Kind::Dir { entries, disk } => *entries = disk.clone(),
            }
        }
        // Whatever no durable entry reaches is gone.
        let mut reachable = vec![ROOT];
        let mut keep = std::collections::HashSet::new();
        while let Some(ino) = reachable.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(Node {
                kind: Kind::Dir { entries, .. },
                ..
            }) = st.nodes.get(&ino)
            {
                reachable.extend(entries.values().copied());
            }
        }
        st.nodes.retain(|ino, _| keep.contains(ino));
        st.dead = false;
        st.tear = None;
    }

    /// Arms a torn write: the next write to a file whose name ends with `suffix` keeps only
    /// part of its bytes (chosen by `seed`), and the device stops.
    pub fn tear_next_write(&self, suffix: &str, seed: u64) {
        let mut st = self.lock();
        st.torn = None;
        st.tear = Some(Tear {
            suffix: suffix.to_string(),
            seed,
        });
    }

    /// The torn write, once it happened: (file name, bytes kept, bytes written).
    pub fn torn(&self) -> Option<(String, usize, usize)> {
        self.lock().torn.clone()
    }

    /// Stops the device now: every later change fails.
    pub fn kill_device(&self) {
        let mut st = self.lock();
        st.dead = true;
        st.tear = None;
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        let st = self.lock();
        (st.counts.writes, st.counts.file_syncs, st.counts.dir_syncs)
    }
}

struct PowerFs(Control);

impl PowerFs {
    fn st(&self) -> MutexGuard<'_, State> {
        self.0.lock()
    }
}

fn reply_entry(st: &State, ino: Result<u64, Errno>, reply: ReplyEntry) {
    match ino.and_then(|i| st.attr(i).ok_or(Errno::ENOENT)) {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.st();
        let ino = st.child(parent.into(), name);
        reply_entry(&st, ino, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.st().attr(ino.into()) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.st();
        let ino = u64::from(ino);
        if let Some(size) = size {
            if let Err(e) = st.alive() {
                return reply.error(e);
            }
            match st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                Some(Kind::File { data, .. }) => data.resize(size as usize, 0),
                Some(Kind::Dir { .. }) => return reply.error(Errno::EISDIR),
                None => return reply.error(Errno::ENOENT),
            }
        }
        match st.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.st();
        let ino = st.alive().and_then(|()| {
            st.new_node(
                parent.into(),
                name,
                Kind::Dir {
                    entries: BTreeMap::new(),
                    disk: BTreeMap::new(),
                },
            )
        });
        reply_entry(&st, ino, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.st();
        let ino = st
            .alive()
            .and_then(|()| match st.child(parent.into(), name) {
                Ok(_) if flags & libc::O_EXCL != 0 => Err(Errno::EEXIST),
                Ok(ino) => {
                    if flags & libc::O_TRUNC != 0 {
                        if let Some(Kind::File { data, .. }) =
                            st.nodes.get_mut(&ino).map(|n| &mut n.kind)
                        {
                            data.clear();
                        }
                    }
                    Ok(ino)
                }
                Err(_) => st.new_node(
                    parent.into(),
                    name,
                    Kind::File {
                        data: Vec::new(),
                        disk: Vec::new(),
                    },
                ),
            });
        match ino.and_then(|i| st.attr(i).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.st();
        if flags.0 & libc::O_TRUNC != 0 {
            if let Err(e) = st.alive() {
                return reply.error(e);
            }
            if let Some(Kind::File { data, .. }) =
                st.nodes.get_mut(&u64::from(ino)).map(|n| &mut n.kind)
            {
                data.clear();
            }
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.st();
        match st.nodes.get(&u64::from(ino)).map(|n| &n.kind) {
            Some(Kind::File { data, .. }) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Kind::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.st().write(ino.into(), offset as usize, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.st().sync(ino.into()), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.st().sync(ino.into()), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.st();
        let r = st.alive().and_then(|()| {
            let ino = st.child(parent.into(), name)?;
            if matches!(st.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir { .. })) {
                return Err(Errno::EISDIR);
            }
            st.entries(parent.into())?.remove(name);
            Ok(())
        });
        reply_empty(r, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.st();
        let r = st.alive().and_then(|()| {
            let ino = st.child(parent.into(), name)?;
            if !st.is_empty_dir(ino) {
                return Err(
                    if matches!(st.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir { .. })) {
                        Errno::ENOTEMPTY
                    } else {
                        Errno::ENOTDIR
                    },
                );
            }
            st.entries(parent.into())?.remove(name);
            Ok(())
        });
        reply_empty(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st();
        let r = st.alive().and_then(|()| {
            let ino = st.child(parent.into(), name)?;
            if let Ok(existing) = st.child(newparent.into(), newname) {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                let is_dir =
                    |i| matches!(st.nodes.get(&i).map(|n| &n.kind), Some(Kind::Dir { .. }));
                if is_dir(existing) && !st.is_empty_dir(existing) {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            st.entries(parent.into())?.remove(name);
            st.entries(newparent.into())?
                .insert(newname.to_owned(), ino);
            if let Some(n) = st.nodes.get_mut(&ino) {
                n.name = newname.to_owned();
            }
            Ok(())
        });
        reply_empty(r, reply);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.st();
        let ino = u64::from(ino);
        let listing: Vec<(u64, FileType, OsString)> = match st.entries(ino) {
            Ok(entries) => entries
                .iter()
                .map(|(n, i)| (*i, n.clone()))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|(i, n)| (i, FileType::RegularFile, n))
                .collect(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for (i, _, n) in listing {
            let kind = match st.nodes.get(&i).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((i, kind, n));
        }
        for (k, (i, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), (k + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 64 GiB free in 4 KiB blocks.
        let blocks = 16 << 20;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
