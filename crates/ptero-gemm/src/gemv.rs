//! A single output row (decode) or column against a plain matrix: the matrix is read
//! once, straight from memory, with no packing. Bandwidth is the limit here.

use ptero_simd::{dispatch_at, split_count, split_range, Level, Parallel, Simd, SimdOp};

use crate::driver::{COut, PAR_MIN_MACS};
use crate::kernel::Epi;
use crate::MatRef;

/// Runs the product if it is a row or column case this module handles; `false` leaves
/// it to the blocked driver.
pub(crate) fn try_run(
    par: &dyn Parallel,
    level: Level,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: COut,
    e: &Epi<'_>,
) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let big = m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_MACS;
    let parts = if big { 4 * par.threads() } else { 1 };
    if m == 1 && (a.cs == 1 || k <= 1) && (c.cs == 1 || n == 1) {
        let x = &a.data[..k.min(a.data.len())];
        let form = if b.rs == 1 || k <= 1 {
            Form::Dots
        } else if b.cs == 1 {
            Form::Rows
        } else {
            return false;
        };
        let align = 64;
        let chunks = split_count(n, parts, align);
        let out = c.ptr;
        let task = |t: usize| {
            let r = split_range(n, chunks, align, t);
            // SAFETY: each task writes its own column range of the single output row,
            // contiguous (cs == 1, or n == 1) and valid by `gemm_out`'s contract.
            let y = unsafe { core::slice::from_raw_parts_mut(out.get().add(r.start), r.len()) };
            dispatch_at(
                level,
                RowOp {
                    form,
                    x,
                    b,
                    j0: r.start,
                    y,
                    e,
                },
            );
        };
        par.run(chunks, &task);
        return true;
    }
    if n == 1 && a.cs == 1 && (b.rs == 1 || k <= 1) {
        let x = &b.data[..k.min(b.data.len())];
        let align = 16;
        let chunks = split_count(m, parts, align);
        let out = c.ptr;
        let crs = c.rs;
        let task = |t: usize| {
            let r = split_range(m, chunks, align, t);
            dispatch_at(
                level,
                ColOp {
                    a,
                    x,
                    rows: r,
                    out,
                    crs,
                    e,
                },
            );
        };
        par.run(chunks, &task);
        return true;
    }
    false
}

#[derive(Clone, Copy)]
enum Form {
    /// Column `j` of B is contiguous: `y[j] = x · B[:, j]`.
    Dots,
    /// Rows of B are contiguous: `y += x[p] · B[p, :]`.
    Rows,
}

struct RowOp<'a> {
    form: Form,
    x: &'a [f32],
    b: MatRef<'a>,
    j0: usize,
    y: &'a mut [f32],
    e: &'a Epi<'a>,
}

impl SimdOp for RowOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let (x, b, y) = (self.x, self.b, self.y);
        let k = x.len();
        let n = y.len();
        match self.form {
            Form::Dots => {
                let col = |j: usize| &b.data[(self.j0 + j) * b.cs..][..k];
                let mut j = 0;
                while j + 4 <= n {
                    let cols = [col(j), col(j + 1), col(j + 2), col(j + 3)];
                    let d = dot4(s, x, cols);
                    y[j..j + 4].copy_from_slice(&d);
                    j += 4;
                }
                while j < n {
                    y[j] = dot1(s, x, col(j));
                    j += 1;
                }
            }
            Form::Rows => {
                y.fill(0.0);
                let row = |p: usize| &b.data[p * b.rs + self.j0..][..n];
                let mut p = 0;
                while p + 4 <= k {
                    let (r0, r1, r2, r3) = (row(p), row(p + 1), row(p + 2), row(p + 3));
                    let (a0, a1, a2, a3) = (
                        s.splat(x[p]),
                        s.splat(x[p + 1]),
                        s.splat(x[p + 2]),
                        s.splat(x[p + 3]),
                    );
                    let mut j = 0;
                    while j + S::LANES <= n {
                        let mut v = s.load(&y[j..]);
                        v = s.mul_add(a0, s.load(&r0[j..]), v);
                        v = s.mul_add(a1, s.load(&r1[j..]), v);
                        v = s.mul_add(a2, s.load(&r2[j..]), v);
                        v = s.mul_add(a3, s.load(&r3[j..]), v);
                        s.store(&mut y[j..], v);
                        j += S::LANES;
                    }
                    for jj in j..n {
                        y[jj] += x[p] * r0[jj]
                            + x[p + 1] * r1[jj]
                            + x[p + 2] * r2[jj]
                            + x[p + 3] * r3[jj];
                    }
                    p += 4;
                }
                while p < k {
                    let r = row(p);
                    let a = s.splat(x[p]);
                    let mut j = 0;
                    while j + S::LANES <= n {
                        let v = s.mul_add(a, s.load(&r[j..]), s.load(&y[j..]));
                        s.store(&mut y[j..], v);
                        j += S::LANES;
                    }
                    for jj in j..n {
                        y[jj] += x[p] * r[jj];
                    }
                    p += 1;
                }
            }
        }
        finish_row(s, y, 0, self.j0, self.e);
    }
}

/// The epilogue over a contiguous piece of row `i` starting at column `j0`.
#[inline(always)]
fn finish_row<S: Simd>(s: S, y: &mut [f32], i: usize, j0: usize, e: &Epi<'_>) {
    let n = y.len();
    let mut j = 0;
    while j < n {
        let w = S::LANES.min(n - j);
        let v = if w == S::LANES {
            s.load(&y[j..])
        } else {
            s.load_part(&y[j..n])
        };
        let v = e.apply(s, v, i, j0 + j, w);
        if w == S::LANES {
            s.store(&mut y[j..], v);
        } else {
            s.store_part(&mut y[j..n], v);
        }
        j += w;
    }
}

#[inline(always)]
fn dot1<S: Simd>(s: S, x: &[f32], c: &[f32]) -> f32 {
    let k = x.len();
    let mut acc = [s.zero(); 2];
    let mut p = 0;
    while p + 2 * S::LANES <= k {
        acc[0] = s.mul_add(s.load(&x[p..]), s.load(&c[p..]), acc[0]);
        acc[1] = s.mul_add(
            s.load(&x[p + S::LANES..]),
            s.load(&c[p + S::LANES..]),
            acc[1],
        );
        p += 2 * S::LANES;
    }
    while p < k {
        let w = S::LANES.min(k - p);
        acc[0] = s.mul_add(s.load_part(&x[p..p + w]), s.load_part(&c[p..p + w]), acc[0]);
        p += w;
    }
    s.reduce_add(s.add(acc[0], acc[1]))
}

#[inline(always)]
fn dot4<S: Simd>(s: S, x: &[f32], c: [&[f32]; 4]) -> [f32; 4] {
    let k = x.len();
    let mut acc = [s.zero(); 4];
    let mut p = 0;
    while p + S::LANES <= k {
        let xv = s.load(&x[p..]);
        for (a, col) in acc.iter_mut().zip(&c) {
            *a = s.mul_add(xv, s.load(&col[p..]), *a);
        }
        p += S::LANES;
    }
    if p < k {
        let xv = s.load_part(&x[p..k]);
        for (a, col) in acc.iter_mut().zip(&c) {
            *a = s.mul_add(xv, s.load_part(&col[p..k]), *a);
        }
    }
    [
        s.reduce_add(acc[0]),
        s.reduce_add(acc[1]),
        s.reduce_add(acc[2]),
        s.reduce_add(acc[3]),
    ]
}

struct ColOp<'a> {
    a: MatRef<'a>,
    x: &'a [f32],
    rows: core::ops::Range<usize>,
    out: crate::driver::SyncPtr,
    crs: usize,
    e: &'a Epi<'a>,
}

impl SimdOp for ColOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let k = self.x.len();
        for i in self.rows.clone() {
            let row = &self.a.data[i * self.a.rs..][..k];
            let v = dot1(s, self.x, row);
            let mut t = [v];
            let r = self.e.apply(s, s.load_part(&t), i, 0, 1);
            s.store_part(&mut t, r);
            // SAFETY: row i of the single output column is inside the checked extent, and
            // each task owns its own rows.
            unsafe { *self.out.get().add(i * self.crs) = t[0] };
        }
    }
}
