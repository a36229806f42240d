//! Secret scrubbing: one process-wide set of secret strings, and the functions every error, log line,
//! record and report passes through before it leaves the process.
//!
//! Connections register their secret values when they are loaded or resolved ([`register_secret`]);
//! [`redact`] then replaces each of them, and credentials written into URLs (`user:pass@`, `?key=`,
//! `&sig=`, ...) or after `Bearer`, by [`MASK`]. [`redact_json`] does the same to every string in a
//! JSON value. With no secret registered and no URL or bearer token in the text, [`redact`] returns the
//! text it was given without copying it.
//!
//! ```
//! use sluice_engine::redact::{redact, register_secret};
//!
//! register_secret("sk-doc-example-0123456789");
//! assert_eq!(redact("bad key sk-doc-example-0123456789"), "bad key ***");
//! assert_eq!(redact("http://u:pw@h/v1?api-key=abc&x=1"), "http://u:***@h/v1?api-key=***&x=1");
//! assert_eq!(redact("nothing to hide"), "nothing to hide");
//! ```

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};

use regex::Regex;

/// What a secret is replaced by.
pub const MASK: &str = "***";

/// Values shorter than this are not registered: masking `none`, `test` or `EMPTY` (vLLM's placeholder
/// key) everywhere would mangle ordinary text and protect nothing.
pub const MIN_SECRET_LEN: usize = 6;

/// Placeholder keys that local OpenAI-compatible servers ask for; they are not secret, and masking
/// them would hide the word wherever it appears.
const PLACEHOLDERS: &[&str] = &["ollama", "lm-studio", "not-needed", "sk-no-key-required"];

static ANY: AtomicBool = AtomicBool::new(false);
/// Longest first, so a secret that contains another is masked whole.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// `scheme://user:password@` — the password.
static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/?#@:"'<>]*):[^\s/?#@"'<>]+@"#)
        .expect("a valid pattern")
});
/// `?key=...` / `&api-key=...` / `&sig=...` — the value.
static URL_PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)([?&](?:api[-_]?key|key|subscription[-_]key|access[-_]?token|token|sig|signature|code|password|secret|client[-_]secret)=)[^&\s#"'<>]+"#,
    )
    .expect("a valid pattern")
});
/// `Bearer <token>` — the token.
static BEARER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{12,}=*").expect("a valid pattern")
});

/// Adds `secret` to the values [`redact`] masks, from now on and in every thread. Values shorter than
/// [`MIN_SECRET_LEN`] (after trimming) and known placeholder keys are ignored. The JSON-escaped form
/// is registered too, so a secret is also masked inside serialized JSON.
pub fn register_secret(secret: &str) {
    let s = secret.trim();
    if s.chars().count() < MIN_SECRET_LEN || PLACEHOLDERS.iter().any(|p| s.eq_ignore_ascii_case(p))
    {
        return;
    }
    let quoted = serde_json::to_string(s).unwrap_or_default();
    let escaped = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(s);
    let mut set = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    for v in [s, escaped] {
        if !v.is_empty() && !set.iter().any(|have| have == v) {
            set.push(v.to_owned());
        }
    }
    set.sort_by_key(|v| std::cmp::Reverse(v.len()));
    ANY.store(true, Ordering::Release);
}

/// Registers the value of every environment variable whose name looks secret ([`is_secret_key`]:
/// `OPENAI_API_KEY`, `AZURE_CLIENT_SECRET`, `HF_TOKEN`, `DB_PASSWORD`, ...).
pub fn register_env_secrets() {
    for (name, value) in std::env::vars_os() {
        if let (Some(name), Some(value)) = (name.to_str(), value.to_str())
            && is_secret_key(name)
        {
            register_secret(value);
        }
    }
}

/// Whether a setting named `key` holds a secret: `api_key`, `apikey`, `key`, `token`, `secret`,
/// `password`, `client_secret`, `access_token`, and any name ending in `_key`, `_secret`, `_token` or
/// `password` (case and `-`/`_` do not matter).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase().replace('-', "_");
    matches!(
        k.as_str(),
        "key"
            | "apikey"
            | "token"
            | "secret"
            | "passwd"
            | "authorization"
            | "credential"
            | "credentials"
            | "connection_string"
    ) || ["_key", "_secret", "_token", "password", "apikey"]
        .iter()
        .any(|end| k.ends_with(end))
}

/// Whether any secret has been registered.
pub fn has_secrets() -> bool {
    ANY.load(Ordering::Acquire)
}

/// Whether [`redact`] might mask something in `text`: a secret is registered, or `text` holds an
/// `@` (of a URL's user info), a `=` (of a URL's parameter) or the word `bearer` in any case. False
/// for most text, found with two vectorised scans: every record and log line passes through here.
pub fn may_mask(text: &[u8]) -> bool {
    ANY.load(Ordering::Acquire) || may_hold_credential(text)
}

/// Whether `text` holds what a credential in a URL or a bearer token needs.
fn may_hold_credential(text: &[u8]) -> bool {
    memchr::memchr2(b'=', b'@', text).is_some() || has_bearer(text)
}

/// Whether `text` holds the word `bearer`, in any case.
fn has_bearer(text: &[u8]) -> bool {
    memchr::memchr2_iter(b'b', b'B', text).any(|at| {
        text.get(at + 1..at + 6)
            .is_some_and(|rest| rest.eq_ignore_ascii_case(b"earer"))
    })
}

/// `text` with every registered secret, URL credential and bearer token replaced by [`MASK`].
/// Borrows `text` when there is nothing to mask.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !may_mask(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    if ANY.load(Ordering::Acquire) {
        let secrets = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
    }
    if out.contains("://") && out.contains('@') {
        replace(&mut out, &URL_USERINFO, "${1}:***@");
    }
    if out.contains('=') {
        replace(&mut out, &URL_PARAM, "${1}***");
    }
    if has_bearer(out.as_bytes()) {
        replace(&mut out, &BEARER, "${1}***");
    }
    out
}

fn replace(out: &mut Cow<'_, str>, re: &Regex, with: &str) {
    let replaced = match re.replace_all(out, with) {
        Cow::Owned(s) => Some(s),
        Cow::Borrowed(_) => None,
    };
    if let Some(s) = replaced {
        *out = Cow::Owned(s);
    }
}

/// Redacts a string in place; no allocation when there is nothing to mask.
pub fn redact_string(s: &mut String) {
    if let Cow::Owned(r) = redact(s) {
        *s = r;
    }
}

/// Redacts every string (and object key) in `value`, in place.
pub fn redact_json(value: &mut serde_json::Value) {
    use serde_json::Value as J;
    match value {
        J::String(s) => redact_string(s),
        J::Array(items) => items.iter_mut().for_each(redact_json),
        J::Object(map) => {
            if map.keys().any(|k| matches!(redact(k), Cow::Owned(_))) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(redact(&k).into_owned(), v);
                }
            }
            map.values_mut().for_each(redact_json);
        }
        J::Null | J::Bool(_) | J::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The set is process-wide: each test registers values of its own.

    #[test]
    fn registered_secrets_are_masked_everywhere_in_text_and_json() {
        register_secret("sk-unit-test-AAAA1111");
        register_secret("sk-unit-test-AAAA1111-longer");
        register_secret("pa\"ss\\word-99");
        assert!(has_secrets());
        assert_eq!(
            redact("key sk-unit-test-AAAA1111 and sk-unit-test-AAAA1111-longer."),
            "key *** and ***."
        );
        let mut v = serde_json::json!({
            "error": {"message": "Incorrect API key provided: sk-unit-test-AAAA1111"},
            "list": ["x", "pa\"ss\\word-99"],
            "sk-unit-test-AAAA1111": 1,
        });
        redact_json(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("AAAA1111") && !text.contains("word-99"),
            "{text}"
        );
        assert_eq!(v["error"]["message"], "Incorrect API key provided: ***");
        assert_eq!(v["***"], 1);
        // Inside serialized JSON, where `"` and `\` are escaped, too.
        let line = serde_json::to_string(&serde_json::json!({"e": "pa\"ss\\word-99"})).unwrap();
        assert!(!redact(&line).contains("word-99"), "{}", redact(&line));
    }

    #[test]
    fn short_values_and_placeholders_are_not_registered() {
        register_secret("abc");
        register_secret("  test ");
        register_secret("ollama");
        assert_eq!(redact("abc test ollama"), "abc test ollama");
    }

    #[test]
    fn credentials_in_urls_and_bearer_tokens_are_masked() {
        assert_eq!(
            redact("GET https://bob:hunter22@example.com/v1/x failed"),
            "GET https://bob:***@example.com/v1/x failed"
        );
        assert_eq!(
            redact("https://r.example.com/o?api-version=1&api-key=abc123&sig=Zm9v%3D&code=x1"),
            "https://r.example.com/o?api-version=1&api-key=***&sig=***&code=***"
        );
        assert_eq!(redact("http://h/v1?key=AIzaSyXYZ"), "http://h/v1?key=***");
        for (said, masked) in [
            (
                "Authorization: Bearer abcdefghijklmnop0123",
                "Authorization: Bearer ***",
            ),
            ("bearer abcdefghijklmnop0123", "bearer ***"),
            ("x BeArEr abcdefghijklmnop0123", "x BeArEr ***"),
        ] {
            assert_eq!(redact(said), masked);
        }
        // What may hold a credential is told from what cannot.
        for (text, may) in [
            ("a=b", true),
            ("bob@example.com", true),
            ("BEARER", true),
            ("the bearer", true),
            ("eight by=", true),
            ("sixteen bytes...@", true),
            ("sixteen bytes...Bearer", true),
            ("beare", false),
            ("bear with me", false),
            ("Bb bB BBBBBBBBBBBB bbbbbbbbbbbb earer", false),
            ("https://example.com/path", false),
            ("a long line of plain text, like most", false),
            ("", false),
        ] {
            assert_eq!(may_hold_credential(text.as_bytes()), may, "{text}");
        }
        // Ordinary text is left alone, borrowed.
        for plain in [
            "a=b, x == y",
            "mail bob@example.com",
            "http://example.com/a?x=1&keyword=2",
            "the bearer of news",
        ] {
            assert!(matches!(redact(plain), Cow::Borrowed(_)), "{plain}");
        }
    }

    #[test]
    fn secret_looking_keys() {
        for k in [
            "api_key",
            "apikey",
            "key",
            "token",
            "secret",
            "password",
            "client_secret",
            "access_token",
            "OPENAI_API_KEY",
            "db-password",
            "refresh_token",
            "aws_secret",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "api_base",
            "api_version",
            "organization",
            "model",
            "max_tokens",
            "keys",
            "deployment_name",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
