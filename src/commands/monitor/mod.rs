//! `sluice monitor`: reads both sides, compares them with `sluice_engine::monitor`, embeds text samples
//! with the local embedding model, runs the evaluation flow over samples of both sides, checks the
//! `--fail-on` rules, and prints and writes the result.

mod report;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::Utc;
use indexmap::IndexMap;
use sluice_engine::monitor::{
    self, Embedder, FieldKind, MonitorReport, MonitorSpec, Observation, Rule, WindowSpec,
    quality::{self, Evaluation},
    stats::Rng,
};
use sluice_engine::store::{LineStatus, read_details};
use sluice_engine::{BatchRun, RunOptions, RunSpec, RunStore, Value};
use sluice_nodes::llm::embed::LocalEmbedder;
use sluice_nodes::llm::store::{self as models, ModelUse};
use tokio::runtime::Runtime;

use super::flow::{enter_flow, load, runtime};
use crate::ExitStatus;
use crate::cli::MonitorArgs;
use crate::style::error_label;

/// Prints `e` (with its causes) as a usage error.
fn invalid(e: &dyn std::error::Error) -> ExitStatus {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{} {}", error_label(), sluice_engine::redact::redact(&text));
    ExitStatus::Invalid
}

pub fn run(args: MonitorArgs) -> anyhow::Result<ExitStatus> {
    let rules = match args
        .fail_on
        .iter()
        .map(|r| r.parse::<Rule>())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(r) => r,
        Err(e) => return Ok(invalid(&e)),
    };
    let window = match args
        .window
        .as_deref()
        .map(str::parse::<WindowSpec>)
        .transpose()
    {
        Ok(w) => w,
        Err(e) => return Ok(invalid(&e)),
    };
    let mut mapping: IndexMap<String, Value> = IndexMap::new();
    for item in &args.eval_mapping {
        let Some((k, v)) = item.split_once('=') else {
            eprintln!(
                "{} --eval-mapping {item}: write NAME=VALUE, e.g. answer='${{run.outputs.answer}}'",
                error_label()
            );
            return Ok(ExitStatus::Invalid);
        };
        mapping.insert(k.trim().to_owned(), Value::from(v));
    }
    if !mapping.is_empty() && args.eval_flow.is_none() {
        eprintln!("{} --eval-mapping needs --eval-flow", error_label());
        return Ok(ExitStatus::Invalid);
    }
    let store = super::run::store();
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let report_path = args.report.as_deref().map(absolute);
    let eval_flow = args.eval_flow.as_deref().map(absolute);

    let mut sides = Vec::new();
    for spec in [&args.baseline, &args.current] {
        let read = monitor::source::resolve(spec, &store)
            .and_then(|s| monitor::source::read(&s).map(|o| (s, o)));
        match read {
            Ok(side) => sides.push(side),
            Err(e) => return Ok(invalid(&e)),
        }
    }
    let (cur_src, cur) = sides.pop().expect("two sides");
    let (base_src, base) = sides.pop().expect("two sides");

    let spec = MonitorSpec {
        fields: args.fields.clone(),
        window,
        bins: args.bins as usize,
        embed_sample: args.embed_sample as usize,
        permutations: args.permutations as usize,
        psi_threshold: args.psi_threshold,
        alpha: args.alpha,
        min_lines: args.min_lines,
        seed: args.seed,
    };
    let rt = runtime()?;
    let embedder = ModelEmbedder {
        rt: &rt,
        name: args.embed_model.clone(),
        model: OnceLock::new(),
        cache: Mutex::new(HashMap::new()),
    };
    let started = std::time::Instant::now();
    let mut report =
        match monitor::compare(&spec, (&base_src, &base), (&cur_src, &cur), Some(&embedder)) {
            Ok(r) => r,
            Err(e) => return Ok(invalid(&e)),
        };
    if let Some(flow) = &eval_flow {
        let samples = EvalSamples {
            flow,
            mapping: &mapping,
            per_side: args.eval_sample as usize,
            seed: args.seed,
        };
        match samples.run(&store, &rt, &base, &cur) {
            Ok((b, c)) => quality::compare(&mut report, flow, &b, &c, spec.permutations, spec.seed),
            Err(code) => return Ok(code),
        }
    }
    if let Err(e) = report.check(&rules) {
        return Ok(invalid(&e));
    }
    if let Some(path) = &report_path {
        let html = report::render(&report);
        if let Err(e) = std::fs::write(path, html) {
            eprintln!("{} cannot write {}: {e}", error_label(), path.display());
            return Ok(ExitStatus::Invalid);
        }
    }
    print_summary(&report, started.elapsed(), report_path.as_deref());
    println!("{}", sluice_engine::json::to_string_pretty(&report)?);
    Ok(if report.failed {
        ExitStatus::Failed
    } else {
        ExitStatus::Ok
    })
}

/// The local embedding model, loaded on first use (a monitor without text fields never loads it).
/// A text sampled twice (in the whole and in its window) is embedded once.
struct ModelEmbedder<'a> {
    rt: &'a Runtime,
    name: String,
    model: OnceLock<Arc<LocalEmbedder>>,
    cache: Mutex<HashMap<String, Vec<f32>>>,
}

impl Embedder for ModelEmbedder<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn embed(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        let model = match self.model.get() {
            Some(m) => m.clone(),
            None => {
                let (name, path) =
                    models::resolve_model(&self.name, Path::new("."), ModelUse::Embedding)
                        .map_err(|e| {
                            format!(
                                "the embedding model `{}` is not installed: {} (or turn the text embedding test off with --embed-sample 0)",
                                e.name, e.help
                            )
                        })?;
                let m = self.rt.block_on(LocalEmbedder::get(&name, &path))?;
                self.model.get_or_init(|| m).clone()
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut todo: Vec<String> = texts
            .iter()
            .filter(|t| !cache.contains_key(*t))
            .cloned()
            .collect();
        todo.sort_unstable();
        todo.dedup();
        if !todo.is_empty() {
            let vectors = self.rt.block_on(model.embed(todo.clone()))?;
            cache.extend(todo.into_iter().zip(vectors));
        }
        Ok(texts.iter().map(|t| cache[t].clone()).collect())
    }
}

/// The evaluation flow over a sample of each side.
struct EvalSamples<'a> {
    flow: &'a Path,
    mapping: &'a IndexMap<String, Value>,
    per_side: usize,
    seed: u64,
}

impl EvalSamples<'_> {
    /// Samples each side's completed lines, writes them as run folders under
    /// `$SLUICE_HOME/monitor/<time>/`, and runs the evaluation flow over each as a normal run
    /// (`monitor_<time>_baseline`, `monitor_<time>_current`), so its lines can be looked at later.
    fn run(
        &self,
        store: &RunStore,
        rt: &Runtime,
        base: &[Observation],
        cur: &[Observation],
    ) -> Result<(Evaluation, Evaluation), ExitStatus> {
        let stamp = Utc::now().format("%Y%m%d_%H%M%S_%3f").to_string();
        let root = store.home().join("monitor").join(&stamp);
        let mut out = Vec::new();
        for (i, (side, lines)) in [("baseline", base), ("current", cur)]
            .into_iter()
            .enumerate()
        {
            let ok: Vec<&Observation> = lines
                .iter()
                .filter(|o| !o.ops.as_ref().is_some_and(|o| o.failed))
                .collect();
            let mut rng = Rng::new(self.seed.wrapping_add(i as u64 + 1));
            let sample: Vec<&Observation> = rng
                .sample_indices(ok.len(), self.per_side)
                .into_iter()
                .map(|j| ok[j])
                .collect();
            let dir = root.join(side);
            let name = format!("monitor_{stamp}_{side}");
            if let Err(e) = quality::write_sample_run(&dir, &format!("{name}_sample"), &sample) {
                return Err(invalid(&e));
            }
            let spec = RunSpec {
                flow: Some(self.flow.to_owned()),
                run: Some(dir.to_string_lossy().into_owned()),
                column_mapping: self.mapping.clone(),
                name: Some(name.clone()),
                description: Some(format!(
                    "`sluice monitor`: {} of the {side}'s lines, evaluated",
                    sample.len()
                )),
                ..RunSpec::default()
            };
            let flow = load(self.flow, None, None)?;
            let here = std::env::current_dir().ok();
            enter_flow(&flow).map_err(|e| {
                eprintln!("{} {e:#}", error_label());
                ExitStatus::Invalid
            })?;
            let opts = RunOptions {
                max_concurrency: 8,
                ..RunOptions::default()
            };
            let prepared = BatchRun::prepare(store, flow, &spec, opts).map_err(|e| {
                super::run::print_error(&e);
                ExitStatus::Invalid
            })?;
            let dir = prepared.dir().to_owned();
            eprintln!(
                "monitor: evaluating {} {side} lines with {} (run {name})",
                sample.len(),
                self.flow.display()
            );
            let record = rt
                .block_on(prepared.execute(&mut (), async {
                    let _ = tokio::signal::ctrl_c().await;
                }))
                .map_err(|e| {
                    super::run::print_error(&e);
                    ExitStatus::Failed
                })?;
            if let Some(here) = here {
                let _ = std::env::set_current_dir(here);
            }
            let lines = read_details(&dir);
            let failed = lines
                .values()
                .filter(|l| l.status != LineStatus::Completed)
                .count();
            if failed > 0 {
                eprintln!(
                    "monitor: {failed} of {} {side} evaluation lines failed (sluice run show-details -n {name})",
                    lines.len()
                );
            }
            out.push(Evaluation { record, lines, dir });
        }
        let current = out.pop().expect("two sides");
        let baseline = out.pop().expect("two sides");
        Ok((baseline, current))
    }
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// The human summary, on stderr (stdout holds the JSON).
fn print_summary(r: &MonitorReport, took: std::time::Duration, html: Option<&Path>) {
    let side = |s: &monitor::SideSummary| {
        format!(
            "{} ({}, {} lines)",
            s.source.spec,
            serde_json::to_value(s.source.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            s.lines
        )
    };
    eprintln!(
        "monitor: {} against {}{}",
        side(&r.current),
        side(&r.baseline),
        match r.windows.len() {
            1 => String::new(),
            n => format!(", {} windows", n - 1),
        }
    );
    let all = &r.windows[0];
    eprintln!(
        "  {:<28} {:<8} {:>7} {:>7} {:>7} {:>9}  drifted",
        "field", "kind", "PSI", "KS", "JS", "emb. p"
    );
    for (name, d) in &all.fields {
        let n = d.numeric.as_ref().or(d.length.as_ref());
        let psi = n.map(|n| n.psi).or(d.category.as_ref().map(|c| c.psi));
        let windows = r.windows[1..]
            .iter()
            .filter(|w| w.drifted.contains(name))
            .count();
        eprintln!(
            "  {:<28} {:<8} {:>7} {:>7} {:>7} {:>9}  {}",
            name,
            match d.kind {
                FieldKind::Numeric => "number",
                FieldKind::Category => "category",
                FieldKind::Text => "text",
            },
            num(psi, 3),
            num(n.map(|n| n.ks), 3),
            num(d.category.as_ref().map(|c| c.js), 3),
            num(d.embedding.as_ref().map(|e| e.p_value), 3),
            match (d.drifted, r.windows.len() > 1) {
                (true, true) => format!("yes ({windows} of {} windows)", r.windows.len() - 1),
                (true, false) => "yes".to_owned(),
                (false, true) if windows > 0 => {
                    format!("in {windows} of {} windows", r.windows.len() - 1)
                }
                _ => "no".to_owned(),
            }
        );
    }
    for (name, why) in &r.skipped {
        eprintln!("  {name:<28} not compared: {why}");
    }
    let ops = |o: &monitor::Ops| {
        format!(
            "{} lines, error rate {:.2}%, latency p50 {} p95 {} p99 {} s, {} tokens/line",
            o.lines,
            o.error_rate * 100.0,
            num(o.latency_p50, 3),
            num(o.latency_p95, 3),
            num(o.latency_p99, 3),
            num(o.tokens_per_line, 1)
        )
    };
    if let Some(o) = &all.ops {
        eprintln!("  operations: {}", ops(o));
    }
    if let Some(o) = &r.baseline_ops {
        eprintln!("  baseline:   {}", ops(o));
    }
    if let Some(q) = &r.quality {
        for (name, m) in q["metrics"].as_object().into_iter().flatten() {
            eprintln!(
                "  quality {name}: {} -> {} ({})",
                num(m["baseline"].as_f64(), 3),
                num(m["current"].as_f64(), 3),
                num(m["delta"].as_f64(), 3)
            );
        }
        for (name, m) in q["outputs"].as_object().into_iter().flatten() {
            eprintln!(
                "  quality output {name}: mean {} -> {} (p = {})",
                num(m["baseline_mean"].as_f64(), 3),
                num(m["current_mean"].as_f64(), 3),
                num(m["p_value"].as_f64(), 3)
            );
        }
    }
    eprintln!(
        "  drift: {}",
        if r.drift.detected {
            format!("detected in {}", r.drift.fields.join(", "))
        } else {
            "none detected".to_owned()
        }
    );
    for c in &r.checks {
        eprintln!(
            "  check {}: {} (worst {} {}in window {})",
            c.rule,
            if c.failed { "HOLDS" } else { "ok" },
            num(Some(c.value), 4),
            c.field
                .as_ref()
                .map_or_else(String::new, |f| format!("for {f} ")),
            c.window
        );
    }
    if let Some(p) = html {
        eprintln!("  report: {}", p.display());
    }
    eprintln!("  took {:.1} s", took.as_secs_f64());
}
