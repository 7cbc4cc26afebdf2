//! Activations: relu, gelu (erf and tanh forms), silu, hardswish, hardsigmoid, hardtanh,
//! leaky_relu, elu, softplus, glu, logit, and clamp (scalar and tensor bounds).
//!
//! Each elementwise activation has an f32 form for the flat f32 path, since these run on
//! every feature map of a CNN. NaN inputs propagate, as in PyTorch's
//! `min(max(x, lo), hi)` formulations.

use ptero_core::{normalize_dim, Dims, Error, KernelArgs, KernelRegistry, Result, Scalar};
use ptero_core::{ScalarType, TensorMeta};

use crate::util::elementwise::{result_type, Operand};
use crate::util::unary::{
    cast_scalar, check_can_cast, float_result, promote_with_scalar, round_to, unary, UnaryOp,
};
use crate::util::{
    broadcast_shapes, broadcast_strides, for_each_offset, load_f64, load_i64, store_f64, store_i64,
    ComputeKind,
};

/// `min(max(x, lo), hi)` with C++ `std::min/std::max` semantics: NaN `x` stays NaN.
#[inline]
fn clamp_f64(x: f64, lo: f64, hi: f64) -> f64 {
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

#[inline]
fn clamp_f32(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

/// Fails unless `t` is a floating dtype (activations PyTorch defines only for floats).
fn require_float(a: &KernelArgs<'_>, arg: usize) -> Result<ScalarType> {
    let t = a.meta(arg)?.dtype;
    if t.is_float() {
        Ok(t)
    } else {
        Err(Error::Dtype {
            arg,
            expected: "a floating dtype".into(),
            found: t,
        })
    }
}

/// Fails for bool tensors (ops defined for real numbers only).
fn require_real(a: &KernelArgs<'_>, arg: usize) -> Result<ScalarType> {
    let t = a.meta(arg)?.dtype;
    if t == ScalarType::Bool || !t.is_numeric() {
        Err(Error::Dtype {
            arg,
            expected: "a real (non-bool) numeric dtype".into(),
            found: t,
        })
    } else {
        Ok(t)
    }
}

struct Relu;
impl UnaryOp for Relu {
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        Some(ptero_simd::ops::Unary::Relu)
    }
    fn name(&self) -> &'static str {
        "relu"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        if x < 0.0 {
            0.0
        } else {
            x
        }
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        if x < 0.0 {
            0.0
        } else {
            x
        }
    }
    fn has_int(&self) -> bool {
        true
    }
    #[inline]
    fn int(&self, x: i64) -> i64 {
        x.max(0)
    }
}

fn relu_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let t = require_real(a, 0)?;
    unary(a, 0, 1, t, &Relu)
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

struct Gelu {
    tanh: bool,
}
impl UnaryOp for Gelu {
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        Some(if self.tanh {
            ptero_simd::ops::Unary::GeluTanh
        } else {
            ptero_simd::ops::Unary::Gelu
        })
    }
    fn name(&self) -> &'static str {
        "gelu"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        if self.tanh {
            let inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + libm::tanh(inner))
        } else {
            0.5 * x * (1.0 + libm::erf(x * core::f64::consts::FRAC_1_SQRT_2))
        }
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        if self.tanh {
            let inner = SQRT_2_OVER_PI as f32 * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + libm::tanhf(inner))
        } else {
            0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2))
        }
    }
}

fn gelu_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let t = require_float(a, 0)?;
    let tanh = match a.string(1)? {
        "none" => false,
        "tanh" => true,
        other => {
            // Echo a bounded prefix: a program's strings can be large.
            let shown = other
                .char_indices()
                .nth(32)
                .map_or(other, |(end, _)| &other[..end]);
            return Err(Error::invalid(alloc::format!(
                "gelu: approximate must be 'none' or 'tanh', got '{shown}'"
            )));
        }
    };
    unary(a, 0, 2, t, &Gelu { tanh })
}

struct Silu;
impl UnaryOp for Silu {
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        Some(ptero_simd::ops::Unary::Silu)
    }
    fn name(&self) -> &'static str {
        "silu"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        x / (1.0 + libm::exp(-x))
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        x / (1.0 + libm::expf(-x))
    }
}

struct Hardswish;
impl UnaryOp for Hardswish {
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        Some(ptero_simd::ops::Unary::Hardswish)
    }
    fn name(&self) -> &'static str {
        "hardswish"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        x * clamp_f64(x + 3.0, 0.0, 6.0) / 6.0
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        x * clamp_f32(x + 3.0, 0.0, 6.0) / 6.0
    }
}

struct Hardsigmoid;
impl UnaryOp for Hardsigmoid {
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        Some(ptero_simd::ops::Unary::Hardsigmoid)
    }
    fn name(&self) -> &'static str {
        "hardsigmoid"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        clamp_f64(x + 3.0, 0.0, 6.0) / 6.0
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        clamp_f32(x + 3.0, 0.0, 6.0) / 6.0
    }
}

fn silu_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let t = require_float(a, 0)?;
    unary(a, 0, 1, t, &Silu)
}

fn hardswish_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let t = require_float(a, 0)?;
    unary(a, 0, 1, t, &Hardswish)
}

fn hardsigmoid_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let t = require_float(a, 0)?;
    unary(a, 0, 1, t, &Hardsigmoid)
}

/// Scalar clamp bounds, already converted to the compute dtype. A missing bound is
/// +-infinity (or the i64 extremes); a NaN bound makes every result NaN.
struct Clamp {
    lo: f64,
    hi: f64,
    lo32: f32,
    hi32: f32,
    ilo: i64,
    ihi: i64,
}

impl Clamp {
    fn new(lo: Option<Scalar>, hi: Option<Scalar>) -> Clamp {
        let lo_f = lo.map_or(f64::NEG_INFINITY, Scalar::to_f64);
        let hi_f = hi.map_or(f64::INFINITY, Scalar::to_f64);
        Clamp {
            lo: lo_f,
            hi: hi_f,
            lo32: lo_f as f32,
            hi32: hi_f as f32,
            ilo: lo.map_or(i64::MIN, Scalar::to_i64),
            ihi: hi.map_or(i64::MAX, Scalar::to_i64),
        }
    }
}

impl UnaryOp for Clamp {
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        // NaN bounds make every result NaN: the scalar form handles that.
        (!self.lo32.is_nan() && !self.hi32.is_nan())
            .then_some(ptero_simd::ops::Unary::Clamp(self.lo32, self.hi32))
    }
    fn name(&self) -> &'static str {
        "clamp"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        if self.lo.is_nan() || self.hi.is_nan() {
            return f64::NAN;
        }
        clamp_f64(x, self.lo, self.hi)
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        if self.lo32.is_nan() || self.hi32.is_nan() {
            return f32::NAN;
        }
        clamp_f32(x, self.lo32, self.hi32)
    }
    fn has_int(&self) -> bool {
        true
    }
    #[inline]
    fn int(&self, x: i64) -> i64 {
        let y = x.max(self.ilo);
        y.min(self.ihi)
    }
}

/// A scalar bound converted to compute dtype `t`, rejecting integers it cannot hold
/// (PyTorch's checked scalar conversion).
fn bound(s: Scalar, t: ScalarType, arg: usize) -> Result<Scalar> {
    let c = cast_scalar(s, t);
    if t.is_integral() && c.to_i64() != s.to_i64() {
        return Err(Error::invalid(alloc::format!(
            "argument {arg}: value {} does not fit in {t}",
            s.to_i64()
        )));
    }
    Ok(c)
}

fn hardtanh_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let t = require_real(a, 0)?;
    let lo = bound(a.scalar(1)?, t, 1)?;
    let hi = bound(a.scalar(2)?, t, 2)?;
    // hardtanh never produces NaN from its bounds; plain clamp semantics otherwise.
    unary(a, 0, 3, t, &Clamp::new(Some(lo), Some(hi)))
}

fn clamp_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let xd = require_real(a, 0)?;
    let (lo, hi) = (a.opt_scalar(1)?, a.opt_scalar(2)?);
    if lo.is_none() && hi.is_none() {
        return Err(Error::invalid(
            "clamp: at least one of 'min' or 'max' must not be None",
        ));
    }
    let mut c = xd;
    for s in [lo, hi].into_iter().flatten() {
        c = promote_with_scalar(c, s);
    }
    let lo = lo.map(|s| bound(s, c, 1)).transpose()?;
    let hi = hi.map(|s| bound(s, c, 2)).transpose()?;
    unary(a, 0, 3, c, &Clamp::new(lo, hi))
}

struct LeakyRelu {
    slope: f64,
    slope32: f32,
}
impl UnaryOp for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky_relu"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        if x > 0.0 {
            x
        } else {
            x * self.slope
        }
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        if x > 0.0 {
            x
        } else {
            x * self.slope32
        }
    }
}

fn leaky_relu_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let t = require_float(a, 0)?;
    let slope = round_to(t, a.scalar(1)?.to_f64());
    let op = LeakyRelu {
        slope,
        slope32: slope as f32,
    };
    unary(a, 0, 2, t, &op)
}

struct Elu {
    pos: f64,
    neg: f64,
    input: f64,
}
impl UnaryOp for Elu {
    fn name(&self) -> &'static str {
        "elu"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        if x <= 0.0 {
            libm::expm1(x * self.input) * self.neg
        } else {
            x * self.pos
        }
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        if x <= 0.0 {
            libm::expm1f(x * self.input as f32) * self.neg as f32
        } else {
            x * self.pos as f32
        }
    }
}

fn elu_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let t = require_float(a, 0)?;
    let (alpha, scale, input) = (
        a.scalar(1)?.to_f64(),
        a.scalar(2)?.to_f64(),
        a.scalar(3)?.to_f64(),
    );
    let op = Elu {
        pos: scale,
        neg: alpha * scale,
        input,
    };
    unary(a, 0, 4, t, &op)
}

struct Softplus {
    beta: f64,
    threshold: f64,
}
impl UnaryOp for Softplus {
    fn name(&self) -> &'static str {
        "softplus"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        if x * self.beta > self.threshold {
            x
        } else {
            libm::log1p(libm::exp(x * self.beta)) / self.beta
        }
    }
}

fn softplus_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let t = require_float(a, 0)?;
    let op = Softplus {
        beta: round_to(t, a.scalar(1)?.to_f64()),
        threshold: round_to(t, a.scalar(2)?.to_f64()),
    };
    unary(a, 0, 3, t, &op)
}

struct Logit {
    eps: Option<f64>,
}
impl UnaryOp for Logit {
    fn name(&self) -> &'static str {
        "logit"
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        // A negative eps means no clamping, as in PyTorch.
        let x = match self.eps {
            Some(e) if e >= 0.0 => clamp_f64(x, e, 1.0 - e),
            _ => x,
        };
        libm::log(x / (1.0 - x))
    }
}

fn logit_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let xd = a.meta(0)?.dtype;
    let c = float_result(xd);
    let eps = a.opt_double(1)?.map(|e| round_to(c, e));
    unary(a, 0, 2, c, &Logit { eps })
}

fn glu_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let xd = require_float(a, 0)?;
    let xm: &TensorMeta = a.meta(0)?;
    if xm.dim() == 0 {
        return Err(Error::invalid(
            "glu: input must have at least one dimension",
        ));
    }
    let dim = normalize_dim(a.int(1)?, xm.dim())?;
    let mut shape = xm.dims();
    if !shape[dim].is_multiple_of(2) {
        return Err(Error::shape(alloc::format!(
            "glu: halving dimension {dim} of size {} requires an even size",
            shape[dim]
        )));
    }
    let half = shape[dim] / 2;
    shape[dim] = half;
    let xs = a.meta(0)?.stride_dims();
    a.resize(2, &shape)?;
    let od = a.meta(2)?.dtype;
    if !od.is_float() {
        return Err(Error::Dtype {
            arg: 2,
            expected: "a floating dtype".into(),
            found: od,
        });
    }
    if shape.contains(&0) {
        return Ok(());
    }
    let os = a.meta(2)?.stride_dims();
    let second = half * xs[dim];
    let xv = a.tensor(0)?;
    let ov = a.out(2)?;
    let (xb, ob) = (xv.bytes, &mut *ov.bytes);
    for_each_offset(&shape, [&os, &xs], |[oo, xo]| {
        let x = load_f64(xb, xd, xo);
        let g = load_f64(xb, xd, xo + second);
        store_f64(ob, od, oo, round_to(xd, x * (1.0 / (1.0 + libm::exp(-g)))));
    });
    Ok(())
}

/// `clamp(self, min: Tensor?, max: Tensor?)`, broadcasting all three.
fn clamp_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let xd = require_real(a, 0)?;
    let (has_lo, has_hi) = (a.opt_meta(1)?.is_some(), a.opt_meta(2)?.is_some());
    if !has_lo && !has_hi {
        return Err(Error::invalid(
            "clamp: at least one of 'min' or 'max' must not be None",
        ));
    }
    let mut c = xd;
    let mut shape = a.meta(0)?.dims();
    for (i, present) in [(1, has_lo), (2, has_hi)] {
        if present {
            let r = result_type(a, Operand::Tensor(0), Operand::Tensor(i))?;
            c = c.promote(r).ok_or_else(|| {
                Error::invalid(alloc::format!("clamp: cannot promote {c} and {r}"))
            })?;
            shape = broadcast_shapes(&shape, a.meta(i)?.sizes())?;
        }
    }
    if c == ScalarType::Bool {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a real (non-bool) numeric dtype".into(),
            found: c,
        });
    }
    a.resize(3, &shape)?;
    let od = a.meta(3)?.dtype;
    check_can_cast(3, c, od)?;
    if shape.contains(&0) {
        return Ok(());
    }
    let zeros = Dims::filled(shape.len(), 0).unwrap_or_default();
    let st = |i: usize, present: bool| -> Result<Dims> {
        if present {
            broadcast_strides(a.meta(i)?, &shape)
        } else {
            Ok(zeros)
        }
    };
    let (xs, ls, hs) = (st(0, true)?, st(1, has_lo)?, st(2, has_hi)?);
    let os = a.meta(3)?.stride_dims();
    let xv = a.tensor(0)?;
    let lv = a.opt_tensor(1)?;
    let hv = a.opt_tensor(2)?;
    let (lb, ld) = lv.as_ref().map_or((&[][..], xd), |t| (t.bytes, t.dtype()));
    let (hb, hd) = hv.as_ref().map_or((&[][..], xd), |t| (t.bytes, t.dtype()));
    let ov = a.out(3)?;
    let ob = &mut *ov.bytes;
    if ComputeKind::of(c)? == ComputeKind::Float {
        let ld_ = |b: &[u8], t: ScalarType, o: usize| {
            let v = load_f64(b, t, o);
            if t == c {
                v
            } else {
                round_to(c, v)
            }
        };
        for_each_offset(&shape, [&os, &xs, &ls, &hs], |[oo, xo, lo, ho]| {
            let mut v = ld_(xv.bytes, xd, xo);
            // NaN bounds give NaN, like torch.maximum/minimum.
            if has_lo {
                let l = ld_(lb, ld, lo);
                v = if v.is_nan() || l.is_nan() {
                    f64::NAN
                } else {
                    v.max(l)
                };
            }
            if has_hi {
                let h = ld_(hb, hd, ho);
                v = if v.is_nan() || h.is_nan() {
                    f64::NAN
                } else {
                    v.min(h)
                };
            }
            store_f64(ob, od, oo, v);
        });
    } else {
        for_each_offset(&shape, [&os, &xs, &ls, &hs], |[oo, xo, lo, ho]| {
            let mut v = load_i64(xv.bytes, xd, xo);
            if has_lo {
                v = v.max(load_i64(lb, ld, lo));
            }
            if has_hi {
                v = v.min(load_i64(hb, hd, ho));
            }
            store_i64(ob, od, oo, v);
        });
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    let ops: &[(&str, ptero_core::KernelFn)] = &[
        ("aten::relu.out", relu_out),
        ("aten::gelu.out", gelu_out),
        ("aten::silu.out", silu_out),
        ("aten::hardswish.out", hardswish_out),
        ("aten::hardsigmoid.out", hardsigmoid_out),
        ("aten::hardtanh.out", hardtanh_out),
        ("aten::leaky_relu.out", leaky_relu_out),
        ("aten::elu.out", elu_out),
        ("aten::softplus.out", softplus_out),
        ("aten::glu.out", glu_out),
        ("aten::logit.out", logit_out),
        ("aten::clamp.out", clamp_out),
        ("aten::clamp.Tensor_out", clamp_tensor_out),
    ];
    for &(name, k) in ops {
        reg.register(name, k);
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    fn t(dt: ScalarType, s: &[usize], v: &[f64]) -> Arg {
        Arg::T(OwnedTensor::from_f64(dt, s, v))
    }

    const XS: [f64; 9] = [-4.0, -2.5, -1.0, -0.25, 0.0, 0.5, 2.0, 3.5, f64::NAN];

    fn erf_gelu(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt()))
    }
    fn tanh_gelu(x: f64) -> f64 {
        let k = (2.0 / core::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
    }

    #[test]
    fn elementwise_match_reference() {
        type Case = (&'static str, Vec<Arg>, fn(f64) -> f64);
        let cases: Vec<Case> = vec![
            ("aten::relu.out", vec![], |x| if x < 0.0 { 0.0 } else { x }),
            ("aten::gelu.out", vec![Arg::Str("none".into())], erf_gelu),
            ("aten::gelu.out", vec![Arg::Str("tanh".into())], tanh_gelu),
            ("aten::silu.out", vec![], |x| x / (1.0 + (-x).exp())),
            ("aten::hardswish.out", vec![], |x| {
                x * (x + 3.0).clamp(0.0, 6.0) / 6.0
            }),
            ("aten::hardsigmoid.out", vec![], |x| {
                (x + 3.0).clamp(0.0, 6.0) / 6.0
            }),
            (
                "aten::hardtanh.out",
                vec![Arg::Double(-1.0), Arg::Double(1.0)],
                |x| x.clamp(-1.0, 1.0),
            ),
            ("aten::leaky_relu.out", vec![Arg::Double(0.1)], |x| {
                if x > 0.0 {
                    x
                } else {
                    x * 0.1
                }
            }),
            (
                "aten::elu.out",
                vec![Arg::Double(1.5), Arg::Int(2), Arg::Double(0.5)],
                |x| {
                    if x <= 0.0 {
                        (x * 0.5).exp_m1() * 3.0
                    } else {
                        2.0 * x
                    }
                },
            ),
            ("aten::softplus.out", vec![Arg::Int(2), Arg::Int(3)], |x| {
                if 2.0 * x > 3.0 {
                    x
                } else {
                    (2.0 * x).exp().ln_1p() / 2.0
                }
            }),
            ("aten::clamp.out", vec![Arg::Double(-1.5), Arg::None], |x| {
                if x < -1.5 {
                    -1.5
                } else {
                    x
                }
            }),
            (
                "aten::clamp.out",
                vec![Arg::Double(-1.0), Arg::Double(2.0)],
                |x| x.clamp(-1.0, 2.0),
            ),
        ];
        for (op, params, f) in cases {
            for dt in [Float, Double, Half] {
                let xr: Vec<f64> = XS
                    .iter()
                    .map(|&x| crate::util::unary::round_to(dt, x))
                    .collect();
                let want: Vec<f64> = xr.iter().map(|&x| f(x)).collect();
                let mut args = vec![t(dt, &[3, 3], &xr)];
                args.extend(params.iter().cloned());
                args.push(Arg::Out(dt, vec![3, 3]));
                let out = run_op(op, args).unwrap_or_else(|e| panic!("{op} {dt}: {e}"));
                let tol = if dt == Half { 4e-3 } else { 1e-6 };
                assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
                // Same again through the general (strided) path.
                let nc = OwnedTensor::from_f64(dt, &[3, 3], &xr).with_dim_order(&[1, 0]);
                let mut args = vec![Arg::T(nc)];
                args.extend(params.iter().cloned());
                args.push(Arg::Out(dt, vec![3, 3]));
                let out = run_op(op, args).unwrap_or_else(|e| panic!("{op} {dt}: {e}"));
                assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
            }
        }
    }

    #[test]
    fn table() {
        let nan = f64::NAN;
        type Case = (&'static str, Vec<Arg>, Vec<usize>, Vec<f64>);
        let cases: Vec<Case> = vec![
            (
                "aten::relu.out",
                vec![t(Long, &[3], &[-3., 0., 4.]), Arg::Out(Long, vec![3])],
                vec![3],
                vec![0., 0., 4.],
            ),
            (
                "aten::hardtanh.out",
                vec![
                    t(Int, &[3], &[-9., 1., 9.]),
                    Arg::Int(-2),
                    Arg::Int(3),
                    Arg::Out(Int, vec![3]),
                ],
                vec![3],
                vec![-2., 1., 3.],
            ),
            // An int tensor clamped with a float bound computes in float.
            (
                "aten::clamp.out",
                vec![
                    t(Long, &[3], &[-2., 1., 5.]),
                    Arg::Double(0.5),
                    Arg::None,
                    Arg::Out(Float, vec![3]),
                ],
                vec![3],
                vec![0.5, 1., 5.],
            ),
            (
                "aten::clamp.out",
                vec![
                    t(Char, &[3], &[-100., 1., 100.]),
                    Arg::None,
                    Arg::Int(50),
                    Arg::Out(Char, vec![3]),
                ],
                vec![3],
                vec![-100., 1., 50.],
            ),
            // min > max: everything becomes max.
            (
                "aten::clamp.out",
                vec![
                    t(Float, &[2], &[0., 10.]),
                    Arg::Int(5),
                    Arg::Int(1),
                    Arg::Out(Float, vec![2]),
                ],
                vec![2],
                vec![1., 1.],
            ),
            (
                "aten::clamp.out",
                vec![
                    t(Float, &[2], &[0., 10.]),
                    Arg::Double(nan),
                    Arg::Int(1),
                    Arg::Out(Float, vec![2]),
                ],
                vec![2],
                vec![nan, nan],
            ),
            (
                "aten::clamp.Tensor_out",
                vec![
                    t(Float, &[2, 3], &[-5., 0., 5., -5., 0., 5.]),
                    t(Float, &[3], &[-1., 1., nan]),
                    t(Float, &[2, 1], &[4., 0.]),
                    Arg::Out(Float, vec![2, 3]),
                ],
                vec![2, 3],
                vec![-1., 1., nan, -1., 0., nan],
            ),
            (
                "aten::clamp.Tensor_out",
                vec![
                    t(Int, &[3], &[-5., 0., 5.]),
                    Arg::None,
                    t(Long, &[], &[2.]),
                    Arg::Out(Long, vec![3]),
                ],
                vec![3],
                vec![-5., 0., 2.],
            ),
            (
                "aten::glu.out",
                vec![
                    t(Float, &[2, 2], &[1., 2., 0., 100.]),
                    Arg::Int(-1),
                    Arg::Out(Float, vec![2, 1]),
                ],
                vec![2, 1],
                vec![1. / (1. + (-2f64).exp()), 0.],
            ),
            (
                "aten::glu.out",
                vec![
                    t(Double, &[2, 2], &[1., 2., 0., 100.]),
                    Arg::Int(0),
                    Arg::Out(Double, vec![1, 2]),
                ],
                vec![1, 2],
                vec![0.5, 2.0],
            ),
            (
                "aten::logit.out",
                vec![
                    t(Float, &[3], &[0.25, 0.0, 1.0]),
                    Arg::Double(0.1),
                    Arg::Out(Float, vec![3]),
                ],
                vec![3],
                vec![
                    (1.0f64 / 3.0).ln(),
                    (0.1f64 / 0.9).ln(),
                    (0.9f64 / 0.1).ln(),
                ],
            ),
            (
                "aten::logit.out",
                vec![
                    t(Float, &[2], &[0.5, 2.0]),
                    Arg::None,
                    Arg::Out(Float, vec![2]),
                ],
                vec![2],
                vec![0., nan],
            ),
            (
                "aten::relu.out",
                vec![t(Float, &[], &[-3.]), Arg::Out(Float, vec![])],
                vec![],
                vec![0.],
            ),
            (
                "aten::gelu.out",
                vec![
                    t(Float, &[2, 0], &[]),
                    Arg::Str("none".into()),
                    Arg::Out(Float, vec![2, 0]),
                ],
                vec![2, 0],
                vec![],
            ),
        ];
        for (op, args, shape, want) in cases {
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(out.tensors[0].sizes, shape, "{op}");
            assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 1e-6);
        }
    }

    #[test]
    fn channels_last() {
        let vals: Vec<f64> = (0..24).map(|x| x as f64 * 0.5 - 6.0).collect();
        let a = OwnedTensor::from_f64(Float, &[1, 2, 3, 4], &vals).with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::hardswish.out",
            vec![Arg::T(a), Arg::Out(Float, vec![1, 2, 3, 4])],
        )
        .unwrap();
        let want: Vec<f64> = vals
            .iter()
            .map(|&x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0)
            .collect();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 1e-6);
    }

    #[test]
    fn errors() {
        let f = || t(Float, &[2], &[1., 2.]);
        let cases: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::gelu.out",
                vec![f(), Arg::Str("fast".into()), Arg::Out(Float, vec![2])],
            ),
            (
                "aten::gelu.out",
                vec![
                    t(Long, &[1], &[1.]),
                    Arg::Str("none".into()),
                    Arg::Out(Float, vec![1]),
                ],
            ),
            (
                "aten::clamp.out",
                vec![f(), Arg::None, Arg::None, Arg::Out(Float, vec![2])],
            ),
            (
                "aten::clamp.out",
                vec![
                    t(Long, &[1], &[1.]),
                    Arg::Double(0.5),
                    Arg::None,
                    Arg::Out(Long, vec![1]),
                ],
            ),
            (
                "aten::clamp.out",
                vec![
                    t(Char, &[1], &[1.]),
                    Arg::Int(1000),
                    Arg::None,
                    Arg::Out(Char, vec![1]),
                ],
            ),
            (
                "aten::glu.out",
                vec![
                    t(Float, &[3], &[1., 2., 3.]),
                    Arg::Int(0),
                    Arg::Out(Float, vec![1]),
                ],
            ),
            (
                "aten::glu.out",
                vec![f(), Arg::Int(3), Arg::Out(Float, vec![1])],
            ),
            (
                "aten::relu.out",
                vec![t(Bool, &[1], &[1.]), Arg::Out(Bool, vec![1])],
            ),
            (
                "aten::clamp.Tensor_out",
                vec![
                    f(),
                    t(Float, &[3], &[0., 0., 0.]),
                    Arg::None,
                    Arg::Out(Float, vec![2]),
                ],
            ),
        ];
        for (op, args) in cases {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }
}
