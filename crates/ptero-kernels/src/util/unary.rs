//! The engine behind one-input elementwise kernels (unary math, activations, predicates),
//! plus PyTorch's casting rules for out-arguments and scalars.
//!
//! An op is a [`UnaryOp`]: a float form (computed in f64 and rounded on store), and
//! optionally integer and bool forms. Ops with parameters (hardtanh's bounds, elu's alpha)
//! are structs implementing the trait, so the loops are monomorphised and inlined.

use half::{bf16, f16};
use ptero_core::{Error, KernelArgs, Result, Scalar, ScalarType};

use super::{
    for_each_offset, load_bool, load_f64, load_i64, same_layout, store_bool, store_f64, store_i64,
    ComputeKind,
};

/// `torch.can_cast(from, to)`: no float results into integer outs, no numbers into bool.
pub fn can_cast(from: ScalarType, to: ScalarType) -> bool {
    if from.is_float() && (to.is_integral() || to == ScalarType::Bool) {
        return false;
    }
    !(from.is_integral() && to == ScalarType::Bool)
}

/// Fails unless a result computed in `from` may be written to out argument `arg` of `to`.
pub fn check_can_cast(arg: usize, from: ScalarType, to: ScalarType) -> Result<()> {
    if can_cast(from, to) {
        Ok(())
    } else {
        Err(Error::Dtype {
            arg,
            expected: alloc::format!("a dtype {from} can be cast to"),
            found: to,
        })
    }
}

/// The dtype of `tensor op scalar` in PyTorch: the tensor's, unless the scalar is of a
/// higher category (a float scalar with an integer tensor gives float32).
pub fn promote_with_scalar(t: ScalarType, s: Scalar) -> ScalarType {
    let cat = |t: ScalarType| {
        if t == ScalarType::Bool {
            0
        } else if t.is_integral() {
            1
        } else {
            2
        }
    };
    let st = s.dtype();
    if cat(st) > cat(t) {
        if cat(st) == 2 {
            ScalarType::Float
        } else {
            ScalarType::Long
        }
    } else {
        t
    }
}

/// `v` rounded to the precision of float dtype `t` (identity for f64 and non-floats).
#[inline]
pub fn round_to(t: ScalarType, v: f64) -> f64 {
    match t {
        ScalarType::Float => v as f32 as f64,
        ScalarType::Half => f16::from_f64(v).to_f64(),
        ScalarType::BFloat16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// `v` wrapped to the range of integer dtype `t`, as a C++ cast does.
#[inline]
pub fn wrap_to(t: ScalarType, v: i64) -> i64 {
    let mut buf = [0u8; 8];
    store_i64(&mut buf, t, 0, v);
    load_i64(&buf, t, 0)
}

/// A scalar converted to dtype `t` the way PyTorch converts scalar operands before
/// computing in `t` (so `f32_tensor == 0.1` compares against `0.1f32`).
pub fn cast_scalar(s: Scalar, t: ScalarType) -> Scalar {
    if t.is_float() {
        Scalar::Double(round_to(t, s.to_f64()))
    } else if t == ScalarType::Bool {
        Scalar::Bool(s.to_f64() != 0.0)
    } else if t.is_integral() {
        Scalar::Int(wrap_to(t, s.to_i64()))
    } else {
        s
    }
}

/// Writes scalar `s` into element `i` of `dtype` storage.
#[inline]
pub fn store_scalar(bytes: &mut [u8], dtype: ScalarType, i: usize, s: Scalar) {
    match s {
        Scalar::Int(v) => store_i64(bytes, dtype, i, v),
        Scalar::Double(v) => store_f64(bytes, dtype, i, v),
        Scalar::Bool(v) => store_bool(bytes, dtype, i, v),
    }
}

/// One elementwise function of one argument.
pub trait UnaryOp {
    fn name(&self) -> &'static str;
    /// The float form (inputs are f64 values of the compute dtype).
    fn float(&self, x: f64) -> f64;
    /// The f32 form for the flat f32 path; must agree with `float` up to rounding.
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        self.float(x as f64) as f32
    }
    /// The vectorised f32 form, when `ptero-simd` has one (within a few ulp of `f32`).
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        None
    }
    /// Whether integer compute is supported (else integer inputs are rejected).
    fn has_int(&self) -> bool {
        false
    }
    #[inline]
    fn int(&self, x: i64) -> i64 {
        x
    }
    /// Whether bool compute is supported (else bool inputs are rejected).
    fn has_bool(&self) -> bool {
        false
    }
    #[inline]
    fn boolean(&self, x: bool) -> bool {
        x
    }
}

/// A [`UnaryOp`] from plain functions.
#[derive(Clone, Copy)]
pub struct UnaryFns {
    pub name: &'static str,
    pub float: fn(f64) -> f64,
    pub f32: Option<fn(f32) -> f32>,
    pub int: Option<fn(i64) -> i64>,
    pub boolean: Option<fn(bool) -> bool>,
    pub simd: Option<ptero_simd::ops::Unary>,
}

impl UnaryFns {
    /// A float-only function.
    pub const fn float(name: &'static str, float: fn(f64) -> f64) -> UnaryFns {
        UnaryFns {
            name,
            float,
            f32: None,
            int: None,
            boolean: None,
            simd: None,
        }
    }
}

impl UnaryOp for UnaryFns {
    fn name(&self) -> &'static str {
        self.name
    }
    #[inline]
    fn float(&self, x: f64) -> f64 {
        (self.float)(x)
    }
    #[inline]
    fn f32(&self, x: f32) -> f32 {
        match self.f32 {
            Some(f) => f(x),
            None => (self.float)(x as f64) as f32,
        }
    }
    fn has_int(&self) -> bool {
        self.int.is_some()
    }
    fn simd(&self) -> Option<ptero_simd::ops::Unary> {
        self.simd
    }
    #[inline]
    fn int(&self, x: i64) -> i64 {
        self.int.map_or(x, |f| f(x))
    }
    fn has_bool(&self) -> bool {
        self.boolean.is_some()
    }
    #[inline]
    fn boolean(&self, x: bool) -> bool {
        self.boolean.map_or(x, |f| f(x))
    }
}

/// The compute dtype of a float-valued function of a `t` input (`exp(int64)` is float32).
pub fn float_result(t: ScalarType) -> ScalarType {
    if t.is_float() {
        t
    } else {
        ScalarType::Float
    }
}

/// Computes `out = op(x)` elementwise in the arithmetic of `compute` (the op's result
/// dtype), casting to the out dtype. `out` is resized to `x`'s shape.
pub fn unary<O: UnaryOp>(
    args: &mut KernelArgs<'_>,
    x: usize,
    out: usize,
    compute: ScalarType,
    op: &O,
) -> Result<()> {
    let shape = args.meta(x)?.dims();
    args.resize(out, &shape)?;
    let (xd, od) = (args.meta(x)?.dtype, args.meta(out)?.dtype);
    if !xd.is_numeric() {
        return Err(Error::Dtype {
            arg: x,
            expected: "a numeric dtype".into(),
            found: xd,
        });
    }
    if !od.is_numeric() {
        return Err(Error::Dtype {
            arg: out,
            expected: "a numeric dtype".into(),
            found: od,
        });
    }
    check_can_cast(out, compute, od)?;
    let kind = ComputeKind::of(compute)?;
    let supported = match kind {
        ComputeKind::Float => true,
        ComputeKind::Int => op.has_int(),
        ComputeKind::Bool => op.has_bool(),
    };
    if !supported {
        return Err(Error::Dtype {
            arg: x,
            expected: alloc::format!("a dtype {} supports", op.name()),
            found: xd,
        });
    }

    // Empty views are not aligned for typed access: nothing to do anyway.
    if shape.contains(&0) {
        return Ok(());
    }
    if kind == ComputeKind::Float
        && xd == ScalarType::Float
        && od == ScalarType::Float
        && same_layout(&shape, &[args.meta(x)?, args.meta(out)?])
    {
        let par = args.parallel();
        let xv = args.tensor(x)?;
        let xs = xv.data::<f32>()?;
        let mut ov = args.out(out)?;
        let o = ov.data::<f32>()?;
        match op.simd() {
            Some(f) => {
                ptero_simd::for_each_chunk(par, o, &|r, o| ptero_simd::ops::unary(f, &xs[r], o))
            }
            None => {
                for (o, v) in o.iter_mut().zip(xs) {
                    *o = op.f32(*v);
                }
            }
        }
        return Ok(());
    }

    let (xs, os) = (args.meta(x)?.stride_dims(), args.meta(out)?.stride_dims());
    let xv = args.tensor(x)?;
    let ov = args.out(out)?;
    let (xb, ob) = (xv.bytes, &mut *ov.bytes);
    match kind {
        ComputeKind::Float => {
            let rounds = xd != compute;
            for_each_offset(&shape, [&os, &xs], |[oo, xo]| {
                let mut v = load_f64(xb, xd, xo);
                if rounds {
                    v = round_to(compute, v);
                }
                store_f64(ob, od, oo, op.float(v));
            });
        }
        ComputeKind::Int => {
            for_each_offset(&shape, [&os, &xs], |[oo, xo]| {
                store_i64(ob, od, oo, op.int(load_i64(xb, xd, xo)));
            });
        }
        ComputeKind::Bool => {
            for_each_offset(&shape, [&os, &xs], |[oo, xo]| {
                store_bool(ob, od, oo, op.boolean(load_bool(xb, xd, xo)));
            });
        }
    }
    Ok(())
}

/// Computes a predicate `out = p(x)` elementwise (`isnan`, `logical_not`): evaluated in
/// the input's arithmetic, written as 0/1 to an out of any numeric dtype.
pub fn unary_pred(
    args: &mut KernelArgs<'_>,
    x: usize,
    out: usize,
    float: impl Fn(f64) -> bool,
    int: impl Fn(i64) -> bool,
    boolean: impl Fn(bool) -> bool,
) -> Result<()> {
    let shape = args.meta(x)?.dims();
    args.resize(out, &shape)?;
    let (xd, od) = (args.meta(x)?.dtype, args.meta(out)?.dtype);
    for (arg, t) in [(x, xd), (out, od)] {
        if !t.is_numeric() {
            return Err(Error::Dtype {
                arg,
                expected: "a numeric dtype".into(),
                found: t,
            });
        }
    }
    if shape.contains(&0) {
        return Ok(());
    }
    let flat = same_layout(&shape, &[args.meta(x)?, args.meta(out)?]);
    if flat && od == ScalarType::Bool && matches!(xd, ScalarType::Float | ScalarType::Bool) {
        let xv = args.tensor(x)?;
        let mut ov = args.out(out)?;
        let o = ov.bools()?;
        if xd == ScalarType::Float {
            for (o, v) in o.iter_mut().zip(xv.data::<f32>()?) {
                *o = float(*v as f64) as u8;
            }
        } else {
            for (o, v) in o.iter_mut().zip(xv.bools()?) {
                *o = boolean(*v != 0) as u8;
            }
        }
        return Ok(());
    }
    let (xs, os) = (args.meta(x)?.stride_dims(), args.meta(out)?.stride_dims());
    let xv = args.tensor(x)?;
    let ov = args.out(out)?;
    let (xb, ob) = (xv.bytes, &mut *ov.bytes);
    for_each_offset(&shape, [&os, &xs], |[oo, xo]| {
        let r = if xd.is_float() {
            float(load_f64(xb, xd, xo))
        } else if xd == ScalarType::Bool {
            boolean(load_bool(xb, xd, xo))
        } else {
            int(load_i64(xb, xd, xo))
        };
        store_bool(ob, od, oo, r);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScalarType::*;

    #[test]
    fn casting_rules() {
        assert!(can_cast(Long, Float));
        assert!(can_cast(Bool, Long));
        assert!(!can_cast(Float, Long));
        assert!(!can_cast(Int, Bool));
        assert!(can_cast(Bool, Bool));
        assert_eq!(promote_with_scalar(Int, Scalar::Double(0.5)), Float);
        assert_eq!(promote_with_scalar(Bool, Scalar::Int(1)), Long);
        assert_eq!(promote_with_scalar(Half, Scalar::Double(0.5)), Half);
        assert_eq!(cast_scalar(Scalar::Int(300), Char), Scalar::Int(44));
        assert_eq!(
            cast_scalar(Scalar::Double(0.1), Float),
            Scalar::Double(0.1f32 as f64)
        );
    }
}
