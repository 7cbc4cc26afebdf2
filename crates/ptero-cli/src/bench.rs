//! `ptero bench`: load time, latency and memory, optionally per operator and with the
//! event tracer on (interleaved with untraced runs, to measure what tracing costs).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ptero::devtools::{Recorder, RecorderOptions};
use ptero::Error;

use crate::{load, read_inputs, LoadArgs};

/// A memory figure of this process from `/proc/self/status` in MiB (Linux; 0 elsewhere).
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident memory of this process in MiB (Linux; 0 elsewhere).
pub(crate) fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident memory of this process now, in MiB (Linux; 0 elsewhere).
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// What `bench` measures besides plain latency.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extras {
    /// Per-operator times, from extra observed runs after the timed ones.
    pub profile: bool,
    /// Traced runs alternating with the timed ones.
    pub tracer: bool,
}

/// The `p` quantile of `times` (nearest rank), sorting them; `times` is not empty.
fn percentile(times: &mut [f64], p: f64) -> f64 {
    times.sort_by(|a, b| a.total_cmp(b));
    times[((times.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn bench(
    model: &Path,
    method: Option<&str>,
    inputs: &[PathBuf],
    (iterations, warmup): (u32, u32),
    json: bool,
    Extras { profile, tracer }: Extras,
    load_args: &LoadArgs,
) -> Result<(), Error> {
    // Load time: reading the program and preparing the method, as the official
    // `load_program` + `load_method`; inputs are read afterwards.
    let rss0 = rss_mb();
    let t0 = Instant::now();
    let (program, tests) = load_args.open_bundled(model)?;
    let mut m = load(&program, method, load_args)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let threads = m.threads();
    let values = read_inputs(&m, inputs, tests.as_deref(), json)?;
    for _ in 0..warmup {
        m.set_inputs(&values)?;
        m.execute()?;
    }
    // `iterations` is bounded by MAX_ITERATIONS, so this is at most a few MiB.
    let mut times = Vec::with_capacity(iterations.max(1) as usize);
    let mut traced = Vec::with_capacity(if tracer { times.capacity() } else { 0 });
    let mut recorder = Recorder::new(RecorderOptions::default());
    for _ in 0..iterations.max(1) {
        m.set_inputs(&values)?;
        let t = Instant::now();
        m.execute()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if tracer {
            m.set_inputs(&values)?;
            let t = Instant::now();
            m.execute_observed(&mut recorder)?;
            traced.push(t.elapsed().as_secs_f64() * 1e3);
            // Only the cost of recording matters here, not the record.
            recorder.clear();
        }
    }
    let traced_median = (!traced.is_empty()).then(|| percentile(&mut traced, 0.5));
    let (median, p90) = (percentile(&mut times, 0.5), percentile(&mut times, 0.9));
    let min = times[0];
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let rss = peak_rss_mb();
    // As the official runtime's scripts measure it (`time_ref.py`): resident memory
    // after the runs less before the program was opened.
    let growth = rss_mb() - rss0;
    let ops = if profile {
        let mut p = OpProfile::default();
        for _ in 0..iterations.max(1) {
            m.set_inputs(&values)?;
            m.execute_observed(&mut p)?;
        }
        p.rows(iterations.max(1))
    } else {
        Default::default()
    };
    let (ops, instrs) = ops;
    if json {
        let o = serde_json::json!({
            "model": model.display().to_string(),
            "method": m.name(),
            "load_ms": load_ms,
            "min_ms": min,
            "median_ms": median,
            "p90_ms": p90,
            "mean_ms": mean,
            "iterations": times.len(),
            "warmup": warmup,
            "threads": threads,
            "peak_rss_mb": rss,
            "rss_growth_mb": growth,
        });
        let mut o = o;
        if let Some(t) = traced_median {
            o["traced_median_ms"] = serde_json::json!(t);
            o["tracer_overhead_pct"] = serde_json::json!(100.0 * (t / median - 1.0));
        }
        if profile {
            o["profile"] = serde_json::Value::Array(
                ops.iter()
                    .map(|r| serde_json::json!({"op": r.0, "calls": r.1, "ms_per_run": r.2}))
                    .collect(),
            );
            o["instructions"] = serde_json::Value::Array(
                instrs
                    .iter()
                    .map(|r| serde_json::json!({"chain": r.0, "pc": r.1, "op": r.2, "ms_per_run": r.3}))
                    .collect(),
            );
        }
        outln!("{o}");
    } else {
        outln!("model       {}", model.display());
        outln!(
            "method      {} ({} iterations after {} warm-up, {} threads)",
            m.name(),
            times.len(),
            warmup,
            threads
        );
        outln!("load        {load_ms:>10.3} ms");
        outln!("latency min {min:>10.3} ms");
        outln!("     median {median:>10.3} ms");
        outln!("        p90 {p90:>10.3} ms");
        if let Some(t) = traced_median {
            outln!(
                "traced med. {t:>10.3} ms (event tracer on: {:+.1}%)",
                100.0 * (t / median - 1.0)
            );
        }
        outln!("peak RSS    {rss:>10.1} MiB");
        outln!("RSS growth  {growth:>10.1} MiB (after the runs, less before loading)");
        if profile {
            let total: f64 = ops.iter().map(|r| r.2).sum();
            outln!("");
            outln!(
                "{:<44} {:>7} {:>11} {:>7}",
                "operator",
                "calls",
                "ms per run",
                "share"
            );
            for (op, calls, ms) in &ops {
                outln!(
                    "{op:<44} {calls:>7} {ms:>11.3} {:>6.1}%",
                    100.0 * ms / total.max(1e-12)
                );
            }
        }
    }
    Ok(())
}

/// Time per operator over observed runs.
#[derive(Default)]
struct OpProfile {
    start: Option<Instant>,
    /// Operator name, calls, total seconds.
    by_op: Vec<(String, u64, f64)>,
    /// Chain, instruction, operator, total seconds; in execution order.
    by_instr: Vec<(usize, usize, String, f64)>,
}

impl ptero::Observer for OpProfile {
    fn begin(&mut self, _chain: usize, _pc: usize) {
        self.start = Some(Instant::now());
    }
    fn end(&mut self, chain: usize, pc: usize, name: &str) {
        let dt = self.start.take().map_or(0.0, |t| t.elapsed().as_secs_f64());
        match self.by_instr.iter_mut().find(|r| r.0 == chain && r.1 == pc) {
            Some(r) => r.3 += dt,
            None => self.by_instr.push((chain, pc, name.to_string(), dt)),
        }
        match self.by_op.iter_mut().find(|r| r.0 == name) {
            Some(r) => {
                r.1 += 1;
                r.2 += dt;
            }
            None => self.by_op.push((name.to_string(), 1, dt)),
        }
    }
}

impl OpProfile {
    /// (operator, calls per run, ms per run), slowest first; then (chain, instruction,
    /// operator, ms per run) in execution order.
    #[allow(clippy::type_complexity)]
    fn rows(mut self, runs: u32) -> (Vec<(String, u64, f64)>, Vec<(usize, usize, String, f64)>) {
        let runs = runs.max(1);
        let instrs = core::mem::take(&mut self.by_instr)
            .into_iter()
            .map(|(c, pc, op, s)| (c, pc, op, s * 1e3 / runs as f64))
            .collect();
        self.by_op.sort_by(|a, b| b.2.total_cmp(&a.2));
        let ops = self
            .by_op
            .into_iter()
            .map(|(op, calls, s)| (op, calls / runs as u64, s * 1e3 / runs as f64))
            .collect();
        (ops, instrs)
    }
}
