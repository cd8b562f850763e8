//! Process images: the memory of a whole process (several address ranges) in one directory.
//!
//! An image directory holds one checkpoint [`Store`](crate::Store) per tracked address range
//! (under `gen-<G>/r<ID>/`, one generation per dump) and an `IMAGE` index that names, for
//! every range of the image, its address, length, protection, backing and the store epoch
//! that holds its content. The `IMAGE` rename is the commit point of an image: a dump that
//! fails or is killed leaves the previous `IMAGE` (and every store it names) intact. The byte
//! layout is in `docs/format.md` ("Process images").
//!
//! ```
//! use writewatch_checkpoint::image::{Backing, ImageRange, ImageWriter, read_image};
//!
//! let dir = tempfile::tempdir()?;
//! let mut w = ImageWriter::begin(dir.path(), 1234)?;
//! let mut mem = vec![0u8; 4 * 4096];
//! mem[4096] = 7;
//! let store = w.add_range(0, 4096, 4)?;
//! let mut seg = store.begin_next(writewatch_checkpoint::Geometry { page_size: 4096, page_count: 4 })?;
//! for p in 0..4u64 {
//!     seg.push_page(p, &mem[p as usize * 4096..][..4096])?;
//! }
//! seg.commit()?;
//! w.commit(vec![ImageRange::new(0x7f00_0000_0000, 4 * 4096, "rw-p", Backing::Anonymous { name: None }, 0)])?;
//! let image = read_image(dir.path())?;
//! assert_eq!(image.ranges.len(), 1);
//! assert_eq!(image.ranges[0].start, 0x7f00_0000_0000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod index;
mod ops;
mod writer;

pub use index::{
    read_image, Backing, ImageError, ImageIndex, ImageRange, IMAGE_NAME, IMAGE_VERSION,
};
pub use ops::{
    compact_image, is_image, restore_image, verify_image, ImageVerifyReport, RestoredRange,
};
pub use writer::ImageWriter;
