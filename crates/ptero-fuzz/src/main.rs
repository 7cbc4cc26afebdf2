//! `ptero-fuzz`: runs hostile programs against the runtime and kernels.
//!
//! The supervisor starts worker processes (this binary with `--worker`); each runs cases
//! `start..` of its seed, writing the index of the case it is on to a progress file before
//! running it. A panic is caught in the worker and reported; an abort, a signal or a stall
//! longer than the watchdog's timeout is seen by the supervisor, which rebuilds the case
//! from its index, saves it as `crash-SEED-INDEX.pte` and restarts the worker after it.
//! Workers count every live byte and refuse allocations over the memory limit, so an
//! infallible allocation sized by input shows up as an abort, i.e. as a crash.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use ptero_fuzz::{Case, CaseKind, Fuzzer};

struct Limited;

static LIMITING: AtomicBool = AtomicBool::new(false);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Limited {
    /// Runs `allocate` if `size` more bytes fit the limit, keeping the count right when
    /// the system allocator fails.
    fn counted(size: usize, allocate: impl FnOnce() -> *mut u8) -> *mut u8 {
        if !Limited::admit(size) {
            return std::ptr::null_mut();
        }
        let p = allocate();
        if p.is_null() {
            LIVE.fetch_sub(size, Ordering::Relaxed);
        }
        p
    }

    fn admit(size: usize) -> bool {
        if !LIMITING.load(Ordering::Relaxed) {
            LIVE.fetch_add(size, Ordering::Relaxed);
            return true;
        }
        let before = LIVE.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > LIMIT.load(Ordering::Relaxed) {
            LIVE.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

// SAFETY: forwards to the system allocator; it only counts live bytes and refuses (returns
// null, which callers must handle) requests that would pass the limit.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        Limited::counted(layout.size(), || unsafe { System.alloc(layout) })
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        Limited::counted(layout.size(), || unsafe { System.alloc_zeroed(layout) })
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grow = new_size.saturating_sub(layout.size());
        if grow > 0 && !Limited::admit(grow) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            LIVE.fetch_sub(grow, Ordering::Relaxed);
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Limited = Limited;

#[derive(Parser, Debug)]
#[command(
    name = "ptero-fuzz",
    about = "Structure-aware fuzzer for Ptero: hostile programs, kernel calls and damaged fixtures"
)]
struct Args {
    /// How long to fuzz, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// First seed; worker j uses seed + j.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    jobs: u64,
    /// First case index.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Stop after this many cases per worker (0: until time is up).
    #[arg(long, default_value_t = 0)]
    max_cases: u64,
    /// A case that runs longer than this is a hang.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Live heap bytes a worker may hold, in MiB; an allocation past it fails.
    #[arg(long, default_value_t = 1024)]
    mem_limit_mb: usize,
    /// Where reproducers go.
    #[arg(long, default_value = "fuzz-crashes")]
    out: PathBuf,
    /// Run one saved case in this process (panics show their backtrace).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Only this kind of case: kernel, program, fixture, tokenizer or template.
    #[arg(long, value_parser = parse_kind)]
    only: Option<CaseKind>,
    /// Write this many cases (from --start) to --out as files and exit, e.g. to run them
    /// through the `ptero` CLI.
    #[arg(long)]
    dump: Option<u64>,
    /// Print the learned kernel signatures and exit.
    #[arg(long)]
    signatures: bool,
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true)]
    progress: Option<PathBuf>,
}

fn parse_kind(s: &str) -> Result<CaseKind, String> {
    [
        CaseKind::Kernel,
        CaseKind::Program,
        CaseKind::Fixture,
        CaseKind::Tokenizer,
        CaseKind::Template,
        CaseKind::Bundled,
    ]
    .into_iter()
    .find(|k| k.name() == s)
    .ok_or_else(|| {
        format!("'{s}' is not one of kernel, program, fixture, tokenizer, template, bundled")
    })
}

fn main() {
    let args = Args::parse();
    if let Some(path) = &args.replay {
        std::process::exit(replay(path));
    }
    if args.signatures {
        let f = Fuzzer::new(args.seed, None);
        for s in f.signatures() {
            println!(
                "{} {:?} first_out={} | {}",
                s.op, s.kinds, s.first_out, s.stopped
            );
        }
        return;
    }
    if args.worker {
        worker(&args);
        return;
    }
    if let Some(n) = args.dump {
        std::process::exit(dump(&args, n));
    }
    std::process::exit(supervise(&args));
}

fn extension(kind: CaseKind) -> &'static str {
    match kind {
        CaseKind::Tokenizer => "tokenizer",
        CaseKind::Template => "jinja",
        CaseKind::Bundled => "bpte",
        _ => "pte",
    }
}

fn dump(args: &Args, n: u64) -> i32 {
    let f = Fuzzer::new(args.seed, None).only(args.only);
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        return 2;
    }
    for index in args.start..args.start.saturating_add(n) {
        let case = f.case(index);
        let name = format!("case-{}-{index}.{}", args.seed, extension(case.kind));
        if let Err(e) = std::fs::write(args.out.join(name), &case.bytes) {
            eprintln!("error: cannot write to {}: {e}", args.out.display());
            return 2;
        }
    }
    0
}

fn replay(path: &Path) -> i32 {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return 2;
        }
    };
    let f = Fuzzer::new(0, Some(&[]));
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("tokenizer") => CaseKind::Tokenizer,
        Some("jinja") => CaseKind::Template,
        Some("bpte") => CaseKind::Bundled,
        _ => CaseKind::Program,
    };
    let case = Case {
        kind,
        op: None,
        bytes,
    };
    match f.run_case(&case) {
        Ok(()) => println!("ran without error"),
        Err(e) => println!("error (a clean one): {e}"),
    }
    0
}

/// Runs cases, reporting panics on stdout as `PANIC index message`, and finally
/// `DONE count`.
fn worker(args: &Args) {
    let progress = args
        .progress
        .as_ref()
        .and_then(|p| std::fs::OpenOptions::new().write(true).open(p).ok());
    let fuzzer = Fuzzer::new(args.seed, None).only(args.only);
    LIMIT.store(args.mem_limit_mb.saturating_mul(1 << 20), Ordering::Relaxed);
    LIMITING.store(true, Ordering::Relaxed);
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        LAST_PANIC.with(|p| *p.borrow_mut() = msg);
    }));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut out = std::io::stdout();
    let mut count = 0u64;
    let mut index = args.start;
    loop {
        if count.is_multiple_of(64) && Instant::now() >= deadline {
            break;
        }
        if args.max_cases > 0 && count >= args.max_cases {
            break;
        }
        if let Some(p) = &progress {
            let _ = p.write_at(&index.to_le_bytes(), 0);
        }
        let case = fuzzer.case(index);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = fuzzer.run_case(&case);
        }));
        if result.is_err() {
            let msg = LAST_PANIC.with(|p| p.borrow().clone());
            let _ = writeln!(out, "PANIC {index} {msg}");
            let _ = out.flush();
        }
        count += 1;
        index += 1;
    }
    let _ = writeln!(out, "DONE {count}");
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

struct Crash {
    seed: u64,
    index: u64,
    what: String,
}

/// What makes two crashes the same bug: the panic location, or the kind of death and the
/// operator.
fn signature(what: &str, op: Option<&str>) -> String {
    let head: String = what.split(':').take(3).collect::<Vec<_>>().join(":");
    format!("{head} {}", op.unwrap_or(""))
}

fn save(
    out: &Path,
    fuzzers: &mut Vec<(u64, Fuzzer)>,
    crash: &Crash,
    seen: &mut std::collections::HashSet<String>,
    only: Option<CaseKind>,
) {
    let _ = std::fs::create_dir_all(out);
    if !fuzzers.iter().any(|(s, _)| *s == crash.seed) {
        fuzzers.push((crash.seed, Fuzzer::new(crash.seed, None).only(only)));
    }
    let Some((_, f)) = fuzzers.iter().find(|(s, _)| *s == crash.seed) else {
        return;
    };
    let case = f.case(crash.index);
    if !seen.insert(signature(&crash.what, case.op.as_deref())) {
        return;
    }
    let stem = format!("crash-{}-{}", crash.seed, crash.index);
    let pte = out.join(format!("{stem}.{}", extension(case.kind)));
    let _ = std::fs::write(&pte, &case.bytes);
    let note =
        format!(
        "seed {} case {} ({}{})\n{}\nreplay: cargo run --release -p ptero-fuzz -- --replay {}\n",
        crash.seed,
        crash.index,
        case.kind.name(),
        case.op.as_deref().map(|o| format!(", {o}")).unwrap_or_default(),
        crash.what,
        pte.display()
    );
    let _ = std::fs::write(out.join(format!("{stem}.txt")), &note);
    eprintln!("CRASH: {}", note.trim_end());
}

struct Worker {
    seed: u64,
    start: u64,
    child: Child,
    progress: PathBuf,
    lines: mpsc::Receiver<String>,
    last_index: u64,
    last_change: Instant,
    done: Option<u64>,
}

fn spawn(args: &Args, seed: u64, start: u64, seconds: u64, dir: &Path) -> Option<Worker> {
    let progress = dir.join(format!("progress-{seed}"));
    std::fs::write(&progress, start.to_le_bytes()).ok()?;
    let exe = std::env::current_exe().ok()?;
    let stderr = std::fs::File::create(dir.join(format!("stderr-{seed}.log"))).ok()?;
    let mut child = Command::new(exe)
        .arg("--worker")
        .args(["--seed", &seed.to_string()])
        .args(["--start", &start.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(["--max-cases", &args.max_cases.to_string()])
        .args(["--mem-limit-mb", &args.mem_limit_mb.to_string()])
        .args(args.only.map(|k| format!("--only={}", k.name())))
        .arg("--progress")
        .arg(&progress)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Some(Worker {
        seed,
        start,
        child,
        progress,
        lines: rx,
        last_index: start,
        last_change: Instant::now(),
        done: None,
    })
}

fn read_progress(path: &Path) -> Option<u64> {
    let b = std::fs::read(path).ok()?;
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(6) => "aborted (SIGABRT): an allocation over the memory limit, or an abort".into(),
        Some(s) => format!("killed by signal {s}"),
        None => format!("exited with {status}"),
    }
}

/// Runs the workers until time is up; returns the process exit code.
fn supervise(args: &Args) -> i32 {
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let dir = std::env::temp_dir().join(format!("ptero-fuzz-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        eprintln!("error: cannot create {}", dir.display());
        return 2;
    }
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut workers: Vec<Worker> = Vec::new();
    for j in 0..args.jobs.max(1) {
        match spawn(args, args.seed + j, args.start, args.seconds, &dir) {
            Some(w) => workers.push(w),
            None => {
                eprintln!("error: cannot start a worker");
                return 2;
            }
        }
    }
    let mut fuzzers: Vec<(u64, Fuzzer)> = Vec::new();
    let mut crashes: Vec<Crash> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut executions = 0u64;
    let mut last_report = Instant::now();
    while !workers.is_empty() {
        std::thread::sleep(Duration::from_millis(20));
        let mut k = 0;
        while k < workers.len() {
            let w = &mut workers[k];
            while let Ok(line) = w.lines.try_recv() {
                if let Some(rest) = line.strip_prefix("PANIC ") {
                    let (idx, msg) = rest.split_once(' ').unwrap_or((rest, ""));
                    if let Ok(index) = idx.parse() {
                        let crash = Crash {
                            seed: w.seed,
                            index,
                            what: format!("panic: {msg}"),
                        };
                        save(&args.out, &mut fuzzers, &crash, &mut seen, args.only);
                        crashes.push(crash);
                    }
                } else if let Some(n) = line.strip_prefix("DONE ") {
                    w.done = n.parse().ok();
                }
            }
            let index = read_progress(&w.progress).unwrap_or(w.last_index);
            if index != w.last_index {
                w.last_index = index;
                w.last_change = Instant::now();
            }
            let status = w.child.try_wait().ok().flatten();
            let hung = status.is_none() && w.last_change.elapsed() > timeout;
            if hung {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
            if status.is_none() && !hung {
                k += 1;
                continue;
            }
            // Drain what the worker said before it ended.
            std::thread::sleep(Duration::from_millis(20));
            while let Ok(line) = w.lines.try_recv() {
                if let Some(n) = line.strip_prefix("DONE ") {
                    w.done = n.parse().ok();
                }
            }
            let clean = status.is_some_and(|s| s.success()) && w.done.is_some();
            let w = workers.swap_remove(k);
            if clean {
                executions += w.done.unwrap_or(0);
                continue;
            }
            executions += (w.last_index + 1).saturating_sub(w.start);
            let what = if hung {
                format!("hang: no progress for {} s", timeout.as_secs())
            } else {
                let tail = std::fs::read_to_string(dir.join(format!("stderr-{}.log", w.seed)))
                    .unwrap_or_default();
                let tail: String = tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                format!("{} {tail}", status.map(describe).unwrap_or_default())
            };
            let crash = Crash {
                seed: w.seed,
                index: w.last_index,
                what,
            };
            save(&args.out, &mut fuzzers, &crash, &mut seen, args.only);
            crashes.push(crash);
            let now = Instant::now();
            if now + Duration::from_secs(1) < end {
                let left = (end - now).as_secs().max(1);
                if let Some(nw) = spawn(args, w.seed, w.last_index + 1, left, &dir) {
                    workers.push(nw);
                }
            }
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            let running: u64 = workers
                .iter()
                .map(|w| w.last_index.saturating_sub(w.start))
                .sum();
            eprintln!(
                "ptero-fuzz: {:.0} s, about {} cases so far, {} crashes",
                started.elapsed().as_secs_f64(),
                executions + running,
                crashes.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ptero-fuzz: {executions} executions in {secs:.1} s ({:.0}/s), seeds {}..={}, {} crash{}",
        executions as f64 / secs.max(1e-9),
        args.seed,
        args.seed + args.jobs.max(1) - 1,
        crashes.len(),
        if crashes.len() == 1 { "" } else { "es" }
    );
    if crashes.is_empty() {
        0
    } else {
        println!("reproducers in {}", args.out.display());
        1
    }
}
