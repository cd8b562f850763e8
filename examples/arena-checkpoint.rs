//! A hash map that lives in tracked memory: built in an [`Arena`], checkpointed with
//! `save_epoch` while it grows, then "restarted": everything is dropped, a fresh tracker maps
//! a region at the same address (`map_anonymous_at`), `resume` restores the newest
//! checkpoint into it, `Arena::open` re-attaches, and every key is looked up against an
//! independent `std::collections::HashMap` oracle. Exits 1 if any lookup differs.
//!
//! The arena's handles are offsets, so the map would work at any address; restoring at the
//! same address is what a program whose structures hold raw pointers needs, and it is shown
//! here. `cargo run --example arena-checkpoint [-- --quick]`.

use std::collections::HashMap;

use writewatch::checkpoint::Store;
use writewatch::{resume, save_epoch, Arena, SliceHandle, Tracker};

const EMPTY: u64 = 0;

/// Open addressing, linear probing: slot = (key, value), key 0 = empty.
struct Map {
    slots: SliceHandle<[u64; 2]>,
    cap: u64,
}

impl Map {
    fn new(arena: &Arena, cap: u64) -> Result<Map, Box<dyn std::error::Error>> {
        let slots = arena.alloc_zeroed_slice::<[u64; 2]>(cap)?;
        Ok(Map { slots, cap })
    }

    fn slot(&self, key: u64) -> u64 {
        key.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.cap
    }

    fn insert(&self, a: &Arena, key: u64, value: u64) -> Result<(), Box<dyn std::error::Error>> {
        let mut i = self.slot(key);
        loop {
            let [k, _] = a.get_at(self.slots, i)?;
            if k == EMPTY || k == key {
                a.set_at(self.slots, i, [key, value])?;
                return Ok(());
            }
            i = (i + 1) % self.cap;
        }
    }

    fn get(&self, a: &Arena, key: u64) -> Result<Option<u64>, Box<dyn std::error::Error>> {
        let mut i = self.slot(key);
        loop {
            let [k, v] = a.get_at(self.slots, i)?;
            if k == key {
                return Ok(Some(v));
            }
            if k == EMPTY {
                return Ok(None);
            }
            i = (i + 1) % self.cap;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (len, keys, rounds) = if quick {
        (4usize << 20, 20_000u64, 4)
    } else {
        (64 << 20, 400_000, 8)
    };
    let dir = std::env::temp_dir().join(format!("ww-arena-example-{}", std::process::id()));
    let mut oracle = HashMap::new();
    let (addr, root_offset, cap) = {
        let mut store = Store::create(&dir)?;
        let tracker = Tracker::builder().build()?;
        let arena = Arena::new(tracker.map_anonymous(len)?)?;
        let addr = arena.region().as_ptr() as usize;
        let cap = keys * 2;
        let map = Map::new(&arena, cap)?;
        // The root handle (the table's offset) is kept in the arena header too.
        let root = arena.alloc(map.slots.offset())?;
        arena.set_root(root);
        let mut x = 0x1234_5678u64;
        for round in 0..rounds {
            for _ in 0..keys / rounds {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = x | 1;
                map.insert(&arena, key, round)?;
                oracle.insert(key, round);
            }
            let info = save_epoch(&mut store, &arena.region().cut()?)?;
            println!(
                "round {round}: checkpoint epoch {} with {} pages",
                info.epoch, info.data_pages
            );
        }
        (addr, root.offset(), cap)
    }; // everything dropped: tracker, region, store

    // "Restart": same address, newest checkpoint, re-attach.
    let mut store = Store::open(&dir)?;
    let tracker = Tracker::builder().build()?;
    let region = tracker.map_anonymous_at(addr, len)?;
    let r = resume(&mut store, &region, None)?;
    let arena = Arena::open(region)?;
    let root = arena
        .root::<u64>()
        .ok_or("the restored arena has no root")?;
    assert_eq!(root.offset(), root_offset);
    let map = Map {
        slots: SliceHandle::from_raw(arena.get(root)?, cap),
        cap,
    };
    let mut wrong = 0u64;
    for (&k, &v) in &oracle {
        if map.get(&arena, k)? != Some(v) {
            wrong += 1;
        }
    }
    for k in (2..2000u64).step_by(2) {
        // even keys were never inserted (every key is odd)
        if map.get(&arena, k)?.is_some() {
            wrong += 1;
        }
    }
    println!(
        "restored epoch {} at {addr:#x}: {} keys checked against the oracle, {wrong} wrong",
        r.restored,
        oracle.len()
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    if wrong > 0 {
        std::process::exit(1);
    }
    Ok(())
}
