//! Fetching an image from its URL, as promptflow does before a Python tool gets it (its
//! `create_image_from_url`), with limits: http and https only, a timeout, a size cap, an answer that
//! is an image, and no loopback, private, link-local or other internal address (promptflow's
//! anti-SSRF policy) unless `SLUICE_ALLOW_PRIVATE_URLS=1` is set.
//!
//! Names are checked as they are resolved (a resolver that refuses internal addresses), so a
//! redirect, or a name that resolves differently the second time, cannot reach one; an IP address in
//! a URL, which is never resolved, is checked before each request and each redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The environment variable that lets images be fetched from internal addresses.
pub const ALLOW_PRIVATE_URLS: &str = "SLUICE_ALLOW_PRIVATE_URLS";

/// How long a fetch may take, from connecting to the last byte.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The largest image fetched (20 MiB, the size OpenAI takes).
pub const MAX_BYTES: usize = 20 * 1024 * 1024;

/// The most redirects followed.
const MAX_REDIRECTS: usize = 5;

/// How much of a failed answer's body an error quotes.
const QUOTED: usize = 200;

/// Why an image could not be fetched from its URL.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("Failed to fetch image from URL: {url}")]
pub struct FetchError {
    pub url: String,
    #[source]
    pub why: FetchFailure,
}

/// What went wrong when an image was fetched.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FetchFailure {
    #[error("only http and https URLs are fetched, not `{0}`")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "{host} is {addr}, a {kind} address; Sluice does not fetch images from loopback, private, link-local or other internal addresses. Set {ALLOW_PRIVATE_URLS}=1 to allow them"
    )]
    Internal {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
    #[error("cannot resolve {host}: {why}")]
    Resolve { host: String, why: String },
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
    #[error("the server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error(
        "the answer is not an image (content type `{0}`, and its bytes are no image format Sluice knows)"
    )]
    NotImage(String),
    #[error("the image is larger than {} MiB", MAX_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("no complete answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Http(String),
}

/// A fetched image: its bytes and the image type the server named (`image/png`), if it named one.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

/// Whether `SLUICE_ALLOW_PRIVATE_URLS` allows internal addresses.
fn allow_private() -> bool {
    static ALLOW: LazyLock<bool> = LazyLock::new(|| {
        std::env::var(ALLOW_PRIVATE_URLS)
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "True" | "yes"))
    });
    *ALLOW
}

/// The client every fetch shares: a resolver that refuses internal addresses, redirects checked, no
/// proxy (a proxy would resolve names where Sluice cannot check them).
fn client() -> Result<&'static reqwest::Client, FetchFailure> {
    static CLIENT: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
        let allow = allow_private();
        reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .dns_resolver(Arc::new(Guarded { allow }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error(FetchFailure::Redirects);
                }
                match check_url(attempt.url(), allow) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            }))
            .build()
            .map_err(|e| e.to_string())
    });
    CLIENT.as_ref().map_err(|e| FetchFailure::Http(e.clone()))
}

/// Fetches the image at `url`.
pub async fn fetch(url: &str) -> Result<Fetched, FetchError> {
    fetch_inner(url).await.map_err(|why| FetchError {
        url: url.to_owned(),
        why,
    })
}

async fn fetch_inner(url: &str) -> Result<Fetched, FetchFailure> {
    let parsed = Url::parse(url).map_err(|e| FetchFailure::Http(format!("invalid URL: {e}")))?;
    check_url(&parsed, allow_private())?;
    let client = client()?;
    let mut response = client.get(parsed).send().await.map_err(failure)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let mut body: String = body.chars().take(QUOTED).collect();
        if body.len() >= QUOTED {
            body.push('…');
        }
        return Err(FetchFailure::Status {
            status: status.as_u16(),
            body,
        });
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BYTES as u64)
    {
        return Err(FetchFailure::TooLarge);
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failure)? {
        if bytes.len() + chunk.len() > MAX_BYTES {
            return Err(FetchFailure::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let named_image = content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("image/"));
    if !named_image && super::sniff(&bytes).is_none() {
        return Err(FetchFailure::NotImage(
            content_type.unwrap_or_else(|| "none".to_owned()),
        ));
    }
    Ok(Fetched {
        bytes,
        content_type: content_type.filter(|_| named_image),
    })
}

/// The failure inside a reqwest error: a refusal of the resolver or the redirect policy, a timeout,
/// or the error's own text.
fn failure(e: reqwest::Error) -> FetchFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(f) = s.downcast_ref::<FetchFailure>() {
            return f.clone();
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchFailure::Timeout;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    FetchFailure::Http(text)
}

/// The scheme, and the address when the host is one (names are checked when resolved).
fn check_url(url: &Url, allow_private: bool) -> Result<(), FetchFailure> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchFailure::Scheme(url.scheme().to_owned()));
    }
    let Some(host) = url.host_str() else {
        return Err(FetchFailure::NoHost);
    };
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(addr) => check_addr(host, addr, allow_private),
        // A name: checked when it is resolved.
        Err(_) => Ok(()),
    }
}

fn check_addr(host: &str, addr: IpAddr, allow_private: bool) -> Result<(), FetchFailure> {
    match internal(addr) {
        Some(kind) if !allow_private => Err(FetchFailure::Internal {
            host: host.to_owned(),
            addr,
            kind,
        }),
        _ => Ok(()),
    }
}

/// A resolver that refuses a name when any of its addresses is internal (as promptflow's policy does).
struct Guarded {
    allow: bool,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| FetchFailure::Resolve {
                    host: host.clone(),
                    why: e.to_string(),
                })?
                .collect();
            for a in &addrs {
                check_addr(&host, a.ip(), allow)?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// What kind of internal address `addr` is, if it is one: promptflow's denied networks (loopback,
/// private, link-local, shared, reserved, documentation, benchmarking, multicast, Azure's WireServer),
/// with IPv4 inside IPv6 (mapped, or NAT64) checked as IPv4.
pub fn internal(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) => internal_v4(a),
        IpAddr::V6(a) => internal_v6(a),
    }
}

fn internal_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        u32::from(a) & mask == u32::from(Ipv4Addr::from(net)) & mask
    };
    Some(if a.is_loopback() {
        "loopback"
    } else if a.is_private() {
        "private"
    } else if a.is_link_local() {
        "link-local"
    } else if o[0] == 0 {
        "unspecified"
    } else if in_net([100, 64, 0, 0], 10) {
        "shared (carrier-grade NAT)"
    } else if a.is_multicast() {
        "multicast"
    } else if o[0] >= 240
        || in_net([192, 0, 0, 0], 24)
        || in_net([192, 0, 2, 0], 24)
        || in_net([198, 51, 100, 0], 24)
        || in_net([203, 0, 113, 0], 24)
        || in_net([192, 88, 99, 0], 24)
        || in_net([198, 18, 0, 0], 15)
        || in_net([25, 0, 0, 0], 8)
    {
        "reserved"
    } else if o == [168, 63, 129, 16] {
        "cloud metadata"
    } else {
        return None;
    })
}

fn internal_v6(a: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let s = a.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = s;
        return internal_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    }
    Some(if a.is_loopback() {
        "loopback"
    } else if a.is_unspecified() {
        "unspecified"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "private (unique local)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else if a.is_multicast() {
        "multicast"
    } else if s[0] == 0x2001 && s[1] == 0 {
        "reserved (Teredo)"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_those_promptflow_denies() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("198.18.0.1", "reserved"),
            ("168.63.129.16", "cloud metadata"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
        ] {
            assert_eq!(internal(addr.parse().unwrap()), Some(kind), "{addr}");
        }
        for addr in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert_eq!(internal(addr.parse().unwrap()), None, "{addr}");
        }
    }

    #[test]
    fn only_http_and_https_urls_are_fetched() {
        let url = Url::parse("file:///etc/passwd").unwrap();
        assert_eq!(
            check_url(&url, true),
            Err(FetchFailure::Scheme("file".into()))
        );
        let url = Url::parse("http://127.0.0.1:8080/a.png").unwrap();
        assert!(matches!(
            check_url(&url, false),
            Err(FetchFailure::Internal {
                kind: "loopback",
                ..
            })
        ));
        assert_eq!(check_url(&url, true), Ok(()));
        let url = Url::parse("http://[::1]/a.png").unwrap();
        assert!(check_url(&url, false).is_err());
    }
}
