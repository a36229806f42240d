//! The traffic log: every served line (or a sample of them) recorded as a batch run's lines are, so
//! that the traffic can be read back as a run.
//!
//! The log of a flow is a run store of its own at `$SLUICE_HOME/serve/<flow>/`: each segment is a run
//! folder under `runs/` (`run.json`, `details.jsonl`, `inputs.jsonl`, `outputs.jsonl`,
//! `flow_outputs/output.jsonl`) indexed in `runs.sqlite`, so `SLUICE_HOME=$SLUICE_HOME/serve/<flow>
//! sluice run show-details -n SEGMENT` shows it and `sluice run create --run <segment folder>` evaluates
//! it. A segment is closed (marked `Completed`) and a new one started once it holds `max_bytes`, and
//! when the server stops. Feedback (`POST /feedback`) goes to `feedback.jsonl` beside `runs/`.
//!
//! Records are written by one thread of their own, fed through a bounded queue: a request never
//! waits on the disk, and a record that does not fit in the queue is dropped and counted. The writer
//! is not woken for each record (a wake-up is a system call on the request's path and another on the
//! writer's): it takes what has queued every [`WRITE_INTERVAL`], or at once when the queue fills up,
//! and writes each file's share of it in one call.
//!
//! A served line is laid out on the request's thread, while its data is still in that core's cache,
//! into buffers that thread keeps for its next lines, and copied onto the end of the queue's buffers:
//! its inputs' and outputs' lines as text with slots for the line number (which only the writer
//! knows, as it opens and closes segments), its nodes' `<node>.<status>` keys for the segment's
//! counts, and what its `details.jsonl` record holds besides (statuses, times, token counts) as
//! plain values, which the writer writes the record from, numbered, with no serialiser between;
//! lines that record more (an error, the nodes' payloads) are serialised whole on the request's
//! thread. The writer swaps the queue's buffers with its own, emptied ones, so that once they have
//! grown a served line costs no allocation or free on either side, and no memory made by one thread
//! is freed by another. Lines whose inputs or outputs hold images, written to files of the segment,
//! are queued whole and serialised by the writer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sluice_engine::exec::NodeRunInfo;
use sluice_engine::json::{UtcWriter, is_short_utc};
use sluice_engine::store::{
    DetailsWriter, LineRecordRef, Owner, RunProperties, RunRecord, RunStatus, StoreError,
    SystemMetrics, TokenCounts,
};
use sluice_engine::{LineResult, Map, RunName, RunStore, Status, Value};

/// Records waiting for the writer beyond this many are dropped.
const QUEUE: usize = 64 * 1024;

/// Records are dropped too when their text waiting for the writer would pass this many bytes (but
/// for one larger record alone in the queue). The bound that counts for most flows (a small line's
/// text is about a kilobyte): seconds of traffic, so that a disk that stalls the writer for a while
/// loses no line.
const QUEUE_BYTES: usize = 32 << 20;

/// The writer wakes up at once when this many records wait, or this many bytes of their text.
const WAKE_AT: usize = 1024;
const WAKE_AT_BYTES: usize = 1 << 20;

/// The room the writer's buffers keep once written (a burst grows them further for a while).
const KEEP_BYTES: usize = 4 << 20;
const KEEP_ENTRIES: usize = 4 * WAKE_AT;

/// A request thread's buffer for serialising lines is freed rather than kept when a record has grown
/// it past this size.
const SCRATCH_BYTES: usize = 64 * 1024;

/// How long a record waits, at most, before the writer takes it (while the queue is not filling up).
pub(crate) const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// What can go wrong writing the traffic log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrafficError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the traffic log writer")]
    Thread(#[source] std::io::Error),
}

/// How lines are logged.
#[derive(Clone, Debug)]
pub(crate) struct TrafficOptions {
    /// The share of lines logged, from 0 to 1.
    pub sample: f64,
    /// Which inputs and outputs are kept.
    pub payloads: LogPayloads,
    /// A segment holding this many bytes of `details.jsonl` is closed.
    pub max_bytes: u64,
    /// How the flow refers to the image files the log writes (its `message_format`).
    pub message_format: sluice_engine::image::MessageFormat,
}

/// Which inputs and outputs the traffic log keeps; status, timings and tokens are always kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogPayloads {
    /// None: no inputs or outputs, of the line or of its nodes.
    Off,
    /// The line's inputs and outputs, not its nodes' (which traces carry).
    Line,
    /// The line's and each node's inputs, outputs and API calls, as a batch run keeps them.
    Nodes,
}

enum Entry {
    /// A line serialised by its request's thread: its text is the next [`Layout::len`] bytes of the
    /// queue's text.
    Encoded(Layout),
    /// A completed line whose `details.jsonl` record the writer makes (see [`defer`]).
    Deferred(Deferred),
    /// A line the writer serialises (its images go to files of the segment).
    Line(Box<LineResult>),
    Feedback(Json),
}

/// The parts of a served line's text, one after another: `details.jsonl`'s record, `inputs.jsonl`'s
/// line, (for a completed line) the line of `outputs.jsonl` and `flow_outputs/output.jsonl`, each a
/// template (see [`sluice_engine::json::to_template`]) with its newline and secrets masked; then each
/// node's `<node>.<status>` key for the segment's counts, after its length in four bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Layout {
    details: usize,
    inputs: usize,
    outputs: usize,
    keys: usize,
    completed: bool,
    tokens: TokenCounts,
}

impl Layout {
    fn len(&self) -> usize {
        self.details + self.inputs + self.outputs + self.keys
    }

    /// The `<node>.<status>` keys of the line `text` (UTF-8, from node names).
    fn node_keys<'t>(&self, text: &'t [u8]) -> impl Iterator<Item = &'t [u8]> {
        let mut keys = text.get(self.len() - self.keys..).unwrap_or_default();
        std::iter::from_fn(move || {
            let (len, rest) = keys.split_first_chunk::<4>()?;
            let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
            let (key, rest) = rest.split_at(len);
            keys = rest;
            Some(key)
        })
    }
}

/// A line laid out by [`defer`]: its text is the next [`Layout::len`] bytes of the queue's text (as
/// an [`Entry::Encoded`] line's, with no `details.jsonl` record), its node runs the next `nodes` of
/// the queue's [`NodeSnap`]s.
#[derive(Clone, Copy, Debug)]
struct Deferred {
    layout: Layout,
    nodes: usize,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
}

/// What a deferred line's record holds of a node run but its name (which is in the run's
/// `<node>.<status>` key).
#[derive(Clone, Copy, Debug)]
struct NodeSnap {
    status: Status,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    tokens: TokenCounts,
    time_to_first_token_ms: Option<u64>,
    llm_duration_ms: Option<u64>,
    completion_tokens_per_s: Option<f64>,
    duration: Option<f64>,
}

impl NodeSnap {
    fn of(run: &NodeRunInfo) -> NodeSnap {
        let m = &run.system_metrics;
        NodeSnap {
            status: run.status,
            start_time: run.start_time,
            end_time: run.end_time,
            tokens: m.tokens,
            time_to_first_token_ms: m.time_to_first_token_ms,
            llm_duration_ms: m.llm_duration_ms,
            completion_tokens_per_s: m.completion_tokens_per_s,
            duration: m.duration,
        }
    }
}

/// How a numbered line's template starts (see [`numbered`]): `{"line_number":` and the slot (the
/// byte a template's line number is written over, [`sluice_engine::json::SLOT`]).
const NUMBERED_HEAD: &[u8] = b"{\"line_number\":\x01";

/// Lays out `line` for the writer to make its `details.jsonl` record: its inputs' and outputs'
/// lines and its node keys onto `text`, as [`encode`] does, and what the record needs of its node
/// runs onto `nodes`. The record's own text (timestamps, node runs, names of fields) is most of a
/// line's; serialised in place it cost more than its own time, among a request's other work. The
/// writer writes it straight from these values ([`deferred_record`]), in under half the time a
/// serialiser takes for it (hot, a three-node line: about 0.46 µs against 1.0–1.5 µs).
///
/// Only for a completed line with no error and no node payloads to keep, whose runs' metrics are
/// all [`NodeSnap`] holds, whose times are in the short form and whose values serialise to the same
/// text in both records (no non-finite float, no `line_number` key): nearly every served line.
/// None, with `text` and `nodes` as they were, for any other line, which [`encode`] serialises
/// whole.
fn defer(
    text: &mut Vec<u8>,
    nodes: &mut Vec<NodeSnap>,
    line: &LineResult,
    payloads: LogPayloads,
) -> Option<Deferred> {
    // The maps `encode` writes.
    let record = LineRecordRef::new(line);
    let (inputs, output) = match payloads {
        LogPayloads::Nodes => return None,
        LogPayloads::Line => (record.inputs, record.output),
        LogPayloads::Off => {
            let none = record.without_payloads();
            (none.inputs, none.output)
        }
    };
    let plain = |m: &Map| !m.contains_key("line_number") && m.values().all(same_in_both);
    let simple_run = |r: &NodeRunInfo| {
        let m = &r.system_metrics;
        r.error.is_none()
            && m.other.is_empty()
            && [m.duration, m.completion_tokens_per_s]
                .iter()
                .all(|f| f.is_none_or(f64::is_finite))
            && is_short_utc(&r.start_time)
            && is_short_utc(&r.end_time)
    };
    let simple_runs = line.node_runs.iter().all(simple_run);
    if line.status != Status::Completed
        || !is_short_utc(&line.start_time)
        || !is_short_utc(&line.end_time)
        || line.error.is_some()
        || !simple_runs
        || !plain(inputs)
        || !plain(output)
    {
        return None;
    }
    let start = text.len();
    numbered(text, inputs);
    let inputs_len = text.len() - start;
    numbered(text, output);
    let outputs_len = text.len() - start - inputs_len;
    // A secret masked in the head (a secret that is `line_number`) leaves it to `encode`.
    if !text[start..].starts_with(NUMBERED_HEAD)
        || !text[start + inputs_len..].starts_with(NUMBERED_HEAD)
    {
        text.truncate(start);
        return None;
    }
    let tokens = node_keys(text, line);
    nodes.extend(line.node_runs.iter().map(NodeSnap::of));
    Some(Deferred {
        layout: Layout {
            details: 0,
            inputs: inputs_len,
            outputs: outputs_len,
            keys: text.len() - start - inputs_len - outputs_len,
            completed: true,
            tokens,
        },
        nodes: line.node_runs.len(),
        start_time: line.start_time,
        end_time: line.end_time,
    })
}

/// Whether `v` is written alike in `details.jsonl` and the other records: it holds no non-finite
/// float (which `details.jsonl` writes as a word, the others as `null`) and no object.
fn same_in_both(v: &Value) -> bool {
    match v {
        Value::Float(f) => f.is_finite(),
        Value::List(items) => items.iter().all(same_in_both),
        Value::Map(m) => m.values().all(same_in_both),
        Value::Opaque(_) => false,
        _ => true,
    }
}

/// The value of a numbered line's map as a record holds it: `{"line_number":<slot>,"k":...}\n` is
/// `{"k":...}`. Written by [`numbered`], which [`defer`] checks the head of.
fn unnumbered(numbered: &[u8]) -> (&[u8], &[u8]) {
    let body = numbered
        .strip_prefix(NUMBERED_HEAD)
        .and_then(|b| b.strip_suffix(b"\n"))
        .unwrap_or(b"}");
    match body.strip_prefix(b",") {
        Some(rest) => (b"{", rest),
        None => (b"{}", b""),
    }
}

/// Appends the `details.jsonl` record of the deferred line `d` (its `text` and node runs `snaps`),
/// numbered `n`, to `out`: the text [`encode`] would have made (a test holds the two to the same
/// bytes), written straight from the line's values, as the writer makes thousands a second. Its
/// times go through `times`, which keeps the text of the last second written.
fn deferred_record(
    out: &mut Vec<u8>,
    n: usize,
    d: &Deferred,
    text: &[u8],
    snaps: &[NodeSnap],
    times: &mut UtcWriter,
) {
    use serde_json::ser::{CompactFormatter, Formatter};
    let start = out.len();
    // Writing to a vector cannot fail.
    let int = |out: &mut Vec<u8>, v: u64| drop(CompactFormatter.write_u64(out, v));
    let mut time = |out: &mut Vec<u8>, t: &DateTime<Utc>| {
        if !times.write(out, t) {
            drop(serde_json::to_writer(&mut *out, t));
        }
    };
    out.extend_from_slice(b"{\"line_number\":");
    int(out, n as u64);
    out.extend_from_slice(b",\"status\":\"Completed\",\"inputs\":");
    let inputs = &text[..d.layout.inputs.min(text.len())];
    let outputs = text.get(d.layout.inputs..d.layout.inputs + d.layout.outputs);
    for part in <[&[u8]; 2]>::from(unnumbered(inputs)) {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b",\"output\":");
    for part in <[&[u8]; 2]>::from(unnumbered(outputs.unwrap_or_default())) {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b",\"error\":null,\"node_runs\":[");
    for (i, (snap, key)) in snaps.iter().zip(d.layout.node_keys(text)).enumerate() {
        let name = key
            .len()
            .checked_sub(snap.status.as_str().len() + 1)
            .and_then(|n| key.get(..n))
            .unwrap_or(key);
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"node\":");
        if name.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
            // Nothing to escape, as in nearly every node's name (UTF-8 as it came).
            out.push(b'"');
            out.extend_from_slice(name);
            out.push(b'"');
        } else {
            let name = String::from_utf8_lossy(name);
            drop(sluice_engine::json::to_template(&mut *out, &name, true));
        }
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(snap.status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"inputs\":{},\"output\":null,\"error\":null,\"start_time\":");
        time(out, &snap.start_time);
        out.extend_from_slice(b",\"end_time\":");
        time(out, &snap.end_time);
        out.extend_from_slice(b",\"index\":");
        int(out, n as u64);
        out.extend_from_slice(b",\"system_metrics\":{");
        let t = &snap.tokens;
        let mut first = true;
        let mut key = |out: &mut Vec<u8>, name: &[u8]| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\":");
        };
        for (name, v) in [
            (&b"prompt_tokens"[..], t.prompt_tokens),
            (b"completion_tokens", t.completion_tokens),
            (b"total_tokens", t.total_tokens),
            (b"cached_tokens", t.cached_tokens),
            (b"time_to_first_token_ms", snap.time_to_first_token_ms),
            (b"llm_duration_ms", snap.llm_duration_ms),
        ] {
            if let Some(v) = v {
                key(out, name);
                int(out, v);
            }
        }
        if let Some(f) = snap.completion_tokens_per_s {
            key(out, b"completion_tokens_per_s");
            // A whole number as an integer, as the record's own serialiser writes it.
            match sluice_engine::store::record::as_whole(f) {
                Some(i) => drop(CompactFormatter.write_i64(out, i)),
                None => drop(CompactFormatter.write_f64(out, f)),
            }
        }
        if let Some(f) = snap.duration {
            key(out, b"duration");
            drop(CompactFormatter.write_f64(out, f));
        }
        out.extend_from_slice(b"}}");
    }
    out.extend_from_slice(b"],\"start_time\":");
    time(out, &d.start_time);
    out.extend_from_slice(b",\"end_time\":");
    time(out, &d.end_time);
    out.extend_from_slice(b",\"aggregation_inputs\":{}}\n");
    // As the records serialised in place are: registered secrets masked throughout.
    if let std::borrow::Cow::Owned(masked) =
        sluice_engine::store::details::redact_bytes(&out[start..])
    {
        out.truncate(start);
        out.extend_from_slice(&masked);
    }
}

/// Serialises `line` onto the end of `text` with the payloads `payloads` keeps, its inputs and
/// outputs with their images as `images` made them (or as they are); `text` is left as it was on an
/// error.
fn encode(
    text: &mut Vec<u8>,
    line: &LineResult,
    payloads: LogPayloads,
    images: Option<(&Path, sluice_engine::image::MessageFormat)>,
) -> Result<Layout, StoreError> {
    let start = text.len();
    let layout = encode_parts(text, start, line, payloads, images);
    if layout.is_err() {
        text.truncate(start);
    }
    layout
}

fn encode_parts(
    text: &mut Vec<u8>,
    start: usize,
    line: &LineResult,
    payloads: LogPayloads,
    images: Option<(&Path, sluice_engine::image::MessageFormat)>,
) -> Result<Layout, StoreError> {
    let bad = |e: serde_json::Error| {
        StoreError::io(
            Path::new(sluice_engine::store::DETAILS),
            std::io::Error::other(e),
        )
    };
    let record = LineRecordRef::new(line);
    let record = match payloads {
        LogPayloads::Nodes => record,
        LogPayloads::Line => record.without_node_payloads(),
        LogPayloads::Off => record.without_payloads(),
    };
    sluice_engine::json::to_template(&mut *text, &record, true).map_err(bad)?;
    text.push(b'\n');
    if let std::borrow::Cow::Owned(masked) =
        sluice_engine::store::details::redact_bytes(&text[start..])
    {
        text.truncate(start);
        text.extend_from_slice(&masked);
    }
    let details = text.len() - start;
    fn with_images<'m>(
        map: &'m Map,
        images: Option<(&Path, sluice_engine::image::MessageFormat)>,
    ) -> Result<std::borrow::Cow<'m, Map>, StoreError> {
        match images {
            Some((dir, format)) => with_image_files(map, dir, format),
            None => Ok(std::borrow::Cow::Borrowed(map)),
        }
    }
    numbered(text, &*with_images(record.inputs, images)?);
    let inputs = text.len() - start - details;
    let completed = line.status == Status::Completed;
    if completed {
        numbered(text, &*with_images(record.output, images)?);
    }
    let outputs = text.len() - start - details - inputs;
    let tokens = node_keys(text, line);
    Ok(Layout {
        details,
        inputs,
        outputs,
        keys: text.len() - start - details - inputs - outputs,
        completed,
        tokens,
    })
}

/// Appends each node run's `<node>.<status>` key, after its length in four bytes; returns the
/// line's tokens.
fn node_keys(text: &mut Vec<u8>, line: &LineResult) -> TokenCounts {
    let mut tokens = TokenCounts::default();
    for run in &line.node_runs {
        let at = text.len();
        text.extend_from_slice(&[0; 4]);
        text.extend_from_slice(run.node.as_bytes());
        text.push(b'.');
        text.extend(run.status.as_str().bytes().map(|b| b.to_ascii_lowercase()));
        let len = u32::try_from(text.len() - at - 4).unwrap_or(u32::MAX);
        text[at..at + 4].copy_from_slice(&len.to_le_bytes());
        tokens.add(&run.system_metrics.tokens);
    }
    tokens
}

/// The buffers a request thread lays its lines out in, kept for its next lines.
struct Scratch {
    text: Vec<u8>,
    nodes: Vec<NodeSnap>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch {
            text: Vec::new(),
            nodes: Vec::new(),
        })
    };
}

/// The traffic log of one served flow.
#[derive(Debug)]
pub(crate) struct TrafficLog {
    root: PathBuf,
    queue: std::sync::Arc<Queue>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Sampling: the share of a line owed to the log so far.
    owed: Mutex<f64>,
    options: TrafficOptions,
}

/// The records handed to the writer and not yet taken.
#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    entries: Vec<Entry>,
    /// The text of the [`Entry::Encoded`] and [`Entry::Deferred`] lines, one after another.
    text: Vec<u8>,
    /// The node runs of the [`Entry::Deferred`] lines, one after another.
    nodes: Vec<NodeSnap>,
    /// No more records are taken; the writer writes what is left and stops.
    closed: bool,
    /// The writer's thread, to wake when the queue fills up or closes.
    writer: Option<std::thread::Thread>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `entry`, with `text` its text (empty but for an [`Entry::Encoded`] or
    /// [`Entry::Deferred`]) and `nodes` its node runs (empty but for an [`Entry::Deferred`]); false
    /// if the queue is full or closed.
    fn push(&self, entry: Entry, text: &[u8], nodes: &[NodeSnap]) -> bool {
        let bytes = |text: usize, nodes: usize| text + nodes * std::mem::size_of::<NodeSnap>();
        let mut p = self.lock();
        let before = bytes(p.text.len(), p.nodes.len());
        let room = before == 0 || before + bytes(text.len(), nodes.len()) <= QUEUE_BYTES;
        if p.closed || p.entries.len() >= QUEUE || !room {
            return false;
        }
        p.text.extend_from_slice(text);
        p.nodes.extend_from_slice(nodes);
        p.entries.push(entry);
        let after = bytes(p.text.len(), p.nodes.len());
        let full = p.entries.len() == WAKE_AT || (before < WAKE_AT_BYTES && after >= WAKE_AT_BYTES);
        if full && let Some(w) = &p.writer {
            w.unpark();
        }
        true
    }

    /// Everything queued, swapped with `taken`'s buffers (empty, their room kept for the next
    /// records), and whether the queue is closed; waits up to [`WRITE_INTERVAL`] while it is empty
    /// and open.
    fn take(&self, taken: &mut Taken) -> bool {
        let idle = {
            let p = self.lock();
            p.entries.is_empty() && !p.closed
        };
        if idle {
            std::thread::park_timeout(WRITE_INTERVAL);
        }
        let mut p = self.lock();
        std::mem::swap(&mut taken.entries, &mut p.entries);
        std::mem::swap(&mut taken.text, &mut p.text);
        std::mem::swap(&mut taken.nodes, &mut p.nodes);
        p.closed
    }

    fn close(&self) {
        let mut p = self.lock();
        p.closed = true;
        if let Some(w) = &p.writer {
            w.unpark();
        }
    }
}

/// The writer's side of the queue's buffers.
#[derive(Default)]
struct Taken {
    entries: Vec<Entry>,
    text: Vec<u8>,
    nodes: Vec<NodeSnap>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entry::Encoded(_) => "Encoded",
            Entry::Deferred(_) => "Deferred",
            Entry::Line(_) => "Line",
            Entry::Feedback(_) => "Feedback",
        })
    }
}

impl TrafficLog {
    /// Starts the writer for `flow_name`'s log under `home/serve/`.
    pub(crate) fn start(
        home: &Path,
        flow_name: &str,
        flow_dir: &Path,
        node_variant: indexmap::IndexMap<String, String>,
        options: TrafficOptions,
        dropped: prometheus::IntCounter,
    ) -> Result<TrafficLog, TrafficError> {
        let root = home.join("serve").join(RunName::sanitize(flow_name));
        std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        let queue = std::sync::Arc::new(Queue::default());
        let syncer = std::sync::Arc::new(Syncer::default());
        let syncing = syncer.clone();
        sluice_engine::spawn::thread("traffic-sync", move || syncing.run())
            .map_err(TrafficError::Thread)?;
        let writer = Writer {
            syncer,
            store: RunStore::new(&root),
            root: root.clone(),
            flow_name: flow_name.to_owned(),
            flow_dir: flow_dir.to_owned(),
            node_variant,
            options: options.clone(),
            segment: None,
            dropped,
        };
        let taken = queue.clone();
        let handle = sluice_engine::spawn::thread("traffic-log", move || writer.run(&taken))
            .map_err(TrafficError::Thread)?;
        queue.lock().writer = Some(handle.thread().clone());
        Ok(TrafficLog {
            root,
            queue,
            writer: Mutex::new(Some(handle)),
            owed: Mutex::new(0.0),
            options,
        })
    }

    /// The folder of the log (`$SLUICE_HOME/serve/<flow>`).
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this line is one of the sample to log.
    fn sampled(&self) -> bool {
        // Every line, or none: no lock on the request's path.
        if self.options.sample >= 1.0 {
            return true;
        }
        if self.options.sample <= 0.0 {
            return false;
        }
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        *owed += self.options.sample;
        if *owed >= 1.0 - 1e-9 {
            *owed -= 1.0;
            true
        } else {
            false
        }
    }

    /// Logs a served line if it is in the sample; returns false when it had to be dropped.
    pub(crate) fn line(&self, line: LineResult) -> bool {
        if !self.sampled() {
            return true;
        }
        if has_images(&line.inputs) || has_images(&line.output) {
            return self.queue.push(Entry::Line(Box::new(line)), &[], &[]);
        }
        SCRATCH.with_borrow_mut(|Scratch { text, nodes }| {
            text.clear();
            nodes.clear();
            let payloads = self.options.payloads;
            let sent = if let Some(d) = defer(text, nodes, &line, payloads) {
                self.queue.push(Entry::Deferred(d), text, nodes)
            } else {
                match encode(text, &line, payloads, None) {
                    Ok(layout) => self.queue.push(Entry::Encoded(layout), text, &[]),
                    Err(e) => {
                        tracing::warn!("the traffic log lost a record: {e}");
                        false
                    }
                }
            };
            if text.capacity() > SCRATCH_BYTES {
                *text = Vec::new();
            }
            if nodes.capacity() * std::mem::size_of::<NodeSnap>() > SCRATCH_BYTES {
                *nodes = Vec::new();
            }
            sent
        })
    }

    /// Logs a feedback body with the trace headers it came with.
    pub(crate) fn feedback(&self, record: Json) -> bool {
        self.queue.push(Entry::Feedback(record), &[], &[])
    }

    /// Writes what is queued, closes the open segment and stops the writer.
    pub(crate) fn close(&self) {
        self.queue.close();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// Syncs the open segment's files to disk every [`SYNC_INTERVAL`](sluice_engine::store::details::SYNC_INTERVAL)
/// on a thread of its own: a sync can take a long while on a busy disk, and the writer blocked in
/// one would let the queue fill up and lines be dropped.
///
/// Once synced, a file's whole pages leave the OS's page cache: the log is written once and read
/// rarely, so caching it would only crowd out what is read (the model's weights, the flow's
/// files), and the pages it gives back are the ones its next writes take. Writing into pages the
/// OS has to find afresh costs many times the copy itself: on a virtual machine each is a fault to
/// the host (a 1 GB stream of writes: 8 µs a kilobyte against 0.3 µs into recycled pages).
#[derive(Default)]
struct Syncer {
    files: Mutex<Synced>,
}

/// What the syncing thread is handed.
#[derive(Default)]
struct Synced {
    /// The open segment's files (other handles on them).
    files: Vec<File>,
    /// Counts the sets of files, so that the syncing thread knows a new segment's.
    generation: u64,
    /// The log is closing.
    closing: bool,
}

impl Syncer {
    /// Syncs whatever files it is given until [`Syncer::stop`].
    fn run(&self) {
        // Where each file's pages are still cached: (generation, offsets).
        let mut cached: (u64, Vec<u64>) = (0, Vec::new());
        loop {
            std::thread::park_timeout(sluice_engine::store::details::SYNC_INTERVAL);
            let (files, generation) = {
                let f = self.lock();
                if f.closing {
                    return;
                }
                // Other handles, so that the lock is not held while syncing.
                let files = f.files.iter().map(File::try_clone).collect::<Vec<_>>();
                (files, f.generation)
            };
            if cached.0 != generation {
                cached = (generation, vec![0; files.len()]);
            }
            for (file, from) in files.into_iter().zip(cached.1.iter_mut()) {
                let synced = file.and_then(|file| {
                    let len = file.metadata()?.len();
                    file.sync_data()?;
                    Ok((file, len))
                });
                match synced {
                    Ok((file, len)) => *from = uncache(&file, *from, len),
                    Err(e) => tracing::warn!("cannot sync the traffic log: {e}"),
                }
            }
        }
    }

    /// Hands over the open segment's files; the last segment's are closed and synced, so all of
    /// their pages leave the cache.
    fn set(&self, files: Vec<File>) {
        let mut f = self.lock();
        for old in std::mem::replace(&mut f.files, files) {
            uncache_all(&old);
        }
        f.generation += 1;
    }

    fn stop(&self) {
        self.lock().closing = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Synced> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the whole pages of `file` from `from` up to `synced` (bytes on disk) from the OS's page
/// cache, and returns where the next call starts: a partly written last page stays, so that the
/// next append does not read it back from disk.
fn uncache(file: &File, from: u64, synced: u64) -> u64 {
    let page = page_size();
    let end = synced / page * page;
    if end > from && dont_need(file, from, end - from) {
        end
    } else {
        from
    }
}

/// The size of the OS's memory pages.
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(unix)]
        // SAFETY: sysconf only reads a constant of the system.
        #[allow(unsafe_code)]
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        #[cfg(not(unix))]
        let n = 4096;
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Drops every page of a closed and synced `file` from the OS's page cache.
fn uncache_all(file: &File) {
    dont_need(file, 0, 0);
}

/// Advises the OS that `len` bytes of `file` from `offset` (0: to the end) will not be read soon,
/// so that it drops their pages once they are on disk. Only advice: nothing is lost if it fails.
#[cfg(target_os = "linux")]
fn dont_need(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: the descriptor stays open while `file` is borrowed, and the call only advises.
    #[allow(unsafe_code)]
    let advised =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    advised == 0
}

/// Elsewhere the pages stay cached.
#[cfg(not(target_os = "linux"))]
fn dont_need(_: &File, _: u64, _: u64) -> bool {
    false
}

struct Writer {
    syncer: std::sync::Arc<Syncer>,
    store: RunStore,
    root: PathBuf,
    flow_name: String,
    flow_dir: PathBuf,
    node_variant: indexmap::IndexMap<String, String>,
    options: TrafficOptions,
    segment: Option<Segment>,
    dropped: prometheus::IntCounter,
}

/// The run folder lines are appended to now.
struct Segment {
    dir: PathBuf,
    /// `flow_outputs/`, where images are written.
    images: PathBuf,
    record: RunRecord,
    details: DetailsWriter,
    inputs: BufWriter<File>,
    outputs: BufWriter<File>,
    /// `flow_outputs/output.jsonl` where it cannot be a hard link to `outputs.jsonl` (which it is
    /// wherever the file system allows: the same lines, written once).
    flow_outputs: Option<BufWriter<File>>,
    next_line: usize,
    /// The size of `details.jsonl` so far.
    details_bytes: u64,
    completed: usize,
    failed: usize,
    /// Lines by `<node>.<status>` key (UTF-8 bytes: they are counted for every line).
    node_status: std::collections::BTreeMap<Vec<u8>, u64>,
    tokens: TokenCounts,
    opened: Instant,
    /// Writes the times of deferred lines' records.
    times: UtcWriter,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.syncer.stop();
    }
}

impl Writer {
    fn run(mut self, queue: &Queue) {
        // Records that arrive together are written together, and handed to the OS once they are.
        let mut taken = Taken::default();
        loop {
            let closed = queue.take(&mut taken);
            let Taken {
                entries,
                text,
                nodes,
            } = &mut taken;
            let mut rest = &text[..];
            let mut rest_nodes = &nodes[..];
            for entry in entries.drain(..) {
                let result = match entry {
                    Entry::Encoded(layout) => {
                        let (this, after) = rest.split_at(layout.len().min(rest.len()));
                        rest = after;
                        self.encoded(&layout, this)
                    }
                    Entry::Deferred(d) => {
                        let (this, after) = rest.split_at(d.layout.len().min(rest.len()));
                        rest = after;
                        let (snaps, after) = rest_nodes.split_at(d.nodes.min(rest_nodes.len()));
                        rest_nodes = after;
                        self.deferred(&d, this, snaps)
                    }
                    Entry::Line(mut line) => self.line(&mut line),
                    Entry::Feedback(record) => self.feedback(&record),
                };
                if let Err(e) = result {
                    tracing::warn!("the traffic log lost a record: {e}");
                    self.dropped.inc();
                }
            }
            text.clear();
            text.shrink_to(KEEP_BYTES);
            nodes.clear();
            nodes.shrink_to(KEEP_BYTES / std::mem::size_of::<NodeSnap>());
            entries.shrink_to(KEEP_ENTRIES);
            if let Some(s) = &mut self.segment
                && let Err(e) = s.flush()
            {
                tracing::warn!("the traffic log cannot write: {e}");
            }
            if closed && queue.lock().entries.is_empty() {
                break;
            }
        }
        if let Some(segment) = self.segment.take()
            && let Err(e) = self.close(segment)
        {
            tracing::warn!("cannot close the traffic log segment: {e}");
        }
    }

    fn open(&self) -> Result<Segment, StoreError> {
        let stem = format!(
            "{}_serve_{}",
            RunName::sanitize(&self.flow_name),
            Utc::now().format("%Y%m%d_%H%M%S_%6f")
        );
        // Two segments opened within a microsecond get different names.
        let mut attempt = 0;
        let (name, dir) = loop {
            let name = match attempt {
                0 => RunName::parse(&stem)?,
                n => RunName::parse(&format!("{stem}_{n}"))?,
            };
            match self.store.create_dir(&name) {
                Ok(dir) => break (name, dir),
                Err(StoreError::Exists { .. }) if attempt < 100 => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        let record = RunRecord {
            name: name.to_string(),
            created_on: Utc::now(),
            status: RunStatus::Running,
            display_name: name.to_string(),
            description: Some(format!(
                "traffic served by `sluice flow serve` for {}",
                self.flow_name
            )),
            tags: [("source".to_owned(), "serve".to_owned())]
                .into_iter()
                .collect(),
            properties: RunProperties {
                flow_path: self.flow_dir.clone(),
                output_path: dir.clone(),
                node_variant: self.node_variant.clone(),
                ..RunProperties::default()
            },
            flow_name: self.flow_name.clone(),
            data: None,
            output: dir.join("flow_outputs"),
            metrics: Default::default(),
            status_note: None,
            owner: Some(Owner::current()),
            archived: None,
        };
        self.store.write_record(&record)?;
        if let Ok(index) = self.store.open_index() {
            let _ = index.upsert(&record);
        }
        let open = |p: PathBuf| {
            File::create(&p)
                // Room for what queues between two wake-ups of the writer: one write a wake-up.
                .map(|f| BufWriter::with_capacity(64 * 1024, f))
                .map_err(|e| StoreError::io(&p, e))
        };
        let outputs = open(dir.join("outputs.jsonl"))?;
        let flow_outputs = dir.join("flow_outputs/output.jsonl");
        let flow_outputs = match std::fs::hard_link(dir.join("outputs.jsonl"), &flow_outputs) {
            Ok(()) => None,
            Err(_) => Some(open(flow_outputs)?),
        };
        let details = DetailsWriter::create(&dir.join(sluice_engine::store::DETAILS))?;
        let inputs = open(dir.join("inputs.jsonl"))?;
        let mut synced = vec![details.try_clone_file()?];
        for (w, name) in [
            (Some(&inputs), "inputs.jsonl"),
            (Some(&outputs), "outputs.jsonl"),
            (flow_outputs.as_ref(), "flow_outputs/output.jsonl"),
        ] {
            if let Some(w) = w {
                let path = dir.join(name);
                synced.push(
                    w.get_ref()
                        .try_clone()
                        .map_err(|e| StoreError::io(&path, e))?,
                );
            }
        }
        self.syncer.set(synced);
        Ok(Segment {
            details,
            inputs,
            outputs,
            flow_outputs,
            images: dir.join("flow_outputs"),
            dir,
            record,
            next_line: 0,
            details_bytes: 0,
            completed: 0,
            failed: 0,
            node_status: Default::default(),
            tokens: TokenCounts::default(),
            opened: Instant::now(),
            times: UtcWriter::default(),
        })
    }

    fn close(&self, mut s: Segment) -> Result<(), StoreError> {
        for (w, name) in [
            (Some(&mut s.inputs), "inputs.jsonl"),
            (Some(&mut s.outputs), "outputs.jsonl"),
            (s.flow_outputs.as_mut(), "flow_outputs/output.jsonl"),
        ] {
            let Some(w) = w else { continue };
            w.flush()
                .and_then(|()| w.get_ref().sync_data())
                .map_err(|e| StoreError::io(&s.dir.join(name), e))?;
        }
        s.details.sync()?;
        sluice_engine::store::write_synced(&s.dir.join("metrics.json"), b"{}")?;
        s.record.status = RunStatus::Completed;
        s.record.owner = None;
        s.record.properties.system_metrics = SystemMetrics {
            duration: Some(s.opened.elapsed().as_secs_f64()),
            total_lines: s.completed + s.failed,
            completed_lines: Some(s.completed),
            failed_lines: Some(s.failed),
            not_run_lines: Some(0),
            carried_over_lines: Some(0),
            node_status: s
                .node_status
                .into_iter()
                .map(|(k, n)| (String::from_utf8_lossy(&k).into_owned(), n))
                .collect(),
            tokens: s.tokens,
        };
        self.store.write_record(&s.record)?;
        if let Ok(index) = self.store.open_index() {
            let _ = index.upsert(&s.record);
        }
        Ok(())
    }

    /// The open segment, opened first if there is none. Lines are written into it where it lies:
    /// it is large (its run record, its writers), and moving it out and back cost a line as much as
    /// making a time's text.
    fn segment(&mut self) -> Result<&mut Segment, StoreError> {
        if self.segment.is_none() {
            self.segment = Some(self.open()?);
        }
        Ok(self.segment.as_mut().expect("opened above"))
    }

    /// Writes a line its request's thread serialised.
    fn encoded(&mut self, layout: &Layout, text: &[u8]) -> Result<(), StoreError> {
        self.write(layout, text, None)
    }

    /// Writes a deferred line, making its record.
    fn deferred(
        &mut self,
        d: &Deferred,
        text: &[u8],
        snaps: &[NodeSnap],
    ) -> Result<(), StoreError> {
        self.write(&d.layout, text, Some((d, snaps)))
    }

    /// Serialises and writes a line whose images go to files of the segment.
    fn line(&mut self, line: &mut LineResult) -> Result<(), StoreError> {
        let (payloads, format) = (self.options.payloads, self.options.message_format);
        let segment = self.segment()?;
        let mut text = Vec::new();
        let layout = encode(&mut text, line, payloads, Some((&segment.images, format)))?;
        self.write(&layout, &text, None)
    }

    /// Writes the line `text` (laid out as `layout` says; `deferred` for a line whose record is
    /// made here) as the open segment's next line, counts it, and closes the segment once it is
    /// full.
    fn write(
        &mut self,
        layout: &Layout,
        text: &[u8],
        deferred: Option<(&Deferred, &[NodeSnap])>,
    ) -> Result<(), StoreError> {
        let max_bytes = self.options.max_bytes;
        let segment = self.segment()?;
        let n = segment.next_line;
        segment.next_line += 1;
        let written = segment.write(layout, text, n, deferred);
        if layout.completed {
            segment.completed += 1;
        } else {
            segment.failed += 1;
        }
        // A key is allocated only the first time it is seen.
        for key in layout.node_keys(text) {
            match segment.node_status.get_mut(key) {
                Some(count) => *count += 1,
                None => {
                    segment.node_status.insert(key.to_vec(), 1);
                }
            }
        }
        segment.tokens.add(&layout.tokens);
        if segment.details_bytes >= max_bytes
            && let Some(full) = self.segment.take()
        {
            self.close(full)?;
        }
        written
    }

    fn feedback(&self, record: &Json) -> Result<(), StoreError> {
        let path = self.root.join("feedback.jsonl");
        let mut text = serde_json::to_vec(record)
            .map_err(|e| StoreError::io(&path, std::io::Error::other(e)))?;
        text.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&text))
            .map_err(|e| StoreError::io(&path, e))
    }
}

/// A map's entries but `line_number`, which [`numbered`] writes first, as a slot.
struct Unnumbered<'a>(&'a Map);

impl serde::Serialize for Unnumbered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0 {
            if k != "line_number" {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Appends `map` to `text` as a template of one line of JSON (with its newline), numbered later,
/// secrets, URL credentials and bearer tokens masked. The values are serialised straight into the
/// buffer, with no JSON tree in between; `serde_json`'s own formatter writes a non-finite float as
/// `null`.
fn numbered(text: &mut Vec<u8>, map: &Map) {
    let start = text.len();
    // `{"line_number":<slot>`, then the map's `{` made a `,` (or the map's `{}` a `}`).
    text.extend_from_slice(NUMBERED_HEAD);
    let body = text.len();
    if sluice_engine::json::to_template(&mut *text, &Unnumbered(map), false).is_err() {
        text.truncate(start);
    } else if text[body..] == *b"{}" {
        text.truncate(body);
        text.push(b'}');
    } else {
        text[body] = b',';
    }
    let written = &text[start..];
    // Most lines hold nothing to mask, told without reading them as text (nor the head, which is
    // this function's own).
    let masked =
        if sluice_engine::redact::may_mask(written.get(NUMBERED_HEAD.len()..).unwrap_or_default())
            && let Ok(line) = std::str::from_utf8(written)
            && let std::borrow::Cow::Owned(masked) = sluice_engine::redact::redact(line)
        {
            Some(masked)
        } else {
            None
        };
    if let Some(masked) = masked {
        text.truncate(start);
        text.extend_from_slice(masked.as_bytes());
    }
    text.push(b'\n');
}

impl Segment {
    /// Writes the line `text` (laid out as `layout` says; its record made from `deferred`, if
    /// given) numbered `n`.
    fn write(
        &mut self,
        layout: &Layout,
        text: &[u8],
        n: usize,
        deferred: Option<(&Deferred, &[NodeSnap])>,
    ) -> Result<(), StoreError> {
        let (details, rest) = text.split_at(layout.details.min(text.len()));
        let (inputs, rest) = rest.split_at(layout.inputs.min(rest.len()));
        let outputs = &rest[..layout.outputs.min(rest.len())];
        let record = match deferred {
            Some((d, snaps)) => self
                .details
                .push_with(|out| deferred_record(out, n, d, text, snaps, &mut self.times)),
            None => self.details.push_template(details, n)?,
        };
        self.details_bytes += record as u64;
        fill(&mut self.inputs, inputs, n, &self.dir, "inputs.jsonl")?;
        if layout.completed {
            fill(&mut self.outputs, outputs, n, &self.dir, "outputs.jsonl")?;
            if let Some(w) = &mut self.flow_outputs {
                fill(w, outputs, n, &self.dir, "flow_outputs/output.jsonl")?;
            }
        }
        Ok(())
    }

    /// Hands what the buffered files hold to the OS.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.details.flush_unsynced()?;
        for (w, name) in [
            (Some(&mut self.inputs), "inputs.jsonl"),
            (Some(&mut self.outputs), "outputs.jsonl"),
            (self.flow_outputs.as_mut(), "flow_outputs/output.jsonl"),
        ] {
            let Some(w) = w else { continue };
            w.flush()
                .map_err(|e| StoreError::io(&self.dir.join(name), e))?;
        }
        Ok(())
    }
}

fn fill(
    w: &mut BufWriter<File>,
    template: &[u8],
    n: usize,
    dir: &Path,
    name: &str,
) -> Result<(), StoreError> {
    sluice_engine::json::fill_template(template, n, w)
        .map(drop)
        .map_err(|e| StoreError::io(&dir.join(name), e))
}

/// Whether `map` holds an image (which the log writes to a file of the segment).
fn has_images(map: &Map) -> bool {
    fn has_image(v: &sluice_engine::Value) -> bool {
        match v {
            sluice_engine::Value::Opaque(o) => o.is_media(),
            sluice_engine::Value::List(items) => items.iter().any(has_image),
            sluice_engine::Value::Map(m) => m.values().any(has_image),
            _ => false,
        }
    }
    map.values().any(has_image)
}

/// `map` with its images written to files in `dir` and referred to by their absolute paths; `map`
/// itself when it holds none (most lines: nothing is copied).
fn with_image_files<'a>(
    map: &'a Map,
    dir: &Path,
    format: sluice_engine::image::MessageFormat,
) -> Result<std::borrow::Cow<'a, Map>, StoreError> {
    if !has_images(map) {
        return Ok(std::borrow::Cow::Borrowed(map));
    }
    let prefix = format!("{}/", dir.to_string_lossy());
    map.iter()
        .map(|(k, v)| {
            sluice_engine::image::persist(v, dir, &prefix, format)
                .map(|v| (k.clone(), v))
                .map_err(|e| StoreError::io(dir, e))
        })
        .collect::<Result<Map, _>>()
        .map(std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::store::NodeMetrics;
    use sluice_engine::{ErrorCode, ErrorInfo};

    fn line(status: Status) -> LineResult {
        let now = Utc::now();
        let map = |k: &str, v: &str| Map::from_iter([(k.to_owned(), Value::from(v))]);
        let run = |node: &str, status: Status, prompt_tokens: u64| NodeRunInfo {
            node: node.into(),
            status,
            inputs: map("text", "node input"),
            output: Value::from("node output"),
            error: None,
            start_time: now,
            end_time: now,
            index: None,
            system_metrics: sluice_engine::store::NodeMetrics {
                tokens: TokenCounts {
                    prompt_tokens: Some(prompt_tokens),
                    ..TokenCounts::default()
                },
                ..Default::default()
            },
            api_calls: vec![],
        };
        let failed = status == Status::Failed;
        LineResult {
            line_number: None,
            status,
            inputs: map("question", "what is \"sluice\"?"),
            output: if failed {
                Map::new()
            } else {
                map("answer", "a flow engine")
            },
            error: failed.then(|| ErrorInfo::new(ErrorCode::UserError, "Boom", "it broke")),
            node_runs: vec![
                run("render", Status::Completed, 3),
                // A name with the separator and more than one byte a character.
                run("wörds.v2", status, 4),
            ],
            aggregation_inputs: Map::new(),
            start_time: now,
            end_time: now,
        }
    }

    /// The parts of an encoded line, numbered `n`, as text.
    fn parts(layout: &Layout, text: &[u8], n: usize) -> [String; 3] {
        let mut at = 0;
        [layout.details, layout.inputs, layout.outputs].map(|len| {
            let mut out = Vec::new();
            sluice_engine::json::fill_template(&text[at..at + len], n, &mut out).unwrap();
            at += len;
            String::from_utf8(out).unwrap()
        })
    }

    #[test]
    fn a_line_is_laid_out_as_its_records_then_its_node_keys() {
        let mut text = b"left by an earlier line".to_vec();
        let start = text.len();
        let line = line(Status::Completed);
        let layout = encode(&mut text, &line, LogPayloads::Line, None).unwrap();
        assert_eq!(start + layout.len(), text.len());
        let text = &text[start..];
        let [details, inputs, outputs] = parts(&layout, text, 7);
        let record: Json = serde_json::from_str(&details).unwrap();
        assert_eq!(record["line_number"], 7);
        assert_eq!(record["inputs"]["question"], "what is \"sluice\"?");
        // Without the nodes' payloads.
        assert_eq!(record["node_runs"][0]["inputs"], serde_json::json!({}));
        assert_eq!(
            inputs,
            "{\"line_number\":7,\"question\":\"what is \\\"sluice\\\"?\"}\n"
        );
        assert_eq!(
            outputs,
            "{\"line_number\":7,\"answer\":\"a flow engine\"}\n"
        );
        assert!(layout.completed);
        assert_eq!(layout.tokens.prompt_tokens, Some(7));
        let keys: Vec<_> = layout
            .node_keys(text)
            .map(String::from_utf8_lossy)
            .collect();
        assert_eq!(keys, ["render.completed", "wörds.v2.completed"]);
        assert_eq!(NUMBERED_HEAD.last(), Some(&sluice_engine::json::SLOT));
    }

    /// `line` laid out by [`defer`], with its parts as the writer writes them numbered `n` (its
    /// record made by [`deferred_record`]), if it can be deferred.
    fn deferred(
        line: &LineResult,
        payloads: LogPayloads,
        n: usize,
    ) -> Option<(Layout, [String; 3])> {
        let (mut text, mut nodes) = (b"earlier".to_vec(), vec![]);
        let d = defer(&mut text, &mut nodes, line, payloads)?;
        assert_eq!(nodes.len(), line.node_runs.len());
        let text = &text[7..];
        assert_eq!(text.len(), d.layout.len());
        let mut record = b"before".to_vec();
        deferred_record(&mut record, n, &d, text, &nodes, &mut UtcWriter::default());
        let [_, inputs, outputs] = parts(&d.layout, text, n);
        let record = String::from_utf8(record[6..].to_vec()).unwrap();
        Some((d.layout, [record, inputs, outputs]))
    }

    #[test]
    fn a_deferred_line_is_written_as_a_line_serialised_in_place() {
        let mut line = line(Status::Completed);
        line.inputs.insert(
            "more".into(),
            Value::List(vec![
                Value::Float(0.5),
                Value::Int(-3),
                Value::Bool(true),
                Value::Null,
                Value::Map(Map::from_iter([(
                    "tab\t".to_owned(),
                    Value::from("é\u{1}"),
                )])),
            ]),
        );
        line.node_runs[0].index = Some(4);
        let m = &mut line.node_runs[0].system_metrics;
        m.completion_tokens_per_s = Some(12.5);
        m.time_to_first_token_ms = Some(80);
        m.llm_duration_ms = Some(900);
        m.tokens = TokenCounts {
            prompt_tokens: Some(7),
            completion_tokens: Some(11),
            total_tokens: Some(18),
            cached_tokens: Some(0),
        };
        m.duration = Some(1e-7);
        line.node_runs[1].status = Status::Bypassed;
        line.node_runs[1].system_metrics.duration = Some(0.25);
        line.node_runs[1].system_metrics.completion_tokens_per_s = Some(40.0);
        let mut third = line.node_runs[1].clone();
        third.node = "quo\"te\\d".into();
        third.status = Status::Failed;
        third.system_metrics = NodeMetrics::default();
        // Times at each precision the short form writes.
        third.start_time = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        third.end_time = DateTime::from_timestamp(1_700_000_000, 5_000_000).unwrap();
        line.node_runs.push(third);
        line.start_time = DateTime::from_timestamp(1_700_000_000, 5_000).unwrap();
        let mut empty = line.clone();
        empty.inputs.clear();
        empty.output.clear();
        empty.node_runs.clear();
        for (line, payloads) in [
            (&line, LogPayloads::Line),
            (&line, LogPayloads::Off),
            (&empty, LogPayloads::Line),
        ] {
            let mut text = Vec::new();
            let expected = encode(&mut text, line, payloads, None).unwrap();
            for n in [0, 12, 123_456_789] {
                let (layout, made) = deferred(line, payloads, n).expect("deferred");
                assert_eq!(made, parts(&expected, &text, n), "{payloads:?}");
                let keys =
                    |l: &Layout, t: &[u8]| l.node_keys(t).map(<[u8]>::to_vec).collect::<Vec<_>>();
                let (mut again, mut nodes) = (Vec::new(), Vec::new());
                let d = defer(&mut again, &mut nodes, line, payloads).unwrap();
                assert_eq!(keys(&d.layout, &again), keys(&expected, &text));
                assert_eq!(layout.tokens, expected.tokens);
                assert!(layout.completed);
            }
        }
    }

    #[test]
    fn lines_a_deferred_record_would_write_otherwise_are_serialised_in_place() {
        assert!(deferred(&line(Status::Failed), LogPayloads::Line, 0).is_none());
        assert!(deferred(&line(Status::Completed), LogPayloads::Nodes, 0).is_none());
        let mut nan = line(Status::Completed);
        nan.output
            .insert("score".into(), Value::List(vec![Value::Float(f64::NAN)]));
        assert!(deferred(&nan, LogPayloads::Line, 0).is_none());
        assert!(deferred(&nan, LogPayloads::Off, 0).is_some(), "not written");
        let mut numbered = line(Status::Completed);
        numbered.inputs.insert("line_number".into(), Value::Int(3));
        assert!(deferred(&numbered, LogPayloads::Line, 0).is_none());
        let mut failed_node = line(Status::Completed);
        failed_node.node_runs[1].error =
            Some(ErrorInfo::new(ErrorCode::UserError, "Boom", "it broke"));
        assert!(deferred(&failed_node, LogPayloads::Off, 0).is_none());
        let mut reported = line(Status::Completed);
        reported.node_runs[0]
            .system_metrics
            .other
            .insert("gpu".into(), serde_json::json!(1));
        assert!(deferred(&reported, LogPayloads::Line, 0).is_none());
        let mut endless = line(Status::Completed);
        endless.node_runs[0].system_metrics.duration = Some(f64::INFINITY);
        assert!(deferred(&endless, LogPayloads::Off, 0).is_none());
    }

    #[test]
    fn a_failed_line_has_no_output_records() {
        let mut text = Vec::new();
        let layout = encode(&mut text, &line(Status::Failed), LogPayloads::Off, None).unwrap();
        let [details, inputs, outputs] = parts(&layout, &text, 0);
        assert!(!layout.completed);
        assert_eq!(outputs, "");
        let record: Json = serde_json::from_str(&details).unwrap();
        assert_eq!(record["error"]["message"], "it broke");
        // No payloads: the inputs are left out of both records.
        assert_eq!(record["inputs"], serde_json::json!({}));
        assert_eq!(inputs, "{\"line_number\":0}\n");
        let keys: Vec<_> = layout
            .node_keys(&text)
            .map(String::from_utf8_lossy)
            .collect();
        assert_eq!(keys, ["render.completed", "wörds.v2.failed"]);
    }

    #[test]
    fn the_queue_refuses_lines_past_its_bytes_and_once_closed() {
        let queue = Queue::default();
        let big = vec![b'x'; QUEUE_BYTES / 2];
        let entry = |len| {
            Entry::Encoded(Layout {
                details: len,
                ..Layout::default()
            })
        };
        assert!(queue.push(entry(big.len()), &big, &[]));
        assert!(queue.push(entry(big.len()), &big, &[]));
        assert!(!queue.push(entry(1), b"x", &[]), "past QUEUE_BYTES");
        let mut taken = Taken::default();
        assert!(!queue.take(&mut taken));
        assert_eq!((taken.entries.len(), taken.text.len()), (2, QUEUE_BYTES));
        assert!(queue.push(entry(1), b"x", &[]), "room again once taken");
        taken.entries.clear();
        taken.text.clear();
        assert!(!queue.take(&mut taken));
        assert_eq!((taken.entries.len(), taken.text.len()), (1, 1));
        let huge = vec![b'x'; QUEUE_BYTES + 1];
        assert!(
            queue.push(entry(huge.len()), &huge, &[]),
            "alone, a larger line is taken"
        );
        assert!(!queue.push(entry(1), b"x", &[]));
        // A deferred line's node runs count against the bytes too.
        let mut taken = Taken::default();
        queue.take(&mut taken);
        let snap = NodeSnap::of(&line(Status::Completed).node_runs[0]);
        let many = vec![snap; QUEUE_BYTES / std::mem::size_of::<NodeSnap>()];
        assert!(queue.push(entry(1), b"x", &many));
        assert!(!queue.push(entry(1), b"x", &[snap]));
        queue.close();
        assert!(!queue.push(entry(1), b"x", &[]));
    }

    /// The bytes of `path` in the page cache, as util-linux's `fincore` counts them.
    #[cfg(target_os = "linux")]
    fn cached_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn synced_whole_pages_leave_the_page_cache_and_the_last_partial_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("details.jsonl");
        let mut file = File::create(&path).unwrap();
        let page = page_size();
        let len = 3 * page + page / 2;
        file.write_all(&vec![b'x'; len as usize]).unwrap();
        file.sync_data().unwrap();
        assert_eq!(cached_bytes(&path), 4 * page);
        // Nothing before `from`, nor past what is synced, nor a partial page.
        assert_eq!(uncache(&file, 0, page / 2), 0);
        assert_eq!(cached_bytes(&path), 4 * page);
        assert_eq!(uncache(&file, 0, len), 3 * page);
        assert_eq!(cached_bytes(&path), page);
        assert_eq!(uncache(&file, 3 * page, len), 3 * page);
        assert_eq!(cached_bytes(&path), page);
        // Appended lines go on the kept page; the file reads back whole.
        file.write_all(b"yz").unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len() as u64, len + 2);
        file.sync_data().unwrap();
        uncache_all(&file);
        assert_eq!(cached_bytes(&path), 0);
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len() as u64, len + 2);
        assert!(text.ends_with(b"xyz"));
    }
}
