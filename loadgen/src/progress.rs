//! Progress bars on stderr, so that stdout carries only the summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps labelled `prefix`; hidden when `shown` is false.
pub fn bar(shown: bool, prefix: &'static str, len: u64) -> ProgressBar {
    styled(
        shown,
        prefix,
        len,
        "{prefix:>11} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {msg}",
    )
}

/// A bar for a run of fixed length, in milliseconds: the steps themselves
/// mean nothing to a reader, so only the bar and the message show.
pub fn timer(shown: bool, prefix: &'static str, millis: u64) -> ProgressBar {
    styled(
        shown,
        prefix,
        millis,
        "{prefix:>11} [{elapsed_precise}] {wide_bar} {msg}",
    )
}

fn styled(shown: bool, prefix: &'static str, len: u64, template: &str) -> ProgressBar {
    let target = if shown {
        // A few redraws a second are plenty, and cheap next to the load.
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(ProgressStyle::with_template(template).expect("a valid progress template"));
    bar.set_prefix(prefix);
    bar
}
