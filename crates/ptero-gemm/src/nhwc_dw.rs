//! Channels-last depthwise convolution over channel vectors: every tap one load per
//! vector, four interior pixels per weight load, the filter laid out `[tap][channel]`;
//! and the banded pointwise → depthwise pair on channels-last images.

use ptero_simd::{
    dispatch_at, split_count, split_range, Parallel, Serial, Simd, SimdOp, SlotArena,
};

use crate::conv::{Conv2d, Image};
use crate::depthwise::act_vec;
use crate::driver::{gemm_out, scratch_floats, COut, SyncPtr};
use crate::{Activation, Bias, Epilogue, GemmError, Lhs, MatRef, PackedB, Rhs};

/// Pixels of a run of [`Dw::runs`]: eight sums plus a row's weights fit AVX2's sixteen
/// registers.
const RUN: usize = 8;

/// Taps of the channels-last depthwise kernel at most (its filter is laid out per task).
pub(crate) const DW_MAX_TAPS: usize = 64;

/// True when [`depthwise`] applies: channels adjacent in input and output.
pub(crate) fn depthwise_applies(g: &Conv2d, xs: [usize; 4], os: [usize; 4]) -> bool {
    xs[1] == 1 && os[1] == 1 && g.kh * g.kw <= DW_MAX_TAPS && g.cout >= 8
}

/// Lays out depthwise weights `[c, 1, kh, kw]` (any strides) as `[tap][channel]` in
/// `dst` (`kh · kw · c` long).
pub(crate) fn pack_depthwise(g: &Conv2d, w: Image<'_>, dst: &mut [f32]) {
    let c = g.cout;
    for tap in 0..g.kh * g.kw {
        let (ky, kx) = (tap / g.kw, tap % g.kw);
        let src = ky * w.strides[2] + kx * w.strides[3];
        for (ch, d) in dst[tap * c..(tap + 1) * c].iter_mut().enumerate() {
            *d = w.data[src + ch * w.strides[0]];
        }
    }
}

/// A depthwise convolution over channel vectors with weights laid out by
/// [`pack_depthwise`], output rows split over threads.
///
/// # Safety
/// As [`crate::conv2d`]'s output and input: extents checked; `w` holds `kh · kw · cout`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise(
    par: &dyn Parallel,
    g: &Conv2d,
    x: Image<'_>,
    w: &[f32],
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) {
    let taps = g.kh * g.kw;
    let c = g.cout;
    let rows = g.n * g.oh;
    let work = rows * g.ow * c * (taps + 1);
    let parts = if work < crate::driver::PAR_MIN_MACS / 4 {
        1
    } else {
        2 * par.threads()
    };
    let chunks = split_count(rows, parts, 1);
    let level = ptero_simd::level();
    let w = &w[..taps * c];
    let bias = bias.map(|b| &b[..c]);
    par.run(chunks, &|t| {
        dispatch_at(
            level,
            DwNhwc {
                g,
                x,
                w,
                bias,
                rows: split_range(rows, chunks, 1, t),
                out,
                os,
                act,
            },
        );
    });
}

struct DwNhwc<'a> {
    g: &'a Conv2d,
    x: Image<'a>,
    /// `[tap][channel]`.
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    /// Output rows `n · oh + oy`.
    rows: core::ops::Range<usize>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
}

impl SimdOp for DwNhwc<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let DwNhwc {
            g,
            x,
            w,
            bias,
            rows,
            out,
            os,
            act,
        } = self;
        let xs = x.strides;
        let taps = g.kh * g.kw;
        let (ph, pw) = (g.pad[0] as isize, g.pad[1] as isize);
        let (sy, sx) = (g.stride[0] as isize, g.stride[1] as isize);
        let (dy, dx) = (g.dilation[0] as isize, g.dilation[1] as isize);
        // Valid taps along one axis for output coordinate `o`: `[lo, hi)` and the input
        // coordinate of tap 0.
        let span = |o: usize, st: isize, d: isize, p: isize, k: usize, n_in: usize| {
            let first = o as isize * st - p;
            let lo = if first < 0 { (-first + d - 1) / d } else { 0 };
            let hi = if first >= n_in as isize {
                0
            } else {
                ((n_in as isize - 1 - first) / d + 1).min(k as isize)
            };
            (
                lo.clamp(0, k as isize) as usize,
                hi.max(lo).clamp(0, k as isize) as usize,
                first,
            )
        };
        // Tap offsets from a pixel whose taps all fall inside the image.
        let mut full = [(0usize, 0usize); DW_MAX_TAPS];
        for (t, f) in full.iter_mut().enumerate().take(taps) {
            let (ky, kx) = (t / g.kw, t % g.kw);
            *f = (
                ky * g.dilation[0] * xs[2] + kx * g.dilation[1] * xs[3],
                t * g.cout,
            );
        }
        let full = &full[..taps];
        // Output columns whose every horizontal tap is inside: [ilo, ihi).
        let ilo = ((pw + sx - 1) / sx).min(g.ow as isize) as usize;
        let reach = g.iw as isize - 1 + pw - (g.kw as isize - 1) * dx;
        let ihi = if reach < 0 {
            ilo
        } else {
            ((reach / sx + 1) as usize).clamp(ilo, g.ow)
        };
        let mut offs = [(0usize, 0usize); DW_MAX_TAPS];
        // Square 3 x 3 filters of horizontal stride 1 or 2 and 5 x 5 ones of stride 1,
        // without horizontal dilation, slide along the row (see `Dw::runs`); a 5 x 5
        // filter of stride 2 reuses too little to pay.
        let sliding = (g.kh == g.kw
            && matches!((g.kw, g.stride[1]), (3, 1 | 2) | (5, 1))
            && g.dilation[1] == 1)
            .then_some((g.kw, g.stride[1]));
        let k = Dw {
            s,
            x,
            w,
            bias,
            act,
            c: g.cout,
        };
        for r in rows {
            let (n, oy) = (r / g.oh, r % g.oh);
            let (ky0, ky1, iy0) = span(oy, sy, dy, ph, g.kh, g.ih);
            let (lo, hi) = if ky0 == 0 && ky1 == g.kh {
                (ilo, ihi)
            } else {
                (g.ow, g.ow)
            };
            // SAFETY (for every pointer below): pixel (oy, ox) of image n is inside the
            // checked output, and this task alone writes row r.
            let orow = unsafe { out.get().add(n * os[0] + oy * os[2]) };
            // Interior pixels go four at a time, channel vector by channel vector over
            // the whole run, so the few input rows a vector reads stay in L1; the rest
            // one pixel at a time.
            let mut q0 = lo;
            if let Some((kk, st)) = sliding {
                let runs = if hi > lo { (hi - lo) / RUN } else { 0 };
                if runs > 0 {
                    let base = n * xs[0]
                        + (iy0 as usize) * xs[2]
                        + ((lo as isize * sx - pw) as usize) * xs[3];
                    let (rs, ps) = (g.dilation[0] * xs[2], xs[3]);
                    // SAFETY: every pixel of the runs has all its taps inside the checked
                    // input; its outputs are inside the checked output (channel stride 1).
                    unsafe {
                        let o = orow.add(lo * os[3]);
                        match (kk, st) {
                            (3, 1) => k.runs::<3, 1>(base, rs, ps, o, os[3], runs),
                            (3, 2) => k.runs::<3, 2>(base, rs, ps, o, os[3], runs),
                            _ => k.runs::<5, 1>(base, rs, ps, o, os[3], runs),
                        }
                    }
                    q0 = lo + RUN * runs;
                }
            }
            let quads = if hi > q0 { (hi - q0) / 4 } else { 0 };
            let q1 = q0 + 4 * quads;
            if quads > 0 {
                let base =
                    n * xs[0] + (iy0 as usize) * xs[2] + ((q0 as isize * sx - pw) as usize) * xs[3];
                // SAFETY: every pixel of the run has all its taps inside the checked
                // input; its outputs are inside the checked output (channel stride 1).
                unsafe {
                    k.quads(
                        full,
                        base,
                        g.stride[1] * xs[3],
                        orow.add(q0 * os[3]),
                        os[3],
                        quads,
                    )
                };
            }
            for ox in (0..g.ow).filter(|&ox| ox < lo || ox >= q1) {
                let (kx0, kx1, ix0) = span(ox, sx, dx, pw, g.kw, g.iw);
                let mut nt = 0;
                for ky in ky0..ky1 {
                    let iy = (iy0 + ky as isize * dy) as usize;
                    for kx in kx0..kx1 {
                        let ix = (ix0 + kx as isize * dx) as usize;
                        offs[nt] = (
                            n * xs[0] + iy * xs[2] + ix * xs[3],
                            (ky * g.kw + kx) * g.cout,
                        );
                        nt += 1;
                    }
                }
                // SAFETY: the listed taps are inside the checked input.
                unsafe { k.pixel(&offs[..nt], orow.add(ox * os[3])) };
            }
        }
    }
}

/// The per-pixel kernels of [`DwNhwc`].
#[derive(Clone, Copy)]
struct Dw<'a, S: Simd> {
    s: S,
    x: Image<'a>,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    act: Activation,
    c: usize,
}

impl<S: Simd> Dw<'_, S> {
    #[inline(always)]
    fn init(&self, ch: usize) -> S::F {
        self.bias.map_or(self.s.zero(), |b| self.s.load(&b[ch..]))
    }

    /// One pixel: `offs` lists (input offset, filter offset) of its valid taps.
    ///
    /// # Safety
    /// Every `offs[i].0 + c` is inside the input, `op..op + c` inside the output and
    /// exclusive to the caller.
    #[inline(always)]
    unsafe fn pixel(&self, offs: &[(usize, usize)], op: *mut f32) {
        let (s, c, l) = (self.s, self.c, S::LANES);
        let (xp, wp) = (self.x.data.as_ptr(), self.w.as_ptr());
        let mut ch = 0;
        while ch + 2 * l <= c {
            let (mut a0, mut a1) = (self.init(ch), self.init(ch + l));
            for &(xo, wo) in offs {
                // SAFETY: per the contract; channels ch..ch + 2·l are below c.
                unsafe {
                    let (xq, wq) = (xp.add(xo + ch), wp.add(wo + ch));
                    a0 = s.mul_add(s.load_ptr(xq), s.load_ptr(wq), a0);
                    a1 = s.mul_add(s.load_ptr(xq.add(l)), s.load_ptr(wq.add(l)), a1);
                }
            }
            // SAFETY: per the contract.
            unsafe {
                s.store_ptr(op.add(ch), act_vec(s, self.act, a0));
                s.store_ptr(op.add(ch + l), act_vec(s, self.act, a1));
            }
            ch += 2 * l;
        }
        while ch < c {
            let m = l.min(c - ch);
            let mut a = self.bias.map_or(s.zero(), |b| s.load_part(&b[ch..ch + m]));
            for &(xo, wo) in offs {
                let xi = s.load_part(&self.x.data[xo + ch..][..m]);
                let wi = s.load_part(&self.w[wo + ch..][..m]);
                a = s.mul_add(xi, wi, a);
            }
            // SAFETY: per the contract.
            unsafe {
                s.store_part(
                    core::slice::from_raw_parts_mut(op.add(ch), m),
                    act_vec(s, self.act, a),
                )
            };
            ch += m;
        }
    }

    /// `runs` runs of [`RUN`] neighbouring pixels of a `K x K` filter with horizontal
    /// stride `ST`, all taps valid: `base` is the first pixel's top-left tap, rows of taps
    /// `rs` apart, pixels `ps`. Each input vector is loaded once per run and row of taps
    /// and feeds every pixel it is a tap of (three on average for a 3 x 3 filter of
    /// stride 1), the row's weights once per run: about two multiply-adds per load where
    /// a pixel at a time does one, and loads are what bounds this kernel.
    ///
    /// # Safety
    /// Every tap of every pixel, plus `c` channels, inside the input; the outputs inside
    /// the output and exclusive to the caller.
    #[inline(always)]
    unsafe fn runs<const K: usize, const ST: usize>(
        &self,
        base: usize,
        rs: usize,
        ps: usize,
        op: *mut f32,
        ostep: usize,
        runs: usize,
    ) {
        let (s, c, l) = (self.s, self.c, S::LANES);
        let (xp, wp) = (self.x.data.as_ptr(), self.w.as_ptr());
        let mut ch = 0;
        while ch + l <= c {
            let b = self.init(ch);
            for r in 0..runs {
                let xb = base + r * RUN * ST * ps + ch;
                let mut acc = [b; RUN];
                for ky in 0..K {
                    let mut w = [s.zero(); K];
                    for (kx, wv) in w.iter_mut().enumerate() {
                        // SAFETY: tap (ky, kx) of channel vector ch exists.
                        *wv = unsafe { s.load_ptr(wp.add((ky * K + kx) * c + ch)) };
                    }
                    let row = xb + ky * rs;
                    // SAFETY (every load): column `col` of tap row ky is a tap of a pixel
                    // of the run.
                    let ld = |col: usize| unsafe { s.load_ptr(xp.add(row + col * ps)) };
                    if ST == 2 && K == 3 {
                        // Even columns are tap 0 of one pixel and tap 2 of the one before,
                        // odd ones tap 1 only. Spelled out so the sums stay in registers.
                        for p in 0..RUN {
                            let e = ld(2 * p);
                            acc[p] = s.mul_add(e, w[0], acc[p]);
                            if p > 0 {
                                acc[p - 1] = s.mul_add(e, w[2], acc[p - 1]);
                            }
                            acc[p] = s.mul_add(ld(2 * p + 1), w[1], acc[p]);
                        }
                        acc[RUN - 1] = s.mul_add(ld(2 * RUN), w[2], acc[RUN - 1]);
                    } else {
                        for col in 0..ST * (RUN - 1) + K {
                            let x = ld(col);
                            for (kx, wv) in w.iter().enumerate() {
                                if col >= kx && (col - kx) % ST == 0 && (col - kx) / ST < RUN {
                                    let p = (col - kx) / ST;
                                    acc[p] = s.mul_add(x, *wv, acc[p]);
                                }
                            }
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate() {
                    // SAFETY: per the contract.
                    unsafe {
                        s.store_ptr(op.add((r * RUN + p) * ostep + ch), act_vec(s, self.act, *a))
                    };
                }
            }
            ch += l;
        }
        if ch < c {
            let m = c - ch;
            let b = self.bias.map_or(s.zero(), |b| s.load_part(&b[ch..ch + m]));
            for r in 0..runs {
                let xb = base + r * RUN * ST * ps + ch;
                let mut acc = [b; RUN];
                for ky in 0..K {
                    for kx in 0..K {
                        let wv = s.load_part(&self.w[(ky * K + kx) * c + ch..][..m]);
                        for (p, a) in acc.iter_mut().enumerate() {
                            let at = xb + ky * rs + (p * ST + kx) * ps;
                            *a = s.mul_add(s.load_part(&self.x.data[at..][..m]), wv, *a);
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate() {
                    // SAFETY: per the contract.
                    unsafe {
                        s.store_part(
                            core::slice::from_raw_parts_mut(op.add((r * RUN + p) * ostep + ch), m),
                            act_vec(s, self.act, *a),
                        )
                    };
                }
            }
        }
    }

    /// `quads` groups of four pixels `step` apart in the input and `ostep` in the
    /// output, all taps valid: per channel vector, every group in turn.
    ///
    /// # Safety
    /// `base + p·step + tap + c` inside the input for every pixel `p < 4 · quads` and
    /// tap, the outputs inside the output and exclusive to the caller.
    #[inline(always)]
    unsafe fn quads(
        &self,
        taps: &[(usize, usize)],
        base: usize,
        step: usize,
        op: *mut f32,
        ostep: usize,
        quads: usize,
    ) {
        let (s, c, l) = (self.s, self.c, S::LANES);
        let (xp, wp) = (self.x.data.as_ptr(), self.w.as_ptr());
        let mut ch = 0;
        // Two channel vectors at a time: eight independent sums hide the multiply-add
        // latency (four chains of nine dependent steps do not).
        while ch + 2 * l <= c {
            let (b0, b1) = (self.init(ch), self.init(ch + l));
            for q in 0..quads {
                let qb = base + 4 * q * step;
                let qo = 4 * q * ostep;
                let (mut a, mut e) = ([b0; 4], [b1; 4]);
                for &(to, wo) in taps {
                    // SAFETY: per the contract.
                    unsafe {
                        let w0 = s.load_ptr(wp.add(wo + ch));
                        let w1 = s.load_ptr(wp.add(wo + ch + l));
                        let xq = xp.add(qb + to + ch);
                        for p in 0..4 {
                            a[p] = s.mul_add(s.load_ptr(xq.add(p * step)), w0, a[p]);
                            e[p] = s.mul_add(s.load_ptr(xq.add(p * step + l)), w1, e[p]);
                        }
                    }
                }
                for p in 0..4 {
                    // SAFETY: per the contract.
                    unsafe {
                        let o = op.add(qo + p * ostep + ch);
                        s.store_ptr(o, act_vec(s, self.act, a[p]));
                        s.store_ptr(o.add(l), act_vec(s, self.act, e[p]));
                    }
                }
            }
            ch += 2 * l;
        }
        while ch + l <= c {
            let b = self.init(ch);
            for q in 0..quads {
                let qb = base + 4 * q * step;
                let qo = 4 * q * ostep;
                let mut a = [b; 4];
                for &(to, wo) in taps {
                    // SAFETY: per the contract.
                    unsafe {
                        let wv = s.load_ptr(wp.add(wo + ch));
                        let xq = xp.add(qb + to + ch);
                        for (p, acc) in a.iter_mut().enumerate() {
                            *acc = s.mul_add(s.load_ptr(xq.add(p * step)), wv, *acc);
                        }
                    }
                }
                for (p, acc) in a.iter().enumerate() {
                    // SAFETY: per the contract.
                    unsafe { s.store_ptr(op.add(qo + p * ostep + ch), act_vec(s, self.act, *acc)) };
                }
            }
            ch += l;
        }
        if ch < c {
            let m = c - ch;
            let b = self.bias.map_or(s.zero(), |b| s.load_part(&b[ch..ch + m]));
            for q in 0..quads {
                let qb = base + 4 * q * step;
                let qo = 4 * q * ostep;
                let mut a = [b; 4];
                for &(to, wo) in taps {
                    let wv = s.load_part(&self.w[wo + ch..][..m]);
                    for (p, acc) in a.iter_mut().enumerate() {
                        let xi = s.load_part(&self.x.data[qb + p * step + to + ch..][..m]);
                        *acc = s.mul_add(xi, wv, *acc);
                    }
                }
                for (p, acc) in a.iter().enumerate() {
                    // SAFETY: per the contract.
                    unsafe {
                        s.store_part(
                            core::slice::from_raw_parts_mut(op.add(qo + p * ostep + ch), m),
                            act_vec(s, self.act, *acc),
                        )
                    };
                }
            }
        }
    }
}

/// [`crate::pointwise_depthwise`] on channels-last images: each task expands the input
/// rows of its band of output rows (contiguous pixels in this layout, multiplied in
/// place) into its slot, `[rows, width, cmid]`, and runs the depthwise kernel over it.
/// `Ok(false)` when the pair does not fit this path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_depthwise(
    par: &dyn Parallel,
    arena: &SlotArena,
    g1: &Conv2d,
    pw: &[PackedB],
    pw_bias: Option<&[f32]>,
    pw_act: Activation,
    g2: &Conv2d,
    dw: &[f32],
    dw_bias: Option<&[f32]>,
    dw_act: Activation,
    x: Image<'_>,
    out: crate::ImageMut<'_>,
) -> Result<bool, GemmError> {
    let xs = x.strides;
    let os = out.strides;
    let cmid = g1.cout;
    let band_floats = crate::fused::BAND_FLOATS;
    if pw.len() != 1
        || pw[0].k != g1.cin
        || pw[0].n != cmid
        || dw.len() < g2.kh * g2.kw * cmid
        || xs[1] != 1
        || (g1.ih > 1 && xs[2] != g1.iw * xs[3])
        || !depthwise_applies(g2, [0, 1, g1.iw * cmid, cmid], os)
        || arena.slot_len() < band_floats + scratch_floats()
    {
        return Ok(false);
    }
    crate::conv::check_extent("input", x.data.len(), [g1.n, g1.cin, g1.ih, g1.iw], xs)?;
    crate::conv::check_output(&out, [g2.n, g2.cout, g2.oh, g2.ow])?;
    for b in [pw_bias, dw_bias] {
        if b.is_some_and(|b| b.len() < cmid) {
            return Err(GemmError::Shape {
                what: "fused convolution bias length",
                expected: cmid,
                found: b.map_or(0, |b| b.len()),
            });
        }
    }
    if g2.n == 0 || g2.oh == 0 || g2.ow == 0 || cmid == 0 {
        return Ok(true);
    }
    let (sh, ph) = (g2.stride[0], g2.pad[0]);
    let span = (g2.kh - 1) * g2.dilation[0] + 1;
    let rows_in = |r: usize| (r - 1) * sh + span;
    let row_floats = cmid * g1.iw;
    let mut fit = 0;
    while fit < g2.oh && rows_in(fit + 1).saturating_mul(row_floats) <= band_floats {
        fit += 1;
    }
    if fit == 0 {
        return Ok(false);
    }
    let bands = crate::fused::band_count(g2.n, g2.oh, fit, par.threads());
    let optr = SyncPtr(out.data.as_mut_ptr());
    let level = ptero_simd::level();
    let epi = Epilogue {
        alpha: 1.0,
        beta: if pw_bias.is_some() { 1.0 } else { 0.0 },
        bias: pw_bias.map_or(Bias::None, Bias::PerCol),
        act: pw_act,
    };
    let err = crate::batch::FirstError::new();
    par.run(g2.n * bands, &|t| {
        let (n, b) = (t / bands, t % bands);
        let band = split_range(g2.oh, bands, 1, b);
        let (oy0, oy1) = (band.start, band.end);
        let top = (oy0 * sh) as isize - ph as isize;
        let lo = top.max(0) as usize;
        let hi = ((oy1 - 1) * sh + span).saturating_sub(ph).min(g1.ih);
        let nrows = hi.saturating_sub(lo);
        let r = arena.with(band_floats + scratch_floats(), |buf| {
            let (band, rest) = buf.split_at_mut(band_floats);
            let pixels = nrows * g1.iw;
            let band = &mut band[..pixels * cmid];
            if pixels > 0 {
                let a = MatRef {
                    data: &x.data[n * xs[0] + lo * xs[2]..],
                    rows: pixels,
                    cols: g1.cin,
                    rs: xs[3],
                    cs: 1,
                };
                let c = COut {
                    ptr: SyncPtr(band.as_mut_ptr()),
                    rows: pixels,
                    cols: cmid,
                    rs: cmid,
                    cs: 1,
                };
                // SAFETY: `c` is exactly `band`, borrowed mutably here.
                unsafe {
                    gemm_out(
                        &Serial,
                        None,
                        Some(rest),
                        Lhs::Mat(a),
                        Rhs::Packed(pw[0].view()),
                        c,
                        &epi,
                    )?
                };
            }
            let sub = Conv2d {
                n: 1,
                ih: nrows,
                oh: oy1 - oy0,
                pad: [(lo as isize - top) as usize, g2.pad[1]],
                ..*g2
            };
            dispatch_at(
                level,
                DwNhwc {
                    g: &sub,
                    x: Image {
                        data: band,
                        strides: [0, 1, g1.iw * cmid, cmid],
                    },
                    w: dw,
                    bias: dw_bias,
                    rows: 0..sub.oh,
                    // SAFETY: row oy0 of image n is inside the checked output.
                    out: SyncPtr(unsafe { optr.get().add(n * os[0] + oy0 * os[2]) }),
                    os,
                    act: dw_act,
                },
            );
            Ok(())
        });
        match r {
            Some(Ok(())) => {}
            Some(Err(e)) => err.set(e),
            None => err.set(GemmError::OutOfMemory {
                bytes: (band_floats + scratch_floats()) * 4,
            }),
        }
    });
    match err.take() {
        Some(e) => Err(e),
        None => Ok(true),
    }
}
