//! Progress on long work (bench synthesis, catch-up replay, checkpoint load and save), drawn on stderr with
//! `indicatif` only when stderr is a terminal: piped output (journald, `docker logs`, CI) stays plain lines.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

fn shown() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar over `len` steps, labelled `what`; hidden when stderr is not a terminal.
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let b = ProgressBar::new(len).with_style(style);
    b.set_message(what.to_string());
    b
}

/// A spinner for one long step (it ticks on its own), labelled `what`; hidden when stderr is not a terminal.
pub(crate) fn spinner(what: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let s = ProgressBar::new_spinner();
    s.set_message(what.to_string());
    s.enable_steady_tick(Duration::from_millis(120));
    s
}
