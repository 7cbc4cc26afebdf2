//! `ptero`: run, inspect and benchmark ExecuTorch `.pte` programs.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use ptero::{npy, EValue, Error, Method, MethodMeta, Program, ScalarType, Tag, Tensor};

/// `println!` that exits quietly when stdout is closed (e.g. piped into `head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod inspect;
mod llm;

#[derive(Parser)]
#[command(
    name = "ptero",
    version,
    about = "Run PyTorch ExecuTorch (.pte) programs",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a method and print or save its outputs.
    Run {
        /// The .pte program.
        model: PathBuf,
        /// Method to run (default: forward, or the only method).
        #[arg(long)]
        method: Option<String>,
        /// Input .npy files, in order (repeat the flag).
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Write output i of the last run to DIR/output_<i>.npy.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Runs in one loaded program (state such as buffers carries over).
        #[arg(long, default_value_t = 1)]
        iterations: u32,
    },
    /// Describe a program: methods, inputs and outputs, operators, memory, segments.
    Inspect {
        model: PathBuf,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Generate text with a Llama-family program (from the official export_llm), or chat.
    Llm(llm::LlmArgs),
    /// Measure load time, latency and peak memory.
    Bench {
        model: PathBuf,
        #[arg(long)]
        method: Option<String>,
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Timed runs.
        #[arg(long, default_value_t = 20)]
        iterations: u32,
        /// Untimed runs first.
        #[arg(long, default_value_t = 3)]
        warmup: u32,
        /// Worker threads (kernels are single-threaded in this version; recorded in the report).
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            model,
            method,
            inputs,
            output_dir,
            iterations,
        } => run(
            &model,
            method.as_deref(),
            &inputs,
            output_dir.as_deref(),
            iterations,
        ),
        Command::Inspect { model, json } => inspect::inspect(&model, json),
        Command::Llm(args) => llm::llm(&args),
        Command::Bench {
            model,
            method,
            inputs,
            iterations,
            warmup,
            threads,
            json,
        } => bench(
            &model,
            method.as_deref(),
            &inputs,
            iterations,
            warmup,
            threads,
            json,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `forward` if present, else the only method.
fn pick_method(program: &Program, method: Option<&str>) -> Result<String, Error> {
    if let Some(m) = method {
        program.method_meta(m)?;
        return Ok(m.to_string());
    }
    let names = program.method_names();
    if names.contains(&"forward") || names.len() != 1 {
        program.method_meta("forward")?;
        return Ok("forward".into());
    }
    Ok(names[0].to_string())
}

/// Deterministic stand-in inputs: a fixed pattern in [-1, 1) for floats, small
/// non-negative integers for integer tensors (valid as indices), traced values for primitives.
fn default_input(meta: &MethodMeta, i: usize) -> Result<EValue, Error> {
    let io = &meta.inputs[i];
    match (&io.tag, &io.tensor) {
        (Tag::Tensor, Some(t)) => {
            let n: usize = t.sizes.iter().product();
            let pattern = |k: usize| ((k * 7919 + 13) % 2000) as f64 / 1000.0 - 1.0;
            let tensor = match t.dtype {
                ScalarType::Float => Tensor::from_slice(
                    &(0..n).map(|k| pattern(k) as f32).collect::<Vec<_>>(),
                    &t.sizes,
                )?,
                ScalarType::Double => {
                    Tensor::from_slice(&(0..n).map(pattern).collect::<Vec<_>>(), &t.sizes)?
                }
                ScalarType::Long => Tensor::from_slice(
                    &(0..n).map(|k| (k % 4) as i64).collect::<Vec<_>>(),
                    &t.sizes,
                )?,
                ScalarType::Int => Tensor::from_slice(
                    &(0..n).map(|k| (k % 4) as i32).collect::<Vec<_>>(),
                    &t.sizes,
                )?,
                ScalarType::Bool => {
                    Tensor::from_bools(&(0..n).map(|k| k % 2 == 0).collect::<Vec<_>>(), &t.sizes)?
                }
                dt => Tensor::zeros(dt, &t.sizes)?,
            };
            Ok(EValue::Tensor(tensor))
        }
        (tag, _) => {
            let v = io.value.clone().unwrap_or_default();
            Ok(match tag {
                Tag::Int => EValue::Int(v.parse().unwrap_or(0)),
                Tag::Double => EValue::Double(v.parse().unwrap_or(0.0)),
                Tag::Bool => EValue::Bool(v == "true"),
                Tag::String => EValue::String(v),
                _ => EValue::None,
            })
        }
    }
}

/// Loads the chosen method with every kernel and backend of this build.
fn load(program: &Program, method: Option<&str>) -> Result<Method, Error> {
    let name = pick_method(program, method)?;
    program.load_method(&name, &ptero::default_kernels(), &ptero::default_backends())
}

/// The method's inputs: from `.npy` files, or a deterministic pattern when none are given.
fn read_inputs(m: &Method, inputs: &[PathBuf], quiet: bool) -> Result<Vec<EValue>, Error> {
    let meta = m.meta();
    let name = m.name();
    let values = if inputs.is_empty() {
        if !quiet && meta.num_inputs() > 0 {
            eprintln!(
                "note: no --input given; filling {} input(s) of '{name}' with a deterministic pattern",
                meta.num_inputs()
            );
        }
        (0..meta.num_inputs())
            .map(|i| default_input(meta, i))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let tensor_inputs = meta
            .inputs
            .iter()
            .filter(|io| io.tag == Tag::Tensor)
            .count();
        if inputs.len() != meta.num_inputs() && inputs.len() != tensor_inputs {
            return Err(Error::Input {
                index: inputs.len(),
                message: format!(
                    "method '{name}' takes {} inputs ({} tensors), {} --input files were given",
                    meta.num_inputs(),
                    tensor_inputs,
                    inputs.len()
                ),
            });
        }
        let mut files = inputs.iter();
        let mut vals = Vec::new();
        for (i, io) in meta.inputs.iter().enumerate() {
            if io.tag == Tag::Tensor || inputs.len() == meta.num_inputs() {
                let path = files.next().ok_or_else(|| Error::Input {
                    index: i,
                    message: "missing".into(),
                })?;
                if io.tag == Tag::Tensor {
                    vals.push(EValue::Tensor(npy::read(path)?));
                } else {
                    // A 0-d array for a primitive input.
                    let t = npy::read(path)?;
                    vals.push(scalar_from_tensor(&t, io.tag).ok_or_else(|| Error::Input {
                        index: i,
                        message: format!(
                            "expected a 0-d array for a {} input, got {:?}",
                            io.tag.name(),
                            t.sizes()
                        ),
                    })?);
                }
            } else {
                vals.push(default_input(meta, i)?);
            }
        }
        vals
    };
    Ok(values)
}

fn scalar_from_tensor(t: &Tensor, tag: Tag) -> Option<EValue> {
    if t.numel() != 1 {
        return None;
    }
    let v = match t.dtype() {
        ScalarType::Long => t.as_slice::<i64>().ok()?[0] as f64,
        ScalarType::Int => t.as_slice::<i32>().ok()?[0] as f64,
        ScalarType::Double => t.as_slice::<f64>().ok()?[0],
        ScalarType::Float => t.as_slice::<f32>().ok()?[0] as f64,
        ScalarType::Bool => t.bytes()[0] as f64,
        _ => return None,
    };
    Some(match tag {
        Tag::Int => EValue::Int(v as i64),
        Tag::Double => EValue::Double(v),
        Tag::Bool => EValue::Bool(v != 0.0),
        _ => return None,
    })
}

fn scalar_tensor(v: &EValue) -> Option<Tensor> {
    match v {
        EValue::Int(i) => Tensor::from_slice(&[*i], &[]).ok(),
        EValue::Double(d) => Tensor::from_slice(&[*d], &[]).ok(),
        EValue::Bool(b) => Tensor::from_bools(&[*b], &[]).ok(),
        _ => None,
    }
}

fn run(
    model: &Path,
    method: Option<&str>,
    inputs: &[PathBuf],
    output_dir: Option<&Path>,
    iterations: u32,
) -> Result<(), Error> {
    let program = Program::from_file(model)?;
    let mut m = load(&program, method)?;
    let values = read_inputs(&m, inputs, false)?;
    for _ in 0..iterations.max(1) {
        m.set_inputs(&values)?;
        m.execute()?;
    }
    let outputs = m.outputs()?;
    match output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
            for (i, o) in outputs.iter().enumerate() {
                let path = dir.join(format!("output_{i}.npy"));
                match o {
                    EValue::Tensor(t) => npy::write(&path, t)?,
                    v => match scalar_tensor(v) {
                        Some(t) => npy::write(&path, &t)?,
                        None => eprintln!("note: output {i} is a {}, not saved", v.kind()),
                    },
                }
            }
            eprintln!("wrote {} output(s) to {}", outputs.len(), dir.display());
        }
        None => {
            for (i, o) in outputs.iter().enumerate() {
                outln!("output {i}: {}", describe(o));
            }
        }
    }
    Ok(())
}

fn describe(v: &EValue) -> String {
    match v {
        EValue::Tensor(t) => {
            let vals = leading_values(t, 8);
            format!(
                "{} {:?} [{}{}]",
                t.dtype(),
                t.sizes(),
                vals.join(", "),
                if t.numel() > 8 { ", ..." } else { "" }
            )
        }
        EValue::Int(i) => format!("int {i}"),
        EValue::Double(d) => format!("double {d}"),
        EValue::Bool(b) => format!("bool {b}"),
        other => other.kind().to_string(),
    }
}

fn leading_values(t: &Tensor, n: usize) -> Vec<String> {
    let take = t.numel().min(n);
    let es = t.dtype().size();
    (0..take)
        .map(|i| {
            let b = &t.bytes()[i * es..(i + 1) * es];
            match t.dtype() {
                ScalarType::Float => format!("{:.6}", f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ScalarType::Double => {
                    format!("{:.6}", f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                }
                ScalarType::Long => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])).to_string(),
                ScalarType::Int => i32::from_le_bytes(b.try_into().unwrap_or([0; 4])).to_string(),
                ScalarType::Bool => (b[0] != 0).to_string(),
                _ => format!("{b:02x?}"),
            }
        })
        .collect()
}

/// Peak resident memory of this process in MiB (Linux; 0 elsewhere).
pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn bench(
    model: &Path,
    method: Option<&str>,
    inputs: &[PathBuf],
    iterations: u32,
    warmup: u32,
    threads: u32,
    json: bool,
) -> Result<(), Error> {
    // Load time: reading the program and preparing the method, as the official
    // `load_program` + `load_method`; inputs are read afterwards.
    let t0 = Instant::now();
    let program = Program::from_file(model)?;
    let mut m = load(&program, method)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let values = read_inputs(&m, inputs, json)?;
    for _ in 0..warmup {
        m.set_inputs(&values)?;
        m.execute()?;
    }
    let mut times = Vec::with_capacity(iterations.max(1) as usize);
    for _ in 0..iterations.max(1) {
        m.set_inputs(&values)?;
        let t = Instant::now();
        m.execute()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let (min, median, p90) = (times[0], pct(0.5), pct(0.9));
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let rss = peak_rss_mb();
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
        });
        outln!("{o}");
    } else {
        outln!("model       {}", model.display());
        outln!(
            "method      {} ({} iterations after {} warm-up, {} thread)",
            m.name(),
            times.len(),
            warmup,
            threads
        );
        outln!("load        {load_ms:>10.3} ms");
        outln!("latency min {min:>10.3} ms");
        outln!("     median {median:>10.3} ms");
        outln!("        p90 {p90:>10.3} ms");
        outln!("peak RSS    {rss:>10.1} MiB");
    }
    Ok(())
}
