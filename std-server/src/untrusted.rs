//! Text from outside (usernames, method names, paths, a device's strings,
//! errors that quote them) made safe to log: [`Untrusted`].
//!
//! Log lines are `key=value` text, one event per line. A value holding a
//! newline would start a line of its own that looks like the server's (a
//! forged `INFO ... login` after a username), and one holding a space or
//! `=` would add fields. So every value that comes from outside is logged
//! through [`Untrusted`]: a plain value (no space, quote, `=`, backslash or
//! control character) is written as it is, `user=alice`; anything else is
//! quoted with its specials escaped, `user="mallory\nINFO login"`.

use std::fmt;

/// A string from outside, displayed so that it stays one field of one log
/// line (see the module docs). `Debug` is the same as `Display`.
///
/// ```
/// use tether_server::untrusted::Untrusted;
/// assert_eq!(Untrusted("alice").to_string(), "alice");
/// assert_eq!(Untrusted("a\nb").to_string(), r#""a\nb""#);
/// assert_eq!(Untrusted("x=1 y").to_string(), r#""x=1 y""#);
/// ```
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

/// Characters that end a line or reorder text in a log viewer without being
/// Unicode controls (`char::is_control` covers C0, DEL and C1).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200E}' | '\u{200F}' | '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    )
}

fn is_plain(c: char) -> bool {
    !(c.is_control()
        || c.is_whitespace()
        || is_invisible_format(c)
        || matches!(c, '"' | '=' | '\\'))
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if !s.is_empty() && s.chars().all(is_plain) {
            return f.write_str(s);
        }
        f.write_str("\"")?;
        let mut plain_from = 0;
        for (i, c) in s.char_indices() {
            let escape = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                ' ' => None,
                c if c.is_control() || c.is_whitespace() || is_invisible_format(c) => {
                    f.write_str(&s[plain_from..i])?;
                    write!(f, "\\u{{{:x}}}", c as u32)?;
                    plain_from = i + c.len_utf8();
                    continue;
                }
                _ => None,
            };
            if let Some(e) = escape {
                f.write_str(&s[plain_from..i])?;
                f.write_str(e)?;
                plain_from = i + c.len_utf8();
            }
        }
        f.write_str(&s[plain_from..])?;
        f.write_str("\"")
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(s: &str) -> String {
        Untrusted(s).to_string()
    }

    #[test]
    fn plain_values_are_unchanged() {
        for s in ["alice", "zoë", "device-42@example.com", "/sessions/bob"] {
            assert_eq!(show(s), s);
        }
    }

    #[test]
    fn anything_that_could_break_a_line_or_a_field_is_quoted_and_escaped() {
        assert_eq!(show(""), r#""""#);
        assert_eq!(
            show("mallory\n2026-12-06T10:00:00Z  INFO login user=alice"),
            r#""mallory\n2026-12-06T10:00:00Z  INFO login user=alice""#
        );
        assert_eq!(show("a\r\tb"), r#""a\r\tb""#);
        assert_eq!(show("say \"hi\" \\o/"), r#""say \"hi\" \\o/""#);
        assert_eq!(show("x=1"), r#""x=1""#);
        assert_eq!(show("\u{1b}[31mred"), r#""\u{1b}[31mred""#);
        assert_eq!(show("nel\u{85}ls\u{2028}"), r#""nel\u{85}ls\u{2028}""#);
        assert_eq!(show("rtl\u{202e}txt"), r#""rtl\u{202e}txt""#);
        assert_eq!(show("nul\0"), r#""nul\u{0}""#);
        // Whatever the input, the output is one line.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = show(&all);
        assert!(!out.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']));
        assert_eq!(format!("{:?}", Untrusted("a b")), "\"a b\"");
    }
}
