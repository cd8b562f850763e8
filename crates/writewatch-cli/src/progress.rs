//! The progress line of long store operations (restore, verify, compact) on a terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use writewatch_checkpoint::{Progress, Store};

use crate::human_bytes;

/// Width of the progress line: never more than 79 columns (no wrap on an 80-column
/// terminal), less if `COLUMNS` says the terminal is narrower.
fn progress_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|&c| c >= 20)
        .map_or(79, |c| (c - 1).min(79))
}

/// Rates with SI-style suffixes: 950, 12.3k, 4.5M.
fn human_count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// One progress line: `what [bar] done/total pages, N pages/s, X MiB/s, eta`. Page rates
/// are in pages per second and byte rates come from the bytes actually moved (never pages
/// labelled as bytes); the line is at most `width` columns.
pub(crate) fn progress_line(what: &str, p: Progress, elapsed: Duration, width: usize) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let pages_s = p.pages_done as f64 / secs;
    let bytes_s = p.bytes as f64 / secs;
    let total = p.pages_total.unwrap_or(0).max(p.pages_done);
    let eta = if pages_s > 0.0 && total > p.pages_done {
        format!(" eta {:.0}s", (total - p.pages_done) as f64 / pages_s)
    } else {
        String::new()
    };
    let tail = format!(
        " {}/{} pages {} pages/s {}/s{eta}",
        p.pages_done,
        total,
        human_count(pages_s),
        human_bytes(bytes_s as u64)
    );
    let head = format!("{what} ");
    let room = width.saturating_sub(head.chars().count() + tail.chars().count() + 2);
    let bar = if room >= 5 {
        let bar_w = room.min(40);
        let filled = if total == 0 {
            0
        } else {
            ((p.pages_done as f64 / total as f64) * bar_w as f64) as usize
        }
        .min(bar_w);
        format!("[{}{}]", "=".repeat(filled), " ".repeat(bar_w - filled))
    } else {
        String::new()
    };
    let line = format!("{head}{bar}{tail}");
    line.chars().take(width).collect()
}

/// A progress line on stderr, hidden when stderr is not a terminal.
pub(crate) fn progress_bar(store: &mut Store, what: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let b = bar.clone();
    let what = what.to_string();
    let start = Mutex::new(None::<Instant>);
    let width = progress_width();
    store.set_progress(Some(Arc::new(move |p: Progress| {
        let t0 = *start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        b.set_message(progress_line(&what, p, t0.elapsed(), width));
    })));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The progress line labelled pages per second as "KiB/s" and wrapped past 80 columns.
    #[test]
    fn progress_line_units_and_width() {
        let p = Progress {
            pages_done: 123_456_789,
            pages_total: Some(987_654_321),
            bytes: 123_456_789 * 4096,
        };
        for width in [79, 60, 30] {
            let line = progress_line("restore", p, Duration::from_secs(2), width);
            assert!(line.chars().count() <= width, "{line:?}");
        }
        let line = progress_line("restore", p, Duration::from_secs(2), 79);
        // 61.7M pages/s; bytes/s from the bytes moved: 123456789 * 4096 / 2 = 235.5 GiB/s.
        assert!(line.contains("61.7M pages/s"), "{line}");
        assert!(line.contains("235.5 GiB/s"), "{line}");
        assert!(!line.contains("KiB/s"), "{line}");
        let small = Progress {
            pages_done: 512,
            pages_total: Some(1024),
            bytes: 512 * 4096,
        };
        let line = progress_line("verify", small, Duration::from_secs(1), 79);
        assert!(
            line.contains("512 pages/s") && line.contains("2.0 MiB/s"),
            "{line}"
        );
        assert!(line.contains('[') && line.contains("eta 1s"), "{line}");
    }
}
