//! Quantized values and the steps that compute on them, with XNNPACK's integer
//! arithmetic (`docs/notes-xnnpack-nodes.md` §3, §6, §9).
//!
//! Values live in the same f32 buffers as the rest: an int8 value packs four elements
//! per f32 slot; a dynamically quantized (`qdint8`) value holds its int8 elements and,
//! after them, a `(scale, zero point)` pair per row.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

use ptero_gemm::{
    q8_depthwise_packed, q_conv, qd8_gemm, qs8_gemm, quantize, quantize_rows, requantize, QConv,
    QConvOut, QPacked, Q_CONV_MAX_K,
};
use ptero_simd::Parallel;

use crate::graph::{Datatype, Quant, Value};
use crate::plan::Shape;
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
                // Room for the most rows any ordering of the declared dims gives: the
                // value may reach a step in another layout than it was declared in.
                let mut d: Vec<usize> = dims.to_vec();
                d.sort_unstable();
                let least = inner(&d[..nonbatch.min(d.len())], nonbatch).max(1);
                // Saturates: the memory budget then refuses an impossible size.
                bound
                    .div_ceil(4)
                    .saturating_add((bound / least).saturating_mul(2))
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
pub(crate) fn range_of(clamp: Option<(f32, f32)>, scale: f32, zp: i32) -> (i32, i32) {
    match clamp {
        None => (-128, 127),
        Some((lo, hi)) => {
            let (lo, hi) = (
                quantize_scalar(lo, scale, zp),
                quantize_scalar(hi, scale, zp),
            );
            // A negative scale (a damaged file) turns the range over; keep it a range
            // so that no clamp can panic.
            (lo.min(hi), hi.max(lo))
        }
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
    pub(crate) w: Vec<i8>,
    /// Per output channel and tap: the filter's sum over input channels.
    pub(crate) wsum: Vec<i32>,
    pub(crate) bias: Vec<i32>,
    pub(crate) scale: Vec<f32>,
    pub(crate) zx: i32,
    pub(crate) zy: i32,
    pub(crate) range: (i32, i32),
    /// Dense convolutions (one group) as a product of im2col rows with the filter
    /// `[cout, kh·kw·cin]`, and the bias with the static zero point folded in.
    pub(crate) gemm: Option<(QPacked, Vec<i32>)>,
    /// Depthwise (multiplier 1, static int8) weights prepared for the register kernel.
    pub(crate) dw: Option<ptero_gemm::QDwWeights>,
}

/// Runs a closure inside [`ptero_simd::dispatch`], compiled for the selected level.
struct Run<F: FnOnce()>(F);

impl<F: FnOnce()> ptero_simd::SimdOp for Run<F> {
    type Output = ();
    #[inline(always)]
    fn eval<S: ptero_simd::Simd>(self, _s: S) {
        (self.0)()
    }
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

/// XNNPACK's int8 addition in fixed point, with both clamps folded into one.
#[derive(Clone, Copy)]
struct AddFixed {
    ma: i32,
    mb: i32,
    bias: i32,
    shift: u32,
    zy: i32,
    lo: i32,
    hi: i32,
}

impl AddFixed {
    #[inline(always)]
    fn run(&self, out: &mut [i8], a: &[i8], b: &[i8]) {
        // A shift past 31 is masked rather than trusted (the plan bounds it).
        let shift = self.shift & 31;
        for ((d, &a), &b) in out.iter_mut().zip(a).zip(b) {
            let acc = self
                .bias
                .wrapping_add(i32::from(a).wrapping_mul(self.ma))
                .wrapping_add(i32::from(b).wrapping_mul(self.mb));
            *d = (acc >> shift)
                .wrapping_add(self.zy)
                .max(self.lo)
                .min(self.hi) as i8;
        }
    }
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
    /// A convolution of dynamically quantized images, with f32 results.
    Qd8Conv {
        conv: Box<Qs8Conv>,
        bias: Option<usize>,
        clamp: (f32, f32),
    },
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
            QStep::Conv(c) | QStep::Qd8Conv { conv: c, .. } => c.out,
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
            QStep::Qd8Conv { conv, bias, .. } => {
                f(conv.x, false);
                if let Some(b) = bias {
                    f(*b, true);
                }
            }
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
            QStep::Conv(c) | QStep::Qd8Conv { conv: c, .. } => {
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
            QStep::Qd8Conv { conv, bias, clamp } => {
                let (sx, so) = (io.shape(conv.x), io.shape(conv.out));
                let (xs, p) = io.read_qd8(conv.x)?;
                let bias = bias.map(|b| &io.consts[b][..]);
                if p.len() < 2 * sx.dims[0] || bias.is_some_and(|b| b.len() < conv.cout) {
                    return Err(room(conv.x));
                }
                let n = so.numel().unwrap_or(0);
                let ys = y.get_mut(..n).ok_or_else(|| room(conv.out))?;
                conv.run_qd8(par, xs, p, sx, ys, so, bias, *clamp);
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
                let (lo, hi) = *range;
                let f = |va: i32, vb: i32| -> i8 {
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
                    v.clamp(lo, hi) as i8
                };
                if sa == so && sb == so {
                    if let QBin::Add {
                        ma,
                        mb,
                        bias,
                        shift,
                    } = *op
                    {
                        // Its own loop, free of the Mul branch's float rounding, so that
                        // it vectorises: this is a residual connection's whole cost.
                        let fix = AddFixed {
                            ma,
                            mb,
                            bias,
                            shift,
                            zy: *zy,
                            lo: lo.max(-128),
                            hi: hi.min(127),
                        };
                        ptero_simd::for_each_chunk(par, ys, &|r, o| {
                            ptero_simd::dispatch(Run(|| fix.run(o, &xa[r.clone()], &xb[r.clone()])))
                        });
                        return Ok(());
                    }
                    ptero_simd::for_each_chunk(par, ys, &|r, o| {
                        ptero_simd::dispatch(Run(|| {
                            for ((d, &a), &b) in
                                o.iter_mut().zip(&xa[r.clone()]).zip(&xb[r.clone()])
                            {
                                *d = f(i32::from(a), i32::from(b));
                            }
                        }))
                    });
                    return Ok(());
                }
                let st = [bstrides(sa, so), bstrides(sb, so)];
                for_each_index(so, st, |i, [oa, ob]| {
                    ys[i] = f(i32::from(xa[oa]), i32::from(xb[ob]));
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
    /// Static int8 in and out.
    fn run(&self, par: &dyn Parallel, x: &[i8], sx: Shape, y: &mut [i8], so: Shape) {
        if let Some((w, b)) = &self.gemm {
            if self.kh * self.kw * self.cin <= Q_CONV_MAX_K {
                let out = QConvOut::I8 {
                    y,
                    b,
                    zx: self.zx,
                    zp: self.zy,
                    range: self.range,
                };
                q_conv(par, &self.geometry(sx, so), x, w, out);
                return;
            }
        }
        if self.depthwise && self.cin == self.cout {
            let g = ptero_gemm::QDepthwise {
                n: sx.dims[0],
                ih: sx.dims[1],
                iw: sx.dims[2],
                oh: so.dims[1],
                ow: so.dims[2],
                c: self.cout,
                kh: self.kh,
                kw: self.kw,
                stride: self.stride,
                pad: self.pad,
                dilation: self.dilation,
            };
            match &self.dw {
                Some(p) => {
                    q8_depthwise_packed(par, &g, x, p, self.zx, self.zy, self.range, y);
                }
                None => ptero_gemm::q8_depthwise(
                    par,
                    &g,
                    x,
                    &self.w,
                    &self.bias,
                    &self.scale,
                    self.zx,
                    self.zy,
                    self.range,
                    y,
                ),
            }
            return;
        }
        self.rows(par, x, sx, y, so, &|_, xb, ih, iw, oy, ox, yp| {
            self.pixel(xb, ih, iw, oy, ox, self.zx, |oc, acc| {
                yp[oc] = requantize(acc, self.scale[oc], self.zy, self.range)
            })
        });
    }

    /// Dynamically quantized images (a scale and zero point per image) to f32:
    /// `((acc · s_x) · s_w[oc]) + bias[oc]`, clamped.
    #[allow(clippy::too_many_arguments)]
    fn run_qd8(
        &self,
        par: &dyn Parallel,
        x: &[i8],
        params: &[f32],
        sx: Shape,
        y: &mut [f32],
        so: Shape,
        bias: Option<&[f32]>,
        clamp: (f32, f32),
    ) {
        if let Some((w, _)) = &self.gemm {
            if self.kh * self.kw * self.cin <= Q_CONV_MAX_K {
                let out = QConvOut::F32 {
                    y,
                    params,
                    bias,
                    clamp,
                };
                q_conv(par, &self.geometry(sx, so), x, w, out);
                return;
            }
        }
        self.rows(par, x, sx, y, so, &|b, xb, ih, iw, oy, ox, yp| {
            let (s, z) = (params[2 * b], params[2 * b + 1] as i32);
            self.pixel(xb, ih, iw, oy, ox, z, |oc, acc| {
                let v = libm::fmaf(
                    acc as f32 * s,
                    self.scale[oc],
                    bias.map_or(0.0, |bs| bs[oc]),
                );
                yp[oc] = v.max(clamp.0).min(clamp.1);
            })
        });
    }

    /// The dense convolution's geometry for input and output shapes.
    fn geometry(&self, sx: Shape, so: Shape) -> QConv {
        QConv {
            n: sx.dims[0],
            ih: sx.dims[1],
            iw: sx.dims[2],
            oh: so.dims[1],
            ow: so.dims[2],
            cin: self.cin,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
        }
    }

    /// Output rows over the threads; `f(image, its input, ih, iw, oy, ox, pixel out)`.
    #[allow(clippy::type_complexity)]
    fn rows<T: Send, F>(
        &self,
        par: &dyn Parallel,
        x: &[i8],
        sx: Shape,
        y: &mut [T],
        so: Shape,
        f: &F,
    ) where
        F: Fn(usize, &[i8], usize, usize, usize, usize, &mut [T]) + Sync,
    {
        let (ih, iw) = (sx.dims[1], sx.dims[2]);
        let (oh, ow) = (so.dims[1], so.dims[2]);
        let row = ow * self.cout;
        if row == 0 {
            return;
        }
        let img_in = ih * iw * self.cin;
        ptero_simd::for_each_chunk_by(par, y, row, &|r, part| {
            // Compiled for the selected level, so the integer loops vectorise.
            ptero_simd::dispatch(Run(|| {
                for (j, yrow) in part.chunks_exact_mut(row).enumerate() {
                    let orow = r.start / row + j;
                    let (b, oy) = (orow / oh, orow % oh);
                    let xb = &x[b * img_in..(b + 1) * img_in];
                    for ox in 0..ow {
                        f(
                            b,
                            xb,
                            ih,
                            iw,
                            oy,
                            ox,
                            &mut yrow[ox * self.cout..(ox + 1) * self.cout],
                        );
                    }
                }
            }))
        });
    }

    /// One output pixel: `out(channel, bias + Σ (x − zx) · w)` for every channel.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn pixel(
        &self,
        x: &[i8],
        ih: usize,
        iw: usize,
        oy: usize,
        ox: usize,
        zx: i32,
        mut out: impl FnMut(usize, i32),
    ) {
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
                    if mult == 1 {
                        let xs = &x[at + c0..at + c1];
                        for ((a, &xv), &wv) in acc[..c1 - c0].iter_mut().zip(xs).zip(w) {
                            *a = a.wrapping_add((i32::from(xv) - zx) * i32::from(wv));
                        }
                        continue;
                    }
                    for (j, a) in acc[..c1 - c0].iter_mut().enumerate() {
                        let ci = (c0 + j) / mult.max(1);
                        *a = a.wrapping_add(
                            (i32::from(x[at + ci]) - zx).wrapping_mul(i32::from(w[j])),
                        );
                    }
                }
                for (j, &a) in acc[..c1 - c0].iter().enumerate() {
                    out(c0 + j, a);
                }
            }
            return;
        }
        let cin_g = self.cin / self.groups.max(1);
        let cout_g = self.cout / self.groups.max(1);
        for oc in 0..self.cout {
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
                    .wrapping_sub(zx.wrapping_mul(self.wsum[oc * taps + t]));
            }
            out(oc, acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised addition equals the formula it replaced, clamps applied one
    /// after the other, for every pair of int8 inputs.
    #[test]
    fn fixed_point_add_matches_the_reference_formula_on_every_input_pair() {
        let cases = [
            // (ma, mb, bias, shift, zy, lo, hi)
            (1 << 19, 1 << 19, 1 << 19, 20, 0, -128, 127),
            (-(3 << 17), 5 << 16, (1 << 19) - 77, 20, -7, -128, 127),
            (123_456, -654_321, 1 << 22, 23, 12, -20, 90),
            (1 << 29, 1 << 29, 1 << 29, 30, 3, -128, 127),
        ];
        let a: Vec<i8> = (0..=255u8).map(|v| v as i8).collect();
        for (ma, mb, bias, shift, zy, lo, hi) in cases {
            let fix = AddFixed {
                ma,
                mb,
                bias,
                shift,
                zy,
                lo,
                hi,
            };
            for b in i8::MIN..=i8::MAX {
                let bs = vec![b; a.len()];
                let mut out = vec![0i8; a.len()];
                fix.run(&mut out, &a, &bs);
                for (&x, &got) in a.iter().zip(&out) {
                    let acc = bias
                        .wrapping_add(i32::from(x).wrapping_mul(ma))
                        .wrapping_add(i32::from(b).wrapping_mul(mb));
                    let want = (acc >> shift)
                        .wrapping_add(zy)
                        .clamp(-128, 127)
                        .clamp(lo, hi);
                    assert_eq!(i32::from(got), want, "a={x} b={b} ma={ma} mb={mb}");
                }
            }
        }
    }

    #[test]
    fn an_output_range_stays_a_range_whatever_the_scale() {
        assert_eq!(range_of(Some((0.0, 6.0)), 0.1, -10), (-10, 50));
        let (lo, hi) = range_of(Some((0.0, 6.0)), -0.1, 0);
        assert!(lo <= hi);
        assert_eq!(range_of(None, 0.5, 3), (-128, 127));
    }
}
