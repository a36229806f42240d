//! What every LLM backend takes and gives: prompts, sampling parameters, and a stream of generated text.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use sluice_engine::NodeError;
use sluice_engine::spawn::SpawnedTask;

/// One chat message.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// The content as OpenAI's list of parts (`{"type": "text", ...}`, `{"type": "image_url", ...}`)
    /// when it holds images, as promptflow sends it; `content` then keeps the text.
    #[serde(skip)]
    pub parts: Option<Vec<serde_json::Value>>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..ChatMessage::default()
        }
    }

    /// Whether the message carries images.
    pub fn has_images(&self) -> bool {
        self.parts.as_ref().is_some_and(|parts| {
            parts
                .iter()
                .any(|p| p.get("type").and_then(|t| t.as_str()) == Some("image_url"))
        })
    }
}

impl Serialize for ChatMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("role", &self.role)?;
        match &self.parts {
            Some(parts) => m.serialize_entry("content", parts)?,
            None => m.serialize_entry("content", &self.content)?,
        }
        if let Some(name) = &self.name {
            m.serialize_entry("name", name)?;
        }
        if let Some(id) = &self.tool_call_id {
            m.serialize_entry("tool_call_id", id)?;
        }
        m.end()
    }
}

/// What the model is asked to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// `api: chat`: messages, formatted with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// `api: completion`: raw text.
    Text(String),
}

/// Sampling and stopping parameters, with OpenAI's meanings, read and checked by [`super::protocol`].
/// Numbers keep the values they were given (f64, as YAML and JSON have them), so a request to a
/// server carries `0.7`, not the nearest `f32`; the local model narrows them itself.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    /// `None`: until the model stops (capped by the backend's context).
    pub max_tokens: Option<u32>,
    pub temperature: f64,
    pub top_p: f64,
    pub stop: Vec<String>,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    /// Whether `presence_penalty` and `frequency_penalty` were given: a given penalty is sent to a
    /// server even when it is 0, as promptflow sends it.
    pub penalties_given: (bool, bool),
    /// `temperature`, `top_p` and the penalties as the numbers they were given (an integer stays
    /// one), for a chat request, which promptflow's chat tools send as given.
    pub given_numbers: serde_json::Map<String, serde_json::Value>,
    pub seed: Option<i64>,
    /// `response_format: {type: json_object}`: the output must be one JSON object.
    pub json_object: bool,
    /// The model a backend is asked for: `model`, else `deployment_name`.
    pub model: Option<String>,
    /// Parameters a server is sent exactly as written (a prompty's `model.parameters`), in place of
    /// the fields above; `stream: true` among them asks for a streamed reply.
    pub raw: Option<serde_json::Map<String, serde_json::Value>>,
    /// `deployment_name` as given: an Azure OpenAI connection sends requests to this deployment
    /// (before `model`), as promptflow's Azure provider does.
    pub deployment_name: Option<String>,
    /// Whether the caller reads the reply as it is generated (a remote backend asks for a stream).
    pub stream: bool,
    /// Log probabilities of the generated tokens, with this many most likely alternatives at each
    /// (0 to 20); `None`: not asked for. The local models send them as [`Event::Logprob`].
    pub logprobs: Option<u8>,
    /// Parameters a server receives as given and a local model ignores: `functions` /
    /// `function_call` / `tools` / `tool_choice` (with functions or tools, the reply is the whole
    /// message, [`Event::Message`], as promptflow returns it), `logit_bias` and `user`.
    pub passthrough: serde_json::Map<String, serde_json::Value>,
    /// HTTP headers a server is sent besides the connection's (promptflow's Azure GPT-4V tool names
    /// itself in one).
    pub headers: Vec<(String, String)>,
    /// How many choices a server is asked for (1 to 128). The node's output is the first (or, for
    /// a prompty with `response: all`, the whole reply); the local model makes one.
    pub n: u32,
    /// The completions API's own fields, sent to a server with a text prompt.
    pub completion: CompletionFields,
}

/// Fields only the completions API takes, as promptflow's completion tools read them: an empty
/// `suffix` and `logprobs: 0` are none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompletionFields {
    pub suffix: Option<String>,
    pub echo: bool,
    /// `None`: not given (sent as 1).
    pub best_of: Option<i64>,
    /// Alternatives per token, 1 to 5.
    pub logprobs: Option<i64>,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_tokens: None,
            temperature: 1.0,
            top_p: 1.0,
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalties_given: (false, false),
            given_numbers: serde_json::Map::new(),
            seed: None,
            json_object: false,
            model: None,
            raw: None,
            deployment_name: None,
            logprobs: None,
            stream: false,
            passthrough: serde_json::Map::new(),
            headers: Vec::new(),
            n: 1,
            completion: CompletionFields::default(),
        }
    }
}

/// Token counts and timings of one generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens whose KV cache was reused from an earlier request with the same prefix.
    pub cached_tokens: u64,
    /// From submission to the first generated token.
    #[serde(skip)]
    pub time_to_first_token: Option<Duration>,
    /// From submission to the end.
    #[serde(skip)]
    pub duration: Duration,
    /// The model that answered, where the server said (`model` of an OpenAI reply).
    #[serde(skip)]
    pub response_model: Option<String>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended, or a stop sequence was found.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
    /// The model called tools; the text is the whole reply message as JSON.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// What a stream yields.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(FinishReason, Usage),
    Error(LlmError),
    /// The whole reply message (`role`, `content`, `function_call`, `tool_calls`), sent before
    /// `Done` when the request offered functions or tools.
    Message(serde_json::Value),
    /// The server's whole reply (a JSON response, not a stream), sent before `Done`: every choice
    /// when `n` asked for several, as promptflow's prompty returns it with `response: all`.
    Reply(serde_json::Value),
    /// A generated token's log probability, sent as it is sampled (before the text that holds it)
    /// when [`GenParams::logprobs`] asked for it.
    Logprob(TokenLogprob),
}

/// One generated token with its log probability under the model, and the most likely tokens at its
/// place.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// Where the token's text starts in the whole generated text, in bytes. A token past the end
    /// of the text as returned (one cut off with a stop sequence) is not part of the answer.
    pub offset: usize,
    pub token: TokenText,
    pub logprob: f32,
    /// The most likely tokens at this place, most likely first.
    pub top: Vec<(TokenText, f32)>,
}

/// A token's text: its bytes, and those bytes as text (a token may hold part of a character).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenText {
    pub text: String,
    pub bytes: Vec<u8>,
}

impl TokenText {
    pub fn new(bytes: Vec<u8>) -> TokenText {
        TokenText {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        }
    }
}

/// Errors from a backend, with promptflow's error codes.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmError {
    /// promptflow's code, e.g. `WrappedOpenAIError`, `ExceedMaxRetryTimes`, `LocalModelError`.
    pub code: &'static str,
    pub message: String,
    /// A user error (bad request, bad prompt) rather than a system fault.
    pub user: bool,
}

impl LlmError {
    pub fn user(code: &'static str, message: impl Into<String>) -> Self {
        LlmError {
            code,
            message: message.into(),
            user: true,
        }
    }

    pub fn system(code: &'static str, message: impl Into<String>) -> Self {
        LlmError {
            code,
            message: message.into(),
            user: false,
        }
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LlmError {}

impl From<LlmError> for NodeError {
    fn from(e: LlmError) -> Self {
        if e.user {
            NodeError::user(e.code, e.message)
        } else {
            NodeError::system(e.code, e.message)
        }
    }
}

/// Generated text as it arrives. Dropping it cancels the generation.
#[derive(Debug)]
pub struct TokenStream {
    rx: mpsc::UnboundedReceiver<Event>,
    /// The task feeding the stream, for backends that run one; aborted on drop.
    _task: Option<SpawnedTask<()>>,
    done: bool,
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// The whole reply message, where the backend sent one ([`Event::Message`]).
    pub message: Option<serde_json::Value>,
    /// The server's whole reply, where the backend sent one ([`Event::Reply`]).
    pub reply: Option<serde_json::Value>,
    /// The generated tokens' log probabilities, where they were asked for ([`Event::Logprob`]).
    pub logprobs: Vec<TokenLogprob>,
}

impl TokenStream {
    /// A stream and the sender that feeds it.
    pub fn channel() -> (mpsc::UnboundedSender<Event>, TokenStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            TokenStream {
                rx,
                _task: None,
                done: false,
            },
        )
    }

    /// Keeps `task` alive as long as the stream, aborting it when the stream is dropped.
    pub fn with_task(mut self, task: SpawnedTask<()>) -> Self {
        self._task = Some(task);
        self
    }

    /// The next event; `None` after `Done` or `Error`.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await;
        self.note(ev)
    }

    /// The next event, blocking the thread (for synchronous consumers such as a terminal printer).
    pub fn blocking_next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.rx.blocking_recv();
        self.note(ev)
    }

    fn note(&mut self, ev: Option<Event>) -> Option<Event> {
        match ev {
            Some(Event::Text(t)) => Some(Event::Text(t)),
            Some(Event::Message(m)) => Some(Event::Message(m)),
            Some(Event::Reply(r)) => Some(Event::Reply(r)),
            Some(Event::Logprob(l)) => Some(Event::Logprob(l)),
            Some(other) => {
                self.done = true;
                Some(other)
            }
            None => {
                self.done = true;
                Some(Event::Error(LlmError::system(
                    "LlmBackendError",
                    "the backend stopped before finishing the generation",
                )))
            }
        }
    }

    /// Waits for the whole text.
    pub async fn collect(mut self) -> Result<Completion, LlmError> {
        let mut text = String::new();
        let mut message = None;
        let mut reply = None;
        let mut logprobs = Vec::new();
        while let Some(ev) = self.next().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Message(m) => message = Some(m),
                Event::Reply(r) => reply = Some(r),
                Event::Logprob(l) => logprobs.push(l),
                Event::Done(finish_reason, usage) => {
                    logprobs.retain(|l: &TokenLogprob| l.offset < text.len());
                    return Ok(Completion {
                        text,
                        finish_reason,
                        usage,
                        message,
                        reply,
                        logprobs,
                    });
                }
                Event::Error(e) => return Err(e),
            }
        }
        Err(LlmError::system(
            "LlmBackendError",
            "the stream ended without a result",
        ))
    }
}

/// A place generations come from: the in-process llama.cpp model or an OpenAI-compatible server.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short description for logs and records, e.g. `local:gemma3-270m` or `openai:gpt-4o-mini`.
    fn describe(&self) -> String;
    /// Starts a generation. Errors found before any text is generated are returned here.
    async fn generate(&self, prompt: Prompt, params: GenParams) -> Result<TokenStream, LlmError>;
}

/// How a local embedding model's texts are cut and grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedLayout {
    /// The longest input in tokens, with the start and end tokens; longer texts are cut to it.
    pub max_seq: usize,
    /// Tokens per encoder call.
    pub batch_tokens: u32,
    pub threads: i32,
    /// What runs the model: `sluice-bert` (Sluice's own BERT encoder) or `llama.cpp`.
    pub encoder: &'static str,
}
