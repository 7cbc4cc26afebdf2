//! Int8 depthwise convolution over NHWC images (one filter per channel), requantized to
//! int8 with XNNPACK's fp32 formula: a whole output row accumulates in i32, tap by tap,
//! so the inner loop runs over contiguous channels.
//!
//! ```
//! use ptero_gemm::{q8_depthwise, QDepthwise};
//! use ptero_simd::Serial;
//! // One 3 x 3 image of one channel, a 1 x 1 filter of weight 2, scale 0.5: y = x.
//! let x: Vec<i8> = (1..=9).collect();
//! let g = QDepthwise { n: 1, ih: 3, iw: 3, oh: 3, ow: 3, c: 1, kh: 1, kw: 1,
//!     stride: [1, 1], pad: [0, 0], dilation: [1, 1] };
//! let mut y = [0i8; 9];
//! q8_depthwise(&Serial, &g, &x, &[2], &[0], &[0.5], 0, 0, (-128, 127), &mut y);
//! assert_eq!(y.to_vec(), x);
//! ```

use alloc::vec::Vec;

use ptero_simd::{dispatch, for_each_chunk_by, Parallel, Simd, SimdOp};

use crate::quant::requantize;

/// Geometry of a depthwise convolution (multiplier 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QDepthwise {
    pub n: usize,
    pub ih: usize,
    pub iw: usize,
    pub oh: usize,
    pub ow: usize,
    /// Channels (in and out).
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// Top and left padding (bottom and right follow from the output size).
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
}

/// Output elements one row task accumulates at once (on the stack).
const ROW_ACC: usize = 8192;

/// Kernel taps whose weights a channel block keeps at hand (7 x 7 and smaller
/// kernels); larger ones accumulate through a row buffer.
const MAX_TAPS: usize = 49;

/// Channels of the widest block (four vectors of the widest level).
const BLOCK: usize = 64;

/// `y = RNE(clamp((bias + Σ_taps (x − zx) · w) · scale, lo − zy, hi − zy)) + zy` per
/// channel; `w` is `[kh·kw][c]`, `bias` and `scale` are per channel.
///
/// # Panics
/// When a slice is shorter than the geometry needs.
#[allow(clippy::too_many_arguments)]
pub fn q8_depthwise(
    par: &dyn Parallel,
    g: &QDepthwise,
    x: &[i8],
    w: &[i8],
    bias: &[i32],
    scale: &[f32],
    zx: i32,
    zy: i32,
    range: (i32, i32),
    y: &mut [i8],
) {
    let row = g.ow * g.c;
    assert!(x.len() >= g.n * g.ih * g.iw * g.c && y.len() >= g.n * g.oh * row);
    assert!(w.len() >= g.kh * g.kw * g.c && bias.len() >= g.c && scale.len() >= g.c);
    if row == 0 {
        return;
    }
    let y = &mut y[..g.n * g.oh * row];
    for_each_chunk_by(par, y, row, &|r, part| {
        dispatch(DwRows {
            packed: None,
            g,
            x,
            w,
            bias,
            scale,
            zx,
            zy,
            range,
            first: r.start / row,
            y: part,
        })
    });
}

struct DwRows<'a> {
    /// Weights prepared at load ([`QDwWeights`]): the register-block path.
    packed: Option<&'a QDwWeights>,
    g: &'a QDepthwise,
    x: &'a [i8],
    w: &'a [i8],
    bias: &'a [i32],
    scale: &'a [f32],
    zx: i32,
    zy: i32,
    range: (i32, i32),
    /// Index of the first output row (over images) of `y`.
    first: usize,
    y: &'a mut [i8],
}

impl SimdOp for DwRows<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let g = self.g;
        if let Some(p) = self.packed.filter(|_| 4 * S::LANES <= BLOCK) {
            self.blocks(s, p);
            return;
        }
        let c = g.c;
        // Pixels of one row accumulated together.
        let span = (ROW_ACC / c.max(1)).clamp(1, g.ow.max(1));
        let mut acc = [0i32; ROW_ACC];
        let img = g.ih * g.iw * c;
        for (j, yrow) in self.y.chunks_exact_mut(g.ow * c).enumerate() {
            let orow = self.first + j;
            let (b, oy) = (orow / g.oh, orow % g.oh);
            let xb = &self.x[b * img..(b + 1) * img];
            let mut ox0 = 0;
            while ox0 < g.ow {
                let px = (g.ow - ox0).min(span);
                let acc = &mut acc[..px * c];
                for a in acc.chunks_exact_mut(c) {
                    a.copy_from_slice(&self.bias[..c]);
                }
                for ky in 0..g.kh {
                    let Some(iy) = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad[0])
                    else {
                        continue;
                    };
                    if iy >= g.ih {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let wt = &self.w[(ky * g.kw + kx) * c..][..c];
                        for p in 0..px {
                            let Some(ix) = ((ox0 + p) * g.stride[1] + kx * g.dilation[1])
                                .checked_sub(g.pad[1])
                            else {
                                continue;
                            };
                            if ix >= g.iw {
                                continue;
                            }
                            let xs = &xb[(iy * g.iw + ix) * c..][..c];
                            mac(&mut acc[p * c..(p + 1) * c], xs, wt, self.zx);
                        }
                    }
                }
                let out = &mut yrow[ox0 * c..(ox0 + px) * c];
                for (pa, po) in acc.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                    for ((o, &a), &s) in po.iter_mut().zip(pa).zip(self.scale) {
                        *o = requantize(a, s, self.zy, self.range);
                    }
                }
                ox0 += px;
            }
        }
    }
}

impl DwRows<'_> {
    /// Each output pixel's channels in blocks of `V` vectors held in registers over
    /// every tap: no accumulator goes through memory, and the input zero point is
    /// folded into the bias (`Σ (x − zx) · w = Σ x · w − zx · Σ w`, padding read as `zx`).
    #[inline(always)]
    fn blocks<S: Simd>(mut self, s: S, p: &QDwWeights) {
        let y = core::mem::take(&mut self.y);
        let g = self.g;
        let c = g.c;
        let taps = g.kh * g.kw;
        // Offset of each tap from the window's top-left input pixel, in elements.
        let mut tap_off = [0usize; MAX_TAPS];
        for (t, o) in tap_off.iter_mut().enumerate().take(taps) {
            let (ky, kx) = (t / g.kw, t % g.kw);
            *o = (ky * g.dilation[0] * g.iw + kx * g.dilation[1]) * c;
        }
        let l = S::LANES;
        let mut c0 = 0;
        while c0 < c {
            let left = c - c0;
            let cn = if left >= 4 * l {
                self.block::<S, 4>(s, p, y, c0, 4 * l, &tap_off);
                4 * l
            } else if left > l {
                let cn = left.min(2 * l);
                self.block::<S, 2>(s, p, y, c0, cn, &tap_off);
                cn
            } else {
                self.block::<S, 1>(s, p, y, c0, left, &tap_off);
                left
            };
            c0 += cn;
        }
    }

    /// Channels `c0..c0 + cn` (`cn <= V · LANES`) of every output row of `y`.
    #[inline(always)]
    fn block<S: Simd, const V: usize>(
        &self,
        s: S,
        p: &QDwWeights,
        y: &mut [i8],
        c0: usize,
        cn: usize,
        tap_off: &[usize; MAX_TAPS],
    ) {
        if self.g.kh * self.g.kw <= 9 {
            self.block_t::<S, V, 9>(s, p, y, c0, cn, tap_off);
        } else {
            self.block_t::<S, V, MAX_TAPS>(s, p, y, c0, cn, tap_off);
        }
    }

    /// [`Self::block`] with the block's weights copied to the stack, `T` taps at most:
    /// addressed at fixed offsets in the unrolled taps.
    #[inline(always)]
    fn block_t<S: Simd, const V: usize, const T: usize>(
        &self,
        s: S,
        p: &QDwWeights,
        y: &mut [i8],
        c0: usize,
        cn: usize,
        tap_off: &[usize; MAX_TAPS],
    ) {
        let g = self.g;
        let c = g.c;
        let img = g.ih * g.iw * c;
        let taps = (g.kh * g.kw).min(T);
        let n = V * S::LANES;
        let mut wb = [[0i32; BLOCK]; T];
        for (t, wt) in wb.iter_mut().enumerate().take(taps) {
            wt[..n].copy_from_slice(&p.w[t * p.cp + c0..][..n]);
        }
        let k = Kern {
            wb: &wb,
            bz: &p.bz[c0..c0 + n],
            sc: &p.scale[c0..c0 + n],
            tap_off,
            pad: [self.zx as i8; BLOCK],
            lo: (self.range.0 - self.zy) as f32,
            hi: (self.range.1 - self.zy) as f32,
        };
        let span_y = (g.kh - 1) * g.dilation[0];
        for (j, yrow) in y.chunks_exact_mut(g.ow * c).enumerate() {
            let orow = self.first + j;
            let (b, oy) = (orow / g.oh, orow % g.oh);
            let xb = &self.x[b * img..(b + 1) * img];
            let rows_in = (oy * g.stride[0])
                .checked_sub(g.pad[0])
                .is_some_and(|y0| y0 + span_y < g.ih);
            self.row::<S, V, T>(s, &k, xb, yrow, oy, c0, cn, rows_in);
        }
    }

    /// Channels `c0..c0 + cn` of output row `oy`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn row<S: Simd, const V: usize, const T: usize>(
        &self,
        s: S,
        k: &Kern<'_, T>,
        xb: &[i8],
        yrow: &mut [i8],
        oy: usize,
        c0: usize,
        cn: usize,
        rows_in: bool,
    ) {
        let g = self.g;
        let c = g.c;
        let taps = g.kh * g.kw;
        let l = S::LANES;
        let span_x = (g.kw - 1) * g.dilation[1];
        let zy = s.splat_i(self.zy);
        let (lo, hi) = (s.splat(k.lo), s.splat(k.hi));
        // Past `cn`, a partial block reads the zero point (its outputs are dropped).
        let mut tmp = k.pad;
        let mut out = [0i8; BLOCK];
        for ox in 0..g.ow {
            let mut acc: [S::I; V] = core::array::from_fn(|v| s.load_i(&k.bz[v * l..]));
            let x0 = (ox * g.stride[1]).checked_sub(g.pad[1]);
            let inside = rows_in && cn == V * l && x0.is_some_and(|x0| x0 + span_x < g.iw);
            if inside {
                let (y0, x0) = (oy * g.stride[0] - g.pad[0], ox * g.stride[1] - g.pad[1]);
                let at = (y0 * g.iw + x0) * c + c0;
                // The window: every tap's `V · LANES` values (the last tap is the
                // furthest), checked once.
                let win = &xb[at..at + k.tap_off[taps - 1] + V * l];
                taps_in::<S, V, T>(s, &mut acc, win, k, taps);
            } else {
                for t in 0..taps {
                    let wt = k.tap(t, V * l);
                    let (ky, kx) = (t / g.kw, t % g.kw);
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad[0]);
                    let ix = (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.pad[1]);
                    let xs: &[i8] = match (iy, ix) {
                        (Some(iy), Some(ix)) if iy < g.ih && ix < g.iw => {
                            let at = (iy * g.iw + ix) * c + c0;
                            if cn == V * l {
                                &xb[at..at + cn]
                            } else {
                                tmp[..cn].copy_from_slice(&xb[at..at + cn]);
                                &tmp
                            }
                        }
                        _ => &k.pad,
                    };
                    for v in 0..V {
                        let p = s.madd_i16(s.load_i8(&xs[v * l..]), s.load_i(&wt[v * l..]));
                        acc[v] = s.add_i(acc[v], p);
                    }
                }
            }
            let full = cn == V * l;
            let dst = &mut yrow[ox * c + c0..];
            for v in 0..V {
                let f = s.mul(s.to_f32(acc[v]), s.load(&k.sc[v * l..]));
                let q = s.add_i(s.to_i32(s.min(s.max(f, lo), hi)), zy);
                if full {
                    s.store_i8(&mut dst[v * l..], q);
                } else {
                    s.store_i8(&mut out[v * l..], q);
                }
            }
            if !full {
                dst[..cn].copy_from_slice(&out[..cn]);
            }
        }
    }
}

/// `acc += Σ_t x(t) · w(t)` over the first `taps` (at most `T`) taps of an interior
/// window, whose every tap lies inside `win`.
#[inline(always)]
fn taps_in<S: Simd, const V: usize, const T: usize>(
    s: S,
    acc: &mut [S::I; V],
    win: &[i8],
    k: &Kern<'_, T>,
    taps: usize,
) {
    let l = S::LANES;
    let taps = taps.min(T);
    assert!(k.tap_off[..taps].iter().all(|&o| o + V * l <= win.len()));
    for t in 0..taps {
        let wt = k.tap(t, V * l);
        for v in 0..V {
            // SAFETY: `tap_off[t] + V · LANES <= win.len()`, asserted above (for a
            // fixed `T` the check folds into the unrolled taps).
            let x = unsafe { s.load_i8_ptr(win.as_ptr().add(k.tap_off[t] + v * l)) };
            acc[v] = s.add_i(acc[v], s.madd_i16(x, s.load_i(&wt[v * l..])));
        }
    }
}

/// One channel block's weights (on the stack, `T` taps at most), folded bias and scales.
struct Kern<'a, const T: usize> {
    wb: &'a [[i32; BLOCK]; T],
    bz: &'a [i32],
    sc: &'a [f32],
    tap_off: &'a [usize; MAX_TAPS],
    pad: [i8; BLOCK],
    lo: f32,
    hi: f32,
}

impl<const T: usize> Kern<'_, T> {
    /// Tap `t`'s weights for the block's `n` channels.
    #[inline(always)]
    fn tap(&self, t: usize, n: usize) -> &[i32] {
        &self.wb[t][..n]
    }
}

/// Depthwise int8 weights prepared once (at load): every tap's weights widened to i32
/// with zero high halves (one `pmaddwd` multiplies them exactly), the input zero point
/// folded into the bias (`bias − zx · Σ_taps w`; padding then reads `zx`), and channels
/// padded to whole blocks so that a partial block reads zeros.
///
/// ```
/// use ptero_gemm::{q8_depthwise_packed, QDepthwise, QDwWeights};
/// use ptero_simd::Serial;
/// // Two channels of a 1 x 3 image, a 1 x 3 filter of ones, padding 1, scale 1: each
/// // output is the sum of its pixel and neighbours (padding reads the zero point 0).
/// let g = QDepthwise { n: 1, ih: 1, iw: 3, oh: 1, ow: 3, c: 2, kh: 1, kw: 3,
///     stride: [1, 1], pad: [0, 1], dilation: [1, 1] };
/// let w = QDwWeights::new(3, 2, &[1i8; 6], &[0, 0], &[1.0, 1.0], 0).unwrap();
/// let x = [1i8, 10, 2, 20, 3, 30];
/// let mut y = [0i8; 6];
/// q8_depthwise_packed(&Serial, &g, &x, &w, 0, 0, (-128, 127), &mut y);
/// assert_eq!(y, [3, 30, 6, 60, 5, 50]);
/// ```
#[derive(Debug, Clone)]
pub struct QDwWeights {
    c: usize,
    taps: usize,
    /// Channels padded to a whole block.
    cp: usize,
    w: Vec<i32>,
    bz: Vec<i32>,
    scale: Vec<f32>,
}

impl QDwWeights {
    /// From `w` (`[taps][c]`), bias and scale per channel and the input zero point;
    /// `None` when the kernel has more than 49 taps, the zero point is not an int8
    /// value, a slice is short, or memory runs out (the row-buffer path then serves).
    pub fn new(
        taps: usize,
        c: usize,
        w: &[i8],
        bias: &[i32],
        scale: &[f32],
        zx: i32,
    ) -> Option<QDwWeights> {
        if taps == 0
            || taps > MAX_TAPS
            || i8::try_from(zx).is_err()
            || w.len() < taps.checked_mul(c)?
            || bias.len() < c
            || scale.len() < c
        {
            return None;
        }
        let cp = c.checked_next_multiple_of(BLOCK)?;
        let mut wp = Vec::new();
        wp.try_reserve_exact(taps.checked_mul(cp)?).ok()?;
        wp.resize(taps * cp, 0i32);
        let (mut bz, mut sc) = (Vec::new(), Vec::new());
        bz.try_reserve_exact(cp).ok()?;
        sc.try_reserve_exact(cp).ok()?;
        bz.resize(cp, 0i32);
        sc.resize(cp, 0f32);
        for ch in 0..c {
            let mut sw = 0i32;
            for t in 0..taps {
                let v = i32::from(w[t * c + ch]);
                // The high half zero: `madd_i16` then multiplies exactly.
                wp[t * cp + ch] = v & 0xffff;
                sw += v;
            }
            bz[ch] = bias[ch].wrapping_sub(zx.wrapping_mul(sw));
            sc[ch] = scale[ch];
        }
        Some(QDwWeights {
            c,
            taps,
            cp,
            w: wp,
            bz,
            scale: sc,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.w.len() + self.bz.len() + self.scale.len())
    }
}

/// [`q8_depthwise`] with weights prepared by [`QDwWeights::new`] (from the same
/// `w`, bias, scale and `zx`): each pixel's channels accumulate in registers over all
/// taps.
///
/// # Panics
/// When a slice is shorter than the geometry needs, or `p` was made for other
/// channels or taps.
#[allow(clippy::too_many_arguments)]
pub fn q8_depthwise_packed(
    par: &dyn Parallel,
    g: &QDepthwise,
    x: &[i8],
    p: &QDwWeights,
    zx: i32,
    zy: i32,
    range: (i32, i32),
    y: &mut [i8],
) {
    let row = g.ow * g.c;
    assert!(x.len() >= g.n * g.ih * g.iw * g.c && y.len() >= g.n * g.oh * row);
    assert!(p.c == g.c && p.taps == g.kh * g.kw);
    if row == 0 {
        return;
    }
    let y = &mut y[..g.n * g.oh * row];
    for_each_chunk_by(par, y, row, &|r, part| {
        dispatch(DwRows {
            packed: Some(p),
            g,
            x,
            w: &[],
            bias: &[],
            scale: &[],
            zx,
            zy,
            range,
            first: r.start / row,
            y: part,
        })
    });
}

#[inline(always)]
fn mac(acc: &mut [i32], x: &[i8], w: &[i8], zx: i32) {
    for ((a, &xv), &wv) in acc.iter_mut().zip(x).zip(w) {
        *a = a.wrapping_add((i32::from(xv) - zx) * i32::from(wv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn against_the_definition() {
        // (n, ih, iw, c, k, stride, pad, dilation)
        let cases = [
            (1, 7, 9, 5, 3, 1, 1, 1),
            (2, 8, 8, 33, 3, 2, 1, 1),
            (1, 6, 5, 16, 5, 1, 2, 1),
            (1, 9, 9, 7, 3, 1, 2, 2),
            (1, 12, 11, 48, 7, 1, 3, 1),
            (1, 10, 10, 64, 3, 2, 0, 1),
            (2, 5, 6, 80, 5, 2, 2, 1),
            // More taps than a block keeps: the row-buffer path.
            (1, 9, 9, 20, 9, 1, 4, 1),
        ];
        for ((n, ih, iw, c, k, s, p, d), zx) in cases
            .into_iter()
            .flat_map(|cs| [(cs, 3), (cs, -128), (cs, 127)])
        {
            let span = d * (k - 1) + 1;
            let (oh, ow) = ((ih + 2 * p - span) / s + 1, (iw + 2 * p - span) / s + 1);
            let g = QDepthwise {
                n,
                ih,
                iw,
                oh,
                ow,
                c,
                kh: k,
                kw: k,
                stride: [s, s],
                pad: [p, p],
                dilation: [d, d],
            };
            let x: Vec<i8> = (0..n * ih * iw * c)
                .map(|i| ((i * 37) % 251) as i8)
                .collect();
            let w: Vec<i8> = (0..k * k * c).map(|i| ((i * 11) % 29) as i8 - 14).collect();
            let bias: Vec<i32> = (0..c).map(|i| i as i32 * 7 - 20).collect();
            let scale: Vec<f32> = (0..c).map(|i| 0.01 + 0.001 * i as f32).collect();
            let (zy, range) = (-2, (-100, 120));
            let mut y = vec![0i8; n * oh * ow * c];
            q8_depthwise(
                &ptero_simd::Serial,
                &g,
                &x,
                &w,
                &bias,
                &scale,
                zx,
                zy,
                range,
                &mut y,
            );
            // Prepared weights (where they apply), on one thread and on two: the same
            // bytes.
            let pool = ptero_simd::pool::ThreadPool::new(2);
            if let Some(p) = QDwWeights::new(k * k, c, &w, &bias, &scale, zx) {
                for par in [&ptero_simd::Serial as &dyn Parallel, &pool] {
                    let mut yp = vec![0i8; y.len()];
                    q8_depthwise_packed(par, &g, &x, &p, zx, zy, range, &mut yp);
                    assert_eq!(yp, y, "{n} {ih}x{iw}x{c} k{k} s{s} zx{zx}");
                }
            } else {
                assert!(k * k > 49, "prepared weights refused for {k}x{k}");
            }
            for b in 0..n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ch in 0..c {
                            let mut acc = bias[ch];
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky * d) as isize - p as isize;
                                    let ix = (ox * s + kx * d) as isize - p as isize;
                                    if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                        continue;
                                    }
                                    let xi = ((b * ih + iy as usize) * iw + ix as usize) * c + ch;
                                    acc += (i32::from(x[xi]) - zx)
                                        * i32::from(w[(ky * k + kx) * c + ch]);
                                }
                            }
                            let want = requantize(acc, scale[ch], zy, range);
                            let got = y[((b * oh + oy) * ow + ox) * c + ch];
                            assert_eq!(got, want, "{n} {ih}x{iw}x{c} k{k} s{s} p{p} d{d} zx{zx}");
                        }
                    }
                }
            }
        }
    }
}
