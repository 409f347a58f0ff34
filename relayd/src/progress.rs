//! Progress of long commands (`relayd sim`, `relayd chaos`, `relayd bench`) on a terminal:
//! indicatif bars on stderr, hidden when stderr is not a terminal or the output is `--json`
//! (scripts read the result, not the progress).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often a spinner redraws.
const TICK_MS: u64 = 120;

/// Whether progress is drawn: stderr is a terminal and the command prints for people.
pub fn shown(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A bar of `length` steps named `what`, or a hidden one.
pub fn bar(length: u64, what: &str, json: bool) -> ProgressBar {
    if !shown(json) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_owned());
    bar
}

/// A spinner named `what` whose message is the latest step, or a hidden one.
pub fn spinner(what: &str, json: bool) -> ProgressBar {
    if !shown(json) {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    spinner.set_style(style);
    spinner.set_prefix(what.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(TICK_MS));
    spinner
}
