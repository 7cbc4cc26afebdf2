//! Quantized values and the steps that compute on them, with XNNPACK's integer
//! arithmetic (`docs/notes-xnnpack-nodes.md` §3, §6, §9).
//!
//! Values live in the same f32 buffers as the rest: an int8 value packs four elements
//! per f32 slot; a dynamically quantized (`qdint8`) value holds its int8 elements and,
//! after them, a `(scale, zero point)` pair per row.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

use ptero_gemm::{qd8_gemm, qs8_gemm, quantize, quantize_rows, requantize, QPacked};
use ptero_simd::Parallel;

use crate::error::{Result, XnnError};
use crate::graph::{BinaryOp, ConvAttrs, ConvKind, Datatype, Graph, Node, Quant, Value, NO_VALUE};
use crate::plan::{bad, unsupported, Shape, FLAG_TRANSPOSE_WEIGHTS};
use crate::step::{bstrides, for_each_index, Io};

/// How a value's elements are stored while the graph runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// f32 (fp16 and bf16 values are computed in f32 too).
    F32,
    /// int8 with one scale and zero point.
    Q8 { scale: f32, zp: i32 },
    /// int8 rows, each with its own scale and zero point; a row is the last `nonbatch`
    /// dims.
    Qd8 { nonbatch: usize },
}

impl Kind {
    /// The storage of a non-constant value, or why it has none here.
    pub(crate) fn of(v: &Value) -> core::result::Result<Kind, &'static str> {
        Ok(match (v.dtype, &v.quant) {
            (Datatype::Fp32 | Datatype::Fp16 | Datatype::Bf16, _) => Kind::F32,
            (Datatype::QInt8, Quant::PerTensor { scale, zero_point }) => {
                if !(scale.is_finite() && *scale > 0.0 && (-128..=127).contains(zero_point)) {
                    return Err("qint8 with a scale that is not finite and positive or a zero point outside int8");
                }
                Kind::Q8 {
                    scale: *scale,
                    zp: *zero_point,
                }
            }
            (Datatype::QdInt8, Quant::PerTokenDynamic { num_nonbatch_dims }) => Kind::Qd8 {
                nonbatch: (*num_nonbatch_dims).max(1),
            },
            (Datatype::QInt8 | Datatype::QdInt8, _) => {
                return Err("int8 values without matching quantization parameters")
            }
            _ => return Err("values of this datatype"),
        })
    }

    /// f32 slots a value of at most `bound` elements needs (`dims`: its declaration).
    pub(crate) fn floats(self, bound: usize, dims: &[usize]) -> usize {
        match self {
            Kind::F32 => bound,
            Kind::Q8 { .. } => bound.div_ceil(4),
            Kind::Qd8 { nonbatch } => {
                bound.div_ceil(4) + 2 * bound.checked_div(inner(dims, nonbatch)).unwrap_or(0)
            }
        }
    }
}

/// Elements per row of a dynamically quantized value (its last `nonbatch` dims);
/// saturates (a row that large holds no data anyway: some other dim is 0).
pub(crate) fn inner(dims: &[usize], nonbatch: usize) -> usize {
    dims[dims.len().saturating_sub(nonbatch)..]
        .iter()
        .fold(1usize, |a, &d| a.saturating_mul(d))
}

/// XNNPACK's `xnn_qs8_quantize`: a float divide, then round half to even, saturated.
#[allow(clippy::manual_clamp)] // `clamp` would keep NaN
pub(crate) fn quantize_scalar(v: f32, scale: f32, zp: i32) -> i32 {
    // `max` first: NaN becomes -128, as with C's `fmaxf`.
    let f = (v / scale + zp as f32).max(-128.0).min(127.0);
    ((f + 12_582_912.0) - 12_582_912.0) as i32
}

/// The integer range of an output clamp.
fn range_of(clamp: Option<(f32, f32)>, scale: f32, zp: i32) -> (i32, i32) {
    match clamp {
        None => (-128, 127),
        Some((lo, hi)) => (
            quantize_scalar(lo, scale, zp),
            quantize_scalar(hi, scale, zp),
        ),
    }
}

/// An int8 convolution with its filter reordered once.
pub(crate) struct Qs8Conv {
    pub(crate) x: usize,
    pub(crate) out: usize,
    pub(crate) depthwise: bool,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: [usize; 2],
    pub(crate) pad: [usize; 2],
    pub(crate) dilation: [usize; 2],
    pub(crate) groups: usize,
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    /// `[cout][kh·kw][cin/groups]`, or `[kh·kw][cout]` for depthwise.
    w: Vec<i8>,
    /// Per output channel and tap: the filter's sum over input channels.
    wsum: Vec<i32>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    zx: i32,
    zy: i32,
    range: (i32, i32),
}

/// Int8 elementwise operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum QBin {
    /// Fixed point: `(bias + a·ma + b·mb) >> shift` (Sub negates `mb`).
    Add {
        ma: i32,
        mb: i32,
        bias: i32,
        shift: u32,
    },
    /// `RNE((a − za)(b − zb) · scale)`.
    Mul { za: i32, zb: i32, scale: f32 },
}

/// A step on quantized values.
pub(crate) enum QStep {
    /// f32 rows to int8 rows with their own scale and zero point.
    ToQd8 {
        x: usize,
        out: usize,
        nonbatch: usize,
    },
    ToQ8 {
        x: usize,
        out: usize,
        scale: f32,
        zp: i32,
    },
    FromQ8 {
        x: usize,
        out: usize,
        scale: f32,
        zp: i32,
    },
    /// An f32 value rounded to half precision (a Convert to fp16).
    RoundF16 {
        x: usize,
        out: usize,
    },
    Qd8Fc {
        x: usize,
        out: usize,
        w: QPacked,
        bias: Option<usize>,
        clamp: (f32, f32),
        nonbatch: usize,
    },
    Qs8Fc {
        x: usize,
        out: usize,
        w: QPacked,
        b: Vec<i32>,
        zy: i32,
        range: (i32, i32),
    },
    Conv(Box<Qs8Conv>),
    Binary {
        op: QBin,
        a: usize,
        b: usize,
        out: usize,
        zy: i32,
        range: (i32, i32),
    },
    /// Mean over H and W of an NHWC value.
    Gap {
        x: usize,
        out: usize,
        zx: i32,
        /// `s_x / s_y`, divided by the pixel count at run time.
        ratio: f32,
        zy: i32,
        range: (i32, i32),
    },
    Clamp {
        x: usize,
        out: usize,
        lo: i8,
        hi: i8,
    },
}

impl QStep {
    pub(crate) fn out(&self) -> usize {
        match self {
            QStep::ToQd8 { out, .. }
            | QStep::ToQ8 { out, .. }
            | QStep::FromQ8 { out, .. }
            | QStep::RoundF16 { out, .. }
            | QStep::Qd8Fc { out, .. }
            | QStep::Qs8Fc { out, .. }
            | QStep::Binary { out, .. }
            | QStep::Gap { out, .. }
            | QStep::Clamp { out, .. } => *out,
            QStep::Conv(c) => c.out,
        }
    }

    pub(crate) fn reads(&self, f: &mut dyn FnMut(usize, bool)) {
        match self {
            QStep::ToQd8 { x, .. }
            | QStep::ToQ8 { x, .. }
            | QStep::FromQ8 { x, .. }
            | QStep::RoundF16 { x, .. }
            | QStep::Qs8Fc { x, .. }
            | QStep::Gap { x, .. }
            | QStep::Clamp { x, .. } => f(*x, false),
            QStep::Qd8Fc { x, bias, .. } => {
                f(*x, false);
                if let Some(b) = bias {
                    f(*b, true);
                }
            }
            QStep::Conv(c) => f(c.x, false),
            QStep::Binary { a, b, .. } => {
                f(*a, false);
                f(*b, false);
            }
        }
    }

    /// The output's shape, or `None` when it is the shape of the first input (`x`).
    pub(crate) fn infer(
        &self,
        io: &Io<'_, '_>,
    ) -> core::result::Result<Shape, alloc::string::String> {
        match self {
            QStep::ToQd8 { x, .. }
            | QStep::ToQ8 { x, .. }
            | QStep::FromQ8 { x, .. }
            | QStep::RoundF16 { x, .. }
            | QStep::Clamp { x, .. } => Ok(io.shape(*x)),
            QStep::Qd8Fc { x, w, .. } | QStep::Qs8Fc { x, w, .. } => {
                let s = io.shape(*x);
                let k = s.d().last().copied().unwrap_or(1);
                if k != w.k() {
                    return Err(format!(
                        "input {:?} has {k} features, the filter {}",
                        s.d(),
                        w.k()
                    ));
                }
                let mut o = s;
                if o.rank == 0 {
                    o.rank = 1;
                }
                o.dims[o.rank - 1] = w.n();
                Ok(o)
            }
            QStep::Conv(c) => {
                let s = io.shape(c.x);
                if s.rank != 4 || s.dims[3] != c.cin {
                    return Err(format!("input {:?}, expected [N, H, W, {}]", s.d(), c.cin));
                }
                let o = |i: usize, p: usize, k: usize, st: usize, d: usize| -> Option<usize> {
                    let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
                    Some((i.checked_add(p.checked_mul(2)?)?.checked_sub(span)?) / st.max(1) + 1)
                };
                match (
                    o(s.dims[1], c.pad[0], c.kh, c.stride[0], c.dilation[0]),
                    o(s.dims[2], c.pad[1], c.kw, c.stride[1], c.dilation[1]),
                ) {
                    (Some(oh), Some(ow)) => {
                        Ok(Shape::of(&[s.dims[0], oh, ow, c.cout]).unwrap_or_default())
                    }
                    _ => Err(format!("input {:?} smaller than the filter", s.d())),
                }
            }
            QStep::Binary { a, b, .. } => {
                let (sa, sb) = (io.shape(*a), io.shape(*b));
                crate::step::broadcast(sa, sb)
                    .ok_or_else(|| format!("{:?} and {:?} do not broadcast", sa.d(), sb.d()))
            }
            QStep::Gap { x, .. } => {
                let s = io.shape(*x);
                if s.rank != 4 {
                    return Err(format!("input {:?} is not NHWC", s.d()));
                }
                Ok(Shape::of(&[s.dims[0], 1, 1, s.dims[3]]).unwrap_or_default())
            }
        }
    }

    /// Computes the step into `y`, the output's storage.
    pub(crate) fn run(&self, io: &Io<'_, '_>, y: &mut [f32]) -> ptero_core::Result<()> {
        let par = io.args.parallel();
        match self {
            QStep::ToQd8 { x, out, nonbatch } => {
                let xs = io.read(*x)?;
                let inner = inner(io.shape(*x).d(), *nonbatch);
                let (q, p) = qd8_parts_mut(y, io.bound(*out), xs.len())?;
                let rows = xs.len().checked_div(inner).unwrap_or(0);
                let p = p.get_mut(..2 * rows).ok_or_else(|| room(*out))?;
                quantize_rows(xs, inner, q, p);
                Ok(())
            }
            QStep::ToQ8 { x, scale, zp, .. } => {
                let xs = io.read(*x)?;
                quantize(xs, *scale, *zp, i8s_mut(y, xs.len())?);
                Ok(())
            }
            QStep::FromQ8 { x, scale, zp, .. } => {
                let xs = io.read_i8(*x)?;
                for (o, &q) in y.iter_mut().zip(xs) {
                    *o = (i32::from(q) - zp) as f32 * scale;
                }
                Ok(())
            }
            QStep::RoundF16 { x, .. } => {
                for (o, &v) in y.iter_mut().zip(io.read(*x)?) {
                    *o = half::f16::from_f32(v).to_f32();
                }
                Ok(())
            }
            QStep::Qd8Fc {
                x,
                out,
                w,
                bias,
                clamp,
                nonbatch,
            } => {
                let (q, p) = io.read_qd8(*x)?;
                let k = w.k();
                let m = q.len().checked_div(k).unwrap_or(0);
                let inner = inner(io.shape(*x).d(), *nonbatch);
                let bias = bias.map(|b| &io.consts[b][..]);
                let y = y.get_mut(..m * w.n()).ok_or_else(|| room(*out))?;
                let rows = q.len().checked_div(inner).unwrap_or(0);
                if p.len() < 2 * rows || bias.is_some_and(|b| b.len() < w.n()) {
                    return Err(room(*x));
                }
                if inner == k {
                    qd8_gemm(par, q, p, m, w, bias, *clamp, y);
                } else {
                    // Rows of the product inside rows of the quantization: one at a time,
                    // each with its row's parameters.
                    for i in 0..m {
                        let r = (i * k).checked_div(inner).unwrap_or(0);
                        qd8_gemm(
                            par,
                            &q[i * k..(i + 1) * k],
                            &p[2 * r..2 * r + 2],
                            1,
                            w,
                            bias,
                            *clamp,
                            &mut y[i * w.n()..(i + 1) * w.n()],
                        );
                    }
                }
                Ok(())
            }
            QStep::Qs8Fc {
                x,
                out,
                w,
                b,
                zy,
                range,
            } => {
                let q = io.read_i8(*x)?;
                let m = q.len().checked_div(w.k()).unwrap_or(0);
                let y = i8s_mut(y, m * w.n()).map_err(|_| room(*out))?;
                qs8_gemm(par, q, m, w, b, *zy, *range, y);
                Ok(())
            }
            QStep::Conv(c) => {
                let (sx, so) = (io.shape(c.x), io.shape(c.out));
                let xs = io.read_i8(c.x)?;
                let n = so.numel().unwrap_or(0);
                let ys = i8s_mut(y, n)?;
                c.run(par, xs, sx, ys, so);
                Ok(())
            }
            QStep::Binary {
                op,
                a,
                b,
                out,
                zy,
                range,
            } => {
                let (sa, sb, so) = (io.shape(*a), io.shape(*b), io.shape(*out));
                let (xa, xb) = (io.read_i8(*a)?, io.read_i8(*b)?);
                let ys = i8s_mut(y, so.numel().unwrap_or(0))?;
                let st = [bstrides(sa, so), bstrides(sb, so)];
                let (lo, hi) = *range;
                for_each_index(so, st, |i, [oa, ob]| {
                    let (va, vb) = (i32::from(xa[oa]), i32::from(xb[ob]));
                    let v = match *op {
                        QBin::Add {
                            ma,
                            mb,
                            bias,
                            shift,
                        } => {
                            let acc = bias
                                .wrapping_add(va.wrapping_mul(ma))
                                .wrapping_add(vb.wrapping_mul(mb));
                            (acc >> shift).wrapping_add(*zy).clamp(-128, 127)
                        }
                        QBin::Mul { za, zb, scale } => {
                            i32::from(requantize((va - za) * (vb - zb), scale, *zy, (-128, 127)))
                        }
                    };
                    ys[i] = v.clamp(lo, hi) as i8;
                });
                Ok(())
            }
            QStep::Gap {
                x,
                zx,
                ratio,
                zy,
                range,
                ..
            } => {
                let s = io.shape(*x);
                let (n, hw, c) = (s.dims[0], s.dims[1] * s.dims[2], s.dims[3]);
                let xs = io.read_i8(*x)?;
                let ys = i8s_mut(y, n * c)?;
                // XNNPACK sums the raw integers and folds both zero points into one
                // float offset (`xnn_init_qs8_mean_minmax_scalar_params`).
                let inv = *ratio * (1.0 / hw as f32);
                let zp = *zy as f32 - (hw as f32 * *zx as f32) * inv;
                for b in 0..n {
                    for ch in 0..c {
                        let mut acc = 0i32;
                        for p in 0..hw {
                            acc = acc.wrapping_add(i32::from(xs[(b * hw + p) * c + ch]));
                        }
                        let f = acc as f32 * inv + zp;
                        let q = if f.is_nan() {
                            0
                        } else {
                            (((f + 12_582_912.0) - 12_582_912.0) as i32).clamp(-128, 127)
                        };
                        ys[b * c + ch] = q.clamp(range.0, range.1) as i8;
                    }
                }
                Ok(())
            }
            QStep::Clamp { x, lo, hi, .. } => {
                let xs = io.read_i8(*x)?;
                let ys = i8s_mut(y, xs.len())?;
                for (o, &v) in ys.iter_mut().zip(xs) {
                    *o = v.clamp(*lo, *hi);
                }
                Ok(())
            }
        }
    }
}

fn room(v: usize) -> ptero_core::Error {
    ptero_core::Error::OutOfBounds(format!("XNNPACK value {v}: its buffer is too small"))
}

/// The first `n` int8 elements of a value's storage.
pub(crate) fn i8s_mut(y: &mut [f32], n: usize) -> ptero_core::Result<&mut [i8]> {
    let b: &mut [i8] = bytemuck::cast_slice_mut(y);
    let len = b.len();
    b.get_mut(..n).ok_or_else(|| {
        ptero_core::Error::OutOfBounds(format!("int8 value: {len} bytes held, {n} needed"))
    })
}

/// The elements and row parameters of a dynamically quantized value's storage.
pub(crate) fn qd8_parts_mut(
    y: &mut [f32],
    bound: usize,
    n: usize,
) -> ptero_core::Result<(&mut [i8], &mut [f32])> {
    let at = bound.div_ceil(4);
    if at > y.len() {
        return Err(room(0));
    }
    let (d, p) = y.split_at_mut(at);
    Ok((i8s_mut(d, n)?, p))
}

impl Qs8Conv {
    fn run(&self, par: &dyn Parallel, x: &[i8], sx: Shape, y: &mut [i8], so: Shape) {
        let (ih, iw) = (sx.dims[1], sx.dims[2]);
        let (oh, ow) = (so.dims[1], so.dims[2]);
        let row = ow * self.cout;
        if row == 0 {
            return;
        }
        let img_in = ih * iw * self.cin;
        ptero_simd::for_each_chunk_by(par, y, row, &|r, part| {
            for (j, yrow) in part.chunks_exact_mut(row).enumerate() {
                let orow = r.start / row + j;
                let (b, oy) = (orow / oh, orow % oh);
                let xb = &x[b * img_in..(b + 1) * img_in];
                for ox in 0..ow {
                    self.pixel(
                        xb,
                        ih,
                        iw,
                        oy,
                        ox,
                        &mut yrow[ox * self.cout..(ox + 1) * self.cout],
                    );
                }
            }
        });
    }

    /// One output pixel, every channel.
    fn pixel(&self, x: &[i8], ih: usize, iw: usize, oy: usize, ox: usize, y: &mut [i8]) {
        let taps = self.kh * self.kw;
        let tap_at = |t: usize| -> Option<usize> {
            let (ky, kx) = (t / self.kw, t % self.kw);
            let iy = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pad[0])?;
            let ix = (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(self.pad[1])?;
            (iy < ih && ix < iw).then_some((iy * iw + ix) * self.cin)
        };
        if self.depthwise {
            let c = self.cout;
            let mult = c / self.cin.max(1);
            for c0 in (0..c).step_by(64) {
                let c1 = (c0 + 64).min(c);
                let mut acc = [0i32; 64];
                acc[..c1 - c0].copy_from_slice(&self.bias[c0..c1]);
                for t in 0..taps {
                    let Some(at) = tap_at(t) else { continue };
                    let w = &self.w[t * c + c0..t * c + c1];
                    for (j, a) in acc[..c1 - c0].iter_mut().enumerate() {
                        let ci = (c0 + j) / mult.max(1);
                        *a = a.wrapping_add(
                            (i32::from(x[at + ci]) - self.zx).wrapping_mul(i32::from(w[j])),
                        );
                    }
                }
                for (j, o) in y[c0..c1].iter_mut().enumerate() {
                    *o = requantize(acc[j], self.scale[c0 + j], self.zy, self.range);
                }
            }
            return;
        }
        let cin_g = self.cin / self.groups.max(1);
        let cout_g = self.cout / self.groups.max(1);
        for (oc, o) in y.iter_mut().enumerate() {
            let g = oc / cout_g.max(1);
            let wo = &self.w[oc * taps * cin_g..(oc + 1) * taps * cin_g];
            let mut acc = self.bias[oc];
            for t in 0..taps {
                let Some(at) = tap_at(t) else { continue };
                let xs = &x[at + g * cin_g..at + (g + 1) * cin_g];
                let ws = &wo[t * cin_g..(t + 1) * cin_g];
                let mut d = 0i32;
                for (a, b) in xs.iter().zip(ws) {
                    d = d.wrapping_add(i32::from(*a) * i32::from(*b));
                }
                acc = acc
                    .wrapping_add(d)
                    .wrapping_sub(self.zx.wrapping_mul(self.wsum[oc * taps + t]));
            }
            *o = requantize(acc, self.scale[oc], self.zy, self.range);
        }
    }
}

/// Reads constants' raw bytes while planning.
pub(crate) type ConstBytes<'p> = dyn Fn(usize) -> Result<&'p [u8]> + 'p;

/// Per-channel (or per-tensor) scales of a quantized constant: `count` of them.
fn channel_scales(v: &Value, vi: usize, count: usize, bytes: &ConstBytes<'_>) -> Result<Vec<f32>> {
    let err = |what: alloc::string::String| XnnError::Constant { value: vi, what };
    let s: Vec<f32> = match &v.quant {
        Quant::PerTensor { scale, .. } => alloc::vec![*scale; count],
        Quant::PerChannel {
            scales,
            scale_buffer,
            ..
        } => match scale_buffer {
            Some(b) => bytes(*b as usize)?
                .chunks_exact(4)
                .take(count)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None => scales.iter().copied().take(count).collect(),
        },
        _ => return Err(err("expected per-tensor or per-channel scales".into())),
    };
    if s.len() < count || s.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return Err(err(format!(
            "{} scales for {count} channels, each must be finite and positive",
            s.len()
        )));
    }
    Ok(s)
}

/// Int32 biases (qint32 / qcint32).
fn int_bias(g: &Graph, id: u32, n: usize, bytes: &ConstBytes<'_>) -> Result<Vec<i32>> {
    if id == NO_VALUE {
        return Ok(alloc::vec![0; n]);
    }
    let vi = g.by_id[&id];
    let v = &g.values[vi];
    let err = |what: alloc::string::String| XnnError::Constant { value: vi, what };
    if !matches!(
        v.dtype,
        Datatype::QInt32 | Datatype::QcInt32 | Datatype::Int32
    ) {
        return Err(err(format!("an int8 product's bias of {}", v.dtype.name())));
    }
    let c = v
        .constant
        .ok_or_else(|| err("a bias computed at run time".into()))?;
    let b = bytes(c as usize)?;
    if b.len() < n * 4 {
        return Err(err(format!("{} bytes for {n} int32 biases", b.len())));
    }
    Ok(b.chunks_exact(4)
        .take(n)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn q8_of(g: &Graph, id: u32) -> Option<(f32, i32)> {
    match Kind::of(&g.values[g.by_id[&id]]) {
        Ok(Kind::Q8 { scale, zp }) => Some((scale, zp)),
        _ => None,
    }
}

fn kind_of(g: &Graph, id: u32) -> Option<Kind> {
    Kind::of(&g.values[g.by_id[&id]]).ok()
}

/// A fully connected node reading `qdint8` or `qint8`; `None` when it reads f32.
pub(crate) fn plan_fc(
    g: &Graph,
    index: usize,
    node: &Node,
    (input, filter, bias, output): (u32, u32, u32, u32),
    consts_f32: &dyn Fn(usize) -> Option<usize>,
    bytes: &ConstBytes<'_>,
) -> Result<Option<QStep>> {
    let vi = |id: u32| g.by_id[&id];
    let kin = kind_of(g, input);
    if !matches!(kin, Some(Kind::Q8 { .. } | Kind::Qd8 { .. })) {
        return Ok(None);
    }
    let fv = &g.values[vi(filter)];
    let fc = fv
        .constant
        .ok_or_else(|| unsupported(index, node, "a quantized filter computed at run time"))?;
    if fv.dims.len() != 2 {
        return Err(bad(index, node, format!("filter dims {:?}", fv.dims)));
    }
    let transposed = node.flags & FLAG_TRANSPOSE_WEIGHTS != 0;
    let (n, k) = if transposed {
        (fv.dims[1], fv.dims[0])
    } else {
        (fv.dims[0], fv.dims[1])
    };
    if k == 0 {
        return Err(bad(index, node, "a filter with no inputs"));
    }
    let raw = bytes(fc as usize)?;
    let err = |e: ptero_gemm::QPackError| bad(index, node, e);
    let short = || bad(index, node, format!("filter data too short for [{n}, {k}]"));
    let pack8 = |scales: &dyn Fn(usize, usize) -> f32| -> Result<QPacked> {
        if raw.len() < n * k {
            return Err(short());
        }
        QPacked::new(
            n,
            k,
            8,
            k,
            |r, c| {
                (if transposed {
                    raw[c * n + r]
                } else {
                    raw[r * k + c]
                }) as i8
            },
            scales,
        )
        .map_err(err)
    };
    match kin {
        Some(Kind::Qd8 { nonbatch }) => {
            let w = match fv.dtype {
                Datatype::QcInt8 | Datatype::QInt8 => {
                    if let Quant::PerTensor { zero_point, .. } = fv.quant {
                        if zero_point != 0 {
                            return Err(unsupported(index, node, "int8 weights with a zero point"));
                        }
                    }
                    let s = channel_scales(fv, vi(filter), n, bytes)?;
                    pack8(&|r, _| s[r])?
                }
                Datatype::QcInt4 | Datatype::QbInt4 => {
                    if transposed {
                        return Err(unsupported(index, node, "transposed 4-bit weights"));
                    }
                    let rb = k.div_ceil(2);
                    if raw.len() < n * rb {
                        return Err(short());
                    }
                    let nib = |r: usize, c: usize| -> i8 {
                        let b = raw[r * rb + c / 2];
                        (if c.is_multiple_of(2) { b & 15 } else { b >> 4 }) as i8 - 8
                    };
                    if fv.dtype == Datatype::QcInt4 {
                        let s = channel_scales(fv, vi(filter), n, bytes)?;
                        QPacked::new(n, k, 4, k, nib, |r, _| s[r]).map_err(err)?
                    } else {
                        let Quant::PerChannelGroup {
                            group_size,
                            scale_buffer,
                            scales,
                            ..
                        } = &fv.quant
                        else {
                            return Err(bad(index, node, "qbint4 weights without group scales"));
                        };
                        let gs = *group_size;
                        if gs == 0 || k % gs != 0 {
                            return Err(bad(
                                index,
                                node,
                                format!("group size {gs} for {k} inputs"),
                            ));
                        }
                        let count = n * (k / gs);
                        let s: Vec<f32> = match scale_buffer {
                            Some(b) => bytes(*b as usize)?
                                .chunks_exact(2)
                                .take(count)
                                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                                .collect(),
                            // Legacy inline f32 scales, narrowed to bf16 as XNNPACK's
                            // loader does (a nudge up, then truncation).
                            #[allow(clippy::excessive_precision)] // XNNPACK's literal
                            None => scales
                                .iter()
                                .take(count)
                                .map(|&f| {
                                    f32::from_bits((f * 1.003_891_05).to_bits() & 0xffff_0000)
                                })
                                .collect(),
                        };
                        if s.len() < count {
                            return Err(bad(
                                index,
                                node,
                                format!("{} group scales, {count} needed", s.len()),
                            ));
                        }
                        let groups = k / gs;
                        QPacked::new(n, k, 4, gs, nib, |r, gi| s[r * groups + gi]).map_err(err)?
                    }
                }
                d => {
                    return Err(unsupported(
                        index,
                        node,
                        format!("dynamically quantized inputs against {} weights", d.name()),
                    ))
                }
            };
            let bias = if bias == NO_VALUE {
                None
            } else {
                let b = consts_f32(vi(bias)).ok_or_else(|| {
                    unsupported(index, node, "a bias that is not an f32 constant")
                })?;
                Some(b)
            };
            let clamp = node.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            Ok(Some(QStep::Qd8Fc {
                x: vi(input),
                out: vi(output),
                w,
                bias,
                clamp,
                nonbatch,
            }))
        }
        Some(Kind::Q8 { scale: sx, zp: zx }) => {
            let (sy, zy) = q8_of(g, output).ok_or_else(|| {
                unsupported(index, node, "an int8 product with a non-int8 output")
            })?;
            if !matches!(fv.dtype, Datatype::QcInt8 | Datatype::QInt8) {
                return Err(unsupported(
                    index,
                    node,
                    format!("int8 inputs against {} weights", fv.dtype.name()),
                ));
            }
            if let Quant::PerTensor { zero_point, .. } = fv.quant {
                if zero_point != 0 {
                    return Err(unsupported(index, node, "int8 weights with a zero point"));
                }
            }
            let s = channel_scales(fv, vi(filter), n, bytes)?;
            let w = pack8(&|r, _| (sx * s[r]) / sy)?;
            let bias = int_bias(g, bias, n, bytes)?;
            let b = (0..n)
                .map(|r| bias[r].wrapping_sub(zx.wrapping_mul(w.sums(r)[0])))
                .collect();
            Ok(Some(QStep::Qs8Fc {
                x: vi(input),
                out: vi(output),
                w,
                b,
                zy,
                range: range_of(node.clamp, sy, zy),
            }))
        }
        _ => Ok(None),
    }
}

/// A convolution reading `qint8`; `None` when it reads f32.
pub(crate) fn plan_conv(
    g: &Graph,
    index: usize,
    node: &Node,
    kind: ConvKind,
    a: &ConvAttrs,
    bytes: &ConstBytes<'_>,
) -> Result<Option<QStep>> {
    let vi = |id: u32| g.by_id[&id];
    let Some(kin) = kind_of(g, a.input) else {
        return Ok(None);
    };
    let (sx, zx) = match kin {
        Kind::F32 => return Ok(None),
        Kind::Qd8 { .. } => {
            return Err(unsupported(
                index,
                node,
                "dynamically quantized convolutions",
            ))
        }
        Kind::Q8 { scale, zp } => (scale, zp),
    };
    if kind == ConvKind::ConvTranspose2d {
        return Err(unsupported(index, node, "int8 transposed convolutions"));
    }
    let (sy, zy) = q8_of(g, a.output)
        .ok_or_else(|| unsupported(index, node, "an int8 convolution with a non-int8 output"))?;
    let p = a.padding;
    if p[0] != p[2] || p[1] != p[3] {
        return Err(unsupported(
            index,
            node,
            format!("asymmetric padding {p:?}"),
        ));
    }
    let u = |x: u32| x as usize;
    let (groups, cin_g, cout_g) = (
        u(a.groups),
        u(a.group_input_channels),
        u(a.group_output_channels),
    );
    let (cin, cout) = (groups.saturating_mul(cin_g), groups.saturating_mul(cout_g));
    let (kh, kw) = (u(a.kernel[0]), u(a.kernel[1]));
    let taps = kh.saturating_mul(kw);
    let depthwise = kind == ConvKind::DepthwiseConv2d;
    if groups == 0 || taps == 0 || cin_g == 0 || cout_g == 0 || (depthwise && cin_g != 1) {
        return Err(bad(index, node, "empty filter or groups"));
    }
    let fv = &g.values[vi(a.filter)];
    let fc = fv
        .constant
        .ok_or_else(|| unsupported(index, node, "a quantized filter computed at run time"))?;
    if !matches!(fv.dtype, Datatype::QcInt8 | Datatype::QInt8) {
        return Err(unsupported(
            index,
            node,
            format!("int8 inputs against {} filters", fv.dtype.name()),
        ));
    }
    if let Quant::PerTensor { zero_point, .. } = fv.quant {
        if zero_point != 0 {
            return Err(unsupported(index, node, "int8 filters with a zero point"));
        }
    }
    let need = taps
        .saturating_mul(cout)
        .saturating_mul(if depthwise { 1 } else { cin_g });
    let raw = bytes(fc as usize)?;
    if raw.len() < need || fv.numel() != Some(need) {
        return Err(bad(
            index,
            node,
            format!("filter of {} bytes, {need} needed", raw.len()),
        ));
    }
    let w: Vec<i8> = raw[..need].iter().map(|&b| b as i8).collect();
    let ws = channel_scales(fv, vi(a.filter), cout, bytes)?;
    let wsum = if depthwise {
        Vec::new()
    } else {
        w.chunks_exact(cin_g.max(1))
            .map(|c| c.iter().map(|&v| i32::from(v)).sum())
            .collect()
    };
    Ok(Some(QStep::Conv(Box::new(Qs8Conv {
        x: vi(a.input),
        out: vi(a.output),
        depthwise,
        kh,
        kw,
        stride: [u(a.stride[0]).max(1), u(a.stride[1]).max(1)],
        pad: [u(p[0]), u(p[3])],
        dilation: [u(a.dilation[0]).max(1), u(a.dilation[1]).max(1)],
        groups,
        cin,
        cout,
        w,
        wsum,
        bias: int_bias(g, a.bias, cout, bytes)?,
        scale: ws.iter().map(|&s| (sx * s) / sy).collect(),
        zx,
        zy,
        range: range_of(node.clamp, sy, zy),
    }))))
}

/// Add, Subtract or Multiply on int8 values; `None` when they are f32.
pub(crate) fn plan_binary(
    g: &Graph,
    index: usize,
    node: &Node,
    op: BinaryOp,
    (a, b, output): (u32, u32, u32),
) -> Result<Option<QStep>> {
    let vi = |id: u32| g.by_id[&id];
    let (qa, qb, qy) = (q8_of(g, a), q8_of(g, b), q8_of(g, output));
    let ((sa, za), (sb, zb), (sy, zy)) = match (qa, qb, qy) {
        (None, None, None) => return Ok(None),
        (Some(x), Some(y), Some(z)) => (x, y, z),
        _ => return Err(unsupported(index, node, "int8 mixed with other datatypes")),
    };
    let op = match op {
        BinaryOp::Add | BinaryOp::Subtract => {
            let ra = sa / sy;
            let rb = if op == BinaryOp::Subtract {
                -(sb / sy)
            } else {
                sb / sy
            };
            let max = ra.abs().max(rb.abs());
            let exp = ((max.to_bits() >> 23) & 0xff) as i32 - 127;
            let shift = 20 - exp;
            if !(12..=30).contains(&shift) {
                return Err(unsupported(
                    index,
                    node,
                    format!("input to output scale ratio {max} (XNNPACK accepts 2^-10 to 2^8)"),
                ));
            }
            let m = |r: f32| {
                let f = r * (1u32 << shift) as f32;
                ((f + 12_582_912.0) - 12_582_912.0) as i32
            };
            let (ma, mb) = (m(ra), m(rb));
            let bias = (1i32 << (shift - 1))
                .wrapping_sub(ma.wrapping_mul(za))
                .wrapping_sub(mb.wrapping_mul(zb));
            QBin::Add {
                ma,
                mb,
                bias,
                shift: shift as u32,
            }
        }
        BinaryOp::Multiply => QBin::Mul {
            za,
            zb,
            scale: sa * sb / sy,
        },
        _ => return Err(unsupported(index, node, "this operation on int8 values")),
    };
    Ok(Some(QStep::Binary {
        op,
        a: vi(a),
        b: vi(b),
        out: vi(output),
        zy,
        range: range_of(node.clamp, sy, zy),
    }))
}

/// Convert, Clamp and GlobalAvgPooling2d when int8 is involved; `None` otherwise.
pub(crate) fn plan_unary(
    g: &Graph,
    index: usize,
    node: &Node,
    op: crate::graph::UnaryOp,
    (input, output): (u32, u32),
) -> Result<Option<QStep>> {
    use crate::graph::UnaryOp as U;
    let vi = |id: u32| g.by_id[&id];
    let (x, out) = (vi(input), vi(output));
    let (ki, ko) = (kind_of(g, input), kind_of(g, output));
    let (ki, ko) = match (ki, ko) {
        (Some(a), Some(b)) => (a, b),
        _ => return Ok(None),
    };
    if op == U::Convert {
        return Ok(match (ki, ko) {
            (Kind::F32, Kind::Qd8 { nonbatch }) => Some(QStep::ToQd8 { x, out, nonbatch }),
            (Kind::F32, Kind::Q8 { scale, zp }) => Some(QStep::ToQ8 { x, out, scale, zp }),
            (Kind::Q8 { scale, zp }, Kind::F32) => Some(QStep::FromQ8 { x, out, scale, zp }),
            (Kind::F32, Kind::F32) => (g.values[out].dtype == Datatype::Fp16
                && g.values[x].dtype != Datatype::Fp16)
                .then_some(QStep::RoundF16 { x, out }),
            _ => {
                return Err(unsupported(
                    index,
                    node,
                    format!(
                        "converting {} to {}",
                        g.values[x].dtype.name(),
                        g.values[out].dtype.name()
                    ),
                ))
            }
        });
    }
    if ki == Kind::F32 && ko == Kind::F32 {
        return Ok(None);
    }
    let (Kind::Q8 { scale: sx, zp: zx }, Kind::Q8 { scale: sy, zp: zy }) = (ki, ko) else {
        return Err(unsupported(
            index,
            node,
            "this operation on quantized values",
        ));
    };
    match op {
        U::Clamp => {
            if (sx, zx) != (sy, zy) {
                return Err(unsupported(
                    index,
                    node,
                    "an int8 clamp that changes quantization",
                ));
            }
            let (lo, hi) = range_of(node.clamp, sy, zy);
            Ok(Some(QStep::Clamp {
                x,
                out,
                lo: lo as i8,
                hi: hi as i8,
            }))
        }
        U::GlobalAvgPooling2d => Ok(Some(QStep::Gap {
            x,
            out,
            zx,
            ratio: sx / sy,
            zy,
            range: range_of(node.clamp, sy, zy),
        })),
        U::Copy => Ok(None),
        _ => Err(unsupported(index, node, "this operation on int8 values")),
    }
}
