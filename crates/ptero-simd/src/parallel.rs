//! How kernels split work over threads, without depending on who provides them.

/// Runs indexed tasks, possibly on several threads.
///
/// Kernels receive a `&dyn Parallel` and call [`Parallel::run`] with `n` tasks; each task
/// `i` in `0..n` runs exactly once, in no particular order, and `run` returns when all
/// are done. [`Serial`] runs them in order on the caller (the `no_std` executor);
/// [`ThreadPool`](crate::pool::ThreadPool) spreads them over persistent workers.
pub trait Parallel: Sync {
    /// Threads that may run tasks at once (1 for [`Serial`]).
    fn threads(&self) -> usize;
    /// Calls `f(i)` for every `i` in `0..n`.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// Every task on the calling thread, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        for i in 0..n {
            f(i)
        }
    }
}

/// Splits `0..len` into about `parts` contiguous ranges whose sizes are multiples of
/// `align` (except the last): range `i` of [`split_count`] ranges.
///
/// ```
/// use ptero_simd::{split_count, split_range};
/// let n = split_count(100, 3, 8);
/// let all: Vec<_> = (0..n).map(|i| split_range(100, n, 8, i)).collect();
/// assert_eq!(all.first().unwrap().start, 0);
/// assert_eq!(all.last().unwrap().end, 100);
/// ```
pub fn split_range(len: usize, parts: usize, align: usize, i: usize) -> core::ops::Range<usize> {
    let align = align.max(1);
    let units = len.div_ceil(align);
    let parts = parts.clamp(1, units.max(1));
    let per = units / parts;
    let extra = units % parts;
    let start_u = i * per + i.min(extra);
    let end_u = start_u + per + usize::from(i < extra);
    (start_u * align).min(len)..(end_u * align).min(len)
}

/// How many ranges [`split_range`] makes of `len` items for `parts` workers.
pub fn split_count(len: usize, parts: usize, align: usize) -> usize {
    parts.clamp(1, len.div_ceil(align.max(1)).max(1))
}
