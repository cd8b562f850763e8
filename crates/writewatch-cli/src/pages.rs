//! `writewatch pages`: the page-state inspector for one process's mappings, as text or JSON.

use writewatch_core::inspect::{InspectError, Inspector, MappingPages, PageRuns, Select};

use crate::{chain, print_json, Failure, EXIT_OTHER};

/// Arguments of `writewatch pages`.
#[derive(Debug, clap::Args)]
pub(crate) struct PagesArgs {
    /// The process to inspect (default: this command itself). Needs ptrace-read access:
    /// the same user, or root.
    #[arg(long)]
    pid: Option<u32>,
    /// Only the parts of mappings inside START-END (hexadecimal addresses, page-aligned,
    /// e.g. 7f0000000000-7f0000004000).
    #[arg(long, conflicts_with = "mapping", value_parser = parse_range)]
    range: Option<(usize, usize)>,
    /// Only the mappings of this file (path as in /proc/PID/maps, or its file name).
    #[arg(long)]
    mapping: Option<String>,
    /// Use raw /proc/PID/pagemap reads only, as on kernels without PAGEMAP_SCAN.
    #[arg(long)]
    no_scan: bool,
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let hex = |x: &str| {
        let x = x.trim();
        let x = x
            .strip_prefix("0x")
            .or_else(|| x.strip_prefix("0X"))
            .unwrap_or(x);
        usize::from_str_radix(x, 16).map_err(|e| format!("{x:?} is not a hexadecimal address: {e}"))
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not START-END (e.g. 7f0000000000-7f0000004000)"))?;
    Ok((hex(a)?, hex(b)?))
}

fn failure(e: InspectError) -> Failure {
    Failure {
        code: EXIT_OTHER,
        message: chain(&e),
    }
}

pub(crate) fn pages(args: &PagesArgs, json: bool) -> Result<u8, Failure> {
    let mut inspector = Inspector::open(args.pid).map_err(failure)?;
    if args.no_scan {
        inspector = inspector.without_pagemap_scan();
    }
    let select = match (&args.range, &args.mapping) {
        (Some((start, end)), _) => Select::Range {
            start: *start,
            end: *end,
        },
        (None, Some(p)) => Select::Path(p.clone()),
        (None, None) => Select::All,
    };
    let report = inspector.inspect(&select).map_err(failure)?;
    if json {
        print_json(&report);
        return Ok(0);
    }
    println!(
        "pid {}: {} mappings (source {}, {}-byte pages; page numbers count from each mapping's start)",
        report.pid,
        report.mappings.len(),
        report.source,
        report.page_size
    );
    for m in &report.mappings {
        print_mapping(m);
    }
    let t = report.totals();
    println!(
        "total: Rss {} kB, Anonymous {} kB, Swap {} kB, Private {} kB, Shared {} kB, Hugetlb {} kB",
        t.rss_kb, t.anonymous_kb, t.swap_kb, t.private_kb, t.shared_kb, t.hugetlb_kb
    );
    for (field, why) in &report.not_available {
        println!("{field}: {why}");
    }
    Ok(0)
}

/// At most this many runs per field in text output (`--json` has them all).
const MAX_RUNS: usize = 8;

fn runs(r: &PageRuns) -> String {
    let mut s = r.pages.to_string();
    if r.pages == 0 {
        return s;
    }
    let shown: Vec<String> = r
        .runs
        .iter()
        .take(MAX_RUNS)
        .map(|&(f, c)| {
            if c == 1 {
                f.to_string()
            } else {
                format!("{f}-{}", f + c - 1)
            }
        })
        .collect();
    s.push_str(&format!(" [{}", shown.join(",")));
    if r.runs.len() > MAX_RUNS {
        s.push_str(&format!(",... +{} runs", r.runs.len() - MAX_RUNS));
    }
    s.push(']');
    s
}

fn opt(r: &Option<PageRuns>) -> String {
    r.as_ref().map_or_else(|| "-".to_string(), runs)
}

fn print_mapping(m: &MappingPages) {
    println!(
        "{:x}-{:x} {} {:?} {}",
        m.start, m.end, m.mapping.perms, m.mapping.kind, m.mapping.path
    );
    println!(
        "  present {}  swapped {}  anonymous {}  exclusive {}  shared {}",
        runs(&m.present),
        runs(&m.swapped),
        runs(&m.anonymous),
        runs(&m.exclusive),
        runs(&m.shared)
    );
    let mut extra = format!(
        "  zero-page {}  huge {}  written {}  soft-dirty {}",
        opt(&m.zero_page),
        opt(&m.huge),
        opt(&m.written),
        m.soft_dirty
            .as_ref()
            .map_or_else(|| "not available".to_string(), runs)
    );
    if m.file_uncopied.is_some() {
        extra.push_str(&format!(
            "  file-uncopied {}  cow-copied {}",
            opt(&m.file_uncopied),
            opt(&m.cow_copied)
        ));
    }
    if !m.wp_marker.is_empty() {
        extra.push_str(&format!("  wp-marker {}", runs(&m.wp_marker)));
    }
    println!("{extra}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ranges() {
        assert_eq!(super::parse_range("0x1000-2000"), Ok((0x1000, 0x2000)));
        assert!(super::parse_range("1000").is_err());
        assert!(super::parse_range("zz-1000").is_err());
    }
}
