//! Untrusted text made safe to keep: at most `max` characters, control characters
//! shown as `�`, before it reaches an audit event, a log line or an error detail.

/// `s` cut to `max` characters, each control character replaced by U+FFFD (so nothing
/// can forge a line break, and nothing is silently joined).
pub fn clip(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn cuts_to_characters_and_marks_control_characters() {
        assert_eq!(clip("transcribe\tstreams", 64), "transcribe\u{FFFD}streams");
        assert_eq!(clip("line\nbreak", 4), "line");
        assert_eq!(clip("ééé", 2), "éé");
    }
}
