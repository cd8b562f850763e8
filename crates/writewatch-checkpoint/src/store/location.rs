//! Store locations as URLs: a plain path or `file://` (a local store directory), or
//! `s3://bucket/prefix` (also `gs://`, `az://`) for a store on object storage.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::backend::Backend;
use super::Store;
use crate::error::{IoError, OpenError, ReadError, RemoteErrorKind};
use crate::format::Manifest;
use crate::remote::{split_url, ObjectBackend, RemoteOptions};

/// Where a store lives.
///
/// ```
/// use writewatch_checkpoint::StoreLocation;
/// assert_eq!("/tmp/ckpt".parse::<StoreLocation>()?, StoreLocation::Local("/tmp/ckpt".into()));
/// assert_eq!("file:///tmp/ckpt".parse::<StoreLocation>()?, StoreLocation::Local("/tmp/ckpt".into()));
/// assert!("s3://bucket/prefix".parse::<StoreLocation>()?.is_object_store());
/// assert!("ftp://host/x".parse::<StoreLocation>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreLocation {
    /// A local directory (a plain path, or a `file://` URL).
    Local(PathBuf),
    /// A prefix in an object store: `s3://bucket/prefix` (also `s3a://`), `gs://bucket/prefix`
    /// (feature `gcs`), `az://container/prefix` (feature `azure`). Configured from the
    /// environment the way the ecosystem expects: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP=true` for a plain-HTTP
    /// endpoint (and the `GOOGLE_*` / `AZURE_*` equivalents).
    Object(String),
}

const OBJECT_SCHEMES: [&str; 7] = ["s3", "s3a", "gs", "az", "abfs", "abfss", "azure"];

impl StoreLocation {
    /// Parses a location (see the type's documentation).
    pub fn parse(s: &str) -> Result<StoreLocation, OpenError> {
        let invalid = |reason: String| OpenError::InvalidLocation {
            location: s.to_string(),
            reason,
        };
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a file:// URL needs an absolute path (file:///dir)".into(),
                ));
            }
            return Ok(StoreLocation::Local(PathBuf::from(rest)));
        }
        let Some((scheme, _)) = s.split_once("://") else {
            return Ok(StoreLocation::Local(PathBuf::from(s)));
        };
        if !OBJECT_SCHEMES.contains(&scheme) {
            return Err(invalid(format!(
                "unsupported scheme `{scheme}://` (use a path, file://, s3://, gs:// or az://)"
            )));
        }
        split_url(s).map_err(invalid)?;
        Ok(StoreLocation::Object(s.to_string()))
    }

    /// Whether this is an object-storage location.
    pub fn is_object_store(&self) -> bool {
        matches!(self, StoreLocation::Object(_))
    }
}

impl std::str::FromStr for StoreLocation {
    type Err = OpenError;
    fn from_str(s: &str) -> Result<Self, OpenError> {
        StoreLocation::parse(s)
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Local(p) => write!(f, "{}", p.display()),
            StoreLocation::Object(u) => f.write_str(u),
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Open,
    OpenOrCreate,
    ReadOnly,
}

impl Store {
    /// Creates a new, empty store at `location` (a path, `file://`, `s3://`...; see
    /// [`StoreLocation`]). On object storage, fails if the prefix holds any object.
    pub fn create_url(location: &str) -> Result<Store, OpenError> {
        Self::open_location(location, &RemoteOptions::default(), Mode::Create)
    }

    /// Opens an existing store read-write (see [`Store::open`]; on object storage no lock
    /// is taken: a commit fails with [`ConflictError`](crate::ConflictError) if another
    /// writer committed since this handle read the manifest, and leftovers are not removed
    /// on open but by [`compact`](Store::compact)).
    pub fn open_url(location: &str) -> Result<Store, OpenError> {
        Self::open_location(location, &RemoteOptions::default(), Mode::Open)
    }

    /// Opens an existing store read-only.
    pub fn open_url_read_only(location: &str) -> Result<Store, OpenError> {
        Self::open_location(location, &RemoteOptions::default(), Mode::ReadOnly)
    }

    /// Opens the store at `location`, or creates it if there is none.
    pub fn open_or_create_url(location: &str) -> Result<Store, OpenError> {
        Self::open_location(location, &RemoteOptions::default(), Mode::OpenOrCreate)
    }

    /// [`open_url`](Self::open_url) (or, with `create`, [`open_or_create_url`](Self::open_or_create_url);
    /// with `read_only`, [`open_url_read_only`](Self::open_url_read_only)) with explicit
    /// object-storage options (ignored for a local store).
    pub fn open_url_with(
        location: &str,
        options: &RemoteOptions,
        create: bool,
        read_only: bool,
    ) -> Result<Store, OpenError> {
        let mode = match (create, read_only) {
            (_, true) => Mode::ReadOnly,
            (true, false) => Mode::OpenOrCreate,
            (false, false) => Mode::Open,
        };
        Self::open_location(location, options, mode)
    }

    /// [`create_url`](Self::create_url) with explicit object-storage options.
    pub fn create_url_with(location: &str, options: &RemoteOptions) -> Result<Store, OpenError> {
        Self::open_location(location, options, Mode::Create)
    }

    fn open_location(
        location: &str,
        options: &RemoteOptions,
        mode: Mode,
    ) -> Result<Store, OpenError> {
        let url = match StoreLocation::parse(location)? {
            StoreLocation::Local(dir) => {
                return match mode {
                    Mode::Create => Store::create(dir),
                    Mode::Open => Store::open(dir),
                    Mode::OpenOrCreate => Store::open_or_create(dir),
                    Mode::ReadOnly => Store::open_read_only(dir),
                }
            }
            StoreLocation::Object(url) => url,
        };
        let backend = ObjectBackend::new(&url, options.clone()).map_err(|reason| {
            OpenError::InvalidLocation {
                location: location.to_string(),
                reason,
            }
        })?;
        let backend = Arc::new(backend);
        let shown = PathBuf::from(&backend.url);
        let found = backend
            .get_manifest()
            .map_err(|e| remote_open_error(&backend.url, e))?;
        match (found, mode) {
            (Some(_), Mode::Create) => Err(OpenError::AlreadyExists(shown)),
            (None, Mode::Open | Mode::ReadOnly) => Err(OpenError::NotAStore(shown)),
            (None, Mode::Create | Mode::OpenOrCreate) => create_object_store(backend, shown),
            (Some((manifest, version)), _) => {
                backend.set_version(Some(version));
                Ok(Store::with_backend(
                    shown,
                    manifest,
                    Backend::Object(backend),
                    mode == Mode::ReadOnly,
                ))
            }
        }
    }
}

fn create_object_store(backend: Arc<ObjectBackend>, shown: PathBuf) -> Result<Store, OpenError> {
    // Never adopt a prefix holding someone else's objects: compact deletes objects there.
    if let Some(name) = backend
        .any_object()
        .map_err(|e| remote_open_error(&backend.url, e.into()))?
    {
        tracing::warn!("{}: refusing to create a store: holds {name}", backend.url);
        return Err(OpenError::NotEmpty(shown));
    }
    match backend.put_manifest(&Manifest::default(), true) {
        Ok(()) => {}
        Err(e) if e.remote_kind() == Some(RemoteErrorKind::Conflict) => {
            return Err(OpenError::AlreadyExists(shown))
        }
        Err(e) => return Err(remote_open_error(&backend.url, e.into())),
    }
    Ok(Store::with_backend(
        shown,
        Manifest::default(),
        Backend::Object(backend),
        false,
    ))
}

/// Wrong credentials and a missing bucket get their own variants.
fn remote_open_error(url: &str, e: ReadError) -> OpenError {
    match e {
        ReadError::Io(e) => open_io_error(url, e),
        ReadError::Corrupt(e) => OpenError::Corrupt(e),
    }
}

fn open_io_error(url: &str, e: IoError) -> OpenError {
    let url = url.to_string();
    match e.remote_kind() {
        Some(RemoteErrorKind::Unauthorized) => OpenError::Unauthorized { url, source: e },
        Some(RemoteErrorKind::NoSuchBucket) => OpenError::NoSuchBucket { url, source: e },
        _ => OpenError::Io(e),
    }
}
