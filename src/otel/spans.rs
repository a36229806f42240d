//! The spans of one finished line, made from its [`LineResult`] with the times the engine measured:
//! the line (named after the flow), each node run under it, and each model call a node made under
//! the node. Attributes follow promptflow's span spec (`span_type`, `framework`, `node_name`,
//! `function`, `line_run_id`, the `promptflow.function.inputs`/`output` events, `llm.usage.*`,
//! `__computed__.cumulative_token_count.*`), OpenTelemetry's GenAI conventions on model calls
//! (`gen_ai.*`) and OpenInference's (`openinference.span.kind`, `input.value`, `output.value`,
//! `llm.token_count.*`), which Phoenix reads.
//!
//! promptflow also sets an `output` attribute; it is left out because Phoenix stores attributes as a
//! tree, where `output` would hide OpenInference's `output.value`. The output is in the
//! `promptflow.function.output` event.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status as SpanStatus, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use serde_json::Value as Json;
use sluice_engine::redact::redact;
use sluice_engine::{ErrorInfo, Flow, LineResult, NodeRunInfo, Status, TokenCounts};

/// The longest payload (inputs, outputs, prompts) a span carries, in bytes; longer ones are cut.
const MAX_PAYLOAD: usize = 64 * 1024;

/// What spans need to know of a flow: its name, what kind of flow it is, and each node's kind.
#[derive(Clone, Debug)]
pub struct FlowInfo {
    name: Arc<str>,
    /// promptflow's `execution_target`: `dag`, `flex` or `prompty`.
    target: &'static str,
    nodes: Arc<HashMap<String, NodeInfo>>,
}

#[derive(Clone, Debug)]
struct NodeInfo {
    /// The YAML `type:` (`llm`, `python`, ...).
    kind: String,
    /// The tool it runs: a package tool's id, a code file, or the kind.
    function: String,
}

impl FlowInfo {
    pub fn of(flow: &Flow) -> FlowInfo {
        let def = &flow.def;
        let target = if def.prompty.is_some() {
            "prompty"
        } else if def.flex.is_some() {
            "flex"
        } else {
            "dag"
        };
        let nodes = def
            .nodes
            .iter()
            .map(|n| {
                let function = n
                    .source
                    .as_ref()
                    .and_then(|s| s.tool.clone().or_else(|| s.path.clone()))
                    .unwrap_or_else(|| n.kind.clone());
                (
                    n.name.clone(),
                    NodeInfo {
                        kind: n.kind.clone(),
                        function,
                    },
                )
            })
            .collect();
        FlowInfo {
            name: def.name.as_str().into(),
            target,
            nodes: Arc::new(nodes),
        }
    }
}

/// A span this line's span continues (a served request's W3C `traceparent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl Parent {
    /// Reads a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when it is not one.
    pub fn from_traceparent(header: &str) -> Option<Parent> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        // Version ff is invalid; version 00 has exactly four fields; later versions may add some.
        if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Parent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// Where a line ran: in a batch run (its name), and under which parent span.
#[derive(Clone, Debug, Default)]
pub struct LineScope {
    /// The batch run's name; `None` for `flow test` and served lines.
    pub batch_run_id: Option<String>,
    /// The run an evaluation run evaluates (`--run`).
    pub referenced_batch_run_id: Option<String>,
    pub parent: Option<Parent>,
    /// A served request: the line's span is a server span.
    pub server: bool,
    /// The batch run's aggregation nodes, not a line: the root span is `aggregation`.
    pub aggregation: bool,
}

/// How many spans [`line_spans`] makes of `line`, without making them.
pub fn span_count(line: &LineResult) -> usize {
    1 + line
        .node_runs
        .iter()
        .filter(|r| r.status != Status::Bypassed)
        .map(|r| 1 + r.api_calls.len())
        .sum::<usize>()
}

fn time(t: DateTime<Utc>) -> SystemTime {
    SystemTime::from(t)
}

fn epoch(v: &Json) -> Option<SystemTime> {
    let secs = v.as_f64().filter(|s| s.is_finite() && *s > 0.0)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

/// Text for a span, with secrets masked and cut at [`MAX_PAYLOAD`] bytes.
fn payload(text: &str) -> Arc<str> {
    let masked = redact(text);
    if masked.len() <= MAX_PAYLOAD {
        return Arc::from(&*masked);
    }
    let mut end = MAX_PAYLOAD;
    while !masked.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(format!(
        "{}… ({} bytes in all)",
        &masked[..end],
        masked.len()
    ))
}

fn json_payload(value: &impl serde::Serialize) -> Arc<str> {
    payload(&sluice_engine::json::to_string(value).unwrap_or_default())
}

fn status_of(status: Status, error: Option<&ErrorInfo>) -> SpanStatus {
    match (status, error) {
        (Status::Completed | Status::Bypassed, _) => SpanStatus::Ok,
        (_, Some(e)) => SpanStatus::error(redact(&e.message).into_owned()),
        (_, None) => SpanStatus::error(status.as_str()),
    }
}

/// The `exception` event OpenTelemetry records for an error.
fn exception(e: &ErrorInfo, at: SystemTime) -> Event {
    Event::new(
        "exception",
        at,
        vec![
            KeyValue::new("exception.type", e.error_type.clone()),
            KeyValue::new("exception.message", redact(&e.message).into_owned()),
        ],
        0,
    )
}

fn tokens_of(t: &TokenCounts) -> Option<(u64, u64, u64)> {
    if t.prompt_tokens.is_none() && t.completion_tokens.is_none() && t.total_tokens.is_none() {
        return None;
    }
    let (p, c) = (
        t.prompt_tokens.unwrap_or(0),
        t.completion_tokens.unwrap_or(0),
    );
    Some((p, c, t.total_tokens.unwrap_or(p + c)))
}

fn cumulative(attrs: &mut Vec<KeyValue>, t: (u64, u64, u64)) {
    attrs.push(KeyValue::new(
        "__computed__.cumulative_token_count.prompt",
        t.0 as i64,
    ));
    attrs.push(KeyValue::new(
        "__computed__.cumulative_token_count.completion",
        t.1 as i64,
    ));
    attrs.push(KeyValue::new(
        "__computed__.cumulative_token_count.total",
        t.2 as i64,
    ));
}

/// A line-run id in UUID form, from random bits.
fn uuid_from(id: TraceId) -> String {
    let h = format!("{id}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Makes the spans of finished lines.
#[derive(Debug)]
pub struct SpanMaker {
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    payloads: bool,
}

/// One span before the line's common attributes are added.
struct Draft {
    id: SpanId,
    parent: SpanId,
    name: Cow<'static, str>,
    kind: SpanKind,
    times: (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    status: SpanStatus,
}

/// What every span of one line shares.
struct LineCx<'a> {
    trace_id: TraceId,
    flow: &'a FlowInfo,
    common: Vec<KeyValue>,
}

impl SpanMaker {
    pub fn new(payloads: bool) -> SpanMaker {
        SpanMaker {
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("sluice")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            payloads,
        }
    }

    fn span(&self, cx: &LineCx<'_>, d: Draft) -> SpanData {
        let mut attributes = d.attributes;
        attributes.extend(cx.common.iter().cloned());
        let mut events = SpanEvents::default();
        events.events = d.events;
        let (start, end) = d.times;
        SpanData {
            span_context: SpanContext::new(
                cx.trace_id,
                d.id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: d.parent,
            parent_span_is_remote: false,
            span_kind: d.kind,
            name: d.name,
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: d.status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// Inputs and output (when payloads are kept; the output only of a completed run) as promptflow's
    /// events and OpenInference's attributes, and the error as an `exception` event at the end.
    fn io(
        &self,
        attrs: &mut Vec<KeyValue>,
        (start, end): (SystemTime, SystemTime),
        status: Status,
        inputs: &impl serde::Serialize,
        output: &impl serde::Serialize,
        error: Option<&ErrorInfo>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if self.payloads {
            let i = json_payload(inputs);
            attrs.push(KeyValue::new("inputs", OtelValue::from(i.clone())));
            attrs.push(KeyValue::new("input.value", OtelValue::from(i.clone())));
            attrs.push(KeyValue::new("input.mime_type", "application/json"));
            events.push(Event::new(
                "promptflow.function.inputs",
                start,
                vec![KeyValue::new("payload", OtelValue::from(i))],
                0,
            ));
            if status == Status::Completed {
                let o = json_payload(output);
                attrs.push(KeyValue::new("output.value", OtelValue::from(o.clone())));
                attrs.push(KeyValue::new("output.mime_type", "application/json"));
                events.push(Event::new(
                    "promptflow.function.output",
                    end,
                    vec![KeyValue::new("payload", OtelValue::from(o))],
                    0,
                ));
            }
        }
        if let Some(e) = error {
            events.push(exception(e, end));
        }
        events
    }

    /// The spans of one finished line: the line first, then each node run followed by its model
    /// calls. Bypassed nodes have none.
    pub fn line_spans(
        &self,
        line: &LineResult,
        flow: &FlowInfo,
        scope: &LineScope,
    ) -> Vec<SpanData> {
        let trace_id = scope
            .parent
            .map_or_else(|| self.ids.new_trace_id(), |p| p.trace_id);
        let line_run_id = match (&scope.batch_run_id, line.line_number) {
            (Some(run), _) if scope.aggregation => format!("{run}_aggregation"),
            (Some(run), Some(n)) => format!("{run}_{n}"),
            _ => uuid_from(self.ids.new_trace_id()),
        };
        let mut common = vec![
            KeyValue::new("framework", "promptflow"),
            KeyValue::new("line_run_id", line_run_id),
        ];
        if let Some(run) = &scope.batch_run_id {
            common.push(KeyValue::new("batch_run_id", run.clone()));
        }
        if let (Some(_), Some(n)) = (&scope.batch_run_id, line.line_number) {
            common.push(KeyValue::new("line_number", n as i64));
        }
        if let Some(r) = &scope.referenced_batch_run_id {
            common.push(KeyValue::new("referenced.batch_run_id", r.clone()));
        }
        let cx = LineCx {
            trace_id,
            flow,
            common,
        };
        let line_id = self.ids.new_span_id();
        let mut spans = Vec::with_capacity(span_count(line));
        let times = (time(line.start_time), time(line.end_time));
        let mut attrs = vec![
            KeyValue::new("span_type", "Flow"),
            KeyValue::new("function", flow.name.to_string()),
            KeyValue::new("execution_target", flow.target),
            KeyValue::new("openinference.span.kind", "CHAIN"),
        ];
        let mut total = TokenCounts::default();
        for run in &line.node_runs {
            total.add(&run.system_metrics.tokens);
        }
        if let Some(t) = tokens_of(&total) {
            cumulative(&mut attrs, t);
        }
        let events = self.io(
            &mut attrs,
            times,
            line.status,
            &line.inputs,
            &line.output,
            line.error.as_ref(),
        );
        let mut line_span = self.span(
            &cx,
            Draft {
                id: line_id,
                parent: scope.parent.map_or(SpanId::INVALID, |p| p.span_id),
                name: if scope.aggregation {
                    "aggregation".into()
                } else {
                    flow.name.to_string().into()
                },
                kind: if scope.server {
                    SpanKind::Server
                } else {
                    SpanKind::Internal
                },
                times,
                attributes: attrs,
                events,
                status: status_of(line.status, line.error.as_ref()),
            },
        );
        line_span.parent_span_is_remote = scope.parent.is_some();
        spans.push(line_span);
        for run in &line.node_runs {
            if run.status != Status::Bypassed {
                self.node_spans(&cx, line_id, run, &mut spans);
            }
        }
        spans
    }

    fn node_spans(
        &self,
        cx: &LineCx<'_>,
        parent: SpanId,
        run: &NodeRunInfo,
        out: &mut Vec<SpanData>,
    ) {
        let info = cx.flow.nodes.get(&run.node);
        let kind = info.map_or("python", |i| i.kind.as_str());
        let (span_type, oi_kind) = match kind {
            "llm" | "custom_llm" => ("LLM", "CHAIN"),
            "embedding" => ("Embedding", "CHAIN"),
            "retrieval" => ("Retrieval", "RETRIEVER"),
            "python" => ("Function", "TOOL"),
            _ => ("Function", "CHAIN"),
        };
        let times = (time(run.start_time), time(run.end_time));
        let mut attrs = vec![
            KeyValue::new("span_type", span_type),
            KeyValue::new("node_name", run.node.clone()),
            KeyValue::new(
                "function",
                info.map_or_else(|| run.node.clone(), |i| i.function.clone()),
            ),
            KeyValue::new("openinference.span.kind", oi_kind),
        ];
        if let Some(t) = tokens_of(&run.system_metrics.tokens) {
            cumulative(&mut attrs, t);
        }
        let events = self.io(
            &mut attrs,
            times,
            run.status,
            &run.inputs,
            &run.output,
            run.error.as_ref(),
        );
        let id = self.ids.new_span_id();
        out.push(self.span(
            cx,
            Draft {
                id,
                parent,
                name: run.node.clone().into(),
                kind: SpanKind::Internal,
                times,
                attributes: attrs,
                events,
                status: status_of(run.status, run.error.as_ref()),
            },
        ));
        let only = run.api_calls.len() == 1;
        for call in &run.api_calls {
            out.push(self.call_span(cx, id, run, call, only));
        }
    }

    /// A model call: what the node asked (`api_calls`), when, and the tokens it took.
    fn call_span(
        &self,
        cx: &LineCx<'_>,
        parent: SpanId,
        run: &NodeRunInfo,
        call: &Json,
        only: bool,
    ) -> SpanData {
        let embedding = call["type"] == "Embedding";
        let op = match call["api"].as_str() {
            Some("completion") => "text_completion",
            Some("embeddings") => "embeddings",
            _ if embedding => "embeddings",
            _ => "chat",
        };
        let backend = call["backend"].as_str().unwrap_or_default();
        let (backend_kind, backend_name) = backend.split_once(':').unwrap_or((backend, ""));
        let provider = match backend_kind {
            "open_ai" | "custom" => "openai",
            "azure_open_ai" => "azure.ai.openai",
            "serverless" | "azure_ai_services" => "azure.ai.inference",
            "local" => "llama.cpp",
            "" => "unknown",
            other => other,
        }
        .to_owned();
        let model = call["model"]
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or(if backend_name.is_empty() {
                backend
            } else {
                backend_name
            })
            .to_owned();
        let start = epoch(&call["start_time"]).unwrap_or_else(|| time(run.start_time));
        let end = epoch(&call["end_time"]).unwrap_or_else(|| time(run.end_time));
        let finished = !call["end_time"].is_null();
        let (span_type, oi_kind) = if embedding {
            ("Embedding", "EMBEDDING")
        } else {
            ("LLM", "LLM")
        };
        let mut attrs = vec![
            KeyValue::new("span_type", span_type),
            KeyValue::new("node_name", run.node.clone()),
            KeyValue::new("function", format!("{provider}.{op}")),
            KeyValue::new("openinference.span.kind", oi_kind),
            KeyValue::new("gen_ai.operation.name", op),
            KeyValue::new("gen_ai.provider.name", provider.clone()),
            KeyValue::new("gen_ai.system", provider.clone()),
            KeyValue::new("gen_ai.request.model", model.clone()),
            KeyValue::new("llm.provider", provider.clone()),
            KeyValue::new("llm.system", provider.clone()),
            KeyValue::new(
                if embedding {
                    "embedding.model_name"
                } else {
                    "llm.model_name"
                },
                model.clone(),
            ),
        ];
        let params = &call["params"];
        if let Some(m) = params["max_tokens"].as_u64() {
            attrs.push(KeyValue::new("gen_ai.request.max_tokens", m as i64));
        }
        if let Some(t) = params["temperature"].as_f64() {
            attrs.push(KeyValue::new("gen_ai.request.temperature", t));
        }
        if let Some(t) = params["top_p"].as_f64() {
            attrs.push(KeyValue::new("gen_ai.request.top_p", t));
        }
        if params.is_object() {
            attrs.push(KeyValue::new(
                "llm.invocation_parameters",
                params.to_string(),
            ));
        }
        // Tokens: the call's own, or (for a stream, whose end the node did not see) the node's.
        let usage = &call["usage"];
        let tokens = if usage.is_object() {
            let p = usage["prompt_tokens"].as_u64();
            let c = usage["completion_tokens"].as_u64();
            tokens_of(&TokenCounts {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: usage["total_tokens"].as_u64(),
                cached_tokens: None,
            })
        } else if only {
            tokens_of(&run.system_metrics.tokens)
        } else {
            None
        };
        if let Some((p, c, t)) = tokens {
            let (p, c, t) = (p as i64, c as i64, t as i64);
            attrs.extend([
                KeyValue::new("gen_ai.usage.input_tokens", p),
                KeyValue::new("llm.usage.prompt_tokens", p),
                KeyValue::new("llm.token_count.prompt", p),
                KeyValue::new("llm.usage.total_tokens", t),
                KeyValue::new("llm.token_count.total", t),
            ]);
            if !embedding {
                attrs.extend([
                    KeyValue::new("gen_ai.usage.output_tokens", c),
                    KeyValue::new("llm.usage.completion_tokens", c),
                    KeyValue::new("llm.token_count.completion", c),
                ]);
            }
            cumulative(&mut attrs, (p as u64, c as u64, t as u64));
        }
        if let Some(m) = call["response_model"].as_str() {
            attrs.push(KeyValue::new("gen_ai.response.model", m.to_owned()));
            attrs.push(KeyValue::new("llm.response.model", m.to_owned()));
        }
        if let Some(f) = call["finish_reason"].as_str() {
            attrs.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                OtelValue::Array(vec![opentelemetry::StringValue::from(f.to_owned())].into()),
            ));
        }
        let mut events = Vec::new();
        if self.payloads {
            let prompt = &call["prompt"];
            if let Some(messages) = prompt.as_array() {
                for (i, m) in messages.iter().enumerate() {
                    if let Some(role) = m["role"].as_str() {
                        attrs.push(KeyValue::new(
                            format!("llm.input_messages.{i}.message.role"),
                            role.to_owned(),
                        ));
                    }
                    let content = match &m["content"] {
                        Json::String(s) => payload(s),
                        Json::Null => continue,
                        other => payload(&other.to_string()),
                    };
                    attrs.push(KeyValue::new(
                        format!("llm.input_messages.{i}.message.content"),
                        OtelValue::from(content),
                    ));
                }
            }
            if !prompt.is_null() {
                let (text, mime) = match prompt {
                    Json::String(s) => (payload(s), "text/plain"),
                    other => (payload(&other.to_string()), "application/json"),
                };
                attrs.push(KeyValue::new("input.value", OtelValue::from(text)));
                attrs.push(KeyValue::new("input.mime_type", mime));
            }
            // The node's output is this call's reply when the node made one call.
            if only && run.status == Status::Completed && !embedding {
                let (text, mime) = match &run.output {
                    sluice_engine::Value::String(s) => (payload(s), "text/plain"),
                    other => (json_payload(other), "application/json"),
                };
                attrs.push(KeyValue::new("output.value", OtelValue::from(text.clone())));
                attrs.push(KeyValue::new("output.mime_type", mime));
                attrs.push(KeyValue::new(
                    "llm.output_messages.0.message.role",
                    "assistant",
                ));
                attrs.push(KeyValue::new(
                    "llm.output_messages.0.message.content",
                    OtelValue::from(text.clone()),
                ));
                events.push(Event::new(
                    "promptflow.llm.generated_message",
                    end,
                    vec![KeyValue::new("payload", OtelValue::from(text))],
                    0,
                ));
            }
        }
        let status = match (&run.error, finished) {
            (Some(e), false) => {
                events.push(exception(e, end));
                SpanStatus::error(redact(&e.message).into_owned())
            }
            _ => SpanStatus::Ok,
        };
        self.span(
            cx,
            Draft {
                id: self.ids.new_span_id(),
                parent,
                name: format!("{op} {model}").into(),
                kind: SpanKind::Client,
                times: (start, end),
                attributes: attrs,
                events,
                status,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::{Map, NodeMetrics, Value};

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn flow() -> FlowInfo {
        FlowInfo {
            name: "chat_flow".into(),
            target: "dag",
            nodes: [
                ("prep", "python", "prep.py"),
                ("answer", "llm", "chat.jinja2"),
                ("skipped", "python", "x.py"),
            ]
            .into_iter()
            .map(|(n, k, f)| {
                (
                    n.to_owned(),
                    NodeInfo {
                        kind: k.into(),
                        function: f.into(),
                    },
                )
            })
            .collect::<HashMap<_, _>>()
            .into(),
        }
    }

    fn node(name: &str, status: Status, from: i64, to: i64) -> NodeRunInfo {
        NodeRunInfo {
            node: name.into(),
            status,
            inputs: [("q".to_string(), Value::from("hi"))].into_iter().collect(),
            output: Value::from("out"),
            error: None,
            start_time: at(from),
            end_time: at(to),
            index: None,
            system_metrics: NodeMetrics::default(),
            api_calls: vec![],
        }
    }

    fn line() -> LineResult {
        let mut answer = node("answer", Status::Completed, 10, 90);
        answer.system_metrics.tokens = TokenCounts {
            prompt_tokens: Some(7),
            completion_tokens: Some(2),
            total_tokens: Some(9),
            cached_tokens: None,
        };
        let secs = |ms: i64| at(ms).timestamp_micros() as f64 / 1e6;
        answer.api_calls = vec![serde_json::json!({
            "type": "LLM", "api": "chat", "backend": "open_ai:oai", "model": "gpt-x",
            "start_time": secs(20), "end_time": secs(80),
            "prompt": [{"role": "user", "content": "hi"}],
            "params": {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0},
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
            "response_model": "gpt-x-2024", "finish_reason": "stop",
        })];
        LineResult {
            line_number: Some(3),
            status: Status::Completed,
            inputs: Map::new(),
            output: [("a".to_string(), Value::from("out"))]
                .into_iter()
                .collect(),
            error: None,
            node_runs: vec![
                node("prep", Status::Completed, 1, 9),
                answer,
                node("skipped", Status::Bypassed, 9, 9),
            ],
            aggregation_inputs: Map::new(),
            start_time: at(0),
            end_time: at(100),
        }
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_line_makes_a_tree_of_line_nodes_and_model_calls() {
        let maker = SpanMaker::new(true);
        let scope = LineScope {
            batch_run_id: Some("run1".into()),
            ..LineScope::default()
        };
        let l = line();
        let spans = maker.line_spans(&l, &flow(), &scope);
        assert_eq!(spans.len(), span_count(&l));
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["chat_flow", "prep", "answer", "chat gpt-x"]);
        let (root, prep, answer, call) = (&spans[0], &spans[1], &spans[2], &spans[3]);
        let trace = root.span_context.trace_id();
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(prep.parent_span_id, root.span_context.span_id());
        assert_eq!(answer.parent_span_id, root.span_context.span_id());
        assert_eq!(call.parent_span_id, answer.span_context.span_id());
        assert_eq!(call.span_kind, SpanKind::Client);
        assert_eq!(attr(root, "span_type"), Some(&"Flow".into()));
        assert_eq!(attr(root, "line_run_id"), Some(&"run1_3".into()));
        assert_eq!(attr(prep, "line_number"), Some(&OtelValue::I64(3)));
        assert_eq!(attr(prep, "openinference.span.kind"), Some(&"TOOL".into()));
        assert_eq!(attr(answer, "span_type"), Some(&"LLM".into()));
        assert_eq!(
            attr(root, "__computed__.cumulative_token_count.total"),
            Some(&OtelValue::I64(9))
        );
        for (k, v) in [
            ("gen_ai.operation.name", OtelValue::from("chat")),
            ("gen_ai.provider.name", "openai".into()),
            ("gen_ai.request.model", "gpt-x".into()),
            ("gen_ai.response.model", "gpt-x-2024".into()),
            ("gen_ai.request.max_tokens", OtelValue::I64(16)),
            ("gen_ai.usage.input_tokens", OtelValue::I64(7)),
            ("gen_ai.usage.output_tokens", OtelValue::I64(2)),
            ("llm.usage.total_tokens", OtelValue::I64(9)),
            ("llm.token_count.completion", OtelValue::I64(2)),
            ("openinference.span.kind", "LLM".into()),
            ("llm.input_messages.0.message.content", "hi".into()),
            ("output.value", "out".into()),
        ] {
            assert_eq!(attr(call, k), Some(&v), "{k}");
        }
        // The call's own times, inside its node's.
        assert!(call.start_time > answer.start_time && call.end_time < answer.end_time);
        assert!(
            root.events
                .iter()
                .any(|e| e.name == "promptflow.function.inputs")
        );
    }

    #[test]
    fn without_payloads_no_inputs_outputs_or_prompts_leave() {
        let spans = SpanMaker::new(false).line_spans(&line(), &flow(), &LineScope::default());
        for s in &spans {
            for key in [
                "inputs",
                "input.value",
                "output.value",
                "llm.input_messages.0.message.content",
            ] {
                assert!(attr(s, key).is_none(), "{} has {key}", s.name);
            }
            assert!(s.events.is_empty(), "{}", s.name);
        }
        // Tokens stay.
        assert_eq!(
            attr(&spans[3], "llm.token_count.prompt"),
            Some(&OtelValue::I64(7))
        );
    }

    #[test]
    fn a_traceparent_makes_the_line_a_child_of_the_caller() {
        let p = Parent::from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .unwrap();
        assert!(p.sampled);
        let scope = LineScope {
            parent: Some(p),
            server: true,
            ..LineScope::default()
        };
        let spans = SpanMaker::new(true).line_spans(&line(), &flow(), &scope);
        assert_eq!(spans[0].parent_span_id, p.span_id);
        assert!(spans[0].parent_span_is_remote);
        assert_eq!(spans[0].span_kind, SpanKind::Server);
        assert!(
            spans
                .iter()
                .all(|s| s.span_context.trace_id() == p.trace_id)
        );
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert_eq!(Parent::from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_failed_line_has_an_error_status_and_an_exception_event() {
        let mut l = line();
        l.status = Status::Failed;
        l.error = Some(ErrorInfo::new(
            sluice_engine::ErrorCode::UserError,
            "ToolExecutionError",
            "boom".to_owned(),
        ));
        let spans = SpanMaker::new(true).line_spans(&l, &flow(), &LineScope::default());
        assert_eq!(spans[0].status, SpanStatus::error("boom"));
        assert!(spans[0].events.iter().any(|e| e.name == "exception"));
        assert!(attr(&spans[0], "output.value").is_none());
    }

    #[test]
    fn long_payloads_are_cut() {
        let long = "x".repeat(MAX_PAYLOAD + 10);
        let p = payload(&long);
        assert!(
            p.len() < MAX_PAYLOAD + 40 && p.ends_with("bytes in all)"),
            "{}",
            p.len()
        );
    }
}
