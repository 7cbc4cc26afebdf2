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
    fn eval<S: Simd>(self, _s: S) {
        let g = self.g;
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
        ];
        for (n, ih, iw, c, k, s, p, d) in cases {
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
            let (zx, zy, range) = (3, -2, (-100, 120));
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
                            assert_eq!(got, want, "{n} {ih}x{iw}x{c} k{k} s{s} p{p} d{d}");
                        }
                    }
                }
            }
        }
    }
}
