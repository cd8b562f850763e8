//! Typed views, the arena, fixed-address maps and serde, each against an independent model.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use common::Rng;
use writewatch_core::{
    AccessError, Arena, ArenaError, Handle, MapAtError, Region, SliceHandle, Tracker,
    TypedReadError,
};

const PS: usize = 4096;

fn tracker() -> Tracker {
    Tracker::builder().build().expect("tracker")
}

// ------------------------------------------------------------------ a hash map in an arena

/// The root of an open-addressing `u64 -> u64` map living in an [`Arena`].
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct MapRoot {
    slots: u64,
    cap: u64,
    len: u64,
}

/// Slot = [key + 1, value]; key word 0 = empty.
struct ArenaMap<'a> {
    arena: &'a Arena,
    root: Handle<MapRoot>,
}

fn hash(k: u64) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

impl<'a> ArenaMap<'a> {
    fn create(arena: &'a Arena, cap: u64) -> Result<Self, ArenaError> {
        let slots = arena.alloc_zeroed_slice::<[u64; 2]>(cap)?;
        let root = arena.alloc(MapRoot {
            slots: slots.offset(),
            cap,
            len: 0,
        })?;
        arena.set_root(root);
        Ok(Self { arena, root })
    }
    fn open(arena: &'a Arena) -> Self {
        Self {
            arena,
            root: arena.root().expect("arena has a root"),
        }
    }
    fn slots(&self) -> (MapRoot, SliceHandle<[u64; 2]>) {
        let r = self.arena.get(self.root).unwrap();
        (r, SliceHandle::from_raw(r.slots, r.cap))
    }
    fn insert(&self, k: u64, v: u64) {
        let (mut r, s) = self.slots();
        let mut i = hash(k) % r.cap;
        loop {
            let [kk, _] = self.arena.get_at(s, i).unwrap();
            if kk == 0 || kk == k + 1 {
                self.arena.set_at(s, i, [k + 1, v]).unwrap();
                if kk == 0 {
                    r.len += 1;
                    self.arena.set(self.root, r).unwrap();
                }
                return;
            }
            i = (i + 1) % r.cap;
        }
    }
    fn get(&self, k: u64) -> Option<u64> {
        let (r, s) = self.slots();
        let mut i = hash(k) % r.cap;
        for _ in 0..r.cap {
            let [kk, v] = self.arena.get_at(s, i).unwrap();
            if kk == 0 {
                return None;
            }
            if kk == k + 1 {
                return Some(v);
            }
            i = (i + 1) % r.cap;
        }
        None
    }
    fn len(&self) -> u64 {
        self.slots().0.len
    }
}

/// Where the restore tests place the arena: far from the heap, libraries and the mmap area.
/// (Each test has its own address: tests run in parallel in one process.)
const FIXED: usize = 0x3f00_0000_0000;
const FIXED_CHILD: usize = 0x3f10_0000_0000;
const ARENA_LEN: usize = 256 * PS;
const KEYS: u64 = 20_000;
const SEED: u64 = 0xA5A5_1234_0F0F_7777;

fn oracle() -> Vec<(u64, u64)> {
    let mut rng = Rng(SEED);
    (0..KEYS).map(|_| (rng.next() >> 1, rng.next())).collect()
}

fn check_map(map: &ArenaMap<'_>, model: &HashMap<u64, u64>) {
    assert_eq!(map.len(), model.len() as u64);
    for (k, v) in model {
        assert_eq!(map.get(*k), Some(*v), "key {k:#x}");
    }
    let mut rng = Rng(7);
    for _ in 0..1000 {
        let k = rng.next() >> 1;
        assert_eq!(map.get(k), model.get(&k).copied(), "absent key {k:#x}");
    }
}

fn region_at(t: &Tracker, addr: usize, len: usize) -> Region {
    match t.map_anonymous_at(addr, len) {
        Ok(r) => r,
        Err(e) => panic!("map_anonymous_at({addr:#x}): {e}"),
    }
}

/// Builds the map in an arena at FIXED, snapshots it, scribbles over it, and returns the
/// snapshot's image of every page (the content to restore) plus the oracle.
fn build_and_image(t: &Tracker, addr: usize) -> (Vec<u8>, HashMap<u64, u64>) {
    let region = region_at(t, addr, ARENA_LEN);
    assert_eq!(region.as_ptr() as usize, addr);
    // The range is taken now.
    assert!(matches!(
        t.map_anonymous_at(addr + 4 * PS, PS),
        Err(MapAtError::AddressTaken { .. })
    ));
    let arena = Arena::new(region).unwrap();
    let map = ArenaMap::create(&arena, 2 * KEYS).unwrap();
    let mut model = HashMap::new();
    for (k, v) in oracle() {
        map.insert(k, v);
        model.insert(k, v);
    }
    check_map(&map, &model);
    let snap = arena.region().snapshot().unwrap();
    // After the snapshot: overwrite half the values and add keys; the image must not see it.
    for (k, v) in oracle().into_iter().step_by(2) {
        map.insert(k, !v);
    }
    map.insert(u64::MAX >> 1, 1);
    assert!(!snap.written_pages().is_empty());
    let mut image = vec![0u8; ARENA_LEN];
    for (p, page) in image.chunks_exact_mut(PS).enumerate() {
        snap.read_page(p as u64, page).unwrap();
    }
    // Rollback gives the same content back in place.
    arena.region().rollback(&snap).unwrap();
    check_map(&ArenaMap::open(&arena), &model);
    (image, model)
}

fn restore(t: &Tracker, addr: usize, image: &[u8]) -> Arena {
    let region = region_at(t, addr, ARENA_LEN);
    region.write_at(0, image).unwrap();
    Arena::open(region).unwrap()
}

#[test]
fn arena_map_restored_at_same_address_in_process() {
    let t = tracker();
    let (image, model) = build_and_image(&t, FIXED);
    // Everything of the first region is dropped: the address is free again.
    let t2 = tracker();
    let arena = restore(&t2, FIXED, &image);
    check_map(&ArenaMap::open(&arena), &model);
    // Restored memory is tracked like any other.
    arena.region().cut().unwrap();
    ArenaMap::open(&arena).insert(1, 2);
    assert!(!arena.region().cut().unwrap().dirty().is_empty());
}

/// The same restore in another process: this test re-runs its own binary with only the
/// child test selected, handing it the image through a file.
#[test]
fn arena_map_restored_at_same_address_in_child_process() {
    let t = tracker();
    let (image, _model) = build_and_image(&t, FIXED_CHILD);
    let path = std::env::temp_dir().join(format!("ww-arena-{}.img", std::process::id()));
    std::fs::write(&path, &image).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "arena_child_restore",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WW_ARENA_IMAGE", &path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child restore checked"),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs only as the child of the test above (does nothing otherwise).
#[test]
fn arena_child_restore() {
    let Ok(path) = std::env::var("WW_ARENA_IMAGE") else {
        return;
    };
    let image = std::fs::read(path).unwrap();
    let model: HashMap<u64, u64> = oracle().into_iter().collect();
    let t = tracker();
    let arena = restore(&t, FIXED_CHILD, &image);
    check_map(&ArenaMap::open(&arena), &model);
    println!("child restore checked: {} keys", model.len());
}

#[test]
fn arena_errors_and_concurrent_alloc() {
    let t = tracker();
    assert!(matches!(
        Arena::new(t.map_anonymous(PS).unwrap())
            .unwrap()
            .alloc([0u8; PS]),
        Err(ArenaError::Full { .. })
    ));
    let arena = Arc::new(Arena::new(t.map_anonymous(64 * PS).unwrap()).unwrap());
    // Threads allocate concurrently: every allocation gets its own bytes (oracle: each
    // reads back what it wrote after all threads are done), until the arena is full.
    let handles: Vec<_> = (0..4u64)
        .map(|id| {
            let arena = Arc::clone(&arena);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut rng = Rng(id + 1);
                loop {
                    let n = 1 + rng.below(40) as usize;
                    let vals: Vec<u8> = (0..n).map(|i| (id as u8) ^ (i as u8)).collect();
                    match arena.alloc_slice(&vals) {
                        Ok(h) => mine.push((h, vals)),
                        Err(ArenaError::Full { .. }) => return mine,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(arena.used() > 63 * PS as u64);
    for (h, vals) in &all {
        let mut out = vec![0u8; vals.len()];
        arena.read_slice(*h, &mut out).unwrap();
        assert_eq!(&out, vals);
    }
    assert!(matches!(
        arena.get(Handle::<u64>::from_offset(arena.used())),
        Err(ArenaError::BadHandle { .. })
    ));
    assert!(matches!(
        arena.get(Handle::<u64>::from_offset(u64::MAX - 3)),
        Err(ArenaError::BadHandle { .. })
    ));
    // A corrupted header is reported, never trusted.
    let region = Arc::into_inner(arena).unwrap().into_region();
    region.as_atomic_u64()[2].store(u64::MAX, SeqCst);
    assert!(matches!(
        Arena::open(region),
        Err(ArenaError::Corrupt { .. })
    ));
}

// ------------------------------------------------------------------ typed access

/// read_at / write_at at random offsets and lengths against a plain byte-array model, with
/// dirty pages checked against the pages whose bytes actually changed.
#[test]
fn read_write_at_matches_byte_model() {
    let t = tracker();
    let pages = 32;
    let region = t.map_anonymous(pages * PS).unwrap();
    let mut model = vec![0u8; pages * PS];
    let mut rng = Rng(99);
    for round in 0..200 {
        region.cut().unwrap();
        let mut changed = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let len = 1 + rng.below(3 * PS as u64) as usize;
            let off = rng.below((pages * PS - len) as u64) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        0
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            region.write_at(off, &data).unwrap();
            for (i, b) in data.iter().enumerate() {
                if model[off + i] != *b {
                    changed.insert(((off + i) / PS) as u64);
                }
                model[off + i] = *b;
            }
        }
        let dirty: std::collections::BTreeSet<u64> = region.cut().unwrap().dirty().iter().collect();
        assert_eq!(dirty, changed, "round {round}");
        let off = rng.below((pages * PS) as u64 - 100) as usize;
        let mut out = [0u8; 100];
        region.read_at(off, &mut out).unwrap();
        assert_eq!(&out[..], &model[off..off + 100]);
    }
    let mut all = vec![0u8; pages * PS];
    region.read_at(0, &mut all).unwrap();
    assert_eq!(all, model);
    assert!(matches!(
        region.read_at(pages * PS - 1, &mut [0u16; 1]),
        Err(AccessError::OutOfRange { .. })
    ));
    assert!(matches!(
        region.write_at(usize::MAX, &[1u8]),
        Err(AccessError::OutOfRange { .. })
    ));
}

/// Byte-sized writes from several threads into shared words: none is lost (compare-and-swap).
#[test]
fn concurrent_sub_word_writes_are_not_lost() {
    let t = tracker();
    let region = Arc::new(t.map_anonymous(4 * PS).unwrap());
    let threads = 4;
    let hs: Vec<_> = (0..threads)
        .map(|id| {
            let region = Arc::clone(&region);
            std::thread::spawn(move || {
                for i in (id..4 * PS).step_by(threads) {
                    region.write_at(i, &[(i % 251) as u8 + 1]).unwrap();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let mut all = vec![0u8; 4 * PS];
    region.read_at(0, &mut all).unwrap();
    for (i, b) in all.iter().enumerate() {
        assert_eq!(*b, (i % 251) as u8 + 1, "byte {i}");
    }
}

#[test]
fn typed_page_reads_equal_byte_reads() {
    let t = tracker();
    let region = t.map_anonymous(8 * PS).unwrap();
    let mut rng = Rng(5);
    let words: Vec<u64> = (0..8 * PS / 8).map(|_| rng.next()).collect();
    region.write_at(0, &words).unwrap();
    let snap = region.snapshot().unwrap();
    region.write_at(0, &vec![0u64; 8 * PS / 8]).unwrap();
    for p in 0..8u64 {
        let mut bytes = vec![0u8; PS];
        snap.read_page(p, &mut bytes).unwrap();
        let mut as_u32 = vec![0u32; PS / 4];
        snap.read_page_as(p, &mut as_u32).unwrap();
        assert_eq!(bytemuck::cast_slice::<u32, u8>(&as_u32), &bytes[..]);
        let mut as_u64 = vec![0u64; PS / 8];
        snap.read_page_as(p, &mut as_u64).unwrap();
        assert_eq!(
            &as_u64[..],
            &words[p as usize * 512..(p as usize + 1) * 512]
        );
    }
    assert!(matches!(
        snap.read_page_as(0, &mut [0u64; 511]),
        Err(TypedReadError::WrongLength { len: 511, .. })
    ));
    assert!(matches!(
        snap.read_page_as(0, &mut [[0u8; 3]; 1365]),
        Err(TypedReadError::ElementDoesNotTile { elem_size: 3, .. })
    ));
    assert!(matches!(
        snap.read_page_as(99, &mut [0u64; 512]),
        Err(TypedReadError::Read(_))
    ));
    // Epochs: typed read of a dirty page equals the content at the cut.
    region.write_at(3 * PS, &[1u16, 2, 3]).unwrap();
    let epoch = region.cut().unwrap();
    region.write_at(3 * PS, &[9u16]).unwrap();
    let mut page = vec![0u16; PS / 2];
    epoch.read_page_as(3, &mut page).unwrap();
    assert_eq!(&page[..3], &[1, 2, 3]);
}

#[test]
fn atomic_views_track_writes() {
    let t = tracker();
    let region = t.map_anonymous(16 * PS).unwrap();
    let v = region.as_atomic::<AtomicUsize>();
    assert_eq!(v.len(), 16 * PS / 8);
    region.cut().unwrap();
    let mut rng = Rng(3);
    let mut expect = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let i = rng.below(v.len() as u64) as usize;
        v[i].fetch_add(1, SeqCst);
        expect.insert((i * 8 / PS) as u64);
    }
    let got: std::collections::BTreeSet<u64> = region.cut().unwrap().dirty().iter().collect();
    assert_eq!(got, expect);
    // The same memory through the u64 view.
    let w = region.as_atomic_u64();
    for (i, a) in v.iter().enumerate() {
        assert_eq!(a.load(SeqCst) as u64, w[i].load(SeqCst));
    }
}

#[test]
fn map_at_rejects_bad_input() {
    let t = tracker();
    assert!(matches!(
        t.map_anonymous_at(0, PS),
        Err(MapAtError::NullAddress)
    ));
    assert!(matches!(
        t.map_anonymous_at(FIXED + 1, PS),
        Err(MapAtError::Map(_))
    ));
    assert!(matches!(
        t.map_anonymous_at(FIXED, PS + 1),
        Err(MapAtError::Map(_))
    ));
    assert!(matches!(
        t.map_anonymous_at(FIXED, 0),
        Err(MapAtError::Map(_))
    ));
    assert!(matches!(
        t.map_anonymous_at(usize::MAX - PS + 1, 2 * PS),
        Err(MapAtError::Map(_))
    ));
    // The tracker's own region: taken.
    let r = t.map_anonymous(PS).unwrap();
    assert!(matches!(
        t.map_anonymous_at(r.as_ptr() as usize, PS),
        Err(MapAtError::AddressTaken { .. })
    ));
}

// ------------------------------------------------------------------ serde

#[test]
fn stats_serialize_with_true_percentiles() {
    let t = tracker();
    let region = t.map_anonymous(64 * PS).unwrap();
    for p in 0..64 {
        common::touch(&region, p, 1);
    }
    let epoch = region.cut().unwrap();
    let stats = t.stats();
    let j = serde_json::to_value(&stats).unwrap();
    assert_eq!(j["wp_faults"], stats.wp_faults);
    assert_eq!(j["service_ns"]["count"], stats.service_ns.count());
    assert_eq!(j["service_ns"]["p50"], stats.service_ns.p50());
    assert!(stats.service_ns.count() >= 64);
    let rs = serde_json::to_value(region.stats()).unwrap();
    assert_eq!(rs["history"][0]["pages"], 64);
    let cs = serde_json::to_value(epoch.stats()).unwrap();
    assert!(cs["protect_ioctls"].as_u64().unwrap() >= 1);
    let probe = serde_json::to_value(writewatch_core::probe()).unwrap();
    assert!(probe["kernel_release"].is_string());
    assert!(probe["access"].is_string());
}
