//! Python tools in worker processes (`--isolation process`): a tool that segfaults, calls `os._exit`,
//! hangs or holds the GIL fails only its own line, with the node named; its worker is replaced and the
//! batch goes on, as in promptflow. A line timeout really stops the tool: the worker is killed.
//!
//! Each worker is the `sluice` binary itself (`sluice __python-worker`), so it runs the same embedded
//! Python and the same `promptflow` stand-in. It reads one JSON request per line on stdin and answers
//! one JSON line on a private descriptor (its stdout is moved to stderr first, so nothing a tool prints,
//! even from C, can corrupt the answer). Inputs and outputs cross as JSON: a stream output is joined,
//! and an output JSON cannot hold is an error of its node.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
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
        let plain = v.to_plain().map_err(|e| {
            NodeError::user(
                "InputNotJsonSerializable",
                format!("input `{k}` cannot be sent to a worker process: {e}"),
            )
        })?;
        out.insert(k.clone(), plain.to_json_lossy());
    }
    Ok(out)
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
    value
        .to_plain()
        .map(|v| v.to_json_lossy())
        .map_err(|e| NotPlain {
            reason: e.to_string(),
        })
}
