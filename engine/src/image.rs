//! Images (promptflow's `promptflow.contracts.multimedia.Image`, §7.4): flow inputs of `type: image`,
//! the values Python tools take and return, and how they are written into run outputs.
//!
//! An [`Image`] is a [`Value::Opaque`]: its bytes, its MIME type and, when it came from a URL, that URL.
//! It renders into a template as promptflow's placeholder `Image(<hash>)`, which a chat prompt turns
//! back into an `image_url` part. As JSON it is promptflow's dict form: `{"data:image/png;url": ...}`
//! when it has a URL, otherwise `{"data:image/png;base64": ...}`; [`persist`] writes images to files
//! and refers to them as `{"data:image/png;path": ...}` instead.
//!
//! ```
//! use sluice_engine::image::{Image, MessageFormat, load};
//! use sluice_engine::Value;
//!
//! let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg==";
//! let value = load(&Value::from(png), std::path::Path::new("."), MessageFormat::Basic).unwrap();
//! let image = Image::of(&value).unwrap();
//! assert_eq!(image.mime_type(), "image/png");
//! assert_eq!(value.py_str(), format!("Image({})", image.hash()));
//! ```

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use regex::Regex;

use crate::value::{Map, Opaque, Value};

mod fetch;

pub use fetch::{ALLOW_PRIVATE_URLS, FetchError, FetchFailure, MAX_BYTES, TIMEOUT};

/// `data:image/<format>;<path|base64|url>`, the key of promptflow's image dicts.
static KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^data:image/(.*);(path|base64|url)$").expect("valid regex"));

/// promptflow's test for base64 text (an optional `data:image/...;base64,` prefix).
static BASE64: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([A-Za-z0-9+/]{4})*(([A-Za-z0-9+/]{2})*(==|[A-Za-z0-9+/]=)?)?$")
        .expect("valid regex")
});

/// An image: its bytes, MIME type and the URL it came from, if any.
#[derive(Clone)]
pub struct Image {
    bytes: Arc<[u8]>,
    mime_type: String,
    source_url: Option<String>,
    hash: String,
    /// For an image known only by its URL: the fetch that its copies share.
    remote: Option<Arc<Remote>>,
}

/// The bytes of a URL image, fetched when a Python tool first needs them.
struct Remote {
    /// Whether the MIME type was given (`{"data:image/png;url": ...}`), or is for the bytes to tell.
    declared: bool,
    fetched: tokio::sync::OnceCell<Result<Image, FetchError>>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("mime_type", &self.mime_type)
            .field("bytes", &self.bytes.len())
            .field("source_url", &self.source_url)
            .field("fetched", &self.remote.is_none())
            .finish()
    }
}

/// Why a value is not an image.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("the image file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("cannot read the image file {}: {why}", path.display())]
    Read { path: PathBuf, why: String },
    #[error(
        "{0} is not an image (Sluice reads PNG, JPEG, GIF, WebP, BMP, TIFF, ICO, AVIF and HEIC)"
    )]
    NotImage(String),
    #[error("invalid base64 image data")]
    Base64,
    #[error("the image input should not be empty")]
    Empty,
    #[error(
        "invalid image input format: an image is a path, a URL, a data:image/...;base64 URI or a dict like {{\"data:image/<type>;[path|base64|url]\": <data>}}"
    )]
    Format,
    #[error(
        "invalid image input format: with `message_format: openai-vision` an image is a path, a URL, a data:image/...;base64 URI, {{\"type\": \"image_url\", \"image_url\": {{\"url\": <url or data URI>}}}} or {{\"type\": \"image_file\", \"image_file\": {{\"path\": <path>}}}}"
    )]
    VisionFormat,
    #[error("invalid image url {0}: it should be an http(s) URL or base64 data")]
    VisionUrl(String),
    #[error("unsupported image input type {0}: an image input is a string or a dict")]
    Type(String),
}

impl Image {
    /// An image of `bytes`; without a MIME type, the bytes tell it.
    pub fn new(bytes: Vec<u8>, mime_type: Option<&str>, source_url: Option<String>) -> Image {
        let mime_type = match mime_type {
            Some(m) => m.to_ascii_lowercase(),
            None => sniff(&bytes).unwrap_or("image/*").to_owned(),
        };
        let hash = sha1_hex(&bytes)[..8].to_owned();
        Image {
            bytes: bytes.into(),
            mime_type,
            source_url,
            hash,
            remote: None,
        }
    }

    /// An image known by its URL only, its bytes fetched when [`Image::fetched`] is first called.
    /// Without a MIME type, the fetched bytes tell it.
    pub fn remote(url: &str, mime_type: Option<&str>) -> Image {
        let mut image = Image::new(
            Vec::new(),
            Some(mime_type.unwrap_or("image/*")),
            Some(url.to_owned()),
        );
        // Until it is fetched, the URL names it, so that two URL images render as two placeholders.
        image.hash = sha1_hex(url.as_bytes())[..8].to_owned();
        image.remote = Some(Arc::new(Remote {
            declared: mime_type.is_some(),
            fetched: tokio::sync::OnceCell::new(),
        }));
        image
    }

    /// Whether the image is known by its URL only, its bytes not fetched yet.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The image with its bytes: a URL image is fetched (once for all its copies), as promptflow
    /// does before a Python tool gets it; other images are returned as they are.
    pub async fn fetched(&self) -> Result<Image, FetchError> {
        let Some(remote) = &self.remote else {
            return Ok(self.clone());
        };
        let url = self.source_url.clone().unwrap_or_default();
        remote
            .fetched
            .get_or_init(|| async {
                let got = fetch::fetch(&url).await?;
                // As promptflow's `Image`: a declared type stays; otherwise the bytes tell it, or
                // else the server's `Content-Type`.
                let mime = if remote.declared {
                    Some(self.mime_type.clone())
                } else if sniff(&got.bytes).is_some() {
                    None
                } else {
                    got.content_type
                };
                Ok(Image::new(got.bytes, mime.as_deref(), Some(url.clone())))
            })
            .await
            .clone()
    }

    /// The image inside `value`, if it is one.
    pub fn of(value: &Value) -> Option<&Image> {
        match value {
            Value::Opaque(o) => o.as_any().downcast_ref::<Image>(),
            _ => None,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn mime_type(&self) -> &str {
        &self.mime_type
    }

    pub fn source_url(&self) -> Option<&str> {
        self.source_url.as_deref()
    }

    /// The first 8 hex digits of the bytes' SHA-1, as promptflow names an image.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The bytes in base64; with `with_type`, as a `data:<mime>;base64,` URI.
    pub fn to_base64(&self, with_type: bool) -> String {
        let encoded = STANDARD.encode(&self.bytes);
        if with_type {
            format!("data:{};base64,{encoded}", self.mime_type)
        } else {
            encoded
        }
    }

    /// What a chat request carries: the source URL, else a `data:` URI of the bytes.
    pub fn url(&self) -> String {
        match &self.source_url {
            Some(u) => u.clone(),
            None => self.to_base64(true),
        }
    }

    /// As a value.
    pub fn into_value(self) -> Value {
        Value::Opaque(Arc::new(self))
    }
}

impl Opaque for Image {
    fn type_name(&self) -> String {
        "Image".to_owned()
    }

    fn to_str(&self) -> String {
        format!("Image({})", self.hash)
    }

    fn to_plain(&self) -> Option<Value> {
        let mut m = Map::new();
        match &self.source_url {
            Some(url) => m.insert(
                format!("data:{};url", self.mime_type),
                Value::String(url.clone()),
            ),
            None => m.insert(
                format!("data:{};base64", self.mime_type),
                Value::String(self.to_base64(false)),
            ),
        };
        Some(Value::Map(m))
    }

    fn is_media(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Whether `m` is one of promptflow's image dicts (one key, `data:image/...;path|base64|url`).
pub fn is_image_dict(m: &Map) -> bool {
    m.len() == 1 && m.keys().all(|k| KEY.is_match(k))
}

/// How a flow writes images in its inputs and outputs: its `message_format` (promptflow 1.15+).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageFormat {
    /// promptflow's dicts, `{"data:image/png;path": "x.png"}` (and `;base64`, `;url`).
    #[default]
    Basic,
    /// OpenAI's content parts, `{"type": "image_url", "image_url": {"url": ...}}`, and
    /// `{"type": "image_file", "image_file": {"path": ...}}` for files.
    OpenaiVision,
}

impl MessageFormat {
    /// The format a `message_format` value names (case-insensitive, as promptflow reads it).
    pub fn parse(name: &str) -> Option<MessageFormat> {
        match name.to_ascii_lowercase().as_str() {
            "basic" => Some(MessageFormat::Basic),
            "openai-vision" => Some(MessageFormat::OpenaiVision),
            _ => None,
        }
    }

    /// Whether `m` is an image in this format.
    pub fn is_image(self, m: &Map) -> bool {
        match self {
            MessageFormat::Basic => is_image_dict(m),
            MessageFormat::OpenaiVision => vision_image(m).is_some(),
        }
    }
}

/// What an `openai-vision` image dict holds: `("image_url", url)` or `("image_file", path)`.
fn vision_image(m: &Map) -> Option<(&str, &Value)> {
    if m.len() != 2 {
        return None;
    }
    let ty = m.get("type")?.as_str()?;
    let Value::Map(inner) = m.get(ty)? else {
        return None;
    };
    match ty {
        "image_url" => Some((ty, inner.get("url")?)),
        "image_file" => Some((ty, inner.get("path")?)),
        _ => None,
    }
}

/// A flow input value as an image, as promptflow's multimedia processor reads it: an image dict of
/// the flow's `format`, a `data:` URI or bare base64, an http(s) URL, or a file path (relative paths
/// from `base`).
///
/// A URL is kept as the image's source and sent to a model as it is; its bytes are fetched only
/// when a Python tool takes the image ([`fetch_all`]).
pub fn load(value: &Value, base: &Path, format: MessageFormat) -> Result<Value, ImageError> {
    match value {
        Value::Opaque(o) if o.is_media() => Ok(value.clone()),
        Value::Map(m) if format == MessageFormat::OpenaiVision => match vision_image(m) {
            Some(("image_url", Value::String(url))) if is_base64(url) => from_base64(url, None),
            Some(("image_url", Value::String(url))) if is_url(url) => Ok(from_url(url, None)),
            Some(("image_url", url)) => Err(ImageError::VisionUrl(url.py_str())),
            Some((_, Value::String(path))) => from_file(&base.join(path), None),
            _ => Err(ImageError::VisionFormat),
        },
        Value::Map(m) if is_image_dict(m) => {
            let (key, v) = m.iter().next().expect("one entry");
            let caps = KEY.captures(key).expect("matched");
            let mime = format!("image/{}", &caps[1]);
            let Value::String(data) = v else {
                return Err(ImageError::Format);
            };
            match &caps[2] {
                "path" => from_file(&base.join(data), Some(&mime)),
                "base64" => from_base64(data, Some(&mime)),
                _ => Ok(from_url(data, Some(&mime))),
            }
        }
        Value::Map(_) => Err(ImageError::Format),
        Value::String(s) if s.is_empty() => Err(ImageError::Empty),
        // An image dict given as text (`--inputs 'pic={"data:image/png;path": "x.png"}'`).
        Value::String(s) if s.trim_start().starts_with('{') => {
            match serde_json::from_str::<serde_json::Value>(s) {
                Ok(j @ serde_json::Value::Object(_)) => load(&Value::from(j), base, format),
                _ if format == MessageFormat::OpenaiVision => Err(ImageError::VisionFormat),
                _ => Err(ImageError::Format),
            }
        }
        Value::String(s) if is_base64(s) => from_base64(s, None),
        Value::String(s) if is_url(s) => Ok(from_url(s, None)),
        Value::String(s) => from_file(&base.join(s), None),
        other => Err(ImageError::Type(other.type_name())),
    }
}

/// Whether [`load`] (for an `image` input, `nested` false) or [`load_nested`] (a list or object
/// input, `nested` true) would read a file for `value`: a path, or an image dict of the `path` form.
/// A server refuses those from its clients, who have no business reading its files.
pub fn names_a_file(value: &Value, nested: bool, format: MessageFormat) -> bool {
    match value {
        Value::Map(m) if format == MessageFormat::OpenaiVision && vision_image(m).is_some() => {
            matches!(vision_image(m), Some(("image_file", _)))
        }
        Value::Map(m) if format == MessageFormat::Basic && is_image_dict(m) => {
            m.keys().all(|k| k.ends_with(";path"))
        }
        Value::Map(m) if nested => m.values().any(|v| names_a_file(v, true, format)),
        Value::List(items) if nested => items.iter().any(|v| names_a_file(v, true, format)),
        Value::String(s) if !nested => {
            if s.trim_start().starts_with('{') {
                serde_json::from_str::<serde_json::Value>(s)
                    .is_ok_and(|j| j.is_object() && names_a_file(&Value::from(j), false, format))
            } else {
                !s.is_empty() && !is_base64(s) && !is_url(s)
            }
        }
        _ => false,
    }
}

/// [`load`] on every image dict inside a list or object input (promptflow loads those too).
pub fn load_nested(value: Value, base: &Path, format: MessageFormat) -> Result<Value, ImageError> {
    match value {
        Value::Map(m) if format.is_image(&m) => load(&Value::Map(m), base, format),
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| load_nested(v, base, format).map(|v| (k, v)))
            .collect::<Result<Map, _>>()
            .map(Value::Map),
        Value::List(items) => items
            .into_iter()
            .map(|v| load_nested(v, base, format))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List),
        other => Ok(other),
    }
}

/// Makes the paths of image dicts inside `value` absolute, relative to `dir` (a data file's folder):
/// those of both formats, as data is read before the flow that takes it is known.
pub fn resolve_paths(value: &mut Value, dir: &Path) {
    let absolute = |p: &mut String| {
        if Path::new(p.as_str()).is_relative() {
            *p = dir.join(&*p).to_string_lossy().into_owned();
        }
    };
    if let Value::Map(m) = value
        && matches!(vision_image(m), Some(("image_file", Value::String(_))))
    {
        if let Some(Value::Map(file)) = m.get_mut("image_file")
            && let Some(Value::String(p)) = file.get_mut("path")
        {
            absolute(p);
        }
        return;
    }
    match value {
        Value::Map(m) if is_image_dict(m) => {
            for (k, v) in m.iter_mut() {
                if k.ends_with(";path")
                    && let Value::String(p) = v
                {
                    absolute(p);
                }
            }
        }
        Value::Map(m) => m.values_mut().for_each(|v| resolve_paths(v, dir)),
        Value::List(items) => items.iter_mut().for_each(|v| resolve_paths(v, dir)),
        _ => {}
    }
}

fn is_base64(s: &str) -> bool {
    let parts: Vec<&str> = s.split(',').collect();
    match parts.as_slice() {
        [prefix, data] => {
            prefix.starts_with("data:image/")
                && prefix.ends_with(";base64")
                && BASE64.is_match(data)
        }
        [data] => BASE64.is_match(data),
        _ => false,
    }
}

fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
            && !rest.is_empty()
            && !rest.starts_with('/')
    })
}

fn from_file(path: &Path, mime: Option<&str>) -> Result<Value, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::Missing(path.to_path_buf()),
        _ => ImageError::Read {
            path: path.to_path_buf(),
            why: e.to_string(),
        },
    })?;
    checked(bytes, mime, || path.display().to_string())
}

fn from_base64(s: &str, mime: Option<&str>) -> Result<Value, ImageError> {
    let data = s.rsplit(',').next().unwrap_or_default();
    let bytes = STANDARD.decode(data).map_err(|_| ImageError::Base64)?;
    checked(bytes, mime, || "the base64 data".to_owned())
}

fn from_url(url: &str, mime: Option<&str>) -> Value {
    Image::remote(url, mime).into_value()
}

/// Whether `value` holds an image whose bytes are not fetched yet.
pub fn has_remote(value: &Value) -> bool {
    match value {
        Value::List(items) => items.iter().any(has_remote),
        Value::Map(m) => m.values().any(has_remote),
        v => Image::of(v).is_some_and(Image::is_remote),
    }
}

/// `value` with the bytes of its URL images fetched ([`Image::fetched`]).
pub fn fetch_all(
    value: &Value,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, FetchError>> + Send + '_>> {
    Box::pin(async move {
        Ok(match value {
            v if !has_remote(v) => v.clone(),
            Value::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(fetch_all(item).await?);
                }
                Value::List(out)
            }
            Value::Map(m) => {
                let mut out = Map::new();
                for (k, item) in m {
                    out.insert(k.clone(), fetch_all(item).await?);
                }
                Value::Map(out)
            }
            v => match Image::of(v) {
                Some(image) => image.fetched().await?.into_value(),
                None => v.clone(),
            },
        })
    })
}

/// An image of `bytes`, which must be one.
fn checked(
    bytes: Vec<u8>,
    mime: Option<&str>,
    what: impl Fn() -> String,
) -> Result<Value, ImageError> {
    if sniff(&bytes).is_none() {
        return Err(ImageError::NotImage(what()));
    }
    Ok(Image::new(bytes, mime, None).into_value())
}

/// The MIME type the bytes' signature tells, for the image formats models take.
pub fn sniff(b: &[u8]) -> Option<&'static str> {
    let at = |i: usize, sig: &[u8]| b.get(i..i + sig.len()) == Some(sig);
    Some(if at(0, b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if at(0, b"\xff\xd8\xff") {
        "image/jpeg"
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        "image/gif"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "image/webp"
    } else if at(0, b"BM") {
        "image/bmp"
    } else if at(0, b"II*\0") || at(0, b"MM\0*") {
        "image/tiff"
    } else if at(0, b"\0\0\x01\0") {
        "image/x-icon"
    } else if at(4, b"ftypavif") {
        "image/avif"
    } else if at(4, b"ftypheic") || at(4, b"ftypheix") || at(4, b"ftypmif1") {
        "image/heic"
    } else {
        return None;
    })
}

/// Writes the images inside `value` to files in `dir` and puts promptflow's reference in their place:
/// `{"data:<mime>;path": "<prefix><file>"}` (a URL image stays `{"data:<mime>;url": ...}`), or with
/// `openai-vision`, `{"type": "image_file", "image_file": {"path": ...}}` (a URL image
/// `{"type": "image_url", "image_url": {"url": ...}}`). A file is named by its content's hash, so an
/// image written twice is one file.
pub fn persist(
    value: &Value,
    dir: &Path,
    prefix: &str,
    format: MessageFormat,
) -> std::io::Result<Value> {
    Ok(match value {
        Value::List(items) => Value::List(
            items
                .iter()
                .map(|v| persist(v, dir, prefix, format))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => Value::Map(
            m.iter()
                .map(|(k, v)| persist(v, dir, prefix, format).map(|v| (k.clone(), v)))
                .collect::<Result<_, _>>()?,
        ),
        v => match Image::of(v) {
            Some(image) if image.source_url.is_none() => {
                let ext = image.mime_type.rsplit('/').next().unwrap_or("*");
                let mut file = sha1_hex(&image.bytes);
                if ext != "*" {
                    file = format!("{file}.{ext}");
                }
                std::fs::create_dir_all(dir)?;
                let path = dir.join(&file);
                if !path.exists() {
                    std::fs::write(&path, &image.bytes)?;
                }
                let path = Value::String(format!("{prefix}{file}"));
                match format {
                    MessageFormat::Basic => {
                        let mut m = Map::new();
                        m.insert(format!("data:{};path", image.mime_type), path);
                        Value::Map(m)
                    }
                    MessageFormat::OpenaiVision => vision_dict("image_file", "path", path),
                }
            }
            Some(image) if format == MessageFormat::OpenaiVision => {
                vision_dict("image_url", "url", Value::String(image.url()))
            }
            _ => v.clone(),
        },
    })
}

/// `value` with its images in the flow's `format` as a client receives them (`flow serve`): with
/// `openai-vision`, `{"type": "image_url", "image_url": {"url": <URL or data URI>}}`; otherwise the
/// images stay (they are written as `{"data:<mime>;url|base64": ...}`).
pub fn for_client(value: Value, format: MessageFormat) -> Value {
    if format == MessageFormat::Basic {
        return value;
    }
    match value {
        Value::List(items) => {
            Value::List(items.into_iter().map(|v| for_client(v, format)).collect())
        }
        Value::Map(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| (k, for_client(v, format)))
                .collect(),
        ),
        v => match Image::of(&v) {
            Some(image) => vision_dict("image_url", "url", Value::String(image.url())),
            None => v,
        },
    }
}

/// `{"type": <ty>, <ty>: {<key>: <value>}}`.
fn vision_dict(ty: &str, key: &str, value: Value) -> Value {
    let mut inner = Map::new();
    inner.insert(key.to_owned(), value);
    let mut m = Map::new();
    m.insert("type".to_owned(), Value::String(ty.to_owned()));
    m.insert(ty.to_owned(), Value::Map(inner));
    Value::Map(m)
}

/// The SHA-1 of `data`, in hex (FIPS 180-4; only for naming images, not for security).
fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg==";

    #[test]
    fn sha1_matches_known_digests() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            sha1_hex(&[b'a'; 1000]),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn loads_the_forms_promptflow_accepts() {
        let dir = tempdir();
        std::fs::write(dir.join("x.png"), STANDARD.decode(PNG).unwrap()).unwrap();
        let uri = Value::from(format!("data:image/png;base64,{PNG}"));
        let forms = [
            Value::from("x.png"),
            uri,
            Value::from(PNG),
            serde_json::json!({"data:image/png;path": "x.png"}).into(),
            serde_json::json!({"data:image/png;base64": PNG}).into(),
        ];
        for form in forms {
            let v =
                load(&form, &dir, MessageFormat::Basic).unwrap_or_else(|e| panic!("{form:?}: {e}"));
            let image = Image::of(&v).unwrap();
            assert_eq!(image.mime_type(), "image/png");
            assert_eq!(image.to_base64(false), PNG);
        }
        let url: Value =
            serde_json::json!({"data:image/jpeg;url": "https://example.com/a.jpg"}).into();
        let v = load(&url, &dir, MessageFormat::Basic).unwrap();
        assert_eq!(Image::of(&v).unwrap().url(), "https://example.com/a.jpg");
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"data:image/jpeg;url": "https://example.com/a.jpg"})
        );
    }

    #[test]
    fn refuses_missing_files_and_what_is_not_an_image() {
        let dir = tempdir();
        std::fs::write(dir.join("notes.txt"), "hello").unwrap();
        assert!(matches!(
            load(&Value::from("gone.png"), &dir, MessageFormat::Basic),
            Err(ImageError::Missing(_))
        ));
        assert!(matches!(
            load(&Value::from("notes.txt"), &dir, MessageFormat::Basic),
            Err(ImageError::NotImage(_))
        ));
        assert_eq!(
            load(&Value::from(""), &dir, MessageFormat::Basic),
            Err(ImageError::Empty)
        );
        let other: Value = serde_json::json!({"path": "x.png"}).into();
        assert_eq!(
            load(&other, &dir, MessageFormat::Basic),
            Err(ImageError::Format)
        );
        assert!(matches!(
            load(&Value::Int(3), &dir, MessageFormat::Basic),
            Err(ImageError::Type(_))
        ));
    }

    #[test]
    fn persisted_images_are_files_referenced_by_path() {
        let dir = tempdir();
        let image = load(&Value::from(PNG), &dir, MessageFormat::Basic).unwrap();
        let out = persist(
            &Value::List(vec![image.clone(), image]),
            &dir.join("o"),
            "o/",
            MessageFormat::Basic,
        )
        .unwrap();
        let Value::List(items) = out else { panic!() };
        let Value::Map(m) = &items[0] else { panic!() };
        let path = m["data:image/png;path"].as_str().unwrap();
        assert!(path.starts_with("o/") && path.ends_with(".png"), "{path}");
        assert_eq!(
            std::fs::read(dir.join(path)).unwrap(),
            STANDARD.decode(PNG).unwrap()
        );
    }

    #[test]
    fn openai_vision_images_are_content_parts() {
        let dir = tempdir();
        std::fs::write(dir.join("x.png"), STANDARD.decode(PNG).unwrap()).unwrap();
        let vision = MessageFormat::OpenaiVision;
        let forms = [
            serde_json::json!({"type": "image_file", "image_file": {"path": "x.png"}}),
            serde_json::json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}}),
        ];
        for form in forms {
            let v =
                load(&form.clone().into(), &dir, vision).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(Image::of(&v).unwrap().to_base64(false), PNG);
        }
        let url: Value =
            serde_json::json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}).into();
        let v = load(&url, &dir, vision).unwrap();
        assert_eq!(
            Image::of(&v).unwrap().source_url(),
            Some("https://example.com/a.png")
        );
        // The basic dicts are not images of this format, nor a URL that is neither.
        let basic: Value = serde_json::json!({"data:image/png;path": "x.png"}).into();
        assert_eq!(load(&basic, &dir, vision), Err(ImageError::VisionFormat));
        let bad: Value =
            serde_json::json!({"type": "image_url", "image_url": {"url": "x.png"}}).into();
        assert!(matches!(
            load(&bad, &dir, vision),
            Err(ImageError::VisionUrl(_))
        ));

        let image = load(&Value::from(PNG), &dir, vision).unwrap();
        let out = persist(&image, &dir.join("o"), "o/", vision).unwrap();
        let path = out.to_json_lossy()["image_file"]["path"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(path.starts_with("o/") && path.ends_with(".png"), "{out:?}");
        assert_eq!(
            for_client(image, vision).to_json_lossy(),
            serde_json::json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}})
        );
        assert_eq!(
            persist(&v, &dir, "", vision).unwrap().to_json_lossy(),
            serde_json::json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}})
        );

        let mut data: Value =
            serde_json::json!([{"type": "image_file", "image_file": {"path": "x.png"}}]).into();
        resolve_paths(&mut data, &dir);
        assert_eq!(
            data.to_json_lossy()[0]["image_file"]["path"],
            dir.join("x.png").to_string_lossy().as_ref()
        );
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-image-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
