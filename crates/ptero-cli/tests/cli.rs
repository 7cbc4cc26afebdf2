//! The `ptero` command's contract: commands, flags, files and JSON keys that scripts rely on.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
}

fn ptero(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ptero"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ptero-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn run_writes_npy_outputs_matching_the_reference() {
    let dir = tmpdir("run");
    let model = fixture("mlp/model.pte");
    let input = fixture("mlp/run0_in0.npy");
    let (ok, _, err) = ptero(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let got = ptero::npy::read(dir.join("output_0.npy")).unwrap();
    let want = ptero::npy::read(fixture("mlp/run0_out0.npy")).unwrap();
    assert_eq!(got.sizes(), want.sizes());
    for (a, b) in got
        .as_slice::<f32>()
        .unwrap()
        .iter()
        .zip(want.as_slice::<f32>().unwrap())
    {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{a} vs {b}");
    }
}

#[test]
fn run_without_inputs_says_so_and_prints_outputs() {
    let (ok, out, err) = ptero(&["run", fixture("cnn/model.pte").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("no --input given"), "{err}");
    assert!(out.starts_with("output 0: float32 ["), "{out}");
}

#[test]
fn scalar_outputs_are_0d_arrays_and_state_carries_over_iterations() {
    let dir = tmpdir("scalar");
    let (ok, _, err) = ptero(&[
        "run",
        fixture("two_methods/model.pte").to_str().unwrap(),
        "--method",
        "num_classes",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let t = ptero::npy::read(dir.join("output_0.npy")).unwrap();
    assert!(t.sizes().is_empty());
    assert_eq!(t.as_slice::<i64>().unwrap(), &[4]);
    // mutable_buffer: the buffer carries over between iterations of one run, so two
    // iterations give a different output than one, and each run starts afresh.
    let run = |iterations: &str| {
        let dir = tmpdir(&format!("state{iterations}"));
        let (ok, _, err) = ptero(&[
            "run",
            fixture("mutable_buffer/model.pte").to_str().unwrap(),
            "--input",
            fixture("mutable_buffer/run0_in0.npy").to_str().unwrap(),
            "--iterations",
            iterations,
            "--output-dir",
            dir.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        ptero::npy::read(dir.join("output_0.npy")).unwrap()
    };
    let (one, two, one_again) = (run("1"), run("2"), run("1"));
    assert_ne!(one, two);
    assert_eq!(one, one_again);
    let want = ptero::npy::read(fixture("mutable_buffer/run0_out0.npy")).unwrap();
    assert_eq!(one.sizes(), want.sizes());
}

#[test]
fn bench_json_has_the_contract_keys() {
    let (ok, out, err) = ptero(&[
        "bench",
        fixture("mlp/model.pte").to_str().unwrap(),
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for k in ["load_ms", "median_ms", "min_ms", "p90_ms", "peak_rss_mb"] {
        assert!(v[k].as_f64().is_some(), "missing {k} in {out}");
    }
    assert!(v["min_ms"].as_f64() <= v["median_ms"].as_f64());
}

#[test]
fn inspect_lists_methods_ops_and_memory() {
    let (ok, out, err) = ptero(&["inspect", fixture("cnn/model.pte").to_str().unwrap()]);
    assert!(ok, "{err}");
    for want in [
        "method forward",
        "float32",
        "aten::convolution.out",
        "planned memory",
        "segment 0",
    ] {
        assert!(out.contains(want), "missing '{want}' in\n{out}");
    }
    let (ok, out, _) = ptero(&[
        "inspect",
        fixture("two_methods/model.pte").to_str().unwrap(),
        "--json",
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["methods"].as_array().unwrap().len(), 3);
}

#[test]
fn errors_are_one_clear_line_and_a_failure_status() {
    let dir = tmpdir("errors");
    let bad = dir.join("bad.pte");
    std::fs::write(&bad, b"definitely not a program").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["run".into(), dir.join("missing.pte").display().to_string()],
            "cannot read",
        ),
        (
            vec!["run".into(), bad.display().to_string()],
            "not an ExecuTorch .pte program",
        ),
        (
            vec![
                "run".into(),
                fixture("mlp/model.pte").display().to_string(),
                "--method".into(),
                "nope".into(),
            ],
            "no method named 'nope'",
        ),
        (
            vec![
                "run".into(),
                fixture("mlp/model.pte").display().to_string(),
                "--input".into(),
                fixture("ops_int/run0_in0.npy").display().to_string(),
            ],
            "input 0",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = ptero(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{args:?}: '{err}' lacks '{want}'"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn llm_json_contract_and_greedy_ids() {
    let model = fixture("llm/tiny/model.pte");
    let (ok, out, err) = ptero(&[
        "llm",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,17,345,90,211,5,402,77,130,256,499,3",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(ids, [494, 195, 3, 487, 39, 449, 239, 263]);
    assert_eq!(v["stop"], "max_tokens");
    assert!(v["text"].is_string());
    for k in [
        "load_ms",
        "ttft_ms",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "peak_rss_mb",
    ] {
        assert!(v["stats"][k].as_f64().is_some(), "missing stats.{k}");
    }
    let (ok, _, err) = ptero(&["llm", model.to_str().unwrap(), "--prompt", "hello"]);
    assert!(!ok && err.contains("--tokenizer"), "{err}");
}

/// Writes a hand-built program to `dir/name`.
fn program(dir: &Path, name: &str, b: ptero_format::writer::ProgramBuilder) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, b.finish()).unwrap();
    p
}

/// Exits with an error of ours: not a panic, not a signal.
fn assert_clean_failure(args: &[&str], want: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ptero"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        out.status.code().is_some(),
        "{args:?} was killed by a signal: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: '{err}' lacks '{want}'");
    err
}

#[test]
fn output_dir_that_is_a_file_is_not_a_directory() {
    let dir = tmpdir("outfile");
    let file = dir.join("taken");
    std::fs::write(&file, b"x").unwrap();
    let err = assert_clean_failure(
        &[
            "run",
            fixture("mlp/model.pte").to_str().unwrap(),
            "--output-dir",
            file.to_str().unwrap(),
        ],
        "not a directory",
    );
    assert!(!err.contains("cannot read"), "{err}");
}

#[test]
fn only_written_outputs_are_counted() {
    use ptero_format::writer::{ProgramBuilder, ValueSpec};
    let dir = tmpdir("count");
    let model = program(
        &dir,
        "m.pte",
        ProgramBuilder::new().method("forward", |m| {
            let s = m.value(ValueSpec::String("hello".into()));
            let i = m.value(ValueSpec::Int(7));
            m.outputs = vec![s, i];
        }),
    );
    let out = dir.join("out");
    let (ok, _, err) = ptero(&[
        "run",
        model.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("output 0 is a"), "{err}");
    assert!(err.contains("wrote 1 output(s)"), "{err}");
    assert!(!out.join("output_0.npy").exists());
    let t = ptero::npy::read(out.join("output_1.npy")).unwrap();
    assert_eq!(t.as_slice::<i64>().unwrap(), &[7]);
}

#[test]
fn default_inputs_are_bounded_by_the_memory_limit() {
    // mlp: 5120 bytes of method memory, then a 256-byte input.
    let mlp = fixture("mlp/model.pte");
    assert_clean_failure(
        &["run", mlp.to_str().unwrap(), "--max-memory", "5200"],
        "input 0: default input of 256 bytes exceeds the memory limit",
    );
    assert_clean_failure(
        &[
            "run",
            mlp.to_str().unwrap(),
            "--max-memory",
            "5200",
            "--input",
            fixture("mlp/run0_in0.npy").to_str().unwrap(),
        ],
        "needs 256 bytes, over the memory limit",
    );
    assert_clean_failure(
        &["run", mlp.to_str().unwrap(), "--max-memory", "1K"],
        "over the memory limit of 1024 bytes",
    );
    let (ok, out, err) = ptero(&["run", mlp.to_str().unwrap(), "--max-memory", "1M"]);
    assert!(ok && out.starts_with("output 0: float32 [4, 8]"), "{err}");
}

#[test]
fn no_mmap_reads_the_program_and_bounds_streams() {
    let mlp = fixture("mlp/model.pte");
    let (ok, mapped, err) = ptero(&["run", mlp.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, read, err) = ptero(&["run", mlp.to_str().unwrap(), "--no-mmap"]);
    assert!(ok, "{err}");
    assert_eq!(mapped, read);
    let (ok, out, err) = ptero(&["inspect", mlp.to_str().unwrap(), "--no-mmap", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"forward\""), "{out}");
    let (ok, _, err) = ptero(&[
        "bench",
        mlp.to_str().unwrap(),
        "--no-mmap",
        "--iterations",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_clean_failure(
        &[
            "run",
            mlp.to_str().unwrap(),
            "--no-mmap",
            "--max-memory",
            "1000",
        ],
        "the file is 13952 bytes, over the memory limit of 1000 bytes",
    );
    if Path::new("/dev/zero").exists() {
        assert_clean_failure(
            &["run", "/dev/zero", "--no-mmap", "--max-memory", "1M"],
            "longer than the memory limit of 1048576 bytes",
        );
        assert_clean_failure(&["run", "/dev/zero"], "not a regular file");
        assert_clean_failure(
            &["run", mlp.to_str().unwrap(), "--input", "/dev/zero"],
            "magic",
        );
    }
}

#[test]
fn iteration_counts_are_bounded() {
    let mlp = fixture("mlp/model.pte");
    for flag in ["--iterations", "--warmup"] {
        assert_clean_failure(&["bench", mlp.to_str().unwrap(), flag, "4294967295"], flag);
    }
    assert_clean_failure(
        &["run", mlp.to_str().unwrap(), "--iterations", "4294967295"],
        "--iterations",
    );
}

#[test]
fn inspect_names_unplanned_io_and_unnamed_operators() {
    use ptero_format::fb::ScalarType as FbType;
    use ptero_format::writer::{ProgramBuilder, TensorData, TensorSpec, ValueSpec};
    let dir = tmpdir("inspect");
    let model = program(
        &dir,
        "m.pte",
        ProgramBuilder::new().method("forward", |m| {
            let x = m.value(ValueSpec::Tensor(TensorSpec::new(
                FbType::FLOAT,
                &[2, 3],
                TensorData::None,
            )));
            m.inputs = vec![x];
            m.outputs = vec![x];
            m.kernel("", "", &[x]);
        }),
    );
    let (ok, out, err) = ptero(&["inspect", model.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("not planned (24 B allocated at load)"),
        "{out}"
    );
    assert!(
        out.contains("input/output buffers (not planned, allocated at load): 48 B for 2 tensor(s)"),
        "{out}"
    );
    assert!(out.contains("! '' (unnamed)"), "{out}");
    let (ok, out, err) = ptero(&["inspect", model.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["methods"][0]["unplanned_io_bytes"], 48);
    assert_eq!(v["methods"][0]["operators"][0], "");
    assert_clean_failure(&["run", model.to_str().unwrap()], "no kernel");
}

#[test]
fn timeout_stops_execution_with_a_clear_error() {
    let model = fixture("mlp/model.pte");
    let m = model.to_str().unwrap();
    assert_clean_failure(&["run", m, "--timeout", "0"], "interrupted");
    assert_clean_failure(&["bench", m, "--timeout", "0"], "interrupted");
    assert_clean_failure(&["run", m, "--timeout=-1"], "seconds");
    assert_clean_failure(&["run", m, "--timeout", "NaN"], "seconds");
    let (ok, _, err) = ptero(&["run", m, "--timeout", "3600"]);
    assert!(ok, "{err}");
}

// ---- devtools: bundled programs, profile, ETDump, Chrome trace ----

#[test]
fn test_command_passes_a_bundled_program_and_names_a_failing_case() {
    let good = fixture("devtools/bundled/model.bpte");
    let (ok, out, err) = ptero(&["test", good.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches(": pass").count(), 5, "{out}");
    assert!(out.contains("forward case 2: pass"), "{out}");
    assert!(out.contains("encode case 1: pass"), "{out}");

    let (ok, out, err) = ptero(&["test", good.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.is_object(), "{out}");

    let bad = fixture("devtools/bundled/bad.bpte");
    let (ok, out, err) = ptero(&["test", bad.to_str().unwrap()]);
    assert!(!ok, "a changed expected output must fail: {out}");
    assert!(out.contains("forward case 1: FAIL"), "{out}");
    assert!(out.contains("output 0"), "{out}");
    assert!(out.contains("forward case 0: pass"), "{out}");
    assert!(err.contains("1 of 5 test cases failed"), "{err}");

    // A looser tolerance than the change (1.0) lets it through.
    let (ok, out, _) = ptero(&["test", bad.to_str().unwrap(), "--atol", "2"]);
    assert!(ok, "{out}");
}

#[test]
fn run_and_bench_take_a_bundled_program_and_its_first_case() {
    let bpte = fixture("devtools/bundled_xnnpack/model.bpte");
    let (ok, out, err) = ptero(&["run", bpte.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("output 0: float32 ["), "{out}");
    assert!(
        err.contains("using the bundled program's first test case of 'forward'"),
        "the test case is the input: {err}"
    );
    let (ok, out, err) = ptero(&[
        "bench",
        bpte.to_str().unwrap(),
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["median_ms"].as_f64().is_some(), "{out}");
    assert!(
        v.get("traced_median_ms").is_none(),
        "tracer off unless asked: {out}"
    );
    let (ok, out, err) = ptero(&[
        "bench",
        bpte.to_str().unwrap(),
        "--iterations",
        "3",
        "--tracer",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["traced_median_ms"].as_f64().unwrap() > 0.0, "{out}");
    assert!(
        v["tracer_overhead_pct"].as_f64().unwrap().is_finite(),
        "{out}"
    );
    // Not a bundled program: a truncated one is an error naming the format.
    let dir = tmpdir("bpte-trunc");
    let bytes = std::fs::read(&bpte).unwrap();
    let cut = dir.join("cut.bpte");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let (ok, _, err) = ptero(&["test", cut.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Complete events on one thread nest when every event either lies inside the
/// innermost open one or starts after it ends.
fn assert_nested(events: &[serde_json::Value]) {
    let mut spans: Vec<(f64, f64, &str, &str)> = events
        .iter()
        .map(|e| {
            let ts = e["ts"].as_f64().unwrap();
            (
                ts,
                ts + e["dur"].as_f64().unwrap(),
                e["cat"].as_str().unwrap_or(""),
                e["name"].as_str().unwrap(),
            )
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut open: Vec<(f64, f64, &str, &str)> = Vec::new();
    for s in spans {
        while open.last().is_some_and(|o| s.0 >= o.1) {
            open.pop();
        }
        if let Some(o) = open.last() {
            assert!(s.1 <= o.1 + 1e-3, "{s:?} overlaps {o:?} without nesting");
        }
        match s.2 {
            "delegate_node" => assert_eq!(
                open.last().map(|o| o.2),
                Some("delegate"),
                "node {s:?} outside its delegate call"
            ),
            "operator" | "delegate" => assert_eq!(
                open.last().map(|o| o.2),
                Some("method"),
                "{s:?} outside its method"
            ),
            _ => {}
        }
        open.push(s);
    }
}

#[test]
fn profile_writes_a_nested_chrome_trace_an_etdump_and_debug_outputs() {
    let dir = tmpdir("profile");
    let model = fixture("devtools/etrecord_cnn_xnnpack/model.pte");
    let input = fixture("devtools/etrecord_cnn_xnnpack/input.npy");
    let (etdp, trace) = (dir.join("p.etdp"), dir.join("p.json"));
    let (ok, out, err) = ptero(&[
        "profile",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--etdump",
        etdp.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
        "--debug-outputs",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ops = v["operators"].as_array().unwrap();
    assert!(!ops.is_empty(), "{out}");
    for o in ops {
        for k in [
            "name", "kind", "count", "total_ms", "mean_ms", "p50_ms", "p90_ms",
        ] {
            assert!(!o[k].is_null(), "operator row lacks {k}: {o}");
        }
    }
    assert!(
        ops.iter().any(|o| o["kind"] == "node"),
        "no delegate node rows: {out}"
    );
    let totals: Vec<f64> = ops
        .iter()
        .map(|o| o["total_ms"].as_f64().unwrap())
        .collect();
    assert!(
        totals.windows(2).all(|w| w[0] >= w[1]),
        "not sorted by total: {totals:?}"
    );

    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    for e in events {
        for k in ["name", "ph", "ts", "dur", "pid", "tid"] {
            assert!(!e[k].is_null(), "trace event lacks {k}: {e}");
        }
        assert_eq!(e["ph"], "X");
        assert!(e["dur"].as_f64().unwrap() >= 0.0);
    }
    let count = |cat: &str| events.iter().filter(|e| e["cat"] == cat).count();
    let named = |n: &str| events.iter().filter(|e| e["name"] == n).count();
    assert_eq!(named("Method::execute"), 3, "three traced runs: {t}");
    assert_eq!(named("Program::load_method"), 1, "the load: {t}");
    assert!(count("delegate") >= 3 && count("delegate_node") >= 3, "{t}");
    assert_nested(events);

    let dump = std::fs::read(&etdp).unwrap();
    let prefix = u32::from_le_bytes(dump[..4].try_into().unwrap()) as usize;
    assert_eq!(prefix + 4, dump.len(), "size prefix");
    assert_eq!(&dump[8..12], b"ED00", "file identifier");
    let debug = std::fs::metadata(dir.join("p.debug.bin")).unwrap().len();
    assert!(debug > 0, "debug outputs were asked for");
}

#[test]
fn official_inspector_reads_pteros_etdump() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("PTERO_REF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-ref/bin/python"));
    if !python.exists() {
        println!(
            "SKIPPED: official_inspector_reads_pteros_etdump needs the reference environment \
             ({} not found; see README, 'The reference toolchain')",
            python.display()
        );
        return;
    }
    for case in ["etrecord_cnn", "etrecord_cnn_xnnpack"] {
        let dir = tmpdir(&format!("inspector-{case}"));
        let etdp = dir.join("run.etdp");
        let (ok, _, err) = ptero(&[
            "profile",
            fixture(&format!("devtools/{case}/model.pte"))
                .to_str()
                .unwrap(),
            "--input",
            fixture(&format!("devtools/{case}/input.npy"))
                .to_str()
                .unwrap(),
            "--iterations",
            "2",
            "--etdump",
            etdp.to_str().unwrap(),
            "--debug-outputs",
        ]);
        assert!(ok, "{err}");
        let out = Command::new(&python)
            .arg(root.join("python/check_inspector.py"))
            .args(["--quiet", "--etdump"])
            .arg(&etdp)
            .arg("--etrecord")
            .arg(fixture(&format!("devtools/{case}/etrecord.bin")))
            .arg("--debug-buffer")
            .arg(dir.join("run.debug.bin"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{case}: the Inspector failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
        println!("{case}: {summary}");
    }
}
