//! Python tools in worker processes (`--isolation process`): a tool that segfaults, calls `os._exit`,
//! hangs or holds the GIL fails only its own line, with the node named; its worker is replaced and the
//! batch goes on, as in promptflow. A line timeout really stops the tool: the worker is killed.
//!
//! Each worker is the `sluice` binary itself (`sluice __python-worker`), so it runs the same embedded
//! Python and the same `promptflow` stand-in. It reads one JSON request per line on stdin and answers
//! one JSON line on a private descriptor (its stdout is moved to stderr first, so nothing a tool prints,
//! even from C, can corrupt the answer). Inputs and outputs cross as JSON, images whole (bytes, type
//! and URL): a stream output is joined, and an output JSON cannot hold is an error of its node.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sluice_engine::image::Image;
use sluice_engine::value::PlainError;
use sluice_engine::{Map, NodeError, ToolErrorDetails, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The program (and its first arguments) that starts a worker when it is not this executable: the
/// Python package runs workers as `python -m sluice __python-worker`.
static WORKER_COMMAND: OnceLock<(PathBuf, Vec<String>)> = OnceLock::new();

/// Starts workers with `program args... __python-worker` instead of this executable.
pub fn set_worker_command(program: PathBuf, args: Vec<String>) {
    let _ = WORKER_COMMAND.set((program, args));
}

/// Where Python tools run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// In the engine's process (fastest; a crashing tool takes the process down).
    #[default]
    InProcess,
    /// In a pool of this many worker processes.
    Process { workers: usize },
}

static ISOLATION: OnceLock<Isolation> = OnceLock::new();
static POOL: OnceLock<WorkerPool> = OnceLock::new();

/// Chooses where Python tools run, once per process, before any flow is loaded.
pub fn set_isolation(isolation: Isolation) {
    let _ = ISOLATION.set(isolation);
}

pub(crate) fn isolation() -> Isolation {
    *ISOLATION.get_or_init(|| Isolation::InProcess)
}

pub(crate) fn pool() -> &'static WorkerPool {
    POOL.get_or_init(|| {
        let workers = match isolation() {
            Isolation::Process { workers } => workers.max(1),
            Isolation::InProcess => 1,
        };
        WorkerPool::new(workers)
    })
}

/// One call of a tool in a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub tool: PathBuf,
    /// A package tool's id; `tool` is then not a tool file.
    #[serde(default)]
    pub package: Option<String>,
    /// The prompt template bound to a `package_with_prompt` tool.
    #[serde(default)]
    pub prompt: Option<String>,
    pub flow_dir: PathBuf,
    /// The node's literal inputs (they initialise class-based tools).
    pub literals: Json,
    pub references: Vec<String>,
    pub kwargs: serde_json::Map<String, Json>,
    pub node: String,
}

/// A worker's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    #[serde(default)]
    pub output: Option<Json>,
    /// The tool raised.
    #[serde(default)]
    pub error: Option<ToolErrorDetails>,
    /// Sluice failed in the worker (the tool could not be loaded, an output had no JSON form).
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub metrics: serde_json::Map<String, Json>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    answers: BufReader<ChildStdout>,
}

/// Worker processes, started as needed up to a limit and reused; a worker that died or was stopped in
/// the middle of a call is dropped (and killed), never reused.
pub(crate) struct WorkerPool {
    idle: Mutex<Vec<Worker>>,
    slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").finish_non_exhaustive()
    }
}

impl WorkerPool {
    fn new(workers: usize) -> Self {
        WorkerPool {
            idle: Mutex::new(Vec::new()),
            slots: tokio::sync::Semaphore::new(workers),
        }
    }

    fn start() -> Result<Worker, NodeError> {
        let (exe, args) = match WORKER_COMMAND.get() {
            Some((program, args)) => (program.clone(), args.clone()),
            None => (
                std::env::current_exe().map_err(|e| {
                    NodeError::system("WorkerStartError", format!("cannot find sluice: {e}"))
                })?,
                vec![],
            ),
        };
        let mut child = Command::new(exe)
            .args(args)
            .arg("__python-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                NodeError::system(
                    "WorkerStartError",
                    format!("cannot start a worker process: {e}"),
                )
            })?;
        let stdin = child.stdin.take().expect("piped");
        let answers = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Worker {
            child,
            stdin,
            answers,
        })
    }

    /// Runs one call in a worker. Dropping the future (a line timeout, a failed line) kills the worker.
    pub async fn call(&self, request: &Request) -> Result<Response, NodeError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| NodeError::system("WorkerPoolClosed", "the worker pool is closed"))?;
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match reused {
            Some(w) => w,
            None => Self::start()?,
        };
        let mut line = serde_json::to_vec(request)
            .map_err(|e| NodeError::system("WorkerProtocolError", e.to_string()))?;
        line.push(b'\n');
        let sent = worker
            .stdin
            .write_all(&line)
            .await
            .and(worker.stdin.flush().await);
        let mut answer = String::new();
        let read = match sent {
            Ok(()) => worker.answers.read_line(&mut answer).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(n) if n > 0 => {
                let response: Response = serde_json::from_str(&answer).map_err(|e| {
                    NodeError::system(
                        "WorkerProtocolError",
                        format!("bad answer from a worker: {e}"),
                    )
                })?;
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(worker);
                Ok(response)
            }
            _ => {
                // The worker is gone: say how it ended.
                let status = worker.child.wait().await.ok();
                Err(NodeError::system(
                    "WorkerProcessDied",
                    format!(
                        "the worker process running node `{}` died ({}); the line failed and the worker was replaced",
                        request.node,
                        describe_exit(status)
                    ),
                ))
            }
        }
    }
}

fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "unknown status".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}{}", signal_name(sig)),
            _ => "unknown status".into(),
        },
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV, a crash)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// The JSON form of the node's inputs, as a worker receives them.
pub(crate) fn inputs_json(inputs: &Map) -> Result<serde_json::Map<String, Json>, NodeError> {
    let mut out = serde_json::Map::new();
    for (k, v) in inputs {
        let wire = to_wire(v).map_err(|e| {
            NodeError::user(
                "InputNotJsonSerializable",
                format!("input `{k}` cannot be sent to a worker process: {e}"),
            )
        })?;
        out.insert(k.clone(), wire);
    }
    Ok(out)
}

/// The key of an image as it crosses between processes, whole: its bytes, MIME type and URL.
const IMAGE_KEY: &str = "__sluice_image__";

/// A value as JSON that crosses between processes: images whole (see [`from_wire`]), the rest as its
/// plain form.
fn to_wire(v: &Value) -> Result<Json, PlainError> {
    Ok(match v {
        Value::List(items) => Json::Array(items.iter().map(to_wire).collect::<Result<_, _>>()?),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| to_wire(v).map(|w| (k.clone(), w)))
                .collect::<Result<_, _>>()?,
        ),
        v => match Image::of(v) {
            Some(image) => serde_json::json!({IMAGE_KEY: {
                "mime": image.mime_type(),
                "base64": image.to_base64(false),
                "url": image.source_url(),
            }}),
            None => v.to_plain()?.to_json_lossy(),
        },
    })
}

/// A value that crossed between processes, images made whole again.
pub(crate) fn from_wire(j: Json) -> Value {
    match j {
        Json::Object(m) if m.len() == 1 && m.contains_key(IMAGE_KEY) => {
            match image_from_wire(&m[IMAGE_KEY]) {
                Some(image) => image.into_value(),
                None => Value::from(Json::Object(m)),
            }
        }
        Json::Object(m) => Value::Map(m.into_iter().map(|(k, v)| (k, from_wire(v))).collect()),
        Json::Array(items) => Value::List(items.into_iter().map(from_wire).collect()),
        other => Value::from(other),
    }
}

fn image_from_wire(j: &Json) -> Option<Image> {
    use base64::Engine as _;
    let mime = j.get("mime")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(j.get("base64")?.as_str()?)
        .ok()?;
    let url = j.get("url").and_then(Json::as_str).map(str::to_owned);
    Some(Image::new(bytes, Some(mime), url))
}

/// The worker's side: answers requests from `input` on `answers` until `input` ends.
pub fn serve(input: impl BufRead, mut answers: impl Write) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => super::call_in_worker(&request),
            Err(e) => Response {
                output: None,
                error: None,
                system: Some(format!("bad request: {e}")),
                metrics: Default::default(),
            },
        };
        let mut text = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!("{{\"system\": \"cannot encode the answer: {e}\"}}").into_bytes()
        });
        text.push(b'\n');
        answers.write_all(&text)?;
        answers.flush()?;
    }
    Ok(())
}

/// A tool's output that has no plain (JSON) form, so it cannot be sent back from the worker.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct NotPlain {
    /// Why, as the value's conversion tells it.
    reason: String,
}

/// A value as the worker sends it back.
pub(crate) fn output_json(value: &Value) -> Result<Json, NotPlain> {
    to_wire(value).map_err(|e| NotPlain {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_cross_whole_with_their_bytes_type_and_url() {
        let image = Image::new(
            b"\x89PNG\r\n\x1a\nrest".to_vec(),
            Some("image/png"),
            Some("https://example.com/a.png".into()),
        );
        let value = Value::List(vec![
            Value::from("text"),
            Value::Map(Map::from_iter([("pic".to_owned(), image.into_value())])),
        ]);
        let back = from_wire(to_wire(&value).unwrap());
        let Value::List(items) = &back else { panic!() };
        let Value::Map(m) = &items[1] else { panic!() };
        let image = Image::of(&m["pic"]).unwrap();
        assert_eq!(image.bytes(), b"\x89PNG\r\n\x1a\nrest");
        assert_eq!(image.mime_type(), "image/png");
        assert_eq!(image.source_url(), Some("https://example.com/a.png"));
        assert_eq!(items[0], Value::from("text"));
    }
}
