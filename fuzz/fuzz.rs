//! A bounded mutation fuzzer on stable Rust (no cargo-fuzz: that needs nightly), one test per target:
//! the YAML loader, the flow loader, the connection loader, template compile + render, and the data
//! readers. Each target starts from seed inputs in the repository, mutates them (bit flips, byte edits,
//! splices of tokens that matter to the format, crossover between inputs, repetition of a slice to make
//! large inputs) and keeps the mutants the target accepted as new seeds. A panic fails the test and
//! writes the input under `target/fuzz-failures/`; an abort (stack overflow, allocation failure) kills
//! the test process, which fails it as well. Any single input slower than `SLUICE_FUZZ_SLOW_SECS`
//! (default 10) fails the target as a hang.
//!
//! `SLUICE_FUZZ_SECS` is each target's time budget (default 2, what CI runs); `SLUICE_FUZZ_SEED` fixes
//! the random seed (default: from the clock, printed so a failure can be replayed); with
//! `SLUICE_FUZZ_TRACE` set, each input is written to `target/fuzz-failures/<target>-last` before it
//! runs, so the input of an abort can be found; `SLUICE_FUZZ_REPLAY=<file>` runs the target its name
//! starts with on that one file. See fuzz/README.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const MAX_INPUT: usize = 256 << 10;

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], tokens: &[&str]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                v.drain(a..b);
            }
            3 | 4 => {
                let t = tokens[rng.below(tokens.len())].as_bytes();
                let i = rng.below(len + 1);
                v.splice(i..i, t.iter().copied());
            }
            5 if len > 0 => {
                // Repeat a slice: nesting and size blow-ups.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let slice = v[a..b].to_vec();
                let most = if rng.below(8) == 0 { 2000 } else { 8 };
                let times = 1 + rng.below(most);
                for _ in 0..times {
                    v.splice(b..b, slice.iter().copied());
                }
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(256)).min(other.len());
                    let i = rng.below(len + 1);
                    v.splice(i..i, other[a..b].iter().copied());
                }
            }
            7 => {
                let digits = [
                    "0",
                    "-1",
                    "1e308",
                    "1e400",
                    "nan",
                    ".inf",
                    "99999999999999999999",
                    "4294967296",
                ];
                let t = digits[rng.below(digits.len())].as_bytes();
                let i = rng.below(len + 1);
                v.splice(i..i, t.iter().copied());
            }
            _ if len > 1 => {
                let a = rng.below(len);
                let b = rng.below(len);
                v.swap(a, b);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v.truncate(MAX_INPUT);
    v
}

/// The seconds the environment variable `name` gives, else `default`.
fn secs_from_env(name: &str, default: f64) -> Duration {
    let secs: f64 = std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively) whose name ends with one of `suffixes`.
fn files(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).into_iter().flatten().flatten();
        for (path, ty) in entries.filter_map(|e| Some((e.path(), e.file_type().ok()?))) {
            let wanted = suffixes.iter().any(|s| path.to_string_lossy().ends_with(s));
            match (ty.is_dir(), ty.is_file() && wanted) {
                (true, _) => folders.push(path),
                (false, true) => out.push(path),
                _ => {}
            }
        }
    }
}

fn seeds_from(dirs: &[&str], suffixes: &[&str], extra: &[&str]) -> Vec<Vec<u8>> {
    let mut paths = vec![];
    for d in dirs {
        files(&repo().join(d), suffixes, &mut paths);
    }
    paths.sort();
    let mut seeds: Vec<Vec<u8>> = paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|b| b.len() <= MAX_INPUT)
        .collect();
    seeds.extend(extra.iter().map(|s| s.as_bytes().to_vec()));
    seeds
}

/// Runs `target` on mutants of `seeds` for the time budget. `target` returns whether it accepted the
/// input (accepted mutants join the corpus).
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, tokens: &[&str], mut target: impl FnMut(&[u8]) -> bool) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    if let Some(file) = std::env::var_os("SLUICE_FUZZ_REPLAY") {
        // One saved input, e.g. target/fuzz-failures/<target>-last, through this target only.
        if Path::new(&file)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with(name))
        {
            let input = std::fs::read(&file).unwrap();
            eprintln!("replay {name}: accepted = {}", target(&input));
        }
        return;
    }
    let seed = seed();
    let mut rng = Rng(seed);
    let budget = secs_from_env("SLUICE_FUZZ_SECS", 2.0);
    let slow = secs_from_env("SLUICE_FUZZ_SLOW_SECS", 10.0);
    let start = Instant::now();
    let mut corpus = seeds;
    let initial = corpus.len() as u64;
    let (mut runs, mut accepted) = (0u64, 0u64);
    let mut slowest = (Duration::ZERO, 0usize);
    let failures = repo().join("target/fuzz-failures");
    let trace = std::env::var_os("SLUICE_FUZZ_TRACE").is_some();
    while start.elapsed() < budget {
        let base = corpus[rng.below(corpus.len())].clone();
        // The seeds themselves first, then mutants.
        let is_seed = runs < initial;
        let input = if is_seed {
            corpus[runs as usize].clone()
        } else {
            mutate(&mut rng, &base, &corpus, tokens)
        };
        if trace {
            // An abort (stack overflow) cannot be caught: the last input is on disk.
            std::fs::create_dir_all(&failures).unwrap();
            std::fs::write(failures.join(format!("{name}-last")), &input).unwrap();
        }
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = t.elapsed();
        runs += 1;
        if took > slowest.0 {
            slowest = (took, input.len());
        }
        let keep = match result {
            Ok(ok) => ok,
            Err(panic) => {
                std::fs::create_dir_all(&failures).unwrap();
                let file = failures.join(format!("{name}-{seed}-{runs}"));
                std::fs::write(&file, &input).unwrap();
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!(
                    "{name}: panicked on {} ({msg}); seed {seed}",
                    file.display()
                );
            }
        };
        if took > slow {
            std::fs::create_dir_all(&failures).unwrap();
            let file = failures.join(format!("{name}-{seed}-{runs}-slow"));
            std::fs::write(&file, &input).unwrap();
            panic!(
                "{name}: one input took {took:?} ({}); seed {seed}",
                file.display()
            );
        }
        if keep && !is_seed && corpus.len() < 4096 && input.len() < 64 << 10 {
            accepted += 1;
            corpus.push(input);
        }
    }
    eprintln!(
        "fuzz {name}: {runs} inputs in {:.1?} ({accepted} accepted mutants kept), slowest {:.1?} ({} bytes), seed {seed}",
        start.elapsed(),
        slowest.0,
        slowest.1
    );
}

const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "&b ",
    "*b",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "? ",
    "!!str ",
    "!!int ",
    "'",
    "\"",
    "|\n",
    ">\n",
    "---\n",
    "...\n",
    "#",
    ",",
    "<<: *a\n",
    "\t",
    "\u{feff}",
    "%YAML 1.2\n",
    "${inputs.x}",
    "${a.output}",
    "type: prompt\n",
    "nodes:\n",
    "inputs:\n",
    "outputs:\n",
    "\\u0000",
];

#[test]
fn fuzz_yaml_loader() {
    let seeds = seeds_from(&["flows", "tests/fixtures"], &[".yaml", ".yml"], &[]);
    fuzz("yaml", seeds, YAML_TOKENS, |input| {
        let text = String::from_utf8_lossy(input);
        let ok = sluice_engine::yaml::Yaml::parse(&text).is_ok();
        if let Err(e) = sluice_engine::yaml::load_document(&text, Path::new("f.yaml")) {
            assert!(e.snippet().len() < 4096, "unbounded snippet");
        }
        ok
    });
}

#[test]
fn fuzz_flow_loader() {
    use sluice_engine::{Flow, LoadOptions, NodeRegistry};
    let dir = tempfile::tempdir().unwrap();
    // Templates the seed flows name, so prompt nodes compile; Python tools are not imported (the
    // registry has the prompt kind only), so no fuzzed flow runs code.
    let mut templates = vec![];
    files(&repo().join("tests/fixtures"), &[".jinja2"], &mut templates);
    files(&repo().join("flows"), &[".jinja2"], &mut templates);
    for t in &templates {
        let _ = std::fs::copy(t, dir.path().join(t.file_name().unwrap()));
    }
    let mut registry = NodeRegistry::new();
    registry.register(sluice_nodes::prompt::PromptKind);
    let file = dir.path().join("flow.dag.yaml");
    let seeds = seeds_from(&["flows", "tests/fixtures"], &["flow.dag.yaml"], &[]);
    fuzz("flow", seeds, YAML_TOKENS, |input| {
        std::fs::write(&file, input).unwrap();
        match Flow::load(&file, &registry, &LoadOptions::default()) {
            Ok(_) => true,
            Err(e) => {
                let shown = e.render();
                // At most 50 problems, each with a bounded snippet; names quoted from the input
                // may be long, so the bound grows with the input.
                assert!(
                    shown.len() < 64 * 1024 + 2 * input.len(),
                    "an error of {} bytes",
                    shown.len()
                );
                false
            }
        }
    });
}

#[test]
fn fuzz_connection_loader() {
    use sluice_nodes::llm::connections::Connection;
    use sluice_nodes::llm::openai::HttpConfig;
    let seeds = seeds_from(
        &[],
        &[],
        &[
            "name: c\ntype: open_ai\napi_key: sk-x\napi_base: https://api.openai.com/v1\ntimeout: 30\nmax_retries: 3\nmax_concurrency: 8\nretry_backoff: 1.5\n",
            "name: az\ntype: azure_open_ai\napi_key: ${env:KEY}\napi_base: https://x.openai.azure.com\napi_version: 2024-02-01\n",
            "name: cu\ntype: custom\nconfigs:\n  endpoint: http://h\n  timeout: 5\nsecrets:\n  token: t\n",
            "name: l\ntype: local\nmodel: default\n",
        ],
    );
    fuzz("connection", seeds, YAML_TOKENS, |input| {
        let text = String::from_utf8_lossy(input);
        match Connection::from_yaml(&text, Path::new("c.yaml")) {
            Ok(c) => {
                let _ = HttpConfig::from_connection(&c);
                true
            }
            Err(_) => false,
        }
    });
}

#[test]
fn fuzz_run_yaml() {
    use sluice_engine::runner::RunSpec;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.yaml");
    let seeds = seeds_from(
        &[],
        &[],
        &[
            "$schema: https://azuremlschemas.azureedge.net/promptflow/latest/Run.schema.json\nflow: ../flow\ndata: data.jsonl\nrun: base\nvariant: '${summarize.variant_1}'\ncolumn_mapping:\n  url: ${data.url}\n  answer: ${run.outputs.answer}\nenvironment_variables:\n  KEY: ${env:KEY}\ntags: {team: a}\n",
            "flow: f\ndata: d.csv\nname: my_run\ndisplay_name: 'Run ${variant_id}'\ndescription: x\nconnections:\n  llm:\n    connection: c\n    deployment_name: gpt\nresources: {instance_type: a}\n",
        ],
    );
    fuzz("run-yaml", seeds, YAML_TOKENS, |input| {
        std::fs::write(&file, input).unwrap();
        match RunSpec::from_yaml(&file) {
            Ok(spec) => spec.check().is_ok(),
            Err(e) => {
                assert!(e.to_string().len() < 64 * 1024, "an unbounded error");
                false
            }
        }
    });
}

#[test]
fn fuzz_openai_requests() {
    use sluice_nodes::llm::protocol::{Provider, encode_request, from_fields};
    use sluice_nodes::llm::types::Prompt;
    let seeds = seeds_from(
        &[],
        &[],
        &[
            r#"{"model": "default", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 1, "max_tokens": 64, "stop": ["\n", "Q:"], "seed": 42, "stream": true}"#,
            r#"{"prompt": "Q: 1+1?\nA:", "max_tokens": "8", "presence_penalty": -0.5, "frequency_penalty": 2, "response_format": {"type": "json_object"}, "n": 1, "stop": "."}"#,
            r#"{"model": "m", "max_completion_tokens": 100, "temperature": null, "user": "u", "logit_bias": {"50256": -100}}"#,
        ],
    );
    let tokens: &[&str] = &[
        "\"temperature\": ",
        "\"top_p\": ",
        "\"max_tokens\": ",
        "\"stop\": ",
        "\"seed\": ",
        "\"n\": ",
        "1e400",
        "-1e308",
        "NaN",
        "null",
        "[1, \"x\"]",
        "\"",
        ",",
        "{",
        "}",
        "[",
        "]",
        "18446744073709551616",
        "0.1",
        "-3",
    ];
    let chat = Prompt::Chat(vec![sluice_nodes::llm::types::ChatMessage::new(
        "user", "hi",
    )]);
    let text = Prompt::Text("hi".into());
    fuzz("openai-request", seeds, tokens, |input| {
        let Ok(body) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(input)
        else {
            return false;
        };
        let Ok(params) = from_fields(&body) else {
            return false;
        };
        // What is accepted is sent as it was read: encoding then reading again changes nothing.
        // A chat request does not carry the completions API's own fields.
        let sent = encode_request(&chat, &params, false, Provider::OpenAi);
        let mut again = from_fields(sent.as_object().expect("a request body is an object"))
            .expect("an encoded request reads back");
        // A chat request carries the numbers given as they were written; read back, every number
        // sent counts as given.
        for (k, v) in &params.given_numbers {
            assert_eq!(sent.get(k), Some(v), "{sent}");
        }
        again.given_numbers = params.given_numbers.clone();
        let mut expected = params.clone();
        expected.completion = Default::default();
        assert_eq!(again, expected, "{sent}");
        // A completion carries the completions API's parameters, `best_of` always, and not the
        // chat-only ones.
        let mut expected = params.clone();
        expected.seed = None;
        expected.json_object = false;
        expected
            .passthrough
            .retain(|k, _| k == "logit_bias" || k == "user");
        expected.completion.best_of = Some(params.completion.best_of.unwrap_or(1));
        for provider in [Provider::OpenAi, Provider::AzureOpenAi] {
            let sent = encode_request(&text, &params, false, provider);
            let mut again = from_fields(sent.as_object().expect("a request body is an object"))
                .expect("an encoded request reads back");
            again.given_numbers = expected.given_numbers.clone();
            assert_eq!(again, expected, "{sent}");
        }
        true
    });
}

#[test]
fn fuzz_templates() {
    use sluice_engine::Value;
    use sluice_nodes::template::Template;
    let seeds = seeds_from(
        &["flows", "tests/fixtures"],
        &[".jinja2"],
        &[
            "{{ x.zfill(5) }}{{ x.ljust(3, '*') }}{{ x|center(9) }}{{ '{:>4}'.format(x) }}",
            "{% for i in range(3) %}{{ i ~ x }}{% endfor %}{{ x * 3 }}{{ l|tojson }}",
            "{% set n = namespace(v=x) %}{% for i in range(4) %}{% set n.v = n.v ~ n.v %}{% endfor %}{{ n.v|wordwrap(3) }}",
        ],
    );
    let tokens: &[&str] = &[
        "{{",
        "}}",
        "{%",
        "%}",
        "{#",
        "#}",
        " x ",
        " l ",
        " m ",
        "range(",
        ")",
        "(",
        "~",
        " * ",
        "|",
        ".zfill(",
        ".ljust(",
        ".rjust(",
        ".center(",
        ".format(",
        "|center(",
        "|wordwrap(",
        "|tojson(",
        "|truncate(",
        "for i in ",
        "endfor",
        "if ",
        "endif",
        "set ",
        "namespace(",
        "10**9",
        "99999999999",
        "'{:>9999}'",
        ",",
        "[",
        "]",
        "'",
        "\"",
        "macro ",
        "endmacro",
        "loop.",
        "|join",
        "|list",
        "|sort",
        "|batch(",
    ];
    let x = Value::String("ab".into());
    let l = Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Null]);
    let m: Value = serde_json::json!({"k": [1, {"z": "y"}]}).into();
    fuzz("template", seeds, tokens, |input| {
        let src = String::from_utf8_lossy(input).into_owned();
        let Ok(t) = Template::from_source(src, Path::new("t.jinja2")) else {
            return false;
        };
        let vars = [("x", &x), ("l", &l), ("m", &m)];
        match t.render(vars) {
            Ok(out) => {
                assert!(out.len() <= 512 << 20);
                true
            }
            Err(_) => false,
        }
    });
}

#[test]
fn fuzz_data_readers() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds_from(
        &["flows", "benches"],
        &[".jsonl", ".csv"],
        &[
            "{\"a\": 1, \"b\": [1, 2]}\n{\"a\": 2}\n",
            "a,b\n1,2\n3,\"x,y\"\n",
            "[{\"a\": 1}, {\"a\": 2}]",
            "a\tb\n1\t2\n",
            "\u{feff}{\"line_number\": 3}\n",
        ],
    );
    let tokens: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ",",
        ":",
        "\n",
        "\r\n",
        "\u{feff}",
        "\u{0}",
        "\\u0000",
        "1e999",
        "\"line_number\": ",
        "-1",
        "null",
        "\t",
        "\"\"",
        "\u{ff}",
    ];
    let mut n = 0u64;
    fuzz("data", seeds, tokens, |input| {
        n += 1;
        let ext = ["jsonl", "json", "csv", "tsv"][(n % 4) as usize];
        let file = dir.path().join(format!("d.{ext}"));
        std::fs::write(&file, input).unwrap();
        let loaded = sluice_engine::load_data(&file);
        let scanned = sluice_engine::scan_data(&file);
        // The streaming scan and the whole load agree on whether the file is readable.
        if let (Ok(rows), Ok(scan)) = (&loaded, &scanned) {
            assert_eq!(rows.len(), scan.rows);
        }
        loaded.is_ok()
    });
}
