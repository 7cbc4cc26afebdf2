//! Depthwise convolution: every channel convolved with its own `kh × kw` filter.
//!
//! The fast path copies a band of each input plane into scratch, padded with zeros and,
//! for a horizontal stride `s`, split into `s` phases (columns `j·s + p`), so that every
//! tap of every output vector is one unaligned load at a fixed offset: no border cases,
//! and strided convolutions read unit-stride rows too.

use ptero_simd::{dispatch_at, split_count, split_range, Parallel, Simd, SimdOp, SlotArena};

use crate::conv::{Conv2d, Image};
use crate::driver::SyncPtr;
use crate::Activation;

/// Scratch floats for one band of one plane (fits L2 with room to spare).
pub(crate) const DW_FLOATS: usize = 1 << 15;
/// Most taps of the fast path (the filter lives in a stack array).
const MAX_TAPS: usize = 64;

/// Planes split over threads.
///
/// # Safety
/// `out` with strides `os` must be valid, non-aliasing and exclusive for the whole
/// `[n, cout, oh, ow]` output.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    w: Image<'_>,
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) {
    let planes = g.n * g.cout;
    // Each plane also costs its copy into scratch: count input and output elements too.
    let work = planes * (g.oh * g.ow * (g.kh * g.kw + 1) + g.ih * g.iw);
    let parts = if work < crate::driver::PAR_MIN_MACS / 4 {
        1
    } else {
        4 * par.threads()
    };
    let chunks = split_count(planes, parts, 1);
    let level = ptero_simd::level();
    par.run(chunks, &|t| {
        let run = |scratch: Option<&mut [f32]>| {
            let mut scratch = scratch;
            for plane in split_range(planes, chunks, 1, t) {
                let (n, c) = (plane / g.cout, plane % g.cout);
                dispatch_at(
                    level,
                    DwPlane {
                        g,
                        x,
                        w,
                        bias: bias.map_or(0.0, |b| b[c]),
                        n,
                        c,
                        out,
                        os,
                        act,
                        scratch: scratch.as_deref_mut(),
                    },
                );
            }
        };
        if arena
            .and_then(|a| a.with(DW_FLOATS, |b| run(Some(b))))
            .is_none()
        {
            run(None);
        }
    });
}

struct DwPlane<'a> {
    g: &'a Conv2d,
    x: Image<'a>,
    w: Image<'a>,
    bias: f32,
    n: usize,
    c: usize,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
    scratch: Option<&'a mut [f32]>,
}

impl SimdOp for DwPlane<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(mut self, s: S) {
        if self.g.kh * self.g.kw <= MAX_TAPS {
            if let Some(buf) = self.scratch.take() {
                if self.padded(s, buf) {
                    return;
                }
            }
        }
        self.direct();
    }
}

/// Layout of the padded, phase-split band in scratch.
struct Band {
    /// Floats of one phase row: every output vector's widest tap stays inside.
    rowlen: usize,
    /// Floats of one padded input row (all its phases).
    prow: usize,
    /// Output rows per band.
    rows: usize,
}

impl DwPlane<'_> {
    fn band(&self, lanes: usize, floats: usize) -> Option<Band> {
        let g = self.g;
        let (sw, dw) = (g.stride[1], g.dilation[1]);
        let rowlen = g.ow.div_ceil(lanes) * lanes + (g.kw - 1) * dw / sw;
        let prow = sw * rowlen;
        let span = (g.kh - 1) * g.dilation[0] + 1;
        // Input rows for `r` output rows: (r - 1) * sh + span.
        let fit = floats / prow.max(1);
        if fit < span {
            return None;
        }
        let rows = ((fit - span) / g.stride[0] + 1).min(g.oh);
        Some(Band { rowlen, prow, rows })
    }

    /// Copies padded input rows `[r0, r0 + count)` (padded coordinates) into `buf`.
    fn fill(&self, band: &Band, r0: usize, count: usize, buf: &mut [f32]) {
        let g = self.g;
        let xs = self.x.strides;
        let xbase = self.n * xs[0] + self.c * xs[1];
        let (sw, pw) = (g.stride[1], g.pad[1]);
        for r in 0..count {
            let row = &mut buf[r * band.prow..(r + 1) * band.prow];
            let iy = (r0 + r) as isize - g.pad[0] as isize;
            if iy < 0 || iy >= g.ih as isize {
                row.fill(0.0);
                continue;
            }
            let src = xbase + iy as usize * xs[2];
            if sw == 1 && xs[3] == 1 {
                let lo = pw.min(band.rowlen);
                let hi = (pw + g.iw).min(band.rowlen);
                row[..lo].fill(0.0);
                row[lo..hi].copy_from_slice(&self.x.data[src..src + (hi - lo)]);
                row[hi..].fill(0.0);
                continue;
            }
            for p in 0..sw {
                let ph = &mut row[p * band.rowlen..(p + 1) * band.rowlen];
                // Phase column j reads input column j * sw + p - pw: valid for j in [lo, hi).
                let lo = (pw.saturating_sub(p)).div_ceil(sw).min(band.rowlen);
                let hi = ((g.iw + pw).saturating_sub(p).div_ceil(sw)).clamp(lo, band.rowlen);
                ph[..lo].fill(0.0);
                ph[hi..].fill(0.0);
                if hi > lo {
                    let first = src + (lo * sw + p - pw) * xs[3];
                    let step = sw * xs[3];
                    if step == 2 && first + 2 * (hi - lo) <= self.x.data.len() {
                        // Pairs: the compiler turns this into shuffles.
                        let pairs = self.x.data[first..first + 2 * (hi - lo)].chunks_exact(2);
                        for (v, pair) in ph[lo..hi].iter_mut().zip(pairs) {
                            *v = pair[0];
                        }
                    } else {
                        let taken = &self.x.data[first..first + (hi - lo - 1) * step + 1];
                        for (k, v) in ph[lo..hi].iter_mut().enumerate() {
                            *v = taken[k * step];
                        }
                    }
                }
            }
        }
    }

    /// The fast path; false when the scratch cannot hold one band.
    #[inline(always)]
    fn padded<S: Simd>(&self, s: S, buf: &mut [f32]) -> bool {
        let g = self.g;
        let Some(band) = self.band(S::LANES, buf.len()) else {
            return false;
        };
        let (sh, sw, dh, dw) = (g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]);
        let taps = g.kh * g.kw;
        let mut wt = [0.0f32; MAX_TAPS];
        let mut off = [0usize; MAX_TAPS];
        let ws = self.w.strides;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let t = ky * g.kw + kx;
                wt[t] = self.w.data[self.c * ws[0] + ky * ws[2] + kx * ws[3]];
                off[t] = ky * dh * band.prow + (kx * dw % sw) * band.rowlen + kx * dw / sw;
            }
        }
        let os = self.os;
        let obase = self.n * os[0] + self.c * os[1];
        let nvec = g.ow.div_ceil(S::LANES);
        let span = (g.kh - 1) * dh + 1;
        let mut oy0 = 0;
        while oy0 < g.oh {
            let rows = band.rows.min(g.oh - oy0);
            let count = (rows - 1) * sh + span;
            let used = count * band.prow;
            let b = &mut buf[..used];
            self.fill(&band, oy0 * sh, count, b);
            // Every load below ends by (rows - 1) * sh * prow + off[taps - 1] + nvec * LANES,
            // which is at most count * prow (see `band`).
            let last = (rows - 1) * sh * band.prow + off[taps - 1] + nvec * S::LANES;
            assert!(last <= b.len(), "depthwise band overrun");
            let bp = b.as_ptr();
            for r in 0..rows {
                let rb = r * sh * band.prow;
                let ob = obase + (oy0 + r) * os[2];
                for v in 0..nvec {
                    let ox = v * S::LANES;
                    let mut acc = s.splat(self.bias);
                    for t in 0..taps {
                        // SAFETY: rb + off[t] + ox + LANES <= last <= b.len() (asserted).
                        let xv = unsafe { s.load_ptr(bp.add(rb + off[t] + ox)) };
                        acc = s.mul_add(s.splat(wt[t]), xv, acc);
                    }
                    let acc = act_vec(s, self.act, acc);
                    let n = S::LANES.min(g.ow - ox);
                    // SAFETY: outputs (oy0 + r, ox..ox + n) of this task's plane, inside the
                    // checked output.
                    unsafe { store_out(s, self.out.get().add(ob + ox * os[3]), os[3], n, acc) };
                }
            }
            oy0 += rows;
        }
        true
    }

    /// Any geometry, without scratch: tap by tap over each output row.
    fn direct(&self) {
        let g = self.g;
        let (xs, ws, os) = (self.x.strides, self.w.strides, self.os);
        let xbase = self.n * xs[0] + self.c * xs[1];
        let obase = self.n * os[0] + self.c * os[1];
        let wbase = self.c * ws[0];
        for oy in 0..g.oh {
            let ob = obase + oy * os[2];
            for ox in 0..g.ow {
                let mut acc = self.bias;
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad[0] as isize;
                    if iy < 0 || iy >= g.ih as isize {
                        continue;
                    }
                    let xrow = xbase + iy as usize * xs[2];
                    for kx in 0..g.kw {
                        let ix =
                            (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad[1] as isize;
                        if ix >= 0 && (ix as usize) < g.iw {
                            let wv = self.w.data[wbase + ky * ws[2] + kx * ws[3]];
                            acc += wv * self.x.data[xrow + ix as usize * xs[3]];
                        }
                    }
                }
                // SAFETY: element (oy, ox) of this task's plane, inside the checked output.
                unsafe { *self.out.get().add(ob + ox * os[3]) = act_scalar(self.act, acc) };
            }
        }
    }
}

#[inline(always)]
fn act_vec<S: Simd>(s: S, act: Activation, v: S::F) -> S::F {
    match act {
        Activation::None => v,
        Activation::Relu => s.max(s.zero(), v),
        Activation::Clamp(lo, hi) => ptero_simd::ops::clamp(s, v, lo, hi),
        Activation::Silu => ptero_simd::math::silu(s, v),
    }
}

/// Stores the first `n` lanes of `v` at `p`, `st` floats apart.
///
/// # Safety
/// The `n` elements `p + i * st` must be valid and exclusive to the caller.
#[inline(always)]
unsafe fn store_out<S: Simd>(s: S, p: *mut f32, st: usize, n: usize, v: S::F) {
    // SAFETY: per the contract.
    unsafe {
        if st == 1 && n == S::LANES {
            s.store_ptr(p, v);
        } else if st == 1 {
            s.store_part(core::slice::from_raw_parts_mut(p, n), v);
        } else {
            let mut tmp = [0.0f32; 64];
            s.store(&mut tmp, v);
            for (i, t) in tmp.iter().enumerate().take(n) {
                *p.add(i * st) = *t;
            }
        }
    }
}

/// The activation on one value, with the vector forms' NaN rule (NaN passes through).
pub(crate) fn act_scalar(act: Activation, v: f32) -> f32 {
    match act {
        Activation::None => v,
        Activation::Relu => {
            if v < 0.0 {
                0.0
            } else {
                v
            }
        }
        Activation::Clamp(lo, hi) => {
            let v = if v < lo { lo } else { v };
            if v > hi {
                hi
            } else {
                v
            }
        }
        Activation::Silu => {
            // The vector form on one lane, so both paths round alike.
            let mut y = [0.0f32];
            ptero_simd::ops::unary(ptero_simd::ops::Unary::Silu, &[v], &mut y);
            y[0]
        }
    }
}
