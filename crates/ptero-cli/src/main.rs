//! `ptero`: run, inspect and benchmark ExecuTorch `.pte` programs.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(crate) use bench::peak_rss_mb;

use clap::{Parser, Subcommand};
use ptero::devtools::TestSuite;
use ptero::{npy, EValue, Error, Limits, Method, MethodMeta, Program, ScalarType, Tag, Tensor};

/// `println!` that exits quietly when stdout is closed (e.g. piped into `head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod bench;
mod inspect;
mod llm;
mod profile;
mod test_cmd;

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

/// Most `--iterations` and `--warmup` runs: bench keeps one timing per iteration, and a
/// run this long is a mistake rather than a measurement.
const MAX_ITERATIONS: i64 = 1_000_000;

/// How the program file is loaded and what it may cost: shared by every command.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct LoadArgs {
    /// An external data file (.ptd) holding weights the program was exported without
    /// (ExecuTorch's external constants); repeat for several.
    #[arg(long = "data", value_name = "FILE.ptd")]
    pub data: Vec<std::path::PathBuf>,
    /// Read the program into memory instead of memory-mapping it (a mapped file that is
    /// truncated while in use kills the process with SIGBUS; pipes cannot be mapped).
    #[arg(long)]
    pub no_mmap: bool,
    /// Memory limit: planned memory, input/output buffers, kernel scratch and inputs
    /// (and the file itself with --no-mmap). Bytes, or with a K, M, G or T suffix.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub max_memory: Option<usize>,
    /// Stop executing once this many seconds have passed since the method was loaded
    /// (checked between instructions and inside long kernels).
    #[arg(long, value_parser = parse_seconds, value_name = "SECONDS")]
    pub timeout: Option<std::time::Duration>,
    /// Threads kernels split their work over, this one included (default: one per
    /// physical core; 1 runs everything on the calling thread).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
}

fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(v)
        .map_err(|_| format!("'{s}' is not a usable number of seconds (finite, not negative)"))
}

impl LoadArgs {
    /// Threads to run on: `--threads`, or one per physical core.
    pub fn threads(&self) -> usize {
        self.threads
            .map_or_else(ptero::default_threads, |t| t as usize)
    }

    /// The worker pool for `--threads` (none for a single thread).
    pub fn pool(&self) -> Option<std::sync::Arc<dyn ptero::Parallel + Send + Sync>> {
        let n = self.threads();
        (n > 1).then(|| {
            std::sync::Arc::new(ptero::ThreadPool::new(n))
                as std::sync::Arc<dyn ptero::Parallel + Send + Sync>
        })
    }

    pub fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        if let Some(m) = self.max_memory {
            limits.max_memory = m;
        }
        limits
    }

    /// Opens `model` as the flags say.
    pub fn open(&self, model: &Path) -> Result<Program, Error> {
        Ok(self.open_bundled(model)?.0)
    }

    /// Opens `model`, a `.pte` or a bundled program (`.bpte`: its program, and its test
    /// suites).
    pub fn open_bundled(&self, model: &Path) -> Result<(Program, Option<Vec<TestSuite>>), Error> {
        let mode = if self.no_mmap {
            ptero::LoadMode::Read
        } else {
            ptero::LoadMode::Mmap
        };
        let (mut program, tests) = ptero::open_program_file(model, mode, self.limits().max_memory)?;
        for d in &self.data {
            program.add_data_file(d)?;
        }
        Ok((program, tests))
    }
}

/// `1234`, `512K`, `1.5G`, `2GiB`: binary multiples.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown unit in '{s}' (use K, M, G or T)")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes (e.g. 4096, 512M, 2G)"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > usize::MAX as f64 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes as usize)
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
        #[arg(long, default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(0..=MAX_ITERATIONS))]
        iterations: u32,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Describe a program: methods, inputs and outputs, operators, memory, segments.
    Inspect {
        model: PathBuf,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Generate text with a Llama-family program (from the official export_llm), or chat.
    Llm {
        #[command(flatten)]
        args: llm::LlmArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Profile a method: time per operator and per delegate node (table), and optionally
    /// an ETDump for ExecuTorch's Inspector and a Chrome trace.
    Profile {
        #[command(flatten)]
        args: profile::ProfileArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run every test case of a bundled program (.bpte) and compare the outputs; exits
    /// non-zero if any case fails.
    Test {
        #[command(flatten)]
        args: test_cmd::TestArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Measure load time, latency and peak memory.
    Bench {
        model: PathBuf,
        #[arg(long)]
        method: Option<String>,
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Timed runs.
        #[arg(long, default_value_t = 20,
              value_parser = clap::value_parser!(u32).range(0..=MAX_ITERATIONS))]
        iterations: u32,
        /// Untimed runs first.
        #[arg(long, default_value_t = 3,
              value_parser = clap::value_parser!(u32).range(0..=MAX_ITERATIONS))]
        warmup: u32,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// After timing, run the iterations again timing every operator, and print the
        /// time per operator (JSON: a "profile" list).
        #[arg(long)]
        profile: bool,
        /// Also time every iteration with the event tracer on (as `ptero profile`
        /// records, without values), alternating with the untraced ones, and print both
        /// medians and the tracer's overhead (JSON: traced_median_ms, tracer_overhead_pct).
        #[arg(long)]
        tracer: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// Exit code for a bug in Ptero itself (BSD's EX_SOFTWARE).
const EXIT_INTERNAL: u8 = 70;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Last line of defence: no input should make Ptero panic (the fuzzer hunts for any
    // that does), but if one slips through, the user gets a one-line error and an exit
    // code that says "bug", not a backtrace. The hook only records the message: panics
    // that a library catches and turns into an error (third-party tokenizer code) print
    // nothing. Set PTERO_BACKTRACE=1 to see Rust's own panic output.
    let quiet = std::env::var_os("PTERO_BACKTRACE").is_none();
    if quiet {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = format!("{location}: {message}");
            }
        }));
    }
    match std::panic::catch_unwind(move || run_command(cli)) {
        Ok(code) => code,
        Err(_) => {
            if quiet {
                let what = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
                eprintln!(
                    "error: internal error{what} (this is a bug in Ptero; please report it \
                     with the input that caused it)"
                );
            }
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

/// The last panic's location and message, printed if it reaches `main`.
static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn run_command(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run {
            model,
            method,
            inputs,
            output_dir,
            iterations,
            load,
        } => run(
            &model,
            method.as_deref(),
            &inputs,
            output_dir.as_deref(),
            iterations,
            &load,
        ),
        Command::Inspect { model, json, load } => inspect::inspect(&model, json, &load),
        Command::Llm { args, load } => llm::llm(&args, &load),
        Command::Profile { args, load } => profile::profile(&args, &load),
        Command::Test { args, load } => test_cmd::test(&args, &load),
        Command::Bench {
            model,
            method,
            inputs,
            iterations,
            warmup,
            json,
            profile,
            tracer,
            load,
        } => bench::bench(
            &model,
            method.as_deref(),
            &inputs,
            (iterations, warmup),
            json,
            bench::Extras { profile, tracer },
            &load,
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

/// Memory the method already owns: planned buffers and its own input/output buffers.
fn method_bytes(meta: &MethodMeta) -> usize {
    let planned = meta
        .planned_buffers
        .iter()
        .fold(0usize, |a, &b| a.saturating_add(b));
    meta.inputs
        .iter()
        .chain(&meta.outputs)
        .filter_map(|io| io.tensor.as_ref().filter(|t| !t.planned))
        .fold(planned, |a, t| a.saturating_add(t.nbytes))
}

/// What inputs may still take under the memory limit.
struct Budget {
    limit: usize,
    left: usize,
}

impl Budget {
    fn for_method(m: &Method) -> Budget {
        let limit = m.limits().max_memory;
        Budget {
            limit,
            left: limit.saturating_sub(method_bytes(m.meta())),
        }
    }

    fn over(&self, what: &str, bytes: usize) -> String {
        format!(
            "{what} of {bytes} bytes exceeds the memory limit ({} bytes, of which {} are \
             left after the method's own memory and earlier inputs; raise it with \
             --max-memory)",
            self.limit, self.left
        )
    }
}

/// Deterministic stand-in inputs: a fixed pattern in [-1, 1) for floats, small
/// non-negative integers for integer tensors (valid as indices), traced values for primitives.
fn default_input(meta: &MethodMeta, i: usize, budget: &mut Budget) -> Result<EValue, Error> {
    let io = &meta.inputs[i];
    let input_err = |message: String| Error::Input { index: i, message };
    match (&io.tag, &io.tensor) {
        (Tag::Tensor, Some(t)) => {
            // The declared shape comes from the file: size it with checked arithmetic and
            // allocate fallibly, against the limit. Zero dims are skipped so that every
            // partial product (what `numel` computes later) is known to fit.
            let nbytes = t
                .sizes
                .iter()
                .filter(|&&d| d != 0)
                .try_fold(t.dtype.size(), |a, &d| a.checked_mul(d))
                .map(|b| if t.sizes.contains(&0) { 0 } else { b })
                .ok_or_else(|| {
                    input_err(format!(
                        "default input of shape {:?} is too large (its size in bytes overflows)",
                        t.sizes
                    ))
                })?;
            if nbytes > budget.left {
                return Err(input_err(budget.over("default input", nbytes)));
            }
            let mut tensor = Tensor::zeros(t.dtype, &t.sizes).map_err(|_| {
                input_err(format!(
                    "cannot allocate the default input of {nbytes} bytes"
                ))
            })?;
            budget.left -= nbytes;
            let pattern = |k: usize| ((k % 2000 * 7919 + 13) % 2000) as f64 / 1000.0 - 1.0;
            fn fill<const N: usize>(b: &mut [u8], f: impl Fn(usize) -> [u8; N]) {
                for (k, c) in b.chunks_exact_mut(N).enumerate() {
                    c.copy_from_slice(&f(k));
                }
            }
            let b = tensor.bytes_mut();
            match t.dtype {
                ScalarType::Float => fill(b, |k| (pattern(k) as f32).to_le_bytes()),
                ScalarType::Double => fill(b, |k| pattern(k).to_le_bytes()),
                ScalarType::Long => fill(b, |k| ((k % 4) as i64).to_le_bytes()),
                ScalarType::Int => fill(b, |k| ((k % 4) as i32).to_le_bytes()),
                ScalarType::Bool => fill(b, |k| [u8::from(k % 2 == 0)]),
                _ => {}
            }
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
fn load(program: &Program, method: Option<&str>, load_args: &LoadArgs) -> Result<Method, Error> {
    load_with(program, method, load_args, true)
}

/// [`load`], choosing whether instructions are fused.
fn load_with(
    program: &Program,
    method: Option<&str>,
    load: &LoadArgs,
    fuse: bool,
) -> Result<Method, Error> {
    let name = pick_method(program, method)?;
    // PTERO_CHANNELS_LAST=0 keeps every value in the exported dim order (for comparing
    // the layout pass against none).
    let options = ptero::LoadOptions {
        limits: load.limits(),
        channels_last: std::env::var("PTERO_CHANNELS_LAST").map_or(true, |v| v != "0"),
        fuse,
    };
    let mut m = program.load_method_with(
        &name,
        &ptero::default_kernels(),
        &ptero::default_backends(),
        &options,
    )?;
    if let Some(t) = load.timeout {
        m.set_interrupt(Some(std::sync::Arc::new(ptero::Deadline::after(t))));
    }
    m.set_parallel(load.pool())?;
    Ok(m)
}

/// Reads an input file within the budget.
fn read_npy(path: &Path, budget: &mut Budget) -> Result<Tensor, Error> {
    let t = npy::read_with_limit(path, budget.left).map_err(|e| match e {
        // npy only knows the bytes it was given; say where they went.
        Error::InvalidArgument(m) if m.contains("over the memory limit") => {
            Error::InvalidArgument(format!(
                "{m} (what is left of the {}-byte memory limit after the method's own \
                 memory and earlier inputs; raise it with --max-memory)",
                budget.limit
            ))
        }
        e => e,
    })?;
    budget.left = budget.left.saturating_sub(t.bytes().len());
    Ok(t)
}

/// The method's inputs: from `.npy` files, or a deterministic pattern when none are given.
fn read_inputs(
    m: &Method,
    inputs: &[PathBuf],
    bundled: Option<&[TestSuite]>,
    quiet: bool,
) -> Result<Vec<EValue>, Error> {
    let meta = m.meta();
    let name = m.name();
    let mut budget = Budget::for_method(m);
    let case = bundled
        .and_then(|s| s.iter().find(|s| s.method_name == name))
        .and_then(|s| s.cases.first());
    let values = if let (true, Some(case)) = (inputs.is_empty(), case) {
        if !quiet {
            eprintln!(
                "note: no --input given; using the bundled program's first test case of '{name}'"
            );
        }
        case.inputs.clone()
    } else if inputs.is_empty() {
        if !quiet && meta.num_inputs() > 0 {
            eprintln!(
                "note: no --input given; filling {} input(s) of '{name}' with a deterministic pattern",
                meta.num_inputs()
            );
        }
        (0..meta.num_inputs())
            .map(|i| default_input(meta, i, &mut budget))
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
                let t = read_npy(path, &mut budget)?;
                if io.tag == Tag::Tensor {
                    vals.push(EValue::Tensor(t));
                } else {
                    // A 0-d array for a primitive input.
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
                vals.push(default_input(meta, i, &mut budget)?);
            }
        }
        vals
    };
    Ok(values)
}

fn scalar_from_tensor(t: &Tensor, tag: Tag) -> Option<EValue> {
    if !t.sizes().iter().all(|&d| d == 1) {
        return None;
    }
    // Integers stay exact for an Int input; `as` saturates the rest, never panics.
    let (int, v) = match t.dtype() {
        ScalarType::Long => {
            let i = *t.as_slice::<i64>().ok()?.first()?;
            (i, i as f64)
        }
        ScalarType::Int => {
            let i = *t.as_slice::<i32>().ok()?.first()?;
            (i64::from(i), f64::from(i))
        }
        ScalarType::Double => {
            let d = *t.as_slice::<f64>().ok()?.first()?;
            (d as i64, d)
        }
        ScalarType::Float => {
            let d = f64::from(*t.as_slice::<f32>().ok()?.first()?);
            (d as i64, d)
        }
        ScalarType::Bool => {
            let b = i64::from(*t.bytes().first()? != 0);
            (b, b as f64)
        }
        _ => return None,
    };
    Some(match tag {
        Tag::Int => EValue::Int(int),
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
    load_args: &LoadArgs,
) -> Result<(), Error> {
    // Before any work: a file where the directory should be is a usage error.
    if let Some(dir) = output_dir {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "--output-dir {}: exists and is not a directory",
                dir.display()
            )));
        }
    }
    let (program, tests) = load_args.open_bundled(model)?;
    let mut m = load(&program, method, load_args)?;
    let values = read_inputs(&m, inputs, tests.as_deref(), false)?;
    for _ in 0..iterations.max(1) {
        m.set_inputs(&values)?;
        m.execute()?;
    }
    let outputs = m.outputs()?;
    match output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot create the output directory {}: {e}",
                    dir.display()
                ))
            })?;
            let mut written = 0;
            for (i, o) in outputs.iter().enumerate() {
                let path = dir.join(format!("output_{i}.npy"));
                match o {
                    EValue::Tensor(t) => npy::write(&path, t)?,
                    v => match scalar_tensor(v) {
                        Some(t) => npy::write(&path, &t)?,
                        None => {
                            eprintln!("note: output {i} is a {}, not saved", v.kind());
                            continue;
                        }
                    },
                }
                written += 1;
            }
            eprintln!("wrote {written} output(s) to {}", dir.display());
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
                if elements(t) > 8 { ", ..." } else { "" }
            )
        }
        EValue::Int(i) => format!("int {i}"),
        EValue::Double(d) => format!("double {d}"),
        EValue::Bool(b) => format!("bool {b}"),
        other => other.kind().to_string(),
    }
}

/// Element count from the data length (a product of the sizes could overflow for an
/// empty tensor with huge dimensions).
fn elements(t: &Tensor) -> usize {
    t.bytes().len() / t.dtype().size().max(1)
}

fn leading_values(t: &Tensor, n: usize) -> Vec<String> {
    let take = elements(t).min(n);
    let es = t.dtype().size();
    t.bytes()
        .chunks_exact(es.max(1))
        .take(take)
        .map(|b| match t.dtype() {
            ScalarType::Float => {
                format!("{:.6}", f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            }
            ScalarType::Double => {
                format!("{:.6}", f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            }
            ScalarType::Long => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])).to_string(),
            ScalarType::Int => i32::from_le_bytes(b.try_into().unwrap_or([0; 4])).to_string(),
            ScalarType::Bool => b.iter().any(|&x| x != 0).to_string(),
            _ => format!("{b:02x?}"),
        })
        .collect()
}
