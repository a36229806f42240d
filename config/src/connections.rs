//! Connections (§11): named endpoints and their secrets, in `$SLUICE_HOME/connections/<name>.json`
//! (folder 0700, files 0600). Secrets are never printed: [`Connection::redacted`] masks them.
//! String values may be `${env:VAR}`, resolved when a flow uses the connection.
//!
//! A setting is a secret when promptflow puts it under `secrets:` or its name looks like one
//! ([`sluice_engine::redact::is_secret_key`]: `api_key`, `token`, `password`, `client_secret`, any
//! `*_key`, ...). Every secret value a connection holds, and every one resolved from the environment,
//! is registered with [`sluice_engine::redact`] as the connection is read, so it is masked in every
//! error, log line and record the process writes.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_engine::redact;

use crate::store::sluice_home;

/// The kinds of connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionType {
    /// The in-process llama.cpp backend; `configs.model` names the default model.
    Local,
    /// OpenAI or any OpenAI-compatible server (vLLM, Ollama, `sluice model serve`).
    OpenAi,
    AzureOpenAi,
    Custom,
    // promptflow's other connection types: Sluice stores them for the Python tools that take them.
    Serverless,
    Serp,
    CognitiveSearch,
    AzureContentSafety,
    FormRecognizer,
    Qdrant,
    Weaviate,
    #[serde(rename = "azure_ai_services")]
    AzureAiServices,
}

impl ConnectionType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(
            match s.to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
                "local" | "llama_cpp" => ConnectionType::Local,
                "open_ai" | "openai" | "openai_connection" => ConnectionType::OpenAi,
                "azure_open_ai" | "azure_openai" | "azureopenai" => ConnectionType::AzureOpenAi,
                "custom" => ConnectionType::Custom,
                "serverless" => ConnectionType::Serverless,
                "serp" => ConnectionType::Serp,
                "cognitive_search" => ConnectionType::CognitiveSearch,
                "azure_content_safety" => ConnectionType::AzureContentSafety,
                "form_recognizer" => ConnectionType::FormRecognizer,
                "qdrant" => ConnectionType::Qdrant,
                "weaviate" => ConnectionType::Weaviate,
                "azure_ai_services" => ConnectionType::AzureAiServices,
                _ => return None,
            },
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Local => "local",
            ConnectionType::OpenAi => "open_ai",
            ConnectionType::AzureOpenAi => "azure_open_ai",
            ConnectionType::Custom => "custom",
            ConnectionType::Serverless => "serverless",
            ConnectionType::Serp => "serp",
            ConnectionType::CognitiveSearch => "cognitive_search",
            ConnectionType::AzureContentSafety => "azure_content_safety",
            ConnectionType::FormRecognizer => "form_recognizer",
            ConnectionType::Qdrant => "qdrant",
            ConnectionType::Weaviate => "weaviate",
            ConnectionType::AzureAiServices => "azure_ai_services",
        }
    }
}

/// A stored connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ConnectionType,
    /// Non-secret settings: `api_base`, `api_version`, `organization`, `model`, `timeout`,
    /// `max_retries`, `max_concurrency`, ... and a custom connection's `configs`.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// `api_key` and a custom connection's `secrets`.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// Why a connection could not be read, resolved, stored or removed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The YAML file is not a connection (the message names the file and, where known, the line).
    #[error("{0}")]
    Yaml(String),
    #[error("{}: {problem}", file.display())]
    Invalid { file: PathBuf, problem: String },
    #[error(
        "connection `{connection}`: `{key}` refers to the environment variable {var}, which is not set"
    )]
    MissingEnv {
        connection: String,
        key: String,
        var: String,
    },
    #[error("`{0}` is not a valid connection name (letters, digits, `_`, `-`, `.`)")]
    BadName(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl ConnectionError {
    fn io(path: &Path, source: io::Error) -> Self {
        ConnectionError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn json(path: &Path, source: serde_json::Error) -> Self {
        ConnectionError::Json {
            path: path.to_owned(),
            source,
        }
    }
}

impl Connection {
    /// Reads promptflow's connection YAML: `name`, `type`, flat fields, or `configs:`/`secrets:`.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Connection, ConnectionError> {
        use yaml_rust2::Yaml;
        let invalid = |problem: String| ConnectionError::Invalid {
            file: file.to_owned(),
            problem,
        };
        let doc = sluice_engine::yaml::load_document(text, file)
            .map_err(|e| ConnectionError::Yaml(e.snippet()))?;
        let Yaml::Hash(h) = doc else {
            return Err(invalid("expected a mapping with `name` and `type`".into()));
        };
        let scalar = sluice_engine::yaml::scalar_text;
        let mut name = None;
        let mut kind = None;
        let mut configs = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for (k, v) in &h {
            let Some(key) = k.as_str() else { continue };
            match key {
                "name" => name = scalar(v),
                "type" => {
                    let t = scalar(v).unwrap_or_default();
                    kind = Some(ConnectionType::parse(&t).ok_or_else(|| {
                        invalid(format!(
                            "unknown connection type `{t}`; use local, open_ai, azure_open_ai, custom, serverless, serp, cognitive_search, azure_content_safety, form_recognizer, qdrant, weaviate or azure_ai_services"
                        ))
                    })?);
                }
                "$schema" | "module" => {}
                "configs" | "secrets" => {
                    let Yaml::Hash(inner) = v else {
                        return Err(invalid(format!("`{key}` must be a mapping")));
                    };
                    for (ik, iv) in inner {
                        if let (Some(ik), Some(iv)) = (ik.as_str(), scalar(iv)) {
                            if key == "secrets" {
                                secrets.insert(ik.to_owned(), iv);
                            } else {
                                configs.insert(ik.to_owned(), iv);
                            }
                        }
                    }
                }
                other => {
                    if let Some(val) = scalar(v) {
                        if redact::is_secret_key(other) {
                            secrets.insert(other.to_owned(), val);
                        } else {
                            configs.insert(other.to_owned(), val);
                        }
                    }
                }
            }
        }
        let name = name.ok_or_else(|| invalid("the connection has no `name`".into()))?;
        let kind = kind.ok_or_else(|| invalid("the connection has no `type`".into()))?;
        // promptflow's OpenAI connection calls the endpoint `base_url`.
        if let Some(b) = configs.remove("base_url") {
            configs.entry("api_base".to_owned()).or_insert(b);
        }
        let c = Connection {
            name,
            kind,
            configs,
            secrets,
        };
        c.register_secrets();
        Ok(c)
    }

    /// The connection as it may be shown: every secret, and every config whose name looks secret,
    /// replaced by `******`; credentials in URLs (`user:pass@`, `?key=`) masked.
    pub fn redacted(&self) -> Connection {
        let mut c = self.clone();
        for v in c.secrets.values_mut() {
            *v = "******".to_owned();
        }
        for (k, v) in c.configs.iter_mut() {
            if redact::is_secret_key(k) {
                *v = "******".to_owned();
            } else {
                redact::redact_string(v);
            }
        }
        c
    }

    /// Whether `key` holds a secret: it is under `secrets`, or its name looks like a secret's.
    pub fn is_secret(&self, key: &str) -> bool {
        self.secrets.contains_key(key) || redact::is_secret_key(key)
    }

    /// A value with `${env:VAR}` resolved; secrets and configs alike. A secret's resolved value is
    /// registered for redaction.
    pub fn get(&self, key: &str) -> Result<Option<String>, ConnectionError> {
        let Some(raw) = self.secrets.get(key).or_else(|| self.configs.get(key)) else {
            return Ok(None);
        };
        let value = resolve_env(raw).map_err(|UnsetVar(var)| ConnectionError::MissingEnv {
            connection: self.name.clone(),
            key: key.to_owned(),
            var,
        })?;
        if self.is_secret(key) {
            redact::register_secret(&value);
        }
        Ok(Some(value))
    }

    /// Every secret value (and every value of a config whose name looks secret) after `${env:...}`
    /// resolution.
    pub fn secret_values(&self) -> Vec<String> {
        self.secrets
            .iter()
            .chain(&self.configs)
            .filter(|(k, _)| self.is_secret(k))
            .filter_map(|(_, v)| resolve_env(v).ok())
            .filter(|v| v.trim().chars().count() >= redact::MIN_SECRET_LEN)
            .collect()
    }

    /// Registers [`Connection::secret_values`] with [`sluice_engine::redact`].
    pub fn register_secrets(&self) {
        for v in self.secret_values() {
            redact::register_secret(&v);
        }
    }
}

/// An environment variable a value refers to that is not set.
struct UnsetVar(String);

/// Resolves `${env:VAR}`; a value that is not such a reference is returned as is.
fn resolve_env(raw: &str) -> Result<String, UnsetVar> {
    let t = raw.trim();
    if let Some(var) = t.strip_prefix("${env:").and_then(|r| r.strip_suffix('}')) {
        return std::env::var(var).map_err(|_| UnsetVar(var.to_owned()));
    }
    Ok(raw.to_owned())
}

/// Where connections are stored.
pub fn connections_dir() -> PathBuf {
    sluice_home().join("connections")
}

fn path_of(name: &str) -> Result<PathBuf, ConnectionError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        || name.starts_with('.')
    {
        return Err(ConnectionError::BadName(name.to_owned()));
    }
    Ok(connections_dir().join(format!("{name}.json")))
}

/// Saves a connection, readable only by the user.
pub fn save(conn: &Connection) -> Result<PathBuf, ConnectionError> {
    let path = path_of(&conn.name)?;
    let dir = connections_dir();
    fs::create_dir_all(&dir).map_err(|e| ConnectionError::io(&dir, e))?;
    let body = serde_json::to_vec_pretty(conn).map_err(|e| ConnectionError::json(&path, e))?;
    write_private(&dir, &path, &body).map_err(|e| ConnectionError::io(&path, e))?;
    Ok(path)
}

#[cfg(unix)]
fn write_private(dir: &Path, path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(tmp, path)
}

#[cfg(not(unix))]
fn write_private(_dir: &Path, path: &Path, body: &[u8]) -> io::Result<()> {
    fs::write(path, body)
}

/// Connections given as objects by a program embedding the engine (promptflow's in-memory
/// connection objects), by name: never written to the store, found by [`load`] first.
static IN_MEMORY: std::sync::Mutex<BTreeMap<String, Connection>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Keeps `conn` in this process only, under its name, for [`load`] to find before the store; its
/// secrets are registered, so logs and records mask them.
pub fn keep_in_memory(conn: Connection) {
    conn.register_secrets();
    IN_MEMORY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(conn.name.clone(), conn);
}

/// Loads a connection by name: one kept in memory ([`keep_in_memory`]), else the stored one.
pub fn load(name: &str) -> Result<Option<Connection>, ConnectionError> {
    if let Some(c) = IN_MEMORY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
    {
        return Ok(Some(c.clone()));
    }
    let path = path_of(name)?;
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice::<Connection>(&b)
            .map(|c| {
                c.register_secrets();
                Some(c)
            })
            .map_err(|e| ConnectionError::json(&path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConnectionError::io(&path, e)),
    }
}

/// Every stored connection, by name.
pub fn list() -> Result<Vec<Connection>, ConnectionError> {
    let dir = connections_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConnectionError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let b = fs::read(&p).map_err(|e| ConnectionError::io(&p, e))?;
            let c: Connection =
                serde_json::from_slice(&b).map_err(|e| ConnectionError::json(&p, e))?;
            c.register_secrets();
            out.push(c);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes a connection; false when there was none.
pub fn delete(name: &str) -> Result<bool, ConnectionError> {
    let path = path_of(name)?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ConnectionError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_promptflow_yaml_and_masks_secrets() {
        let c = Connection::from_yaml(
            "name: my_oai\ntype: open_ai\napi_key: sk-123456\nbase_url: http://127.0.0.1:9/v1\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.kind, ConnectionType::OpenAi);
        assert_eq!(c.configs["api_base"], "http://127.0.0.1:9/v1");
        assert_eq!(c.redacted().secrets["api_key"], "******");
        let custom = Connection::from_yaml(
            "name: c\ntype: custom\nconfigs:\n  a: 1\nsecrets:\n  tok: ${env:SLUICE_TEST_UNSET_VAR}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(custom.configs["a"], "1");
        let err = custom.get("tok").unwrap_err().to_string();
        assert!(err.contains("SLUICE_TEST_UNSET_VAR"), "{err}");
    }

    #[test]
    fn secret_looking_top_level_keys_are_secrets_and_registered() {
        let c = Connection::from_yaml(
            "name: c\ntype: custom\nclient_secret: cs-0123456789\naccess_token: at-0123456789\n\
             secret: s-0123456789\napikey: ak-0123456789\nservice_key: sv-0123456789\n\
             db_password: pw-0123456789\napi_base: https://bob:pw-in-url-987@h.example/v1?key=q-0123456789\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        for k in [
            "client_secret",
            "access_token",
            "secret",
            "apikey",
            "service_key",
            "db_password",
        ] {
            assert!(c.secrets.contains_key(k), "{k} should be a secret: {c:?}");
        }
        let shown = serde_json::to_string(&c.redacted()).unwrap();
        for v in ["0123456789", "pw-in-url-987"] {
            assert!(!shown.contains(v), "{shown}");
        }
        assert!(
            shown.contains("https://bob:***@h.example/v1?key=***"),
            "{shown}"
        );
        // Registered as the connection was read: masked in any text from now on.
        assert_eq!(
            sluice_engine::redact::redact("got cs-0123456789"),
            "got ***"
        );
    }

    #[test]
    fn secrets_resolved_from_the_environment_are_registered() {
        // SAFETY: a variable of this test's own, read only by it.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("SLUICE_TEST_CONN_KEY_VAR", "env-secret-value-4242")
        };
        let c = Connection::from_yaml(
            "name: e\ntype: open_ai\napi_key: ${env:SLUICE_TEST_CONN_KEY_VAR}\n",
            Path::new("e.yaml"),
        )
        .unwrap();
        assert_eq!(
            c.get("api_key").unwrap().as_deref(),
            Some("env-secret-value-4242")
        );
        assert_eq!(
            sluice_engine::redact::redact("echo env-secret-value-4242"),
            "echo ***"
        );
    }
}
