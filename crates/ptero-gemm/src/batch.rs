//! Batched products (`bmm`, `linear` over leading dims, attention heads): one call that
//! checks every entry's extent once, then runs the entries — each split over threads, or
//! the entries themselves spread over threads when each is small.

use ptero_simd::{Parallel, Serial, SlotArena};

use crate::driver::{gemm_out, COut, SyncPtr, PAR_MIN_MACS};
use crate::{gemm, Bias, Epilogue, GemmError, Lhs, MatMut, MatRef, Rhs};

/// Most batch dimensions [`gemm_batched`] takes.
pub const MAX_BATCH_DIMS: usize = 16;

/// Batch dimensions and each operand's element stride along them (0 = shared).
#[derive(Clone, Copy, Debug)]
pub struct Batch<'s> {
    pub sizes: &'s [usize],
    pub a: &'s [usize],
    pub b: &'s [usize],
    pub c: &'s [usize],
    pub bias: &'s [usize],
}

fn span(sizes: &[usize], strides: &[usize]) -> Option<usize> {
    let mut s = 0usize;
    for (&n, &st) in sizes.iter().zip(strides) {
        s = s.checked_add(n.checked_sub(1)?.checked_mul(st)?)?;
    }
    Some(s)
}

/// True when no two elements of the strided layout share memory.
pub(crate) fn no_overlap(dims: &mut [(usize, usize)]) -> bool {
    dims.sort_unstable_by_key(|&(_, st)| st);
    let mut reach = 0usize;
    for &(n, st) in dims.iter() {
        if n <= 1 {
            continue;
        }
        if st <= reach && !(st == 0 && n <= 1) {
            return false;
        }
        match (n - 1).checked_mul(st).and_then(|x| x.checked_add(reach)) {
            Some(r) => reach = r,
            None => return false,
        }
    }
    true
}

fn check_in(len: usize, entry: usize, batch: usize) -> Result<(), GemmError> {
    let need = entry.checked_add(batch).ok_or(GemmError::Overflow)?;
    if need > len {
        return Err(GemmError::OutOfBounds {
            operand: "batched operand",
            needed: need,
            len,
        });
    }
    Ok(())
}

fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `C[b] = act(alpha · A[b]·B[b] + beta · bias[b])` for every batch index `b`: `a`, `b`,
/// `c` and a matrix bias describe entry 0, and their data must reach every entry through
/// the batch strides. Packed operands are shared by every entry.
pub fn gemm_batched(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    batch: Batch<'_>,
    a: Lhs<'_>,
    b: Rhs<'_>,
    c: MatMut<'_>,
    epi: &Epilogue<'_>,
) -> Result<(), GemmError> {
    let nd = batch.sizes.len();
    if [batch.a, batch.b, batch.c, batch.bias]
        .iter()
        .any(|s| s.len() != nd)
    {
        return Err(GemmError::Shape {
            what: "batch strides (dims)",
            expected: nd,
            found: 0,
        });
    }
    let entries = batch
        .sizes
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or(GemmError::Overflow)?;
    if entries == 1 || nd == 0 {
        return gemm(par, arena, a, b, c, epi);
    }
    if entries == 0 || c.rows == 0 || c.cols == 0 {
        return Ok(());
    }
    let sp = |st: &[usize]| span(batch.sizes, st).ok_or(GemmError::Overflow);
    if let Lhs::Mat(m) = a {
        check_in(
            m.data.len(),
            extent(m.rows, m.cols, m.rs, m.cs),
            sp(batch.a)?,
        )?;
    }
    if let Rhs::Mat(m) = b {
        check_in(
            m.data.len(),
            extent(m.rows, m.cols, m.rs, m.cs),
            sp(batch.b)?,
        )?;
    }
    if epi.beta != 0.0 {
        if let Bias::Mat(m) = epi.bias {
            check_in(
                m.data.len(),
                extent(m.rows, m.cols, m.rs, m.cs),
                sp(batch.bias)?,
            )?;
        }
    }
    check_in(
        c.data.len(),
        extent(c.rows, c.cols, c.rs, c.cs),
        sp(batch.c)?,
    )?;
    // No allocation while executing: the layout is checked in a fixed array.
    let mut dims = [(0usize, 0usize); MAX_BATCH_DIMS + 2];
    if nd > MAX_BATCH_DIMS {
        return Err(GemmError::Shape {
            what: "batch dims (at most)",
            expected: MAX_BATCH_DIMS,
            found: nd,
        });
    }
    for (d, (&n, &s)) in dims.iter_mut().zip(batch.sizes.iter().zip(batch.c)) {
        *d = (n, s);
    }
    dims[nd] = (c.rows, c.rs);
    dims[nd + 1] = (c.cols, c.cs);
    if !no_overlap(&mut dims[..nd + 2]) {
        return Err(GemmError::Aliasing);
    }

    let (m, n, k) = (
        c.rows,
        c.cols,
        match a {
            Lhs::Mat(x) => x.cols,
            Lhs::Packed(p) => p.k,
        },
    );
    let (crs, ccs) = (c.rs, c.cs);
    let out = SyncPtr(c.data.as_mut_ptr());
    let offsets = |mut idx: usize| {
        let mut o = [0usize; 4];
        for d in (0..nd).rev() {
            let i = idx % batch.sizes[d];
            idx /= batch.sizes[d];
            o[0] += i * batch.a[d];
            o[1] += i * batch.b[d];
            o[2] += i * batch.c[d];
            o[3] += i * batch.bias[d];
        }
        o
    };
    let run = |idx: usize, inner: &dyn Parallel| -> Result<(), GemmError> {
        let [ao, bo, co, biaso] = offsets(idx);
        let ae = match a {
            Lhs::Mat(x) => Lhs::Mat(MatRef {
                data: &x.data[ao..],
                ..x
            }),
            p => p,
        };
        let be = match b {
            Rhs::Mat(x) => Rhs::Mat(MatRef {
                data: &x.data[bo..],
                ..x
            }),
            p => p,
        };
        let bias = match epi.bias {
            Bias::Mat(x) if epi.beta != 0.0 => Bias::Mat(MatRef {
                data: &x.data[biaso..],
                ..x
            }),
            other => other,
        };
        let ce = COut {
            // SAFETY: `check_in` proved entry `idx`'s elements lie inside the output.
            ptr: SyncPtr(unsafe { out.get().add(co) }),
            rows: m,
            cols: n,
            rs: crs,
            cs: ccs,
        };
        // SAFETY: the elements of entry `idx` are inside the output (`check_in`), distinct
        // from each other and from every other entry's (`no_overlap`), and the output is
        // borrowed mutably for this whole call.
        unsafe { gemm_out(inner, arena, None, ae, be, ce, &Epilogue { bias, ..*epi }) }
    };
    let macs = m.saturating_mul(n).saturating_mul(k);
    let threads = par.threads();
    if threads > 1 && entries >= threads && macs < 8 * PAR_MIN_MACS {
        let failed = core::sync::atomic::AtomicBool::new(false);
        let first_err = FirstError::new();
        par.run(entries, &|i| {
            if failed.load(core::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if let Err(e) = run(i, &Serial) {
                failed.store(true, core::sync::atomic::Ordering::Relaxed);
                first_err.set(e);
            }
        });
        match first_err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    } else {
        for i in 0..entries {
            run(i, par)?;
        }
        Ok(())
    }
}

pub(crate) use spin_mutex::Slot as FirstError;

/// A one-value slot written by whichever task fails first.
mod spin_mutex {
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicU8, Ordering};

    use crate::GemmError;

    pub struct Slot {
        state: AtomicU8,
        v: UnsafeCell<Option<GemmError>>,
    }

    // SAFETY: `v` is written once, by the task that moves `state` from 0 to 1, and read
    // only after every task finished (`take` is called after `Parallel::run` returns).
    unsafe impl Sync for Slot {}

    impl Slot {
        pub fn new() -> Slot {
            Slot {
                state: AtomicU8::new(0),
                v: UnsafeCell::new(None),
            }
        }
        pub fn set(&self, e: GemmError) {
            if self
                .state
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // SAFETY: only the task that won the exchange writes, once.
                unsafe { *self.v.get() = Some(e) };
                self.state.store(2, Ordering::Release);
            }
        }
        pub fn take(&self) -> Option<GemmError> {
            if self.state.load(Ordering::Acquire) == 2 {
                // SAFETY: the writer finished (state 2) and all tasks are done.
                unsafe { (*self.v.get()).take() }
            } else {
                None
            }
        }
    }
}
