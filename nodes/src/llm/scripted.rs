//! A scripted LLM backend: answers from a script in the flow folder instead of a model, so that LLM
//! flows, batch runs and variants can be tested as fixture folders, deterministically and offline.
//!
//! A node selects it with `model: scripted:<file>` (a path relative to the flow folder). The file is
//! JSON: `{"replies": [{"when": "capital of France", "reply": "Paris"}, {"reply": "I don't know"}]}`.
//! The first reply whose `when` occurs in the prompt (chat messages as `role: content` lines) is
//! streamed back word by word; a reply without `when` matches anything; `"error": "message"` instead
//! of `"reply"` makes the call fail. Token counts are words.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use super::types::{Backend, Event, FinishReason, GenParams, LlmError, Prompt, TokenStream, Usage};

#[derive(Clone, Debug, Deserialize)]
struct Rule {
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct Script {
    replies: Vec<Rule>,
}

/// The scripted backend of one script file.
#[derive(Clone, Debug)]
pub struct ScriptedBackend {
    name: String,
    script: Script,
}

/// What is wrong with an LLM script.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read the LLM script {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the LLM script {} is not valid", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `reply` counts from 1.
    #[error("the LLM script {}: reply {reply} needs exactly one of `reply` and `error`", path.display())]
    ReplyOrError { path: PathBuf, reply: usize },
}

impl ScriptedBackend {
    /// Reads a script; the error says what is wrong with it.
    pub fn load(path: &Path) -> Result<Self, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_owned(),
            source,
        })?;
        let script: Script =
            serde_json::from_str(&text).map_err(|source| ScriptError::Invalid {
                path: path.to_owned(),
                source,
            })?;
        if let Some(i) = script
            .replies
            .iter()
            .position(|r| r.reply.is_some() == r.error.is_some())
        {
            return Err(ScriptError::ReplyOrError {
                path: path.to_owned(),
                reply: i + 1,
            });
        }
        Ok(ScriptedBackend {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            script,
        })
    }
}

fn prompt_text(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(messages) => messages
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[async_trait]
impl Backend for ScriptedBackend {
    fn describe(&self) -> String {
        format!("scripted:{}", self.name)
    }

    async fn generate(&self, prompt: Prompt, params: GenParams) -> Result<TokenStream, LlmError> {
        let text = prompt_text(&prompt);
        let rule = self
            .script
            .replies
            .iter()
            .find(|r| r.when.as_deref().is_none_or(|w| text.contains(w)))
            .ok_or_else(|| {
                LlmError::user(
                    "ScriptedReplyNotFound",
                    format!("the LLM script {} has no reply for this prompt", self.name),
                )
            })?;
        if let Some(message) = &rule.error {
            return Err(LlmError::user("WrappedOpenAIError", message.clone()));
        }
        let reply = rule.reply.clone().unwrap_or_default();
        let words: Vec<&str> = reply.split_inclusive(' ').collect();
        let limit = params.max_tokens.map_or(usize::MAX, |m| m as usize);
        let (tx, stream) = TokenStream::channel();
        for word in words.iter().take(limit) {
            let _ = tx.send(Event::Text((*word).to_owned()));
        }
        let usage = Usage {
            prompt_tokens: text.split_whitespace().count() as u64,
            completion_tokens: words.len().min(limit) as u64,
            ..Default::default()
        };
        let finish = if words.len() > limit {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let _ = tx.send(Event::Done(finish, usage));
        Ok(stream)
    }
}
