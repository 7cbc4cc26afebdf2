//! Ptero's structure-aware fuzzer, as a library: deterministic hostile cases and the code
//! that runs one. The `ptero-fuzz` binary adds the supervisor (watchdog, memory limit,
//! reproducers); tests use the library directly.
//!
//! ```no_run
//! use ptero_fuzz::Fuzzer;
//! let fuzzer = Fuzzer::new(1, None);
//! for index in 0..100 {
//!     let program = fuzzer.case(index);
//!     let _ = fuzzer.run(&program.bytes); // errors are expected; panics are bugs
//! }
//! ```
#![forbid(unsafe_code)]

pub mod gen;
pub mod rng;
pub mod schema;
pub mod text;

use std::path::{Path, PathBuf};

use ptero_runtime::{EValue, Error, KernelRegistry, Limits, Program, ScalarType, Tensor};

use crate::gen::{kernel_program, mutate_bytes, random_program, Kind};
use crate::rng::Rng;
use crate::schema::Signature;

/// Fixtures larger than this are too slow to run millions of times.
const MAX_FIXTURE_BYTES: u64 = 300_000;

/// Elements of one default input the runner fills; bigger declared inputs are skipped.
const MAX_INPUT_ELEMENTS: usize = 1 << 20;

/// What a case is, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKind {
    /// One kernel call with hostile arguments.
    Kernel,
    /// Several instructions: kernels, moves, frees, jumps, delegates.
    Program,
    /// A committed fixture with damaged bytes.
    Fixture,
    /// A tokenizer file (Hugging Face JSON, tiktoken, SentencePiece), damaged.
    Tokenizer,
    /// A chat template assembled from hostile fragments.
    Template,
    /// A committed bundled program (`.bpte`) with damaged bytes: its test cases run.
    Bundled,
}

impl CaseKind {
    pub fn name(self) -> &'static str {
        match self {
            CaseKind::Kernel => "kernel",
            CaseKind::Program => "program",
            CaseKind::Fixture => "fixture",
            CaseKind::Tokenizer => "tokenizer",
            CaseKind::Template => "template",
            CaseKind::Bundled => "bundled",
        }
    }
}

/// One generated case: a `.pte` file's bytes.
#[derive(Debug, Clone)]
pub struct Case {
    pub kind: CaseKind,
    /// The operator a kernel case calls.
    pub op: Option<String>,
    pub bytes: Vec<u8>,
}

/// Generates and runs cases; everything is a pure function of the seed and the case index.
pub struct Fuzzer {
    seed: u64,
    kernels: KernelRegistry,
    signatures: Vec<Signature>,
    fixtures: Vec<(PathBuf, Vec<u8>)>,
    bundled: Vec<(PathBuf, Vec<u8>)>,
    limits: Limits,
    only: Option<CaseKind>,
}

/// The committed fixtures, found from this crate's source directory.
pub fn default_fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    vec![root.join("tests/fixtures"), root.join("models")]
}

fn find_ptes(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && depth < 3 && p.file_name().is_some_and(|n| n != "big") {
            find_ptes(&p, out, depth + 1);
        } else if p.extension().is_some_and(|e| e == "pte" || e == "bpte") {
            out.push(p);
        }
    }
}

impl Fuzzer {
    /// Learns kernel signatures and reads the fixtures (`None`: the committed ones).
    pub fn new(seed: u64, fixture_dirs: Option<&[PathBuf]>) -> Fuzzer {
        let kernels = ptero_kernels::portable();
        // Smaller than the defaults so that a case that loops reaches its limit in
        // milliseconds: the limits are what is tested, not how long they take.
        let limits = Limits {
            max_memory: 256 << 20,
            max_instructions: 200_000,
            loop_work_allowance: 1 << 20,
            ..Limits::default()
        };
        let mut paths = Vec::new();
        let dirs = fixture_dirs.map_or_else(default_fixture_dirs, |d| d.to_vec());
        for d in &dirs {
            find_ptes(d, &mut paths, 0);
        }
        let (bundled, fixtures) = paths
            .into_iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() <= MAX_FIXTURE_BYTES))
            .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
            .partition(|(_, b)| ptero_devtools::is_bundled_program(b));
        let mut f = Fuzzer {
            seed,
            kernels,
            signatures: Vec::new(),
            fixtures,
            bundled,
            limits,
            only: None,
        };
        let names: Vec<String> = f.kernels.names().map(String::from).collect();
        let run = |b: &[u8]| f.run(b);
        let signatures = names.iter().map(|n| schema::learn(n, &run)).collect();
        f.signatures = signatures;
        f
    }

    /// Generates only cases of `kind` (`None`: every kind).
    pub fn only(mut self, kind: Option<CaseKind>) -> Fuzzer {
        self.only = kind;
        self
    }

    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    pub fn num_fixtures(&self) -> usize {
        self.fixtures.len()
    }

    /// How many bundled programs (`.bpte`) the fixture cases mutate.
    pub fn num_bundled(&self) -> usize {
        self.bundled.len()
    }

    /// Case `index`.
    pub fn case(&self, index: u64) -> Case {
        let mut rng = Rng::for_case(self.seed, index);
        let mut roll = rng.below(21);
        let mut tokenizer = rng.one_in(2);
        match self.only {
            Some(CaseKind::Bundled) => roll = 20,
            Some(CaseKind::Tokenizer) => (roll, tokenizer) = (0, true),
            Some(CaseKind::Template) => (roll, tokenizer) = (0, false),
            Some(CaseKind::Fixture) => roll = 19,
            Some(CaseKind::Program) => roll = 13 + roll % 4,
            Some(CaseKind::Kernel) => roll = 1 + roll % 12,
            None => {}
        }
        if roll == 0 && tokenizer {
            return Case {
                kind: CaseKind::Tokenizer,
                op: None,
                bytes: text::tokenizer_case(&mut rng),
            };
        }
        if roll == 0 {
            return Case {
                kind: CaseKind::Template,
                op: None,
                bytes: text::template_case(&mut rng).into_bytes(),
            };
        }
        if roll == 20 && !self.bundled.is_empty() {
            let (_, bytes) = rng.pick(&self.bundled);
            let mut bytes = bytes.clone();
            mutate_bytes(&mut rng, &mut bytes);
            return Case {
                kind: CaseKind::Bundled,
                op: None,
                bytes,
            };
        }
        if roll >= 17 && !self.fixtures.is_empty() {
            let (_, bytes) = rng.pick(&self.fixtures);
            let mut bytes = bytes.clone();
            mutate_bytes(&mut rng, &mut bytes);
            return Case {
                kind: CaseKind::Fixture,
                op: None,
                bytes,
            };
        }
        if roll >= 13 {
            let ops: Vec<(String, Vec<Kind>, usize)> = (0..1 + rng.below(4))
                .map(|_| {
                    let s = rng.pick(&self.signatures);
                    (s.op.clone(), s.kinds.clone(), s.first_out)
                })
                .collect();
            return Case {
                kind: CaseKind::Program,
                op: None,
                bytes: random_program(&mut rng, &ops),
            };
        }
        let sig = rng.pick(&self.signatures);
        let mut kinds = sig.kinds.clone();
        let mut first_out = sig.first_out;
        if rng.one_in(12) {
            // A wrong argument count.
            if rng.one_in(2) && !kinds.is_empty() {
                kinds.truncate(rng.below(kinds.len()));
            } else {
                kinds.push(*rng.pick(&gen::ALL_KINDS));
            }
            first_out = first_out.min(kinds.len());
        }
        let mut bytes = kernel_program(&mut rng, &sig.op, &kinds, first_out, None);
        if rng.one_in(16) {
            mutate_bytes(&mut rng, &mut bytes);
        }
        Case {
            kind: CaseKind::Kernel,
            op: Some(sig.op.clone()),
            bytes,
        }
    }

    /// Loads `bytes` as a program and runs each of its methods (at most four), twice, with
    /// default inputs, reading every output back. Returns the first error; errors are the
    /// expected outcome of most cases.
    pub fn run(&self, bytes: &[u8]) -> Result<(), Error> {
        run_program(bytes, &self.kernels, self.limits)
    }

    /// Runs a case of any kind; the error, if any, as text.
    pub fn run_case(&self, case: &Case) -> Result<(), String> {
        match case.kind {
            CaseKind::Tokenizer => text::run_tokenizer(&case.bytes, case.bytes.len() as u64),
            CaseKind::Template => run_template_bytes(&case.bytes),
            CaseKind::Bundled => run_bundled(&case.bytes, &self.kernels, self.limits),
            _ => self.run(&case.bytes).map_err(|e| e.to_string()),
        }
    }
}

fn run_template_bytes(bytes: &[u8]) -> Result<(), String> {
    let source = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    text::run_template(source)
}

/// Deterministic stand-in input for `info`, or `None` when it is too big to bother.
fn default_input(dtype: ScalarType, sizes: &[usize]) -> Option<EValue> {
    let n = sizes
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .filter(|&n| n <= MAX_INPUT_ELEMENTS)?;
    let mut t = Tensor::zeros(dtype, sizes).ok()?;
    let es = dtype.size().max(1);
    for (k, c) in t.bytes_mut().chunks_mut(es).enumerate().take(n) {
        c[0] = (k % 5) as u8;
    }
    Some(EValue::Tensor(t))
}

fn xnnpack_backend() -> std::sync::Arc<dyn ptero_runtime::Backend> {
    std::sync::Arc::new(ptero_xnnpack::XnnpackBackend)
}

/// Parses a bundled program and runs its test cases (at most four methods, four cases
/// each) on the embedded program, comparing outputs as `ptero test` does; the embedded
/// program also gets the plain runner's default inputs.
pub fn run_bundled(bytes: &[u8], kernels: &KernelRegistry, limits: Limits) -> Result<(), String> {
    use ptero_devtools::{compare_values, BundledProgram, Tolerance};
    let b = BundledProgram::parse(bytes).map_err(|e| e.to_string())?;
    let plain = run_program(b.program, kernels, limits);
    let program = Program::from_bytes(b.program).map_err(|e| e.to_string())?;
    let mut backends = ptero_runtime::BackendRegistry::new();
    backends.register(xnnpack_backend());
    let mut failures = 0usize;
    for suite in b.suites.iter().take(4) {
        let mut m =
            match program.load_method_with_limits(&suite.method_name, kernels, &backends, limits) {
                Ok(m) => m,
                Err(_) => {
                    failures += 1;
                    continue;
                }
            };
        for case in suite.cases.iter().take(4) {
            let run = (|| {
                for (i, v) in case.inputs.iter().enumerate() {
                    m.set_input(i, v)?;
                }
                m.execute()?;
                m.outputs()
            })();
            match run {
                Ok(outs) => {
                    for (e, a) in case.expected_outputs.iter().zip(&outs) {
                        if !compare_values(e, a, Tolerance::default()).passed() {
                            failures += 1;
                        }
                    }
                }
                Err(_) => failures += 1,
            }
        }
    }
    plain.map_err(|e| e.to_string())?;
    match failures {
        0 => Ok(()),
        n => Err(format!("{n} test case(s) or outputs failed")),
    }
}

/// What the fuzzer runs for every case (and `--replay` for one).
pub fn run_program(bytes: &[u8], kernels: &KernelRegistry, limits: Limits) -> Result<(), Error> {
    let program = Program::from_bytes(bytes)?;
    // Damaged XNNPACK blobs reach the delegate's parser and planner.
    let mut backends = ptero_runtime::BackendRegistry::new();
    backends.register(xnnpack_backend());
    let names: Vec<String> = program
        .method_names()
        .into_iter()
        .take(4)
        .map(String::from)
        .collect();
    let mut first_err = None;
    for name in names {
        let result = (|| {
            let mut m = program.load_method_with_limits(&name, kernels, &backends, limits)?;
            let meta = m.meta().clone();
            for (i, io) in meta.inputs.iter().enumerate() {
                if let Some(t) = &io.tensor {
                    if let Some(v) = default_input(t.dtype, &t.sizes) {
                        m.set_input(i, &v)?;
                    }
                }
            }
            m.execute()?;
            let _ = m.outputs();
            m.execute()?;
            m.outputs().map(|_| ())
        })();
        if let Err(e) = result {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}
