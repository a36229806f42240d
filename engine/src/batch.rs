//! Batch runs: a dataset through a flow, lines running concurrently, then aggregation once.
//!
//! [`load_data`] reads jsonl/json/csv/tsv/parquet files (or a folder of them); [`map_inputs`] applies promptflow's
//! column mapping (§5.2) and reports every unresolvable reference at once, before a line runs;
//! [`run_batch`] runs the lines as tasks, at most `max_concurrency` at a time, handing each result to a
//! callback as it finishes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use indexmap::IndexMap;

use crate::exec::{AggregationResult, LineOptions, LineResult, Status};
use crate::plan::Flow;
use crate::spawn::SpawnedTask;
use crate::value::{Map, Value};

/// A batch-level problem: nothing ran.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("cannot read data {path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("Couldn't find any inputs data at {0}")]
    EmptyData(PathBuf),
    #[error("Couldn't find these mapping relations: {}. Columns available: {}", .missing.join(", "), .available.join(", "))]
    Mapping {
        missing: Vec<String>,
        available: Vec<String>,
    },
    #[error("The input for flow cannot be empty in batch mode: add inputs to the flow")]
    NoFlowInputs,
}

/// The extensions a data folder is read for; anything else in it (backups such as `data.jsonl~` or
/// `.orig`, notes, hidden files) is skipped.
pub const DATA_EXTENSIONS: [&str; 5] = ["jsonl", "json", "csv", "tsv", "parquet"];

/// Reads rows from a data file or every data file in a folder (recursively, sorted by path).
pub fn load_data(path: &Path) -> Result<Vec<Map>, BatchError> {
    let rows = stream_data(path)?.collect::<Result<Vec<Map>, BatchError>>()?;
    if rows.is_empty() {
        return Err(BatchError::EmptyData(path.to_path_buf()));
    }
    Ok(rows)
}

/// One row at a time from a data file or folder: JSON Lines and CSV/TSV are read as they are consumed;
/// `.json` and `.parquet` files are read whole.
pub type RowStream = Box<dyn Iterator<Item = Result<Map, BatchError>> + Send>;

/// Streams the rows of `path` (a file or a folder of them) in the order [`load_data`] gives.
pub fn stream_data(path: &Path) -> Result<RowStream, BatchError> {
    let files = data_files(path)?;
    let mut streams: Vec<RowStream> = Vec::new();
    for file in files {
        // Image paths in data are relative to the data file (§5.1).
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let rows = reader_for(&file).rows(&file)?.map(move |row| {
            row.map(|mut row| {
                for v in row.values_mut() {
                    crate::image::resolve_paths(v, &dir);
                }
                row
            })
        });
        streams.push(Box::new(rows));
    }
    Ok(Box::new(streams.into_iter().flatten()))
}

/// The files `path` names: itself, or the data files of a folder by extension ([`DATA_EXTENSIONS`]),
/// sorted by path. Symlinked folders are not entered (no loops); what a folder holds besides data is
/// named in a warning, so no file is taken or left out silently.
fn data_files(path: &Path) -> Result<Vec<PathBuf>, BatchError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(BatchError::Data {
                path: path.to_path_buf(),
                message: "no such file or folder".into(),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = vec![];
    let mut skipped = vec![];
    collect_files(path, &mut files, &mut skipped);
    files.sort();
    skipped.sort();
    let shown = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.strip_prefix(path).unwrap_or(p).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !skipped.is_empty() {
        tracing::warn!(
            "{}: skipping {} (not .{}); reading {}",
            path.display(),
            shown(&skipped),
            DATA_EXTENSIONS.join(" ."),
            shown(&files)
        );
    } else {
        tracing::info!("{}: reading {}", path.display(), shown(&files));
    }
    Ok(files)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, skipped: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(ty) = entry.file_type() else { continue };
        if ty.is_dir() {
            collect_files(&p, out, skipped);
        } else if ty.is_symlink() && p.is_dir() {
            skipped.push(p);
        } else if DATA_EXTENSIONS.contains(&extension(&p).as_str()) && p.is_file() {
            out.push(p);
        } else {
            skipped.push(p);
        }
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A reader of one data file format.
trait RowReader: Sync {
    /// The rows of `path`, in order; an error names the file and, where there is one, the line.
    fn rows(&self, path: &Path) -> Result<RowStream, BatchError>;
}

/// The reader for a file by its extension; a file given by name with another extension is read as
/// JSON Lines.
fn reader_for(path: &Path) -> &'static dyn RowReader {
    match extension(path).as_str() {
        "json" => &JsonArray,
        "csv" => &Delimited(b','),
        "tsv" => &Delimited(b'\t'),
        "parquet" => &Parquet,
        _ => &JsonLines,
    }
}

fn data_error(path: &Path) -> impl Fn(String) -> BatchError + Send + Clone + 'static {
    let path = path.to_path_buf();
    move |message| BatchError::Data {
        path: path.clone(),
        message,
    }
}

/// JSON Lines, read a line at a time. A UTF-8 byte-order mark at the start of the file is skipped (as
/// pandas and promptflow do); bytes that are not UTF-8, or a byte-order mark further on, are an error
/// with the line number.
struct JsonLines;

impl RowReader for JsonLines {
    fn rows(&self, path: &Path) -> Result<RowStream, BatchError> {
        use std::io::BufRead;
        let err = data_error(path);
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut number = 0usize;
        let mut buf = Vec::new();
        Ok(Box::new(std::iter::from_fn(move || {
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(Err(err(format!("line {}: {e}", number + 1)))),
                }
                number += 1;
                let mut bytes = buf.as_slice();
                if number == 1 {
                    bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                }
                let text = match std::str::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(e) => {
                        return Some(Err(err(format!(
                            "line {number}: not UTF-8 (byte {} of the line); save the file as UTF-8",
                            e.valid_up_to() + 1
                        ))));
                    }
                };
                if text.trim().is_empty() {
                    continue;
                }
                if text.starts_with('\u{feff}') {
                    return Some(Err(err(format!(
                        "line {number}: starts with a byte-order mark (U+FEFF), which only the start of a file may have"
                    ))));
                }
                return Some(
                    crate::json::from_str::<Value>(text)
                        .map_err(|e| format!("line {number}: {e}"))
                        .and_then(|v| row(v).map_err(|m| format!("line {number}: {m}")))
                        .map_err(&err),
                );
            }
        })))
    }
}

/// A `.json` file: an array of objects, or one object. Read whole.
struct JsonArray;

impl RowReader for JsonArray {
    fn rows(&self, path: &Path) -> Result<RowStream, BatchError> {
        let err = data_error(path);
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| err(format!("not UTF-8: {e}")))?;
        let v: Value = crate::json::from_str(text).map_err(|e| err(e.to_string()))?;
        let rows: Vec<Result<Map, BatchError>> = match v {
            Value::List(items) => items
                .into_iter()
                .map(|i| row(i).map_err(|e| err(e.to_string())))
                .collect(),
            other => vec![row(other).map_err(|e| err(e.to_string()))],
        };
        Ok(Box::new(rows.into_iter()))
    }
}

/// CSV or TSV with a header row, read a record at a time (the csv crate skips a leading BOM).
struct Delimited(u8);

impl RowReader for Delimited {
    fn rows(&self, path: &Path) -> Result<RowStream, BatchError> {
        let err = data_error(path);
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(self.0)
            .from_path(path)
            .map_err(|e| err(e.to_string()))?;
        let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
        Ok(Box::new(reader.into_records().map(move |record| {
            let record = record.map_err(|e| err(e.to_string()))?;
            Ok(headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), Value::from(v)))
                .collect())
        })))
    }
}

/// Parquet, read whole, row by row (snappy, gzip and lz4 pages; zstd and brotli are not built in).
struct Parquet;

impl RowReader for Parquet {
    fn rows(&self, path: &Path) -> Result<RowStream, BatchError> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let err = data_error(path);
        type Failure = Box<dyn std::error::Error + Send + Sync>;
        let read = || -> Result<Vec<Result<Map, BatchError>>, Failure> {
            let reader = SerializedFileReader::new(std::fs::File::open(path)?)?;
            let mut out = Vec::new();
            for r in reader.get_row_iter(None)? {
                out.push(Ok(row(r?.to_json_value())?));
            }
            Ok(out)
        };
        Ok(Box::new(
            read().map_err(|e| err(e.to_string()))?.into_iter(),
        ))
    }
}

/// What one pass over a dataset finds: its row count and every column name, in first-seen order.
#[derive(Clone, Debug, Default)]
pub struct DataScan {
    pub rows: usize,
    pub columns: Vec<String>,
    /// Whether rows carry their own `line_number` (e.g. a run's outputs used as data).
    pub numbered: bool,
}

/// A row's line number: its own `line_number` column where it has one, else its position.
pub fn line_number_of(position: usize, row: &Map) -> usize {
    match row.get("line_number") {
        Some(Value::Int(n)) if *n >= 0 => *n as usize,
        _ => position,
    }
}

/// Reads every row once without keeping them, so a run can check its mapping and show progress
/// before it starts, and a bad row is reported before any line runs.
pub fn scan_data(path: &Path) -> Result<DataScan, BatchError> {
    let mut scan = DataScan::default();
    let mut seen = std::collections::HashSet::new();
    let mut last: Option<usize> = None;
    for (i, r) in stream_data(path)?.enumerate() {
        let r = r?;
        // Lines are taken in row order and written in line order: numbers must increase.
        let n = line_number_of(i, &r);
        if last.is_some_and(|l| n <= l) {
            return Err(BatchError::Data {
                path: path.to_path_buf(),
                message: format!(
                    "row {} has line_number {n}, not after the previous row's {}; line numbers must increase (remove the line_number column to number rows by position)",
                    i + 1,
                    last.unwrap_or(0)
                ),
            });
        }
        last = Some(n);
        scan.numbered |= r.contains_key("line_number");
        for k in r.keys() {
            if !seen.contains(k) {
                seen.insert(k.clone());
                scan.columns.push(k.clone());
            }
        }
        scan.rows += 1;
    }
    if scan.rows == 0 {
        return Err(BatchError::EmptyData(path.to_path_buf()));
    }
    Ok(scan)
}

fn row(v: impl Into<Value>) -> Result<Map, NotARow> {
    match v.into() {
        Value::Map(m) => Ok(m),
        other => Err(NotARow {
            found: other.type_name(),
        }),
    }
}

/// A data row that is not an object.
#[derive(Debug, thiserror::Error)]
#[error("a row must be a JSON object, found {found}")]
struct NotARow {
    found: String,
}

/// One line to run: its number in the data and its flow inputs.
#[derive(Clone, Debug)]
pub struct BatchLine {
    pub line_number: usize,
    pub inputs: Map,
}

/// A column mapping resolved against the sources' columns: turns one line's rows into flow inputs.
#[derive(Clone, Debug)]
pub struct LineMapper {
    bindings: Vec<(String, Binding)>,
}

#[derive(Clone, Debug)]
enum Binding {
    Column { source: String, column: String },
    Literal(Value),
}

impl LineMapper {
    /// Checks every reference of the effective mapping (promptflow's defaults plus `mapping`) against
    /// `columns` (by source name: `data`, `run.outputs`, `run.inputs`), reporting all that are missing.
    pub fn new(
        flow: &Flow,
        mapping: &IndexMap<String, Value>,
        columns: &IndexMap<String, Vec<String>>,
    ) -> Result<LineMapper, BatchError> {
        if flow.def.inputs.is_empty() {
            return Err(BatchError::NoFlowInputs);
        }
        let mut effective: IndexMap<String, Value> = IndexMap::new();
        for (name, def) in &flow.def.inputs {
            if def.default.is_none() {
                effective.insert(name.clone(), Value::String(format!("${{data.{name}}}")));
            }
        }
        for (k, v) in mapping {
            if k != "line_number" {
                effective.insert(k.clone(), v.clone());
            }
        }
        let names: Vec<&str> = columns.keys().map(String::as_str).collect();
        let mut missing = vec![];
        let mut bindings = vec![];
        for (k, v) in effective {
            match v.as_str().filter(|s| is_reference(s)) {
                Some(s) => match split_reference_in(s, &names) {
                    Some((source, column))
                        if columns
                            .get(&source)
                            .is_some_and(|cols| cols.contains(&column)) =>
                    {
                        bindings.push((k, Binding::Column { source, column }))
                    }
                    _ => missing.push(s.to_owned()),
                },
                None => bindings.push((k, Binding::Literal(v))),
            }
        }
        if !missing.is_empty() {
            let available = columns
                .iter()
                .flat_map(|(src, cols)| cols.iter().map(move |c| format!("${{{src}.{c}}}")))
                .collect();
            return Err(BatchError::Mapping { missing, available });
        }
        Ok(LineMapper { bindings })
    }

    /// The flow inputs of one line; a missing cell or a null counts as "not provided", so the input's
    /// default applies.
    pub fn inputs(&self, rows: &IndexMap<&str, &Map>) -> Map {
        let mut inputs = Map::new();
        for (k, b) in &self.bindings {
            let value = match b {
                Binding::Column { source, column } => rows
                    .get(source.as_str())
                    .and_then(|r| r.get(column))
                    .cloned(),
                Binding::Literal(v) => Some(v.clone()),
            };
            if let Some(value) = value.filter(|v| !v.is_null()) {
                inputs.insert(k.clone(), value);
            }
        }
        inputs
    }
}

/// `${run.outputs.answer}` → (`run.outputs`, `answer`), trying the longest matching source name.
fn split_reference_in(s: &str, sources: &[&str]) -> Option<(String, String)> {
    let inner = &s[2..s.len() - 1];
    let mut names: Vec<&&str> = sources.iter().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names
        .into_iter()
        .find_map(|name| {
            inner
                .strip_prefix(*name)
                .and_then(|r| r.strip_prefix('.'))
                .map(|col| (name.to_string(), col.to_owned()))
        })
        .or_else(|| {
            inner
                .split_once('.')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        })
}

/// Applies a column mapping to named sources (`data`, `run.outputs`, `run.inputs`), as promptflow does
/// (§5.2): inputs without defaults map implicitly to `${data.<input>}`; explicit mapping wins; rows are
/// aligned by `line_number` where a source has it, else by position; a line exists only where every
/// source has a row.
pub fn map_inputs(
    flow: &Flow,
    mapping: &IndexMap<String, Value>,
    sources: &IndexMap<String, Vec<Map>>,
) -> Result<Vec<BatchLine>, BatchError> {
    // Align the sources by line number.
    let keyed: IndexMap<&str, IndexMap<usize, &Map>> = sources
        .iter()
        .map(|(name, rows)| (name.as_str(), by_line_number(rows)))
        .collect();
    let mut numbers: Vec<usize> = match keyed.values().next() {
        Some(first) => first
            .keys()
            .copied()
            .filter(|n| keyed.values().all(|s| s.contains_key(n)))
            .collect(),
        None => vec![],
    };
    numbers.sort_unstable();
    let columns: IndexMap<String, Vec<String>> = keyed
        .iter()
        .map(|(source, rows)| {
            let mut cols: Vec<String> = vec![];
            for r in rows.values() {
                for k in r.keys() {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
            ((*source).to_owned(), cols)
        })
        .collect();
    // Every reference is checked against the columns before any line runs.
    let mapper = LineMapper::new(flow, mapping, &columns)?;
    Ok(numbers
        .into_iter()
        .map(|n| {
            let rows: IndexMap<&str, &Map> = keyed.iter().map(|(s, r)| (*s, r[&n])).collect();
            BatchLine {
                line_number: n,
                inputs: mapper.inputs(&rows),
            }
        })
        .collect())
}

/// Rows by their `line_number` column where they have one, else by position.
pub fn by_line_number(rows: &[Map]) -> IndexMap<usize, &Map> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| (line_number_of(i, r), r))
        .collect()
}

fn is_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && !s[2..s.len() - 1].contains(['{', '}'])
}

#[cfg(test)]
fn split_reference(
    s: &str,
    sources: &IndexMap<&str, IndexMap<usize, &Map>>,
) -> Option<(String, String)> {
    if !is_reference(s) {
        return None;
    }
    split_reference_in(s, &sources.keys().copied().collect::<Vec<_>>())
}

/// How to run a batch.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// Lines running at once.
    pub max_concurrency: usize,
    /// Nodes of one line running at once (promptflow uses 2 in batch).
    pub node_concurrency: usize,
    pub line_timeout: Option<Duration>,
    pub run_id: String,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_concurrency: 16,
            node_concurrency: 2,
            line_timeout: Some(Duration::from_secs(600)),
            run_id: String::new(),
        }
    }
}

/// The outcome of a batch.
#[derive(Debug)]
pub struct BatchSummary {
    pub total_lines: usize,
    pub completed_lines: usize,
    pub failed_lines: usize,
    pub aggregation: Option<AggregationResult>,
}

/// Runs the lines, at most `max_concurrency` at once, calling `on_line` with each result as it
/// finishes (in completion order), then the aggregation nodes once over the successful lines
/// (`previous` supplies the kept aggregation values of lines completed by an earlier run).
pub async fn run_batch(
    flow: Arc<Flow>,
    lines: impl IntoIterator<Item = BatchLine>,
    previous: Vec<(usize, Map)>,
    opts: &BatchOptions,
    mut on_line: impl FnMut(&LineResult),
) -> BatchSummary {
    let keep = flow.has_aggregation();
    let (mut completed, mut failed) = (previous.len(), 0);
    let mut kept: Vec<(usize, Map)> = if keep { previous } else { Vec::new() };
    run_lines(flow.clone(), lines, opts, |result| {
        if result.status == Status::Completed {
            completed += 1;
            if keep {
                kept.push((
                    result.line_number.unwrap_or(0),
                    result.aggregation_inputs.clone(),
                ));
            }
        } else {
            failed += 1;
        }
        on_line(result);
    })
    .await;
    let aggregation = if keep {
        kept.sort_by_key(|(n, _)| *n);
        let refs: Vec<&Map> = kept.iter().map(|(_, m)| m).collect();
        let opts = LineOptions {
            node_concurrency: opts.node_concurrency,
            run_id: opts.run_id.clone(),
            ..Default::default()
        };
        Some(flow.run_aggregation(&refs, &opts).await)
    } else {
        None
    };
    BatchSummary {
        total_lines: completed + failed,
        completed_lines: completed,
        failed_lines: failed,
        aggregation,
    }
}

/// How many lines may finish ahead of the earliest unfinished one before no new line starts: finished
/// lines wait in line order for the output files, so this bounds the memory they take even when one
/// line is much slower than the rest.
pub const REORDER_WINDOW: usize = 4096;

/// Runs the lines as tasks, at most `max_concurrency` at once, calling `on_line` with each result as
/// it finishes (in completion order). Lines are taken from `lines` (in increasing line order) only as
/// slots free up, and never more than [`REORDER_WINDOW`] past the earliest line still running.
pub async fn run_lines(
    flow: Arc<Flow>,
    lines: impl IntoIterator<Item = BatchLine>,
    opts: &BatchOptions,
    mut on_line: impl FnMut(&LineResult),
) {
    let mut queue = lines.into_iter();
    let mut running = FuturesUnordered::new();
    let mut in_flight: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
    // Finished lines numbered after the earliest line still running.
    let mut ahead: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
    loop {
        while running.len() < opts.max_concurrency.max(1) && ahead.len() < REORDER_WINDOW {
            let Some(line) = queue.next() else { break };
            let flow = flow.clone();
            let line_opts = LineOptions {
                line_number: Some(line.line_number),
                node_concurrency: opts.node_concurrency,
                timeout: opts.line_timeout,
                run_id: opts.run_id.clone(),
                ..Default::default()
            };
            in_flight.insert(line.line_number);
            running.push(SpawnedTask::spawn(async move {
                flow.run_line(&line.inputs, &line_opts).await
            }));
        }
        let Some(result) = running.next().await else {
            break;
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let n = result.line_number.unwrap_or(0);
        in_flight.remove(&n);
        match in_flight.first() {
            Some(&first) if n > first => {
                ahead.insert(n);
            }
            Some(&first) => ahead = ahead.split_off(&first),
            None => ahead.clear(),
        }
        on_line(&result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a small Parquet file with the crate's writer (snappy pages, as pandas writes by default).
    fn write_parquet(path: &Path) {
        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        let schema = Arc::new(
            parse_message_type(
                "message row { REQUIRED BYTE_ARRAY question (UTF8); REQUIRED INT64 n; }",
            )
            .unwrap(),
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(
                &[
                    ByteArray::from("What is 2+2?"),
                    ByteArray::from("Capital of France?"),
                ],
                None,
                None,
            )
            .unwrap();
        col.close().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(&[4, 7], None, None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
    }

    /// A fresh, empty folder for one test, which removes it when done.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn line_numbers_in_data_must_increase() {
        let dir = scratch("scan");
        let ok = dir.join("ok.jsonl");
        std::fs::write(
            &ok,
            "{\"line_number\": 0, \"a\": 1}\n{\"line_number\": 3, \"b\": 2}\n",
        )
        .unwrap();
        let scan = scan_data(&ok).unwrap();
        assert_eq!((scan.rows, scan.numbered), (2, true));
        assert_eq!(scan.columns, ["line_number", "a", "b"]);
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"line_number\": 5}\n{\"line_number\": 2}\n").unwrap();
        let err = scan_data(&bad).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("row 2 has line_number 2"), "{err}");
    }

    #[test]
    fn a_data_folder_reads_data_files_only() {
        let dir = scratch("folder");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let row = "{\"q\": 1}\n";
        for name in [
            "data.jsonl",
            "sub/more.csv",
            "data.jsonl~",
            "data.jsonl.orig",
            ".hidden.jsonl",
            "notes.txt",
        ] {
            let text = if name.ends_with(".csv") {
                "q\n2\n"
            } else {
                row
            };
            std::fs::write(dir.join(name), text).unwrap();
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(&dir, dir.join("sub/loop")).unwrap();
        let rows = load_data(&dir).unwrap();
        let scan = scan_data(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(scan.rows, 2);
        assert_eq!(rows[1]["q"], Value::String("2".into()));
    }

    #[test]
    fn jsonl_encoding_problems_name_the_line() {
        let dir = scratch("enc");
        let p = dir.join("d.jsonl");
        // A byte-order mark at the start is fine.
        std::fs::write(&p, b"\xEF\xBB\xBF{\"a\": 1}\n{\"a\": 2}\n").unwrap();
        assert_eq!(load_data(&p).unwrap().len(), 2);
        std::fs::write(&p, b"{\"a\": 1}\n{\"a\": \"caf\xE9\"}\n").unwrap();
        let err = load_data(&p).unwrap_err().to_string();
        assert!(err.contains("line 2: not UTF-8"), "{err}");
        let err = scan_data(&p).unwrap_err().to_string();
        assert!(err.contains("line 2: not UTF-8"), "{err}");
        std::fs::write(&p, b"{\"a\": 1}\n\n\xEF\xBB\xBF{\"a\": 2}\n").unwrap();
        let err = load_data(&p).unwrap_err().to_string();
        assert!(
            err.contains("line 3: starts with a byte-order mark"),
            "{err}"
        );
        let j = dir.join("d.json");
        std::fs::write(&j, b"\xEF\xBB\xBF[{\"a\": 1}]").unwrap();
        assert_eq!(load_data(&j).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parquet_rows_become_data_rows() {
        let dir = scratch("parquet");
        let path = dir.join("data.parquet");
        write_parquet(&path);
        let rows = load_data(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1]["question"],
            Value::String("Capital of France?".into())
        );
        assert_eq!(rows[0]["n"], Value::Int(4));
    }

    #[test]
    fn reference_splits_on_the_shortest_source_name() {
        let a: IndexMap<usize, &Map> = IndexMap::new();
        let mut sources: IndexMap<&str, IndexMap<usize, &Map>> = IndexMap::new();
        sources.insert("data", a.clone());
        sources.insert("run.outputs", a);
        assert_eq!(
            split_reference("${data.a.b}", &sources),
            Some(("data".into(), "a.b".into()))
        );
        assert_eq!(
            split_reference("${run.outputs.x}", &sources),
            Some(("run.outputs".into(), "x".into()))
        );
        assert_eq!(split_reference("plain", &sources), None);
    }
}
