//! Dense int8 convolutions over NHWC images: blocks of output pixels times the filter
//! `[cout, kh·kw·cin]` packed as a [`QPacked`], with either epilogue of [`q_rows`].
//!
//! With VNNI and `cin` a multiple of 4, the kernel reads each pixel's input in place,
//! one run of `cin` values per filter tap (an indirection table, as XNNPACK's IGEMM):
//! no im2col copy, and a block can hold more pixels than a patch buffer would. Elsewhere
//! each block is gathered into a patch first. Work is split over pixel blocks and,
//! when the image has too few pixels to keep every thread busy (deep layers), over
//! output channels too, so that each thread reads only its share of the weights.
//!
//! ```
//! use ptero_gemm::{q_conv, QConv, QConvOut, QPacked};
//! use ptero_simd::Serial;
//! // A 1x1 convolution of one 2 x 2 image with 1 channel: weight 2, requantized with
//! // scale 0.5, so y = x.
//! let g = QConv { n: 1, ih: 2, iw: 2, oh: 2, ow: 2, cin: 1, kh: 1, kw: 1,
//!     stride: [1, 1], pad: [0, 0], dilation: [1, 1] };
//! let w = QPacked::new(1, 1, 8, 1, |_, _| 2, |_, _| 0.5).unwrap();
//! let x = [1i8, -2, 3, 4];
//! let mut y = [0i8; 4];
//! q_conv(&Serial, &g, &x, &w, QConvOut::I8 { y: &mut y, b: &[0], zx: 0, zp: 0, range: (-128, 127) });
//! assert_eq!(y, x);
//! ```
//!
//! [`q_rows`]: crate::q_rows

use ptero_simd::{dispatch, split_range, Parallel};

use crate::quant::{Out, QPacked, Qd8Cols, Qs8Cols};
use crate::qvnni::PANEL;

/// Geometry of a dense convolution (one group) over NHWC images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QConv {
    pub n: usize,
    pub ih: usize,
    pub iw: usize,
    pub oh: usize,
    pub ow: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// Top and left padding (bottom and right follow from the output size).
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
}

/// What [`q_conv`] writes.
pub enum QConvOut<'a> {
    /// Dynamically quantized images, `(scale, zero point)` per image in `params`;
    /// padding reads the image's zero point. As `QOut::F32` otherwise.
    F32 {
        y: &'a mut [f32],
        params: &'a [f32],
        bias: Option<&'a [f32]>,
        clamp: (f32, f32),
    },
    /// Static int8: `b` per output channel with the input zero point folded in
    /// (`bias − zx · Σ w`), `zx` the input zero point (what padding reads), `zp` and
    /// `range` the output's.
    I8 {
        y: &'a mut [i8],
        b: &'a [i32],
        zx: i32,
        zp: i32,
        range: (i32, i32),
    },
}

/// The largest `kh · kw · cin` [`q_conv`] takes: one pixel's patch must fit its buffer.
pub const Q_CONV_MAX_K: usize = PATCH;

/// Bytes of gathered patch a task holds (on the stack).
const PATCH: usize = 64 * 1024;
/// Pixels per block.
const MAX_PX: usize = 64;
/// Runs of an in-place block (pixels × taps), and the widest run.
const RUNS: usize = 2048;
const MAX_RUN: usize = 4096;
/// A run that reads padding.
const PAD: u32 = u32::MAX;

/// A convolution of `x` (`n` NHWC images) with `w` (`cout` rows of `kh · kw · cin`).
///
/// # Panics
/// When the slices are shorter than the geometry needs, `w.k()` is not
/// `kh · kw · cin`, or it exceeds [`Q_CONV_MAX_K`].
pub fn q_conv(par: &dyn Parallel, g: &QConv, x: &[i8], w: &QPacked, out: QConvOut<'_>) {
    let taps = g.kh * g.kw;
    let kk = taps * g.cin;
    let cout = w.n();
    assert!(w.k() == kk && kk <= Q_CONV_MAX_K);
    assert!(x.len() >= g.n * g.ih * g.iw * g.cin);
    let img_px = g.oh * g.ow;
    let total = g.n * img_px;
    match &out {
        QConvOut::F32 {
            y, params, bias, ..
        } => {
            assert!(y.len() >= total * cout && params.len() >= 2 * g.n);
            assert!(bias.is_none_or(|b| b.len() >= cout));
        }
        QConvOut::I8 { y, b, .. } => assert!(y.len() >= total * cout && b.len() >= cout),
    }
    if total == 0 || cout == 0 {
        return;
    }
    let runs = in_place(w, g.cin, taps, g.ih * g.iw * g.cin);
    let per = if runs {
        (RUNS / taps.max(1)).clamp(1, MAX_PX)
    } else {
        (PATCH / kk.max(1)).clamp(1, MAX_PX)
    };
    let threads = par.threads();
    // Blocks of even size, as many per image as threads need (a multiple of them
    // when there are few, so that no thread waits on a lone last block).
    let mut bpi = img_px.div_ceil(per);
    if g.n == 1 && threads > 1 && bpi < 8 * threads {
        bpi = bpi.div_ceil(threads) * threads;
    }
    let bpi = bpi.min(img_px).max(1);
    let per = img_px.div_ceil(bpi);
    let bpi = img_px.div_ceil(per);
    let blocks = g.n * bpi;
    let panels = cout.div_ceil(PANEL);
    let col_parts = if threads <= 1 || blocks >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(blocks).min(panels).max(1)
    };
    let work = total.saturating_mul(cout).saturating_mul(kk);
    let serial = threads <= 1 || work < 1 << 16;
    // With the columns split, a task is one block and one part of the columns;
    // otherwise a run of blocks, so that its buffers are set up once for many.
    let tasks = if serial {
        1
    } else if col_parts > 1 {
        blocks * col_parts
    } else {
        blocks.min(4 * threads)
    };
    // The outputs as raw pointers (tasks write disjoint pixels or columns); the rest
    // of `out` as plain values.
    let (out_f, out_q, kind) = match out {
        QConvOut::F32 {
            y,
            params,
            bias,
            clamp,
        } => (
            Out(y.as_mut_ptr()),
            Out(core::ptr::null_mut()),
            Kind::F32 {
                params,
                bias,
                clamp,
            },
        ),
        QConvOut::I8 {
            y,
            b,
            zx,
            zp,
            range,
        } => (
            Out(core::ptr::null_mut()),
            Out(y.as_mut_ptr()),
            Kind::I8 { b, zx, zp, range },
        ),
    };
    let one = |bi: usize, cols: core::ops::Range<usize>, bufs: &mut Bufs<'_>| {
        let (b, p0) = (bi / bpi, (bi % bpi) * per);
        let m = per.min(img_px - p0);
        let at = (b * img_px + p0) * cout;
        let block = Block {
            g,
            x: &x[b * g.ih * g.iw * g.cin..(b + 1) * g.ih * g.iw * g.cin],
            p0,
            m,
        };
        let mut pr = [0f32; 2 * MAX_PX];
        let (epi, zx) = match kind {
            Kind::F32 {
                params,
                bias,
                clamp,
            } => {
                for c in pr[..2 * m].chunks_exact_mut(2) {
                    c.copy_from_slice(&params[2 * b..2 * b + 2]);
                }
                // SAFETY: pixels `p0..p0 + m` of image `b` start at element `at` of
                // `y`, which holds all `total · cout`.
                let y = unsafe { out_f.get().add(at) };
                let epi = Epi::F32 {
                    params: &pr[..2 * m],
                    bias,
                    clamp,
                    y,
                };
                (epi, params[2 * b + 1] as i32)
            }
            Kind::I8 {
                b: bias,
                zx,
                zp,
                range,
            } => {
                // SAFETY: as above.
                let y = unsafe { out_q.get().add(at) };
                let epi = Epi::I8 {
                    b: bias,
                    zp,
                    range,
                    y,
                };
                (epi, zx)
            }
        };
        block.run(w, zx, runs, cols, epi, bufs);
    };
    let task = |t: usize| {
        let (mut at, mut pad, mut patch);
        let mut bufs = if runs {
            (at, pad) = ([PAD; RUNS], [0i8; MAX_RUN]);
            Bufs::Runs {
                at: &mut at,
                pad: &mut pad,
            }
        } else {
            patch = [0i8; PATCH];
            Bufs::Patch(&mut patch)
        };
        let (run, ci) = if col_parts > 1 && !serial {
            (t / col_parts..t / col_parts + 1, t % col_parts)
        } else {
            (split_range(blocks, tasks, 1, t), 0)
        };
        let parts = if serial { 1 } else { col_parts };
        for bi in run {
            one(bi, split_range(cout, parts, PANEL, ci), &mut bufs);
        }
    };
    if tasks <= 1 {
        task(0);
    } else {
        par.run(tasks, &task);
    }
}

/// Whether the kernel can read pixels in place: VNNI at the selected level, weights
/// packed for it (int8, one group), runs of whole quads that fit the padding buffer.
fn in_place(w: &QPacked, cin: usize, taps: usize, image: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && w.vnni
            .as_ref()
            .is_some_and(|v| v.grouped.is_none() && v.panel_bytes == v.kq * 16)
        && (crate::qvnni::available() || crate::qavx2::available())
        && w.bits == 8
        && w.groups == 1
        && cin.is_multiple_of(4)
        && cin <= MAX_RUN
        && taps <= RUNS
        && image < PAD as usize
}

/// `d.copy_from_slice(s)` for runs of up to 64 bytes (an RGB filter row is 9 or 21) as
/// two overlapping fixed-size moves instead of a call to `memcpy`.
#[inline(always)]
fn copy_short(d: &mut [i8], s: &[i8]) {
    let n = s.len().min(d.len());
    if (32..=64).contains(&n) {
        d[..32].copy_from_slice(&s[..32]);
        d[n - 32..n].copy_from_slice(&s[n - 32..n]);
    } else if (16..32).contains(&n) {
        d[..16].copy_from_slice(&s[..16]);
        d[n - 16..n].copy_from_slice(&s[n - 16..n]);
    } else if (8..16).contains(&n) {
        d[..8].copy_from_slice(&s[..8]);
        d[n - 8..n].copy_from_slice(&s[n - 8..n]);
    } else if (4..8).contains(&n) {
        d[..4].copy_from_slice(&s[..4]);
        d[n - 4..n].copy_from_slice(&s[n - 4..n]);
    } else if n < 4 {
        for (a, &b) in d[..n].iter_mut().zip(s) {
            *a = b;
        }
    } else {
        d[..n].copy_from_slice(&s[..n]);
    }
}

/// [`QConvOut`] without its output.
#[derive(Clone, Copy)]
enum Kind<'a> {
    F32 {
        params: &'a [f32],
        bias: Option<&'a [f32]>,
        clamp: (f32, f32),
    },
    I8 {
        b: &'a [i32],
        zx: i32,
        zp: i32,
        range: (i32, i32),
    },
}

/// A block's epilogue and where its first pixel's outputs go (rows of `cout`).
#[derive(Clone, Copy)]
enum Epi<'a> {
    F32 {
        /// Per pixel of the block.
        params: &'a [f32],
        bias: Option<&'a [f32]>,
        clamp: (f32, f32),
        y: *mut f32,
    },
    I8 {
        b: &'a [i32],
        zp: i32,
        range: (i32, i32),
        y: *mut i8,
    },
}

/// A task's buffers, set up once for all its blocks: the run table and padding for
/// in-place blocks, or the patch for gathered ones.
enum Bufs<'a> {
    Runs {
        /// Per pixel and tap: the run's input offset, or `PAD`.
        at: &'a mut [u32; RUNS],
        pad: &'a mut [i8; MAX_RUN],
    },
    Patch(&'a mut [i8; PATCH]),
}

impl Epi<'_> {
    /// The VNNI kernel's epilogue and output pointers.
    #[cfg(target_arch = "x86_64")]
    fn vnni(&self) -> (crate::qvnni::Epi<'_>, *mut f32, *mut i8) {
        match *self {
            Epi::F32 {
                params,
                bias,
                clamp,
                y,
            } => (
                crate::qvnni::Epi::Qd8 {
                    params,
                    bias,
                    clamp,
                },
                y,
                core::ptr::null_mut(),
            ),
            Epi::I8 { b, zp, range, y } => (
                crate::qvnni::Epi::Qs8 {
                    bias: b,
                    zy: zp,
                    range,
                },
                core::ptr::null_mut(),
                y,
            ),
        }
    }
}

impl QConv {
    /// A 1x1 convolution that keeps the image's size: pixels are read as they lie.
    fn direct(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && (self.ih, self.iw) == (self.oh, self.ow)
    }
}

/// Rows given as runs through the VNNI kernel, or the AVX2 one below that level.
///
/// # Safety
/// As `qvnni::columns_runs`, with the packing [`in_place`] checks.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_runs<F: Fn(usize, usize) -> *const i8>(
    v: &crate::qvnni::VnniWeights,
    m: usize,
    n: usize,
    segs: usize,
    seg: usize,
    src: &F,
    panels: core::ops::Range<usize>,
    e: crate::qvnni::Epi<'_>,
    out_f: *mut f32,
    out_q: *mut i8,
) {
    if crate::qvnni::available() {
        // SAFETY: forwarded from the caller.
        unsafe { crate::qvnni::columns_runs(v, m, n, segs, seg, src, panels, e, out_f, out_q) };
    } else {
        // SAFETY: forwarded; the packing checks of `columns8_runs` hold (`in_place`), so
        // it computes every row and column it was given.
        let done = unsafe {
            crate::qavx2::columns8_runs(v, m, n, segs, seg, src, panels, e, out_f, out_q)
        };
        debug_assert!(done);
    }
}

/// Pixels `p0..p0 + m` of one image.
struct Block<'a> {
    g: &'a QConv,
    /// The image.
    x: &'a [i8],
    p0: usize,
    m: usize,
}

impl Block<'_> {
    /// Input offset of pixel `p`'s tap `(ky, kx)`, or `None` in the padding.
    #[inline(always)]
    fn tap(&self, p: usize, ky: usize, kx: usize) -> Option<usize> {
        let g = self.g;
        let (oy, ox) = (p / g.ow, p % g.ow);
        let iy = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad[0])?;
        let ix = (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.pad[1])?;
        (iy < g.ih && ix < g.iw).then_some((iy * g.iw + ix) * g.cin)
    }

    /// Columns `cols` of the block's pixels, padding reading `zx`: in place when
    /// `runs`, else gathered chunk by chunk.
    fn run(
        &self,
        w: &QPacked,
        zx: i32,
        runs: bool,
        cols: core::ops::Range<usize>,
        epi: Epi<'_>,
        bufs: &mut Bufs<'_>,
    ) {
        let g = self.g;
        let cout = w.n();
        let padv = zx.clamp(-128, 127) as i8;
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(v), Bufs::Runs { at, pad }) = (runs, &w.vnni, &mut *bufs) {
            let (e, out_f, out_q) = epi.vnni();
            let panels = cols.start / PANEL..cols.end.div_ceil(PANEL);
            if g.direct() {
                // Each pixel's input is one run, in order.
                let x = &self.x[self.p0 * g.cin..(self.p0 + self.m) * g.cin];
                // SAFETY: row `r < m` lies inside `x`.
                let src = |r: usize, _t: usize| unsafe { x.as_ptr().add(r * g.cin) };
                // SAFETY: as below, with one run per pixel.
                unsafe { kernel_runs(v, self.m, cout, 1, g.cin, &src, panels, e, out_f, out_q) };
                return;
            }
            let taps = g.kh * g.kw;
            let (mut oy, mut ox) = (self.p0 / g.ow, self.p0 % g.ow);
            for runs in at.chunks_exact_mut(taps).take(self.m) {
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0])
                        .checked_sub(g.pad[0])
                        .filter(|&iy| iy < g.ih);
                    for kx in 0..g.kw {
                        let ix = (ox * g.stride[1] + kx * g.dilation[1])
                            .checked_sub(g.pad[1])
                            .filter(|&ix| ix < g.iw);
                        runs[ky * g.kw + kx] = match (iy, ix) {
                            (Some(iy), Some(ix)) => ((iy * g.iw + ix) * g.cin) as u32,
                            _ => PAD,
                        };
                    }
                }
                ox += 1;
                if ox == g.ow {
                    (oy, ox) = (oy + 1, 0);
                }
            }
            let at = &**at;
            pad[..g.cin].fill(padv);
            let pad = &**pad;
            let src = |r: usize, t: usize| match at[r * taps + t] {
                PAD => pad.as_ptr(),
                // SAFETY: `tap` keeps `o + cin` inside the image.
                o => unsafe { self.x.as_ptr().add(o as usize) },
            };
            // SAFETY: `runs` checked VNNI or AVX2 at the selected level and the packing
            // (int8, one group, `k = taps · cin`, `cin` a multiple of 4 and at most
            // `MAX_RUN`); every run is `cin` readable values; the output holds `m` rows
            // of `cout` from the block's first pixel, and this task owns columns `cols`.
            unsafe { kernel_runs(v, self.m, cout, taps, g.cin, &src, panels, e, out_f, out_q) };
            return;
        }
        let _ = runs;
        let kk = g.kh * g.kw * g.cin;
        let per = (PATCH / kk.max(1)).max(1);
        let Bufs::Patch(patch) = bufs else {
            return;
        };
        let mut q = 0;
        while q < self.m {
            let m = (self.m - q).min(per);
            for p in 0..m {
                self.gather(self.p0 + q + p, padv, &mut patch[p * kk..(p + 1) * kk]);
            }
            let rows = &patch[..m * kk];
            let cols = cols.clone();
            match epi {
                Epi::F32 {
                    params,
                    bias,
                    clamp,
                    y,
                } => {
                    // SAFETY: rows `q..q + m` of the block's output.
                    let out = Out(unsafe { y.add(q * cout) });
                    dispatch(Qd8Cols {
                        x: rows,
                        params: &params[2 * q..2 * (q + m)],
                        m,
                        w,
                        bias,
                        clamp,
                        cols,
                        out: &out,
                    })
                }
                Epi::I8 { b, zp, range, y } => {
                    // SAFETY: as above.
                    let out = Out(unsafe { y.add(q * cout) });
                    dispatch(Qs8Cols {
                        x: rows,
                        m,
                        w,
                        b,
                        zp,
                        range,
                        cols,
                        out: &out,
                    })
                }
            }
            q += m;
        }
    }

    /// The input patch of pixel `p`, `[kh][kw][cin]`, padding as `pad`.
    fn gather(&self, p: usize, pad: i8, dst: &mut [i8]) {
        let g = self.g;
        let cin = g.cin;
        let row = g.kw * cin;
        let ox = p % g.ow;
        let x0 = (ox * g.stride[1]).checked_sub(g.pad[1]);
        // Without dilation, a filter row's taps are one run of the input row when they
        // all fall inside it: one copy instead of one per tap.
        let whole = g.dilation[1] == 1 && x0.is_some_and(|x0| x0 + g.kw <= g.iw);
        for ky in 0..g.kh {
            if whole {
                let d = &mut dst[ky * row..][..row];
                match self.tap(p, ky, 0) {
                    Some(o) => copy_short(d, &self.x[o..o + row]),
                    None => d.fill(pad),
                }
                continue;
            }
            for kx in 0..g.kw {
                let d = &mut dst[(ky * g.kw + kx) * cin..][..cin];
                match self.tap(p, ky, kx) {
                    Some(o) => copy_short(d, &self.x[o..o + cin]),
                    None => d.fill(pad),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::requantize;

    /// `Σ (x − zx) · w` per pixel and output channel, padding skipped.
    fn reference(g: &QConv, cout: usize, x: &[i8], w: &[i8], zx: &[i32]) -> Vec<i32> {
        let mut acc = vec![0i32; g.n * g.oh * g.ow * cout];
        for b in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for oc in 0..cout {
                        let mut a = 0i32;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                    - g.pad[0] as isize;
                                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                    - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                                    continue;
                                }
                                for c in 0..g.cin {
                                    let xi =
                                        ((b * g.ih + iy as usize) * g.iw + ix as usize) * g.cin + c;
                                    let wi =
                                        oc * g.kh * g.kw * g.cin + (ky * g.kw + kx) * g.cin + c;
                                    a += (i32::from(x[xi]) - zx[b]) * i32::from(w[wi]);
                                }
                            }
                        }
                        acc[((b * g.oh + oy) * g.ow + ox) * cout + oc] = a;
                    }
                }
            }
        }
        acc
    }

    #[test]
    fn q_conv_against_the_definition_at_every_level() {
        // (n, ih, iw, cin, cout, k, stride, pad, dilation)
        let cases = [
            (1, 9, 9, 3, 20, 3, 2, 1, 1),
            (1, 8, 7, 8, 33, 3, 1, 1, 1),
            (2, 6, 6, 16, 17, 1, 1, 0, 1),
            (1, 11, 10, 4, 24, 7, 2, 3, 1),
            (1, 9, 9, 12, 16, 3, 1, 2, 2),
            // Few pixels, many channels: the columns are split over the threads.
            (1, 3, 3, 64, 160, 3, 1, 1, 1),
            // More pixels than a block.
            (1, 20, 20, 8, 40, 3, 1, 1, 1),
            // Filter rows of 32 to 64 bytes.
            (1, 7, 7, 20, 24, 3, 1, 1, 1),
            // A long reduction: fewer pixels per gathered patch.
            (1, 6, 6, 1100, 20, 3, 1, 1, 1),
        ];
        let _l = crate::tests::LEVEL_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = ptero_simd::level();
        let pool = ptero_simd::pool::ThreadPool::new(2);
        for (n, ih, iw, cin, cout, k, s, p, d) in cases {
            let span = d * (k - 1) + 1;
            let (oh, ow) = ((ih + 2 * p - span) / s + 1, (iw + 2 * p - span) / s + 1);
            let g = QConv {
                n,
                ih,
                iw,
                oh,
                ow,
                cin,
                kh: k,
                kw: k,
                stride: [s, s],
                pad: [p, p],
                dilation: [d, d],
            };
            let kk = k * k * cin;
            let x: Vec<i8> = (0..n * ih * iw * cin)
                .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
                .collect();
            let wv: Vec<i8> = (0..cout * kk)
                .map(|i| ((i * 13 + 5) % 255) as i32 - 127)
                .map(|v| v as i8)
                .collect();
            let scale: Vec<f32> = (0..cout).map(|c| 1e-4 * (1 + c % 7) as f32).collect();
            // Levels first: packing depends on the level (VNNI panels or rows).
            for l in crate::tests::levels() {
                ptero_simd::set_level(l).unwrap();
                let w =
                    QPacked::new(cout, kk, 8, kk, |r, c| wv[r * kk + c], |r, _| scale[r]).unwrap();
                for par in [&ptero_simd::Serial as &dyn Parallel, &pool] {
                    for zx in [3i32, -128, 127] {
                        let want = reference(&g, cout, &x, &wv, &vec![zx; n]);
                        // Static int8: bias with the zero point folded in.
                        let bias: Vec<i32> = (0..cout).map(|c| c as i32 * 50 - 300).collect();
                        let b: Vec<i32> = (0..cout)
                            .map(|c| {
                                let sw: i32 =
                                    wv[c * kk..(c + 1) * kk].iter().map(|&v| i32::from(v)).sum();
                                bias[c] - zx * sw
                            })
                            .collect();
                        let mut y = vec![0i8; want.len()];
                        let (zp, range) = (-5, (-120, 110));
                        q_conv(
                            par,
                            &g,
                            &x,
                            &w,
                            QConvOut::I8 {
                                y: &mut y,
                                b: &b,
                                zx,
                                zp,
                                range,
                            },
                        );
                        for (i, (&got, &a)) in y.iter().zip(&want).enumerate() {
                            let e = requantize(a + bias[i % cout], scale[i % cout], zp, range);
                            assert_eq!(got, e, "{l} {g:?} zx {zx} [{i}]");
                        }
                        // Dynamic: per image scale and zero point.
                        let params: Vec<f32> = (0..n).flat_map(|_| [0.02f32, zx as f32]).collect();
                        let fb: Vec<f32> = (0..cout).map(|c| c as f32 * 0.1).collect();
                        let mut yf = vec![0f32; want.len()];
                        q_conv(
                            par,
                            &g,
                            &x,
                            &w,
                            QConvOut::F32 {
                                y: &mut yf,
                                params: &params,
                                bias: Some(&fb),
                                clamp: (-50.0, 50.0),
                            },
                        );
                        for (i, (&got, &a)) in yf.iter().zip(&want).enumerate() {
                            let c = i % cout;
                            let e = ((a as f32 * 0.02) * scale[c] + fb[c]).clamp(-50.0, 50.0);
                            assert!(
                                (got - e).abs() <= 1e-5 * e.abs().max(1.0),
                                "{l} {g:?} [{i}] {got} vs {e}"
                            );
                        }
                    }
                }
            }
        }
        ptero_simd::set_level(before).unwrap();
    }
}
