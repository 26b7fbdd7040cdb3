//! Progress of long work: a bar on a terminal; elsewhere callers log with `tracing`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` rows, or `None` when stderr is not a terminal.
pub fn rows_bar(total: u64, message: &'static str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30} {human_pos}/{human_len} rows [{elapsed_precise} ETA {eta}] {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    Some(bar)
}
