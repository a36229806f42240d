//! A small client of an MLflow tracking server's REST API over `reqwest`: the calls an export makes,
//! and the reads a check of it needs. Bodies are the types of [`super::protocol`].

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{
    self, CreateExperiment, CreateExperimentResponse, CreateRun, ErrorBody, Experiment,
    GetExperimentResponse, KeyValue, ListArtifactsResponse, LogBatch, MetricHistoryResponse, Run,
    RunResponse, SearchRuns, SearchRunsResponse, UpdateRun,
};

/// How long a JSON call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an artifact upload or download may take.
const ARTIFACT_TIMEOUT: Duration = Duration::from_secs(600);
/// Tries of a call the server answered with 429, 502, 503 or 504.
const TRIES: u32 = 4;

/// What can go wrong talking to an MLflow server.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error(
        "`{url}` is not an MLflow tracking server URL: {reason} (give the server's address, e.g. http://127.0.0.1:5000)"
    )]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach the MLflow server at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("MLflow answered {status} to {method} {endpoint}: {error_code}: {message}")]
    Api {
        method: Method,
        endpoint: String,
        status: u16,
        /// MLflow's `error_code` (`RESOURCE_DOES_NOT_EXIST`, `INVALID_PARAMETER_VALUE`, ...), or the
        /// HTTP reason where the body was not MLflow's.
        error_code: String,
        message: String,
    },
    #[error("MLflow's answer to {method} {endpoint} is not what its protocol says")]
    Decode {
        method: Method,
        endpoint: String,
        #[source]
        source: serde_json::Error,
    },
}

impl MlflowError {
    /// MLflow's `error_code`, for an error answer.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            MlflowError::Api { error_code, .. } => Some(error_code),
            _ => None,
        }
    }
}

/// How requests prove who sends them, as MLflow's own client reads it from the environment.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// `Authorization: Bearer TOKEN` (`MLFLOW_TRACKING_TOKEN`).
    Bearer(String),
    /// HTTP basic authentication (`MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`), as
    /// `mlflow server --app-name basic-auth` takes it.
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Bearer(_) => "Bearer(***)",
            Auth::Basic { .. } => "Basic(***)",
        })
    }
}

impl Auth {
    /// `MLFLOW_TRACKING_TOKEN`, else `MLFLOW_TRACKING_USERNAME` with `MLFLOW_TRACKING_PASSWORD`, else
    /// none. The secrets are registered for redaction.
    pub fn from_env() -> Auth {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(token) = var("MLFLOW_TRACKING_TOKEN") {
            crate::redact::register_secret(&token);
            return Auth::Bearer(token);
        }
        match (
            var("MLFLOW_TRACKING_USERNAME"),
            var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Some(username), password) => {
                let password = password.unwrap_or_default();
                crate::redact::register_secret(&password);
                Auth::Basic { username, password }
            }
            _ => Auth::None,
        }
    }
}

/// A client of one MLflow tracking server.
#[derive(Clone, Debug)]
pub struct MlflowClient {
    /// The server's address, ending in `/` (a path prefix, `--static-prefix`, kept).
    base: Url,
    http: reqwest::Client,
    auth: Auth,
}

impl MlflowClient {
    /// A client of the server at `url` (`http://host:port`, with a path prefix if the server has one).
    pub fn new(url: &str, auth: Auth) -> Result<Self, MlflowError> {
        let invalid = |reason: &str| MlflowError::InvalidUrl {
            url: crate::redact::redact(url).into_owned(),
            reason: reason.to_owned(),
        };
        const NOT_HTTP: &str = "export speaks MLflow's REST API, so it needs an http:// or https:// address, not a file store or another scheme";
        let mut base = Url::parse(url.trim()).map_err(|e| {
            if url.contains("://") {
                invalid(&e.to_string())
            } else {
                invalid(NOT_HTTP)
            }
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(NOT_HTTP));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("it has no host"));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| MlflowError::Unreachable {
                url: base.to_string(),
                source: e,
            })?;
        Ok(MlflowClient { base, http, auth })
    }

    /// The server's address, as given (ending in `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The address of a run in the MLflow UI.
    pub fn run_url(&self, experiment_id: &str, run_id: &str) -> String {
        format!("{}#/experiments/{experiment_id}/runs/{run_id}", self.base)
    }

    fn url(&self, endpoint: &str) -> Url {
        // `endpoint` is one of ours (`api/2.0/...`), always a valid relative reference.
        self.base.join(endpoint).expect("a relative endpoint")
    }

    /// Sends a request built by `build` (once per try), retrying 429 and 502–504 answers with a
    /// growing wait, and returns the successful answer.
    async fn send(
        &self,
        method: Method,
        endpoint: &str,
        timeout: Duration,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, MlflowError> {
        let url = self.url(endpoint);
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=TRIES {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .timeout(timeout);
            req = match &self.auth {
                Auth::None => req,
                Auth::Bearer(token) => req.bearer_auth(token),
                Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
            };
            let resp = build(req)
                .send()
                .await
                .map_err(|e| MlflowError::Unreachable {
                    url: self.base.to_string(),
                    source: e.without_url(),
                })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let retry = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            if retry && attempt < TRIES {
                tracing::debug!("MLflow answered {status} to {method} {endpoint}; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                continue;
            }
            let html = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/html"));
            let text = resp.text().await.unwrap_or_default();
            let body: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
            let (error_code, message) = if !body.error_code.is_empty() {
                (body.error_code, body.message)
            } else {
                let reason = status.canonical_reason().unwrap_or("error").to_owned();
                if html {
                    (
                        reason,
                        format!(
                            "an HTML page, not MLflow's JSON: is {} the address of an MLflow tracking server (with its path prefix, if it has one)?",
                            self.base
                        ),
                    )
                } else {
                    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    (reason, protocol::fit(&one_line, 300).0)
                }
            };
            return Err(MlflowError::Api {
                method,
                endpoint: endpoint.to_owned(),
                status: status.as_u16(),
                error_code,
                message: crate::redact::redact(&message).into_owned(),
            });
        }
        unreachable!("the last try returns")
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        resp: reqwest::Response,
    ) -> Result<T, MlflowError> {
        let bytes = resp.bytes().await.map_err(|e| MlflowError::Unreachable {
            url: self.base.to_string(),
            source: e.without_url(),
        })?;
        serde_json::from_slice(&bytes).map_err(|source| MlflowError::Decode {
            method,
            endpoint: endpoint.to_owned(),
            source,
        })
    }

    /// `GET endpoint?query`, its JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<T, MlflowError> {
        let resp = self
            .send(Method::GET, endpoint, CALL_TIMEOUT, |r| r.query(query))
            .await?;
        self.decode(Method::GET, endpoint, resp).await
    }

    /// `POST endpoint` with a JSON body, its JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &B,
    ) -> Result<T, MlflowError> {
        let resp = self
            .send(Method::POST, endpoint, CALL_TIMEOUT, |r| r.json(body))
            .await?;
        self.decode(Method::POST, endpoint, resp).await
    }

    /// The experiment named `name`, if there is one (deleted ones included).
    pub async fn experiment_by_name(&self, name: &str) -> Result<Option<Experiment>, MlflowError> {
        match self
            .get::<GetExperimentResponse>(
                "api/2.0/mlflow/experiments/get-by-name",
                &[("experiment_name", name)],
            )
            .await
        {
            Ok(r) => Ok(Some(r.experiment)),
            Err(e) if e.error_code() == Some(protocol::RESOURCE_DOES_NOT_EXIST) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates an experiment; its id.
    pub async fn create_experiment(
        &self,
        name: &str,
        tags: &[KeyValue],
    ) -> Result<String, MlflowError> {
        let r: CreateExperimentResponse = self
            .post(
                "api/2.0/mlflow/experiments/create",
                &CreateExperiment { name, tags },
            )
            .await?;
        Ok(r.experiment_id)
    }

    /// Runs of an experiment that match an MLflow search `filter` (active runs only), newest first.
    pub async fn search_runs(
        &self,
        experiment_id: &str,
        filter: String,
    ) -> Result<Vec<Run>, MlflowError> {
        let r: SearchRunsResponse = self
            .post(
                "api/2.0/mlflow/runs/search",
                &SearchRuns {
                    experiment_ids: [experiment_id],
                    filter,
                    max_results: 100,
                },
            )
            .await?;
        Ok(r.runs)
    }

    pub async fn create_run(&self, req: &CreateRun<'_>) -> Result<Run, MlflowError> {
        let r: RunResponse = self.post("api/2.0/mlflow/runs/create", req).await?;
        Ok(r.run)
    }

    pub async fn update_run(&self, req: &UpdateRun<'_>) -> Result<(), MlflowError> {
        let _: serde_json::Value = self.post("api/2.0/mlflow/runs/update", req).await?;
        Ok(())
    }

    pub async fn get_run(&self, run_id: &str) -> Result<Run, MlflowError> {
        let r: RunResponse = self
            .get("api/2.0/mlflow/runs/get", &[("run_id", run_id)])
            .await?;
        Ok(r.run)
    }

    /// Logs one batch (within the limits: see [`LogBatch::split`]).
    pub async fn log_batch(&self, batch: &LogBatch) -> Result<(), MlflowError> {
        let _: serde_json::Value = self.post("api/2.0/mlflow/runs/log-batch", batch).await?;
        Ok(())
    }

    pub async fn metric_history(
        &self,
        run_id: &str,
        key: &str,
    ) -> Result<MetricHistoryResponse, MlflowError> {
        self.get(
            "api/2.0/mlflow/metrics/get-history",
            &[("run_id", run_id), ("metric_key", key)],
        )
        .await
    }

    pub async fn list_artifacts(
        &self,
        run_id: &str,
        path: &str,
    ) -> Result<ListArtifactsResponse, MlflowError> {
        self.get(
            "api/2.0/mlflow/artifacts/list",
            &[("run_id", run_id), ("path", path)],
        )
        .await
    }

    fn artifact_endpoint(root: &str, path: &str) -> String {
        format!(
            "api/2.0/mlflow-artifacts/artifacts/{}/{}",
            protocol::encode_path(root),
            protocol::encode_path(path)
        )
    }

    /// Uploads `bytes` as the artifact `path` under `root` (a run's artifact root as
    /// [`protocol::proxied_artifact_root`] gives it) through the server's artifacts proxy, replacing
    /// what was there.
    pub async fn upload_artifact(
        &self,
        root: &str,
        path: &str,
        bytes: &[u8],
    ) -> Result<(), MlflowError> {
        let endpoint = Self::artifact_endpoint(root, path);
        self.send(Method::PUT, &endpoint, ARTIFACT_TIMEOUT, |r| {
            r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes.to_vec())
        })
        .await?;
        Ok(())
    }

    /// Downloads the artifact `path` under `root` through the server's artifacts proxy.
    pub async fn download_artifact(&self, root: &str, path: &str) -> Result<Vec<u8>, MlflowError> {
        let endpoint = Self::artifact_endpoint(root, path);
        let resp = self
            .send(Method::GET, &endpoint, ARTIFACT_TIMEOUT, |r| r)
            .await?;
        let bytes = resp.bytes().await.map_err(|e| MlflowError::Unreachable {
            url: self.base.to_string(),
            source: e.without_url(),
        })?;
        Ok(bytes.to_vec())
    }
}
