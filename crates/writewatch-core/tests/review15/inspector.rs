//! The inspector against an independent `/proc/self/smaps` reader on mappings the issue's
//! tests do not cover: hugetlb memfd, THP (and the huge zero page), an async-armed region on
//! a system with active swap, a deleted file.

use writewatch_core::inspect::{Inspector, MappingKind, MappingPages, Select};
use writewatch_testkit::smaps;

use super::*;

/// Inspects exactly the mapping at `[start, start+len)` of this process and returns it with
/// the list of its totals' differences from smaps.
fn inspect_self(start: usize, len: usize) -> (MappingPages, Vec<String>) {
    let report = Inspector::open(None)
        .unwrap()
        .inspect(&Select::Range {
            start,
            end: start + len,
        })
        .unwrap();
    let m = report.mappings[0].clone();
    let oracle = smaps::read(None);
    let s = oracle
        .iter()
        .find(|s| s.start <= start && s.end >= start + len)
        .expect("in smaps")
        .clone();
    let t = m.totals;
    let mut d = Vec::new();
    for (f, a, b) in [
        ("Rss", t.rss_kb, s.get("Rss")),
        ("Anonymous", t.anonymous_kb, s.get("Anonymous")),
        ("Swap", t.swap_kb, s.get("Swap")),
        ("Private", t.private_kb, s.private()),
        ("Shared", t.shared_kb, s.shared()),
        (
            "Hugetlb",
            t.hugetlb_kb,
            s.get("Private_Hugetlb") + s.get("Shared_Hugetlb"),
        ),
    ] {
        if a != b {
            d.push(format!("{f}: inspector {a} kB, smaps {b} kB ({})", s.path));
        }
    }
    (m, d)
}

/// Finding 4: a hugetlb memfd (`memfd_create(MFD_HUGETLB)`, named `/memfd:... (deleted)`) is
/// classified `Shmem` from its name (only `/anon_hugepage` is recognised as hugetlb), so its
/// huge pages are counted as Rss (smaps: Rss 0, `Shared_Hugetlb`). Needs free huge pages
/// (`echo 4 > /proc/sys/vm/nr_hugepages`); skipped otherwise.
#[test]
fn hugetlb_memfd_totals_agree_with_smaps() {
    let name = c"review15-huge";
    // SAFETY: plain system call with a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_HUGETLB) };
    assert!(fd >= 0);
    let len = 2 << 20;
    // SAFETY: fd is ours.
    assert_eq!(unsafe { libc::ftruncate(fd, len as i64) }, 0);
    // SAFETY: new shared mapping of our memfd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        println!(
            "skipped: no huge pages ({})",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: inside the new mapping.
    unsafe { p.cast::<u64>().write_volatile(7) };
    let (m, d) = inspect_self(p as usize, len);
    println!("kind {:?} totals {:?}", m.mapping.kind, m.totals);
    // SAFETY: our mapping and fd.
    unsafe {
        libc::munmap(p, len);
        libc::close(fd);
    }
    assert_eq!(m.mapping.kind, MappingKind::Hugetlb, "kind");
    assert!(d.is_empty(), "{d:?}");
}

/// THP: a written 2 MiB-aligned anonymous range (one huge page) and a read-only one (huge
/// zero page where the kernel uses it).
#[test]
fn thp_written_and_huge_zero_page_totals_agree_with_smaps() {
    let len = 8 << 20;
    let map = Mmap::new(len);
    let base = (map.as_ptr() as usize).next_multiple_of(2 << 20);
    let off = base - map.as_ptr() as usize;
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(base as *mut _, 4 << 20, libc::MADV_HUGEPAGE) };
    let words = map.as_atomic_u64();
    words[off / 8].store(1, std::sync::atomic::Ordering::SeqCst); // huge page 1: written
    let _ = words[(off + (2 << 20)) / 8].load(std::sync::atomic::Ordering::SeqCst); // zero
    let mut diffs = Vec::new();
    // The madvise split the VMA: inspect the mapping that holds `base`.
    let all = Inspector::open(None)
        .unwrap()
        .inspect(&Select::Range {
            start: base,
            end: base + (4 << 20),
        })
        .unwrap();
    for m in &all.mappings {
        let (mm, d) = inspect_self(m.mapping.start, m.mapping.end - m.mapping.start);
        println!(
            "{:?} present {} zero {:?} huge {:?} totals {:?}",
            mm.mapping.kind,
            mm.present.pages,
            mm.zero_page.as_ref().map(|r| r.pages),
            mm.huge.as_ref().map(|r| r.pages),
            mm.totals
        );
        diffs.extend(d);
    }
    assert!(diffs.is_empty(), "{diffs:?}");
}

/// Finding 5: with active swap, every uffd-wp marker of an async-armed region (never-filled
/// pages, WP_UNPOPULATED) is counted as swapped: `swapped` claims pages that never were, and
/// Swap disagrees with smaps. Needs active swap (a swapfile); passes trivially otherwise.
#[test]
#[ignore = "finding 5: with active swap, uffd-wp markers of an armed region count as swapped (Swap total != smaps)"]
fn armed_region_markers_are_not_swap_when_swap_is_active() {
    let swap_active = std::fs::read_to_string("/proc/swaps")
        .map(|s| s.lines().count() > 1)
        .unwrap_or(false);
    let Some(t) = async_tracker() else { return };
    let map = Mmap::no_thp(64 * 4096);
    let region = adopt(&t, &map).unwrap();
    region.cut().unwrap();
    common::touch(&region, 0, 1);
    let (m, d) = inspect_self(map.as_ptr() as usize, map.len());
    println!(
        "swap active {swap_active}: swapped {} marker {} totals {:?}",
        m.swapped.pages, m.wp_marker.pages, m.totals
    );
    drop(region);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(
        m.swapped.pages, 0,
        "no page of this region was ever swapped"
    );
}

/// Real swap: pages paged out (MADV_PAGEOUT) of a plain and of an armed region are
/// `swapped` and Swap equals smaps. Needs active swap; passes trivially otherwise.
#[test]
fn paged_out_pages_are_swapped_and_agree_with_smaps() {
    let map = Mmap::no_thp(64 * 4096);
    for p in 0..64 {
        map.write_page(p, p as u64 + 1);
    }
    madvise(&map, 0, 32, libc::MADV_PAGEOUT).unwrap();
    let (m, d) = inspect_self(map.as_ptr() as usize, map.len());
    println!("swapped {} totals {:?}", m.swapped.pages, m.totals);
    assert!(d.is_empty(), "{d:?}");
}

/// Finding 9 (low): `Select::Path` (`writewatch pages --mapping`) cannot select the mapping of
/// a file deleted while mapped, by path or file name: maps prints `/path (deleted)` and the
/// match is exact; the error says "no mapping of <name>".
#[test]
fn select_path_of_a_deleted_file() {
    let (path, f) = data_file(&disk(), "deleted", 4 * 4096);
    let map = Mmap::file(&f, 4 * 4096, false);
    std::fs::remove_file(&path).unwrap();
    let i = Inspector::open(None).unwrap();
    let by_name = i.inspect(&Select::Path(
        path.file_name().unwrap().to_str().unwrap().to_string(),
    ));
    let by_path = i.inspect(&Select::Path(path.to_str().unwrap().to_string()));
    println!(
        "by name: {:?}; by path: {:?}",
        by_name.as_ref().map(|r| r.mappings.len()),
        by_path.as_ref().map(|r| r.mappings.len())
    );
    drop(map);
    assert!(by_name.is_ok() && by_path.is_ok());
}

/// Finding 8 (low): `written` ("pages written since the last re-arm") leaves out a page
/// written and then zapped (`MADV_DONTNEED`) in the open epoch, although the tracker's next
/// cut reports it: the inspector's `written` is not the next dirty set.
#[test]
#[ignore = "finding 8: inspector `written` omits pages written then zapped since the re-arm (the next cut reports them)"]
fn written_equals_the_next_dirty_set_after_a_zap() {
    let Some(t) = async_tracker() else { return };
    let map = Mmap::no_thp(16 * 4096);
    let region = adopt(&t, &map).unwrap();
    region.cut().unwrap();
    common::touch(&region, 1, 1);
    common::touch(&region, 2, 2);
    madvise(&map, 2, 1, libc::MADV_DONTNEED).unwrap();
    let (m, _) = inspect_self(map.as_ptr() as usize, map.len());
    let written: Vec<u64> = m.written.as_ref().expect("armed").iter().collect();
    let next = dirty(&region);
    drop(region);
    assert_eq!(written, next, "inspector written vs the tracker's next cut");
}

/// Finding 10 (low): the inspector's kind claims shared memory for private mappings named
/// like shmem: `MAP_PRIVATE` of `/dev/zero` (private anonymous memory) and of a `/dev/shm`
/// file (a private file mapping with COW copies) are both `Shmem`, so the latter has no
/// `file_uncopied` / `cow_copied` either.
#[test]
fn private_dev_zero_and_private_tmpfs_mappings_are_not_shmem() {
    let zero = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/zero")
        .unwrap();
    let z = Mmap::file(&zero, 2 * 4096, false);
    z.write_page(0, 1);
    let (path, f) = data_file(&shm(), "kind", 2 * 4096);
    let p = Mmap::file(&f, 2 * 4096, false);
    p.write_page(0, 1);
    let (mz, dz) = inspect_self(z.as_ptr() as usize, z.len());
    let (mp, dp) = inspect_self(p.as_ptr() as usize, p.len());
    std::fs::remove_file(&path).unwrap();
    assert!(dz.is_empty() && dp.is_empty(), "{dz:?} {dp:?}");
    println!(
        "/dev/zero private: {:?}; /dev/shm private: {:?}, cow_copied {:?}",
        mz.mapping.kind,
        mp.mapping.kind,
        mp.cow_copied.as_ref().map(|r| r.pages)
    );
    assert_eq!(
        mz.mapping.kind,
        MappingKind::Anonymous,
        "/dev/zero MAP_PRIVATE"
    );
    // Fixed: the kind stays `Shmem` (what a tracker adopts it as, on every uffd backend),
    // and the COW fields are filled as for a private file mapping.
    assert_eq!(mp.mapping.kind, MappingKind::Shmem, "/dev/shm MAP_PRIVATE");
    assert_eq!(mp.cow_copied.map(|r| r.pages), Some(1));
    assert_eq!(mp.file_uncopied.map(|r| r.pages), Some(0));
}

/// Done-when check (printed, never asserted: no timed assertions in tests): the inspector's
/// cost against one read of the same process's smaps, medians of 21, on a python3 holding
/// 64 MiB of written memory. Run with `--nocapture`; in a debug build the inspector is
/// unoptimised, so the ratio is an upper bound of the release figure.
#[test]
fn inspector_cost_against_one_smaps_read_is_printed() {
    let Ok(mut c) = std::process::Command::new("python3")
        .args([
            "-c",
            "import time\nb=bytearray(64<<20)\nfor i in range(0,len(b),4096): b[i]=1\nprint('r',flush=True)\ntime.sleep(60)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid = c.id();
    let median = |f: &mut dyn FnMut()| {
        let mut v: Vec<_> = (0..21)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        v.sort();
        v[10]
    };
    let smaps = median(&mut || {
        std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    });
    let insp = median(&mut || {
        Inspector::open(Some(pid))
            .unwrap()
            .inspect(&Select::All)
            .unwrap();
    });
    println!(
        "smaps read {smaps:?}, inspector {insp:?}: ratio {:.2}",
        insp.as_secs_f64() / smaps.as_secs_f64()
    );
    let _ = c.kill();
    let _ = c.wait();
}

/// Finding 11: swapped-out shmem pages (memfd, written, then `MADV_PAGEOUT`): smaps counts
/// them in `Swap` (from the shmem page cache, the PTEs are empty after the page-out), the
/// inspector walks only the page tables. Needs active swap; passes trivially otherwise.
#[test]
#[ignore = "finding 11: swapped-out shmem pages: smaps Swap counts them, the inspector's swapped/Swap does not (needs active swap)"]
fn swapped_out_shmem_pages_agree_with_smaps() {
    let (_fd, map) = Mmap::memfd_shared(64 * 4096);
    for p in 0..64 {
        map.write_page(p, p as u64 + 1);
    }
    madvise(&map, 0, 64, libc::MADV_PAGEOUT).unwrap();
    let (m, d) = inspect_self(map.as_ptr() as usize, map.len());
    println!("swapped {} totals {:?}", m.swapped.pages, m.totals);
    assert!(d.is_empty(), "{d:?}");
}
