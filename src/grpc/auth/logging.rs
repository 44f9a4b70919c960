//! Caller-controlled text made safe for log lines.

/// Longest caller-controlled text (a token's header or claims, or an error
/// quoting them) written to a log line, in characters.
const MAX_LOGGED_CHARS: usize = 256;

/// Caller-controlled text as it may go into a log line: control
/// characters (newlines, ANSI escapes) escaped as in Rust's `{:?}`, and
/// cut after [`MAX_LOGGED_CHARS`] characters, so a forged token can
/// neither fake log lines nor restyle a terminal nor flood the log.
pub(crate) fn loggable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_LOGGED_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_LOGGED_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_token_text_has_no_control_characters_and_a_bounded_length() {
        let forged = "HS256\n\u{1b}[31mFORGED\r";
        let logged = loggable(forged);
        assert!(!logged.chars().any(char::is_control), "{logged}");
        assert!(logged.contains("FORGED"));
        let long = loggable(&"x".repeat(100_000));
        assert_eq!(long.chars().count(), MAX_LOGGED_CHARS + 1);
    }
}
