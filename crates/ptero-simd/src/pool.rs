//! A persistent thread pool: workers spin briefly for the next job, then yield, then park.
//!
//! One job runs at a time. The caller publishes a job (a borrowed closure and a task
//! count) and works on it too; workers that wake in time join and claim tasks from an
//! atomic counter, so a descheduled worker never holds up the others. A job is closed
//! once every task is claimed, and the caller returns when the workers that joined have
//! finished. Nothing is allocated per job.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};

use crate::Parallel;

/// Iterations a waiting thread spins (with a pause hint) before yielding, and yields
/// before parking. Waking a parked thread costs tens of microseconds, so idle workers keep
/// watching for a while; under contention yielding lets the other runnable thread go.
const SPINS: u32 = 20_000;
const YIELDS: u32 = 200;

const OPEN: u64 = 1 << 31;
const COUNT: u64 = OPEN - 1;

/// A job on the caller's stack; workers see it through a lifetime-erased pointer.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            let f = self.f;
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
                // Skip the remaining tasks; the caller re-raises the panic.
                self.next.store(self.n, Ordering::Relaxed);
                if let Ok(mut slot) = self.panic.lock() {
                    slot.get_or_insert(p);
                }
                return;
            }
        }
    }
}

struct Shared {
    /// `epoch << 32 | OPEN | workers inside the job`.
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    sleeping: Vec<AtomicBool>,
    shutdown: AtomicBool,
    /// Workers that have started running.
    started: AtomicUsize,
}

/// A pool of `threads - 1` workers plus the calling thread.
///
/// ```
/// use ptero_simd::{pool::ThreadPool, Parallel};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let pool = ThreadPool::new(2);
/// let total = AtomicUsize::new(0);
/// pool.run(100, &|i| {
///     total.fetch_add(i, Ordering::Relaxed);
/// });
/// assert_eq!(total.into_inner(), 4950);
/// ```
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<(Thread, JoinHandle<()>)>,
    /// Held while a job runs: a second caller (another thread, or a task calling `run`
    /// again) runs its tasks serially instead of waiting.
    busy: Mutex<()>,
}

impl core::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl ThreadPool {
    /// A pool running jobs on `threads` threads in all (the caller and `threads - 1`
    /// workers); 0 means [`default_threads`]. If the system refuses to start a worker, the
    /// pool runs with those that started.
    pub fn new(threads: usize) -> ThreadPool {
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        let nworkers = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(core::ptr::null_mut()),
            sleeping: (0..nworkers).map(|_| AtomicBool::new(false)).collect(),
            shutdown: AtomicBool::new(false),
            started: AtomicUsize::new(0),
        });
        let mut workers = Vec::with_capacity(nworkers);
        for w in 0..nworkers {
            let sh = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("ptero-worker-{w}"))
                .spawn(move || worker(&sh, w));
            match spawned {
                Ok(h) => workers.push((h.thread().clone(), h)),
                Err(_) => break,
            }
        }
        // Wait until every worker runs: a thread's start-up allocates (its handle, its
        // thread-locals), and that must happen here, not during a job.
        while shared.started.load(Ordering::Acquire) < workers.len() {
            thread::yield_now();
        }
        ThreadPool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }
}

/// Threads a pool gets by default: the CPUs this process may use.
pub fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Physical cores (distinct `physical id`/`core id` pairs in `/proc/cpuinfo` on Linux),
/// at most the CPUs this process may use; the CPU count where that is unknown.
pub fn physical_cores() -> usize {
    let cpus = default_threads();
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return cpus;
    };
    let mut cores: Vec<(u32, u32)> = Vec::new();
    let mut phys = 0u32;
    for line in info.lines() {
        let mut kv = line.splitn(2, ':');
        let (k, v) = (
            kv.next().unwrap_or("").trim(),
            kv.next().unwrap_or("").trim(),
        );
        match k {
            "physical id" => phys = v.parse().unwrap_or(0),
            "core id" => {
                let c = (phys, v.parse().unwrap_or(0));
                if !cores.contains(&c) {
                    cores.push(c);
                }
            }
            _ => {}
        }
    }
    if cores.is_empty() {
        cpus
    } else {
        cores.len().min(cpus)
    }
}

fn epoch(s: u64) -> u64 {
    s >> 32
}

fn worker(sh: &Shared, id: usize) {
    // Parking uses the thread's handle: create it now.
    let _ = thread::current();
    sh.started.fetch_add(1, Ordering::Release);
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, yield, then park.
        let mut spins = 0u32;
        let s = loop {
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            let s = sh.state.load(Ordering::Acquire);
            if epoch(s) != seen {
                break s;
            }
            spins += 1;
            if spins < SPINS {
                core::hint::spin_loop();
            } else if spins < SPINS + YIELDS {
                thread::yield_now();
            } else {
                sh.sleeping[id].store(true, Ordering::SeqCst);
                let s2 = sh.state.load(Ordering::SeqCst);
                if epoch(s2) == seen && !sh.shutdown.load(Ordering::SeqCst) {
                    thread::park();
                }
                sh.sleeping[id].store(false, Ordering::SeqCst);
                spins = 0;
            }
        };
        seen = epoch(s);
        // Join if the job is still open.
        let mut cur = s;
        let joined = loop {
            if epoch(cur) != seen || cur & OPEN == 0 {
                break false;
            }
            match sh
                .state
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !joined {
            continue;
        }
        let job = sh.job.load(Ordering::Acquire);
        // SAFETY: this worker is counted inside the current epoch's job, and the caller
        // that published `job` does not return (so the job stays alive) until that count
        // drops back to zero below.
        unsafe { (*job).work() };
        sh.state.fetch_sub(1, Ordering::Release);
    }
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        let guard = match self.busy.try_lock() {
            Ok(g) if n > 1 && !self.workers.is_empty() => g,
            _ => {
                for i in 0..n {
                    f(i)
                }
                return;
            }
        };
        let job = Job {
            f,
            n,
            next: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        let sh = &*self.shared;
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        sh.job.store(ptr, Ordering::Release);
        let prev = sh.state.load(Ordering::Relaxed);
        let e = epoch(prev).wrapping_add(1) & 0xffff_ffff;
        let e = if e == 0 { 1 } else { e };
        sh.state.store((e << 32) | OPEN, Ordering::SeqCst);
        for (w, (t, _)) in self.workers.iter().enumerate() {
            if sh.sleeping[w].load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        job.work();
        // Close the job: no worker joins from now on; wait for those inside.
        sh.state.fetch_and(!OPEN, Ordering::AcqRel);
        let mut spins = 0u32;
        while sh.state.load(Ordering::Acquire) & COUNT != 0 {
            spins += 1;
            if spins < SPINS {
                core::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        sh.job.store(core::ptr::null_mut(), Ordering::Relaxed);
        drop(guard);
        let p = job.panic.lock().ok().and_then(|mut s| s.take());
        if let Some(p) = p {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for (t, _) in &self.workers {
            t.unpark();
        }
        for (_, h) in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3, 4] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn many_small_jobs_and_parked_workers() {
        let pool = ThreadPool::new(3);
        let total = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.run(3, &|i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
            if round == 1000 {
                // Long enough for the workers to park.
                thread::sleep(std::time::Duration::from_millis(30));
            }
        }
        assert_eq!(total.into_inner(), 2000 * 6);
    }

    #[test]
    fn nested_run_is_serial() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(5, &|j| {
                total.fetch_add(j, Ordering::Relaxed);
            });
        });
        assert_eq!(total.into_inner(), 4 * 10);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(64, &|i| {
                if i == 40 {
                    panic!("task 40");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let total = AtomicUsize::new(0);
        pool.run(10, &|i| {
            total.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(total.into_inner(), 45);
    }
}
