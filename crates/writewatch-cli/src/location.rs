//! Opening the store named on the command line: a directory, or a URL (`file://`,
//! `s3://bucket/prefix`, ...; see `writewatch_checkpoint::StoreLocation`). Object stores are
//! configured from the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`).

use std::path::Path;

use writewatch_checkpoint::{OpenError, Store};

/// The location as a URL, if it is one (a path that is not valid UTF-8 is a path).
fn as_url(dir: &Path) -> Option<&str> {
    dir.to_str().filter(|s| s.contains("://"))
}

/// Opens the store read-only.
pub(crate) fn open_read_only(dir: &Path) -> Result<Store, OpenError> {
    match as_url(dir) {
        Some(url) => Store::open_url_read_only(url),
        None => Store::open_read_only(dir),
    }
}

/// Opens the store read-write.
pub(crate) fn open(dir: &Path) -> Result<Store, OpenError> {
    match as_url(dir) {
        Some(url) => Store::open_url(url),
        None => Store::open(dir),
    }
}
