//! Error types, one enum per operation.
//!
//! Every I/O failure keeps the original [`std::io::Error`] (and therefore the
//! errno, see [`IoError::raw_os_error`]) together with the operation and the
//! path it was applied to; the original error is the [`source`](std::error::Error::source),
//! not repeated in the message (print the chain to see both). Every detected corruption is
//! a [`CorruptError`] naming the file and the byte offset of the offending structure; every
//! error type tells it apart from other failures with [`CheckpointError::is_corruption`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An I/O failure on a given path, keeping the underlying [`io::Error`].
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct IoError {
    /// What was being done (`"open"`, `"write"`, `"fsync"`, ...).
    pub op: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The original error (with its errno, if any).
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// Builds an error from an operation name, a path and the original error.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }

    /// The OS error number (`ENOSPC`, `EIO`, ...), if this came from a syscall.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// For a store on object storage: what kind of remote failure this was (wrong
    /// credentials, missing bucket, connection lost after the retries...). `None` for a
    /// local I/O error.
    pub fn remote_kind(&self) -> Option<RemoteErrorKind> {
        self.source
            .get_ref()
            .and_then(|r| r.downcast_ref::<RemoteError>())
            .map(|r| r.kind)
    }
}

/// What went wrong talking to an object store (the kind of a [`RemoteError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The credentials were refused (wrong `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`,
    /// or no permission on the bucket).
    Unauthorized,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The object does not exist.
    NotFound,
    /// A conditional request failed (the object changed or already exists).
    Conflict,
    /// The connection failed or dropped, and the retries (with backoff) were exhausted.
    Transport,
    /// Any other failure reported by the object store.
    Other,
}

impl fmt::Display for RemoteErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RemoteErrorKind::Unauthorized => "access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the provider's equivalent)",
            RemoteErrorKind::NoSuchBucket => "the bucket does not exist: create it or fix the URL",
            RemoteErrorKind::NotFound => "no such object",
            RemoteErrorKind::Conflict => "the object was changed by someone else",
            RemoteErrorKind::Transport => "connection to the object store failed or dropped (after retries with backoff): check AWS_ENDPOINT_URL and the network",
            RemoteErrorKind::Other => "object store request failed",
        })
    }
}

/// A failure reported by an object store (the [`source`](std::error::Error::source) of the
/// [`std::io::Error`] inside an [`IoError`]); the store client's own error is its source.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct RemoteError {
    /// The classification.
    pub kind: RemoteErrorKind,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl RemoteError {
    pub(crate) fn new(
        kind: RemoteErrorKind,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RemoteError {
            kind,
            source: Box::new(source),
        }
    }
}

/// Another writer replaced the manifest of an object-storage store after this handle read
/// it: this handle's change was not committed (its segment, if any, was removed). Reopen
/// the store to see the other writer's chain, then retry.
#[derive(Debug, thiserror::Error)]
#[error("{url}: another writer committed to this store first (the manifest changed since it was read); nothing was committed: reopen the store and retry")]
pub struct ConflictError {
    /// The store URL.
    pub url: String,
}

/// Helper to attach an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|e| IoError::new(op, path, e))
    }
}

/// What exactly is wrong with a corrupt file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// The file is shorter than a structure it must contain.
    Truncated {
        /// Bytes needed from the offset on.
        needed: u64,
        /// Actual file length.
        file_len: u64,
    },
    /// The magic bytes do not match.
    BadMagic,
    /// The format version is not one this library reads.
    UnsupportedVersion {
        /// Version found on disk.
        found: u32,
    },
    /// A checksum does not match the bytes it covers.
    Checksum {
        /// Which structure ("header", "index", "footer", "run data", "manifest").
        what: &'static str,
        /// Checksum stored on disk.
        stored: u32,
        /// Checksum computed from the bytes.
        computed: u32,
    },
    /// A field has a value outside its valid range or inconsistent with
    /// another field or the file size.
    Field {
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u64,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Compressed run data does not decompress to the expected length.
    Decompress {
        /// Decoder message.
        message: String,
    },
    /// The segment does not match what the manifest says about it.
    ManifestMismatch {
        /// Field that differs.
        field: &'static str,
        /// Value in the manifest.
        manifest: u64,
        /// Value in the segment.
        segment: u64,
    },
    /// The chain is broken (missing parent, wrong order, geometry change...).
    Chain {
        /// Description.
        reason: String,
    },
    /// A file the manifest refers to does not exist.
    Missing,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::Truncated { needed, file_len } => {
                write!(
                    f,
                    "truncated: need {needed} bytes, file is {file_len} bytes"
                )
            }
            Corruption::BadMagic => write!(f, "bad magic"),
            Corruption::UnsupportedVersion { found } => {
                write!(f, "unsupported format version {found}")
            }
            Corruption::Checksum {
                what,
                stored,
                computed,
            } => write!(
                f,
                "{what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Corruption::Field {
                field,
                value,
                reason,
            } => write!(f, "invalid {field} = {value}: {reason}"),
            Corruption::Decompress { message } => write!(f, "bad compressed data: {message}"),
            Corruption::ManifestMismatch {
                field,
                manifest,
                segment,
            } => write!(
                f,
                "segment {field} = {segment} but manifest says {manifest}"
            ),
            Corruption::Chain { reason } => write!(f, "broken chain: {reason}"),
            Corruption::Missing => write!(f, "file is missing"),
        }
    }
}

/// A corrupt or unreadable store file: which file, at which offset, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: at offset {offset}: {kind}", path.display())]
pub struct CorruptError {
    /// The file concerned.
    pub path: PathBuf,
    /// Byte offset of the offending structure or field.
    pub offset: u64,
    /// What is wrong.
    pub kind: Corruption,
}

impl CorruptError {
    pub(crate) fn new(path: &Path, offset: u64, kind: Corruption) -> Self {
        CorruptError {
            path: path.to_path_buf(),
            offset,
            kind,
        }
    }
}

/// Errors reading a segment or manifest file: I/O or corruption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file is corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// Errors from [`Store::create`](crate::Store::create) and
/// [`Store::open`](crate::Store::open).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The manifest is corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// The directory has no manifest (not a store).
    #[error("{}: not a checkpoint store (no MANIFEST)", .0.display())]
    NotAStore(PathBuf),
    /// `create` on a directory that already holds a store.
    #[error("{}: a checkpoint store already exists here", .0.display())]
    AlreadyExists(PathBuf),
    /// Another process holds the store's lock.
    #[error("{}: store is locked by another process", .0.display())]
    Locked(PathBuf),
    /// `create` on an existing directory that holds files but no store: a store is only made
    /// in a new or empty directory, so no unrelated file is ever removed or overwritten.
    #[error("{}: directory is not empty and holds no checkpoint store (no MANIFEST); name a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    /// The location is not a path nor a supported URL.
    #[error("{location}: not a store location: {reason}")]
    InvalidLocation {
        /// What was given.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object store refused the credentials.
    #[error("{url}: access denied by the object store: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the provider's credentials)")]
    Unauthorized {
        /// The store URL.
        url: String,
        /// The failed request.
        #[source]
        source: IoError,
    },
    /// The bucket of the URL does not exist.
    #[error("{url}: the bucket does not exist: create it first or fix the URL")]
    NoSuchBucket {
        /// The store URL.
        url: String,
        /// The failed request.
        #[source]
        source: IoError,
    },
}

/// Errors while writing a checkpoint segment.
///
/// When any of these is returned, the previously committed chain is intact and
/// the temporary file has been removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// An I/O error (ENOSPC, EIO, ...) on the store.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The [`PageSource`](crate::PageSource) failed to provide a page.
    #[error("reading page {page} from the source")]
    Source {
        /// Page index.
        page: u64,
        /// The source's error.
        #[source]
        source: io::Error,
    },
    /// The caller's input is invalid (bad run list, page order, sizes...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The epoch is not greater than the newest epoch in the store.
    #[error("epoch {epoch} is not after the newest epoch {head} in the store")]
    EpochNotIncreasing {
        /// Requested epoch.
        epoch: u64,
        /// Newest epoch in the store.
        head: u64,
    },
    /// A delta was requested but the store has no segment yet.
    #[error("cannot write a delta into an empty store: write a base first")]
    NoParent,
    /// Page size or region length differs from the store's.
    #[error("geometry mismatch: store has page size {store_page_size} x {store_pages} pages, source has {page_size} x {pages}")]
    GeometryMismatch {
        /// Store page size.
        store_page_size: usize,
        /// Store page count.
        store_pages: u64,
        /// Requested page size.
        page_size: usize,
        /// Requested page count.
        pages: u64,
    },
    /// The store was opened read-only.
    #[error("store is open read-only")]
    ReadOnly,
    /// Another writer committed to the (object-storage) store first.
    #[error(transparent)]
    Conflict(#[from] ConflictError),
}

/// Errors from the restore operations.
///
/// On any error nothing is handed back as success; when restoring into caller
/// memory the buffer content is unspecified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A store file is corrupt (checksum, structure, chain).
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// The epoch is not in the store.
    #[error("epoch {0} is not in the store")]
    NoSuchEpoch(u64),
    /// The store is empty.
    #[error("the store has no checkpoint")]
    Empty,
    /// The destination length differs from the region length.
    #[error("destination is {got} bytes, region is {expected} bytes")]
    SizeMismatch {
        /// Region length.
        expected: u64,
        /// Destination length.
        got: u64,
    },
    /// The destination of [`Store::restore_to_file`](crate::Store::restore_to_file) exists
    /// and is not a regular file (a device node, directory, FIFO, socket or symbolic link):
    /// it is left untouched.
    #[error("{}: refusing to replace a {kind}: restore writes regular files only; name a new path or an existing regular file", path.display())]
    NotARegularFile {
        /// The destination.
        path: PathBuf,
        /// What it is ("character device", "directory", ...).
        kind: &'static str,
    },
    /// Creating the mapping failed (`mmap` errno kept).
    #[error("mapping {len} bytes")]
    Map {
        /// Requested length.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Errors from [`Store::compact`](crate::Store::compact).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// Reading the existing chain failed.
    #[error(transparent)]
    Read(#[from] RestoreError),
    /// Writing the new base failed (old chain intact).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Updating the manifest or deleting old files failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Errors from [`Store::retain_bases`](crate::Store::retain_bases) and
/// [`Store::discard_after`](crate::Store::discard_after).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetainError {
    /// Manifest update failed (the previous manifest stays in force).
    #[error(transparent)]
    Io(#[from] IoError),
    /// Invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The store was opened read-only.
    #[error("store is open read-only")]
    ReadOnly,
    /// Another writer committed to the (object-storage) store first.
    #[error(transparent)]
    Conflict(#[from] ConflictError),
}

/// A failed manifest commit (crate-internal; converted into each operation's error).
#[derive(Debug)]
pub(crate) enum CommitError {
    Io(IoError),
    Conflict(ConflictError),
}

impl From<IoError> for CommitError {
    fn from(e: IoError) -> Self {
        CommitError::Io(e)
    }
}

macro_rules! from_commit_error {
    ($($t:ident),+) => {$(
        impl From<CommitError> for $t {
            fn from(e: CommitError) -> Self {
                match e {
                    CommitError::Io(e) => $t::Io(e),
                    CommitError::Conflict(e) => $t::Conflict(e),
                }
            }
        }
    )+};
}

from_commit_error!(WriteError, RetainError);

/// Errors that prevent [`Store::verify`](crate::Store::verify) from running at
/// all (problems found while verifying are listed in the report instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Re-reading the manifest failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The manifest is corrupt.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// `From<ReadError>` for the operation errors that have an `Io` and a `Corrupt` variant:
/// a [`ReadError`] is one of the two.
macro_rules! from_read_error {
    ($($t:ident),+) => {$(
        impl From<ReadError> for $t {
            fn from(e: ReadError) -> Self {
                match e {
                    ReadError::Io(e) => $t::Io(e),
                    ReadError::Corrupt(e) => $t::Corrupt(e),
                }
            }
        }
    )+};
}

from_read_error!(OpenError, RestoreError, VerifyError);

/// What every error of this crate tells: whether it reports a corrupt store (a checksum,
/// structure or chain problem, or a missing file the manifest refers to) or another failure
/// (I/O, a lock, a bad argument...). A command-line tool maps the first to its
/// "corruption" exit status.
pub trait CheckpointError: std::error::Error {
    /// Whether the error reports a corrupt store file.
    fn is_corruption(&self) -> bool;
}

/// Implements [`CheckpointError`] for each type: a corruption is a value matching the
/// pattern given (no pattern: the type never reports one).
macro_rules! corruption_when {
    ($($t:ty $(=> $p:pat)?),+ $(,)?) => {$(
        impl CheckpointError for $t {
            fn is_corruption(&self) -> bool {
                false $(|| matches!(self, $p))?
            }
        }
    )+};
}

corruption_when!(
    CorruptError => _,
    ReadError => ReadError::Corrupt(_),
    OpenError => OpenError::Corrupt(_),
    RestoreError => RestoreError::Corrupt(_),
    VerifyError => VerifyError::Corrupt(_),
    CompactError => CompactError::Read(RestoreError::Corrupt(_)),
    WriteError,
    RetainError,
);
