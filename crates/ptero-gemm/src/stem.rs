//! A direct channels-last kernel for convolutions of a few input channels: a first
//! layer reading the model's (channels-first) input image.

use ptero_simd::{Simd, SimdOp};

use crate::conv::{Conv2d, Image};
use crate::depthwise::act_vec;
use crate::driver::SyncPtr;
use crate::nhwc_dw::DW_MAX_TAPS;
use crate::{Activation, PackedB};

/// Most input channels of a [`Stem`] convolution (an image's colour planes).
const STEM_MAX_CIN: usize = 4;

/// Vectors of output channels per pixel when the direct [`Stem`] kernel applies: one
/// group, a few input channels, every output channel in at most 8 whole vectors. A
/// first layer reads the model's channels-first input, whose patches would otherwise be
/// gathered one value at a time.
pub(crate) fn stem_vectors(g: &Conv2d, level: ptero_simd::Level) -> Option<usize> {
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
pub(crate) struct Stem<'a> {
    pub g: &'a Conv2d,
    pub x: Image<'a>,
    pub w: &'a PackedB,
    pub bias: Option<&'a [f32]>,
    pub rows: core::ops::Range<usize>,
    pub out: SyncPtr,
    pub os: [usize; 4],
    pub act: Activation,
}

/// [`Stem`] with `NV` vectors of output channels, `P` interior pixels at a time.
pub(crate) struct StemN<'a, const NV: usize, const P: usize>(pub Stem<'a>);

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
