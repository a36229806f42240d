//! Documents: the text and metadata of a file (Markdown front matter, HTML titles, PDF text), and
//! how text is cut into chunks.

use std::path::{Path, PathBuf};

use super::error::DocumentError;
use serde_json::{Map, Value as Json};

/// The file kinds an index reads.
pub const EXTENSIONS: &[&str] = &["txt", "md", "markdown", "html", "htm", "pdf"];

/// A file's text and the metadata every chunk of it carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    pub text: String,
    /// `file` (the file name), `title` where one is found, and the scalar or list values of a Markdown
    /// front matter block.
    pub metadata: Map<String, Json>,
}

/// Reads a file into a [`Document`]: Markdown and text as they are (less a `---` front matter block,
/// which becomes metadata), HTML without tags, scripts or styles, PDF as its text.
pub fn read(path: &Path) -> Result<Document, DocumentError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut metadata = Map::new();
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        metadata.insert("file".into(), Json::String(name.to_owned()));
    }
    let text = if ext == "pdf" {
        let bytes = std::fs::read(path)?;
        // The PDF parser panics on some malformed files; a bad file must not take the build down.
        let text = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(&bytes))
            .map_err(|_| DocumentError::PdfPanicked)?
            .map_err(DocumentError::Pdf)?;
        tidy_pdf_text(&text)
    } else {
        let raw = std::fs::read(path)?;
        let raw = String::from_utf8(raw).map_err(|e| DocumentError::NotUtf8 {
            byte: e.utf8_error().valid_up_to(),
        })?;
        if ext == "html" || ext == "htm" {
            if let Some(t) = html_title(&raw) {
                metadata.insert("title".into(), Json::String(t));
            }
            strip_html(&raw)
        } else {
            let (front, body) = split_front_matter(&raw);
            if let Some(front) = front {
                front_matter(front, &mut metadata)?;
            }
            body.to_owned()
        }
    };
    if !metadata.contains_key("title")
        && let Some(h) = text.lines().find_map(|l| l.trim_start().strip_prefix("# "))
    {
        metadata.insert("title".into(), Json::String(h.trim().to_owned()));
    }
    Ok(Document { text, metadata })
}

/// Splits `---\n...\n---\n` off the start of a Markdown file.
fn split_front_matter(raw: &str) -> (Option<&str>, &str) {
    let Some(rest) = raw
        .strip_prefix("---\n")
        .or_else(|| raw.strip_prefix("---\r\n"))
    else {
        return (None, raw);
    };
    let mut pos = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return (Some(&rest[..pos]), &rest[pos + line.len()..]);
        }
        pos += line.len();
    }
    (None, raw)
}

/// The scalar and list-of-scalar entries of a YAML front matter block.
fn front_matter(yaml: &str, out: &mut Map<String, Json>) -> Result<(), DocumentError> {
    use yaml_rust2::Yaml;
    fn scalar(y: &Yaml) -> Option<Json> {
        Some(match y {
            Yaml::String(s) => Json::String(s.clone()),
            Yaml::Real(s) => s.parse::<f64>().ok().map(Json::from)?,
            Yaml::Integer(i) => Json::from(*i),
            Yaml::Boolean(b) => Json::Bool(*b),
            _ => return None,
        })
    }
    let doc = sluice_engine::yaml::load_document(yaml, Path::new("")).map_err(|e| {
        DocumentError::FrontMatter {
            span: e.span.to_string(),
            message: e.message,
        }
    })?;
    let Yaml::Hash(map) = doc else {
        return Ok(());
    };
    for (k, v) in map {
        let Some(k) = k.as_str() else { continue };
        let value = match &v {
            Yaml::Array(items) => Json::Array(items.iter().filter_map(scalar).collect()),
            other => match scalar(other) {
                Some(j) => j,
                None => continue,
            },
        };
        out.insert(k.to_owned(), value);
    }
    Ok(())
}

fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let a = lower.find("<title")?;
    let a = a + lower[a..].find('>')? + 1;
    let b = a + lower[a..].find("</title>")?;
    let t = html[a..b].trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// PDF text comes with hard line breaks inside paragraphs and runs of spaces; paragraphs are kept.
fn tidy_pdf_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for para in text.split("\n\n") {
        let words: Vec<&str> = para.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&words.join(" "));
    }
    out
}

/// The files under `path` that an index reads, absolute.
///
/// Inside a folder, symlinked folders are not entered (no loops, no leaving the tree), a symlinked file
/// is taken only when it points inside the folder (else a warning says it was skipped), and only regular
/// files are taken: a FIFO, socket or device named `*.txt` is skipped without being opened (reading a
/// FIFO blocks forever).
pub fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let root = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        walk(path, &root, out);
    } else if has_document_extension(path) {
        if path.metadata().is_ok_and(|m| m.is_file()) {
            out.push(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        } else {
            tracing::warn!("skipping {}: not a regular file", path.display());
        }
    }
}

fn has_document_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ty) = e.file_type() else { continue };
        if ty.is_dir() {
            walk(&p, root, out);
            continue;
        }
        if !has_document_extension(&p) {
            continue;
        }
        if ty.is_symlink() {
            let target = std::fs::canonicalize(&p);
            match target {
                Ok(t) if !t.starts_with(root) => {
                    tracing::warn!(
                        "skipping {}: a link to {}, outside {}",
                        p.display(),
                        t.display(),
                        root.display()
                    );
                    continue;
                }
                Ok(t) if t.is_file() => {}
                _ => {
                    tracing::warn!("skipping {}: not a regular file", p.display());
                    continue;
                }
            }
        } else if !ty.is_file() {
            tracing::warn!("skipping {}: not a regular file", p.display());
            continue;
        }
        out.push(std::path::absolute(&p).unwrap_or(p));
    }
}

/// How text is cut into chunks.
#[derive(Clone, Copy, Debug)]
pub struct Chunking {
    /// The most a chunk may weigh: words for [`chunk_text`], tokens of the embedding model in an index.
    pub size: usize,
    /// How much of the end of a chunk the next one repeats, in the same unit.
    pub overlap: usize,
}

/// One chunk of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Byte offsets in the (extracted) text.
    pub start: usize,
    pub end: usize,
    /// The nearest Markdown heading above the chunk.
    pub heading: Option<String>,
    pub text: String,
}

/// Cuts text into chunks of about `size` words with `overlap`, never across a Markdown heading, and
/// preferring paragraph ends.
pub fn chunk_text(text: &str, c: Chunking) -> Vec<Chunk> {
    chunk_text_weighted(text, c, &|words| vec![1; words.len()])
}

/// Like [`chunk_text`], with `size` and `overlap` counted in a unit that `weigh` gives per word (the
/// embedding model's tokens, for an index). A word heavier than `size` is a chunk of its own.
pub fn chunk_text_weighted(
    text: &str,
    c: Chunking,
    weigh: &dyn Fn(&[&str]) -> Vec<usize>,
) -> Vec<Chunk> {
    // Sections start at headings.
    let mut sections: Vec<(usize, usize, Option<String>)> = Vec::new();
    let mut start = 0;
    let mut heading = None;
    let mut pos = 0;
    let mut in_fence = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
        }
        // A Markdown heading: `#`s then a space, outside fenced code.
        let is_heading = !in_fence
            && trimmed.starts_with('#')
            && trimmed.trim_start_matches('#').starts_with(' ');
        if is_heading && pos > start {
            sections.push((start, pos, heading.clone()));
            start = pos;
        }
        if is_heading {
            heading = Some(trimmed.trim().trim_start_matches('#').trim().to_owned());
        }
        pos += line.len();
    }
    sections.push((start, text.len(), heading));
    let mut out = Vec::new();
    for (s, e, heading) in sections {
        let words: Vec<(usize, usize)> = word_spans(&text[s..e])
            .map(|(a, b)| (a + s, b + s))
            .collect();
        if words.is_empty() {
            continue;
        }
        let texts: Vec<&str> = words.iter().map(|&(a, b)| &text[a..b]).collect();
        // Running sums of the weights: the weight of words[x..y] is at[y] - at[x].
        let mut at = vec![0usize; words.len() + 1];
        for (k, w) in weigh(&texts).into_iter().enumerate().take(words.len()) {
            at[k + 1] = at[k] + w.max(1);
        }
        let n = words.len();
        let size = c.size.max(1);
        let mut i = 0;
        loop {
            let mut j = i + 1;
            while j < n && at[j + 1] - at[i] <= size {
                j += 1;
            }
            // End at a paragraph break inside the last quarter, when there is one.
            if j < n {
                let floor = (i..j).find(|&k| at[k] - at[i] >= size * 3 / 4).unwrap_or(j);
                if let Some(k) = (floor..j)
                    .rev()
                    .find(|&k| text[words[k].1..words[k + 1].0].contains("\n\n"))
                {
                    j = k + 1;
                }
            }
            let (a, b) = (words[i].0, words[j - 1].1);
            out.push(Chunk {
                start: a,
                end: b,
                heading: heading.clone(),
                text: text[a..b].to_owned(),
            });
            if j >= n {
                break;
            }
            // The next chunk repeats the tail of this one that weighs at most `overlap`, as long as
            // it can still take the word after this chunk (else it would end where this one does).
            i = (i + 1..=j)
                .find(|&k| at[j] - at[k] <= c.overlap && at[j + 1] - at[k] <= size)
                .unwrap_or(j);
        }
    }
    out
}

fn word_spans(s: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, ch) in s.char_indices() {
        match (ch.is_whitespace(), start) {
            (true, Some(a)) => {
                spans.push((a, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(a) = start {
        spans.push((a, s.len()));
    }
    spans.into_iter()
}

pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while i < html.len() {
        if lower[i..].starts_with("<script") || lower[i..].starts_with("<style") {
            let close = if lower[i..].starts_with("<script") {
                "</script>"
            } else {
                "</style>"
            };
            i = lower[i..]
                .find(close)
                .map_or(html.len(), |p| i + p + close.len());
            continue;
        }
        if html[i..].starts_with('<') {
            let end = html[i..].find('>').map_or(html.len(), |p| i + p + 1);
            let tag = &lower[i..end];
            if [
                "<p", "<br", "<div", "<li", "<h1", "<h2", "<h3", "</p", "</div",
            ]
            .iter()
            .any(|t| tag.starts_with(t))
            {
                out.push('\n');
            }
            i = end;
            continue;
        }
        let ch = html[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_becomes_metadata() {
        let dir = std::env::temp_dir().join(format!("sluice-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.md");
        let read_back = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read(&p).unwrap()
        };
        let d = read_back(
            "---\ntitle: Batch runs\ntags: [runs, batch]\nlevel: 2\n---\n# Heading\nbody text\n",
        );
        assert_eq!(d.text, "# Heading\nbody text\n");
        assert_eq!(
            Json::Object(d.metadata),
            serde_json::json!({"file": "a.md", "title": "Batch runs", "tags": ["runs", "batch"], "level": 2})
        );
        let d = read_back("no front matter\n---\n");
        assert_eq!(d.text, "no front matter\n---\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn front_matter_with_an_alias_bomb_is_an_error() {
        let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            yaml.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let mut out = Map::new();
        let err = front_matter(&yaml, &mut out).unwrap_err().to_string();
        assert!(err.contains("alias"), "{err}");
        assert!(front_matter("a: 1\na: 2\n", &mut out).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn collect_stays_in_the_folder_and_takes_regular_files_only() {
        use std::os::unix::fs::symlink;
        let base = std::env::temp_dir().join(format!("sluice-collect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (docs, outside) = (base.join("docs"), base.join("outside"));
        std::fs::create_dir_all(docs.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(docs.join("a.md"), "a").unwrap();
        std::fs::write(docs.join("sub/b.txt"), "b").unwrap();
        std::fs::write(outside.join("secret.txt"), "s").unwrap();
        symlink(&docs, docs.join("sub/loop")).unwrap();
        symlink(&outside, docs.join("out")).unwrap();
        symlink(outside.join("secret.txt"), docs.join("secret.txt")).unwrap();
        symlink(docs.join("a.md"), docs.join("sub/alias.md")).unwrap();
        let fifo = docs.join("pipe.txt");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut files = vec![];
        collect(&docs, &mut files);
        files.sort();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(&docs).unwrap().display().to_string())
            .collect();
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(names, ["a.md", "sub/alias.md", "sub/b.txt"]);
    }

    #[test]
    fn chunks_overlap_and_respect_headings() {
        let text = "# One\nalpha beta gamma delta\n```\n# not a heading\n```\n# Two\nzeta eta";
        let chunks = chunk_text(
            text,
            Chunking {
                size: 4,
                overlap: 1,
            },
        );
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "# One\nalpha beta",
                "beta gamma delta\n```",
                "```\n# not a",
                "a heading\n```",
                "# Two\nzeta eta"
            ]
        );
        // A `#` line inside fenced code does not start a section.
        assert_eq!(chunks[3].heading.as_deref(), Some("One"));
        assert_eq!(chunks[4].heading.as_deref(), Some("Two"));
        assert_eq!(&text[chunks[1].start..chunks[1].end], chunks[1].text);
    }

    /// The texts of the chunks [`chunk_text_weighted`] cuts `text` into.
    fn weighted_texts(
        text: &str,
        size: usize,
        overlap: usize,
        weigh: &dyn Fn(&[&str]) -> Vec<usize>,
    ) -> Vec<String> {
        chunk_text_weighted(text, Chunking { size, overlap }, weigh)
            .into_iter()
            .map(|c| c.text)
            .collect()
    }

    #[test]
    fn weights_decide_where_chunks_end() {
        // "bb" weighs 3: with size 4 the first chunk ends after it, and as it weighs more than the
        // overlap (1), nothing is repeated.
        let text = "aa bb cc dd ee";
        let weigh = |ws: &[&str]| ws.iter().map(|w| if *w == "bb" { 3 } else { 1 }).collect();
        assert_eq!(weighted_texts(text, 4, 1, &weigh), ["aa bb", "cc dd ee"]);
        assert_eq!(weighted_texts(text, 3, 1, &weigh), ["aa", "bb", "cc dd ee"]);
        // A heavy word after the chunk: the overlap is dropped rather than repeating the tail alone.
        let weigh = |ws: &[&str]| ws.iter().map(|w| if *w == "x" { 5 } else { 1 }).collect();
        assert_eq!(weighted_texts("a b c x", 5, 2, &weigh), ["a b c", "x"]);
    }

    #[test]
    fn html_loses_tags_scripts_and_styles() {
        let t = strip_html(
            "<html><style>p{}</style><p>Hello &amp; bye</p><script>x()</script><div>two</div></html>",
        );
        assert_eq!(
            t.split_whitespace().collect::<Vec<_>>(),
            ["Hello", "&", "bye", "two"]
        );
    }
}
