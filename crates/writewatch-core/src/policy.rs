//! What the adaptive policy decided ([`PolicyReport`], part of
//! [`TrackerStats`](crate::TrackerStats)). The policy itself runs on the service thread
//! (`service/policy.rs`).

/// One decision of the adaptive policy: what was chosen and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PolicyChoice {
    /// The choice (`"forced"` when a builder option decided it, `"off"` when the policy is
    /// off and the option was not set).
    pub chosen: String,
    /// Why: the measurement or the option behind the choice.
    pub why: String,
}

/// What the adaptive policy of the sync backend decided at the last cut (see
/// [`TrackerBuilder::adaptive`](crate::TrackerBuilder::adaptive)).
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PolicyReport {
    /// The policy is on (the default).
    pub adaptive: bool,
    /// Background re-arming of written pages between cuts.
    pub rearm: PolicyChoice,
    /// The re-arming age used in the epoch the last cut closed, in microseconds.
    pub rearm_age_us: u64,
    /// Re-protection at a cut: one call per dirty run, or one per 2 MiB chunk.
    pub reprotect: PolicyChoice,
    /// Measured fixed cost of one `UFFDIO_WRITEPROTECT` call, in ns.
    pub ioctl_ns: f64,
    /// Measured cost per page walked by a `UFFDIO_WRITEPROTECT` call, in ns.
    pub pte_ns: f64,
    /// 2 MiB chunks the last cut re-protected with one call over their dirty span.
    pub whole_chunks: u64,
    /// 2 MiB chunks the last cut re-protected run by run.
    pub run_chunks: u64,
    /// Fault-around for sequential writers.
    pub fault_around: PolicyChoice,
    /// Regions granted fault-around for their current epoch (last cut's region only).
    pub fault_around_regions: u64,
    /// Spinning after faults instead of blocking (see
    /// [`TrackerBuilder::spin`](crate::TrackerBuilder::spin)).
    pub spin: PolicyChoice,
    /// Share of recent faults that arrived within the spin window of the previous batch.
    pub spin_hit_rate: f64,
    /// Where faults are served.
    pub in_thread: PolicyChoice,
    /// Write faults per second over the epoch the last cut closed.
    pub fault_rate: f64,
    /// Faults per second the service thread can serve, from its measured service time.
    pub service_limit: f64,
}
