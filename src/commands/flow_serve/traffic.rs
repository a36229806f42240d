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
//! cache, and freed there: the writer gets the line's records as text with slots for the line
//! number (which only the writer knows, as it opens and closes segments) and a summary for the
//! segment's counts. Lines whose inputs or outputs hold images, written to files of the segment, are
//! serialised by the writer. The writer hands the records it has written back through the queue,
//! and each new record sent takes up to two of them back, so that memory is freed by the threads
//! that made it; their text buffers are kept for those threads' next records.

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
const QUEUE: usize = 4096;

/// The writer wakes up at once when this many records wait.
const WAKE_AT: usize = QUEUE / 4;

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
    /// A line serialised by its request's thread.
    Encoded(Box<Encoded>),
    /// A line the writer serialises (its images go to files of the segment).
    Line(Box<LineResult>),
    Feedback(Json),
}

/// A served line as the writer writes it: its records as templates (see
/// [`sluice_engine::json::to_template`]), secrets masked, each with its newline, and what the
/// segment's counts need.
struct Encoded {
    /// `details.jsonl`'s record, then `inputs.jsonl`'s line, then (for a completed line) the line of
    /// `outputs.jsonl` and `flow_outputs/output.jsonl`.
    text: Vec<u8>,
    details_end: usize,
    inputs_end: usize,
    completed: bool,
    /// Each node's name and status.
    nodes: Vec<(String, Status)>,
    tokens: TokenCounts,
}

impl Encoded {
    /// Serialises `line` with the payloads `payloads` keeps, its inputs and outputs with their
    /// images as `images` made them (or as they are).
    fn new(
        line: &LineResult,
        payloads: LogPayloads,
        images: Option<(&Path, sluice_engine::image::MessageFormat)>,
    ) -> Result<Encoded, StoreError> {
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
        let mut text = spare::take();
        sluice_engine::json::to_template(&mut text, &record, true).map_err(bad)?;
        text.push(b'\n');
        if let std::borrow::Cow::Owned(masked) = sluice_engine::store::details::redact_bytes(&text)
        {
            text = masked;
        }
        let details_end = text.len();
        fn with_images<'m>(
            map: &'m Map,
            images: Option<(&Path, sluice_engine::image::MessageFormat)>,
        ) -> Result<std::borrow::Cow<'m, Map>, StoreError> {
            match images {
                Some((dir, format)) => with_image_files(map, dir, format),
                None => Ok(std::borrow::Cow::Borrowed(map)),
            }
        }
        numbered(&mut text, &*with_images(record.inputs, images)?);
        let inputs_end = text.len();
        let completed = line.status == Status::Completed;
        if completed {
            numbered(&mut text, &*with_images(record.output, images)?);
        }
        let mut tokens = TokenCounts::default();
        for run in &line.node_runs {
            tokens.add(&run.system_metrics.tokens);
        }
        Ok(Encoded {
            text,
            details_end,
            inputs_end,
            completed,
            nodes: Vec::new(),
            tokens,
        })
    }
}

/// Text buffers of written records, kept by each request thread for its next records: a served
/// line's record then costs no allocation (and a buffer of this size, past glibc's small sizes, costs
/// more than most).
mod spare {
    use std::cell::RefCell;

    /// Buffers kept a thread.
    const KEPT: usize = 4;
    /// A buffer larger than this (a record with big payloads) is freed rather than kept.
    const LARGEST: usize = 64 * 1024;
    /// A new buffer's size: a small flow's record fits.
    const FIRST: usize = 2048;

    thread_local! {
        static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer: a kept one, or a new one.
    pub(super) fn take() -> Vec<u8> {
        BUFFERS
            .with_borrow_mut(|b| b.pop())
            .unwrap_or_else(|| Vec::with_capacity(FIRST))
    }

    /// Keeps `buffer` for this thread's next record if it is not too large and the thread keeps
    /// fewer than [`KEPT`]; frees it otherwise.
    pub(super) fn keep(mut buffer: Vec<u8>) {
        if buffer.capacity() > LARGEST {
            return;
        }
        buffer.clear();
        BUFFERS.with_borrow_mut(|b| {
            if b.len() < KEPT {
                b.push(buffer);
            }
        });
    }
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
    /// No more records are taken; the writer writes what is left and stops.
    closed: bool,
    /// The writer's thread, to wake when the queue fills up or closes.
    writer: Option<std::thread::Thread>,
    /// Records written, to be dropped by the threads that send new ones.
    spent: Vec<Entry>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `entry`; false if the queue is full or closed. Takes back up to two written records,
    /// whose text buffers are kept for this thread's next records and the rest dropped here, after
    /// the lock is released.
    fn push(&self, entry: Entry) -> bool {
        let (queued, spent) = {
            let mut p = self.lock();
            let spent = [p.spent.pop(), p.spent.pop()];
            if p.closed || p.entries.len() >= QUEUE {
                (false, spent)
            } else {
                p.entries.push(entry);
                if p.entries.len() == WAKE_AT
                    && let Some(w) = &p.writer
                {
                    w.unpark();
                }
                (true, spent)
            }
        };
        for entry in spent.into_iter().flatten() {
            if let Entry::Encoded(encoded) = entry {
                spare::keep(encoded.text);
            }
        }
        queued
    }

    /// Hands written records back, for the senders to drop.
    fn give_back(&self, written: &mut Vec<Entry>) {
        if written.is_empty() {
            return;
        }
        let mut p = self.lock();
        if p.closed {
            // No sender is left to take them.
            drop(p);
            written.clear();
        } else {
            p.spent.append(written);
        }
    }

    /// Everything queued, and whether the queue is closed; waits up to [`WRITE_INTERVAL`] while it is
    /// empty and open.
    fn take(&self, into: &mut Vec<Entry>) -> bool {
        let idle = {
            let p = self.lock();
            p.entries.is_empty() && !p.closed
        };
        if idle {
            std::thread::park_timeout(WRITE_INTERVAL);
        }
        let mut p = self.lock();
        std::mem::swap(into, &mut p.entries);
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

    fn send(&self, entry: Entry) -> bool {
        self.queue.push(entry)
    }

    /// Logs a served line if it is in the sample; returns false when it had to be dropped.
    pub(crate) fn line(&self, mut line: LineResult) -> bool {
        if !self.sampled() {
            return true;
        }
        if has_images(&line.inputs) || has_images(&line.output) {
            return self.send(Entry::Line(Box::new(line)));
        }
        match Encoded::new(&line, self.options.payloads, None) {
            Ok(mut encoded) => {
                encoded.nodes = line
                    .node_runs
                    .iter_mut()
                    .map(|run| (std::mem::take(&mut run.node), run.status))
                    .collect();
                self.send(Entry::Encoded(Box::new(encoded)))
            }
            Err(e) => {
                tracing::warn!("the traffic log lost a record: {e}");
                false
            }
        }
    }

    /// Logs a feedback body with the trace headers it came with.
    pub(crate) fn feedback(&self, record: Json) -> bool {
        self.send(Entry::Feedback(record))
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
    /// A key of `node_status` being made.
    status_key: String,
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
        let mut batch = Vec::new();
        loop {
            let closed = queue.take(&mut batch);
            for entry in &mut batch {
                self.handle(entry);
            }
            queue.give_back(&mut batch);
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

    fn handle(&mut self, entry: &mut Entry) {
        let result = match entry {
            Entry::Encoded(encoded) => self.encoded(encoded),
            Entry::Line(line) => self.line(line),
            Entry::Feedback(record) => self.feedback(record),
        };
        if let Err(e) = result {
            tracing::warn!("the traffic log lost a record: {e}");
            self.dropped.inc();
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
            status_key: String::new(),
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
    fn encoded(&mut self, encoded: &Encoded) -> Result<(), StoreError> {
        let segment = match self.segment.take() {
            Some(s) => s,
            None => self.open()?,
        };
        self.write(segment, encoded)
    }

    /// Serialises and writes a line whose images go to files of the segment.
    fn line(&mut self, line: &mut LineResult) -> Result<(), StoreError> {
        let segment = match self.segment.take() {
            Some(s) => s,
            None => self.open()?,
        };
        let mut encoded = match Encoded::new(
            line,
            self.options.payloads,
            Some((&segment.images, self.options.message_format)),
        ) {
            Ok(e) => e,
            Err(e) => {
                self.segment = Some(segment);
                return Err(e);
            }
        };
        encoded.nodes = line
            .node_runs
            .iter()
            .map(|run| (run.node.clone(), run.status))
            .collect();
        self.write(segment, &encoded)
    }

    /// Writes `e` as the segment's next line, counts it, and closes the segment once it is full.
    fn write(&mut self, mut segment: Segment, e: &Encoded) -> Result<(), StoreError> {
        let n = segment.next_line;
        segment.next_line += 1;
        let written = segment.write(e, n);
        if e.completed {
            segment.completed += 1;
        } else {
            segment.failed += 1;
        }
        for (node, status) in &e.nodes {
            // `<node>.<status>`, made in a buffer kept between lines: a key is allocated only the
            // first time it is seen.
            let key = &mut segment.status_key;
            key.clear();
            key.push_str(node);
            key.push('.');
            key.extend(status.as_str().chars().map(|c| c.to_ascii_lowercase()));
            match segment.node_status.get_mut(key.as_str()) {
                Some(count) => *count += 1,
                None => {
                    segment.node_status.insert(key.clone(), 1);
                }
            }
        }
        segment.tokens.add(&e.tokens);
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
    /// Writes `e` numbered `n`.
    fn write(&mut self, e: &Encoded, n: usize) -> Result<(), StoreError> {
        let (details, rest) = e.text.split_at(e.details_end);
        let (inputs, outputs) = rest.split_at(e.inputs_end - e.details_end);
        self.details_bytes += self.details.push_template(details, n)? as u64;
        fill(&mut self.inputs, inputs, n, &self.dir, "inputs.jsonl")?;
        if e.completed {
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
