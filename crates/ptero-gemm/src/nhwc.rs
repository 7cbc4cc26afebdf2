//! Channels-last (NHWC) convolution. Output pixels are the GEMM's rows and channels its
//! columns, against weights packed once as `Wᵀ` (`K = taps × cin / groups` rows ordered
//! tap-major, so each tap's channels are one contiguous run of the input):
//! - a pointwise convolution multiplies the activations in place;
//! - any other gathers a block of pixels' patches into scratch first (whole channel runs
//!   per tap), one task per block of pixels and of output channels;
//! - a depthwise convolution runs over channel vectors, every tap one load per vector,
//!   with weights laid out `[tap][channel]` per task.

use alloc::vec::Vec;

use ptero_simd::{
    dispatch_at, split_count, split_range, Parallel, Serial, Simd, SimdOp, SlotArena,
};

use crate::conv::{Conv2d, Image};
use crate::depthwise::act_vec;
use crate::driver::{gemm_out, scratch_floats, COut, SyncPtr};
use crate::{Activation, Bias, Epilogue, GemmError, Lhs, MatRef, PackedB, PackedBRef, Rhs};

/// f32 of patches a task gathers at most (1 MiB, about an L2).
const ROW_FLOATS: usize = 1 << 18;

/// Scratch one thread needs for [`conv`]: a block of patches plus GEMM packing.
pub(crate) fn nhwc_scratch_floats() -> usize {
    ROW_FLOATS + scratch_floats()
}

/// True when the channels of an output pixel are adjacent: the NHWC kernels apply.
pub(crate) fn channels_last(g: &Conv2d, os: [usize; 4]) -> bool {
    g.cout > 1 && os[1] == 1 && (g.oh * g.ow <= 1 || os[3] >= g.cout || os[2] >= g.cout)
}

/// Packs `w` (`[cout, cin / groups, kh, kw]`, any strides) per group as `Wᵀ`:
/// `[kh · kw · cin_g, cout_g]`, row `(ky · kw + kx) · cin_g + ic`.
pub(crate) fn pack_weights(g: &Conv2d, w: Image<'_>) -> Result<Vec<PackedB>, GemmError> {
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let k = cin_g * g.kh * g.kw;
    let len = k.checked_mul(cout_g).ok_or(GemmError::Overflow)?;
    let mut flat = Vec::new();
    flat.try_reserve_exact(len)
        .map_err(|_| GemmError::OutOfMemory {
            bytes: len.saturating_mul(4),
        })?;
    flat.resize(len, 0.0);
    let [s0, s1, s2, s3] = w.strides;
    let mut out = Vec::with_capacity(g.groups);
    for grp in 0..g.groups {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                for ic in 0..cin_g {
                    let row = ((ky * g.kw + kx) * cin_g + ic) * cout_g;
                    for oc in 0..cout_g {
                        flat[row + oc] =
                            w.data[(grp * cout_g + oc) * s0 + ic * s1 + ky * s2 + kx * s3];
                    }
                }
            }
        }
        out.push(PackedB::new(MatRef::row_major(&flat, k, cout_g)?)?);
    }
    Ok(out)
}

fn epilogue(bias: Option<&[f32]>, grp: usize, cout_g: usize, act: Activation) -> Epilogue<'_> {
    Epilogue {
        alpha: 1.0,
        beta: if bias.is_some() { 1.0 } else { 0.0 },
        bias: match bias {
            Some(b) => Bias::PerCol(&b[grp * cout_g..(grp + 1) * cout_g]),
            None => Bias::None,
        },
        act,
    }
}

/// `out = act(conv(x, w) + bias)` with output pixels as rows. Any strides are read
/// correctly; channels-last input and output are the fast case.
///
/// # Safety
/// As [`crate::conv2d`]'s output: extents checked, valid, non-aliasing and exclusive.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    w: &[PackedB],
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Result<(), GemmError> {
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let k = cin_g * g.kh * g.kw;
    let xs = x.strides;
    if w.len() != g.groups || w.iter().any(|p| p.k != k || p.n != cout_g) {
        return Err(GemmError::Shape {
            what: "channels-last packed weights (K)",
            expected: k,
            found: w.first().map_or(0, |p| p.k),
        });
    }
    if let Some(nv) = stem_vectors(g, w[0].level).filter(|_| os[1] == 1) {
        let level = w[0].level;
        let rows = g.n * g.oh;
        let work = rows * g.ow * k * g.cout;
        let parts = if work < crate::driver::PAR_MIN_MACS {
            1
        } else {
            4 * par.threads()
        };
        let chunks = split_count(rows, parts, 1);
        par.run(chunks, &|t| {
            let op = Stem {
                g,
                x,
                w: &w[0],
                bias,
                rows: split_range(rows, chunks, 1, t),
                out,
                os,
                act,
            };
            match nv {
                1 => dispatch_at(level, StemN::<1, 4>(op)),
                2 => dispatch_at(level, StemN::<2, 4>(op)),
                3 => dispatch_at(level, StemN::<3, 4>(op)),
                4 => dispatch_at(level, StemN::<4, 4>(op)),
                5 => dispatch_at(level, StemN::<5, 2>(op)),
                6 => dispatch_at(level, StemN::<6, 2>(op)),
                7 => dispatch_at(level, StemN::<7, 2>(op)),
                _ => dispatch_at(level, StemN::<8, 2>(op)),
            }
        });
        return Ok(());
    }
    let pixels = g.oh * g.ow;
    let direct = g.kh == 1
        && g.kw == 1
        && g.stride == [1, 1]
        && g.pad == [0, 0]
        && (xs[1] == 1 || cin_g == 1)
        && (g.ih == 1 || xs[2] == g.iw * xs[3])
        && (g.oh == 1 || os[2] == g.ow * os[3]);
    if direct {
        for n in 0..g.n {
            for (grp, wg) in w.iter().enumerate() {
                let a = MatRef {
                    data: &x.data[n * xs[0] + grp * cin_g * xs[1]..],
                    rows: pixels,
                    cols: cin_g,
                    rs: xs[3],
                    cs: xs[1],
                };
                let c = COut {
                    // SAFETY: channel grp * cout_g of image n is inside the checked output.
                    ptr: SyncPtr(unsafe { out.get().add(n * os[0] + grp * cout_g * os[1]) }),
                    rows: pixels,
                    cols: cout_g,
                    rs: os[3],
                    cs: os[1],
                };
                // SAFETY: this image's and group's outputs lie inside the checked,
                // non-aliasing output, exclusive to this call.
                unsafe {
                    gemm_out(
                        par,
                        arena,
                        None,
                        Lhs::Mat(a),
                        Rhs::Packed(wg.view()),
                        c,
                        &epilogue(bias, grp, cout_g, act),
                    )?
                };
            }
        }
        return Ok(());
    }
    // Blocks of pixels (a multiple of the row tile), and blocks of output channels (whole
    // panels) when there are too few pixel blocks for every thread.
    let level = w[0].level;
    let (mr, nr) = crate::kernel::geometry(level);
    let threads = par.threads().max(1);
    let rows = (ROW_FLOATS / k.max(1)).max(mr) / mr * mr;
    let spread = (g.n * g.groups * pixels).div_ceil(2 * threads).div_ceil(mr) * mr;
    let rows = rows.min(spread.max(mr)).min(pixels);
    let pblocks = pixels.div_ceil(rows);
    let images = g.n * g.groups * pblocks;
    let panels = cout_g.div_ceil(nr);
    let cblocks = if images < 2 * threads {
        (2 * threads).div_ceil(images).min(panels)
    } else {
        1
    };
    // Too few pixels for a block per thread (deep layers): each image's patches are
    // gathered once into one slot, and one product over them is split by the driver,
    // instead of every channel block gathering them again.
    let linear_out = g.oh == 1 || os[2] == g.ow * os[3];
    if let (Some(ar), true) = (arena, images < 2 * threads && linear_out) {
        if pixels * k <= ar.slot_len() {
            let r = ar.with(pixels * k, |buf| -> Result<(), GemmError> {
                let col = &mut buf[..pixels * k];
                for n in 0..g.n {
                    for (grp, wg) in w.iter().enumerate() {
                        gather_patches(g, x, n, grp, 0, pixels, col);
                        let a = MatRef {
                            data: col,
                            rows: pixels,
                            cols: k,
                            rs: k,
                            cs: 1,
                        };
                        let c = COut {
                            // SAFETY: channel grp * cout_g of image n is inside the checked
                            // output.
                            ptr: SyncPtr(unsafe {
                                out.get().add(n * os[0] + grp * cout_g * os[1])
                            }),
                            rows: pixels,
                            cols: cout_g,
                            rs: os[3],
                            cs: os[1],
                        };
                        // SAFETY: this image's and group's outputs (pixel-linear) lie inside
                        // the checked, non-aliasing output, exclusive to this call.
                        unsafe {
                            gemm_out(
                                par,
                                arena,
                                None,
                                Lhs::Mat(a),
                                Rhs::Packed(wg.view()),
                                c,
                                &epilogue(bias, grp, cout_g, act),
                            )?
                        };
                    }
                }
                Ok(())
            });
            if let Some(r) = r {
                return r;
            }
        }
    }
    let tasks = images * cblocks;
    let need = rows * k + scratch_floats();
    let err = crate::batch::FirstError::new();
    let task = |t: usize| {
        let (img, cb) = (t / cblocks, t % cblocks);
        let (n, grp, pb) = (
            img / (g.groups * pblocks),
            img / pblocks % g.groups,
            img % pblocks,
        );
        let p0 = pb * rows;
        let np = rows.min(pixels - p0);
        let pan = split_range(panels, cblocks, 1, cb);
        let (c0, c1) = (pan.start * nr, (pan.end * nr).min(cout_g));
        let run = |buf: &mut [f32]| {
            let (col, rest) = buf.split_at_mut(rows * k);
            let col = &mut col[..np * k];
            gather_patches(g, x, n, grp, p0, np, col);
            let b = &w[grp];
            let packed = PackedBRef {
                data: &b.data[pan.start * nr * k..],
                k,
                n: c1 - c0,
                nr: b.nr,
                level: b.level,
            };
            let (oy, ox) = (p0 / g.ow, p0 % g.ow);
            let e = epilogue(bias, grp, cout_g, act);
            let e = Epilogue {
                bias: match e.bias {
                    Bias::PerCol(bb) => Bias::PerCol(&bb[c0..]),
                    other => other,
                },
                ..e
            };
            let r = if g.oh == 1 || os[2] == g.ow * os[3] || ox + np <= g.ow {
                let c = COut {
                    // SAFETY: pixel (oy, ox), channel grp * cout_g + c0 of image n is
                    // inside the checked output.
                    ptr: SyncPtr(unsafe {
                        out.get()
                            .add(n * os[0] + (grp * cout_g + c0) * os[1] + oy * os[2] + ox * os[3])
                    }),
                    rows: np,
                    cols: c1 - c0,
                    rs: os[3],
                    cs: os[1],
                };
                let a = MatRef {
                    data: col,
                    rows: np,
                    cols: k,
                    rs: k,
                    cs: 1,
                };
                // SAFETY: this block's pixels and channels are written by this task only,
                // inside the checked, non-aliasing output.
                unsafe {
                    gemm_out(
                        &Serial,
                        None,
                        Some(rest),
                        Lhs::Mat(a),
                        Rhs::Packed(packed),
                        c,
                        &e,
                    )
                }
            } else {
                // Pixels that wrap over output rows whose stride is not `ow` pixels: one
                // product per output row.
                let mut r = Ok(());
                let mut j = 0;
                while j < np && r.is_ok() {
                    let p = p0 + j;
                    let (oy, ox) = (p / g.ow, p % g.ow);
                    let len = (g.ow - ox).min(np - j);
                    let c = COut {
                        // SAFETY: as above, for this row's pixels.
                        ptr: SyncPtr(unsafe {
                            out.get().add(
                                n * os[0] + (grp * cout_g + c0) * os[1] + oy * os[2] + ox * os[3],
                            )
                        }),
                        rows: len,
                        cols: c1 - c0,
                        rs: os[3],
                        cs: os[1],
                    };
                    let a = MatRef {
                        data: &col[j * k..],
                        rows: len,
                        cols: k,
                        rs: k,
                        cs: 1,
                    };
                    // SAFETY: as above.
                    r = unsafe {
                        gemm_out(
                            &Serial,
                            None,
                            Some(&mut *rest),
                            Lhs::Mat(a),
                            Rhs::Packed(packed),
                            c,
                            &e,
                        )
                    };
                    j += len;
                }
                r
            };
            if let Err(e) = r {
                err.set(e);
            }
        };
        if arena.and_then(|a| a.with(need, |b| run(b))).is_none() {
            let mut own = Vec::new();
            if own.try_reserve_exact(need).is_err() {
                err.set(GemmError::OutOfMemory { bytes: need * 4 });
                return;
            }
            own.resize(need, 0.0);
            run(&mut own);
        }
    };
    par.run(tasks, &task);
    match err.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes the patches of `np` output pixels from `p0` (row-major over `oh × ow`) of image
/// `n`, group `grp`, as rows of `col`: `K` values per pixel, tap-major, padding as 0.
fn gather_patches(
    g: &Conv2d,
    x: Image<'_>,
    n: usize,
    grp: usize,
    p0: usize,
    np: usize,
    col: &mut [f32],
) {
    let xs = x.strides;
    let cin_g = g.cin / g.groups;
    let k = cin_g * g.kh * g.kw;
    let base = n * xs[0] + grp * cin_g * xs[1];
    for (j, row) in col.chunks_exact_mut(k).take(np).enumerate() {
        let p = p0 + j;
        let (oy, ox) = (p / g.ow, p % g.ow);
        for ky in 0..g.kh {
            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad[0] as isize;
            for kx in 0..g.kw {
                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad[1] as isize;
                let dst = &mut row[(ky * g.kw + kx) * cin_g..][..cin_g];
                if iy < 0 || ix < 0 || iy as usize >= g.ih || ix as usize >= g.iw {
                    dst.fill(0.0);
                    continue;
                }
                let at = base + iy as usize * xs[2] + ix as usize * xs[3];
                if xs[1] == 1 && cin_g >= 16 {
                    dst.copy_from_slice(&x.data[at..at + cin_g]);
                } else if xs[1] == 1 {
                    // A few channels (a stem's): element copies beat a call per run.
                    for (d, v) in dst.iter_mut().zip(&x.data[at..at + cin_g]) {
                        *d = *v;
                    }
                } else {
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = x.data[at + c * xs[1]];
                    }
                }
            }
        }
    }
}

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
            let mut ox = 0;
            while ox < g.ow {
                if ox >= lo && ox + 4 <= hi {
                    // Four interior pixels: every tap's weights loaded once for all four.
                    let base = n * xs[0]
                        + (iy0 as usize) * xs[2]
                        + ((ox as isize * sx - pw) as usize) * xs[3];
                    let step = g.stride[1] * xs[3];
                    // SAFETY: the four pixels' taps are inside the checked input, the
                    // outputs inside the checked output (channel stride 1).
                    unsafe { k.quad(full, base, step, orow.add(ox * os[3]), os[3]) };
                    ox += 4;
                    continue;
                }
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
                ox += 1;
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

    /// Four pixels `step` apart in the input and `ostep` in the output, all taps valid.
    ///
    /// # Safety
    /// `base + p·step + tap + c` inside the input for every pixel and tap, the four
    /// outputs inside the output and exclusive to the caller.
    #[inline(always)]
    unsafe fn quad(
        &self,
        taps: &[(usize, usize)],
        base: usize,
        step: usize,
        op: *mut f32,
        ostep: usize,
    ) {
        let (s, c, l) = (self.s, self.c, S::LANES);
        let (xp, wp) = (self.x.data.as_ptr(), self.w.as_ptr());
        let mut ch = 0;
        while ch + l <= c {
            let b = self.init(ch);
            let mut a = [b; 4];
            for &(to, wo) in taps {
                // SAFETY: per the contract.
                unsafe {
                    let wv = s.load_ptr(wp.add(wo + ch));
                    let xq = xp.add(base + to + ch);
                    for (p, acc) in a.iter_mut().enumerate() {
                        *acc = s.mul_add(s.load_ptr(xq.add(p * step)), wv, *acc);
                    }
                }
            }
            for (p, acc) in a.iter().enumerate() {
                // SAFETY: per the contract.
                unsafe { s.store_ptr(op.add(p * ostep + ch), act_vec(s, self.act, *acc)) };
            }
            ch += l;
        }
        if ch < c {
            let m = c - ch;
            let b = self.bias.map_or(s.zero(), |b| s.load_part(&b[ch..ch + m]));
            let mut a = [b; 4];
            for &(to, wo) in taps {
                let wv = s.load_part(&self.w[wo + ch..][..m]);
                for (p, acc) in a.iter_mut().enumerate() {
                    let xi = s.load_part(&self.x.data[base + p * step + to + ch..][..m]);
                    *acc = s.mul_add(xi, wv, *acc);
                }
            }
            for (p, acc) in a.iter().enumerate() {
                // SAFETY: per the contract.
                unsafe {
                    s.store_part(
                        core::slice::from_raw_parts_mut(op.add(p * ostep + ch), m),
                        act_vec(s, self.act, *acc),
                    )
                };
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
    let spread = (g2.n * g2.oh).div_ceil(2 * par.threads().max(1));
    let rows = spread.clamp(crate::fused::MIN_BAND_ROWS.min(fit), fit);
    let bands = g2.oh.div_ceil(rows);
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
        let oy0 = b * rows;
        let oy1 = (oy0 + rows).min(g2.oh);
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

/// Most input channels of a [`Stem`] convolution (an image's colour planes).
const STEM_MAX_CIN: usize = 4;

/// Vectors of output channels per pixel when the direct [`Stem`] kernel applies: one
/// group, a few input channels, every output channel in at most 8 whole vectors. A
/// first layer reads the model's channels-first input, whose patches would otherwise be
/// gathered one value at a time.
fn stem_vectors(g: &Conv2d, level: ptero_simd::Level) -> Option<usize> {
    let lanes = crate::kernel::geometry(level).1 / 2;
    (g.groups == 1
        && g.cin <= STEM_MAX_CIN
        && g.kh * g.kw <= DW_MAX_TAPS
        && g.cout.is_multiple_of(lanes)
        && g.cout >= lanes
        && g.cout / lanes <= 8)
        .then_some(g.cout / lanes)
}

/// A convolution with few input channels, computed directly: per output pixel, every
/// valid tap's input values are broadcast against that tap's rows of `Wᵀ` (all output
/// channels, `NV` vectors), accumulating in registers.
struct Stem<'a> {
    g: &'a Conv2d,
    x: Image<'a>,
    w: &'a PackedB,
    bias: Option<&'a [f32]>,
    rows: core::ops::Range<usize>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
}

/// [`Stem`] with `NV` vectors of output channels, `P` interior pixels at a time.
struct StemN<'a, const NV: usize, const P: usize>(Stem<'a>);

impl<const NV: usize, const P: usize> SimdOp for StemN<'_, NV, P> {
    type Output = ();

    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let Stem {
            g,
            x,
            w,
            bias,
            rows,
            out,
            os,
            act,
        } = self.0;
        let (l, nr, k) = (S::LANES, w.nr, w.k);
        // Packed at this level (the caller dispatches at the packing's level): panels of
        // `nr` columns, K rows each.
        debug_assert!(nr == 2 * l && NV * l == g.cout && w.n == g.cout);
        let xs = x.strides;
        let cin = g.cin;
        let wd = &w.data[..];
        // Offset of vector v of K row kk in the packed filter.
        let col = |v: usize| (v * l / nr) * k * nr + (v * l) % nr;
        // Input offset of K row kk = (tap, channel) from a pixel's top-left tap.
        let mut toff = [0usize; DW_MAX_TAPS * STEM_MAX_CIN];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                for c in 0..cin {
                    toff[(ky * g.kw + kx) * cin + c] =
                        ky * g.dilation[0] * xs[2] + kx * g.dilation[1] * xs[3] + c * xs[1];
                }
            }
        }
        let toff = &toff[..k];
        let (sy, sx) = (g.stride[0], g.stride[1]);
        let (ph, pw) = (g.pad[0] as isize, g.pad[1] as isize);
        let reach_y = ((g.kh - 1) * g.dilation[0]) as isize;
        let reach_x = ((g.kw - 1) * g.dilation[1]) as isize;
        let ilo = ((pw as usize).div_ceil(sx)).min(g.ow);
        let last = g.iw as isize - 1 + pw - reach_x;
        let ihi = if last < 0 {
            ilo
        } else {
            ((last as usize) / sx + 1).clamp(ilo, g.ow)
        };
        let init = |acc: &mut [S::F; NV]| {
            for (v, a) in acc.iter_mut().enumerate() {
                *a = bias.map_or(s.zero(), |b| s.load(&b[v * l..]));
            }
        };
        let xp = x.data.as_ptr();
        let wp = wd.as_ptr();
        for r in rows {
            let (n, oy) = (r / g.oh, r % g.oh);
            let top = (oy * sy) as isize - ph;
            let full_y = top >= 0 && top + reach_y < g.ih as isize;
            let (lo, hi) = if full_y { (ilo, ihi) } else { (g.ow, g.ow) };
            let mut ox = 0;
            while ox < g.ow {
                if ox >= lo && ox + P <= hi {
                    let base = n * xs[0]
                        + top as usize * xs[2]
                        + ((ox * sx) as isize - pw) as usize * xs[3];
                    let step = sx * xs[3];
                    let mut acc = [[s.zero(); NV]; P];
                    for a in acc.iter_mut() {
                        init(a);
                    }
                    for (kk, &t) in toff.iter().enumerate() {
                        let mut wv = [s.zero(); NV];
                        for (v, w) in wv.iter_mut().enumerate() {
                            // SAFETY: K row kk, vector v lies inside the packed filter
                            // (panels of nr columns, k rows each, cout = NV·l columns).
                            *w = unsafe { s.load_ptr(wp.add(col(v) + kk * nr)) };
                        }
                        for (p, a) in acc.iter_mut().enumerate() {
                            // SAFETY: interior pixels: every tap lies inside the checked
                            // input.
                            let xv = s.splat(unsafe { *xp.add(base + p * step + t) });
                            for (v, av) in a.iter_mut().enumerate() {
                                *av = s.mul_add(xv, wv[v], *av);
                            }
                        }
                    }
                    for (p, a) in acc.iter().enumerate() {
                        // SAFETY: pixel (oy, ox + p) of image n is inside the checked
                        // output, its channels adjacent; this task alone writes row r.
                        unsafe {
                            let op = out.get().add(n * os[0] + oy * os[2] + (ox + p) * os[3]);
                            for (v, av) in a.iter().enumerate() {
                                s.store_ptr(op.add(v * l), act_vec(s, act, *av));
                            }
                        }
                    }
                    ox += P;
                    continue;
                }
                let mut acc = [s.zero(); NV];
                init(&mut acc);
                for ky in 0..g.kh {
                    let iy = top + (ky * g.dilation[0]) as isize;
                    if iy < 0 || iy as usize >= g.ih {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let ix = (ox * sx + kx * g.dilation[1]) as isize - pw;
                        if ix < 0 || ix as usize >= g.iw {
                            continue;
                        }
                        let at = n * xs[0] + iy as usize * xs[2] + ix as usize * xs[3];
                        for c in 0..cin {
                            let xv = s.splat(x.data[at + c * xs[1]]);
                            let kk = (ky * g.kw + kx) * cin + c;
                            for (v, a) in acc.iter_mut().enumerate() {
                                *a = s.mul_add(xv, s.load(&wd[col(v) + kk * nr..]), *a);
                            }
                        }
                    }
                }
                // SAFETY: as above, for pixel (oy, ox).
                unsafe {
                    let op = out.get().add(n * os[0] + oy * os[2] + ox * os[3]);
                    for (v, a) in acc.iter().enumerate() {
                        s.store_ptr(op.add(v * l), act_vec(s, act, *a));
                    }
                }
                ox += 1;
            }
        }
    }
}
