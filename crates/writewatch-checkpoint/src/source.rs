//! Inputs of the writer: the [`PageSource`] trait and a slice implementation.

/// Read access to a region's pages at the checkpoint instant.
pub trait PageSource {
    /// Page size in bytes.
    fn page_size(&self) -> usize;
    /// Number of pages in the region.
    fn page_count(&self) -> u64;
    /// Copy page `index` into `buf` (len == page_size). May fail (e.g. the
    /// region went away).
    fn read_page(&self, index: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl<T: PageSource + ?Sized> PageSource for &T {
    fn page_size(&self) -> usize {
        (**self).page_size()
    }
    fn page_count(&self) -> u64 {
        (**self).page_count()
    }
    fn read_page(&self, index: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (**self).read_page(index, buf)
    }
}

/// A [`PageSource`] over a byte slice (its length must be a multiple of the
/// page size).
///
/// ```
/// use writewatch_checkpoint::{PageSource, SliceSource};
/// let data = vec![1u8; 3 * 4096];
/// let src = SliceSource::new(&data, 4096)?;
/// assert_eq!(src.page_count(), 3);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SliceSource<'a> {
    data: &'a [u8],
    page_size: usize,
}

impl<'a> SliceSource<'a> {
    /// Wraps `data`; fails if the page size is zero or does not divide the
    /// length.
    pub fn new(data: &'a [u8], page_size: usize) -> std::io::Result<Self> {
        if page_size == 0 || data.len() % page_size != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "slice length is not a multiple of the page size",
            ));
        }
        Ok(SliceSource { data, page_size })
    }
}

impl PageSource for SliceSource<'_> {
    fn page_size(&self) -> usize {
        self.page_size
    }
    fn page_count(&self) -> u64 {
        (self.data.len() / self.page_size) as u64
    }
    fn read_page(&self, index: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .filter(|&s| s < self.data.len() && buf.len() == self.page_size)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "page index out of range")
            })?;
        buf.copy_from_slice(&self.data[start..start + self.page_size]);
        Ok(())
    }
}
