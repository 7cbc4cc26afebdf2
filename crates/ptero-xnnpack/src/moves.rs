//! Data-movement steps (transpose, reshape, slice, concatenate, pad) and max pooling,
//! for f32 and int8 values alike.

use crate::graph::{PoolAttrs, MAX_DIMS};
use crate::plan::{Shape, Step};
use crate::quant::{quantize_scalar, Kind};
use crate::step::{bstrides, for_each_index, Elem, Io};

impl Step {
    /// The data-movement steps, for any element type (`pad`: the padding value).
    pub(crate) fn run_move<T: Elem>(
        &self,
        io: &Io<'_, '_>,
        y: &mut [T],
        pad: T,
    ) -> ptero_core::Result<()> {
        match self {
            Step::Pad { pre, x, out, .. } => {
                let (sx, so) = (io.shape(*x), io.shape(*out));
                let xs = T::read(io, *x)?;
                y.fill(pad);
                // Input element -> output offset: the output's strides, shifted by `pre`.
                let ost = bstrides(so, so);
                let base = (0..so.rank).fold(0usize, |a, i| a + pre[i] * ost[i]);
                let mut st = [0usize; MAX_DIMS];
                st[..sx.rank].copy_from_slice(&ost[..sx.rank]);
                for (sti, &d) in st.iter_mut().zip(&sx.dims[..sx.rank]) {
                    if d == 1 {
                        *sti = 0;
                    }
                }
                for_each_index(sx, [st], |i, [o]| y[base + o] = xs[i]);
                Ok(())
            }
            Step::Transpose { perm, x, out, .. } => {
                let (sx, so) = (io.shape(*x), io.shape(*out));
                let xs = T::read(io, *x)?;
                if let Some((outer, rows, cols)) = swap_of(sx, perm) {
                    transpose_blocks(xs, y, outer, rows, cols);
                    return Ok(());
                }
                // Output dim i walks input dim perm[i].
                let full = bstrides(sx, sx);
                let mut st = [0usize; MAX_DIMS];
                for i in 0..so.rank {
                    st[i] = if sx.dims[perm[i]] == 1 {
                        0
                    } else {
                        full[perm[i]]
                    };
                }
                for_each_index(so, [st], |i, [o]| y[i] = xs[o]);
                Ok(())
            }
            Step::Reshape { x, .. } => {
                y.copy_from_slice(T::read(io, *x)?);
                Ok(())
            }
            Step::Slice {
                offsets, x, out, ..
            } => {
                let (sx, so) = (io.shape(*x), io.shape(*out));
                let xs = T::read(io, *x)?;
                let full = bstrides(sx, sx);
                let base = (0..sx.rank).fold(0usize, |a, i| {
                    a.saturating_add(offsets[i].saturating_mul(full[i]))
                });
                let xs = &xs[base.min(xs.len())..];
                let mut st = full;
                for (sti, &d) in st.iter_mut().zip(&so.dims[..so.rank]) {
                    if d == 1 {
                        *sti = 0;
                    }
                }
                for_each_index(so, [st], |i, [o]| y[i] = xs[o]);
                Ok(())
            }
            Step::Concat {
                axis,
                inputs,
                count,
                out,
            } => {
                let so = io.shape(*out);
                let outer: usize = so.d()[..*axis].iter().product();
                let inner: usize = so.d()[*axis + 1..].iter().product();
                let row = so.dims[*axis] * inner;
                let mut at = 0;
                for &v in &inputs[..*count] {
                    let xs = T::read(io, v)?;
                    let w = io.shape(v).dims[*axis] * inner;
                    for o in 0..outer {
                        y[o * row + at..o * row + at + w].copy_from_slice(&xs[o * w..(o + 1) * w]);
                    }
                    at += w;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// An int8 output clamp's integer bounds.
pub(crate) fn q8_range(io: &Io<'_, '_>, out: usize, clamp: Option<(f32, f32)>) -> (i8, i8) {
    match (io.kinds[out], clamp) {
        (Kind::Q8 { scale, zp }, Some((lo, hi))) => (
            quantize_scalar(lo, scale, zp) as i8,
            quantize_scalar(hi, scale, zp) as i8,
        ),
        _ => (i8::MIN, i8::MAX),
    }
}

/// Max pooling of int8 NHWC images (padding never wins), clamped to `[lo, hi]`.
pub(crate) fn maxpool_q8(
    a: &PoolAttrs,
    x: &[i8],
    sx: Shape,
    so: Shape,
    y: &mut [i8],
    lo: i8,
    hi: i8,
) {
    let (n, ih, iw, c) = (sx.dims[0], sx.dims[1], sx.dims[2], sx.dims[3]);
    let (oh, ow) = (so.dims[1], so.dims[2]);
    let (pt, pl) = (a.padding[0] as isize, a.padding[3] as isize);
    let (kh, kw) = (a.window[0] as isize, a.window[1] as isize);
    let (sh, sw) = (a.stride[0].max(1) as isize, a.stride[1].max(1) as isize);
    let (dh, dw) = (a.dilation[0].max(1) as isize, a.dilation[1].max(1) as isize);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = ((b * oh + oy) * ow + ox) * c;
                let row = &mut y[o..o + c];
                row.fill(i8::MIN);
                for ky in 0..kh {
                    let iy = oy as isize * sh - pt + ky * dh;
                    if iy < 0 || iy >= ih as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = ox as isize * sw - pl + kx * dw;
                        if ix < 0 || ix >= iw as isize {
                            continue;
                        }
                        let at = ((b * ih + iy as usize) * iw + ix as usize) * c;
                        for (r, &v) in row.iter_mut().zip(&x[at..at + c]) {
                            *r = (*r).max(v);
                        }
                    }
                }
                for r in row.iter_mut() {
                    *r = (*r).clamp(lo, hi);
                }
            }
        }
    }
}

/// When `perm` moves one run of adjacent input dims behind the run after it (NCHW <->
/// NHWC: `[N, C, H·W] -> [N, H·W, C]`), the transpose is `outer` matrices of
/// `rows x cols` turned round: `(outer, rows, cols)`.
pub(crate) fn swap_of(s: Shape, perm: &[usize; MAX_DIMS]) -> Option<(usize, usize, usize)> {
    let r = s.rank;
    let p = &perm[..r];
    // Leading dims kept in place.
    let lead = p.iter().enumerate().take_while(|&(i, &d)| i == d).count();
    if lead == r {
        return None;
    }
    // The rest must be [k..r) followed by [lead..k) for some k.
    let k = p[lead];
    let second = (lead..r).map(|i| p[i]).eq((k..r).chain(lead..k));
    if !second || k <= lead {
        return None;
    }
    let prod = |a: usize, b: usize| s.dims[a..b].iter().product::<usize>();
    Some((prod(0, lead), prod(lead, k), prod(k, r)))
}

/// `y[o][c][r] = x[o][r][c]` for `outer` matrices, in 8 x 8 blocks so both sides stream.
pub(crate) fn transpose_blocks<T: Copy>(
    x: &[T],
    y: &mut [T],
    outer: usize,
    rows: usize,
    cols: usize,
) {
    const B: usize = 8;
    let m = rows * cols;
    for o in 0..outer {
        let (xs, ys) = (&x[o * m..(o + 1) * m], &mut y[o * m..(o + 1) * m]);
        for r0 in (0..rows).step_by(B) {
            let r1 = (r0 + B).min(rows);
            for c0 in (0..cols).step_by(B) {
                let c1 = (c0 + B).min(cols);
                for r in r0..r1 {
                    for c in c0..c1 {
                        ys[c * rows + r] = xs[r * cols + c];
                    }
                }
            }
        }
    }
}
