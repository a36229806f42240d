//! Big datasets are streamed through a run: the data file is read as lines are taken and outputs are
//! written in line order as lines finish, so memory stays flat however large the file is.

use std::path::Path;

#[test]
fn a_dataset_larger_than_the_memory_used_is_streamed() {
    let (home, dir) = crate::common::home_and_flow();
    crate::common::write_files(
        dir.path(),
        &[
            ("echo.jinja2", "Q: {{ q }}"),
            (
                "flow.dag.yaml",
                "inputs:\n  q: {type: string}\noutputs:\n  prompt: {reference: '${echo.output}'}\nnodes:\n- name: echo\n  type: prompt\n  source: {type: code, path: echo.jinja2}\n  inputs: {q: '${inputs.q}'}\n",
            ),
        ],
    );
    // 100,000 rows, each with a 2.2 KB column the flow never reads: a file of over 200 MB.
    let data = dir.path().join("data.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
        let pad = "x".repeat(2200);
        for i in 0..100_000 {
            writeln!(f, "{{\"q\": \"question {i}\", \"padding\": \"{pad}\"}}").unwrap();
        }
    }
    let size_mb = std::fs::metadata(&data).unwrap().len() / (1 << 20);
    assert!(size_mb >= 200, "{size_mb} MB");

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .args([
            "run",
            "create",
            "--name",
            "big",
            "--max-concurrency",
            "32",
            "--flow",
        ])
        .arg(dir.path())
        .arg("--data")
        .arg(&data)
        .env("SLUICE_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The peak RSS of the child's own program: VmHWM of its address space, read until it exits. (The
    // rusage of a child also counts the pages it shared with this test process before exec.)
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success());
    let peak_mb = peak_kb / 1024;
    assert!(peak_kb > 0, "could not read the child's memory");
    assert!(
        peak_mb < 120,
        "peak RSS {peak_mb} MB for a {size_mb} MB dataset: the data was held in memory"
    );

    let run = home.path().join("runs/big");
    let outputs = std::fs::read_to_string(run.join("outputs.jsonl")).unwrap();
    let mut count = 0;
    for (i, line) in outputs.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["line_number"], i, "outputs must be in line order");
        count += 1;
    }
    assert_eq!(count, 100_000);
    let inputs = std::fs::read_to_string(run.join("inputs.jsonl")).unwrap();
    assert_eq!(inputs.lines().count(), 100_000);
    assert!(!Path::new(&run.join("error.json")).exists());
}
