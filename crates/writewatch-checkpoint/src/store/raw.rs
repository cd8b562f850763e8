//! The public raw-pointer entry point of [`Store`]. It is an `unsafe fn`: this file is
//! declared as a module of `sys`, the crate's only module allowed `unsafe` code.

use crate::error::RestoreError;
use crate::store::Store;

impl Store {
    /// Restores epoch `epoch` into the memory at `ptr` of `len` bytes (which
    /// must equal the region length). See [`Store::restore_into`].
    ///
    /// On error, the memory content is unspecified and the error is returned;
    /// there is no partial success.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes for the whole
    /// call, and no other reference to that memory may be used concurrently
    /// (the call writes to it as through a `&mut [u8]`).
    pub unsafe fn restore_into_raw(
        &self,
        epoch: u64,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), RestoreError> {
        if len == 0 || ptr.is_null() {
            return Err(RestoreError::SizeMismatch {
                expected: self.geometry().map_or(0, |g| g.region_len()),
                got: 0,
            });
        }
        // SAFETY: the caller guarantees `ptr..ptr+len` is valid, writable and
        // exclusively ours for the duration of the call.
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        self.restore_into(epoch, dst)
    }
}
