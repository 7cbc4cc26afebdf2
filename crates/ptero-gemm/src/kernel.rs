//! The register-blocked microkernel, written once over [`Simd`], and the tile store with
//! the fused epilogue.
//!
//! A tile is `MR` rows × two vectors of columns (`NR = 2 × LANES`): 12 × 32 on AVX-512
//! (24 accumulators of 32 registers), 6 × 16 on AVX2, 4 × 8 on the portable level. Each
//! step of `k` loads two vectors of packed B and broadcasts `MR` values of packed A.

use ptero_simd::{Level, Simd};

use crate::driver::{Shifted, Wrap};
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
        // A packed A is a layer's weights (see `micro_shifted`).
        prefetch(a.wrapping_add((p + A_AHEAD) * MR));
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: p * MR + i < kc * MR.
            let ai = s.splat(unsafe { *a.add(p * MR + i) });
            row[0] = s.mul_add(ai, b0, row[0]);
            row[1] = s.mul_add(ai, b1, row[1]);
        }
    }
    acc
}

/// [`micro`] with A read in place: row `i` of the strip starts at `rows[i]` (rows past
/// the matrix's end repeat a valid row; their results are dropped), so a row-major left
/// operand (channels-last activations) is never packed. Every row's accumulators start
/// at `init` (the bias, when the caller folds it in).
///
/// # Safety
/// Each `rows[i]` must be readable for `kc` f32, and `b` for `kc * 2 * LANES` f32.
#[inline(always)]
pub(crate) unsafe fn micro_rows<S: Simd, const MR: usize>(
    s: S,
    kc: usize,
    rows: &[*const f32; MR],
    b: *const f32,
    init: [S::F; 2],
) -> [[S::F; 2]; MR] {
    let nr = 2 * S::LANES;
    let mut acc = [init; MR];
    for p in 0..kc {
        // SAFETY: p < kc, inside the ranges the caller guarantees.
        let (b0, b1) = unsafe {
            (
                s.load_ptr(b.add(p * nr)),
                s.load_ptr(b.add(p * nr + S::LANES)),
            )
        };
        // B is a layer's packed weights here (`linear`, channels-last convolutions).
        prefetch(b.wrapping_add((p + B_AHEAD) * nr));
        prefetch(b.wrapping_add((p + B_AHEAD) * nr + S::LANES));
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: p < kc.
            let ai = s.splat(unsafe { *rows[i].add(p) });
            row[0] = s.mul_add(ai, b0, row[0]);
            row[1] = s.mul_add(ai, b1, row[1]);
        }
    }
    acc
}

/// [`micro_rows`] for a panel whose columns past the first vector are padding (an
/// output 16 channels wide, or a panel of the last 16 or fewer): half the multiply-adds.
/// The second vector of each row is returned zero.
///
/// # Safety
/// As [`micro_rows`].
#[inline(always)]
pub(crate) unsafe fn micro_rows_half<S: Simd, const MR: usize>(
    s: S,
    kc: usize,
    rows: &[*const f32; MR],
    b: *const f32,
    init: [S::F; 2],
) -> [[S::F; 2]; MR] {
    let nr = 2 * S::LANES;
    let mut acc = [[init[0], s.zero()]; MR];
    for p in 0..kc {
        // SAFETY: p < kc, inside the range the caller guarantees.
        let b0 = unsafe { s.load_ptr(b.add(p * nr)) };
        prefetch(b.wrapping_add((p + B_AHEAD) * nr));
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: p < kc.
            let ai = s.splat(unsafe { *rows[i].add(p) });
            row[0] = s.mul_add(ai, b0, row[0]);
        }
    }
    acc
}

/// [`micro`] for a single row (decode's matrix-vector products): B streams from memory,
/// so four independent accumulator pairs keep the loads in flight instead of waiting on
/// one chain of multiply-adds.
///
/// # Safety
/// As [`micro`] with `MR = 1`.
#[inline(always)]
pub(crate) unsafe fn micro_row<S: Simd>(
    s: S,
    kc: usize,
    a: *const f32,
    b: *const f32,
) -> [[S::F; 2]; 1] {
    let (l, nr) = (S::LANES, 2 * S::LANES);
    let mut acc = [[s.zero(); 2]; 4];
    let mut p = 0;
    while p + 4 <= kc {
        for (u, pair) in acc.iter_mut().enumerate() {
            // SAFETY: p + u < kc, inside the ranges the caller guarantees.
            unsafe {
                let ai = s.splat(*a.add(p + u));
                let row = b.add((p + u) * nr);
                pair[0] = s.mul_add(ai, s.load_ptr(row), pair[0]);
                pair[1] = s.mul_add(ai, s.load_ptr(row.add(l)), pair[1]);
            }
        }
        p += 4;
    }
    while p < kc {
        // SAFETY: p < kc.
        unsafe {
            let ai = s.splat(*a.add(p));
            let row = b.add(p * nr);
            acc[0][0] = s.mul_add(ai, s.load_ptr(row), acc[0][0]);
            acc[0][1] = s.mul_add(ai, s.load_ptr(row.add(l)), acc[0][1]);
        }
        p += 1;
    }
    let sum = |h: usize| s.add(s.add(acc[0][h], acc[1][h]), s.add(acc[2][h], acc[3][h]));
    [[sum(0), sum(1)]]
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
            Activation::Silu => ptero_simd::math::silu(s, v),
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
    // SAFETY: the caller's contract, passed on.
    if first && last && unsafe { store_tile_whole(s, acc, t, epi) } {
        return;
    }
    let l = S::LANES;
    for (i, row) in acc.iter().enumerate().take(t.m_eff) {
        for (h, &v) in row.iter().enumerate() {
            let j = h * l;
            if j >= t.n_eff {
                break;
            }
            let n = (t.n_eff - j).min(l);
            let run = Run {
                i: t.i0 + i,
                j: t.j0 + j,
                n,
                first,
                last,
            };
            // SAFETY: row i < m_eff; columns j..j + n < n_eff.
            unsafe { store_run(s, v, t.c.add(i * t.rs + j * t.cs), t.cs, &run, epi) };
        }
    }
}

/// [`store_tile`] for the common case, a tile of whole vectors in contiguous rows with
/// a per-column bias (or none) and the sum complete: the bias is loaded once per tile
/// and the activation chosen once, not per vector. Small-K products (1 × 1 convolutions
/// over 16–32 channels) spend as long storing a tile as computing it, and a branch per
/// vector there showed in profiles. Returns false, having stored nothing, when the tile
/// is not of that kind.
///
/// # Safety
/// As [`store_tile`].
#[inline(always)]
unsafe fn store_tile_whole<S: Simd, const MR: usize>(
    s: S,
    acc: &[[S::F; 2]; MR],
    t: &TileOut,
    epi: &Epi<'_>,
) -> bool {
    let l = S::LANES;
    if t.cs != 1 || !t.n_eff.is_multiple_of(l) || epi.alpha != 1.0 {
        return false;
    }
    let nv = t.n_eff / l;
    let bias = match epi.bias {
        _ if epi.beta == 0.0 => None,
        Bias::None => None,
        Bias::PerCol(b) if epi.beta == 1.0 => {
            let hi = if nv == 2 {
                s.load(&b[t.j0 + l..])
            } else {
                s.zero()
            };
            Some([s.load(&b[t.j0..]), hi])
        }
        _ => return false,
    };
    // The activation as a constant parameter, not a closure: a closure is a function of
    // its own, compiled without the caller's target features unless inlined.
    #[inline(always)]
    fn rows<S: Simd, const MR: usize, const ACT: u8>(
        s: S,
        acc: &[[S::F; 2]; MR],
        t: &TileOut,
        nv: usize,
        bias: Option<[S::F; 2]>,
        (lo, hi): (f32, f32),
    ) {
        let (lo, hi) = (s.splat(lo), s.splat(hi));
        for (i, row) in acc.iter().enumerate().take(t.m_eff) {
            for (h, &v) in row.iter().enumerate().take(nv) {
                let v = match bias {
                    Some(b) => s.add(v, b[h]),
                    None => v,
                };
                let v = match ACT {
                    0 => v,
                    1 => s.max(s.zero(), v),
                    2 => s.min(hi, s.max(lo, v)),
                    _ => ptero_simd::math::silu(s, v),
                };
                // SAFETY: row i < m_eff, columns h * LANES.. + LANES <= n_eff, contiguous
                // (cs == 1): inside the tile (`store_tile`'s contract).
                unsafe { s.store_ptr(t.c.add(i * t.rs + h * S::LANES), v) };
            }
        }
    }
    let none = (0.0, 0.0);
    match epi.act {
        Activation::None => rows::<S, MR, 0>(s, acc, t, nv, bias, none),
        Activation::Relu => rows::<S, MR, 1>(s, acc, t, nv, bias, none),
        Activation::Clamp(lo, hi) => rows::<S, MR, 2>(s, acc, t, nv, bias, (lo, hi)),
        Activation::Silu => rows::<S, MR, 3>(s, acc, t, nv, bias, none),
    }
    true
}

/// A run of at most `LANES` outputs: row `i`, columns `j..j + n`.
pub(crate) struct Run {
    pub i: usize,
    pub j: usize,
    pub n: usize,
    pub first: bool,
    pub last: bool,
}

/// Stores the first `r.n` lanes of `v` at `base`, `cs` apart (adding the partial sums
/// there unless `first`, with the epilogue when `last`).
///
/// # Safety
/// The `r.n` elements `base + jj * cs` must be writable and exclusive to the caller.
#[inline(always)]
unsafe fn store_run<S: Simd>(s: S, v: S::F, base: *mut f32, cs: usize, r: &Run, epi: &Epi<'_>) {
    let (l, n) = (S::LANES, r.n);
    let mut v = v;
    if cs == 1 {
        // SAFETY: `n` contiguous elements from `base` (the contract).
        let dst = unsafe { core::slice::from_raw_parts_mut(base, n) };
        if !r.first {
            let old = if n == l {
                s.load(dst)
            } else {
                s.load_part(dst)
            };
            v = s.add(v, old);
        }
        if r.last {
            v = epi.apply(s, v, r.i, r.j, n);
        }
        if n == l {
            s.store(dst, v);
        } else {
            s.store_part(dst, v);
        }
    } else {
        let mut tmp = [0.0f32; 16];
        if !r.first {
            for (jj, x) in tmp.iter_mut().enumerate().take(n) {
                // SAFETY: element jj < n (the contract).
                *x = unsafe { *base.add(jj * cs) };
            }
            v = s.add(v, s.load_part(&tmp[..n]));
        }
        if r.last {
            v = epi.apply(s, v, r.i, r.j, n);
        }
        s.store_part(&mut tmp[..n], v);
        for (jj, x) in tmp.iter().enumerate().take(n) {
            // SAFETY: element jj < n (the contract).
            unsafe { *base.add(jj * cs) = *x };
        }
    }
}

/// [`store_tile`] for columns wrapped into image rows: `t.c` points at row `t.i0`,
/// pixel 0; tile column `jj` is pixel `t.j0 + jj` of [`Wrap`]'s layout.
///
/// # Safety
/// Every existing pixel of the tile must be writable and exclusive to the caller.
#[inline(always)]
pub(crate) unsafe fn store_wrapped<S: Simd, const MR: usize>(
    s: S,
    acc: &[[S::F; 2]; MR],
    t: &TileOut,
    w: Wrap,
    first: bool,
    last: bool,
    epi: &Epi<'_>,
) {
    // A tile inside one row's valid pixels (every tile of a pixel-linear output): store
    // the registers directly. Spilling them to re-read at odd offsets costs store-forward
    // stalls, which made small-K products (a 1 × 1 convolution over 16 channels) slow.
    let (y0, x0) = (t.j0 / w.width, t.j0 % w.width);
    if x0 + t.n_eff <= w.valid {
        let one = TileOut {
            // SAFETY: pixel (y0, x0) of row i0 exists (the tile's first pixel).
            c: unsafe { t.c.add(y0 * w.row_stride + x0 * t.cs) },
            rs: t.rs,
            cs: t.cs,
            i0: t.i0,
            j0: t.j0,
            m_eff: t.m_eff,
            n_eff: t.n_eff,
        };
        // SAFETY: the tile's pixels are x0..x0 + n_eff of row y0, all valid (the contract).
        unsafe { store_tile(s, acc, &one, first, last, epi) };
        return;
    }
    let l = S::LANES;
    // The tile's values, to be re-read from any column offset.
    let mut tmp = [[0.0f32; 32]; MR];
    for (row, vals) in acc.iter().zip(tmp.iter_mut()) {
        s.store(&mut vals[..], row[0]);
        s.store(&mut vals[l..], row[1]);
    }
    let (j_end, mut j) = (t.j0 + t.n_eff, t.j0);
    while j < j_end {
        let (y, x) = (j / w.width, j % w.width);
        if x >= w.valid {
            j = (y + 1) * w.width;
            continue;
        }
        let seg_end = j_end.min(y * w.width + w.valid);
        // Pieces of at most LANES values along the segment.
        let mut p = j;
        while p < seg_end {
            let n = (seg_end - p).min(l);
            let off = y * w.row_stride + (x + p - j) * t.cs;
            for (i, vals) in tmp.iter().enumerate().take(t.m_eff) {
                let v = s.load_part(&vals[p - t.j0..p - t.j0 + n]);
                let run = Run {
                    i: t.i0 + i,
                    j: p,
                    n,
                    first,
                    last,
                };
                // SAFETY: pixel (y, x + p - j) and the n - 1 after it exist (x + p - j + n
                // <= valid) and belong to this tile (the contract).
                unsafe { store_run(s, v, t.c.add(i * t.rs + off), t.cs, &run, epi) };
            }
            p += n;
        }
        j = seg_end;
    }
}

/// [`micro`] with B read in place from a [`Shifted`] operand: rows `k0..k0 + kc`
/// (whole channels), columns `c0..c0 + n_eff`.
///
/// # Safety
/// `a` must be readable for `kc * MR` f32; `b` must satisfy `Shifted::in_bounds`, with
/// `k0` and `kc` multiples of its taps, `k0 + kc <= channels × taps` and
/// `c0 + n_eff <= b.n`, `n_eff <= 2 * LANES`.
#[inline(always)]
pub(crate) unsafe fn micro_shifted<S: Simd, const MR: usize>(
    s: S,
    a: *const f32,
    b: &Shifted<'_>,
    k0: usize,
    kc: usize,
    c0: usize,
    n_eff: usize,
) -> [[S::F; 2]; MR] {
    let l = S::LANES;
    let taps = b.tapoff.len();
    let mut acc = [[s.zero(); 2]; MR];
    let full = n_eff == 2 * l;
    let mut p = 0;
    for c in k0 / taps..(k0 + kc) / taps {
        let base = c * b.ch + c0;
        for &o in b.tapoff {
            let at = base + o;
            let (b0, b1) = if full {
                // SAFETY: at + 2 * LANES <= (channels - 1) * ch + max tap + n <= len
                // (`in_bounds`), as c0 + 2 * LANES <= n.
                unsafe {
                    let ptr = b.data.as_ptr().add(at);
                    (s.load_ptr(ptr), s.load_ptr(ptr.add(l)))
                }
            } else {
                let n0 = n_eff.min(l);
                let lo = s.load_part(&b.data[at..at + n0]);
                let hi = if n_eff > l {
                    s.load_part(&b.data[at + l..at + n_eff])
                } else {
                    s.zero()
                };
                (lo, hi)
            };
            // A convolution's weights are read once per image, often from memory: ask
            // for them well ahead (the hardware's prefetcher stops at page borders).
            prefetch(a.wrapping_add((p + A_AHEAD) * MR));
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: p * MR + i < kc * MR.
                let ai = s.splat(unsafe { *a.add(p * MR + i) });
                row[0] = s.mul_add(ai, b0, row[0]);
                row[1] = s.mul_add(ai, b1, row[1]);
            }
            p += 1;
        }
    }
    acc
}

/// Steps of K ahead of the one computed whose A values are prefetched.
const A_AHEAD: usize = 48;
/// The same for B (a panel's step is `2 · LANES` values: two cache lines on AVX-512).
const B_AHEAD: usize = 16;

/// Hints that the cache line holding `p` will be read soon. Any address is allowed.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and changes no state visible to the
    // program, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] into L2 only: data wanted later than the next few hundred cycles, which
/// would only evict L1's working set.
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for `prefetch`.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
