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
//! A served line is serialised on the request's thread, while its data is still in that core's
//! cache, into a buffer that thread keeps for its next lines, and copied onto the end of the queue's
//! one text buffer: its records as text with slots for the line number (which only the writer knows,
//! as it opens and closes segments), then its nodes' `<node>.<status>` keys for the segment's counts.
//! The writer swaps the queue's buffers with its own, emptied ones, so that once they have grown a
//! served line costs no allocation or free on either side, and no memory made by one thread is freed
//! by another. Lines whose inputs or outputs hold images, written to files of the segment, are
//! queued whole and serialised by the writer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value as Json;
use sluice_engine::store::{
    DetailsWriter, LineRecordRef, Owner, RunProperties, RunRecord, RunStatus, StoreError,
    SystemMetrics, TokenCounts,
};
use sluice_engine::{LineResult, Map, RunName, RunStore, Status};

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

    /// The `<node>.<status>` keys of the line `text`.
    fn node_keys<'t>(&self, text: &'t [u8]) -> impl Iterator<Item = std::borrow::Cow<'t, str>> {
        let mut keys = text.get(self.len() - self.keys..).unwrap_or_default();
        std::iter::from_fn(move || {
            let (len, rest) = keys.split_first_chunk::<4>()?;
            let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
            let (key, rest) = rest.split_at(len);
            keys = rest;
            Some(String::from_utf8_lossy(key))
        })
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
    Ok(Layout {
        details,
        inputs,
        outputs,
        keys: text.len() - start - details - inputs - outputs,
        completed,
        tokens,
    })
}

thread_local! {
    /// The buffer a request thread serialises its lines into, kept for its next lines.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
    /// The text of the [`Entry::Encoded`] lines, one after another.
    text: Vec<u8>,
    /// No more records are taken; the writer writes what is left and stops.
    closed: bool,
    /// The writer's thread, to wake when the queue fills up or closes.
    writer: Option<std::thread::Thread>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `entry`, with `text` its text (empty but for an [`Entry::Encoded`]); false if the
    /// queue is full or closed.
    fn push(&self, entry: Entry, text: &[u8]) -> bool {
        let mut p = self.lock();
        let room = p.text.is_empty() || p.text.len() + text.len() <= QUEUE_BYTES;
        if p.closed || p.entries.len() >= QUEUE || !room {
            return false;
        }
        let before = p.text.len();
        p.text.extend_from_slice(text);
        p.entries.push(entry);
        let full =
            p.entries.len() == WAKE_AT || (before < WAKE_AT_BYTES && p.text.len() >= WAKE_AT_BYTES);
        if full && let Some(w) = &p.writer {
            w.unpark();
        }
        true
    }

    /// Everything queued, swapped with `entries` and `text` (empty, their room kept for the next
    /// records), and whether the queue is closed; waits up to [`WRITE_INTERVAL`] while it is empty
    /// and open.
    fn take(&self, entries: &mut Vec<Entry>, text: &mut Vec<u8>) -> bool {
        let idle = {
            let p = self.lock();
            p.entries.is_empty() && !p.closed
        };
        if idle {
            std::thread::park_timeout(WRITE_INTERVAL);
        }
        let mut p = self.lock();
        std::mem::swap(entries, &mut p.entries);
        std::mem::swap(text, &mut p.text);
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

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entry::Encoded(_) => "Encoded",
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
            return self.queue.push(Entry::Line(Box::new(line)), &[]);
        }
        SCRATCH.with_borrow_mut(|text| {
            text.clear();
            let sent = match encode(text, &line, self.options.payloads, None) {
                Ok(layout) => self.queue.push(Entry::Encoded(layout), text),
                Err(e) => {
                    tracing::warn!("the traffic log lost a record: {e}");
                    false
                }
            };
            if text.capacity() > SCRATCH_BYTES {
                *text = Vec::new();
            }
            sent
        })
    }

    /// Logs a feedback body with the trace headers it came with.
    pub(crate) fn feedback(&self, record: Json) -> bool {
        self.queue.push(Entry::Feedback(record), &[])
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
#[derive(Default)]
struct Syncer {
    /// The open segment's files (other handles on them), and whether the log is closing.
    files: Mutex<(Vec<File>, bool)>,
}

impl Syncer {
    /// Syncs whatever files it is given until [`Syncer::stop`].
    fn run(&self) {
        loop {
            std::thread::park_timeout(sluice_engine::store::details::SYNC_INTERVAL);
            let files = {
                let f = self.files.lock().unwrap_or_else(|e| e.into_inner());
                if f.1 {
                    return;
                }
                // Other handles, so that the lock is not held while syncing.
                f.0.iter()
                    .filter_map(|file| file.try_clone().ok())
                    .collect::<Vec<_>>()
            };
            for file in files {
                if let Err(e) = file.sync_data() {
                    tracing::warn!("cannot sync the traffic log: {e}");
                }
            }
        }
    }

    fn set(&self, files: Vec<File>) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).0 = files;
    }

    fn stop(&self) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
    }
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
    node_status: std::collections::BTreeMap<String, u64>,
    tokens: TokenCounts,
    opened: Instant,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.syncer.stop();
    }
}

impl Writer {
    fn run(mut self, queue: &Queue) {
        // Records that arrive together are written together, and handed to the OS once they are.
        let mut entries = Vec::new();
        let mut text = Vec::new();
        loop {
            let closed = queue.take(&mut entries, &mut text);
            let mut rest = &text[..];
            for entry in entries.drain(..) {
                let result = match entry {
                    Entry::Encoded(layout) => {
                        let (this, after) = rest.split_at(layout.len().min(rest.len()));
                        rest = after;
                        self.encoded(&layout, this)
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
            node_status: s.node_status,
            tokens: s.tokens,
        };
        self.store.write_record(&s.record)?;
        if let Ok(index) = self.store.open_index() {
            let _ = index.upsert(&s.record);
        }
        Ok(())
    }

    /// Writes a line its request's thread serialised.
    fn encoded(&mut self, layout: &Layout, text: &[u8]) -> Result<(), StoreError> {
        let segment = match self.segment.take() {
            Some(s) => s,
            None => self.open()?,
        };
        self.write(segment, layout, text)
    }

    /// Serialises and writes a line whose images go to files of the segment.
    fn line(&mut self, line: &mut LineResult) -> Result<(), StoreError> {
        let segment = match self.segment.take() {
            Some(s) => s,
            None => self.open()?,
        };
        let mut text = Vec::new();
        let layout = match encode(
            &mut text,
            line,
            self.options.payloads,
            Some((&segment.images, self.options.message_format)),
        ) {
            Ok(layout) => layout,
            Err(e) => {
                self.segment = Some(segment);
                return Err(e);
            }
        };
        self.write(segment, &layout, &text)
    }

    /// Writes the line `text` (laid out as `layout` says) as the segment's next line, counts it,
    /// and closes the segment once it is full.
    fn write(
        &mut self,
        mut segment: Segment,
        layout: &Layout,
        text: &[u8],
    ) -> Result<(), StoreError> {
        let n = segment.next_line;
        segment.next_line += 1;
        let written = segment.write(layout, text, n);
        if layout.completed {
            segment.completed += 1;
        } else {
            segment.failed += 1;
        }
        // A key is allocated only the first time it is seen.
        for key in layout.node_keys(text) {
            match segment.node_status.get_mut(&*key) {
                Some(count) => *count += 1,
                None => {
                    segment.node_status.insert(key.into_owned(), 1);
                }
            }
        }
        segment.tokens.add(&layout.tokens);
        if segment.details_bytes >= self.options.max_bytes {
            self.close(segment)?;
        } else {
            self.segment = Some(segment);
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

/// `{"line_number": <slot>, ...map}`, as a batch run writes `inputs.jsonl` and `outputs.jsonl`.
struct Numbered<'a>(&'a Map);

/// A line number's slot in a template.
struct Slot;

impl serde::Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        sluice_engine::json::serialize_line_number(&0, s)
    }
}

impl serde::Serialize for Numbered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("line_number", &Slot)?;
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
    if sluice_engine::json::to_template(&mut *text, &Numbered(map), false).is_err() {
        text.truncate(start);
    }
    let masked = match std::str::from_utf8(&text[start..]) {
        Ok(line) => match sluice_engine::redact::redact(line) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(masked) => Some(masked),
        },
        Err(_) => None,
    };
    if let Some(masked) = masked {
        text.truncate(start);
        text.extend_from_slice(masked.as_bytes());
    }
    text.push(b'\n');
}

impl Segment {
    /// Writes the line `text` (laid out as `layout` says) numbered `n`.
    fn write(&mut self, layout: &Layout, text: &[u8], n: usize) -> Result<(), StoreError> {
        let (details, rest) = text.split_at(layout.details.min(text.len()));
        let (inputs, rest) = rest.split_at(layout.inputs.min(rest.len()));
        let outputs = &rest[..layout.outputs.min(rest.len())];
        self.details_bytes += self.details.push_template(details, n)? as u64;
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
    use sluice_engine::exec::NodeRunInfo;
    use sluice_engine::{ErrorCode, ErrorInfo, Value};

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
        let keys: Vec<_> = layout.node_keys(text).collect();
        assert_eq!(keys, ["render.completed", "wörds.v2.completed"]);
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
        let keys: Vec<_> = layout.node_keys(&text).collect();
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
        assert!(queue.push(entry(big.len()), &big));
        assert!(queue.push(entry(big.len()), &big));
        assert!(!queue.push(entry(1), b"x"), "past QUEUE_BYTES");
        let (mut entries, mut text) = (Vec::new(), Vec::new());
        assert!(!queue.take(&mut entries, &mut text));
        assert_eq!((entries.len(), text.len()), (2, QUEUE_BYTES));
        assert!(queue.push(entry(1), b"x"), "room again once taken");
        entries.clear();
        text.clear();
        assert!(!queue.take(&mut entries, &mut text));
        assert_eq!((entries.len(), text.len()), (1, 1));
        let huge = vec![b'x'; QUEUE_BYTES + 1];
        assert!(
            queue.push(entry(huge.len()), &huge),
            "alone, a larger line is taken"
        );
        assert!(!queue.push(entry(1), b"x"));
        queue.close();
        assert!(!queue.push(entry(1), b"x"));
    }
}
