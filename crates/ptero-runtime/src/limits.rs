//! Resource limits of a loaded method: what a hostile program may cost at most.

/// Bounds on what one method may use, checked at load and while executing.
///
/// The defaults are generous (real models never reach them) but finite, so that a
/// crafted program ends with an error instead of exhausting memory or looping for ever.
///
/// ```
/// use ptero_runtime::Limits;
/// let limits = Limits { max_memory: 256 << 20, ..Limits::default() };
/// assert_eq!(limits.max_instructions, ptero_runtime::MAX_INSTRUCTIONS);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes a method may own: planned arenas, input/output buffers and, per kernel call,
    /// scratch memory. Constant data is not counted (it is mapped from the file).
    pub max_memory: usize,
    /// Instructions one `execute` may run.
    pub max_instructions: u64,
    /// Once a program jumps backwards (a loop), the work it does from then on may be at
    /// most this many times the work done before the first backward jump, plus
    /// [`Limits::loop_work_allowance`]. Work is counted in tensor elements touched, plus
    /// the multiply-adds that kernels such as matrix products report.
    pub loop_work_factor: u64,
    /// Work a loop may always do, whatever came before it.
    pub loop_work_allowance: u64,
}

/// Default [`Limits::max_memory`]: 16 GiB on 64-bit targets, half the address space below.
pub const DEFAULT_MAX_MEMORY: usize = if usize::BITS >= 64 {
    16 << 30
} else {
    usize::MAX / 2
};

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_memory: DEFAULT_MAX_MEMORY,
            max_instructions: crate::MAX_INSTRUCTIONS,
            loop_work_factor: 16,
            loop_work_allowance: 1 << 26,
        }
    }
}

/// How a method is prepared at load: its [`Limits`] and the load-time rewrites Ptero
/// makes without changing what the program computes.
///
/// ```
/// use ptero_runtime::{LoadOptions, Limits};
/// let o = LoadOptions { channels_last: false, ..LoadOptions::default() };
/// assert_eq!(o.limits, Limits::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub limits: Limits,
    /// Lay out images flowing between convolutions channels-last (on by default; off
    /// keeps every value in the exported dim order, for comparisons).
    pub channels_last: bool,
    /// Fuse instructions at load (on by default; off keeps one kernel per instruction,
    /// so that a tracer sees every instruction's own output).
    pub fuse: bool,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            limits: Limits::default(),
            channels_last: true,
            fuse: true,
        }
    }
}

/// An [`Interrupt`](ptero_core::Interrupt) that fires once a point in time has passed.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use ptero_runtime::{Deadline, Interrupt};
/// let d = Deadline::after(Duration::from_secs(3600));
/// assert!(!d.is_interrupted());
/// let _for_a_method: Arc<dyn Interrupt> = Arc::new(d);
/// ```
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub std::time::Instant);

#[cfg(feature = "std")]
impl Deadline {
    pub fn after(d: std::time::Duration) -> Deadline {
        let now = std::time::Instant::now();
        // A duration too long to represent means no deadline in practice.
        let far = [d, std::time::Duration::from_secs(100 * 365 * 86_400)];
        Deadline(far.iter().find_map(|&d| now.checked_add(d)).unwrap_or(now))
    }
}

#[cfg(feature = "std")]
impl ptero_core::Interrupt for Deadline {
    fn is_interrupted(&self) -> bool {
        std::time::Instant::now() >= self.0
    }
}
