//! The HTML report (`sluice run visualize`) end to end: a batch run with four prompt variants on the
//! scripted backend (`tests/data/report`), an evaluation run over one of them, and the reports of one
//! run, the run with its evaluation, and the four variants; then the same reports in headless Chromium:
//! screenshots, the drill-down opened from a `#line-N` link, and sorting.
//!
//! `SLUICE_SCREENSHOTS=DIR` keeps the screenshots in DIR (that is how `docs/screenshots/` is made).

use crate::common;

use std::path::{Path, PathBuf};

use common::{chromium, dump_dom, screenshot, sluice, stdout_json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The runs the reports show, in `home`: `caps_ask_variant_0` … `_3` and `caps_eval`.
fn make_runs(home: &Path) {
    let flow = root().join("tests/data/report");
    let out = sluice(home)
        .args(["run", "create", "--name", "caps", "--variant", "all"])
        .arg("--flow")
        .arg(&flow)
        .arg("--data")
        .arg(flow.join("data.jsonl"))
        .args(["--column-mapping", "country=${data.country}"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for v in 0..4 {
        assert!(
            stdout.contains(&format!("\"caps_ask_variant_{v}\"")),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = sluice(home)
        .args([
            "run",
            "create",
            "--name",
            "caps_eval",
            "--run",
            "caps_ask_variant_0",
        ])
        .arg("--flow")
        .arg(root().join("flows/eval_accuracy"))
        .args([
            "--column-mapping",
            "groundtruth=${data.capital}",
            "prediction=${run.outputs.answer}",
        ])
        .output()
        .unwrap();
    let record = stdout_json(&out);
    assert_eq!(record["metrics"]["accuracy"], 0.75, "{record}");
}

fn visualize(home: &Path, runs: &[&str], html: &Path) -> String {
    sluice(home)
        .args(["run", "visualize"])
        .args(runs)
        .arg("--html-path")
        .arg(html)
        .assert()
        .success();
    std::fs::read_to_string(html).unwrap()
}

/// The HTML of one element, from `<tag … id="ID"` to its closing tag (not nested in itself).
fn element<'a>(html: &'a str, tag: &str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .and_then(|i| html[..i].rfind(&format!("<{tag}")))
        .unwrap_or_else(|| panic!("no <{tag} id={id}>"));
    let end = html[start..]
        .find(&format!("</{tag}>"))
        .map(|e| start + e)
        .unwrap();
    &html[start..end]
}

/// `needles` occur in `text` in this order.
fn in_order(text: &str, needles: &[&str]) -> bool {
    let mut at = 0;
    for n in needles {
        match text[at..].find(n) {
            Some(i) => at += i + n.len(),
            None => return false,
        }
    }
    true
}

#[test]
fn the_report_joins_evaluations_names_variants_and_drills_into_lines() {
    let home = tempfile::tempdir().unwrap();
    make_runs(home.path());
    let out = home.path().join("reports");
    std::fs::create_dir_all(&out).unwrap();

    // An evaluation run alone: the run it scored joins the report, and each line shows the inputs, the
    // base run's output, the ground truth and the score side by side.
    let eval = visualize(home.path(), &["caps_eval"], &out.join("eval.html"));
    assert!(
        !eval.contains("http://") && !eval.contains("https://"),
        "the report must not fetch anything"
    );
    assert!(
        eval.contains("evaluates <b>caps_ask_variant_0</b>"),
        "the evaluation names the run it scored"
    );
    assert!(eval.contains("<th class=\"first\" data-col=\"5\">ground truth</th>"));
    let row = element(&eval, "tr", "row-3");
    assert!(
        in_order(
            row,
            &["Australia", "Sydney", "Completed", "Canberra", "Incorrect"]
        ),
        "line 3: inputs, base output, ground truth, score: {row}"
    );
    let row = element(&eval, "tr", "row-0");
    assert!(
        in_order(row, &["France", "Paris", "Paris", "Correct"]),
        "{row}"
    );
    // The line that failed in the base run has no evaluation line.
    let row = element(&eval, "tr", "row-4");
    assert!(
        in_order(
            row,
            &["Atlantis", "cannot check an answer", "Failed", "Missing"]
        ),
        "{row}"
    );

    // The drill-down of a failed line: each node's inputs, the prompt as sent, tokens, the error and
    // the Python traceback, escaped.
    let drawer = element(&eval, "aside", "line-4");
    for want in [
        "<b>ask</b>",
        "<b>tidy</b>",
        "max_tokens",
        "prompt sent to scripted:replies.json (chat)",
        "Answer with one word.",
        "Capital of Atlantis?",
        "Poseidonia",
        "10 tokens (9 prompt, 1 completion)",
        "Traceback (most recent call last)",
        "raise ValueError(f&quot;cannot check an answer about {country}: it is not on any map&quot;)",
        "tidy.py&quot;, line 7, in tidy",
        "ValueError: cannot check an answer about Atlantis",
    ] {
        assert!(
            drawer.contains(want),
            "{want:?} not in the drill-down:\n{drawer}"
        );
    }

    // Four variants: labelled by name, never as JSON; multi-line answers keep their lines.
    let variants = visualize(
        home.path(),
        &[
            "caps_ask_variant_0",
            "caps_ask_variant_1",
            "caps_ask_variant_2",
            "caps_ask_variant_3",
        ],
        &out.join("variants.html"),
    );
    for v in 0..4 {
        assert!(
            variants.contains(&format!(
                "<span class=\"badge\" title=\"variant of node ask\">variant_{v}</span>"
            )),
            "variant_{v} is not labelled"
        );
    }
    assert!(
        !variants.contains("{&quot;ask&quot;"),
        "a variant shown as JSON"
    );
    assert!(
        variants.contains("lines differ between runs"),
        "the comparison note"
    );
    let row = element(&variants, "tr", "row-1");
    assert!(
        row.contains("Tokyo.\nThe emperor moved there from Kyoto in 1868."),
        "{row}"
    );
    // The completion variant's prompt is the text as sent; the failing variant shows the model's error.
    let drawer = element(&variants, "aside", "line-1");
    assert!(drawer.contains("Q: Capital of Italy?\nA: Rome\nQ: Capital of Japan?\nA:"));
    assert!(drawer.contains("The server had an error while processing your request."));
    assert!(drawer.contains("CAPITAL OF JAPAN, IN CAPITALS!"));

    let one = visualize(home.path(), &["caps_ask_variant_1"], &out.join("one.html"));
    assert!(!one.contains("lines differ between runs"));

    // In a browser.
    let Some(chromium) = chromium() else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("SLUICE_SCREENSHOTS").map_or_else(|| out.clone(), PathBuf::from);
    std::fs::create_dir_all(&shots).unwrap();
    for (png, page) in [
        ("report-one-run.png", "one.html"),
        ("report-eval.png", "eval.html"),
        ("report-variants.png", "variants.html"),
        ("report-drill-down.png", "eval.html#line-4"),
        ("report-variants-drill-down.png", "variants.html#line-1"),
    ] {
        let png = shots.join(png);
        let url = format!("file://{}/{page}", out.display());
        let bytes = screenshot(&chromium, profile.path(), &url, &png, (1400, 900));
        assert!(bytes.len() > 20_000, "{} looks empty", png.display());
    }
    let dom = |page: &str| {
        let url = format!("file://{}/{page}", out.display());
        dump_dom(&chromium, profile.path(), &url, (1400, 900))
    };
    let order = |dom: &str| -> Vec<usize> {
        dom.match_indices("<tr class=\"line")
            .map(|(i, _)| {
                let id = &dom[i..];
                let id = &id[id.find("id=\"row-").unwrap() + 8..];
                id[..id.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    };
    // A link opens a line's drill-down.
    let opened = dom("eval.html#line-4");
    assert!(
        opened.contains(r#"<aside class="drawer open" id="line-4""#),
        "{}",
        &opened[..opened.len().min(3000)]
    );
    // Columns sort: by inputs (country) ascending, by line number descending.
    assert_eq!(order(&dom("eval.html#sort=1")), vec![4, 3, 0, 1, 2]);
    assert_eq!(
        order(&dom("eval.html#sort=0&dir=desc")),
        vec![4, 3, 2, 1, 0]
    );
    // By the evaluation's score: Correct before Incorrect, lines without a score last.
    assert_eq!(order(&dom("eval.html#sort=6")), vec![0, 1, 2, 3, 4]);
    assert!(dom("eval.html#sort=6").contains(r#"aria-sort="ascending""#));
}
