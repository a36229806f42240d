//! A Chroma server as an index's vector store (`--store chroma://HOST:PORT/COLLECTION`), through its
//! v2 HTTP API. Sluice embeds; Chroma stores the vectors, the chunk text and metadata, and searches.

use std::collections::HashSet;

use async_trait::async_trait;
use rusqlite::Connection;
use serde_json::{Map, Value as Json, json};
use tokio::sync::OnceCell;

use super::document::Chunk;
use super::error::{ChromaError, StoreError};
use super::index::Hit;
use super::store::{FileChunks, Search, VectorStore};

/// One collection on one server.
#[derive(Debug)]
pub struct Chroma {
    http: reqwest::Client,
    /// `http://HOST:PORT/api/v2/tenants/T/databases/D`
    base: String,
    pub collection: String,
    url: String,
    id: OnceCell<String>,
}

/// A search result from the server.
#[derive(Debug)]
pub struct ChromaHit {
    pub id: String,
    pub distance: f64,
    pub document: String,
    pub metadata: Map<String, Json>,
}

impl Chroma {
    /// Parses `chroma://HOST:PORT/COLLECTION[?tenant=T&database=D]`.
    pub fn parse(url: &str) -> Result<Chroma, ChromaError> {
        let bad = |option: Option<&str>| ChromaError::BadAddress {
            url: url.to_owned(),
            option: option.map(str::to_owned),
        };
        let rest = url.strip_prefix("chroma://").ok_or_else(|| bad(None))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, collection) = rest.split_once('/').ok_or_else(|| bad(None))?;
        if host.is_empty() || collection.is_empty() || collection.contains('/') {
            return Err(bad(None));
        }
        let (mut tenant, mut database) = ("default_tenant", "default_database");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("tenant", t)) => tenant = t,
                Some(("database", d)) => database = d,
                _ => return Err(bad(Some(pair))),
            }
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|source| ChromaError::Unreachable {
                url: url.to_owned(),
                source,
            })?;
        Ok(Chroma {
            http,
            base: format!("http://{host}/api/v2/tenants/{tenant}/databases/{database}"),
            collection: collection.to_owned(),
            url: url.to_owned(),
            id: OnceCell::new(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<Json, ChromaError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(ChromaError::Refused {
                url: self.url.clone(),
                status,
                body: text,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Json::Null))
    }

    fn unreachable(&self, source: reqwest::Error) -> ChromaError {
        ChromaError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    fn malformed(&self, what: &'static str, v: &Json) -> ChromaError {
        ChromaError::Malformed {
            url: self.url.clone(),
            what,
            body: v.to_string(),
        }
    }

    /// Whether the collection exists (a 404 says it does not; other failures are errors).
    async fn exists(&self) -> Result<bool, ChromaError> {
        if self.id.initialized() {
            return Ok(true);
        }
        let url = format!("{}/collections/{}", self.base, self.collection);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            status => Err(ChromaError::Refused {
                url: self.url.clone(),
                status,
                body: resp.text().await.unwrap_or_default(),
            }),
        }
    }

    /// The collection's id; created (cosine space, the model in its metadata) when `create` is given.
    async fn id(&self, create: Option<(&str, usize)>) -> Result<&str, ChromaError> {
        self.id
            .get_or_try_init(|| async {
                let existing = self
                    .call(reqwest::Method::GET, &format!("/collections/{}", self.collection), None)
                    .await;
                let v = match (existing, create) {
                    (Ok(v), _) => v,
                    (Err(_), Some((model, dims))) => {
                        self.call(
                            reqwest::Method::POST,
                            "/collections",
                            Some(json!({
                                "name": self.collection,
                                "get_or_create": true,
                                "metadata": {"hnsw:space": "cosine", "sluice:model": model, "sluice:dims": dims},
                            })),
                        )
                        .await?
                    }
                    (Err(e), None) => return Err(e),
                };
                v["id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.malformed("collection id", &v))
            })
            .await
            .map(String::as_str)
    }

    /// Adds or replaces chunks.
    pub async fn upsert(
        &self,
        model: &str,
        ids: &[String],
        vectors: &[Vec<f32>],
        documents: &[String],
        metadatas: &[Map<String, Json>],
    ) -> Result<(), ChromaError> {
        let id = self
            .id(Some((model, vectors.first().map_or(0, Vec::len))))
            .await?
            .to_owned();
        for start in (0..ids.len()).step_by(256) {
            let end = (start + 256).min(ids.len());
            self.call(
                reqwest::Method::POST,
                &format!("/collections/{id}/upsert"),
                Some(json!({
                    "ids": ids[start..end],
                    "embeddings": vectors[start..end],
                    "documents": documents[start..end],
                    "metadatas": metadatas[start..end],
                })),
            )
            .await?;
        }
        Ok(())
    }

    /// Removes chunks; nothing to do when the collection was never created.
    pub async fn delete(&self, ids: &[String]) -> Result<(), ChromaError> {
        if ids.is_empty() || !self.exists().await? {
            return Ok(());
        }
        let id = self.id(None).await?.to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/collections/{id}/delete"),
            Some(json!({ "ids": ids })),
        )
        .await
        .map(drop)
    }

    pub async fn count(&self) -> Result<u64, ChromaError> {
        let id = self.id(None).await?.to_owned();
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/collections/{id}/count"),
                None,
            )
            .await?;
        v.as_u64().ok_or_else(|| self.malformed("count", &v))
    }

    /// The `k` nearest chunks passing `filter` (a Chroma `where` clause).
    pub async fn query(
        &self,
        q: &[f32],
        k: usize,
        filter: Option<Json>,
    ) -> Result<Vec<ChromaHit>, ChromaError> {
        let id = self.id(None).await?.to_owned();
        let mut body = json!({
            "query_embeddings": [q],
            "n_results": k,
            "include": ["documents", "metadatas", "distances"],
        });
        if let Some(w) = filter {
            body["where"] = w;
        }
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/collections/{id}/query"),
                Some(body),
            )
            .await?;
        let col = |key: &str| v[key][0].as_array().cloned().unwrap_or_default();
        let (ids, docs, metas, dists) = (
            col("ids"),
            col("documents"),
            col("metadatas"),
            col("distances"),
        );
        Ok(ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| ChromaHit {
                id: id.as_str().unwrap_or_default().to_owned(),
                distance: dists.get(i).and_then(Json::as_f64).unwrap_or(f64::NAN),
                document: docs
                    .get(i)
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                metadata: metas
                    .get(i)
                    .and_then(Json::as_object)
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Deletes the collection; done already when there is none.
    pub async fn drop_collection(&self) -> Result<(), ChromaError> {
        if !self.exists().await? {
            return Ok(());
        }
        self.call(
            reqwest::Method::DELETE,
            &format!("/collections/{}", self.collection),
            None,
        )
        .await
        .map(drop)
    }
}

/// Chroma keeps the vectors, and a copy of each chunk's text and metadata so that it can filter and
/// answer queries alone; its ids are the chunks' SQLite ids.
#[async_trait]
impl VectorStore for Chroma {
    fn create(&mut self, _db: &Connection, _dims: usize) -> Result<(), StoreError> {
        // The collection is created with the first vectors.
        Ok(())
    }

    async fn put(&mut self, _db: &mut Connection, file: FileChunks<'_>) -> Result<(), StoreError> {
        let metas: Vec<Map<String, Json>> = file
            .chunks
            .iter()
            .map(|c| chroma_metadata(file.key, c, file.metadata))
            .collect();
        let texts: Vec<String> = file.chunks.iter().map(|c| c.text.clone()).collect();
        let sids: Vec<String> = file.ids.iter().map(i64::to_string).collect();
        self.upsert(file.model, &sids, file.vectors, &texts, &metas)
            .await?;
        Ok(())
    }

    async fn remove(&mut self, _db: &mut Connection, ids: &[i64]) -> Result<(), StoreError> {
        let sids: Vec<String> = ids.iter().map(i64::to_string).collect();
        Ok(self.delete(&sids).await?)
    }

    async fn search(&mut self, db: &mut Connection, s: Search<'_>) -> Result<Vec<Hit>, StoreError> {
        if s.hybrid {
            return Err(StoreError::NoHybrid);
        }
        let list_keys = list_keys(db)?;
        let hits = self.query(s.q, s.k, s.filter.to_chroma(&list_keys)).await?;
        Ok(hits.into_iter().map(hit_from_chroma).collect())
    }

    async fn drop_all(&self) -> Result<(), StoreError> {
        Ok(self.drop_collection().await?)
    }

    async fn count(&self) -> Result<Option<u64>, StoreError> {
        Ok(Some(Chroma::count(self).await?))
    }
}

/// Metadata keys that hold lists somewhere in the index (filters on them test membership).
fn list_keys(db: &Connection) -> Result<HashSet<String>, StoreError> {
    let mut stmt = db.prepare_cached("SELECT DISTINCT metadata FROM chunks")?;
    let metas: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(metas
        .iter()
        .filter_map(|m| serde_json::from_str::<Map<String, Json>>(m).ok())
        .flat_map(|m| m.into_iter().filter(|(_, v)| v.is_array()).map(|(k, _)| k))
        .collect())
}

/// What Chroma keeps with a chunk: its metadata plus where it is (Chroma has no nulls or empty lists).
fn chroma_metadata(key: &str, c: &Chunk, metadata: &Map<String, Json>) -> Map<String, Json> {
    let mut m: Map<String, Json> = metadata
        .iter()
        .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    m.insert("sluice:source".into(), Json::String(key.to_owned()));
    m.insert("sluice:start".into(), Json::from(c.start));
    m.insert("sluice:end".into(), Json::from(c.end));
    if let Some(h) = &c.heading {
        m.insert("heading".into(), Json::String(h.clone()));
    }
    m
}

fn hit_from_chroma(h: ChromaHit) -> Hit {
    let mut m = h.metadata;
    let num = |v: Option<Json>| v.and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let source = m
        .remove("sluice:source")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let start = num(m.remove("sluice:start"));
    let end = num(m.remove("sluice:end"));
    let heading = m
        .remove("heading")
        .and_then(|v| v.as_str().map(str::to_owned));
    Hit {
        text: h.document,
        source,
        score: 1.0 - h.distance,
        start,
        end,
        heading,
        metadata: m,
    }
}
