//! Data-movement steps (transpose, reshape, slice, concatenate, pad) and max pooling,
//! for f32 and int8 values alike.

use crate::graph::{PoolAttrs, MAX_DIMS};
use crate::plan::{Shape, Step};
use crate::quant::{quantize_scalar, Kind};
use crate::step::{bstrides, for_each_index, Elem, Io};
use ptero_simd::{for_each_chunk_by, Parallel};

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
            Step::Transpose { perm, x, .. } => {
                let sx = io.shape(*x);
                let xs = T::read(io, *x)?;
                transpose(io.args.parallel(), xs, sx, perm, y);
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

/// A pooling node's geometry over NHWC images, and which taps of an output's window
/// fall inside the input.
pub(crate) struct PoolGeo {
    pub(crate) n: usize,
    pub(crate) ih: usize,
    pub(crate) iw: usize,
    pub(crate) c: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pad: [usize; 2],
    window: [usize; 2],
    stride: [usize; 2],
    pub(crate) dh: usize,
    pub(crate) dw: usize,
}

impl PoolGeo {
    pub(crate) fn new(a: &PoolAttrs, sx: Shape, so: Shape) -> PoolGeo {
        let u = |v: u32| v as usize;
        PoolGeo {
            n: sx.dims[0],
            ih: sx.dims[1],
            iw: sx.dims[2],
            c: sx.dims[3],
            oh: so.dims[1],
            ow: so.dims[2],
            pad: [u(a.padding[0]), u(a.padding[3])],
            window: [u(a.window[0]), u(a.window[1])],
            stride: [u(a.stride[0].max(1)), u(a.stride[1].max(1))],
            dh: u(a.dilation[0].max(1)),
            dw: u(a.dilation[1].max(1)),
        }
    }

    pub(crate) fn outputs(&self) -> usize {
        self.n * self.oh * self.ow * self.c
    }

    /// Output row `r` (over all images): the input pixel index of its windows' first
    /// valid row, column 0, and how many rows are valid.
    pub(crate) fn rows(&self, r: usize) -> (usize, usize) {
        let (b, oy) = (r / self.oh, r % self.oh);
        let (iy, rows) = tap_span(
            oy,
            self.stride[0],
            self.pad[0],
            self.dh,
            self.window[0],
            self.ih,
        );
        ((b * self.ih + iy) * self.iw, rows)
    }

    /// Output column `ox`: its window's first valid input column, and how many are valid.
    pub(crate) fn cols(&self, ox: usize) -> (usize, usize) {
        tap_span(
            ox,
            self.stride[1],
            self.pad[1],
            self.dw,
            self.window[1],
            self.iw,
        )
    }
}

/// The taps of one axis of a pooling window that fall inside the input: the input index
/// of the first, and how many (`d` apart). Output `o`, stride `s`, leading padding `p`,
/// dilation `d`, window `k`, input length `len`.
fn tap_span(o: usize, s: usize, p: usize, d: usize, k: usize, len: usize) -> (usize, usize) {
    // Saturating: window, stride, dilation and padding come from the file (u32 each).
    let start = o.saturating_mul(s);
    let tap = |t: usize| start.saturating_add(t.saturating_mul(d));
    // The first tap at or past the leading padding; then taps up to the far edge.
    let first = p.saturating_sub(start).div_ceil(d.max(1));
    let at = tap(first).saturating_sub(p);
    let cnt = (first..k)
        .take_while(|&t| tap(t) < p.saturating_add(len))
        .count();
    (at, cnt)
}

/// Max pooling of int8 NHWC images (padding never wins), clamped to `[lo, hi]`; output
/// rows over threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn maxpool_q8(
    par: &dyn Parallel,
    a: &PoolAttrs,
    x: &[i8],
    sx: Shape,
    so: Shape,
    y: &mut [i8],
    lo: i8,
    hi: i8,
) {
    let p = PoolGeo::new(a, sx, so);
    let (c, ow) = (p.c, p.ow);
    if c == 0 || ow == 0 {
        return;
    }
    let total = p.outputs().min(y.len());
    for_each_chunk_by(par, &mut y[..total], ow * c, &|r, part| {
        let row0 = r.start / (ow * c);
        for (k, orow) in part.chunks_exact_mut(ow * c).enumerate() {
            let (base, rows) = p.rows(row0 + k);
            for (ox, row) in orow.chunks_exact_mut(c).enumerate() {
                let (ix, cols) = p.cols(ox);
                row.fill(i8::MIN);
                for ty in 0..rows {
                    for tx in 0..cols {
                        let at = (base + ty * p.dh * p.iw + ix + tx * p.dw) * c;
                        for (r, &v) in row.iter_mut().zip(&x[at..at + c]) {
                            *r = (*r).max(v);
                        }
                    }
                }
                // max then min, not `clamp`: a file's bounds may cross (lo > hi).
                for r in row.iter_mut() {
                    *r = (*r).max(lo).min(hi);
                }
            }
        }
    });
}

/// `y = x.permute(perm)`, `x` of shape `sx`.
///
/// The permutation is first reduced to its essentials (dims of one element dropped,
/// input dims that stay adjacent and in order merged): attention's head split
/// `[T, H, D] -> [H, T, D]` is then a copy of `D`-long runs, and NCHW <-> NHWC a batch
/// of matrix transposes. Only what is left goes element by element.
pub(crate) fn transpose<T: Copy + Default + Send + Sync>(
    par: &dyn Parallel,
    x: &[T],
    sx: Shape,
    perm: &[usize; MAX_DIMS],
    y: &mut [T],
) {
    let (cs, cp) = collapse(sx, perm);
    let n = cs.numel().unwrap_or(0).min(x.len()).min(y.len());
    let y = &mut y[..n];
    if n == 0 {
        return;
    }
    if cs.rank <= 1 {
        y.copy_from_slice(&x[..n]);
        return;
    }
    let r = cs.rank;
    let full = bstrides(cs, cs);
    // Output dims and the input stride each walks.
    let mut od = [1usize; MAX_DIMS];
    let mut st = [0usize; MAX_DIMS];
    for i in 0..r {
        od[i] = cs.dims[cp[i]];
        st[i] = full[cp[i]];
    }
    // Input offset of the element at linear index `i` over the first `dims` output dims.
    let offset = |mut i: usize, dims: usize| {
        let mut o = 0;
        for k in (0..dims).rev() {
            o += (i % od[k]) * st[k];
            i /= od[k];
        }
        o
    };
    if cp[r - 1] == r - 1 {
        // Output rows are input runs: copy `run` at a time, chunks of whole runs.
        let run = od[r - 1];
        for_each_chunk_by(par, y, run, &|rg, part| {
            for (t, dst) in part.chunks_exact_mut(run).enumerate() {
                let o = offset(rg.start / run + t, r - 1);
                dst.copy_from_slice(&x[o..o + run]);
            }
        });
        return;
    }
    if let Some((outer, rows, cols)) = swap_of(cs, &cp) {
        let m = rows * cols;
        for (xs, ys) in x.chunks_exact(m).zip(y.chunks_exact_mut(m)).take(outer) {
            // Output row c (input column c) is `rows` long; chunks of 8 whole rows.
            for_each_chunk_by(par, ys, rows * 8, &|rg, part| {
                transpose_cols(xs, part, rows, cols, rg.start / rows..rg.end / rows);
            });
        }
        return;
    }
    let so = Shape { dims: od, rank: r };
    for_each_index(so, [st], |i, [o]| y[i] = x[o]);
}

/// [`transpose`]'s reduction: the input's shape and the permutation with dims of size
/// one removed and runs of input dims that the permutation keeps together merged.
fn collapse(sx: Shape, perm: &[usize; MAX_DIMS]) -> (Shape, [usize; MAX_DIMS]) {
    let r = sx.rank;
    // Output order of the input dims that hold more than one element.
    let mut order = [0usize; MAX_DIMS];
    let mut k = 0;
    for &d in &perm[..r] {
        if sx.dims[d] != 1 {
            order[k] = d;
            k += 1;
        }
    }
    // Groups: maximal runs of the output order whose input dims are consecutive.
    let mut group_first = [0usize; MAX_DIMS];
    let mut group_size = [1usize; MAX_DIMS];
    let mut g = 0;
    for i in 0..k {
        let d = order[i];
        let joins = i > 0 && {
            // The previous non-unit input dim before `d` is the one listed just before.
            let prev = (0..d).rev().find(|&e| sx.dims[e] != 1);
            prev == Some(order[i - 1])
        };
        if joins {
            group_size[g - 1] *= sx.dims[d];
        } else {
            group_first[g] = d;
            group_size[g] = sx.dims[d];
            g += 1;
        }
    }
    // Number the groups by their place in the input.
    let mut by_input: [usize; MAX_DIMS] = core::array::from_fn(|i| i);
    by_input[..g].sort_by_key(|&i| group_first[i]);
    let mut cs = Shape {
        dims: [1; MAX_DIMS],
        rank: g,
    };
    let mut cp = [0usize; MAX_DIMS];
    for (pos, &gi) in by_input[..g].iter().enumerate() {
        cs.dims[pos] = group_size[gi];
        // Output dim gi reads input dim pos.
        cp[gi] = pos;
    }
    (cs, cp)
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

/// Columns `cs` of the `rows x cols` matrix `x` as rows of `y` (`y[c - cs.start][r]`),
/// in 8 x 8 blocks.
fn transpose_cols<T: Copy + Default>(
    x: &[T],
    y: &mut [T],
    rows: usize,
    cols: usize,
    cs: core::ops::Range<usize>,
) {
    const B: usize = 8;
    for c0 in cs.clone().step_by(B) {
        let c1 = (c0 + B).min(cs.end);
        for r0 in (0..rows).step_by(B) {
            let r1 = (r0 + B).min(rows);
            if c1 - c0 == B && r1 - r0 == B {
                // A whole block through a fixed-size tile: eight rows read and eight
                // written as contiguous runs, which the compiler turns into vector moves.
                let mut t = [[T::default(); B]; B];
                for (i, row) in t.iter_mut().enumerate() {
                    row.copy_from_slice(&x[(r0 + i) * cols + c0..][..B]);
                }
                for j in 0..B {
                    let dst = &mut y[(c0 + j - cs.start) * rows + r0..][..B];
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = t[i][j];
                    }
                }
                continue;
            }
            for r in r0..r1 {
                for c in c0..c1 {
                    y[(c - cs.start) * rows + r] = x[r * cols + c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pooling windows of hostile geometry (every field at u32::MAX) count no taps and
    /// overflow nothing.
    #[test]
    fn tap_spans_saturate() {
        let big = u32::MAX as usize;
        assert_eq!(tap_span(3, big, big, big, big, 10).1, 0);
        assert_eq!(tap_span(usize::MAX, big, 0, big, 3, 10).1, 0);
        // The ordinary case: output 0 of a 3-tap window, padding 1, over 5 inputs.
        assert_eq!(tap_span(0, 1, 1, 1, 3, 5), (0, 2));
        assert_eq!(tap_span(2, 2, 1, 1, 3, 5), (3, 2));
    }

    /// Every permutation of a few shapes (with dims of one element, and empty ones)
    /// against the definition.
    #[test]
    fn transpose_matches_the_definition() {
        fn perms(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![vec![]];
            }
            let mut out = Vec::new();
            for p in perms(n - 1) {
                for at in 0..=p.len() {
                    let mut q = p.clone();
                    q.insert(at, n - 1);
                    out.push(q);
                }
            }
            out
        }
        let shapes: &[&[usize]] = &[
            &[5],
            &[3, 4],
            &[1, 3, 4],
            &[2, 3, 4],
            &[197, 12, 8],
            &[2, 1, 3, 4],
            &[2, 3, 1, 4, 5],
            &[2, 11, 19],
            &[3, 0, 2],
            &[1, 1, 1],
            // Past the size the helpers split over threads, with uneven 8-row chunks.
            &[3, 211, 61],
        ];
        let pool = ptero_simd::pool::ThreadPool::new(2);
        for &d in shapes {
            let sx = Shape::of(d).unwrap();
            let n: usize = d.iter().product();
            let x: Vec<u32> = (0..n as u32).collect();
            let strides = crate::step::bstrides(sx, sx);
            for p in perms(d.len()) {
                let mut pm = [0; MAX_DIMS];
                pm[..p.len()].copy_from_slice(&p);
                let mut y = vec![u32::MAX; n];
                transpose(&ptero_simd::Serial, &x, sx, &pm, &mut y);
                let mut y2 = vec![u32::MAX; n];
                transpose(&pool, &x, sx, &pm, &mut y2);
                assert_eq!(y, y2, "shape {d:?} perm {p:?}: threads");
                // Output multi-index -> input offset.
                let od: Vec<usize> = p.iter().map(|&i| d[i]).collect();
                for (i, &v) in y.iter().enumerate() {
                    let (mut rem, mut off) = (i, 0);
                    for k in (0..od.len()).rev() {
                        off += (rem % od[k]) * strides[p[k]];
                        rem /= od[k];
                    }
                    assert_eq!(v, x[off], "shape {d:?} perm {p:?} element {i}");
                }
            }
        }
    }
}
