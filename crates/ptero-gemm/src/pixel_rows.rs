//! Convolutions of channels-first images with output pixels as the GEMM's rows and output
//! channels as its columns, for small images with many channels (ResNet's 14 × 14 and
//! 7 × 7 stages).
//!
//! There the planar kernel (`conv::shifted`: channels as rows, pixels as columns) wastes
//! what its column panels overhang: a 7 × 7 output is 63 columns of a 9-wide padded
//! plane, computed as two panels of 32. Taken the other way round, 49 pixels are seven
//! strips of seven rows and 512 channels sixteen whole panels, so every multiply-add is
//! kept. Row `i` of a strip reads its pixel's patch through its own offset into the
//! padded, stride-split input (`ptero_simd::phase`), so nothing is gathered; the weights
//! are `Wᵀ` packed once as panels of the full depth, each read from memory once per
//! image and then from L2 by every strip. The product of a strip is accumulated over the
//! whole depth in registers and written once, transposed into the channels-first output.

use alloc::vec::Vec;

use ptero_simd::phase::Phases;
use ptero_simd::{dispatch_at, split_count, split_range, Level, Parallel, Simd, SimdOp, SlotArena};

use crate::conv::{fill_phases, Conv2d, Image};
use crate::driver::{with_scratch, SyncPtr, MAX_TAPS};
use crate::kernel::{geometry, prefetch_l2, Epi};
use crate::{Activation, Bias, GemmError, MatRef, PackedB};

/// Rows (pixels) of a strip for a vector width: with two vectors of columns, 14
/// accumulators of AVX-512's 32 registers (the broadcast is a memory operand); 12 of
/// AVX2's 16, which keeps a register for the broadcast.
pub(crate) const fn mr_for_lanes(lanes: usize) -> usize {
    match lanes {
        16 => 7,
        8 => 6,
        _ => 4,
    }
}

/// Widest strip, for the transposing store's buffer.
pub(crate) const MR_MAX: usize = 7;
/// Widest panel (`2 · LANES` on AVX-512).
pub(crate) const NR_MAX: usize = 32;

/// Fewest channels, in and out, for which it pays ([`crate::PackedConv::pixel_rows_pays`]):
/// a first layer's few input channels are the stem kernel's.
pub(crate) const MIN_CHANNELS: usize = 16;
/// Most f32 of padded input ([`crate::PackedConv::pixel_rows_pays`]): every panel reads
/// all of it again, so it should stay in L2 (1 MiB); always within a slot of
/// [`crate::conv_scratch_floats`].
pub(crate) const MAX_PLANES: usize = 1 << 18;

/// Steps of the depth per block (whole channels): the block's panel of weights (16 KiB
/// on AVX-512) and its rows of input stay in L1 while every strip of a group reads them.
pub(crate) const KC_STEPS: usize = 128;
/// Strips whose partial sums are kept between channel blocks.
const GROUP: usize = 16;

/// True when `g` can be computed by [`conv`]: one group, some input channels, and a
/// filter of at most [`MAX_TAPS`] taps.
pub(crate) fn applies(g: &Conv2d) -> bool {
    g.groups == 1 && g.cin > 0 && g.kh.saturating_mul(g.kw) <= MAX_TAPS && g.kh > 0 && g.kw > 0
}

/// Packs `w` (`[cout, cin, kh, kw]`, extent checked by the caller) for `level` as `Wᵀ`:
/// `cin · kh · kw` rows ordered channel-major, the order [`conv`] walks the input in.
pub(crate) fn pack(level: Level, g: &Conv2d, w: Image<'_>) -> Result<PackedB, GemmError> {
    let taps = g.kh * g.kw;
    let k = g.cin.checked_mul(taps).ok_or(GemmError::Overflow)?;
    let [s0, s1, s2, s3] = w.strides;
    // Filters contiguous over (cin, kh, kw), as exported: `Wᵀ` is a strided view of them,
    // packed without a transposed copy (which would double the load's peak memory).
    if s3 == 1 && s2 == g.kw && s1 == taps {
        return PackedB::new_at(level, MatRef::new(w.data, k, g.cout, 1, s0)?);
    }
    let len = k.checked_mul(g.cout).ok_or(GemmError::Overflow)?;
    let mut flat = Vec::new();
    flat.try_reserve_exact(len)
        .map_err(|_| GemmError::OutOfMemory {
            bytes: len.saturating_mul(4),
        })?;
    flat.resize(len, 0.0);
    for ic in 0..g.cin {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (ic * taps + ky * g.kw + kx) * g.cout;
                for (oc, v) in flat[row..row + g.cout].iter_mut().enumerate() {
                    *v = w.data[oc * s0 + ic * s1 + ky * s2 + kx * s3];
                }
            }
        }
    }
    PackedB::new_at(level, MatRef::row_major(&flat, k, g.cout)?)
}

/// `out = act(conv(x, w) + bias)` for one group, `w` packed by [`pack`]: the input is
/// copied into one slot of `arena` padded and split into stride phases, then tasks of
/// whole panels of output channels × strips of pixels run over it.
///
/// # Safety
/// As [`crate::conv2d`]'s output: extents checked, valid, non-aliasing and exclusive.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    w: &PackedB,
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Result<(), GemmError> {
    let taps = g.kh * g.kw;
    if !applies(g) || w.k != g.cin * taps || w.n != g.cout {
        return Err(GemmError::Shape {
            what: "convolution weights packed with pixels as rows (depth)",
            expected: g.cin.saturating_mul(taps),
            found: w.k,
        });
    }
    let ph = Phases {
        ih: g.ih,
        iw: g.iw,
        pad: g.pad,
        stride: g.stride,
    };
    let (hq, wq) = ph.dims();
    let (sh, sw, dh, dw) = (g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]);
    // Output pixel (y, x) reads phase row y + ky·dh / sh, column x + kx·dw / sw: the
    // last pixel's widest tap must stay inside its phase.
    let reach = |o: usize, k: usize, d: usize, s: usize| {
        (o - 1).saturating_add((k - 1).saturating_mul(d) / s)
    };
    if reach(g.oh, g.kh, dh, sh) >= hq || reach(g.ow, g.kw, dw, sw) >= wq {
        return Err(GemmError::Shape {
            what: "convolution input height (padded)",
            expected: reach(g.oh, g.kh, dh, sh).saturating_add(1),
            found: hq,
        });
    }
    let plane = hq * wq;
    let ch = ph.floats().ok_or(GemmError::Overflow)?;
    let total = g.cin.checked_mul(ch).ok_or(GemmError::Overflow)?;
    let mut tapoff = [0usize; MAX_TAPS];
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let (y, xx) = (ky * dh, kx * dw);
            tapoff[ky * g.kw + kx] = (y % sh * sw + xx % sw) * plane + y / sh * wq + xx / sw;
        }
    }
    let used = |py: usize, px: usize| {
        (0..g.kh).any(|ky| ky * dh % sh == py) && (0..g.kw).any(|kx| kx * dw % sw == px)
    };
    let level = w.level;
    let (_, nr) = geometry(level);
    let mr = mr_for_lanes(nr / 2);
    let pixels = g.oh * g.ow;
    let (panels, strips) = (g.cout.div_ceil(nr), pixels.div_ceil(mr));
    // Whole panels per task first, so that each thread streams its own share of the
    // weights from memory once.
    let threads = par.threads().max(1);
    let np = split_count(panels, threads, 1);
    let ns = split_count(strips, threads.div_ceil(np), 1);
    let epi = Epi {
        alpha: 1.0,
        beta: if bias.is_some() { 1.0 } else { 0.0 },
        bias: bias.map_or(Bias::None, Bias::PerCol),
        act,
    };
    let run = |buf: &mut [f32]| {
        let buf = &mut buf[..total];
        for n in 0..g.n {
            fill_phases(par, x, n, &ph, &used, buf, ch);
            let planes: &[f32] = buf;
            let task = |t: usize| {
                let job = Job {
                    planes,
                    ch,
                    tapoff: &tapoff[..taps],
                    cin: g.cin,
                    ow: g.ow,
                    wq,
                    pixels,
                    w,
                    panels: split_range(panels, np, 1, t / ns),
                    strips: split_range(strips, ns, 1, t % ns),
                    epi: &epi,
                    // SAFETY: image n is inside the checked output.
                    out: SyncPtr(unsafe { out.get().add(n * os[0]) }),
                    os,
                };
                dispatch_at(level, job);
            };
            if np * ns == 1 {
                task(0);
            } else {
                par.run(np * ns, &task);
            }
        }
    };
    with_scratch(arena, total, &run)
}

/// One task: panels × strips of one image.
struct Job<'a> {
    planes: &'a [f32],
    ch: usize,
    tapoff: &'a [usize],
    cin: usize,
    ow: usize,
    wq: usize,
    pixels: usize,
    w: &'a PackedB,
    panels: core::ops::Range<usize>,
    strips: core::ops::Range<usize>,
    epi: &'a Epi<'a>,
    out: SyncPtr,
    os: [usize; 4],
}

impl SimdOp for Job<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        match S::LANES {
            16 => self.run::<S, { mr_for_lanes(16) }>(s),
            8 => self.run::<S, { mr_for_lanes(8) }>(s),
            _ => self.run::<S, { mr_for_lanes(4) }>(s),
        }
    }
}

impl Job<'_> {
    #[inline(always)]
    fn run<S: Simd, const MR: usize>(&self, s: S) {
        let nr = 2 * S::LANES;
        let taps = self.tapoff.len();
        let k = self.cin * taps;
        // Every read of `micro`: the last channel's widest tap from the farthest pixel.
        let maxtap = self.tapoff.iter().copied().max().unwrap_or(0);
        let last = (self.pixels - 1) / self.ow * self.wq + (self.pixels - 1) % self.ow;
        let reads = (self.cin - 1) * self.ch + maxtap + last + 1;
        if reads > self.planes.len() || self.w.data.len() < self.w.n.div_ceil(nr) * nr * k {
            return;
        }
        let kc = (KC_STEPS / taps).max(1);
        // Partial sums of a group of strips between channel blocks.
        let mut part = [0.0f32; MR_MAX * NR_MAX * GROUP];
        let mut tile = [0.0f32; MR_MAX * NR_MAX];
        let mut rows = [[self.planes.as_ptr(); MR]; GROUP];
        let mut offs = [[0usize; MR]; GROUP];
        for panel in self.panels.clone() {
            let c0 = panel * nr;
            let nc = nr.min(self.w.n - c0);
            // SAFETY: panel < n / nr rounded up, whose `k · nr` values were checked above.
            let b = unsafe { self.w.data.as_ptr().add(panel * k * nr) };
            // The task's next panel is fetched into L2 while this one is computed, spread
            // over its steps (`k · nr` values over `strips · k` steps, 16.16 fixed point).
            let next = if panel + 1 < self.panels.end {
                b.wrapping_add(k * nr)
            } else {
                b
            };
            let inc = (nr << 16) / self.strips.len().max(1);
            let mut pos = 0usize;
            let mut g0 = self.strips.start;
            while g0 < self.strips.end {
                let g1 = (g0 + GROUP).min(self.strips.end);
                for (gi, strip) in (g0..g1).enumerate() {
                    for (i, (r, o)) in rows[gi].iter_mut().zip(&mut offs[gi]).enumerate() {
                        // Rows past the image repeat its last pixel; they are not stored.
                        let p = (strip * MR + i).min(self.pixels - 1);
                        let (y, x) = (p / self.ow, p % self.ow);
                        // SAFETY: y · wq + x <= last, inside the planes (checked above).
                        *r = unsafe { self.planes.as_ptr().add(y * self.wq + x) };
                        *o = y * self.os[2] + x * self.os[3];
                    }
                }
                let mut c = 0;
                while c < self.cin {
                    let ce = (c + kc).min(self.cin);
                    for gi in 0..g1 - g0 {
                        let acc = &mut part[gi * MR * nr..][..MR * nr];
                        if c == 0 {
                            acc.fill(0.0);
                        }
                        let pf = Prefetch {
                            base: next,
                            pos,
                            inc,
                        };
                        // SAFETY: every row reads up to (cin - 1) · ch + maxtap past its
                        // pixel, inside the planes; steps c · taps..ce · taps of the panel
                        // are inside its k · nr values.
                        unsafe {
                            micro::<S, MR>(
                                s,
                                acc,
                                &rows[gi],
                                self.ch,
                                self.tapoff,
                                c..ce,
                                b.add(c * taps * nr),
                                pf,
                            )
                        };
                        pos += (ce - c) * taps * inc;
                    }
                    c = ce;
                }
                for (gi, strip) in (g0..g1).enumerate() {
                    let acc = &part[gi * MR * nr..][..MR * nr];
                    for i in 0..MR {
                        for v in 0..2 {
                            let j = v * S::LANES;
                            let n = nc.saturating_sub(j).min(S::LANES);
                            let a = s.load(&acc[i * nr + j..]);
                            let a = if n > 0 {
                                self.epi.apply(s, a, 0, c0 + j, n)
                            } else {
                                a
                            };
                            s.store(&mut tile[i * nr + j..], a);
                        }
                    }
                    let np = MR.min(self.pixels - strip * MR);
                    for c in 0..nc {
                        let base = (c0 + c) * self.os[1];
                        for (i, &o) in offs[gi].iter().enumerate().take(np) {
                            // SAFETY: channel c0 + c < cout and pixel strip · MR + i <
                            // oh · ow are inside the checked output, exclusive to this
                            // task's tiles.
                            unsafe { *self.out.get().add(base + o) = tile[i * nr + c] };
                        }
                    }
                }
                g0 = g1;
            }
        }
    }
}

/// Where a strip's steps prefetch: `base + (pos + step · inc) / 2¹⁶`.
#[derive(Clone, Copy)]
pub(crate) struct Prefetch {
    pub base: *const f32,
    pub pos: usize,
    pub inc: usize,
}

/// Adds to `out` (row `i` of the strip at `i · 2 · LANES`, one panel wide) a strip's
/// product over channels `cs`: row `i` reads channel `c`, tap `t` at `rows[i] + c · ch +
/// tapoff[t]`; `b` holds those channels' `taps · 2 · LANES` steps of a panel.
///
/// # Safety
/// Every `rows[i]` must be readable up to `(cs.end - 1) · ch + max(tapoff)`, and `b` for
/// `cs.len() · taps · 2 · LANES` f32.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro<S: Simd, const MR: usize>(
    s: S,
    out: &mut [f32],
    rows: &[*const f32; MR],
    ch: usize,
    tapoff: &[usize],
    cs: core::ops::Range<usize>,
    b: *const f32,
    pf: Prefetch,
) {
    let nr = 2 * S::LANES;
    let l = S::LANES;
    let out = &mut out[..MR * nr];
    let mut acc = [[s.zero(); 2]; MR];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = [s.load(&out[i * nr..]), s.load(&out[i * nr + l..])];
    }
    let mut bp = b;
    let mut pos = pf.pos;
    let mut base = cs.start * ch;
    for _ in cs {
        for &t in tapoff {
            let off = base + t;
            // SAFETY: the step is inside the panel.
            let (b0, b1) = unsafe { (s.load_ptr(bp), s.load_ptr(bp.add(S::LANES))) };
            prefetch_l2(pf.base.wrapping_add(pos >> 16));
            pos += pf.inc;
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: off <= (cs.end - 1) · ch + max(tapoff).
                let ai = s.splat(unsafe { *rows[i].add(off) });
                row[0] = s.mul_add(ai, b0, row[0]);
                row[1] = s.mul_add(ai, b1, row[1]);
            }
            // SAFETY: still inside the panel or one past it.
            bp = unsafe { bp.add(nr) };
        }
        base += ch;
    }
    for (i, a) in acc.iter().enumerate() {
        s.store(&mut out[i * nr..], a[0]);
        s.store(&mut out[i * nr + l..], a[1]);
    }
}
