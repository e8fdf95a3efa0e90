//! String helpers for text the exporter did not write (server answers, ids,
//! panic messages) on its way into a log line or an error: kept short, cut on
//! a character boundary. A leaf: imports nothing of the crate.

/// At most `max` bytes of `s`, cut back to a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Keeps server-provided text short: it ends up in logs and errors. Text
/// longer than `max` bytes is cut (on a character boundary) and ends in `...`.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    format!("{}...", cut(s, max))
}
