//! What each step computes, and the shape it produces from its inputs' shapes.

use alloc::format;
use alloc::vec::Vec;

use ptero_core::KernelArgs;
use ptero_gemm::{
    conv2d, gemm, Bias, Conv2d, ConvWeights, Epilogue, Image, ImageMut, Lhs, MatMut, MatRef, Rhs,
};
use ptero_simd::ops::{self, Binary, Unary};

use crate::graph::{PoolAttrs, MAX_DIMS};
use crate::moves::{maxpool_q8, q8_range, PoolGeo};
use crate::plan::{ConvStep, ScalarFn, Shape, Slot, Step};
use crate::quant::{i8s_mut, quantize_scalar, Kind};

/// Read access to values while a step runs.
pub(crate) struct Io<'x, 'a> {
    pub(crate) args: &'x KernelArgs<'a>,
    pub(crate) slots: &'x [Slot],
    pub(crate) buffers: &'x [Vec<f32>],
    pub(crate) consts: &'x [Vec<f32>],
    pub(crate) shapes: &'x [Shape],
    pub(crate) kinds: &'x [Kind],
    pub(crate) bounds: &'x [usize],
}

impl<'x> Io<'x, '_> {
    pub(crate) fn read(&self, v: usize) -> ptero_core::Result<&'x [f32]> {
        let n = self.shapes[v].numel().unwrap_or(0);
        let data: &'x [f32] = match self.slots[v] {
            Slot::Arg(a) => self.args.tensor(a)?.data::<f32>()?,
            Slot::Buf(b) => &self.buffers[b],
            Slot::Const(c) => &self.consts[c],
            Slot::Unused => &[],
        };
        data.get(..n).ok_or_else(|| {
            ptero_core::Error::OutOfBounds(format!(
                "XNNPACK value {v}: {} elements held, {n} needed",
                data.len()
            ))
        })
    }
    pub(crate) fn shape(&self, v: usize) -> Shape {
        self.shapes[v]
    }
    pub(crate) fn bound(&self, v: usize) -> usize {
        self.bounds[v]
    }
    pub(crate) fn is_q8(&self, v: usize) -> bool {
        matches!(self.kinds[v], Kind::Q8 { .. })
    }
    /// The storage of a value, whatever it holds.
    fn storage(&self, v: usize) -> &'x [f32] {
        match self.slots[v] {
            Slot::Buf(b) => &self.buffers[b],
            Slot::Const(c) => &self.consts[c],
            Slot::Arg(_) | Slot::Unused => &[],
        }
    }
    /// The elements of an int8 value.
    pub(crate) fn read_i8(&self, v: usize) -> ptero_core::Result<&'x [i8]> {
        let n = self.shapes[v].numel().unwrap_or(0);
        let b: &'x [i8] = bytemuck::cast_slice(self.storage(v));
        b.get(..n).ok_or_else(|| {
            ptero_core::Error::OutOfBounds(format!(
                "XNNPACK int8 value {v}: {} bytes held, {n} needed",
                b.len()
            ))
        })
    }
    /// The elements of a dynamically quantized value and its rows' `(scale, zero point)`.
    pub(crate) fn read_qd8(&self, v: usize) -> ptero_core::Result<(&'x [i8], &'x [f32])> {
        let n = self.shapes[v].numel().unwrap_or(0);
        let st = self.storage(v);
        let at = self.bounds[v].div_ceil(4).min(st.len());
        let (d, p) = st.split_at(at);
        let d: &'x [i8] = bytemuck::cast_slice(d);
        let d = d.get(..n).ok_or_else(|| {
            ptero_core::Error::OutOfBounds(format!("XNNPACK qdint8 value {v}: too small"))
        })?;
        Ok((d, p))
    }
}

/// Element types the data-movement steps copy.
pub(crate) trait Elem: Copy + PartialOrd + bytemuck::Pod + Default + Send + Sync {
    fn read<'x>(io: &Io<'x, '_>, v: usize) -> ptero_core::Result<&'x [Self]>;
}

impl Elem for f32 {
    fn read<'x>(io: &Io<'x, '_>, v: usize) -> ptero_core::Result<&'x [f32]> {
        io.read(v)
    }
}

impl Elem for i8 {
    fn read<'x>(io: &Io<'x, '_>, v: usize) -> ptero_core::Result<&'x [i8]> {
        io.read_i8(v)
    }
}

pub(crate) fn shape_err(
    step: (usize, &'static str),
    what: alloc::string::String,
) -> ptero_core::Error {
    ptero_core::Error::Shape(format!("XNNPACK node {} ({}): {what}", step.0, step.1))
}

/// Numpy broadcasting of two shapes (aligned at the trailing dims).
pub(crate) fn broadcast(a: Shape, b: Shape) -> Option<Shape> {
    let rank = a.rank.max(b.rank);
    let mut s = Shape {
        dims: [0; MAX_DIMS],
        rank,
    };
    for i in 0..rank {
        let da = if i < rank - a.rank {
            1
        } else {
            a.dims[i - (rank - a.rank)]
        };
        let db = if i < rank - b.rank {
            1
        } else {
            b.dims[i - (rank - b.rank)]
        };
        s.dims[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(s)
}

/// Strides of `s` read as a `rank`-d operand broadcast against `out` (0 where it repeats).
pub(crate) fn bstrides(s: Shape, out: Shape) -> [usize; MAX_DIMS] {
    let mut st = [0usize; MAX_DIMS];
    let off = out.rank - s.rank;
    let mut acc = 1usize;
    for i in (0..s.rank).rev() {
        st[i + off] = if s.dims[i] == 1 { 0 } else { acc };
        acc = acc.saturating_mul(s.dims[i]);
    }
    st
}

/// Calls `f(out_index, offsets)` for every element of `out` in order, with each operand's
/// element offset.
pub(crate) fn for_each_index<const K: usize>(
    out: Shape,
    strides: [[usize; MAX_DIMS]; K],
    mut f: impl FnMut(usize, [usize; K]),
) {
    let n = out.numel().unwrap_or(0);
    if n == 0 {
        return;
    }
    let mut idx = [0usize; MAX_DIMS];
    let mut off = [0usize; K];
    for i in 0..n {
        f(i, off);
        // Increment the multi-index, innermost first.
        let mut d = out.rank;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            for k in 0..K {
                off[k] += strides[k][d];
            }
            if idx[d] < out.dims[d] {
                break;
            }
            for k in 0..K {
                off[k] -= strides[k][d] * idx[d];
            }
            idx[d] = 0;
        }
    }
}

pub(crate) fn apply_clamp(y: &mut [f32], clamp: Option<(f32, f32)>) {
    if let Some((lo, hi)) = clamp {
        ops::unary_inplace(Unary::Clamp(lo, hi), y);
    }
}

pub(crate) fn binary_scalar(f: Binary, a: f32, b: f32) -> f32 {
    match f {
        Binary::Add => a + b,
        Binary::Sub => a - b,
        Binary::Mul => a * b,
        Binary::Div => a / b,
        Binary::Minimum => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        }
        Binary::Maximum => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        }
    }
}

impl Step {
    /// The value the step writes.
    pub(crate) fn out(&self) -> usize {
        match self {
            Step::Q(q) => q.out(),
            Step::X(x) => x.out(),
            Step::Conv(c) => c.out,
            Step::PwDw { dw, .. } => dw.out,
            Step::FullyConnected { out, .. }
            | Step::Binary { out, .. }
            | Step::Unary { out, .. }
            | Step::Softmax { out, .. }
            | Step::GlobalAvgPool { out, .. }
            | Step::Pool { out, .. }
            | Step::Transpose { out, .. }
            | Step::Reshape { out, .. }
            | Step::Slice { out, .. }
            | Step::BatchMatMul { out, .. }
            | Step::Concat { out, .. }
            | Step::Scalar { out, .. }
            | Step::PRelu { out, .. }
            | Step::Pad { out, .. } => *out,
        }
    }

    /// What the step reads while running: `f(value, false)` for operand values,
    /// `f(constant, true)` for biases (packed weights are the step's own).
    pub(crate) fn reads(&self, mut f: impl FnMut(usize, bool)) {
        match self {
            Step::Q(q) => q.reads(&mut f),
            Step::X(x) => x.reads(&mut f),
            Step::Conv(c) => {
                f(c.x, false);
                if let Some(b) = c.bias {
                    f(b, true);
                }
            }
            Step::PwDw { pw, dw } => {
                f(pw.x, false);
                for b in [pw.bias, dw.bias].into_iter().flatten() {
                    f(b, true);
                }
            }
            Step::FullyConnected { x, bias, .. } => {
                f(*x, false);
                if let Some(b) = bias {
                    f(*b, true);
                }
            }
            Step::Binary { a, b, .. } | Step::BatchMatMul { a, b, .. } => {
                f(*a, false);
                f(*b, false);
            }
            Step::PRelu { x, slope, .. } => {
                f(*x, false);
                f(*slope, false);
            }
            Step::Scalar { x, .. } | Step::Pad { x, .. } => f(*x, false),
            Step::Unary { x, .. }
            | Step::Softmax { x, .. }
            | Step::GlobalAvgPool { x, .. }
            | Step::Pool { x, .. }
            | Step::Transpose { x, .. }
            | Step::Reshape { x, .. }
            | Step::Slice { x, .. } => f(*x, false),
            Step::Concat { inputs, count, .. } => {
                for &v in &inputs[..*count] {
                    f(v, false);
                }
            }
        }
    }

    /// The output's shape from the inputs' shapes.
    pub(crate) fn infer(
        &self,
        io: &Io<'_, '_>,
        at: (usize, &'static str),
    ) -> ptero_core::Result<Shape> {
        let err = |w: alloc::string::String| shape_err(at, w);
        Ok(match self {
            Step::Q(q) => q.infer(io).map_err(err)?,
            Step::X(x) => x.infer(io).map_err(err)?,
            Step::FullyConnected { x, k, n, .. } => {
                let s = io.shape(*x);
                let kk = s.d().last().copied().unwrap_or(1);
                if kk != *k {
                    return Err(err(format!(
                        "input {:?} has {kk} features, the filter {k}",
                        s.d()
                    )));
                }
                let mut o = s;
                if o.rank == 0 {
                    o.rank = 1;
                }
                o.dims[o.rank - 1] = *n;
                o
            }
            Step::Conv(c) => conv_shape(io.shape(c.x), &c.geo).map_err(err)?,
            Step::PwDw { pw, dw } => {
                let mid = conv_shape(io.shape(pw.x), &pw.geo).map_err(err)?;
                conv_shape(mid, &dw.geo).map_err(err)?
            }
            Step::Binary { a, b, .. } => {
                broadcast(io.shape(*a), io.shape(*b)).ok_or_else(|| {
                    err(format!(
                        "{:?} and {:?} do not broadcast",
                        io.shape(*a).d(),
                        io.shape(*b).d()
                    ))
                })?
            }
            Step::Unary { x, .. } | Step::Softmax { x, .. } | Step::Scalar { x, .. } => {
                io.shape(*x)
            }
            Step::PRelu { x, slope, .. } => {
                let (sx, ss) = (io.shape(*x), io.shape(*slope));
                if broadcast(sx, ss) != Some(sx) {
                    return Err(err(format!("slope {:?} against {:?}", ss.d(), sx.d())));
                }
                sx
            }
            Step::Pad {
                rank, pre, post, x, ..
            } => {
                let s = io.shape(*x);
                if s.rank != *rank {
                    return Err(err(format!("{rank} paddings for input {:?}", s.d())));
                }
                let mut o = s;
                for i in 0..s.rank {
                    o.dims[i] = s.dims[i]
                        .checked_add(pre[i])
                        .and_then(|d| d.checked_add(post[i]))
                        .ok_or_else(|| err(format!("padding {:?} overflows", s.d())))?;
                }
                o
            }
            Step::GlobalAvgPool { x, .. } => {
                let s = io.shape(*x);
                if s.rank != 4 {
                    return Err(err(format!("input {:?} is not NHWC", s.d())));
                }
                Shape::of(&[s.dims[0], 1, 1, s.dims[3]]).unwrap_or_default()
            }
            Step::Pool { attrs, x, .. } => {
                let s = io.shape(*x);
                if s.rank != 4 {
                    return Err(err(format!("input {:?} is not NHWC", s.d())));
                }
                let o = |i: usize, p0: u32, p1: u32, k: u32, st: u32, d: u32| -> Option<usize> {
                    let span = (d.max(1) as usize).checked_mul((k as usize).checked_sub(1)?)? + 1;
                    let full = i.checked_add(p0 as usize + p1 as usize)?;
                    Some(full.checked_sub(span)? / (st.max(1) as usize) + 1)
                };
                let p = attrs.padding;
                let oh = o(
                    s.dims[1],
                    p[0],
                    p[2],
                    attrs.window[0],
                    attrs.stride[0],
                    attrs.dilation[0],
                );
                let ow = o(
                    s.dims[2],
                    p[3],
                    p[1],
                    attrs.window[1],
                    attrs.stride[1],
                    attrs.dilation[1],
                );
                match (oh, ow) {
                    (Some(oh), Some(ow)) => {
                        Shape::of(&[s.dims[0], oh, ow, s.dims[3]]).unwrap_or_default()
                    }
                    _ => return Err(err(format!("input {:?} smaller than the window", s.d()))),
                }
            }
            Step::Transpose { rank, perm, x, .. } => {
                let s = io.shape(*x);
                if s.rank != *rank {
                    return Err(err(format!("perm of {rank} dims for input {:?}", s.d())));
                }
                let mut o = s;
                for (i, &p) in perm[..s.rank].iter().enumerate() {
                    if p >= s.rank {
                        return Err(err(format!("perm for {} dims, input {:?}", s.rank, s.d())));
                    }
                    o.dims[i] = s.dims[p];
                }
                o
            }
            Step::Reshape { new_shape, x, .. } => {
                let n = io.shape(*x).numel().unwrap_or(0);
                let mut o = *new_shape;
                let known = o
                    .d()
                    .iter()
                    .filter(|&&d| d != 0)
                    .fold(1usize, |a, &d| a.saturating_mul(d));
                let zeros = o.d().iter().filter(|&&d| d == 0).count();
                if zeros == 1 && known > 0 {
                    for d in o.dims[..o.rank].iter_mut() {
                        if *d == 0 {
                            *d = n / known;
                        }
                    }
                }
                if o.numel() != Some(n) {
                    return Err(err(format!(
                        "{n} elements of {:?} cannot take shape {:?}",
                        io.shape(*x).d(),
                        new_shape.d()
                    )));
                }
                o
            }
            Step::Slice {
                offsets, sizes, x, ..
            } => {
                let s = io.shape(*x);
                let mut o = s;
                for i in 0..s.rank {
                    let end = offsets[i].saturating_add(sizes[i]).min(s.dims[i]);
                    o.dims[i] = end.saturating_sub(offsets[i]);
                }
                o
            }
            Step::Concat {
                axis,
                inputs,
                count,
                ..
            } => {
                let first = io.shape(inputs[0]);
                if *axis >= first.rank {
                    return Err(err(format!("axis {axis} of {:?}", first.d())));
                }
                let mut o = first;
                o.dims[*axis] = 0;
                for &v in &inputs[..*count] {
                    let s = io.shape(v);
                    let same = s.rank == first.rank
                        && (0..s.rank).all(|i| i == *axis || s.dims[i] == first.dims[i]);
                    if !same {
                        return Err(err(format!(
                            "{:?} and {:?} along axis {axis}",
                            first.d(),
                            s.d()
                        )));
                    }
                    o.dims[*axis] += s.dims[*axis];
                }
                o
            }
            Step::BatchMatMul { a, b, .. } => {
                let (sa, sb) = (io.shape(*a), io.shape(*b));
                if sa.rank < 2 || sb.rank < 2 || sa.dims[sa.rank - 1] != sb.dims[sb.rank - 2] {
                    return Err(err(format!("{:?} x {:?}", sa.d(), sb.d())));
                }
                let ba = Shape::of(&sa.d()[..sa.rank - 2]).unwrap_or_default();
                let bb = Shape::of(&sb.d()[..sb.rank - 2]).unwrap_or_default();
                let mut o = broadcast(ba, bb)
                    .ok_or_else(|| err(format!("batches of {:?} x {:?}", sa.d(), sb.d())))?;
                o.dims[o.rank] = sa.dims[sa.rank - 2];
                o.dims[o.rank + 1] = sb.dims[sb.rank - 1];
                o.rank += 2;
                o
            }
        })
    }

    /// Computes the step into `y` (exactly the output's elements).
    pub(crate) fn run(
        &self,
        io: &Io<'_, '_>,
        y: &mut [f32],
        mid: Option<&mut [f32]>,
        at: (usize, &'static str),
    ) -> ptero_core::Result<()> {
        let gemm_err = |e: ptero_gemm::GemmError| {
            ptero_core::Error::InvalidArgument(format!("XNNPACK node {} ({}): {e}", at.0, at.1))
        };
        let par = io.args.parallel();
        let arena = io.args.arena();
        match self {
            Step::Q(q) => q.run(io, y),
            Step::X(x) => x.run(io, y),
            Step::FullyConnected {
                x,
                k,
                n,
                w,
                bias,
                act,
                ..
            } => {
                let xs = io.read(*x)?;
                let m = if *k == 0 { 0 } else { xs.len() / k };
                let bias = bias.map(|b| &io.consts[b][..*n]);
                let epi = Epilogue {
                    alpha: 1.0,
                    beta: if bias.is_some() { 1.0 } else { 0.0 },
                    bias: bias.map_or(Bias::None, Bias::PerCol),
                    act: *act,
                };
                let a = MatRef::new(xs, m, *k, *k, 1).map_err(gemm_err)?;
                let c = MatMut::new(y, m, *n, *n, 1).map_err(gemm_err)?;
                gemm(par, arena, Lhs::Mat(a), Rhs::Packed(w.view()), c, &epi).map_err(gemm_err)
            }
            Step::Conv(c) => {
                let (sx, so) = (io.shape(c.x), io.shape(c.out));
                conv(io, c, io.read(c.x)?, sx, y, so).map_err(gemm_err)
            }
            Step::PwDw { pw, dw } => {
                let (sx, so) = (io.shape(pw.x), io.shape(dw.out));
                let sm = conv_shape(sx, &pw.geo).map_err(|w| shape_err(at, w))?;
                let x = io.read(pw.x)?;
                let g1 = conv_geo(&pw.geo, sx, sm);
                let g2 = conv_geo(&dw.geo, sm, so);
                let fused = ptero_gemm::pointwise_depthwise(
                    par,
                    arena,
                    &g1,
                    ptero_gemm::PointwiseStage {
                        w: &pw.w,
                        bias: pw.bias.map(|b| &io.consts[b][..]),
                        act: pw.act,
                    },
                    ptero_gemm::DepthwiseStage {
                        geo: g2,
                        // Channels-last pairs read the packed filter only (the f32 copy
                        // is released at load).
                        w: Image {
                            data: &[],
                            strides: dw.fstrides,
                        },
                        packed: Some(&dw.w),
                        bias: dw.bias.map(|b| &io.consts[b][..]),
                        act: dw.act,
                    },
                    Image {
                        data: x,
                        strides: nhwc(g1.ih, g1.iw, g1.cin),
                    },
                    ImageMut {
                        data: y,
                        strides: nhwc(g2.oh, g2.ow, g2.cout),
                    },
                )
                .map_err(gemm_err)?;
                if fused {
                    return Ok(());
                }
                // The pair does not fit the banded path: through the intermediate.
                let n = sm.numel().unwrap_or(usize::MAX);
                let mid = mid.and_then(|m| m.get_mut(..n)).ok_or_else(|| {
                    shape_err(at, format!("intermediate {:?} has no room", sm.d()))
                })?;
                conv(io, pw, x, sx, mid, sm).map_err(gemm_err)?;
                conv(io, dw, mid, sm, y, so).map_err(gemm_err)
            }
            Step::Binary {
                op,
                a,
                b,
                out,
                clamp,
            } => {
                let (sa, sb, so) = (io.shape(*a), io.shape(*b), io.shape(*out));
                let (xa, xb) = (io.read(*a)?, io.read(*b)?);
                if sa == so && sb == so {
                    // Chunks over the threads, each clamped while it is in cache.
                    let f = *op;
                    let cl = *clamp;
                    ptero_simd::for_each_chunk(par, y, &|r, o| {
                        ops::binary(
                            f,
                            ops::Lhs::Slice(&xa[r.clone()]),
                            ops::Rhs::Slice(&xb[r]),
                            1.0,
                            o,
                        );
                        apply_clamp(o, cl);
                    });
                    return Ok(());
                } else if sa == so && xb.len() == 1 {
                    ops::binary(*op, ops::Lhs::Slice(xa), ops::Rhs::Scalar(xb[0]), 1.0, y);
                } else if sb == so && xa.len() == 1 {
                    ops::binary(*op, ops::Lhs::Scalar(xa[0]), ops::Rhs::Slice(xb), 1.0, y);
                } else if let Some(((rows, c, per_batch), big, row, left)) =
                    channel_rows(so, sb, sa)
                        .map(|g| (g, xa, xb, false))
                        .or_else(|| channel_rows(so, sa, sb).map(|g| (g, xb, xa, true)))
                {
                    // A per-channel operand (squeeze-excitation scale, bias): row by row.
                    for_rows(rows, c, per_batch, so, big, row, y, |x, r, yy| {
                        ops::binary_rows(*op, x, r, left, yy)
                    });
                } else {
                    let st = [bstrides(sa, so), bstrides(sb, so)];
                    for_each_index(so, st, |i, [oa, ob]| {
                        y[i] = binary_scalar(*op, xa[oa], xb[ob]);
                    });
                }
                apply_clamp(y, *clamp);
                Ok(())
            }
            Step::Unary { op, x, clamp, .. } => {
                let (f, cl, xs) = (*op, *clamp, io.read(*x)?);
                ptero_simd::for_each_chunk(par, y, &|r, o| {
                    ops::unary(f, &xs[r], o);
                    apply_clamp(o, cl);
                });
                Ok(())
            }
            Step::Scalar { f, x, clamp, .. } => {
                let xs = io.read(*x)?;
                for (o, &v) in y.iter_mut().zip(xs) {
                    *o = match f {
                        ScalarFn::Floor => libm::floorf(v),
                        ScalarFn::Ceil => libm::ceilf(v),
                        ScalarFn::Sin => libm::sinf(v),
                        ScalarFn::Cos => libm::cosf(v),
                        ScalarFn::Square => v * v,
                    };
                }
                apply_clamp(y, *clamp);
                Ok(())
            }
            Step::PRelu { x, slope, out } => {
                let (sx, ss, so) = (io.shape(*x), io.shape(*slope), io.shape(*out));
                let (xs, sl) = (io.read(*x)?, io.read(*slope)?);
                let st = [bstrides(sx, so), bstrides(ss, so)];
                for_each_index(so, st, |i, [ox, os]| {
                    let v = xs[ox];
                    y[i] = if v >= 0.0 { v } else { v * sl[os] };
                });
                Ok(())
            }
            Step::Softmax { x, .. } => {
                let s = io.shape(*x);
                let c = s.d().last().copied().unwrap_or(1).max(1);
                let xs = io.read(*x)?;
                let rows = (xs.len() / c).min(y.len() / c);
                ptero_simd::for_each_chunk_by(par, &mut y[..rows * c], c, &|r, part| {
                    for (xr, yr) in xs[r].chunks_exact(c).zip(part.chunks_exact_mut(c)) {
                        ops::softmax(xr, yr);
                    }
                });
                Ok(())
            }
            Step::GlobalAvgPool { x, clamp, .. } => {
                let s = io.shape(*x);
                let (n, hw, c) = (s.dims[0], s.dims[1] * s.dims[2], s.dims[3]);
                let xs = io.read(*x)?;
                let inv = if hw == 0 { f32::NAN } else { 1.0 / hw as f32 };
                for b in 0..n {
                    let img = &xs[b * hw * c..(b + 1) * hw * c];
                    // Channel ranges over threads, each summing every pixel's part.
                    let acc = &mut y[b * c..(b + 1) * c];
                    ptero_simd::for_each_chunk_work(par, acc, 16, hw * c, &|r, part| {
                        part.fill(0.0);
                        if !part.is_empty() && hw > 0 {
                            ops::add_rows_strided(&img[r.start..], c, part);
                        }
                        ops::unary_inplace(Unary::Affine(inv, 0.0), part);
                    });
                }
                apply_clamp(y, *clamp);
                Ok(())
            }
            Step::Pool {
                max,
                attrs,
                x,
                out,
                clamp,
            } => {
                let (sx, so) = (io.shape(*x), io.shape(*out));
                if io.is_q8(*out) {
                    let (lo, hi) = q8_range(io, *out, *clamp);
                    let ys = i8s_mut(y, so.numel().unwrap_or(0))?;
                    maxpool_q8(par, attrs, io.read_i8(*x)?, sx, so, ys, lo, hi);
                    return Ok(());
                }
                pool_nhwc(par, *max, attrs, io.read(*x)?, sx, so, y);
                apply_clamp(y, *clamp);
                Ok(())
            }
            Step::Transpose { out, .. }
            | Step::Reshape { out, .. }
            | Step::Slice { out, .. }
            | Step::Concat { out, .. } => {
                if io.is_q8(*out) {
                    let ys = i8s_mut(y, io.shape(*out).numel().unwrap_or(0))?;
                    return self.run_move::<i8>(io, ys, 0);
                }
                self.run_move::<f32>(io, y, 0.0)
            }
            Step::Pad { value, out, .. } => {
                if let Kind::Q8 { scale, zp } = io.kinds[*out] {
                    let ys = i8s_mut(y, io.shape(*out).numel().unwrap_or(0))?;
                    return self.run_move::<i8>(io, ys, quantize_scalar(*value, scale, zp) as i8);
                }
                self.run_move::<f32>(io, y, *value)
            }
            Step::BatchMatMul { a, b, out } => {
                let (sa, sb, so) = (io.shape(*a), io.shape(*b), io.shape(*out));
                let (xa, xb) = (io.read(*a)?, io.read(*b)?);
                let (m, k, n) = (
                    sa.dims[sa.rank - 2],
                    sa.dims[sa.rank - 1],
                    sb.dims[sb.rank - 1],
                );
                let batch = Shape::of(&so.d()[..so.rank - 2]).unwrap_or_default();
                let ba = Shape::of(&sa.d()[..sa.rank - 2]).unwrap_or_default();
                let bb = Shape::of(&sb.d()[..sb.rank - 2]).unwrap_or_default();
                let st = [bstrides(ba, batch), bstrides(bb, batch)];
                let count = batch.numel().unwrap_or(0);
                if batch.rank > 0 && count >= 2 * par.threads() && par.threads() > 1 && m * n > 0 {
                    // Many small products (attention's heads): whole products per thread,
                    // each run serially, instead of every small product split over all.
                    let failed = core::sync::atomic::AtomicBool::new(false);
                    let short = || shape_err(at, "batch matrix multiply: output too small".into());
                    let ys = y.get_mut(..count * m * n).ok_or_else(short)?;
                    ptero_simd::for_each_chunk_by(par, ys, m * n, &|r, part| {
                        for (t, cm) in part.chunks_exact_mut(m * n).enumerate() {
                            let (mut i, mut oa, mut ob) = (r.start / (m * n) + t, 0, 0);
                            for d in (0..batch.rank).rev() {
                                let at = i % batch.dims[d];
                                (oa, ob) = (oa + at * st[0][d], ob + at * st[1][d]);
                                i /= batch.dims[d];
                            }
                            let r = (|| {
                                let am =
                                    MatRef::new(xa.get(oa * m * k..).unwrap_or(&[]), m, k, k, 1)?;
                                let bm =
                                    MatRef::new(xb.get(ob * k * n..).unwrap_or(&[]), k, n, n, 1)?;
                                let cm = MatMut::new(cm, m, n, n, 1)?;
                                gemm(
                                    &ptero_simd::Serial,
                                    arena,
                                    Lhs::Mat(am),
                                    Rhs::Mat(bm),
                                    cm,
                                    &Epilogue::default(),
                                )
                            })();
                            if r.is_err() {
                                failed.store(true, core::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                    if failed.into_inner() {
                        return Err(shape_err(
                            at,
                            "batch matrix multiply: an operand is shorter than its shape".into(),
                        ));
                    }
                    return Ok(());
                }
                let mut failed = None;
                for_each_index(batch, st, |i, [oa, ob]| {
                    if failed.is_some() {
                        return;
                    }
                    let r = (|| {
                        let am = MatRef::new(&xa[oa * m * k..], m, k, k, 1)?;
                        let bm = MatRef::new(&xb[ob * k * n..], k, n, n, 1)?;
                        let cm = MatMut::new(&mut y[i * m * n..(i + 1) * m * n], m, n, n, 1)?;
                        gemm(
                            par,
                            arena,
                            Lhs::Mat(am),
                            Rhs::Mat(bm),
                            cm,
                            &Epilogue::default(),
                        )
                    })();
                    if let Err(e) = r {
                        failed = Some(e);
                    }
                });
                if batch.rank == 0 {
                    let am = MatRef::new(xa, m, k, k, 1).map_err(gemm_err)?;
                    let bm = MatRef::new(xb, k, n, n, 1).map_err(gemm_err)?;
                    let cm = MatMut::new(y, m, n, n, 1).map_err(gemm_err)?;
                    gemm(
                        par,
                        arena,
                        Lhs::Mat(am),
                        Rhs::Mat(bm),
                        cm,
                        &Epilogue::default(),
                    )
                    .map_err(gemm_err)?;
                }
                failed.map_or(Ok(()), |e| Err(gemm_err(e)))
            }
        }
    }
}

/// Max or average pooling over NHWC images; averages count the pixels inside the image
/// only (XNNPACK's padding is excluded from the divisor).
pub(crate) fn pool_nhwc(
    par: &dyn ptero_simd::Parallel,
    max: bool,
    a: &PoolAttrs,
    x: &[f32],
    sx: Shape,
    so: Shape,
    y: &mut [f32],
) {
    let p = PoolGeo::new(a, sx, so);
    let (c, ow) = (p.c, p.ow);
    if c == 0 || ow == 0 {
        return;
    }
    let total = p.outputs().min(y.len());
    // Output rows over threads.
    ptero_simd::for_each_chunk_by(par, &mut y[..total], ow * c, &|r, part| {
        let row0 = r.start / (ow * c);
        let win = |j: usize| {
            let (base, rows) = p.rows(row0 + j / ow);
            let (ix, cols) = p.cols(j % ow);
            ptero_simd::ops::Window {
                base: (base + ix) * c,
                rows,
                cols,
            }
        };
        let steps = (
            p.dh.saturating_mul(p.iw).saturating_mul(c),
            p.dw.saturating_mul(c),
        );
        ops::pool_windows(max, x, c, steps, &win, part);
    });
}

/// When `small` holds one row of the output's last dim (per batch entry, or one for
/// all) and `big` is the output's shape: `(rows per batch entry, row length, whether
/// `small` has a row per batch entry)`.
fn channel_rows(so: Shape, small: Shape, big: Shape) -> Option<(usize, usize, bool)> {
    let r = so.rank;
    if big != so || small.rank != r || r < 2 {
        return None;
    }
    let c = so.dims[r - 1];
    let middle_ones = small.dims[1..r - 1].iter().all(|&d| d == 1);
    let batch = small.dims[0] == so.dims[0];
    if small.dims[r - 1] != c || !middle_ones || !(batch || small.dims[0] == 1) {
        return None;
    }
    let rows: usize = so.dims[1..r - 1].iter().product();
    Some((rows, c, batch && so.dims[0] > 1))
}

/// Runs `f(x block, row, y block)` per batch entry of a row-broadcast binary op.
#[allow(clippy::too_many_arguments)]
fn for_rows(
    rows: usize,
    c: usize,
    per_batch: bool,
    so: Shape,
    x: &[f32],
    row: &[f32],
    y: &mut [f32],
    f: impl Fn(&[f32], &[f32], &mut [f32]),
) {
    let block = rows * c;
    if block == 0 {
        return;
    }
    for b in 0..so.dims[0] {
        let r = if per_batch {
            &row[b * c..(b + 1) * c]
        } else {
            &row[..c]
        };
        f(
            &x[b * block..(b + 1) * block],
            r,
            &mut y[b * block..(b + 1) * block],
        );
    }
}

/// Strides of an NHWC image indexed `(n, c, h, w)`.
fn nhwc(h: usize, w: usize, c: usize) -> [usize; 4] {
    [h * w * c, 1, w * c, c]
}

/// A convolution's output shape from its NHWC input's.
fn conv_shape(s: Shape, geo: &Conv2d) -> Result<Shape, alloc::string::String> {
    if s.rank != 4 || s.dims[3] != geo.cin {
        return Err(format!(
            "input {:?}, expected [N, H, W, {}]",
            s.d(),
            geo.cin
        ));
    }
    let o = |i: usize, p: usize, k: usize, st: usize, d: usize| -> Option<usize> {
        let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
        Some((i.checked_add(p.checked_mul(2)?)?.checked_sub(span)?) / st.max(1) + 1)
    };
    let oh = o(
        s.dims[1],
        geo.pad[0],
        geo.kh,
        geo.stride[0],
        geo.dilation[0],
    );
    let ow = o(
        s.dims[2],
        geo.pad[1],
        geo.kw,
        geo.stride[1],
        geo.dilation[1],
    );
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(Shape::of(&[s.dims[0], oh, ow, geo.cout]).unwrap_or_default()),
        _ => Err(format!("input {:?} smaller than the filter", s.d())),
    }
}

/// The packed geometry with this call's image sizes.
fn conv_geo(geo: &Conv2d, sx: Shape, so: Shape) -> Conv2d {
    Conv2d {
        n: sx.dims[0],
        ih: sx.dims[1],
        iw: sx.dims[2],
        oh: so.dims[1],
        ow: so.dims[2],
        ..*geo
    }
}

/// One NHWC convolution.
fn conv(
    io: &Io<'_, '_>,
    c: &ConvStep,
    x: &[f32],
    sx: Shape,
    y: &mut [f32],
    so: Shape,
) -> Result<(), ptero_gemm::GemmError> {
    let g = conv_geo(&c.geo, sx, so);
    conv2d(
        io.args.parallel(),
        io.args.arena(),
        &g,
        Image {
            data: x,
            strides: nhwc(g.ih, g.iw, g.cin),
        },
        ConvWeights::Packed(&c.w),
        c.bias.map(|b| &io.consts[b][..]),
        ImageMut {
            data: y,
            strides: nhwc(g.oh, g.ow, g.cout),
        },
        c.act,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moves::swap_of;

    #[test]
    fn swaps_of_adjacent_runs() {
        let sh = |d: &[usize]| Shape::of(d).unwrap();
        let pm = |p: &[usize]| {
            let mut a = [0; MAX_DIMS];
            a[..p.len()].copy_from_slice(p);
            a
        };
        // (shape, perm, (outer, rows, cols) or None)
        type Case = (
            &'static [usize],
            &'static [usize],
            Option<(usize, usize, usize)>,
        );
        let cases: &[Case] = &[
            (&[2, 3, 4, 5], &[0, 2, 3, 1], Some((2, 3, 20))),
            (&[2, 3, 4, 5], &[0, 3, 1, 2], Some((2, 12, 5))),
            (&[3, 4], &[1, 0], Some((1, 3, 4))),
            (&[3, 4, 5], &[0, 1, 2], None),
            (&[2, 3, 4, 5], &[0, 2, 1, 3], None),
            (&[2, 3, 4, 5], &[3, 2, 1, 0], None),
        ];
        for &(s, p, want) in cases {
            assert_eq!(swap_of(sh(s), &pm(p)), want, "{s:?} {p:?}");
        }
        // Row-broadcast operands: per batch entry, shared, or not rows at all.
        assert_eq!(
            channel_rows(sh(&[2, 3, 4, 5]), sh(&[2, 1, 1, 5]), sh(&[2, 3, 4, 5])),
            Some((12, 5, true))
        );
        assert_eq!(
            channel_rows(sh(&[2, 3, 4, 5]), sh(&[1, 1, 1, 5]), sh(&[2, 3, 4, 5])),
            Some((12, 5, false))
        );
        assert_eq!(
            channel_rows(sh(&[2, 3, 4, 5]), sh(&[2, 3, 1, 5]), sh(&[2, 3, 4, 5])),
            None
        );
        assert_eq!(
            channel_rows(sh(&[2, 3, 4, 5]), sh(&[5]), sh(&[2, 3, 4, 5])),
            None
        );
        let (x, row): (Vec<f32>, Vec<f32>) = (
            (0..2 * 12 * 5).map(|i| i as f32).collect(),
            (0..10).map(|i| 100.0 * i as f32).collect(),
        );
        let mut y = vec![0.0; x.len()];
        for_rows(
            12,
            5,
            true,
            sh(&[2, 3, 4, 5]),
            &x,
            &row,
            &mut y,
            |a, r, yy| ops::binary_rows(Binary::Sub, a, r, true, yy),
        );
        for (i, v) in y.iter().enumerate() {
            let (b, c) = (i / 60, i % 5);
            assert_eq!(*v, row[b * 5 + c] - x[i], "{i}");
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use crate::graph::PoolAttrs;

    /// Max and average pooling against the definition: padding, strides, dilation,
    /// windows that fall wholly in the padding, NaN, and outputs split over threads.
    #[test]
    fn pooling_matches_the_definition() {
        // (n, ih, iw, c, window, stride, dilation, padding t r b l)
        type Case = (
            usize,
            usize,
            usize,
            usize,
            [u32; 2],
            [u32; 2],
            [u32; 2],
            [u32; 4],
        );
        let cases: &[Case] = &[
            (1, 112, 112, 64, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            (2, 7, 9, 19, [3, 2], [1, 2], [1, 1], [1, 0, 1, 1]),
            (1, 8, 8, 5, [3, 3], [1, 1], [2, 2], [2, 2, 2, 2]),
            (1, 4, 4, 3, [2, 2], [3, 3], [1, 1], [3, 3, 3, 3]),
        ];
        let pool = ptero_simd::pool::ThreadPool::new(2);
        for &(n, ih, iw, c, window, stride, dilation, padding) in cases {
            let a = PoolAttrs {
                padding,
                window,
                stride,
                dilation,
                input: 0,
                output: 1,
            };
            let eff = |k: u32, d: u32| (k as usize - 1) * d as usize + 1;
            let oh = (ih + (padding[0] + padding[2]) as usize - eff(window[0], dilation[0]))
                / stride[0] as usize
                + 1;
            let ow = (iw + (padding[1] + padding[3]) as usize - eff(window[1], dilation[1]))
                / stride[1] as usize
                + 1;
            let mut x: Vec<f32> = (0..n * ih * iw * c)
                .map(|i| ((i * 37) % 101) as f32 - 50.0)
                .collect();
            x[7] = f32::NAN;
            x[n * ih * iw * c - 2] = f32::INFINITY;
            x[3] = f32::NEG_INFINITY;
            let (sx, so) = (
                Shape::of(&[n, ih, iw, c]).unwrap(),
                Shape::of(&[n, oh, ow, c]).unwrap(),
            );
            // Int8 max pooling against the f32 one on the same (integral) values.
            let xq: Vec<i8> = x
                .iter()
                .map(|&v| if v.is_finite() { v as i8 } else { 0 })
                .collect();
            let xf: Vec<f32> = xq.iter().map(|&v| v as f32).collect();
            let (mut yq, mut yf) = (vec![0i8; n * oh * ow * c], vec![0.0; n * oh * ow * c]);
            crate::moves::maxpool_q8(&pool, &a, &xq, sx, so, &mut yq, -20, 30);
            pool_nhwc(&ptero_simd::Serial, true, &a, &xf, sx, so, &mut yf);
            for (i, (&q, &f)) in yq.iter().zip(&yf).enumerate() {
                assert_eq!(
                    q as f32,
                    f.clamp(-20.0, 30.0),
                    "int8 max pooling, output {i}"
                );
            }
            for max in [true, false] {
                let mut y = vec![0.0; n * oh * ow * c];
                pool_nhwc(&pool, max, &a, &x, sx, so, &mut y);
                for b in 0..n {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for ch in 0..c {
                                let (mut m, mut sum, mut cnt) = (f32::NEG_INFINITY, 0.0, 0);
                                for ky in 0..window[0] as usize {
                                    for kx in 0..window[1] as usize {
                                        let iy = (oy * stride[0] as usize
                                            + ky * dilation[0] as usize)
                                            .checked_sub(padding[0] as usize);
                                        let ix = (ox * stride[1] as usize
                                            + kx * dilation[1] as usize)
                                            .checked_sub(padding[3] as usize);
                                        let (Some(iy), Some(ix)) = (iy, ix) else {
                                            continue;
                                        };
                                        if iy >= ih || ix >= iw {
                                            continue;
                                        }
                                        let v = x[((b * ih + iy) * iw + ix) * c + ch];
                                        m = if v.is_nan() || m.is_nan() {
                                            f32::NAN
                                        } else {
                                            m.max(v)
                                        };
                                        sum += v;
                                        cnt += 1;
                                    }
                                }
                                let want = if max {
                                    m
                                } else if cnt == 0 {
                                    0.0
                                } else {
                                    sum / cnt as f32
                                };
                                let got = y[((b * oh + oy) * ow + ox) * c + ch];
                                let ok = (want.is_nan() && got.is_nan())
                                    || want == got
                                    || (want - got).abs() <= 1e-4 * want.abs().max(1.0);
                                assert!(
                                    ok,
                                    "max {max} case {:?} at {b},{oy},{ox},{ch}: {got} vs {want}",
                                    (n, ih, iw, c, window, stride)
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
