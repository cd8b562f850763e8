//! The kernel probe. This test fails if the running kernel's version says a feature should be
//! there but the probe did not find it, so that no feature-gated test can skip silently on a
//! capable machine.
use writewatch_core::{probe, Feature};

#[test]
fn probe_matches_kernel_version() {
    let p = probe();
    println!("{p}");
    let missing = p.expected_but_missing();
    assert!(
        missing.is_empty(),
        "kernel {} should support {:?} but the probe did not find them: check CONFIG_USERFAULTFD, \
         CONFIG_PTE_MARKER_UFFD_WP, vm.unprivileged_userfaultfd and the process's capabilities",
        p.kernel_release,
        missing.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
    if p.kernel_version >= (5, 7, 0) {
        assert!(
            p.usable(),
            "userfaultfd must be usable on the machine running the tests: {p}"
        );
        assert!(p.has(Feature::PagefaultFlagWp));
    }
}
