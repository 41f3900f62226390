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

/// Whether `c` is invisible or reorders text when shown: control characters, zero-width
/// and bidirectional marks, no-break and other unusual spaces, the BOM.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00A0}' | '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
            | '\u{17B4}' | '\u{17B5}' | '\u{180E}' | '\u{2000}'..='\u{200F}'
            | '\u{2028}'..='\u{202F}' | '\u{205F}'..='\u{206F}' | '\u{3000}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}')
}

/// `s` with every [`is_invisible`] character written as `\u{…}` (and `\` as `\\`), so two
/// subjects that look alike on a page, in a table or in a log line can be told apart.
pub fn escape_invisible(s: &str) -> String {
    if !s.chars().any(|c| is_invisible(c) || c == '\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_invisible(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{clip, escape_invisible};

    #[test]
    fn invisible_characters_are_escaped() {
        assert_eq!(escape_invisible("alice"), "alice");
        assert_eq!(escape_invisible("al\u{200B}ice"), "al\\u{200b}ice");
        assert_eq!(escape_invisible("\u{202E}x\u{00A0}"), "\\u{202e}x\\u{00a0}");
        assert_eq!(escape_invisible("a\\u{200b}"), "a\\\\u{200b}");
    }

    #[test]
    fn cuts_to_characters_and_marks_control_characters() {
        assert_eq!(clip("transcribe\tstreams", 64), "transcribe\u{FFFD}streams");
        assert_eq!(clip("line\nbreak", 4), "line");
        assert_eq!(clip("ééé", 2), "éé");
    }
}
