//! What the CLI may write to a terminal. Message texts, account names and error messages come
//! from peers and servers; written raw, their escape sequences would move the cursor, rewrite
//! earlier lines, set the window title or reorder what is shown (bidi overrides). Every human
//! line goes through [`escape`], which shows each such character as a visible escape and keeps
//! everything else as it is; JSON lines go through [`json_line`], which keeps every text exact
//! for a JSON reader but writes those characters as `\uXXXX`, so a JSON line shown in a terminal
//! is harmless too.
//!
//! Escapes, in human output: `\\` for a backslash (so an escape cannot be forged), `\n`, `\r`
//! and `\t`; `\xHH` for the other C0 controls and DEL (ESC is `\x1b`, BEL `\x07`, backspace
//! `\x08`); `\u{HH}` for C1 controls (`\u{9b}` is a one-byte CSI) and `\u{HHHH}` for the bidi
//! and line-breaking format characters of [`is_format_control`].

use std::io;

use serde::Serialize;

/// `text` on one line with every control character shown as a visible escape.
pub fn escape(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\\' => shown.push_str("\\\\"),
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                shown.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if c.is_control() || is_format_control(c) => {
                shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => shown.push(c),
        }
    }
    shown
}

/// Whether `character` is an invisible format character a terminal may act on: the bidi
/// embeddings, overrides, isolates and marks (they reorder what follows them, so a text can
/// show something other than what it says), and the Unicode line and paragraph separators.
pub fn is_format_control(character: char) -> bool {
    matches!(
        character,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// `value` as one line of JSON whose strings decode to exactly what they hold, with every
/// control and format character written as a `\uXXXX` escape (serde_json escapes only C0).
pub fn json_line<T: Serialize>(value: &T) -> serde_json::Result<String> {
    let mut bytes = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, TerminalSafeJson);
    value.serialize(&mut serializer)?;
    // Invariant: serde_json writes UTF-8, and the formatter only adds ASCII escapes.
    String::from_utf8(bytes).map_err(|error| serde_json::Error::io(io::Error::other(error)))
}

/// A compact JSON formatter that also escapes DEL, C1 controls and format characters.
struct TerminalSafeJson;

impl serde_json::ser::Formatter for TerminalSafeJson {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, character) in fragment.char_indices() {
            if character.is_control() || is_format_control(character) {
                writer.write_all(&fragment.as_bytes()[start..index])?;
                // Every such character is in the Basic Multilingual Plane: one \u escape.
                write!(writer, "\\u{:04x}", u32::from(character))?;
                start = index + character.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible() {
        assert_eq!(
            escape("\x1b[2J\x1b]0;pwned\x07hi\r"),
            "\\x1b[2J\\x1b]0;pwned\\x07hi\\r"
        );
        assert_eq!(escape("a\x08b\x7fc\0"), "a\\x08b\\x7fc\\x00");
        assert_eq!(escape("two\nlines\tand a tab"), "two\\nlines\\tand a tab");
        // A one-byte CSI and NEL (C1 controls), which some terminals act on.
        assert_eq!(escape("\u{9b}31m\u{85}"), "\\u{9b}31m\\u{85}");
        // A right-to-left override makes "exe.txt" show as "txt.exe".
        assert_eq!(escape("file\u{202e}txt.exe"), "file\\u{202e}txt.exe");
        assert_eq!(
            escape("\u{2066}x\u{2069}\u{2028}"),
            "\\u{2066}x\\u{2069}\\u{2028}"
        );
    }

    #[test]
    fn ordinary_text_is_kept_and_escapes_cannot_be_forged() {
        assert_eq!(escape("héllo → bob ✓✓ 日本 🙂"), "héllo → bob ✓✓ 日本 🙂");
        // A text that spells an escape is shown with its backslash doubled: what a person sees
        // always tells a real control character from one typed out.
        assert_eq!(escape("\\x1b"), "\\\\x1b");
        assert_ne!(escape("\\x1b"), escape("\x1b"));
        assert_eq!(escape(""), "");
    }

    #[test]
    fn nothing_a_terminal_acts_on_survives_escaping() {
        for code in (0..0x3000).chain(0xfff0..0x10000) {
            let Some(character) = char::from_u32(code) else {
                continue;
            };
            let shown = escape(&character.to_string());
            assert!(
                !shown
                    .chars()
                    .any(|c| c.is_control() || is_format_control(c)),
                "U+{code:04X} shows as {shown:?}"
            );
        }
    }

    #[test]
    fn json_keeps_the_text_exact_and_escapes_controls() {
        let text = "\x1b[2J\x1b]0;pwned\x07hi\r\u{9b}\u{7f}\u{202e}é\"\\";
        let line = json_line(&serde_json::json!({ "text": text })).expect("json");
        assert!(
            !line.chars().any(|c| c.is_control() || is_format_control(c)),
            "{line:?}"
        );
        assert!(line.contains("\\u001b[2J"), "{line}");
        assert!(line.contains("\\u009b") && line.contains("\\u007f") && line.contains("\\u202e"));
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("parses");
        assert_eq!(parsed["text"], text, "a JSON reader gets the exact text");
    }
}
