//! Mirror cursors: per mirror, topic and partition, the next local offset to send. Kept in
//! memory as sends are acknowledged and written to `meta` (and flushed) at most every
//! `cursor_flush`, so a crash re-sends at most that interval's records and never leaves a gap,
//! and the card is not fsynced per batch.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::meta::{MetaError, MetaStore, Namespace};

/// (mirror, topic, partition).
pub type CursorKey = (String, String, u32);

fn key(k: &CursorKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.0.len() + k.1.len() + 6);
    v.extend_from_slice(k.0.as_bytes());
    v.push(0);
    v.extend_from_slice(k.1.as_bytes());
    v.push(0);
    v.extend_from_slice(&k.2.to_be_bytes());
    v
}

/// Every cursor, with the ones changed since the last flush.
#[derive(Debug, Default)]
pub struct Cursors {
    inner: Mutex<(BTreeMap<CursorKey, u64>, BTreeMap<CursorKey, u64>)>,
}

impl Cursors {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (BTreeMap<CursorKey, u64>, BTreeMap<CursorKey, u64>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored cursor (from memory, else `meta`), `None` if this partition was never sent.
    pub fn get(&self, meta: &dyn MetaStore, k: &CursorKey) -> Result<Option<u64>, MetaError> {
        if let Some(v) = self.lock().0.get(k) {
            return Ok(Some(*v));
        }
        let v = meta
            .get(Namespace::MirrorCursors, &key(k))?
            .and_then(|b| b.as_slice().try_into().ok().map(u64::from_le_bytes));
        if let Some(v) = v {
            self.lock().0.insert(k.clone(), v);
        }
        Ok(v)
    }

    /// Records that everything before `next` was acknowledged upstream.
    pub fn advance(&self, k: &CursorKey, next: u64) {
        let mut g = self.lock();
        g.0.insert(k.clone(), next);
        g.1.insert(k.clone(), next);
    }

    /// Writes and flushes the cursors changed since the last call; returns every cursor as it
    /// now is on disk.
    pub fn flush(&self, meta: &dyn MetaStore) -> Result<BTreeMap<CursorKey, u64>, MetaError> {
        let (dirty, all) = {
            let mut g = self.lock();
            (std::mem::take(&mut g.1), g.0.clone())
        };
        if dirty.is_empty() {
            return Ok(all);
        }
        for (k, v) in &dirty {
            if let Err(e) = meta.put(Namespace::MirrorCursors, &key(k), &v.to_le_bytes()) {
                // Keep them for the next try.
                let mut g = self.lock();
                for (k, v) in dirty {
                    g.1.entry(k).or_insert(v);
                }
                return Err(e);
            }
        }
        meta.flush()?;
        Ok(all)
    }
}
