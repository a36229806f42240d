//! Quality over traffic: a sample of each side is written as a run folder, the caller runs an
//! evaluation flow over each (`--run` that folder), and [`compare`] sets the two evaluations' metrics and
//! numeric line outputs side by side.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::{Value as Json, json};

use super::stats::{self, Rng};
use super::{MonitorError, MonitorReport, Observation};
use crate::store::{LineRecord, LineStatus, RunProperties, RunRecord, RunStatus};
use crate::{Map, Value};

/// Writes `lines` as a completed run folder `dir` (`run.json`, `inputs.jsonl`, `outputs.jsonl`), which
/// an evaluation run can take as its `--run`.
pub fn write_sample_run(
    dir: &Path,
    name: &str,
    lines: &[&Observation],
) -> Result<(), MonitorError> {
    let io = |path: &Path, e: std::io::Error| MonitorError::Read {
        path: path.to_owned(),
        source: Box::new(e),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let record = RunRecord {
        name: name.to_owned(),
        created_on: Utc::now(),
        status: RunStatus::Completed,
        display_name: name.to_owned(),
        description: Some("a sample of lines taken by `sluice monitor`".into()),
        tags: Default::default(),
        properties: RunProperties {
            output_path: dir.to_owned(),
            ..RunProperties::default()
        },
        flow_name: String::new(),
        data: None,
        output: dir.to_owned(),
        metrics: Default::default(),
        status_note: None,
        owner: None,
        archived: None,
    };
    let path = dir.join(crate::store::RUN_JSON);
    let text = serde_json::to_vec_pretty(&record).expect("a run record serializes");
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    for (file, side) in [("inputs.jsonl", true), ("outputs.jsonl", false)] {
        let path = dir.join(file);
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| io(&path, e))?);
        for (n, o) in lines.iter().enumerate() {
            let mut row = Map::new();
            row.insert("line_number".into(), Value::Int(n as i64));
            for (k, v) in if side { &o.inputs } else { &o.outputs } {
                row.insert(k.clone(), v.clone());
            }
            let text = crate::json::to_string(&Value::Map(row).to_json_lossy())
                .expect("a JSON value serializes");
            writeln!(out, "{text}").map_err(|e| io(&path, e))?;
        }
        out.flush().map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// One side's evaluation: its run record and line records.
#[derive(Debug)]
pub struct Evaluation {
    pub record: RunRecord,
    pub lines: BTreeMap<usize, LineRecord>,
    pub dir: PathBuf,
}

/// Sets the evaluations of the baseline's and the current sample side by side in `report.quality`,
/// with measures `quality.NAME` (current), `quality.NAME.baseline` and `quality.NAME.delta` for the
/// evaluation's metrics, and `quality.outputs.NAME.mean|delta|p_value` for its numeric line outputs.
pub fn compare(
    report: &mut MonitorReport,
    eval_flow: &Path,
    baseline: &Evaluation,
    current: &Evaluation,
    permutations: usize,
    seed: u64,
) {
    let mut metrics = serde_json::Map::new();
    for (name, cur) in &current.record.metrics {
        let (Some(c), b) = (
            cur.as_f64(),
            baseline.record.metrics.get(name).and_then(Json::as_f64),
        ) else {
            continue;
        };
        report.add_measure(&format!("quality.{name}"), None, "all", c);
        if let Some(b) = b {
            report.add_measure(&format!("quality.{name}.baseline"), None, "all", b);
            report.add_measure(&format!("quality.{name}.delta"), None, "all", c - b);
        }
        metrics.insert(
            name.clone(),
            json!({"baseline": b, "current": c, "delta": b.map(|b| c - b)}),
        );
    }
    let numeric = |e: &Evaluation| -> BTreeMap<String, Vec<f64>> {
        let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for l in e
            .lines
            .values()
            .filter(|l| l.status == LineStatus::Completed)
        {
            for (k, v) in &l.output {
                let x = match v {
                    Value::Int(i) => *i as f64,
                    Value::Float(f) if f.is_finite() => *f,
                    Value::Bool(b) => f64::from(u8::from(*b)),
                    _ => continue,
                };
                out.entry(k.clone()).or_default().push(x);
            }
        }
        out
    };
    let (nb, nc) = (numeric(baseline), numeric(current));
    let mut rng = Rng::new(seed);
    let mut outputs = serde_json::Map::new();
    for (name, c) in &nc {
        let Some(b) = nb.get(name) else { continue };
        let (delta, p) = stats::mean_difference_test(b, c, permutations, &mut rng);
        let (mb, mc) = (stats::mean(b), stats::mean(c));
        if let Some(mc) = mc {
            report.add_measure(&format!("quality.outputs.{name}.mean"), None, "all", mc);
        }
        report.add_measure(&format!("quality.outputs.{name}.delta"), None, "all", delta);
        report.add_measure(&format!("quality.outputs.{name}.p_value"), None, "all", p);
        outputs.insert(
            name.clone(),
            json!({"baseline_mean": mb, "current_mean": mc, "delta": delta, "p_value": p,
                   "baseline_lines": b.len(), "current_lines": c.len()}),
        );
    }
    let failed = |e: &Evaluation| {
        e.lines
            .values()
            .filter(|l| l.status != LineStatus::Completed)
            .count()
    };
    report.quality = Some(json!({
        "eval_flow": eval_flow,
        "sample": {"baseline": baseline.lines.len(), "current": current.lines.len()},
        "failed_lines": {"baseline": failed(baseline), "current": failed(current)},
        "runs": {"baseline": baseline.dir, "current": current.dir},
        "metrics": metrics,
        "outputs": outputs,
    }));
}
