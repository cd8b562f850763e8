//! `writewatch probe`: what this kernel and machine support, human-readable or JSON.

use serde::Serialize;

use crate::{print_json, Failure, EXIT_CORRUPT};

pub(crate) fn probe(require_expected: bool, json: bool) -> Result<u8, Failure> {
    use writewatch_core::{Backend, Feature, Purpose, Tracker};
    let p = writewatch_core::probe();
    let missing = p.expected_but_missing();
    let backends: Vec<(Backend, Result<(), String>)> =
        [Backend::SyncUffd, Backend::AsyncUffd, Backend::Mprotect]
            .into_iter()
            .map(|b| {
                (
                    b,
                    Tracker::builder()
                        .backend(b)
                        .build()
                        .map(drop)
                        .map_err(|e| e.to_string()),
                )
            })
            .collect();
    let auto_dirty = Tracker::builder()
        .purpose(Purpose::DirtyTracking)
        .build()
        .map(|t| t.backend().name());
    let auto_snap = Tracker::builder()
        .purpose(Purpose::Snapshots)
        .build()
        .map(|t| t.backend().name());
    if json {
        print_json(&ProbeJson {
            kernel: &p.kernel_release,
            access: format!("{:?}", p.access),
            usable: p.usable(),
            features_bits: p.features,
            features: Feature::ALL
                .iter()
                .map(|f| {
                    let (major, minor) = f.min_kernel();
                    (
                        f.name(),
                        FeatureJson {
                            present: p.has(*f),
                            min_kernel: format!("{major}.{minor}"),
                        },
                    )
                })
                .collect(),
            pagemap_scan: p.pagemap_scan,
            soft_dirty: p.soft_dirty,
            unprivileged_userfaultfd: p.unprivileged_userfaultfd,
            thp: p.thp.as_deref(),
            backends: backends
                .iter()
                .map(|(b, r)| {
                    (
                        b.name(),
                        BackendJson {
                            works: r.is_ok(),
                            error: r.as_ref().err().map(String::as_str),
                        },
                    )
                })
                .collect(),
            auto: AutoJson {
                dirty_tracking: auto_dirty.as_ref().ok().map(|s| s.as_ref()),
                snapshots: auto_snap.as_ref().ok().map(|s| s.as_ref()),
            },
            expected_but_missing: missing.iter().map(|f| f.name()).collect(),
        });
    } else {
        print!("{p}");
        println!("backends:");
        for (b, r) in &backends {
            let need = match b {
                Backend::SyncUffd => "userfaultfd + UFFD_FEATURE_PAGEFAULT_FLAG_WP (Linux >= 5.7); copy-before-write snapshots",
                Backend::AsyncUffd => "UFFD_FEATURE_WP_ASYNC + WP_UNPOPULATED + PAGEMAP_SCAN (Linux >= 6.7); dirty sets only",
                _ => "nothing (mprotect + SIGSEGV); dirty sets only, syscalls writing tracked memory get EFAULT",
            };
            match r {
                Ok(()) => println!("  {:<9} works   needs {need}", b.name()),
                Err(e) => println!("  {:<9} NO      {e}", b.name()),
            }
        }
        println!(
            "auto picks: {} for dirty tracking, {} for snapshots",
            auto_dirty.as_deref().unwrap_or("none"),
            auto_snap.as_deref().unwrap_or("none")
        );
        if !missing.is_empty() {
            println!(
                "MISSING although kernel {} should have them: {}",
                p.kernel_release,
                missing
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(if require_expected && !missing.is_empty() {
        EXIT_CORRUPT
    } else {
        0
    })
}

#[derive(Serialize)]
struct FeatureJson {
    present: bool,
    min_kernel: String,
}

#[derive(Serialize)]
struct BackendJson<'a> {
    works: bool,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct AutoJson<'a> {
    dirty_tracking: Option<&'a str>,
    snapshots: Option<&'a str>,
}

#[derive(Serialize)]
struct ProbeJson<'a> {
    kernel: &'a str,
    access: String,
    usable: bool,
    features_bits: u64,
    features: std::collections::BTreeMap<&'static str, FeatureJson>,
    pagemap_scan: bool,
    soft_dirty: bool,
    unprivileged_userfaultfd: Option<u32>,
    thp: Option<&'a str>,
    backends: std::collections::BTreeMap<&'static str, BackendJson<'a>>,
    auto: AutoJson<'a>,
    expected_but_missing: Vec<&'static str>,
}
