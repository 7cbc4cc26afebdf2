//! The register-blocked microkernel, written once over [`Simd`], and the tile store with
//! the fused epilogue.
//!
//! A tile is `MR` rows × two vectors of columns (`NR = 2 × LANES`): 12 × 32 on AVX-512
//! (24 accumulators of 32 registers), 6 × 16 on AVX2, 4 × 8 on the portable level. Each
//! step of `k` loads two vectors of packed B and broadcasts `MR` values of packed A.

use ptero_simd::{Level, Simd};

use crate::{Activation, Bias};

/// Rows of a tile for a vector width.
pub(crate) const fn mr_for_lanes(lanes: usize) -> usize {
    match lanes {
        16 => 12,
        8 => 6,
        _ => 4,
    }
}

/// `(MR, NR)` of the microkernel that runs at `level`.
pub(crate) fn geometry(level: Level) -> (usize, usize) {
    let lanes = match level {
        Level::Avx512 if Level::Avx512.is_supported() => 16,
        Level::Avx2 | Level::Avx512 if Level::Avx2.is_supported() => 8,
        _ => 4,
    };
    (mr_for_lanes(lanes), 2 * lanes)
}

/// `A(MR × kc) · B(kc × NR)`.
///
/// The accumulators are locals returned by value: behind a reference LLVM must assume the
/// raw-pointer loads may alias them and spills them on every step.
///
/// # Safety
/// `a` must be readable for `kc * MR` f32 and `b` for `kc * 2 * LANES` f32.
#[inline(always)]
pub(crate) unsafe fn micro<S: Simd, const MR: usize>(
    s: S,
    kc: usize,
    a: *const f32,
    b: *const f32,
) -> [[S::F; 2]; MR] {
    let nr = 2 * S::LANES;
    let mut acc = [[s.zero(); 2]; MR];
    for p in 0..kc {
        // SAFETY: p < kc, so both reads are inside the ranges the caller guarantees.
        let (b0, b1) = unsafe {
            (
                s.load_ptr(b.add(p * nr)),
                s.load_ptr(b.add(p * nr + S::LANES)),
            )
        };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: p * MR + i < kc * MR.
            let ai = s.splat(unsafe { *a.add(p * MR + i) });
            row[0] = s.mul_add(ai, b0, row[0]);
            row[1] = s.mul_add(ai, b1, row[1]);
        }
    }
    acc
}

/// The epilogue with its operands' extents already checked against the output shape.
pub(crate) struct Epi<'a> {
    pub alpha: f32,
    pub beta: f32,
    pub bias: Bias<'a>,
    pub act: Activation,
}

impl Epi<'_> {
    /// Applies alpha, bias and activation to `v`, the values of row `i`, columns
    /// `j..j + n` (`n <= LANES`).
    #[inline(always)]
    pub(crate) fn apply<S: Simd>(&self, s: S, v: S::F, i: usize, j: usize, n: usize) -> S::F {
        let mut v = if self.alpha == 1.0 {
            v
        } else {
            s.mul(v, s.splat(self.alpha))
        };
        if self.beta != 0.0 {
            let b = match self.bias {
                Bias::None => None,
                Bias::PerCol(b) => Some(if n == S::LANES {
                    s.load(&b[j..])
                } else {
                    s.load_part(&b[j..j + n])
                }),
                Bias::PerRow(b) => Some(s.splat(b[i])),
                Bias::Mat(m) => {
                    let mut t = [0.0f32; 16];
                    for (jj, x) in t.iter_mut().enumerate().take(n) {
                        *x = m.at(i, j + jj);
                    }
                    Some(s.load_part(&t[..n]))
                }
            };
            if let Some(b) = b {
                v = if self.beta == 1.0 {
                    s.add(v, b)
                } else {
                    s.mul_add(b, s.splat(self.beta), v)
                };
            }
        }
        match self.act {
            Activation::None => v,
            Activation::Relu => s.max(s.zero(), v),
            Activation::Clamp(lo, hi) => ptero_simd::ops::clamp(s, v, lo, hi),
        }
    }
}

/// Where a tile goes: `c` points at element `(i0, j0)` of the output.
pub(crate) struct TileOut {
    pub c: *mut f32,
    pub rs: usize,
    pub cs: usize,
    pub i0: usize,
    pub j0: usize,
    pub m_eff: usize,
    pub n_eff: usize,
}

/// Stores a tile: adds what the output holds unless `first` (an earlier K block left
/// partial sums there), and applies the epilogue when `last`.
///
/// # Safety
/// For `i < m_eff`, `j < n_eff`, `c + i * rs + j * cs` must be writable and not accessed
/// by anyone else during the call.
#[inline(always)]
pub(crate) unsafe fn store_tile<S: Simd, const MR: usize>(
    s: S,
    acc: &[[S::F; 2]; MR],
    t: &TileOut,
    first: bool,
    last: bool,
    epi: &Epi<'_>,
) {
    let l = S::LANES;
    for (i, row) in acc.iter().enumerate().take(t.m_eff) {
        for (h, &v) in row.iter().enumerate() {
            let j = h * l;
            if j >= t.n_eff {
                break;
            }
            let n = (t.n_eff - j).min(l);
            // SAFETY: row i < m_eff; columns j..j + n < n_eff.
            let base = unsafe { t.c.add(i * t.rs + j * t.cs) };
            let mut v = v;
            if t.cs == 1 {
                // SAFETY: `n` contiguous elements from `base` are inside the tile.
                let dst = unsafe { core::slice::from_raw_parts_mut(base, n) };
                if !first {
                    let old = if n == l {
                        s.load(dst)
                    } else {
                        s.load_part(dst)
                    };
                    v = s.add(v, old);
                }
                if last {
                    v = epi.apply(s, v, t.i0 + i, t.j0 + j, n);
                }
                if n == l {
                    s.store(dst, v);
                } else {
                    s.store_part(dst, v);
                }
            } else {
                let mut tmp = [0.0f32; 16];
                if !first {
                    for (jj, x) in tmp.iter_mut().enumerate().take(n) {
                        // SAFETY: element jj < n of this row of the tile.
                        *x = unsafe { *base.add(jj * t.cs) };
                    }
                    v = s.add(v, s.load_part(&tmp[..n]));
                }
                if last {
                    v = epi.apply(s, v, t.i0 + i, t.j0 + j, n);
                }
                s.store_part(&mut tmp[..n], v);
                for (jj, x) in tmp.iter().enumerate().take(n) {
                    // SAFETY: element jj < n of this row of the tile.
                    unsafe { *base.add(jj * t.cs) = *x };
                }
            }
        }
    }
}
