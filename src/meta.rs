//! Metadata: the small, frequently updated state that is not a log.
//!
//! Topic configs live here now; consumer-group offsets, mirror cursors and MQTT sessions and
//! retained messages will. It sits behind the [`MetaStore`] trait (namespaced key-value with an
//! explicit `flush`), implemented on sled by [`SledMeta`]. sled runs with a small cache
//! (4 MiB), `Mode::LowSpace` and no background flush timer: nothing reaches the card until
//! [`MetaStore::flush`] is called, which callers do before answering an operation whose effect
//! the client relies on (a topic created, an offset committed, an MQTT message about to be
//! sent to a persistent session). Flushes asked for at the same time are one group commit.
//!
//! Layout: one sled tree per [`Namespace`]; values are JSON (self-describing, so fields can be
//! added later). The `format` key of the default tree holds the metadata format version; a
//! newer one than this build understands is refused.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use crate::log::TopicConfig;

/// Version of the metadata layout.
pub const META_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    #[error("metadata store {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("metadata store {path}: {source}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("metadata value for {namespace:?}/{key}: {reason}")]
    BadValue {
        namespace: Namespace,
        key: String,
        reason: String,
    },
    #[error(
        "metadata in {path} has format version {found}, newer than this build understands ({supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// The kinds of metadata, one sled tree each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Namespace {
    Topics,
    GroupOffsets,
    MirrorCursors,
    MqttSessions,
    MqttRetained,
    /// Kafka API state that must outlive a restart (the producer-id allocator).
    Kafka,
}

impl Namespace {
    fn tree_name(self) -> &'static str {
        match self {
            Namespace::Topics => "topics",
            Namespace::GroupOffsets => "group_offsets",
            Namespace::MirrorCursors => "mirror_cursors",
            Namespace::MqttSessions => "mqtt_sessions",
            Namespace::MqttRetained => "mqtt_retained",
            Namespace::Kafka => "kafka",
        }
    }
}

/// A namespaced key-value store whose writes are durable only after `flush`.
pub trait MetaStore: Send + Sync {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&self, ns: Namespace, key: &[u8], value: &[u8]) -> Result<()>;
    fn remove(&self, ns: Namespace, key: &[u8]) -> Result<()>;
    /// Every entry of a namespace, in key order.
    fn scan(&self, ns: Namespace) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<()>;
}

/// [`MetaStore`] on sled, made durable (see the module's "Durability").
pub struct SledMeta {
    path: PathBuf,
    db: sled::Db,
    /// sled's `db` file, opened again for the fsync sled leaves out.
    db_file: File,
    /// The entries of the store and `blobs` directories at their last fsync.
    synced: Mutex<SyncedEntries>,
    /// Flushes asked for at the same time share one (see [`SledMeta::flush`]).
    commits: Mutex<Commits>,
    flushed: Condvar,
}

/// The group commit's bookkeeping: flushes are numbered in the order they start.
#[derive(Default)]
struct Commits {
    /// Flushes started so far.
    started: u64,
    /// The highest-numbered flush that has finished.
    finished: u64,
    /// Whether a flush is running.
    running: bool,
    /// The number and error of the last flush that failed.
    failed: Option<(u64, String)>,
}

#[derive(Default)]
struct SyncedEntries {
    dir: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

/// The names in a directory.
fn entries(dir: &Path) -> io::Result<BTreeSet<String>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// fsync of a file or directory by path.
fn sync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| MetaError::Io {
            op: "fsync",
            path: path.to_path_buf(),
            source,
        })
}

impl SledMeta {
    /// Opens (or creates) the metadata store in `dir`.
    pub fn open(dir: &Path) -> Result<SledMeta> {
        let err = |source| MetaError::Sled {
            path: dir.to_path_buf(),
            source,
        };
        let created = !dir.exists();
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(4 * 1024 * 1024)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None);
        // A store this process closed a moment ago may still be locked by sled's own threads
        // as they wind down: wait for them (up to a second). Another process never gets here:
        // the data directory's lock (log::lock) is taken first.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::Other
                        && e.to_string().contains("could not acquire lock")
                        && tries < 50 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.map_err(err)?,
            }
        };
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(|source| MetaError::Io {
            op: "open",
            path: db_path.clone(),
            source,
        })?;
        let meta = SledMeta {
            path: dir.to_path_buf(),
            db,
            db_file,
            synced: Mutex::new(SyncedEntries::default()),
            commits: Mutex::new(Commits::default()),
            flushed: Condvar::new(),
        };
        // sled wrote `conf` (when it was missing) without a sync, and may have created the
        // directory, `db` and `blobs`: make all of that durable before anything relies on it.
        sync_path(&dir.join("conf"))?;
        meta.sync_files()?;
        if created {
            if let Some(parent) = dir.parent() {
                sync_path(parent)?;
            }
        }
        match meta.db.get(b"format").map_err(err)? {
            Some(v) => {
                let found = v
                    .as_ref()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .unwrap_or(u32::MAX);
                if found > META_FORMAT_VERSION {
                    return Err(MetaError::UnsupportedVersion {
                        path: dir.to_path_buf(),
                        found,
                        supported: META_FORMAT_VERSION,
                    });
                }
            }
            None => {
                meta.db
                    .insert(b"format", &META_FORMAT_VERSION.to_le_bytes())
                    .map_err(err)?;
                meta.flush()?;
            }
        }
        Ok(meta)
    }

    /// What sled's flush leaves out: fsync of `db`, of new blob files, and of the directories
    /// whose entries changed since their last fsync (snapshots are renamed into place, blobs
    /// created and removed).
    fn sync_files(&self) -> Result<()> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| MetaError::Io { op, path, source }
        };
        self.db_file
            .sync_all()
            .map_err(io("fsync", &self.path.join("db")))?;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let blobs_dir = self.path.join("blobs");
        let blobs = entries(&blobs_dir).map_err(io("list", &blobs_dir))?;
        if blobs != synced.blobs {
            for name in blobs.difference(&synced.blobs) {
                let blob = blobs_dir.join(name);
                match File::open(&blob).and_then(|f| f.sync_all()) {
                    Ok(()) => {}
                    // Removed by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("fsync", &blob)(e)),
                }
            }
            sync_path(&blobs_dir)?;
            synced.blobs = blobs;
        }
        let names = entries(&self.path).map_err(io("list", &self.path))?;
        if names != synced.dir {
            sync_path(&self.path)?;
            synced.dir = names;
        }
        Ok(())
    }

    fn tree(&self, ns: Namespace) -> Result<sled::Tree> {
        self.db
            .open_tree(ns.tree_name())
            .map_err(|source| self.err(source))
    }

    fn err(&self, source: sled::Error) -> MetaError {
        MetaError::Sled {
            path: self.path.clone(),
            source,
        }
    }
}

impl MetaStore for SledMeta {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree(ns)?
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }
    fn put(&self, ns: Namespace, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(ns)?
            .insert(key, value)
            .map_err(|e| self.err(e))
            .map(drop)
    }
    fn remove(&self, ns: Namespace, key: &[u8]) -> Result<()> {
        self.tree(ns)?
            .remove(key)
            .map_err(|e| self.err(e))
            .map(drop)
    }
    fn scan(&self, ns: Namespace) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree(ns)?
            .iter()
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }
    /// A group commit: a caller needs a flush that starts after its call (so it covers every
    /// write made before); callers arriving while one runs wait for the next, which one of
    /// them runs for all. Many sessions and consumers committing at once cost one flush.
    fn flush(&self) -> Result<()> {
        let mut c = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let need = c.started + 1;
        loop {
            if c.finished >= need {
                return match &c.failed {
                    Some((n, e)) if *n >= need => Err(MetaError::Io {
                        op: "flush",
                        path: self.path.clone(),
                        source: io::Error::other(e.clone()),
                    }),
                    _ => Ok(()),
                };
            }
            if !c.running {
                c.running = true;
                c.started += 1;
                let number = c.started;
                drop(c);
                let result = self
                    .db
                    .flush()
                    .map_err(|e| self.err(e))
                    .and_then(|_| self.sync_files());
                c = self.commits.lock().unwrap_or_else(|e| e.into_inner());
                c.running = false;
                c.finished = number;
                if let Err(e) = &result {
                    c.failed = Some((number, e.to_string()));
                }
                self.flushed.notify_all();
                if number >= need {
                    return result;
                }
                continue;
            }
            c = self.flushed.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Typed access to the metadata.
pub struct Meta {
    store: Box<dyn MetaStore>,
}

impl Meta {
    pub fn new(store: Box<dyn MetaStore>) -> Self {
        Meta { store }
    }

    /// Opens the sled store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Meta::new(Box::new(SledMeta::open(dir)?)))
    }

    pub fn store(&self) -> &dyn MetaStore {
        self.store.as_ref()
    }

    /// Records a topic's config and makes it durable before returning.
    pub fn put_topic(&self, name: &str, config: &TopicConfig) -> Result<()> {
        let value = serde_json::to_vec(config).map_err(|e| MetaError::BadValue {
            namespace: Namespace::Topics,
            key: name.to_string(),
            reason: e.to_string(),
        })?;
        self.store.put(Namespace::Topics, name.as_bytes(), &value)?;
        self.store.flush()
    }

    /// Forgets a topic, durably.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.store.remove(Namespace::Topics, name.as_bytes())?;
        self.store.flush()
    }

    /// Every topic's config, in name order.
    pub fn topics(&self) -> Result<Vec<(String, TopicConfig)>> {
        self.store
            .scan(Namespace::Topics)?
            .into_iter()
            .map(|(k, v)| {
                let name = String::from_utf8_lossy(&k).into_owned();
                let cfg = serde_json::from_slice(&v).map_err(|e| MetaError::BadValue {
                    namespace: Namespace::Topics,
                    key: name.clone(),
                    reason: e.to_string(),
                })?;
                Ok((name, cfg))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flushes from many threads at once (shared in a group commit) each cover their own
    /// writes: every key is there after a reopen.
    #[test]
    fn concurrent_flushes_cover_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = std::sync::Arc::new(SledMeta::open(dir.path()).expect("open"));
            let threads: Vec<_> = (0..8u32)
                .map(|t| {
                    let store = std::sync::Arc::clone(&store);
                    std::thread::spawn(move || {
                        for i in 0..50u32 {
                            let key = format!("{t}/{i}");
                            store
                                .put(Namespace::Kafka, key.as_bytes(), &i.to_le_bytes())
                                .expect("put");
                            store.flush().expect("flush");
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("thread");
            }
            let c = store.commits.lock().expect("commits");
            assert!(!c.running && c.finished == c.started && c.failed.is_none());
        }
        let store = SledMeta::open(dir.path()).expect("reopen");
        assert_eq!(store.scan(Namespace::Kafka).expect("scan").len(), 400);
    }

    #[test]
    fn topics_round_trip_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = TopicConfig {
            partitions: 3,
            ..TopicConfig::default()
        };
        {
            let meta = Meta::open(dir.path()).expect("open");
            meta.put_topic("a", &cfg).expect("put");
            meta.put_topic("b", &TopicConfig::default()).expect("put");
            meta.delete_topic("b").expect("delete");
        }
        let meta = Meta::open(dir.path()).expect("reopen");
        assert_eq!(meta.topics().expect("topics"), vec![("a".to_string(), cfg)]);
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // No flusher thread: it would keep the database locked for a moment after drop.
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(None)
                .open()
                .expect("sled");
            db.insert(b"format", &99u32.to_le_bytes()).expect("insert");
            db.flush().expect("flush");
        }
        match SledMeta::open(dir.path()) {
            Err(MetaError::UnsupportedVersion { found: 99, .. }) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer format was accepted"),
        }
    }
}
