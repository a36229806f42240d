//! Batch runs: a dataset through a flow, lines running concurrently, then aggregation once.
//!
//! [`load_data`] reads jsonl/json/csv/tsv files (or a folder of them); [`map_inputs`] applies promptflow's
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

/// Reads rows from a data file or every data file in a folder (recursively, sorted by path).
pub fn load_data(path: &Path) -> Result<Vec<Map>, BatchError> {
    let mut files = vec![];
    if path.is_dir() {
        collect_files(path, &mut files);
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut rows = vec![];
    for file in files {
        rows.extend(load_file(&file)?);
    }
    if rows.is_empty() {
        return Err(BatchError::EmptyData(path.to_path_buf()));
    }
    Ok(rows)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn load_file(path: &Path) -> Result<Vec<Map>, BatchError> {
    let err = |message: String| BatchError::Data {
        path: path.to_path_buf(),
        message,
    };
    let ext_lower = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext_lower == "parquet" {
        return load_parquet(path).map_err(err);
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "json" => {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
            match v {
                serde_json::Value::Array(items) => {
                    items.into_iter().map(|i| row(i).map_err(err)).collect()
                }
                other => Ok(vec![row(other).map_err(err)?]),
            }
        }
        "csv" | "tsv" => {
            let delimiter = if ext == "tsv" { b'\t' } else { b',' };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                .from_reader(text.as_bytes());
            let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
            let mut rows = vec![];
            for record in reader.records() {
                let record = record.map_err(|e| err(e.to_string()))?;
                rows.push(
                    headers
                        .iter()
                        .zip(record.iter())
                        .map(|(h, v)| (h.to_owned(), Value::from(v)))
                        .collect(),
                );
            }
            Ok(rows)
        }
        _ => {
            let mut rows = vec![];
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(e) if ext == "jsonl" => return Err(err(format!("line {}: {e}", i + 1))),
                    Err(_) => {
                        tracing::warn!(
                            "skipping {}: not a data file Sluice can read",
                            path.display()
                        );
                        return Ok(vec![]);
                    }
                };
                rows.push(row(v).map_err(|m| err(format!("line {}: {m}", i + 1)))?);
            }
            Ok(rows)
        }
    }
}

/// Reads a Parquet file row by row (snappy, gzip and lz4 pages; zstd and brotli are not built in).
fn load_parquet(path: &Path) -> Result<Vec<Map>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| e.to_string())?;
    let rows = reader.get_row_iter(None).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in rows {
        let r = r.map_err(|e| e.to_string())?;
        out.push(row(r.to_json_value())?);
    }
    Ok(out)
}

fn row(v: serde_json::Value) -> Result<Map, String> {
    match Value::from(v) {
        Value::Map(m) => Ok(m),
        other => Err(format!(
            "a row must be a JSON object, found {}",
            other.type_name()
        )),
    }
}

/// One line to run: its number in the data and its flow inputs.
#[derive(Clone, Debug)]
pub struct BatchLine {
    pub line_number: usize,
    pub inputs: Map,
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
    // Align the sources by line number.
    let keyed: IndexMap<&str, IndexMap<usize, &Map>> = sources
        .iter()
        .map(|(name, rows)| {
            let by_line = rows
                .iter()
                .enumerate()
                .map(|(i, r)| match r.get("line_number") {
                    Some(Value::Int(n)) if *n >= 0 => (*n as usize, r),
                    _ => (i, r),
                })
                .collect();
            (name.as_str(), by_line)
        })
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

    // Check every reference against the columns before any line runs.
    let mut missing = vec![];
    let mut available = vec![];
    for (source, rows) in &keyed {
        let mut cols: Vec<String> = vec![];
        for r in rows.values() {
            for k in r.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        available.extend(cols.iter().map(|c| format!("${{{source}.{c}}}")));
    }
    let resolved: Vec<(String, Option<(String, String)>)> = effective
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().and_then(|s| split_reference(s, &keyed)),
            )
        })
        .collect();
    for ((k, v), (_, r)) in effective.iter().zip(&resolved) {
        if let Some(s) = v.as_str().filter(|s| is_reference(s)) {
            match r {
                Some((source, col))
                    if keyed[source.as_str()]
                        .values()
                        .any(|row| row.contains_key(col)) => {}
                _ => missing.push(s.to_owned()),
            }
        }
        let _ = k;
    }
    if !missing.is_empty() {
        return Err(BatchError::Mapping { missing, available });
    }
    let lines = numbers
        .into_iter()
        .map(|n| {
            let mut inputs = Map::new();
            for ((k, v), (_, r)) in effective.iter().zip(&resolved) {
                let value = match r {
                    Some((source, col)) => keyed[source.as_str()][&n].get(col).cloned(),
                    None => Some(v.clone()),
                };
                // A missing cell or a null counts as "not provided", so the input's default applies.
                if let Some(value) = value.filter(|v| !v.is_null()) {
                    inputs.insert(k.clone(), value);
                }
            }
            BatchLine {
                line_number: n,
                inputs,
            }
        })
        .collect();
    Ok(lines)
}

fn is_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && !s[2..s.len() - 1].contains(['{', '}'])
}

/// `${run.outputs.answer}` → (`run.outputs`, `answer`), trying the shortest source name first.
fn split_reference(
    s: &str,
    sources: &IndexMap<&str, IndexMap<usize, &Map>>,
) -> Option<(String, String)> {
    if !is_reference(s) {
        return None;
    }
    let inner = &s[2..s.len() - 1];
    let mut names: Vec<&&str> = sources.keys().collect();
    names.sort_by_key(|n| n.len());
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
    lines: Vec<BatchLine>,
    previous: Vec<(usize, Map)>,
    opts: &BatchOptions,
    mut on_line: impl FnMut(&LineResult),
) -> BatchSummary {
    let total = lines.len() + previous.len();
    let mut kept: Vec<(usize, Map)> = previous;
    let (mut completed, mut failed) = (kept.len(), 0);
    let mut queue = lines.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < opts.max_concurrency.max(1) {
            let Some(line) = queue.next() else { break };
            let flow = flow.clone();
            let line_opts = LineOptions {
                line_number: Some(line.line_number),
                node_concurrency: opts.node_concurrency,
                timeout: opts.line_timeout,
                run_id: opts.run_id.clone(),
                ..Default::default()
            };
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
        if result.status == Status::Completed {
            completed += 1;
            kept.push((
                result.line_number.unwrap_or(0),
                result.aggregation_inputs.clone(),
            ));
        } else {
            failed += 1;
        }
        on_line(&result);
    }
    let aggregation = if flow.has_aggregation() {
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
        total_lines: total,
        completed_lines: completed,
        failed_lines: failed,
        aggregation,
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

    #[test]
    fn parquet_rows_become_data_rows() {
        let dir = std::env::temp_dir().join(format!("sluice-parquet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
