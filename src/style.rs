//! Colour in human output (stderr messages, `--format table`, progress, flow errors): only when the
//! stream is a terminal and `NO_COLOR` is not set to a non-empty value (<https://no-color.org>).
//! Machine-readable output (JSON on stdout) is never coloured.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::sync::OnceLock;

/// Whether to colour a stream: it is a terminal and `NO_COLOR` is absent or empty.
pub fn enabled(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

fn decide(is_terminal: bool) -> bool {
    enabled(is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

/// Whether stderr gets colour.
pub fn stderr() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| decide(std::io::stderr().is_terminal()))
}

/// Whether stdout gets colour (tables only; JSON never).
pub fn stdout() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| decide(std::io::stdout().is_terminal()))
}

/// What a piece of text is, which picks its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    Error,
    Warn,
    Ok,
    Help,
    Dim,
    Bold,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Error => "1;31",
            Paint::Warn => "33",
            Paint::Ok => "32",
            Paint::Help => "36",
            Paint::Dim => "2",
            Paint::Bold => "1",
        }
    }
}

/// `text` in the colour of `paint` when `on`, else unchanged.
pub fn paint(on: bool, paint: Paint, text: &str) -> String {
    if on && !text.is_empty() {
        format!("\x1b[{}m{text}\x1b[0m", paint.code())
    } else {
        text.to_owned()
    }
}

/// `error:` for messages on stderr, red on a terminal.
pub fn error_label() -> String {
    paint(stderr(), Paint::Error, "error:")
}

/// `warning:` for messages on stderr, yellow on a terminal.
pub fn warning_label() -> String {
    paint(stderr(), Paint::Warn, "warning:")
}

/// A run or line status word in its colour: completed green, failed or canceled red.
pub fn status(on: bool, text: &str) -> String {
    let p = match text {
        "Completed" => Paint::Ok,
        "Failed" | "Canceled" => Paint::Error,
        "Running" | "Bypassed" => Paint::Warn,
        _ => return text.to_owned(),
    };
    paint(on, p, text)
}

/// Colours rendered diagnostics line by line: `error…:` heads, `-->` locations, `= help:` notes and
/// the caret lines under snippets.
pub fn diagnostics(on: bool, text: &str) -> String {
    if !on {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let trimmed = body.trim_start();
        let painted = if body.starts_with("error") {
            match body.find(": ") {
                Some(i) => format!(
                    "{}{}",
                    paint(true, Paint::Error, &body[..i + 1]),
                    paint(true, Paint::Bold, &body[i + 1..])
                ),
                None => paint(true, Paint::Error, body),
            }
        } else if body.starts_with("warning") {
            paint(true, Paint::Warn, body)
        } else if trimmed.starts_with("-->") || trimmed.starts_with("... and") {
            paint(true, Paint::Dim, body)
        } else if trimmed.starts_with("= help:") {
            paint(true, Paint::Help, body)
        } else if let Some(rest) = body
            .strip_suffix('^')
            .filter(|r| r.trim_end().ends_with('|'))
        {
            format!(
                "{}{}",
                paint(true, Paint::Dim, rest),
                paint(true, Paint::Error, "^")
            )
        } else if trimmed.starts_with('|')
            || trimmed.split_once(" |").is_some_and(|(n, _)| {
                !n.trim().is_empty() && n.trim().chars().all(|c| c.is_ascii_digit())
            })
        {
            // The gutter of a snippet line (`8 |     text: ...`).
            match body.find('|') {
                Some(i) => format!("{}{}", paint(true, Paint::Dim, &body[..=i]), &body[i + 1..]),
                None => body.to_owned(),
            }
        } else {
            body.to_owned()
        };
        out.push_str(&painted);
        out.push_str(nl);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(enabled(true, None));
        assert!(!enabled(false, None), "not a terminal");
        assert!(!enabled(true, Some(OsStr::new("1"))), "NO_COLOR=1");
        assert!(!enabled(false, Some(OsStr::new("1"))));
        // no-color.org: set *and not empty*.
        assert!(enabled(true, Some(OsStr::new(""))), "NO_COLOR= (empty)");
    }

    #[test]
    fn painting_off_leaves_text_alone() {
        let text = "error[X]: bad\n  --> f.yaml:1:2\n  = help: fix it\n";
        assert_eq!(diagnostics(false, text), text);
        assert_eq!(paint(false, Paint::Error, "x"), "x");
        assert_eq!(status(false, "Failed"), "Failed");
    }

    #[test]
    fn diagnostics_are_coloured_and_keep_their_text() {
        let text = "error[NodeReferenceNotFound]: node `a` is bad\n  --> /f.yaml:8:11\n  |\n8 |     text: ${x}\n  |           ^\n  = help: nodes: a\n";
        let coloured = diagnostics(true, text);
        assert!(
            coloured.contains("\x1b[1;31merror[NodeReferenceNotFound]:\x1b[0m"),
            "{coloured:?}"
        );
        assert!(
            coloured.contains("\x1b[36m  = help: nodes: a\x1b[0m"),
            "{coloured:?}"
        );
        let plain: String = strip(&coloured);
        assert_eq!(plain, text);
    }

    fn strip(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}
