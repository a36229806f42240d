//! One index = one SQLite file in `$SLUICE_HOME/indexes/<name>.sqlite`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::llm::embed::LocalEmbedder;
use crate::llm::store::{self, sha256_file};
use crate::llm::types::LlmError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    heading TEXT,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='porter unicode61');
";

/// Where indexes live.
pub fn indexes_dir() -> PathBuf {
    store::sluice_home().join("indexes")
}

/// The file of an index by name.
pub fn index_path(name: &str) -> Result<PathBuf, String> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "`{name}` is not a valid index name (letters, digits, `_`, `-`, `.`)"
        ));
    }
    Ok(indexes_dir().join(format!("{name}.sqlite")))
}

/// How text is cut into chunks.
#[derive(Clone, Copy, Debug)]
pub struct Chunking {
    /// Words per chunk (a word is about 1.3 tokens of English).
    pub size: usize,
    /// Words repeated from the end of the previous chunk.
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
        let step = c.size.saturating_sub(c.overlap).max(1);
        let mut i = 0;
        loop {
            let mut j = (i + c.size).min(words.len());
            // End at a paragraph break inside the last quarter, when there is one.
            if j < words.len() {
                let floor = i + c.size * 3 / 4;
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
            if j >= words.len() {
                break;
            }
            i = (i + step).min(j).max(i + 1);
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

/// Text of a file: Markdown and text as is, HTML without tags, scripts or styles.
pub fn extract(path: &Path) -> Result<String, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(if ext == "html" || ext == "htm" {
        strip_html(&raw)
    } else {
        raw
    })
}

fn strip_html(html: &str) -> String {
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

/// What a build did.
#[derive(Debug, Default, Serialize)]
pub struct BuildReport {
    pub files_embedded: usize,
    pub files_unchanged: usize,
    pub files_removed: usize,
    pub chunks_embedded: usize,
    pub chunks_total: usize,
}

/// A search hit.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    pub text: String,
    pub source: String,
    pub score: f64,
    pub start: usize,
    pub end: usize,
    pub heading: Option<String>,
}

/// An open index.
#[derive(Debug)]
pub struct Index {
    db: Connection,
}

fn sqlerr(e: rusqlite::Error) -> String {
    e.to_string()
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, String> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        let db = Connection::open(path).map_err(sqlerr)?;
        db.execute_batch(SCHEMA).map_err(sqlerr)?;
        Ok(Index { db })
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        self.db
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .ok()
            .flatten()
    }

    /// Files, chunks and the embedding model.
    pub fn info(&self) -> Result<serde_json::Value, String> {
        let count = |sql: &str| -> Result<i64, String> {
            self.db.query_row(sql, [], |r| r.get(0)).map_err(sqlerr)
        };
        Ok(serde_json::json!({
            "model": self.meta("model"),
            "dims": self.meta("dims").and_then(|d| d.parse::<u64>().ok()),
            "files": count("SELECT COUNT(*) FROM files")?,
            "chunks": count("SELECT COUNT(*) FROM chunks")?,
        }))
    }

    /// Adds or refreshes `sources` (files or folders of .txt/.md/.html); files whose content hash is
    /// unchanged are not embedded again, and files that are gone are removed.
    pub async fn build(
        &mut self,
        sources: &[PathBuf],
        model_name: &str,
        chunking: Chunking,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<BuildReport, String> {
        if let Some(m) = self.meta("model")
            && m != model_name
        {
            return Err(format!(
                "this index was built with the model `{m}`; rebuild it under another name to use `{model_name}`"
            ));
        }
        let (name, path) = store::resolve_model(model_name, Path::new("."))
            .map_err(|e| format!("embedding model `{}` is not installed: {}", e.name, e.help))?;
        let embedder = LocalEmbedder::get(&name, &path)
            .await
            .map_err(|e: LlmError| e.message)?;
        let mut files = Vec::new();
        for s in sources {
            collect(s, &mut files);
        }
        files.sort();
        files.dedup();
        let known: HashMap<String, String> = {
            let mut stmt = self
                .db
                .prepare("SELECT path, sha256 FROM files")
                .map_err(sqlerr)?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sqlerr)?
                .collect::<Result<_, _>>()
                .map_err(sqlerr)?
        };
        let mut report = BuildReport::default();
        let current: std::collections::HashSet<String> =
            files.iter().map(|f| f.display().to_string()).collect();
        for gone in known.keys().filter(|k| !current.contains(*k)) {
            self.remove_file(gone)?;
            report.files_removed += 1;
        }
        for (i, file) in files.iter().enumerate() {
            progress(i, files.len());
            let key = file.display().to_string();
            let digest = sha256_file(file).map_err(|e| format!("{key}: {e}"))?;
            if known.get(&key) == Some(&digest) {
                report.files_unchanged += 1;
                continue;
            }
            let text = extract(file)?;
            let chunks = chunk_text(&text, chunking);
            let mut vectors = Vec::with_capacity(chunks.len());
            for batch in chunks.chunks(32) {
                let texts = batch.iter().map(|c| c.text.clone()).collect();
                vectors.extend(embedder.embed(texts).await.map_err(|e| e.message)?);
            }
            self.remove_file(&key)?;
            let tx = self.db.transaction().map_err(sqlerr)?;
            for (c, v) in chunks.iter().zip(&vectors) {
                let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                tx.execute(
                    "INSERT INTO chunks (path, start, end, heading, text, embedding) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![key, c.start as i64, c.end as i64, c.heading, c.text, blob],
                )
                .map_err(sqlerr)?;
                tx.execute(
                    "INSERT INTO chunks_fts (rowid, text) VALUES (last_insert_rowid(), ?1)",
                    params![c.text],
                )
                .map_err(sqlerr)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO files (path, sha256, chunks) VALUES (?1, ?2, ?3)",
                params![key, digest, chunks.len() as i64],
            )
            .map_err(sqlerr)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('model', ?1)",
                params![name],
            )
            .map_err(sqlerr)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('dims', ?1)",
                params![embedder.dims().to_string()],
            )
            .map_err(sqlerr)?;
            tx.commit().map_err(sqlerr)?;
            report.files_embedded += 1;
            report.chunks_embedded += chunks.len();
        }
        progress(files.len(), files.len());
        report.chunks_total = self
            .db
            .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get::<_, i64>(0))
            .map_err(sqlerr)? as usize;
        Ok(report)
    }

    fn remove_file(&mut self, path: &str) -> Result<(), String> {
        let tx = self.db.transaction().map_err(sqlerr)?;
        tx.execute(
            "INSERT INTO chunks_fts (chunks_fts, rowid, text) SELECT 'delete', id, text FROM chunks WHERE path = ?1",
            params![path],
        )
        .map_err(sqlerr)?;
        tx.execute("DELETE FROM chunks WHERE path = ?1", params![path])
            .map_err(sqlerr)?;
        tx.execute("DELETE FROM files WHERE path = ?1", params![path])
            .map_err(sqlerr)?;
        tx.commit().map_err(sqlerr)
    }

    /// The `k` chunks nearest to `query` (exact cosine over every chunk); with `hybrid`, fused with
    /// BM25 by reciprocal rank (k = 60), the score then being the fused score.
    pub async fn query(&mut self, query: &str, k: usize, hybrid: bool) -> Result<Vec<Hit>, String> {
        let model = self
            .meta("model")
            .ok_or("the index is empty: build it first")?;
        let (name, path) = store::resolve_model(&model, Path::new("."))
            .map_err(|e| format!("embedding model `{}` is not installed: {}", e.name, e.help))?;
        let embedder = LocalEmbedder::get(&name, &path)
            .await
            .map_err(|e| e.message)?;
        let q = embedder
            .embed(vec![query.to_owned()])
            .await
            .map_err(|e| e.message)?
            .remove(0);
        let mut stmt = self
            .db
            .prepare("SELECT id, path, start, end, heading, text, embedding FROM chunks")
            .map_err(sqlerr)?;
        let mut scored: Vec<(i64, f64, Hit)> = stmt
            .query_map([], |r| {
                let blob: Vec<u8> = r.get(6)?;
                let dot: f32 = blob
                    .chunks_exact(4)
                    .zip(&q)
                    .map(|(b, x)| f32::from_le_bytes(b.try_into().expect("4 bytes")) * x)
                    .sum();
                Ok((
                    r.get::<_, i64>(0)?,
                    f64::from(dot),
                    Hit {
                        source: r.get(1)?,
                        start: r.get::<_, i64>(2)? as usize,
                        end: r.get::<_, i64>(3)? as usize,
                        heading: r.get(4)?,
                        text: r.get(5)?,
                        score: f64::from(dot),
                    },
                ))
            })
            .map_err(sqlerr)?
            .collect::<Result<_, _>>()
            .map_err(sqlerr)?;
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        if !hybrid {
            return Ok(scored.into_iter().take(k).map(|(_, _, h)| h).collect());
        }
        // BM25 ranks from FTS5 over the query's words.
        let terms: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .filter(|w| w.len() > 1 && !STOPWORDS.contains(&w.as_str()))
            .map(|w| format!("\"{w}\""))
            .collect();
        let mut bm25_rank: HashMap<i64, usize> = HashMap::new();
        if !terms.is_empty() {
            let mut fts = self
                .db
                .prepare("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?1 ORDER BY bm25(chunks_fts) LIMIT 200")
                .map_err(sqlerr)?;
            let ids = fts
                .query_map(params![terms.join(" OR ")], |r| r.get::<_, i64>(0))
                .map_err(sqlerr)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sqlerr)?;
            for (rank, id) in ids.into_iter().enumerate() {
                bm25_rank.insert(id, rank);
            }
        }
        let mut fused: Vec<(f64, Hit)> = scored
            .into_iter()
            .enumerate()
            .map(|(rank, (id, _, mut hit))| {
                let mut s = 1.0 / (60.0 + rank as f64 + 1.0);
                if let Some(r) = bm25_rank.get(&id) {
                    s += 1.0 / (60.0 + *r as f64 + 1.0);
                }
                hit.score = s;
                (s, hit)
            })
            .collect();
        fused.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(fused.into_iter().take(k).map(|(_, h)| h).collect())
    }
}

/// Words too common to say anything about a chunk's topic; left out of BM25 queries.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "in", "is", "it", "of", "on", "or", "out", "that", "the", "this", "to", "was", "what",
    "when", "where", "which", "who", "why", "with", "you",
];

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                collect(&e.path(), out);
            }
        }
    } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "txt" | "md" | "markdown" | "html" | "htm"
        )
    }) {
        out.push(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
