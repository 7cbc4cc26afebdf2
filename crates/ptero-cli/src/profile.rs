//! `ptero profile`: per-operator (and per delegate node) times from the event tracer,
//! written as a table, an ETDump and a Chrome trace.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ptero::devtools::{
    chrome_trace, write_etdump, EtdumpOptions, EventKind, Recorder, RecorderOptions, ValueFilter,
};
use ptero::Error;

use crate::LoadArgs;

#[derive(clap::Args, Debug)]
pub(crate) struct ProfileArgs {
    /// The .pte program (or a bundled .bpte: its first test case is the input).
    model: PathBuf,
    #[arg(long)]
    method: Option<String>,
    /// Input .npy files, in order (repeat the flag).
    #[arg(long = "input")]
    inputs: Vec<PathBuf>,
    /// Traced runs.
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=crate::MAX_ITERATIONS))]
    iterations: u32,
    /// Untraced runs first.
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=crate::MAX_ITERATIONS))]
    warmup: u32,
    /// Write an ETDump (read by ExecuTorch's Inspector) here.
    #[arg(long, value_name = "OUT.etdp")]
    etdump: Option<PathBuf>,
    /// Write a Chrome trace (Perfetto, chrome://tracing) here.
    #[arg(long, value_name = "OUT.json")]
    trace: Option<PathBuf>,
    /// Keep every instruction's outputs (debug events; load-time fusion is switched off
    /// so that each instruction has its own). Their bytes go to the debug buffer file.
    #[arg(long)]
    debug_outputs: bool,
    /// Where the debug buffer goes (default: the ETDump's path with `.debug.bin`).
    #[arg(long, value_name = "FILE")]
    debug_buffer: Option<PathBuf>,
    /// Keep outputs only of instructions in START..END.
    #[arg(long, value_name = "START..END", value_parser = parse_range)]
    debug_range: Option<(usize, usize)>,
    /// Keep outputs only of operators whose name contains this.
    #[arg(long, value_name = "NAME")]
    debug_op: Option<String>,
    /// Write the planned buffers as allocation events in the ETDump (the official
    /// Inspector 1.5 cannot read a file that has them).
    #[arg(long)]
    etdump_allocations: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("'{s}' is not a range START..END"))?;
    let a: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not an index"))?;
    let b: usize = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not an index"))?;
    if b <= a {
        return Err(format!("empty range {s}"));
    }
    Ok((a, b))
}

pub(crate) fn profile(args: &ProfileArgs, load_args: &LoadArgs) -> Result<(), Error> {
    let debug = args.debug_outputs || args.debug_range.is_some() || args.debug_op.is_some();
    let mut recorder = Recorder::new(RecorderOptions {
        values: ValueFilter {
            enabled: debug,
            instructions: args.debug_range,
            operator: args.debug_op.clone(),
        },
        // Kept outputs count against the memory limit like everything else.
        max_debug_bytes: load_args.limits().max_memory,
        ..RecorderOptions::default()
    });
    let t0 = recorder.now();
    let (program, tests) = load_args.open_bundled(&args.model)?;
    let mut m = crate::load_with(&program, args.method.as_deref(), load_args, !debug)?;
    let t1 = recorder.now();
    recorder.record_load(m.name(), t0, t1, m.planned_buffers());
    let values = crate::read_inputs(&m, &args.inputs, tests.as_deref(), args.json)?;
    for _ in 0..args.warmup {
        m.set_inputs(&values)?;
        m.execute()?;
    }
    let wall = Instant::now();
    for _ in 0..args.iterations {
        m.set_inputs(&values)?;
        m.execute_observed(&mut recorder)?;
    }
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    let stats = recorder.operator_stats();
    let runs = recorder.executions_ms();
    let mean_run = runs.iter().sum::<f64>() / runs.len().max(1) as f64;
    let dropped = recorder.debug_values_dropped();
    if dropped > 0 {
        eprintln!(
            "warning: {dropped} instruction output(s) were not kept: the debug buffer reached \
             the memory limit ({} bytes); narrow it with --debug-range or --debug-op, use \
             fewer --iterations, or raise --max-memory",
            load_args.limits().max_memory
        );
    }

    let mut written = Vec::new();
    if let Some(path) = &args.etdump {
        let bytes = write_etdump(
            &recorder,
            EtdumpOptions {
                allocations: args.etdump_allocations,
            },
        );
        write(path, &bytes)?;
        written.push(("etdump", path.clone()));
        if debug {
            let buf = args
                .debug_buffer
                .clone()
                .unwrap_or_else(|| path.with_extension("debug.bin"));
            write(&buf, recorder.debug_buffer())?;
            written.push(("debug_buffer", buf));
        }
    } else if let (true, Some(buf)) = (debug, &args.debug_buffer) {
        write(buf, recorder.debug_buffer())?;
        written.push(("debug_buffer", buf.clone()));
    }
    if let Some(path) = &args.trace {
        write(path, chrome_trace(&recorder).as_bytes())?;
        written.push(("trace", path.clone()));
    }

    let kind = |k: EventKind| match k {
        EventKind::Operator => "operator",
        EventKind::Delegate => "delegate",
        EventKind::Node => "node",
        EventKind::Method => "method",
    };
    if args.json {
        let o = serde_json::json!({
            "model": args.model.display().to_string(),
            "method": m.name(),
            "iterations": args.iterations,
            "threads": m.threads(),
            "mean_run_ms": mean_run,
            "debug_values_dropped": dropped,
            "wall_ms": wall_ms,
            "operators": stats.iter().map(|s| serde_json::json!({
                "name": s.name,
                "kind": kind(s.kind),
                "count": s.count,
                "total_ms": s.total_ms,
                "mean_ms": s.mean_ms,
                "p50_ms": s.p50_ms,
                "p90_ms": s.p90_ms,
                "share": s.share,
            })).collect::<Vec<_>>(),
            "files": written.iter().map(|(k, p)| ((*k).to_string(), serde_json::Value::String(p.display().to_string()))).collect::<serde_json::Map<_, _>>(),
        });
        outln!("{o}");
        return Ok(());
    }
    outln!(
        "{} '{}': {} traced runs after {} warm-up, {} threads, {mean_run:.3} ms per run",
        args.model.display(),
        m.name(),
        args.iterations,
        args.warmup,
        m.threads()
    );
    outln!(
        "{:<48} {:>6} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "operator",
        "count",
        "total ms",
        "mean ms",
        "p50 ms",
        "p90 ms",
        "share"
    );
    for s in &stats {
        // Delegate nodes are part of their delegate call's time: indented under it.
        let name = match s.kind {
            EventKind::Node => format!("  {} (node)", s.name),
            EventKind::Delegate => format!("{} (delegate)", s.name),
            _ => s.name.clone(),
        };
        outln!(
            "{:<48} {:>6} {:>10.3} {:>9.4} {:>9.4} {:>9.4} {:>6.1}%",
            truncate(&name, 48),
            s.count,
            s.total_ms,
            s.mean_ms,
            s.p50_ms,
            s.p90_ms,
            s.share
        );
    }
    for (what, p) in &written {
        eprintln!("wrote {what} {}", p.display());
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut t: String = s.chars().take(n - 1).collect();
    t.push('…');
    t
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
