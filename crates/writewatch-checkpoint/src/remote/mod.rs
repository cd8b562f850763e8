//! Stores on object storage (`s3://`, and `gs://` / `az://` with the `gcs` / `azure`
//! features) through the `object_store` crate.
//!
//! [`ObjectBackend`] owns a small tokio runtime (the store API stays synchronous) and the
//! `object_store` client of one `scheme://bucket/prefix`. The segment and manifest bytes are
//! the same as in a local store; only the commit protocol differs:
//!
//! * a segment is uploaded with a multipart upload straight under its final name
//!   ([`upload`]); it is invisible to readers until the manifest references it;
//! * the manifest is replaced with a conditional put on the ETag read when the store was
//!   opened (or last written): exactly one of two racing writers succeeds, the other gets
//!   [`ConflictError`](crate::ConflictError);
//! * restores fetch ranges in parallel ([`fetch`]).

pub(crate) mod frame;
mod providers;
pub(crate) mod upload;

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::error::{CorruptError, Corruption, IoError, ReadError, RemoteError, RemoteErrorKind};
use crate::format::{Manifest, MANIFEST_NAME};

/// Tuning of object-storage stores (part size, parallelism, retries).
///
/// ```
/// let opts = writewatch_checkpoint::RemoteOptions { part_size: 32 << 20, ..Default::default() };
/// assert_eq!(opts.upload_concurrency, 8);
/// ```
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Size of each multipart-upload part (default 16 MiB; at least 5 MiB, the S3 minimum).
    /// Memory used by an upload is about `part_size × (upload_concurrency + 1)`.
    pub part_size: usize,
    /// Parts uploaded concurrently (default 8).
    pub upload_concurrency: usize,
    /// Bytes fetched by one ranged request batch during a restore (default 8 MiB).
    pub fetch_batch: usize,
    /// Batches fetched concurrently during a restore (default 8). Memory used by a restore
    /// is about `fetch_batch × fetch_concurrency`.
    pub fetch_concurrency: usize,
    /// Retries of a failed request, with exponential backoff (default 10).
    pub max_retries: usize,
    /// Give up retrying a request after this long (default 3 minutes).
    pub retry_timeout: Duration,
    /// First backoff delay (default 100 ms; doubles on each retry, at most 15 s).
    pub initial_backoff: Duration,
    /// Extra `object_store` configuration, applied over the environment: keys as the
    /// provider's builder spells them (`aws_endpoint`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_region`, `aws_allow_http`, ...; `google_service_account`,
    /// `google_service_account_key`, ...; `azure_storage_account_name`,
    /// `azure_storage_account_key`, `azure_storage_endpoint`, ...). Empty by default: the
    /// environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ..., `GOOGLE_*`, `AZURE_*`) alone
    /// configures the store.
    pub config: Vec<(String, String)>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            part_size: 16 << 20,
            upload_concurrency: 8,
            fetch_batch: 8 << 20,
            fetch_concurrency: 8,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            initial_backoff: Duration::from_millis(100),
            config: Vec::new(),
        }
    }
}

/// The object-storage side of a store: client, prefix, runtime and manifest version.
pub(crate) struct ObjectBackend {
    rt: tokio::runtime::Runtime,
    pub(crate) store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// `scheme://bucket/prefix`, for messages and [`Store::path`](crate::Store::path).
    pub(crate) url: String,
    pub(crate) options: RemoteOptions,
    /// Version (ETag) of the manifest this handle last read at open or wrote.
    version: Mutex<Option<UpdateVersion>>,
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Why a URL cannot name a store (becomes [`OpenError::InvalidLocation`](crate::OpenError)).
pub(crate) type UrlProblem = String;

pub(super) fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if the process already installed a provider: then that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Splits `scheme://bucket/prefix` into (scheme, bucket, prefix).
pub(crate) fn split_url(url: &str) -> Result<(&str, &str, &str), UrlProblem> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "not a URL (expected scheme://bucket/prefix)".to_string())?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("no bucket name (expected scheme://bucket/prefix)".into());
    }
    Ok((scheme, bucket, prefix.trim_matches('/')))
}

/// Classifies an `object_store` error and wraps it in an [`io::Error`] carrying a
/// [`RemoteError`].
pub(crate) fn to_io(e: object_store::Error) -> io::Error {
    let (kind, io_kind) = classify(&e);
    io::Error::new(io_kind, RemoteError::new(kind, e))
}

/// What kind of failure an `object_store` error is.
fn classify(e: &object_store::Error) -> (RemoteErrorKind, io::ErrorKind) {
    use object_store::Error as E;
    let text = e.to_string();
    match e {
        E::NotFound { .. } if text.contains("NoSuchBucket") => {
            (RemoteErrorKind::NoSuchBucket, io::ErrorKind::NotFound)
        }
        E::NotFound { .. } => (RemoteErrorKind::NotFound, io::ErrorKind::NotFound),
        E::AlreadyExists { .. } | E::Precondition { .. } => {
            (RemoteErrorKind::Conflict, io::ErrorKind::AlreadyExists)
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => (
            RemoteErrorKind::Unauthorized,
            io::ErrorKind::PermissionDenied,
        ),
        _ if text.contains("NoSuchBucket") => {
            (RemoteErrorKind::NoSuchBucket, io::ErrorKind::NotFound)
        }
        _ if [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403 Forbidden",
        ]
        .iter()
        .any(|s| text.contains(s)) =>
        {
            (
                RemoteErrorKind::Unauthorized,
                io::ErrorKind::PermissionDenied,
            )
        }
        _ if [
            "error sending request",
            "connection",
            "Connection",
            "timed out",
            "after retries",
            "retries",
            "reset",
            "closed",
        ]
        .iter()
        .any(|s| text.contains(s)) =>
        {
            (RemoteErrorKind::Transport, io::ErrorKind::ConnectionAborted)
        }
        _ => (RemoteErrorKind::Other, io::ErrorKind::Other),
    }
}

impl ObjectBackend {
    /// Connects (lazily: no request is made here) to `url`.
    pub(crate) fn new(url: &str, options: RemoteOptions) -> Result<ObjectBackend, UrlProblem> {
        install_crypto();
        let (_, bucket, prefix) = split_url(url)?;
        let prefix_path = ObjPath::parse(prefix).map_err(|e| format!("bad prefix: {e}"))?;
        let store = providers::build_store(url, &options)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ww-objstore")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the I/O runtime: {e}"))?;
        let (scheme, _) = url.split_once("://").unwrap_or(("s3", ""));
        let url = if prefix.is_empty() {
            format!("{scheme}://{bucket}")
        } else {
            format!("{scheme}://{bucket}/{prefix_path}")
        };
        Ok(ObjectBackend {
            rt,
            store,
            prefix: prefix_path,
            url,
            options,
            version: Mutex::new(None),
        })
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The object path of `name` under the prefix.
    pub(crate) fn path(&self, name: &str) -> ObjPath {
        self.prefix.clone().join(name)
    }

    /// `url/name`, for messages.
    pub(crate) fn display(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}/{name}", self.url))
    }

    fn err(&self, op: &'static str, name: &str, e: object_store::Error) -> IoError {
        IoError::new(op, self.display(name), to_io(e))
    }

    /// Reads and decodes the manifest with its version; `None` if there is none.
    pub(crate) fn get_manifest(&self) -> Result<Option<(Manifest, UpdateVersion)>, ReadError> {
        let path = self.path(MANIFEST_NAME);
        let shown = self.display(MANIFEST_NAME);
        let r = self.block_on(async {
            let got = self.store.get(&path).await?;
            let meta = got.meta.clone();
            if meta.size > 64 << 20 {
                return Ok(Err(meta.size));
            }
            let bytes = got.bytes().await?;
            Ok(Ok((bytes, meta)))
        });
        let (bytes, meta) = match r {
            Ok(Ok(x)) => x,
            Ok(Err(size)) => {
                return Err(CorruptError::new(
                    &shown,
                    0,
                    Corruption::Field {
                        field: "file size",
                        value: size,
                        reason: "manifest larger than 64 MiB",
                    },
                )
                .into())
            }
            Err(object_store::Error::NotFound { .. }) => {
                // A missing bucket also answers 404: tell them apart by listing.
                self.list().map_err(ReadError::Io)?;
                return Ok(None);
            }
            Err(e) => return Err(self.err("read", MANIFEST_NAME, e).into()),
        };
        let m = Manifest::decode(&shown, &bytes)?;
        Ok(Some((
            m,
            UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            },
        )))
    }

    /// Remembers the manifest version this handle works from.
    pub(crate) fn set_version(&self, v: Option<UpdateVersion>) {
        *self.version.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// Writes the manifest: create-only when `create`, otherwise only if the stored
    /// manifest still has the version this handle read or wrote last.
    pub(crate) fn put_manifest(&self, m: &Manifest, create: bool) -> Result<(), IoError> {
        let mode = if create {
            PutMode::Create
        } else {
            let v = self
                .version
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match v {
                Some(v) if v.e_tag.is_some() || v.version.is_some() => PutMode::Update(v),
                _ => {
                    return Err(IoError::new(
                        "replace",
                        self.display(MANIFEST_NAME),
                        io::Error::other("the object store returned no ETag for the manifest"),
                    ))
                }
            }
        };
        let path = self.path(MANIFEST_NAME);
        let payload = PutPayload::from(m.encode());
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let r = self.block_on(self.store.put_opts(&path, payload, opts));
        match r {
            Ok(p) => {
                self.set_version(Some(UpdateVersion {
                    e_tag: p.e_tag,
                    version: p.version,
                }));
                Ok(())
            }
            Err(e) => Err(self.err("replace", MANIFEST_NAME, e)),
        }
    }

    /// The objects directly under the prefix: (name, size).
    pub(crate) fn list(&self) -> Result<Vec<(String, u64)>, IoError> {
        let prefix = &self.prefix;
        let r = self.block_on(async {
            let list = self
                .store
                .list_with_delimiter(Some(prefix).filter(|p| !p.as_ref().is_empty()))
                .await?;
            Ok::<_, object_store::Error>(list.objects)
        });
        let objects = r.map_err(|e| self.err("list", "", e))?;
        Ok(objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(|n| (n.to_string(), o.size)))
            .collect())
    }

    /// Deletes `name` (absent is fine).
    pub(crate) fn delete(&self, name: &str) -> Result<(), IoError> {
        match self.block_on(self.store.delete(&self.path(name))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", name, e)),
        }
    }

    /// Size of object `name`; `Ok(None)` if it does not exist.
    pub(crate) fn size(&self, name: &str) -> Result<Option<u64>, IoError> {
        match self.block_on(self.store.head(&self.path(name))) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("stat", name, e)),
        }
    }

    /// Reads `range` of object `name` (fewer bytes if the object is shorter).
    pub(crate) fn get_range(&self, name: &str, range: Range<u64>) -> io::Result<Bytes> {
        self.block_on(self.store.get_range(&self.path(name), range))
            .map_err(to_io)
    }

    /// Lists every object under the prefix, recursively (to refuse foreign objects).
    pub(crate) fn any_object(&self) -> Result<Option<String>, IoError> {
        let prefix = &self.prefix;
        let r = self.block_on(async {
            let mut s = self
                .store
                .list(Some(prefix).filter(|p| !p.as_ref().is_empty()));
            s.try_next().await
        });
        r.map(|o| o.map(|o| o.location.to_string()))
            .map_err(|e| self.err("list", "", e))
    }
}
