//! gang's durable write ([`gang_protocol::durable`]) with the rank runtime's errors: a
//! failed step is an [`Error::Io`] naming the path it was about.

use crate::error::{Error, Result};
use gang_protocol::durable;
use std::path::Path;

pub(crate) use gang_protocol::durable::AtomicWrite;

/// The rank runtime's error for a failed step of a durable write.
pub(crate) fn io(e: durable::Error) -> Error {
    Error::io(e.path().to_path_buf(), e.into_io_error())
}

/// See [`durable::write_file`].
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    durable::write_file(path, bytes).map_err(io)
}

/// See [`durable::rename_durable`].
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    durable::rename_durable(from, to).map_err(io)
}

/// See [`durable::rename_all`].
pub(crate) fn rename_all<'a>(moves: impl IntoIterator<Item = (&'a Path, &'a Path)>) -> Result<()> {
    durable::rename_all(moves).map_err(io)
}

/// See [`durable::sync_dir`].
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    durable::sync_dir(dir).map_err(io)
}
