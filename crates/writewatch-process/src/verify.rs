//! `--verify`: the committed image against the stopped target's memory, one full read.

use serde::Serialize;
use writewatch_checkpoint::image::{ImageIndex, ImageWriter};

use crate::sys;

/// What the verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    /// Whether every page matched.
    pub ok: bool,
    /// Pages compared.
    pub pages: u64,
    /// Pages whose content differs (or that could not be read back).
    pub mismatched_pages: u64,
    /// Up to 16 mismatching page addresses.
    pub first_mismatches: Vec<u64>,
    /// Problems reading the image or the target.
    pub errors: Vec<String>,
}

/// Compares every range of `index` (committed in `dir`) with process `pid`'s memory, which
/// must not change meanwhile (the target is stopped).
pub(crate) fn verify_frozen(
    pid: u32,
    writer: &mut ImageWriter,
    index: &ImageIndex,
) -> VerifyOutcome {
    let page = index.page_size as usize;
    let mut out = VerifyOutcome {
        ok: true,
        pages: 0,
        mismatched_pages: 0,
        first_mismatches: Vec::new(),
        errors: Vec::new(),
    };
    let mut live = vec![0u8; 256 * page];
    for r in &index.ranges {
        // The writer holds the stores' locks: read through it.
        let id = r
            .store
            .rsplit_once("/r")
            .and_then(|(_, id)| id.parse::<u64>().ok());
        let restored = match id.and_then(|id| writer.store(id)) {
            Some(s) => s.restore(r.epoch).map_err(|e| e.to_string()),
            None => Err("no such store in this dump".to_string()),
        };
        let img = match restored {
            Ok(m) => m,
            Err(e) => {
                out.errors.push(format!("{}: {e}", r.store));
                out.ok = false;
                continue;
            }
        };
        let img = img.as_slice();
        let mut off = 0usize;
        while off < img.len() {
            let n = live.len().min(img.len() - off);
            let got = sys::read_remote(pid, &[r.start as usize + off], &mut [&mut live[..n]])
                .unwrap_or(0);
            for k in 0..n / page {
                out.pages += 1;
                let a = off + k * page;
                let same =
                    (k + 1) * page <= got && live[k * page..(k + 1) * page] == img[a..a + page];
                if !same {
                    out.mismatched_pages += 1;
                    out.ok = false;
                    if out.first_mismatches.len() < 16 {
                        out.first_mismatches.push(r.start + a as u64);
                    }
                }
            }
            off += n;
        }
    }
    out
}
