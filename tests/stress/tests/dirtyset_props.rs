//! Property tests of `DirtySet` (runs, coalescing, iteration, union, `iter_from`) against a
//! `BTreeSet` model, bounded (`PROPTEST_CASES`, default 256) for `make test`. Pure data
//! structure code: also runs under Miri (`make miri`).

use std::collections::BTreeSet;

use proptest::prelude::*;
use writewatch_core::DirtySet;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Page counts around word (64) and run boundaries, and pages clustered so runs form.
fn geometry_and_pages() -> impl Strategy<Value = (u64, Vec<u64>)> {
    prop_oneof![
        Just(1u64),
        Just(63),
        Just(64),
        Just(65),
        Just(127),
        Just(128),
        Just(129),
        1u64..700,
    ]
    .prop_flat_map(|n| {
        let pages = prop_oneof![
            proptest::collection::vec(0..n + 3, 0..64),
            // Runs: (start, len) pairs expanded, hitting word edges.
            proptest::collection::vec((0..n, 1u64..80), 0..6).prop_map(|rs| {
                rs.into_iter()
                    .flat_map(|(s, l)| s..s + l)
                    .collect::<Vec<_>>()
            }),
        ];
        (Just(n), pages)
    })
}

fn model(n: u64, pages: &[u64]) -> BTreeSet<u64> {
    pages.iter().copied().filter(|p| *p < n).collect()
}

fn model_runs(m: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in m {
        match out.last_mut() {
            Some((s, l)) if *s + *l == p => *l += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn from_pages_iter_len_contains((n, pages) in geometry_and_pages()) {
        let s = DirtySet::from_pages(4096, n, pages.iter().copied());
        let m = model(n, &pages);
        prop_assert_eq!(s.iter().collect::<Vec<_>>(), m.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(s.len(), m.len());
        prop_assert_eq!(s.is_empty(), m.is_empty());
        prop_assert_eq!(s.bytes(), m.len() as u64 * 4096);
        prop_assert_eq!(s.page_count(), n);
        for p in 0..n + 2 {
            prop_assert_eq!(s.contains(p), m.contains(&p), "page {}", p);
        }
    }

    #[test]
    fn runs_are_maximal_ascending_and_cover_exactly((n, pages) in geometry_and_pages()) {
        let s = DirtySet::from_pages(4096, n, pages.iter().copied());
        let runs: Vec<(u64, u64)> = s.runs().collect();
        prop_assert_eq!(&runs, &model_runs(&model(n, &pages)));
        for w in runs.windows(2) {
            prop_assert!(w[0].0 + w[0].1 < w[1].0, "runs adjacent or overlapping: {:?}", w);
        }
        prop_assert!(runs.iter().all(|r| r.1 > 0 && r.0 + r.1 <= n));
    }

    #[test]
    fn iter_from_is_the_next_member((n, pages) in geometry_and_pages(), probe in 0u64..800) {
        let s = DirtySet::from_pages(4096, n, pages.iter().copied());
        let m = model(n, &pages);
        prop_assert_eq!(s.iter_from(probe), m.range(probe..).next().copied());
    }

    #[test]
    fn union_and_insert_match_the_model(
        (n, a) in geometry_and_pages(),
        b in proptest::collection::vec(0u64..800, 0..64),
        extra in proptest::collection::vec(0u64..800, 0..16),
    ) {
        let mut s = DirtySet::from_pages(4096, n, a.iter().copied());
        let t = DirtySet::from_pages(4096, n, b.iter().copied());
        s.union_with(&t);
        let mut m = model(n, &a);
        m.extend(model(n, &b));
        for p in extra {
            let fresh = s.insert(p);
            prop_assert_eq!(fresh, p < n && m.insert(p));
        }
        prop_assert_eq!(s.iter().collect::<Vec<_>>(), m.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(s.runs().collect::<Vec<_>>(), model_runs(&m));
    }

    #[test]
    fn empty_and_full((n, _) in geometry_and_pages()) {
        prop_assert!(DirtySet::empty(4096, n).is_empty());
        let f = DirtySet::full(4096, n);
        prop_assert_eq!(f.len() as u64, n);
        prop_assert_eq!(f.runs().collect::<Vec<_>>(), vec![(0, n)]);
    }
}
