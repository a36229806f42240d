//! The OpenAI chat/completions protocol's sampling parameters, in one place: their names, the rules
//! a value must follow, reading them (from an `llm` node's inputs or from a request body) and writing
//! them into a request body.
//!
//! Three callers share it, so a parameter means the same and is refused for the same reason wherever
//! it comes from: the `llm` node ([`from_fields`] over its inputs), `sluice model serve` ([`from_fields`]
//! over a client's JSON body) and the HTTP backend ([`encode_request`]).
//!
//! ```
//! use serde_json::json;
//! use sluice_nodes::llm::protocol::{self, ParamError};
//!
//! let body = json!({"temperature": 0.7, "stop": ["\n", 3]});
//! let err = protocol::from_fields(body.as_object().unwrap()).unwrap_err();
//! assert_eq!(err, ParamError::Invalid { param: "stop", expected: "a string or a list of strings" });
//! ```
//!
//! Rules: `null` is the same as leaving a parameter out. Numbers are finite and in OpenAI's ranges
//! (`temperature` 0–2, `top_p` 0–1, the penalties −2–2); a number may be given as text that spells one
//! (a flow input arrives as text). `max_tokens` (or `max_completion_tokens`, which wins) is a whole
//! number from 1 to [`MAX_TOKENS`]; `seed` a whole number; `stop` a string or a list of at most
//! [`MAX_STOPS`] strings of at most [`MAX_STOP_BYTES`] bytes; `n` a whole number from 1 to
//! [`MAX_CHOICES`]; `response_format` is `text` or `json_object` (a `{type: ...}` object or the bare
//! name). `functions`, `function_call`, `tools`, `tool_choice` (lists and objects, or JSON text of
//! them), `logit_bias` and `user` are sent to a server as given. The completions API's own fields
//! (`suffix`, `echo`, `best_of`, `logprobs` as a number) are read into
//! [`CompletionFields`](super::types::CompletionFields). Other
//! OpenAI parameters are accepted and have no effect on local generation.
//!
//! A completion request carries every field promptflow's completion tools send, with their defaults
//! and nulls ([`encode_request`]); a chat request, the fields its chat tools send.

use serde_json::{Value as Json, json};
use sluice_engine::{Value, ValueType};

use super::types::{GenParams, Prompt};

/// The most stop sequences one request may give, and the most bytes in one.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 1024;
/// The largest `max_tokens`.
pub const MAX_TOKENS: u32 = 1 << 17;
/// The most choices one request may ask for (OpenAI's limit).
pub const MAX_CHOICES: u32 = 128;

/// Which provider's tool a request imitates: promptflow's OpenAI and Azure OpenAI tools build their
/// completion requests slightly differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    AzureOpenAi,
}

/// The parameters an `llm` node takes besides its template's variables, with their input types.
pub const PARAMS: &[(&str, ValueType)] = &[
    ("model", ValueType::String),
    ("deployment_name", ValueType::String),
    ("temperature", ValueType::Double),
    ("top_p", ValueType::Double),
    ("max_tokens", ValueType::Int),
    ("stop", ValueType::List),
    ("presence_penalty", ValueType::Double),
    ("frequency_penalty", ValueType::Double),
    ("seed", ValueType::Int),
    ("response_format", ValueType::Object),
    ("n", ValueType::Int),
    ("logit_bias", ValueType::Object),
    ("user", ValueType::String),
    ("best_of", ValueType::Int),
    ("echo", ValueType::Bool),
    ("logprobs", ValueType::Int),
    ("suffix", ValueType::String),
    ("functions", ValueType::List),
    ("function_call", ValueType::Object),
    ("tools", ValueType::List),
    ("tool_choice", ValueType::Object),
];

/// Whether `name` is one of [`PARAMS`].
pub fn is_param(name: &str) -> bool {
    PARAMS.iter().any(|(p, _)| *p == name)
}

/// Why a parameter's value was refused. The same words reach a flow's user and an HTTP client.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("the parameter `{param}` must be {expected}")]
    Invalid {
        param: &'static str,
        expected: &'static str,
    },
    #[error(
        "the parameter `stop` takes at most {MAX_STOPS} sequences of at most {MAX_STOP_BYTES} bytes"
    )]
    TooManyStops,
    #[error("response_format type `{0}` is not supported; use `text` or `json_object`")]
    UnsupportedFormat(String),
}

/// A value a parameter can be read from: a node input or a JSON field.
pub trait ParamValue {
    fn is_null(&self) -> bool;
    /// An integer or a floating-point number (not text, not a bool).
    fn number(&self) -> Option<f64>;
    /// An integer, exactly.
    fn integer(&self) -> Option<i64>;
    fn text(&self) -> Option<&str>;
    fn boolean(&self) -> Option<bool>;
    fn items(&self) -> Option<Vec<&Self>>;
    fn field(&self, key: &str) -> Option<&Self>;
    /// The value as JSON, as it is sent to a server.
    fn to_json(&self) -> Json;
}

impl ParamValue for Json {
    fn is_null(&self) -> bool {
        self.is_null()
    }
    fn number(&self) -> Option<f64> {
        self.as_f64()
    }
    fn integer(&self) -> Option<i64> {
        self.as_i64()
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn boolean(&self) -> Option<bool> {
        self.as_bool()
    }
    fn items(&self) -> Option<Vec<&Self>> {
        self.as_array().map(|a| a.iter().collect())
    }
    fn field(&self, key: &str) -> Option<&Self> {
        self.as_object()?.get(key)
    }
    fn to_json(&self) -> Json {
        self.clone()
    }
}

impl ParamValue for Value {
    fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    fn number(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    fn integer(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn boolean(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn items(&self) -> Option<Vec<&Self>> {
        match self {
            Value::List(items) => Some(items.iter().collect()),
            _ => None,
        }
    }
    fn field(&self, key: &str) -> Option<&Self> {
        match self {
            Value::Map(m) => m.get(key),
            _ => None,
        }
    }
    fn to_json(&self) -> Json {
        self.to_json_lossy()
    }
}

/// A finite number (or text spelling one) from `min` to `max`.
fn number<V: ParamValue + ?Sized>(
    v: &V,
    param: &'static str,
    expected: &'static str,
    (min, max): (f64, f64),
) -> Result<f64, ParamError> {
    v.number()
        .or_else(|| v.text().and_then(|t| t.trim().parse().ok()))
        .filter(|n: &f64| n.is_finite() && (min..=max).contains(n))
        .ok_or(ParamError::Invalid { param, expected })
}

/// A whole number (an integer, a float with no fraction, or text spelling one).
fn whole<V: ParamValue + ?Sized>(
    v: &V,
    param: &'static str,
    expected: &'static str,
) -> Result<i64, ParamError> {
    let from_float =
        |f: f64| (f.is_finite() && f.fract() == 0.0 && f.abs() < 9e15).then_some(f as i64);
    v.integer()
        .or_else(|| v.number().and_then(from_float))
        .or_else(|| {
            let t = v.text()?.trim();
            t.parse()
                .ok()
                .or_else(|| t.parse().ok().and_then(from_float))
        })
        .ok_or(ParamError::Invalid { param, expected })
}

/// The sampling parameters among `fields` (name, value); names that are not sampling parameters are
/// left alone. The model named by `model` or `deployment_name` goes into [`GenParams::model`].
pub fn from_fields<'a, V, I>(fields: I) -> Result<GenParams, ParamError>
where
    V: ParamValue + 'a + ?Sized,
    I: IntoIterator<Item = (&'a String, &'a V)>,
{
    let mut p = GenParams::default();
    let mut max_completion_tokens = None;
    for (name, v) in fields {
        if v.is_null() {
            continue;
        }
        if matches!(
            name.as_str(),
            "temperature" | "top_p" | "presence_penalty" | "frequency_penalty"
        ) && let Json::Number(n) = v.to_json()
        {
            p.given_numbers.insert(name.clone(), Json::Number(n));
        }
        match name.as_str() {
            "model" | "deployment_name" => match v.text() {
                Some("") => {}
                Some(m) if name == "model" => p.model = Some(m.to_owned()),
                Some(m) => p.deployment_name = Some(m.to_owned()),
                None => {
                    return Err(ParamError::Invalid {
                        param: if name == "model" {
                            "model"
                        } else {
                            "deployment_name"
                        },
                        expected: "a string",
                    });
                }
            },
            "temperature" => {
                p.temperature = number(v, "temperature", "a number from 0 to 2", (0.0, 2.0))?
            }
            "top_p" => p.top_p = number(v, "top_p", "a number from 0 to 1", (0.0, 1.0))?,
            "presence_penalty" => {
                p.presence_penalty =
                    number(v, "presence_penalty", "a number from -2 to 2", (-2.0, 2.0))?;
                p.penalties_given.0 = true;
            }
            "frequency_penalty" => {
                p.frequency_penalty =
                    number(v, "frequency_penalty", "a number from -2 to 2", (-2.0, 2.0))?;
                p.penalties_given.1 = true;
            }
            "max_tokens" => p.max_tokens = Some(max_tokens(v, "max_tokens")?),
            "max_completion_tokens" => {
                max_completion_tokens = Some(max_tokens(v, "max_completion_tokens")?)
            }
            "seed" => p.seed = Some(whole(v, "seed", "a whole number")?),
            "stop" => p.stop = stop(v)?,
            "response_format" => p.json_object = json_object(v)?,
            "functions" | "tools" => {
                let param = if name == "tools" {
                    "tools"
                } else {
                    "functions"
                };
                let list = json_text(v.to_json());
                if !list.is_array() {
                    return Err(ParamError::Invalid {
                        param,
                        expected: "a list of definitions (or JSON text of one)",
                    });
                }
                p.passthrough.insert(param.to_owned(), list);
            }
            "function_call" | "tool_choice" => {
                p.passthrough.insert(name.clone(), json_text(v.to_json()));
            }
            "logit_bias" => match json_text(v.to_json()) {
                Json::Object(m) if m.is_empty() => {}
                bias @ Json::Object(_) => {
                    p.passthrough.insert(name.clone(), bias);
                }
                _ => {
                    return Err(ParamError::Invalid {
                        param: "logit_bias",
                        expected: "a map of token ids to numbers",
                    });
                }
            },
            "user" => match v.text() {
                Some("") => {}
                Some(u) => {
                    p.passthrough.insert(name.clone(), json!(u));
                }
                None => {
                    return Err(ParamError::Invalid {
                        param: "user",
                        expected: "a string",
                    });
                }
            },
            "n" => {
                const EXPECTED: &str = "a whole number from 1 to 128";
                p.n = u32::try_from(whole(v, "n", EXPECTED)?)
                    .ok()
                    .filter(|n| (1..=MAX_CHOICES).contains(n))
                    .ok_or(ParamError::Invalid {
                        param: "n",
                        expected: EXPECTED,
                    })?;
            }
            // As promptflow's completion tools: an empty suffix is none, `logprobs: 0` is none.
            "suffix" => match v.text() {
                Some("") => {}
                Some(s) => p.completion.suffix = Some(s.to_owned()),
                None => {
                    return Err(ParamError::Invalid {
                        param: "suffix",
                        expected: "a string",
                    });
                }
            },
            "echo" => p.completion.echo = boolean(v, "echo")?,
            "best_of" => {
                const EXPECTED: &str = "a whole number from 1 to 20";
                p.completion.best_of = Some(
                    whole(v, "best_of", EXPECTED)
                        .ok()
                        .filter(|n| (1..=20).contains(n))
                        .ok_or(ParamError::Invalid {
                            param: "best_of",
                            expected: EXPECTED,
                        })?,
                );
            }
            // Chat's `logprobs: true` is read by whoever serves chat; a number is the completions
            // API's count of alternatives.
            "logprobs" if v.boolean().is_none() => {
                const EXPECTED: &str = "a whole number from 0 to 5 (or true or false for chat)";
                let n = whole(v, "logprobs", EXPECTED)
                    .ok()
                    .filter(|n| (0..=5).contains(n))
                    .ok_or(ParamError::Invalid {
                        param: "logprobs",
                        expected: EXPECTED,
                    })?;
                p.completion.logprobs = (n > 0).then_some(n);
            }
            _ => {}
        }
    }
    if max_completion_tokens.is_some() {
        p.max_tokens = max_completion_tokens;
    }
    if p.model.is_none() {
        p.model = p.deployment_name.clone();
    }
    // As in promptflow: with `tools`, the legacy `functions` are not sent.
    if p.passthrough.contains_key("tools") {
        p.passthrough.remove("functions");
        p.passthrough.remove("function_call");
    }
    Ok(p)
}

/// A value given as JSON text (`'[{"type": "function", ...}]'`) as the JSON it spells; other text
/// (`auto`) and other values as they are.
fn json_text(v: Json) -> Json {
    match v {
        Json::String(s) => serde_json::from_str(&s).unwrap_or(Json::String(s)),
        other => other,
    }
}

/// A bool, or text spelling one (`true`/`false`, any case), as promptflow's `to_bool` reads it.
fn boolean<V: ParamValue + ?Sized>(v: &V, param: &'static str) -> Result<bool, ParamError> {
    v.boolean()
        .or_else(|| match v.text()?.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
        .ok_or(ParamError::Invalid {
            param,
            expected: "true or false",
        })
}

fn max_tokens<V: ParamValue + ?Sized>(v: &V, param: &'static str) -> Result<u32, ParamError> {
    const EXPECTED: &str = "a whole number from 1 to 131072";
    let n = whole(v, param, EXPECTED)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_TOKENS).contains(n))
        .ok_or(ParamError::Invalid {
            param,
            expected: EXPECTED,
        })
}

fn stop<V: ParamValue + ?Sized>(v: &V) -> Result<Vec<String>, ParamError> {
    let invalid = ParamError::Invalid {
        param: "stop",
        expected: "a string or a list of strings",
    };
    let stops: Vec<String> = if let Some(s) = v.text() {
        vec![s.to_owned()]
    } else if let Some(items) = v.items() {
        items
            .into_iter()
            .map(|i| i.text().map(str::to_owned).ok_or(invalid.clone()))
            .collect::<Result<_, _>>()?
    } else {
        return Err(invalid);
    };
    if stops.len() > MAX_STOPS || stops.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ParamError::TooManyStops);
    }
    Ok(stops)
}

fn json_object<V: ParamValue + ?Sized>(v: &V) -> Result<bool, ParamError> {
    let ty = match v.text() {
        Some(t) => Some(t),
        None => v.field("type").and_then(ParamValue::text),
    };
    match ty {
        Some("json_object") => Ok(true),
        Some("text") | None => Ok(false),
        Some(other) => Err(ParamError::UnsupportedFormat(other.to_owned())),
    }
}

/// The JSON body of a `/chat/completions` (chat prompt) or `/completions` (text prompt) request.
/// Numbers go out as they were given (`temperature: 0.7` is sent as `0.7`). With
/// [`GenParams::raw`], the body is the prompt, the model and those parameters, nothing else.
///
/// A completion carries what promptflow's completion tools send (`promptflow.tools.openai` and
/// `promptflow.tools.aoai`, through the `openai` client, which writes a `None` as `null`): `suffix`,
/// `max_tokens`, `logprobs` and `stop` (`null` when not given), `temperature`, `top_p`, `n`,
/// `stream`, `echo`, `best_of`, `logit_bias` (`{}`) and `user` (`""`) always; the penalties always
/// for OpenAI (`null` when not given) and only when given for Azure OpenAI. A chat request carries
/// `temperature`, `top_p`, `n` and `stream` always and the rest when given, as the chat tools send it.
pub fn encode_request(prompt: &Prompt, p: &GenParams, stream: bool, provider: Provider) -> Json {
    let mut b = serde_json::Map::new();
    match prompt {
        Prompt::Chat(messages) => {
            b.insert(
                "messages".into(),
                serde_json::to_value(messages).unwrap_or(Json::Null),
            );
        }
        Prompt::Text(t) => {
            b.insert("prompt".into(), json!(t));
        }
    }
    if let Some(m) = &p.model {
        b.insert("model".into(), json!(m));
    }
    if let Some(raw) = &p.raw {
        for (k, v) in raw {
            if !["model", "messages", "prompt"].contains(&k.as_str()) {
                b.insert(k.clone(), v.clone());
            }
        }
        if stream {
            b.insert("stream".into(), json!(true));
        }
        return Json::Object(b);
    }
    match prompt {
        Prompt::Chat(_) => encode_chat(&mut b, p, stream),
        Prompt::Text(_) => encode_completion(&mut b, p, stream, provider),
    }
    if stream {
        // Sluice's one addition: the last chunk carries the token counts.
        b.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Json::Object(b)
}

/// The parameters of a chat request, as promptflow's chat tools send them.
fn encode_chat(b: &mut serde_json::Map<String, Json>, p: &GenParams, stream: bool) {
    // Numbers as they were given (the defaults are floats, as in the chat tools an `llm` node calls).
    let number = |key: &str, value: f64| match p.given_numbers.get(key) {
        Some(n) => n.clone(),
        None => json!(value),
    };
    b.insert("temperature".into(), number("temperature", p.temperature));
    b.insert("top_p".into(), number("top_p", p.top_p));
    b.insert("n".into(), json!(p.n));
    b.insert("stream".into(), json!(stream));
    if let Some(n) = p.max_tokens {
        b.insert("max_tokens".into(), json!(n));
    }
    if !p.stop.is_empty() {
        b.insert("stop".into(), json!(p.stop));
    }
    if p.presence_penalty != 0.0 || p.penalties_given.0 {
        b.insert(
            "presence_penalty".into(),
            number("presence_penalty", p.presence_penalty),
        );
    }
    if p.frequency_penalty != 0.0 || p.penalties_given.1 {
        b.insert(
            "frequency_penalty".into(),
            number("frequency_penalty", p.frequency_penalty),
        );
    }
    if let Some(s) = p.seed {
        b.insert("seed".into(), json!(s));
    }
    if p.json_object {
        b.insert("response_format".into(), json!({"type": "json_object"}));
    }
    for (k, v) in &p.passthrough {
        b.insert(k.clone(), v.clone());
    }
}

/// The parameters of a completion request, as promptflow's completion tools send them. Parameters
/// the completions API does not take (`seed`, `response_format`, functions and tools) are not sent:
/// promptflow hands them to the template as variables.
fn encode_completion(
    b: &mut serde_json::Map<String, Json>,
    p: &GenParams,
    stream: bool,
    provider: Provider,
) {
    let c = &p.completion;
    b.insert("suffix".into(), json!(c.suffix));
    b.insert("max_tokens".into(), json!(p.max_tokens));
    b.insert("temperature".into(), json!(p.temperature));
    b.insert("top_p".into(), json!(p.top_p));
    b.insert("n".into(), json!(p.n));
    b.insert("stream".into(), json!(stream));
    b.insert("logprobs".into(), json!(c.logprobs));
    b.insert("echo".into(), json!(c.echo));
    b.insert(
        "stop".into(),
        if p.stop.is_empty() {
            Json::Null
        } else {
            json!(p.stop)
        },
    );
    b.insert("best_of".into(), json!(c.best_of.unwrap_or(1)));
    b.insert(
        "logit_bias".into(),
        p.passthrough
            .get("logit_bias")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    b.insert(
        "user".into(),
        p.passthrough
            .get("user")
            .cloned()
            .unwrap_or_else(|| json!("")),
    );
    let penalties = [
        ("presence_penalty", p.presence_penalty, p.penalties_given.0),
        (
            "frequency_penalty",
            p.frequency_penalty,
            p.penalties_given.1,
        ),
    ];
    for (name, value, given) in penalties {
        let given = given || value != 0.0;
        match provider {
            // The OpenAI tool passes both, `None` when not given.
            Provider::OpenAi => {
                b.insert(name.into(), if given { json!(value) } else { Json::Null });
            }
            // The Azure OpenAI tool passes only those given.
            Provider::AzureOpenAi if given => {
                b.insert(name.into(), json!(value));
            }
            Provider::AzureOpenAi => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::Map;

    /// The verdict on one parameter read as a node input and as a request body's field.
    fn both(
        name: &str,
        node: Value,
        body: Json,
    ) -> (Result<GenParams, ParamError>, Result<GenParams, ParamError>) {
        let mut inputs = Map::new();
        inputs.insert(name.to_owned(), node);
        let mut fields = serde_json::Map::new();
        fields.insert(name.to_owned(), body);
        (from_fields(&inputs), from_fields(&fields))
    }

    #[test]
    fn a_stop_entry_that_is_not_text_is_refused_by_node_and_server_alike() {
        let (node, server) = both(
            "stop",
            Value::List(vec![Value::from("\n"), Value::Int(3)]),
            json!(["\n", 3]),
        );
        let want = ParamError::Invalid {
            param: "stop",
            expected: "a string or a list of strings",
        };
        assert_eq!(node.unwrap_err(), want);
        assert_eq!(server.unwrap_err(), want);
        assert_eq!(
            want.to_string(),
            "the parameter `stop` must be a string or a list of strings"
        );
    }

    #[test]
    fn numbers_that_are_not_finite_or_out_of_range_are_refused() {
        for bad in [f64::NAN, f64::INFINITY, -0.5, 2.5] {
            let (node, _) = both("temperature", Value::Float(bad), Json::Null);
            assert_eq!(
                node.unwrap_err().to_string(),
                "the parameter `temperature` must be a number from 0 to 2",
                "{bad}"
            );
        }
        let (node, server) = both("temperature", Value::from("nan"), json!("nan"));
        assert_eq!(node.unwrap_err(), server.unwrap_err());
        let (node, server) = both("top_p", Value::Float(1.5), json!(1.5));
        assert_eq!(node.unwrap_err(), server.unwrap_err());
        let (node, server) = both("presence_penalty", Value::Int(-3), json!(-3));
        assert_eq!(node.unwrap_err(), server.unwrap_err());
    }

    #[test]
    fn node_and_server_read_the_same_values_alike() {
        let cases: Vec<(&str, Value, Json)> = vec![
            ("temperature", Value::Float(0.7), json!(0.7)),
            ("temperature", Value::from("0.7"), json!("0.7")),
            ("max_tokens", Value::Int(12), json!(12)),
            ("max_tokens", Value::Int(0), json!(0)),
            ("max_tokens", Value::Float(2.5), json!(2.5)),
            (
                "max_tokens",
                Value::Int(4_000_000_000),
                json!(4_000_000_000u64),
            ),
            ("seed", Value::Int(-1), json!(-1)),
            ("stop", Value::from("END"), json!("END")),
            ("stop", Value::Int(5), json!(5)),
            (
                "stop",
                Value::List((0..17).map(|i| Value::from(format!("s{i}"))).collect()),
                json!((0..17).map(|i| format!("s{i}")).collect::<Vec<_>>()),
            ),
            ("n", Value::Int(1), json!(1)),
            ("n", Value::Int(2), json!(2)),
            (
                "response_format",
                Value::from("json_object"),
                json!({"type": "json_object"}),
            ),
            (
                "response_format",
                Value::from("json_schema"),
                json!({"type": "json_schema"}),
            ),
            ("model", Value::Int(3), json!(3)),
            ("logit_bias", Value::Int(3), json!(3)),
        ];
        for (name, node, body) in cases {
            let (a, b) = both(name, node, body);
            assert_eq!(a, b, "{name}");
        }
    }

    #[test]
    fn tools_are_read_from_lists_or_json_text_and_replace_functions() {
        let body = json!({"tools": "[{\"type\": \"function\"}]", "tool_choice": "auto",
                          "functions": [{"name": "f"}], "function_call": "{\"name\": \"f\"}"});
        let p = from_fields(body.as_object().unwrap()).unwrap();
        let sent = encode_request(&chat_prompt(), &p, false, Provider::OpenAi);
        assert_eq!(sent["tools"], json!([{"type": "function"}]));
        assert_eq!(sent["tool_choice"], "auto");
        assert!(sent.get("functions").is_none(), "{sent}");
        assert!(sent.get("function_call").is_none(), "{sent}");
        let body =
            json!({"functions": "[{\"name\": \"f\"}]", "function_call": "{\"name\": \"f\"}"});
        let sent = encode_request(
            &chat_prompt(),
            &from_fields(body.as_object().unwrap()).unwrap(),
            false,
            Provider::OpenAi,
        );
        assert_eq!(sent["functions"], json!([{"name": "f"}]));
        assert_eq!(sent["function_call"], json!({"name": "f"}));
        let err = from_fields(json!({"tools": "auto"}).as_object().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the parameter `tools` must be a list of definitions (or JSON text of one)"
        );
    }

    #[test]
    fn deployment_name_is_kept_apart_from_model() {
        let body = json!({"deployment_name": "dep", "model": "m"});
        let p = from_fields(body.as_object().unwrap()).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert_eq!(p.deployment_name.as_deref(), Some("dep"));
        let p = from_fields(json!({"deployment_name": "dep"}).as_object().unwrap()).unwrap();
        assert_eq!(p.model.as_deref(), Some("dep"));
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let body = json!({"max_completion_tokens": 5, "max_tokens": 9});
        let p = from_fields(body.as_object().unwrap()).unwrap();
        assert_eq!(p.max_tokens, Some(5));
    }

    #[test]
    fn chat_numbers_keep_their_kind_and_the_defaults_are_floats() {
        let body = json!({"temperature": 1, "top_p": 1.0, "frequency_penalty": 0});
        let p = from_fields(body.as_object().unwrap()).unwrap();
        let sent = encode_request(&chat_prompt(), &p, false, Provider::OpenAi);
        assert_eq!(sent["temperature"].to_string(), "1");
        assert_eq!(sent["top_p"].to_string(), "1.0");
        assert_eq!(sent["frequency_penalty"].to_string(), "0");
        // Not given: the chat tools' defaults, `1.0`.
        let p = from_fields(json!({"temperature": "0.5"}).as_object().unwrap()).unwrap();
        let sent = encode_request(&chat_prompt(), &p, false, Provider::OpenAi);
        assert_eq!(sent["temperature"].to_string(), "0.5");
        assert_eq!(sent["top_p"].to_string(), "1.0");
    }

    #[test]
    fn a_request_carries_the_values_as_given() {
        let body = json!({"temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.1, "seed": -1,
                          "max_tokens": 5, "stop": "\n", "response_format": {"type": "json_object"},
                          "model": "m"});
        let p = from_fields(body.as_object().unwrap()).unwrap();
        let sent = encode_request(&chat_prompt(), &p, false, Provider::OpenAi);
        assert_eq!(sent["temperature"].to_string(), "0.7");
        assert_eq!(sent["top_p"].to_string(), "0.9");
        assert_eq!(sent["presence_penalty"].to_string(), "0.1");
        assert_eq!(sent["seed"], -1);
        assert_eq!(sent["messages"][0]["content"], "hi");
        assert_eq!(sent["max_tokens"], 5);
        assert_eq!(sent["stop"], json!(["\n"]));
        assert_eq!(sent["model"], "m");
        assert_eq!(sent["response_format"]["type"], "json_object");
        assert_eq!(sent["stream"], false);
        assert!(sent.get("stream_options").is_none());
        let streamed = encode_request(&chat_prompt(), &p, true, Provider::OpenAi);
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["stream_options"], json!({"include_usage": true}));
    }

    fn chat_prompt() -> Prompt {
        Prompt::Chat(vec![super::super::types::ChatMessage::new("user", "hi")])
    }

    #[test]
    fn the_completion_api_s_own_fields_are_read_and_checked() {
        let body = json!({"suffix": "", "echo": "True", "best_of": 3, "logprobs": 0, "n": 2});
        let p = from_fields(body.as_object().unwrap()).unwrap();
        assert_eq!(p.completion.suffix, None);
        assert!(p.completion.echo);
        assert_eq!(p.completion.best_of, Some(3));
        assert_eq!(p.completion.logprobs, None);
        assert_eq!(p.n, 2);
        let p = from_fields(
            json!({"logprobs": true, "suffix": "end"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.completion.logprobs, None);
        assert_eq!(p.completion.suffix.as_deref(), Some("end"));
        for (name, value, expected) in [
            ("n", json!(0), "a whole number from 1 to 128"),
            ("n", json!(129), "a whole number from 1 to 128"),
            ("echo", json!("maybe"), "true or false"),
            ("best_of", json!(0), "a whole number from 1 to 20"),
            (
                "logprobs",
                json!(6),
                "a whole number from 0 to 5 (or true or false for chat)",
            ),
            ("suffix", json!(3), "a string"),
        ] {
            let mut fields = serde_json::Map::new();
            fields.insert(name.to_owned(), value);
            let err = from_fields(&fields).unwrap_err().to_string();
            assert_eq!(err, format!("the parameter `{name}` must be {expected}"));
        }
    }
}
