//! `madvise(MADV_DONTNEED)` changes content without a write: the harvest must report it.

use std::os::fd::AsRawFd;

use writewatch_core::remote::{RemotePagemap, RemoteUffd};

fn harvest(pm: &RemotePagemap, a: usize, len: usize) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    pm.harvest(a, a + len, |x, y| {
        runs.push(((x - a) / 4096, (y - a) / 4096))
    })
    .unwrap();
    runs
}

fn check(file: Option<&std::fs::File>) -> Vec<(usize, usize)> {
    let len = 4 * 4096;
    let (flags, fd) = match file {
        Some(f) => (libc::MAP_PRIVATE, f.as_raw_fd()),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
    };
    // SAFETY: a fresh mapping used only by this test.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    } as usize;
    assert_ne!(p, libc::MAP_FAILED as usize);
    // SAFETY: inside the mapping.
    unsafe { ((p + 4096) as *mut u8).write_volatile(7) };
    let uffd = RemoteUffd::open_own().unwrap();
    uffd.register_wp(p, len).unwrap();
    let pm = RemotePagemap::open(std::process::id()).unwrap();
    assert!(harvest(&pm, p, len).is_empty());
    assert_eq!(
        // SAFETY: our mapping; page 1 is dropped (anonymous: becomes zero; file-private:
        // reverts to the file's content).
        unsafe { libc::madvise((p + 4096) as *mut _, 4096, libc::MADV_DONTNEED) },
        0
    );
    let runs = harvest(&pm, p, len);
    // SAFETY: our mapping.
    unsafe { libc::munmap(p as *mut _, len) };
    runs
}

#[test]
fn dontneed_on_anonymous_memory_is_reported() {
    assert_eq!(check(None), vec![(1, 2)]);
}

/// The kernel keeps the uffd-wp marker when it zaps a file-backed page, so the harvest does
/// not see a written private file page that `MADV_DONTNEED` reverted to the file's content:
/// the dumper compares COW sets instead (`anon_present`), tested end to end in
/// `dump.rs::private_file_pages_zapped_during_rounds`. This test pins the kernel behaviour
/// that makes that necessary.
#[test]
fn dontneed_on_a_written_private_file_page_is_invisible_to_the_harvest() {
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, &[1u8; 4 * 4096]).unwrap();
    assert_eq!(check(Some(&f)), vec![]);
}
