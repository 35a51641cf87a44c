//! The in-memory storage of one route's cache, as a pingora-cache `Storage`: complete objects
//! only (a fill becomes visible when its body has ended; the cache lock makes the other
//! requests wait for it), bodies shared (`Bytes`) between the store and every hit, and each
//! object's weight (body + serialized header + a fixed overhead) what the eviction manager
//! bounds.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::{Error, ErrorType, Result};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};

/// What an object costs beside its body and header: the map slots, the LRU node, the key.
pub const OBJECT_OVERHEAD: usize = 256;

/// One stored response.
struct Stored {
    /// `CacheMeta::serialize`: (internal, header).
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    weight: usize,
}

/// Objects by primary key, then by variance (None: the primary slot).
type Objects = HashMap<HashBinary, HashMap<Option<HashBinary>, Stored>>;

/// The objects of one route's cache.
#[derive(Default)]
pub struct Store {
    objects: RwLock<Objects>,
    /// The sum of the stored objects' weights.
    bytes: AtomicUsize,
}

fn weight(meta: &(Vec<u8>, Vec<u8>), body: usize) -> usize {
    body + meta.0.len() + meta.1.len() + OBJECT_OVERHEAD
}

impl Store {
    fn read(&self) -> RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The weight of what is stored now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The number of stored objects.
    #[cfg(test)]
    pub fn objects(&self) -> usize {
        self.read().values().map(HashMap::len).sum()
    }

    fn insert(&self, primary: HashBinary, variance: Option<HashBinary>, stored: Stored) {
        let added = stored.weight;
        let old = self
            .write()
            .entry(primary)
            .or_default()
            .insert(variance, stored);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        if let Some(old) = old {
            self.bytes.fetch_sub(old.weight, Ordering::Relaxed);
        }
    }

    /// Remove one object; whether it was there.
    fn remove(&self, primary: &HashBinary, variance: Option<HashBinary>) -> bool {
        let mut objects = self.write();
        let Some(slots) = objects.get_mut(primary) else {
            return false;
        };
        let removed = slots.remove(&variance);
        if slots.is_empty() {
            objects.remove(primary);
        }
        drop(objects);
        removed.is_some_and(|s| {
            self.bytes.fetch_sub(s.weight, Ordering::Relaxed);
            true
        })
    }

    /// Remove every variant stored under `primary`: the keys removed (for the eviction
    /// manager).
    pub fn remove_primary(&self, primary: &HashBinary) -> Vec<CompactCacheKey> {
        let removed = self.write().remove(primary).unwrap_or_default();
        removed
            .into_iter()
            .map(|(variance, s)| {
                self.bytes.fetch_sub(s.weight, Ordering::Relaxed);
                compact(*primary, variance)
            })
            .collect()
    }

    /// Remove everything: the keys removed.
    pub fn clear(&self) -> Vec<CompactCacheKey> {
        let all = std::mem::take(&mut *self.write());
        all.into_iter()
            .flat_map(|(primary, slots)| {
                slots.into_iter().map(move |(variance, s)| {
                    self.bytes.fetch_sub(s.weight, Ordering::Relaxed);
                    compact(primary, variance)
                })
            })
            .collect()
    }
}

/// The eviction manager's key of an object.
pub fn compact(primary: HashBinary, variance: Option<HashBinary>) -> CompactCacheKey {
    CompactCacheKey {
        primary,
        variance: variance.map(Box::new),
        user_tag: "".into(),
    }
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let found = self
            .read()
            .get(&key.primary_bin())
            .and_then(|slots| slots.get(&key.variance_bin()))
            .map(|s| (s.meta.clone(), s.body.clone(), s.weight));
        let Some((meta, body, weight)) = found else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&meta.0, &meta.1)?;
        let end = body.len();
        let hit = Hit {
            body,
            start: 0,
            end,
            done: false,
            weight,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Fill {
            store: self,
            primary: key.primary_bin(),
            variance: key.variance_bin(),
            meta: meta.serialize()?,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        Ok(if self.remove(&key.primary_bin(), key.variance_bin()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let meta = meta.serialize()?;
        let mut objects = self.write();
        let Some(stored) = objects
            .get_mut(&key.primary_bin())
            .and_then(|slots| slots.get_mut(&key.variance_bin()))
        else {
            // Evicted or purged meanwhile: nothing to update.
            return Ok(false);
        };
        let new = weight(&meta, stored.body.len());
        let old = std::mem::replace(&mut stored.weight, new);
        stored.meta = meta;
        drop(objects);
        self.bytes.fetch_add(new, Ordering::Relaxed);
        self.bytes.fetch_sub(old, Ordering::Relaxed);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A hit: the stored body, or the byte range asked for.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
    weight: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(self
            .body
            .get(self.start..self.end)
            .map(|b| self.body.slice_ref(b)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} is past the body ({})", self.body.len()),
            );
        }
        self.start = start;
        self.end = end
            .map_or(self.body.len(), |e| e.min(self.body.len()))
            .max(start);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill: the body collected until it ends, then stored whole.
struct Fill {
    store: &'static Store,
    primary: HashBinary,
    variance: Option<HashBinary>,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Fill {
            store,
            primary,
            variance,
            meta,
            body,
        } = *self;
        let weight = weight(&meta, body.len());
        store.insert(
            primary,
            variance,
            Stored {
                meta,
                body: body.freeze(),
                weight,
            },
        );
        Ok(MissFinishType::Created(weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn meta() -> CacheMeta {
        let header = ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    #[tokio::test]
    async fn a_fill_is_stored_whole_weighed_and_removed_with_its_variants() {
        let store: &'static Store = Box::leak(Box::default());
        let span = pingora_cache::trace::Span::inactive().handle();
        let key = CacheKey::new("GET http://a/x", "");
        let mut varied = key.clone();
        varied.set_variance_key([7; 16]);
        for (k, body) in [(&key, "hello"), (&varied, "bonjour")] {
            let mut fill = store.get_miss_handler(k, &meta(), &span).await.unwrap();
            fill.write_body(Bytes::from(&body[..2]), false)
                .await
                .unwrap();
            assert!(
                store.lookup(k, &span).await.unwrap().is_none(),
                "not before it ends"
            );
            fill.write_body(Bytes::from(&body[2..]), true)
                .await
                .unwrap();
            let MissFinishType::Created(w) = fill.finish().await.unwrap() else {
                panic!("created");
            };
            assert!(w > body.len() + OBJECT_OVERHEAD, "{w}");
        }
        let (_, mut hit) = store.lookup(&varied, &span).await.unwrap().unwrap();
        hit.seek(3, Some(5)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "jo");
        assert!(hit.read_body().await.unwrap().is_none());
        assert_eq!(store.objects(), 2);
        assert!(store.bytes() > 12 + 2 * OBJECT_OVERHEAD);
        assert_eq!(store.remove_primary(&key.primary_bin()).len(), 2);
        assert_eq!((store.objects(), store.bytes()), (0, 0));
        assert!(!store.update_meta(&key, &meta(), &span).await.unwrap());
    }
}
