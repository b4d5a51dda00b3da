//! Progress of long work on a terminal (`brook check`, `brook produce`), drawn on stderr by
//! indicatif, and only when both stdout and stderr are terminals: piped or redirected, the
//! commands print exactly what they printed before.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress is shown: a person is watching (stdout and stderr are terminals).
pub fn wanted() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A bar for `total` bytes (a spinner counting bytes without a total); hidden unless
/// [`wanted`].
pub fn bytes(what: &str, total: Option<u64>) -> ProgressBar {
    if !wanted() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(t) => (
            ProgressBar::new(t),
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{msg} {spinner} {bytes} ({bytes_per_sec})",
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
