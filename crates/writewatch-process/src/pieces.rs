//! The pieces of the target's address space a dump tracks, kept in step with its maps.
//!
//! A piece is a fixed `[start, end)` inside one writable mapping, with its own store in the
//! image. Each round re-reads the maps: a piece stays while a writable mapping with the same
//! backing (same file at the same offset, or anonymous) still covers it; otherwise it is
//! dropped (unmapped, moved, shrunk, replaced). Writable memory no piece covers becomes new
//! pieces (new mappings, grown heaps, the destination of an `mremap`): registered and
//! write-protected first, then copied whole, so all their pages count as written.

use writewatch_checkpoint::image::{Backing, ImageRange};

use crate::hot::Heat;
use crate::maps::Mapping;

/// One tracked piece.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    /// Store id in the image.
    pub id: u64,
    pub start: usize,
    pub end: usize,
    /// `dev:inode` identity of the backing (`""` for anonymous).
    pub ident: String,
    /// File offset of `start` (0 for anonymous).
    pub offset: u64,
    pub perms: String,
    pub backing: Backing,
    /// Registered with the userfaultfd; `false` when registration failed (`VM_IO`, a
    /// program's own userfaultfd): such a piece is copied whole every round.
    pub tracked: bool,
    /// Private file mappings only: the pages that were COW copies at the last harvest (one
    /// bit per page). One that is no longer a COW copy was zapped and reverted to the file.
    pub cow: Option<Vec<u64>>,
    /// The pages the pre-copy rounds leave out of their harvests (written again in every
    /// round) until the last one.
    pub heat: Heat,
}

impl Piece {
    /// Whether the piece is part of a private file mapping.
    pub(crate) fn private_file(&self) -> bool {
        !self.ident.is_empty() && self.perms.as_bytes().get(3) == Some(&b'p')
    }
}

impl Piece {
    pub(crate) fn pages(&self, page: usize) -> u64 {
        ((self.end - self.start) / page) as u64
    }

    pub(crate) fn image_range(&self) -> ImageRange {
        ImageRange::new(
            self.start as u64,
            (self.end - self.start) as u64,
            &self.perms,
            self.backing.clone(),
            self.id,
        )
    }
}

fn ident(m: &Mapping) -> String {
    if m.inode == 0 {
        String::new()
    } else {
        format!("{}:{}", m.dev, m.inode)
    }
}

/// The outcome of matching pieces against fresh maps.
#[derive(Debug, Default)]
pub(crate) struct Sync {
    /// Ids of pieces no longer backed as before.
    pub dropped: Vec<u64>,
    /// New pieces to register and copy whole (ids assigned).
    pub added: Vec<Piece>,
}

/// Matches `pieces` against `maps` (the writable, tracked mappings): updates the kept
/// pieces' permissions and backing names, and returns what to drop and add.
pub(crate) fn sync(pieces: &mut Vec<Piece>, maps: &[Mapping], next_id: &mut u64) -> Sync {
    let tracked: Vec<&Mapping> = maps.iter().filter(|m| m.skip_reason().is_none()).collect();
    let mut out = Sync::default();
    pieces.retain_mut(|p| {
        let keep = tracked.iter().find(|m| {
            m.start <= p.start
                && p.end <= m.end
                && ident(m) == p.ident
                && (m.inode == 0 || m.offset + (p.start - m.start) as u64 == p.offset)
        });
        match keep {
            Some(m) => {
                p.perms.clone_from(&m.perms);
                if m.inode == 0 {
                    p.backing = m.backing();
                }
                true
            }
            None => {
                out.dropped.push(p.id);
                false
            }
        }
    });
    pieces.sort_by_key(|p| p.start);
    for m in tracked {
        let mut cursor = m.start;
        let covering = pieces
            .iter()
            .filter(|p| p.start < m.end && p.end > m.start)
            .map(|p| (p.start, p.end))
            .collect::<Vec<_>>();
        for (a, b) in covering.into_iter().chain(std::iter::once((m.end, m.end))) {
            if a > cursor {
                let offset = if m.inode == 0 {
                    0
                } else {
                    m.offset + (cursor - m.start) as u64
                };
                let mut backing = m.backing();
                if let Backing::File { offset: o, .. } = &mut backing {
                    *o = offset;
                }
                out.added.push(Piece {
                    id: *next_id,
                    start: cursor,
                    end: a,
                    ident: ident(m),
                    offset,
                    perms: m.perms.clone(),
                    backing,
                    tracked: true,
                    cow: None,
                    heat: Heat::default(),
                });
                *next_id += 1;
            }
            cursor = cursor.max(b);
        }
    }
    out
}

/// For a private file piece: re-reads which pages are COW copies (after the harvest, before
/// the copy), adds to `runs` the pages that were COW copies last time and no longer are
/// (dropped by `MADV_DONTNEED`: their content reverted to the file's), and remembers the new
/// set. A COW copy swapped out also leaves the set: reported again, an over-report.
pub(crate) fn reverted_cow_pages(
    pm: &writewatch_core::remote::RemotePagemap,
    p: &mut Piece,
    page: usize,
    runs: &mut Vec<(u64, u64)>,
) -> Result<(), crate::error::Errno> {
    let n = p.pages(page) as usize;
    let mut now = vec![0u64; n.div_ceil(64)];
    pm.anon_present(p.start, p.end, |a, b| {
        let (a, b) = (a.max(p.start), b.min(p.end));
        for i in (a - p.start) / page..(b - p.start).div_ceil(page) {
            now[i / 64] |= 1 << (i % 64);
        }
    })?;
    if let Some(before) = &p.cow {
        for (w, (&old, &new)) in before.iter().zip(&now).enumerate() {
            let gone = old & !new;
            for bit in 0..64 {
                if gone & (1 << bit) != 0 {
                    runs.push(((w * 64 + bit) as u64, 1));
                }
            }
        }
    }
    p.cow = Some(now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::parse_maps;

    #[test]
    fn growth_shrink_move() {
        let mut id = 0;
        let mut pieces = Vec::new();
        let m1 = parse_maps(
            "1000-5000 rw-p 00000000 00:00 0 [heap]\n9000-a000 rw-p 00001000 08:01 7 /f\n",
        );
        let s = sync(&mut pieces, &m1, &mut id);
        assert_eq!(s.added.len(), 2);
        pieces.extend(s.added);
        // Heap grows, the file mapping moves (mremap), nothing else changes.
        let m2 = parse_maps(
            "1000-8000 rw-p 00000000 00:00 0 [heap]\nb000-c000 rw-p 00001000 08:01 7 /f\n",
        );
        let s = sync(&mut pieces, &m2, &mut id);
        assert_eq!(s.dropped, vec![1]);
        let added: Vec<(usize, usize)> = s.added.iter().map(|p| (p.start, p.end)).collect();
        assert_eq!(added, vec![(0x5000, 0x8000), (0xb000, 0xc000)]);
        pieces.extend(s.added);
        // Heap shrinks below the first piece's end: that piece is dropped, its rest re-added.
        let m3 = parse_maps(
            "1000-3000 rw-p 00000000 00:00 0 [heap]\nb000-c000 rw-p 00001000 08:01 7 /f\n",
        );
        let s = sync(&mut pieces, &m3, &mut id);
        assert_eq!(s.dropped.len(), 2);
        assert_eq!(s.added.len(), 1);
        assert_eq!((s.added[0].start, s.added[0].end), (0x1000, 0x3000));
    }
}
