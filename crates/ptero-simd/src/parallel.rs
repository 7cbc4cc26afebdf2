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

/// Elements below which [`for_each_chunk`] runs on the calling thread: splitting smaller
/// slices costs more than it saves.
pub const PAR_MIN_ELEMS: usize = 1 << 15;

/// Calls `f(range, &mut y[range])` over disjoint ranges covering `y`, in parallel when `y`
/// is large: the usual way to split an elementwise loop over threads.
///
/// ```
/// use ptero_simd::{for_each_chunk, Serial};
/// let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
/// let mut y = vec![0.0f32; 100];
/// for_each_chunk(&Serial, &mut y, &|r, out| {
///     for (o, v) in out.iter_mut().zip(&x[r]) {
///         *o = v * 2.0;
///     }
/// });
/// assert_eq!(y[99], 198.0);
/// ```
pub fn for_each_chunk<T: Send>(
    par: &dyn Parallel,
    y: &mut [T],
    f: &(dyn Fn(core::ops::Range<usize>, &mut [T]) + Sync),
) {
    for_each_chunk_by(par, y, 64, f)
}

/// Like [`for_each_chunk`], with every range starting at a multiple of `align` (rows of a
/// matrix, when `align` is the row length).
pub fn for_each_chunk_by<T: Send>(
    par: &dyn Parallel,
    y: &mut [T],
    align: usize,
    f: &(dyn Fn(core::ops::Range<usize>, &mut [T]) + Sync),
) {
    let work = y.len();
    for_each_chunk_work(par, y, align, work, f)
}

/// Like [`for_each_chunk_by`] for outputs much smaller than the work behind them (a
/// reduction): `work`, the elements read, decides whether to split.
pub fn for_each_chunk_work<T: Send>(
    par: &dyn Parallel,
    y: &mut [T],
    align: usize,
    work: usize,
    f: &(dyn Fn(core::ops::Range<usize>, &mut [T]) + Sync),
) {
    let len = y.len();
    let threads = par.threads();
    if threads <= 1 || work < PAR_MIN_ELEMS || len <= align {
        f(0..len, y);
        return;
    }
    let align = align.max(1);
    let parts = split_count(len, 2 * threads, align);
    let base = SendPtr(y.as_mut_ptr());
    par.run(parts, &|i| {
        let r = split_range(len, parts, align, i);
        // SAFETY: the ranges of `split_range` for distinct `i` are disjoint and inside
        // `0..len`, and `y` is borrowed mutably for the whole call, so each task has
        // exclusive access to its own sub-slice.
        let part = unsafe { core::slice::from_raw_parts_mut(base.get().add(r.start), r.len()) };
        f(r, part);
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: only used to hand disjoint sub-slices to tasks (see `for_each_chunk`); `T: Send`
// makes moving their elements' access to another thread sound.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// The task of [`for_each_chunk_pair`]: a range of units and the two matching parts.
pub type PairTask<'f, T, U> = dyn Fn(core::ops::Range<usize>, &mut [T], &mut [U]) + Sync + 'f;

/// Like [`for_each_chunk_by`] over two outputs that hold the same number of units
/// (`a.len() / unit_a == b.len() / unit_b`, e.g. the values and the indices of a
/// pooling): `f(units, a_part, b_part)` gets matching ranges of both. Returns false,
/// without calling `f`, when the lengths do not agree.
#[must_use]
pub fn for_each_chunk_pair<T: Send, U: Send>(
    par: &dyn Parallel,
    a: &mut [T],
    b: &mut [U],
    (unit_a, unit_b): (usize, usize),
    f: &PairTask<'_, T, U>,
) -> bool {
    let (ua, ub) = (unit_a.max(1), unit_b.max(1));
    let units = a.len() / ua;
    if units * ua != a.len() || units * ub != b.len() {
        return false;
    }
    let threads = par.threads();
    if threads <= 1 || a.len() < PAR_MIN_ELEMS || units < 2 {
        f(0..units, a, b);
        return true;
    }
    let parts = split_count(units, 2 * threads, 1);
    let (pa, pb) = (SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
    par.run(parts, &|i| {
        let r = split_range(units, parts, 1, i);
        // SAFETY: distinct `i` give disjoint unit ranges inside `0..units`, and both
        // slices are borrowed mutably for the whole call, so each task owns its parts.
        let (sa, sb) = unsafe {
            (
                core::slice::from_raw_parts_mut(pa.get().add(r.start * ua), r.len() * ua),
                core::slice::from_raw_parts_mut(pb.get().add(r.start * ub), r.len() * ub),
            )
        };
        f(r, sa, sb);
    });
    true
}
