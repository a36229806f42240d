//! `sluice monitor` end to end: served traffic with a known topic shift injected into a share of its
//! lines (found in the shifted window, not in the unshifted one), repeated unshifted samples (few false
//! alarms), a quality drop from a worse variant found by an evaluation flow, the HTML report in
//! headless Chromium, and the refusals.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value as Json, json};
use sluice_engine::monitor::stats::Rng;

use crate::common::{chromium, dump_dom, screenshot, sluice};

fn flows() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/monitor")
}

const COOKING: &[&str] = &[
    "How long should I {v} the {f} at {t} degrees?",
    "What spice goes well with {f} when I {v} it?",
    "Can I {v} frozen {f} without thawing it first?",
    "Which pan is best to {v} {f} for a family dinner?",
];
const ASTRONOMY: &[&str] = &[
    "Why does {p} have {x} that we can see from {w}?",
    "How far is {p} from {w} at its closest approach, and how long would a probe take to get there?",
    "What causes the {x} of {p} to change over a year?",
];

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

/// `n` questions about cooking; each is about astronomy instead with probability `shift`.
fn questions(n: usize, shift: f64, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() % 10_000) as f64 / 10_000.0;
            if u < shift {
                pick(&mut rng, ASTRONOMY)
                    .replace(
                        "{p}",
                        pick(
                            &mut rng,
                            &["Jupiter", "Mars", "Saturn", "the Moon", "Venus"],
                        ),
                    )
                    .replace(
                        "{x}",
                        pick(&mut rng, &["rings", "moons", "storms", "phases"]),
                    )
                    .replace("{w}", pick(&mut rng, &["Earth", "orbit", "the Sun"]))
            } else {
                pick(&mut rng, COOKING)
                    .replace(
                        "{v}",
                        pick(&mut rng, &["bake", "boil", "roast", "fry", "grill"]),
                    )
                    .replace(
                        "{f}",
                        pick(
                            &mut rng,
                            &["chicken", "potatoes", "bread", "salmon", "carrots", "tofu"],
                        ),
                    )
                    .replace("{t}", pick(&mut rng, &["160", "180", "200", "220"]))
            }
        })
        .collect()
}

fn write_questions(path: &Path, qs: &[String]) {
    let text: String = qs
        .iter()
        .map(|q| format!("{}\n", json!({ "question": q })))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn monitor(home: &Path, args: &[&str]) -> (Output, Json) {
    let out = sluice(home).arg("monitor").args(args).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
    (out, json)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_create(home: &Path, name: &str, data: &Path, extra: &[&str]) {
    let out = sluice(home)
        .args(["run", "create", "--name", name, "--flow"])
        .arg(flows().join("answerer"))
        .arg("--data")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn monitor_finds_a_topic_shift_in_the_shifted_window_of_served_traffic() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let base = home.join("base.jsonl");
    write_questions(&base, &questions(400, 0.0, 1));
    run_create(home, "base", &base, &[]);

    // 300 unshifted requests, then 300 with 30% of their questions on another topic.
    let flow = flows().join("answerer");
    let server = crate::common::serve(
        home,
        &[
            "flow",
            "serve",
            "--port",
            "0",
            "--flow",
            flow.to_str().unwrap(),
        ],
        &[],
    );
    let traffic: Vec<String> = questions(300, 0.0, 2)
        .into_iter()
        .chain(questions(300, 0.3, 3))
        .collect();
    for q in &traffic {
        assert_eq!(
            server.post_json("/score", &json!({ "question": q })).status,
            200
        );
    }
    server.stop();

    let report = home.join("monitor.html");
    let (out, r) = monitor(
        home,
        &[
            "--baseline",
            "base",
            "--current",
            "serve:answerer",
            "--window",
            "300",
            "--embed-sample",
            "150",
            "--report",
            report.to_str().unwrap(),
            "--fail-on",
            "drift.detected>0",
            "--fail-on",
            "ops.error_rate>0.5",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(r["current"]["kind"], "traffic");
    assert_eq!(r["current"]["lines"], 600);
    assert_eq!(r["fields"]["inputs.question"], "text");
    assert_eq!(r["fields"]["outputs.answer"], "category");
    assert_eq!(r["fields"]["outputs.words"], "numeric");
    assert_eq!(r["embedding_model"], "minilm");
    let windows = r["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 3, "all, then two windows of 300");
    assert_eq!(windows[1]["lines"], 300);
    // The unshifted window is quiet; the shifted one drifts, in its questions' embeddings and in the
    // answers' subjects.
    assert_eq!(windows[1]["drifted"], json!([]), "{err}");
    let shifted = &windows[2];
    let drifted: Vec<&str> = shifted["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(drifted.contains(&"inputs.question"), "{err}");
    let q = &shifted["fields"]["inputs.question"];
    assert!(q["embedding"]["p_value"].as_f64().unwrap() < 0.01, "{q}");
    assert!(
        windows[1]["fields"]["inputs.question"]["embedding"]["p_value"]
            .as_f64()
            .unwrap()
            > 0.01
    );
    assert!(
        shifted["fields"]["outputs.answer"]["category"]["psi"]
            .as_f64()
            .unwrap()
            > 0.2
    );
    // Operations come from the traffic log's records.
    assert!(shifted["ops"]["latency_p50"].as_f64().unwrap() > 0.0);
    assert_eq!(shifted["ops"]["error_rate"], 0.0);
    // The checks: drift holds (in the shifted window), the error rate does not.
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks[0]["failed"], true);
    // Drift holds over all lines and in the shifted window, not in the unshifted one.
    assert_eq!(checks[0]["holding"], 2);
    assert_eq!(checks[0]["measures"], 3);
    assert_eq!(checks[1]["failed"], false);
    assert!(err.contains("check drift.detected>0: HOLDS"), "{err}");

    // The report in a browser: checks, fields, a chart per field, and the windows.
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("id=\"field-inputs.question\""));
    let Some(chromium) = chromium() else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", report.display());
    let shots =
        std::env::var_os("SLUICE_SCREENSHOTS").map_or_else(|| home.to_owned(), PathBuf::from);
    std::fs::create_dir_all(&shots).unwrap();
    let png = screenshot(
        &chromium,
        profile.path(),
        &url,
        &shots.join("monitor.png"),
        (1300, 2400),
    );
    assert!(png.len() > 20_000);
    let dom = dump_dom(&chromium, profile.path(), &url, (1300, 2400));
    for needle in [
        "id=\"checks\"",
        "id=\"windows\"",
        "id=\"operations\"",
        "drifted</span>",
        "PSI by window",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} missing from the rendered report"
        );
    }
    assert!(dom.matches("<svg").count() >= 5);
}

#[test]
fn monitor_rarely_calls_unshifted_samples_drifted_and_always_finds_a_30_percent_shift() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let base = home.join("base.jsonl");
    write_questions(&base, &questions(400, 0.0, 1));
    let check = |shift: f64, seed: u64| -> bool {
        let cur = home.join(format!("cur-{seed}.jsonl"));
        write_questions(&cur, &questions(300, shift, seed));
        let (out, r) = monitor(
            home,
            &[
                "--baseline",
                base.to_str().unwrap(),
                "--current",
                cur.to_str().unwrap(),
                "--embed-sample",
                "100",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(r["current"]["kind"], "data");
        r["drift"]["detected"].as_bool().unwrap()
    };
    let alarms = (100..105).filter(|&seed| check(0.0, seed)).count();
    eprintln!("false alarms: {alarms} of 5 unshifted samples");
    assert!(
        alarms <= 1,
        "{alarms} of 5 unshifted samples were called drifted"
    );
    for seed in [200, 201] {
        assert!(
            check(0.3, seed),
            "a 30% topic shift (seed {seed}) was missed"
        );
    }
}

#[test]
fn monitor_finds_the_quality_drop_of_a_worse_variant_with_an_eval_flow() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (base, cur) = (home.join("base.jsonl"), home.join("cur.jsonl"));
    write_questions(&base, &questions(200, 0.0, 1));
    write_questions(&cur, &questions(200, 0.0, 2));
    run_create(home, "base", &base, &[]);
    run_create(home, "good", &cur, &[]);
    run_create(home, "worse", &cur, &["--variant", "${answer.variant_1}"]);
    let judge = flows().join("judge");
    let quality = |current: &str| {
        monitor(
            home,
            &[
                "--baseline",
                "base",
                "--current",
                current,
                "--embed-sample",
                "0",
                "--eval-flow",
                judge.to_str().unwrap(),
                "--eval-sample",
                "60",
                "--eval-mapping",
                "question=${run.inputs.question}",
                "answer=${run.outputs.answer}",
                "--fail-on",
                "quality.accuracy.delta<-0.1",
            ],
        )
    };
    let (out, r) = quality("good");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let accuracy = &r["quality"]["metrics"]["accuracy"];
    assert_eq!(accuracy["baseline"], 1.0);
    assert_eq!(accuracy["delta"], 0.0);
    assert_eq!(r["quality"]["sample"]["current"], 60);

    let (out, r) = quality("worse");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let accuracy = &r["quality"]["metrics"]["accuracy"];
    assert!(accuracy["delta"].as_f64().unwrap() < -0.2, "{accuracy}");
    let score = &r["quality"]["outputs"]["score"];
    assert!(score["p_value"].as_f64().unwrap() < 0.01, "{score}");
    assert_eq!(r["checks"][0]["failed"], true);
    assert!(err.contains("quality accuracy: 1.000 ->"), "{err}");
    // The evaluation runs are normal runs.
    let current = r["quality"]["runs"]["current"].as_str().unwrap();
    let name = Path::new(current).file_name().unwrap().to_str().unwrap();
    let shown = sluice(home)
        .args(["run", "show", "-n", name])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: Json = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "Completed");
}

#[test]
fn monitor_refuses_what_it_cannot_measure() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let data = home.join("q.jsonl");
    write_questions(&data, &questions(50, 0.0, 1));
    let d = data.to_str().unwrap();
    let refused = |args: &[&str], needle: &str| {
        let mut all = vec!["--baseline", d, "--current", d, "--embed-sample", "0"];
        all.extend_from_slice(args);
        let (out, _) = monitor(home, &all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    refused(&["--fail-on", "drift.psi=>0.2"], "write NAME OP NUMBER");
    refused(
        &["--fail-on", "quality.accuracy.delta<0"],
        "measured nothing named `quality.accuracy.delta`",
    );
    refused(&["--field", "inputs.nope"], "inputs.nope");
    refused(
        &["--window", "1h"],
        "time windows need lines with start times",
    );
    refused(&["--window", "0"], "at least one line");
    refused(
        &["--eval-mapping", "a=${run.outputs.b}"],
        "--eval-mapping needs --eval-flow",
    );
    let (out, _) = monitor(home, &["--baseline", "no_such_run", "--current", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no_such_run: not a file"),
        "{}",
        stderr(&out)
    );
    let (out, _) = monitor(home, &["--baseline", d, "--current", "serve:nothing"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no traffic log"), "{}", stderr(&out));
}
