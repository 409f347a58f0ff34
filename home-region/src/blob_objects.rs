//! An [`ObjectStore`] over the region's own store (`fdb_layers::objects`): where a region with a
//! standby keeps its blobs (`[blobs] keep_in = "store"`). Local files are never shipped to a
//! standby, so a failover would lose every photo and history snapshot in them; objects in the
//! store are shipped with every commit and carried by a full copy, and the promoted standby
//! serves them from its copy. A unit's object is acknowledged, as any commit, only once the
//! standby holds it, so the upload's recorded offset never runs ahead of the standby.
//!
//! It implements what the blob store uses: whole puts of at most
//! [`fdb_layers::objects::OBJECT_BYTES_MAX`] (a blob unit is 1 MiB), gets (with ranges), deletes
//! and listings. Multipart uploads and copies are [`object_store::Error::NotImplemented`]; the
//! blob store never asks for them.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fdb_layers::objects::{self, ObjectInfo};
use fdb_layers::{Database, StoreError};
use futures_util::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use relay_proto::clock::Clock;

use crate::limits::BLOB_OBJECTS_LIST_PAGE;

/// The name errors give this store.
const STORE: &str = "relay store objects";

/// Blob objects kept in the region's store.
#[derive(Clone)]
pub struct StoreObjects {
    db: Database,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StoreObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(STORE)
    }
}

impl std::fmt::Display for StoreObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(STORE)
    }
}

impl StoreObjects {
    /// Objects in `db`, stamped with `clock`'s time when written.
    pub fn new(db: Database, clock: Arc<dyn Clock>) -> Arc<StoreObjects> {
        Arc::new(StoreObjects { db, clock })
    }

    /// Every object under `prefix`, in path order, a page per transaction.
    async fn all_under(&self, prefix: &str) -> object_store::Result<Vec<ObjectInfo>> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .db
                .transact(|tx| {
                    let after = after.clone();
                    async move {
                        objects::list(&tx, prefix, after.as_deref(), BLOB_OBJECTS_LIST_PAGE).await
                    }
                })
                .await
                .map_err(failure)?;
            let (page, more) = page;
            after = page.last().map(|info| info.path.clone());
            found.extend(page);
            if !more || after.is_none() {
                return Ok(found);
            }
        }
    }
}

fn failure(error: StoreError) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(error),
    }
}

fn not_implemented(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.to_owned(),
        implementer: STORE.to_owned(),
    }
}

fn meta_of(info: &ObjectInfo) -> ObjectMeta {
    let written = i64::try_from(info.written_ms).unwrap_or(i64::MAX);
    ObjectMeta {
        location: Path::from(info.path.as_str()),
        last_modified: DateTime::<Utc>::from_timestamp_millis(written).unwrap_or_default(),
        size: info.size_bytes,
        e_tag: Some(format!("\"{}-{}\"", info.written_ms, info.size_bytes)),
        version: None,
    }
}

#[async_trait]
impl ObjectStore for StoreObjects {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if opts.mode != object_store::PutMode::Overwrite {
            return Err(not_implemented("put_opts with a mode other than overwrite"));
        }
        let bytes: Bytes = payload.into();
        let path = location.as_ref().to_owned();
        if let Some(refusal) = objects::refusal(&path, bytes.len()) {
            return Err(object_store::Error::Generic {
                store: STORE,
                source: refusal.into(),
            });
        }
        let now_ms = self.clock.now_ms();
        self.db
            .transact(|tx| {
                let (path, bytes) = (path.clone(), bytes.clone());
                async move { objects::put(&tx, &path, &bytes, now_ms).await }
            })
            .await
            .map_err(failure)?;
        Ok(PutResult {
            e_tag: Some(format!("\"{now_ms}-{}\"", bytes.len())),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(not_implemented("put_multipart_opts"))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let path = location.as_ref().to_owned();
        // A head reads the object's size only, not its chunks.
        let head = options.head;
        let found = self
            .db
            .transact(|tx| {
                let path = path.clone();
                async move {
                    if head {
                        let info = objects::info(&tx, &path).await?;
                        return Ok(info.map(|info| (info, Vec::new())));
                    }
                    objects::get(&tx, &path).await
                }
            })
            .await
            .map_err(failure)?;
        let Some((info, bytes)) = found else {
            return Err(object_store::Error::NotFound {
                path,
                source: "no such object in the region's store".into(),
            });
        };
        let meta = meta_of(&info);
        options.check_preconditions(&meta)?;
        let bytes = Bytes::from(bytes);
        let (range, data) = match &options.range {
            _ if head => (0..meta.size, Bytes::new()),
            Some(range) => {
                let range =
                    range
                        .as_range(meta.size)
                        .map_err(|source| object_store::Error::Generic {
                            store: STORE,
                            source: Box::new(source),
                        })?;
                let (start, end) = (
                    usize::try_from(range.start).unwrap_or(usize::MAX),
                    usize::try_from(range.end).unwrap_or(usize::MAX),
                );
                (
                    range,
                    bytes.slice(start.min(bytes.len())..end.min(bytes.len())),
                )
            }
            None => (0..meta.size, bytes),
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(data) }).boxed()),
            meta,
            range,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let db = self.db.clone();
        locations
            .then(move |location| {
                let db = db.clone();
                async move {
                    let location = location?;
                    let path = location.as_ref().to_owned();
                    db.transact(|tx| {
                        let path = path.clone();
                        async move { objects::delete(&tx, &path) }
                    })
                    .await
                    .map_err(failure)?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let store = self.clone();
        let prefix = list_prefix(prefix);
        stream::once(async move { store.all_under(&prefix).await })
            .flat_map(|listed| match listed {
                Ok(found) => stream::iter(
                    found
                        .iter()
                        .map(|info| Ok(meta_of(info)))
                        .collect::<Vec<_>>(),
                )
                .boxed(),
                Err(error) => stream::once(async move { Err(error) }).boxed(),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let base = prefix.cloned().unwrap_or_default();
        let mut common_prefixes = BTreeSet::new();
        let mut objects = Vec::new();
        for info in self.all_under(&list_prefix(prefix)).await? {
            let location = Path::from(info.path.as_str());
            let Some(mut parts) = location.prefix_match(&base) else {
                continue;
            };
            let Some(first) = parts.next() else {
                continue;
            };
            if parts.next().is_some() {
                common_prefixes.insert(base.clone().join(first));
            } else {
                objects.push(meta_of(&info));
            }
        }
        Ok(ListResult {
            common_prefixes: common_prefixes.into_iter().collect(),
            objects,
            extensions: Default::default(),
        })
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(not_implemented("copy_opts"))
    }
}

/// The key prefix of the objects under `prefix`: its path and a delimiter (a path names no
/// object under itself).
fn list_prefix(prefix: Option<&Path>) -> String {
    match prefix {
        Some(prefix) if !prefix.as_ref().is_empty() => format!("{}/", prefix.as_ref()),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use fdb_layers::MemoryOptions;
    use object_store::ObjectStoreExt;
    use relay_proto::clock::SystemClock;

    use super::*;

    fn objects() -> Arc<StoreObjects> {
        let db = Database::memory(MemoryOptions::default()).expect("opens");
        StoreObjects::new(db, Arc::new(SystemClock))
    }

    #[tokio::test]
    async fn objects_put_read_list_and_delete_as_the_blob_store_uses_them() {
        let store = objects();
        let unit: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        store
            .put(&Path::from("aa/0"), PutPayload::from(unit.clone()))
            .await
            .expect("puts");
        store
            .put(&Path::from("aa/1"), PutPayload::from(vec![7; 10]))
            .await
            .expect("puts");
        store
            .put(&Path::from("bb/0"), PutPayload::from(vec![1; 3]))
            .await
            .expect("puts");
        let head = store.head(&Path::from("aa/0")).await.expect("a head");
        assert_eq!(head.size, unit.len() as u64);
        let read = store.get(&Path::from("aa/0")).await.expect("gets");
        assert_eq!(read.meta.size, unit.len() as u64);
        assert_eq!(read.bytes().await.expect("bytes").to_vec(), unit);
        let ranged = store
            .get_range(&Path::from("aa/1"), 2..5)
            .await
            .expect("a range");
        assert_eq!(ranged.to_vec(), vec![7; 3]);

        let top = store.list_with_delimiter(None).await.expect("lists");
        assert_eq!(
            top.common_prefixes,
            vec![Path::from("aa"), Path::from("bb")]
        );
        assert!(top.objects.is_empty());
        let folder = store
            .list_with_delimiter(Some(&Path::from("aa")))
            .await
            .expect("lists");
        let names: Vec<_> = folder
            .objects
            .iter()
            .map(|o| o.location.to_string())
            .collect();
        assert_eq!(names, vec!["aa/0", "aa/1"]);
        let all: Vec<_> = store.list(None).collect::<Vec<_>>().await;
        assert_eq!(all.len(), 3);

        store.delete(&Path::from("aa/0")).await.expect("deletes");
        let missing = store.get(&Path::from("aa/0")).await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );
        // Deleting again is harmless.
        store.delete(&Path::from("aa/0")).await.expect("deletes");
    }

    #[tokio::test]
    async fn an_object_larger_than_the_store_keeps_is_refused_plainly() {
        let store = objects();
        let refused = store
            .put(
                &Path::from("big/0"),
                PutPayload::from(vec![0; fdb_layers::objects::OBJECT_BYTES_MAX + 1]),
            )
            .await;
        let text = refused.expect_err("refused").to_string();
        assert!(text.contains("at most"), "{text}");
    }
}
