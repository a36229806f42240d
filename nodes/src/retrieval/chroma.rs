//! A Chroma server as an index's vector store (`--store chroma://HOST:PORT/COLLECTION`), through its
//! v2 HTTP API. Sluice embeds; Chroma stores the vectors, the chunk text and metadata, and searches.

use serde_json::{Map, Value as Json, json};
use tokio::sync::OnceCell;

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
    pub fn parse(url: &str) -> Result<Chroma, String> {
        let bad = || {
            format!(
                "`{url}` is not a Chroma store address: write chroma://HOST:PORT/COLLECTION (for example chroma://127.0.0.1:8000/docs)"
            )
        };
        let rest = url.strip_prefix("chroma://").ok_or_else(bad)?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, collection) = rest.split_once('/').ok_or_else(bad)?;
        if host.is_empty() || collection.is_empty() || collection.contains('/') {
            return Err(bad());
        }
        let (mut tenant, mut database) = ("default_tenant", "default_database");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("tenant", t)) => tenant = t,
                Some(("database", d)) => database = d,
                _ => return Err(format!("{}: unknown option `{pair}`", bad())),
            }
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| e.to_string())?;
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
    ) -> Result<Json, String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("Chroma ({}) answered {status}: {text}", self.url));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Json::Null))
    }

    fn unreachable(&self, e: reqwest::Error) -> String {
        format!(
            "cannot reach the Chroma server of {} ({e}); is `chroma run` running?",
            self.url
        )
    }

    /// Whether the collection exists (a 404 says it does not; other failures are errors).
    async fn exists(&self) -> Result<bool, String> {
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
            s => Err(format!(
                "Chroma ({}) answered {s}: {}",
                self.url,
                resp.text().await.unwrap_or_default()
            )),
        }
    }

    /// The collection's id; created (cosine space, the model in its metadata) when `create` is given.
    async fn id(&self, create: Option<(&str, usize)>) -> Result<&str, String> {
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
                    .ok_or_else(|| format!("Chroma gave no collection id: {v}"))
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
    ) -> Result<(), String> {
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
    pub async fn delete(&self, ids: &[String]) -> Result<(), String> {
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

    pub async fn count(&self) -> Result<u64, String> {
        let id = self.id(None).await?.to_owned();
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/collections/{id}/count"),
                None,
            )
            .await?;
        v.as_u64()
            .ok_or_else(|| format!("Chroma gave no count: {v}"))
    }

    /// The `k` nearest chunks passing `filter` (a Chroma `where` clause).
    pub async fn query(
        &self,
        q: &[f32],
        k: usize,
        filter: Option<Json>,
    ) -> Result<Vec<ChromaHit>, String> {
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
    pub async fn drop_collection(&self) -> Result<(), String> {
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
