//! Elementwise binary arithmetic: add, sub, rsub, mul, div (all rounding modes),
//! remainder, fmod, floor_divide, pow, maximum, minimum, atan2 — Tensor and Scalar forms.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::elementwise::{binary, result_type, BinaryFns, Operand};
use crate::util::ComputeKind;

fn int_div_zero() -> Error {
    Error::invalid("integer division by zero")
}

fn floor_div_i(a: i64, b: i64) -> Result<i64> {
    if b == 0 {
        return Err(int_div_zero());
    }
    // Wrapping: `i64::MIN / -1` overflows (PyTorch gives `i64::MIN`, and remainder 0).
    let q = a.wrapping_div(b);
    Ok(if (a.wrapping_rem(b) != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    })
}

fn floor_div_f(a: f64, b: f64) -> f64 {
    // PyTorch's div_floor: floor of the true quotient, computed to avoid fmod rounding.
    if b == 0.0 {
        return a / b;
    }
    let m = libm::fmod(a, b);
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let fl = libm::floor(div);
        if div - fl > 0.5 {
            fl + 1.0
        } else {
            fl
        }
    } else {
        libm::copysign(0.0, a / b)
    }
}

fn remainder_f(a: f64, b: f64) -> f64 {
    let m = libm::fmod(a, b);
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        m + b
    } else {
        m
    }
}

fn remainder_i(a: i64, b: i64) -> Result<i64> {
    if b == 0 {
        return Err(int_div_zero());
    }
    let m = a.wrapping_rem(b);
    Ok(if m != 0 && ((b < 0) != (m < 0)) {
        m + b
    } else {
        m
    })
}

fn pow_i(a: i64, b: i64) -> Result<i64> {
    if b < 0 {
        return match a {
            1 => Ok(1),
            -1 => Ok(if b % 2 == 0 { 1 } else { -1 }),
            0 => Err(Error::invalid(
                "integers to negative integer powers are not allowed",
            )),
            _ => Ok(0),
        };
    }
    let mut result: i64 = 1;
    let mut base = a;
    let mut e = b as u64;
    while e > 0 {
        if e & 1 == 1 {
            result = result.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    Ok(result)
}

fn max_f(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn min_f(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

const ADD: BinaryFns = BinaryFns {
    name: "add",
    float: |a, b| a + b,
    int: Some(|a, b| Ok(a.wrapping_add(b))),
    boolean: Some(|a, b| a || b),
    f32: Some(|a, b| a + b),
    simd: Some(ptero_simd::ops::Binary::Add),
};
const SUB: BinaryFns = BinaryFns {
    name: "sub",
    float: |a, b| a - b,
    int: Some(|a, b| Ok(a.wrapping_sub(b))),
    boolean: None,
    f32: Some(|a, b| a - b),
    simd: Some(ptero_simd::ops::Binary::Sub),
};
const MUL: BinaryFns = BinaryFns {
    name: "mul",
    float: |a, b| a * b,
    int: Some(|a, b| Ok(a.wrapping_mul(b))),
    boolean: Some(|a, b| a && b),
    f32: Some(|a, b| a * b),
    simd: Some(ptero_simd::ops::Binary::Mul),
};
const DIV: BinaryFns = BinaryFns {
    name: "div",
    float: |a, b| a / b,
    int: None,
    boolean: None,
    f32: Some(|a, b| a / b),
    simd: Some(ptero_simd::ops::Binary::Div),
};
const DIV_TRUNC: BinaryFns = BinaryFns {
    name: "div(trunc)",
    float: |a, b| libm::trunc(a / b),
    int: Some(|a, b| {
        if b == 0 {
            Err(int_div_zero())
        } else {
            Ok(a.wrapping_div(b))
        }
    }),
    boolean: None,
    f32: None,
    simd: None,
};
const DIV_FLOOR: BinaryFns = BinaryFns {
    name: "div(floor)",
    float: floor_div_f,
    int: Some(floor_div_i),
    boolean: None,
    f32: None,
    simd: None,
};
const REMAINDER: BinaryFns = BinaryFns {
    name: "remainder",
    float: remainder_f,
    int: Some(remainder_i),
    boolean: None,
    f32: None,
    simd: None,
};
const FMOD: BinaryFns = BinaryFns {
    name: "fmod",
    float: libm::fmod,
    int: Some(|a, b| {
        if b == 0 {
            Err(int_div_zero())
        } else {
            Ok(a.wrapping_rem(b))
        }
    }),
    boolean: None,
    f32: None,
    simd: None,
};
/// f32 power with PyTorch's special cases for common scalar exponents (x*x, x*x*x,
/// sqrt...), which are both faster and what PyTorch computes for them.
fn pow_f32(a: f32, b: f32) -> f32 {
    if b == 2.0 {
        a * a
    } else if b == 3.0 {
        a * a * a
    } else if b == 0.5 {
        libm::sqrtf(a)
    } else if b == -0.5 {
        1.0 / libm::sqrtf(a)
    } else if b == -1.0 {
        1.0 / a
    } else if b == -2.0 {
        1.0 / (a * a)
    } else if b == 1.0 {
        a
    } else {
        libm::powf(a, b)
    }
}

const POW: BinaryFns = BinaryFns {
    name: "pow",
    float: libm::pow,
    int: Some(pow_i),
    boolean: Some(|a, b| a || !b),
    f32: Some(pow_f32),
    simd: None,
};
const MAXIMUM: BinaryFns = BinaryFns {
    name: "maximum",
    float: max_f,
    int: Some(|a, b| Ok(a.max(b))),
    boolean: Some(|a, b| a || b),
    f32: Some(|a, b| {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.max(b)
        }
    }),
    simd: Some(ptero_simd::ops::Binary::Maximum),
};
const MINIMUM: BinaryFns = BinaryFns {
    name: "minimum",
    float: min_f,
    int: Some(|a, b| Ok(a.min(b))),
    boolean: Some(|a, b| a && b),
    f32: Some(|a, b| {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.min(b)
        }
    }),
    simd: Some(ptero_simd::ops::Binary::Minimum),
};
const ATAN2: BinaryFns = BinaryFns {
    name: "atan2",
    float: libm::atan2,
    int: None,
    boolean: None,
    f32: None,
    simd: None,
};

/// Compute kind for an arithmetic op writing `out`; checks the promoted input type can be
/// cast to it (no float results into an int tensor).
fn arith_kind(args: &KernelArgs<'_>, a: Operand, b: Operand, out: usize) -> Result<ComputeKind> {
    let common = result_type(args, a, b)?;
    let od = args.meta(out)?.dtype;
    let kind = ComputeKind::of(od)?;
    let ck = ComputeKind::of(common)?;
    let rank = |k: ComputeKind| k as u8;
    if rank(ck) > rank(kind) {
        return Err(Error::Dtype {
            arg: out,
            expected: alloc::format!("{common} or wider (the inputs' promoted type)"),
            found: od,
        });
    }
    Ok(kind)
}

fn run(
    args: &mut KernelArgs<'_>,
    a: Operand,
    b: Operand,
    out: usize,
    fns: &BinaryFns,
) -> Result<()> {
    let kind = arith_kind(args, a, b, out)?;
    binary(args, a, b, out, kind, fns)
}

/// Scales operand `b` by `alpha` for add/sub: `a + alpha * b`.
fn with_alpha(
    args: &mut KernelArgs<'_>,
    a: Operand,
    b: Operand,
    alpha_arg: usize,
    out: usize,
    fns: &BinaryFns,
    neg: bool,
) -> Result<()> {
    let alpha = args.scalar(alpha_arg)?;
    let kind = arith_kind(args, a, b, out)?;
    let one = alpha.to_f64() == 1.0;
    if one {
        return binary(args, a, b, out, kind, fns);
    }
    if kind == ComputeKind::Bool {
        return Err(Error::invalid("alpha must be 1 for bool tensors"));
    }
    // Fold alpha into the function: the engine's forms are plain fn pointers, so use
    // dedicated ones and pass alpha through a scalar operand where possible.
    match (b, kind) {
        (Operand::Scalar(s), ComputeKind::Float) => {
            let v = s.to_f64() * alpha.to_f64();
            binary(
                args,
                a,
                Operand::Scalar(ptero_core::Scalar::Double(v)),
                out,
                kind,
                fns,
            )
        }
        (Operand::Scalar(s), ComputeKind::Int) => {
            let v = s.to_i64().wrapping_mul(alpha.to_i64());
            binary(
                args,
                a,
                Operand::Scalar(ptero_core::Scalar::Int(v)),
                out,
                kind,
                fns,
            )
        }
        _ => alpha_tensor(args, a, b, out, kind, alpha, neg),
    }
}

fn alpha_tensor(
    args: &mut KernelArgs<'_>,
    a: Operand,
    b: Operand,
    out: usize,
    kind: ComputeKind,
    alpha: ptero_core::Scalar,
    neg: bool,
) -> Result<()> {
    use crate::util::{
        broadcast_shapes, broadcast_strides, for_each_offset, load_f64, load_i64, store_f64,
        store_i64,
    };
    let Operand::Tensor(bi) = b else {
        return Err(Error::invalid("alpha operand"));
    };
    let a_dims = match a {
        Operand::Tensor(i) => args.meta(i)?.dims(),
        Operand::Scalar(_) => ptero_core::Dims::new(),
    };
    let shape = broadcast_shapes(&a_dims, args.meta(bi)?.sizes())?;
    args.resize(out, &shape)?;
    let a_st = match a {
        Operand::Tensor(i) => broadcast_strides(args.meta(i)?, &shape)?,
        Operand::Scalar(_) => ptero_core::Dims::filled(shape.len(), 0).unwrap_or_default(),
    };
    let b_st = broadcast_strides(args.meta(bi)?, &shape)?;
    let o_st = args.meta(out)?.stride_dims();
    let od = args.meta(out)?.dtype;
    let (ab, at, asc) = match a {
        Operand::Tensor(i) => {
            let t = args.tensor(i)?;
            (t.bytes, t.dtype(), None)
        }
        Operand::Scalar(s) => (&[][..], ScalarType::Double, Some(s)),
    };
    let bt = args.tensor(bi)?;
    let ov = args.out(out)?;
    let ob = &mut *ov.bytes;
    let sign = if neg { -1.0 } else { 1.0 };
    match kind {
        ComputeKind::Int => {
            let al = alpha.to_i64().wrapping_mul(sign as i64);
            for_each_offset(&shape, [&o_st, &a_st, &b_st], |[oo, ao, bo]| {
                let x = asc.map_or_else(|| load_i64(ab, at, ao), |s| s.to_i64());
                let y = load_i64(bt.bytes, bt.dtype(), bo);
                store_i64(ob, od, oo, x.wrapping_add(al.wrapping_mul(y)));
            });
        }
        _ => {
            let al = alpha.to_f64() * sign;
            for_each_offset(&shape, [&o_st, &a_st, &b_st], |[oo, ao, bo]| {
                let x = asc.map_or_else(|| load_f64(ab, at, ao), |s| s.to_f64());
                let y = load_f64(bt.bytes, bt.dtype(), bo);
                store_f64(ob, od, oo, x + al * y);
            });
        }
    }
    Ok(())
}

fn add_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    with_alpha(a, Operand::Tensor(0), Operand::Tensor(1), 2, 3, &ADD, false)
}
/// `ptero::add_relu.out(self, other, alpha, *, out)`: `relu(self + other)` in one pass,
/// what load-time fusion makes of an `add` whose only reader is a `relu`. Only f32
/// tensors of one shape and layout, alpha 1 (the rule only fires for those).
fn add_relu_out(a: &mut KernelArgs<'_>) -> Result<()> {
    use ptero_simd::ops::{binary, unary_inplace, Binary, Lhs, Rhs, Unary};
    a.expect_len(4)?;
    let (xm, ym) = (*a.meta(0)?, *a.meta(1)?);
    let same = xm.dtype == ScalarType::Float
        && ym.dtype == ScalarType::Float
        && xm.sizes() == ym.sizes()
        && xm.dim_order() == ym.dim_order();
    if !same || a.scalar(2)?.to_f64() != 1.0 {
        return Err(Error::invalid(
            "add_relu: f32 operands of one shape and layout, alpha 1",
        ));
    }
    a.resize(3, xm.sizes())?;
    let om = *a.meta(3)?;
    if om.dtype != ScalarType::Float || om.dim_order() != xm.dim_order() {
        return Err(Error::Dtype {
            arg: 3,
            expected: "Float, laid out as the operands".into(),
            found: om.dtype,
        });
    }
    let par = a.parallel();
    let (x, y) = (a.tensor(0)?, a.tensor(1)?);
    let (xs, ys): (&[f32], &[f32]) = (x.data()?, y.data()?);
    let mut o = a.out(3)?;
    let os: &mut [f32] = o.data()?;
    if xs.len() != os.len() || ys.len() != os.len() {
        return Err(Error::OutOfBounds("add_relu: operand sizes".into()));
    }
    ptero_simd::for_each_chunk(par, os, &|r, o| {
        binary(
            Binary::Add,
            Lhs::Slice(&xs[r.clone()]),
            Rhs::Slice(&ys[r]),
            1.0,
            o,
        );
        unary_inplace(Unary::Relu, o);
    });
    Ok(())
}

fn add_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let s = a.scalar(1)?;
    with_alpha(a, Operand::Tensor(0), Operand::Scalar(s), 2, 3, &ADD, false)
}
fn sub_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    with_alpha(a, Operand::Tensor(0), Operand::Tensor(1), 2, 3, &SUB, true)
}
fn sub_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let s = a.scalar(1)?;
    with_alpha(a, Operand::Tensor(0), Operand::Scalar(s), 2, 3, &SUB, true)
}
fn rsub_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    // rsub(self, other, alpha) = other - alpha * self
    a.expect_len(4)?;
    let s = a.scalar(1)?;
    with_alpha(a, Operand::Scalar(s), Operand::Tensor(0), 2, 3, &SUB, true)
}
fn mul_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    run(a, Operand::Tensor(0), Operand::Tensor(1), 2, &MUL)
}
fn mul_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let s = a.scalar(1)?;
    run(a, Operand::Tensor(0), Operand::Scalar(s), 2, &MUL)
}

fn div_kind(args: &KernelArgs<'_>, out: usize) -> Result<ComputeKind> {
    // True division always computes in floating point.
    let od = args.meta(out)?.dtype;
    if !od.is_float() {
        return Err(Error::Dtype {
            arg: out,
            expected: "a floating dtype (true division)".into(),
            found: od,
        });
    }
    Ok(ComputeKind::Float)
}

/// The `rounding_mode` argument `i`: true division (`None`), or trunc/floor division.
/// Read without copying the string (a program's strings can be large).
fn rounding_mode(args: &KernelArgs<'_>, i: usize) -> Result<Option<&'static BinaryFns>> {
    match args.opt_string(i)? {
        None => Ok(None),
        Some("trunc") => Ok(Some(&DIV_TRUNC)),
        Some("floor") => Ok(Some(&DIV_FLOOR)),
        Some(m) => {
            let shown = m.char_indices().nth(32).map_or(m, |(end, _)| &m[..end]);
            Err(Error::invalid(alloc::format!(
                "div rounding_mode must be 'trunc' or 'floor', got '{shown}'"
            )))
        }
    }
}

fn div_mode(
    args: &mut KernelArgs<'_>,
    a: Operand,
    b: Operand,
    mode: Option<&BinaryFns>,
    out: usize,
) -> Result<()> {
    match mode {
        None => {
            let kind = div_kind(args, out)?;
            binary(args, a, b, out, kind, &DIV)
        }
        Some(fns) => run(args, a, b, out, fns),
    }
}

fn div_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    div_mode(a, Operand::Tensor(0), Operand::Tensor(1), None, 2)
}
fn div_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let s = a.scalar(1)?;
    div_mode(a, Operand::Tensor(0), Operand::Scalar(s), None, 2)
}
fn div_out_mode(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let mode = rounding_mode(a, 2)?;
    div_mode(a, Operand::Tensor(0), Operand::Tensor(1), mode, 3)
}
fn div_scalar_mode_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let s = a.scalar(1)?;
    let mode = rounding_mode(a, 2)?;
    div_mode(a, Operand::Tensor(0), Operand::Scalar(s), mode, 3)
}
fn floor_divide_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    run(a, Operand::Tensor(0), Operand::Tensor(1), 2, &DIV_FLOOR)
}
fn remainder_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    run(a, Operand::Tensor(0), Operand::Tensor(1), 2, &REMAINDER)
}
fn remainder_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let s = a.scalar(1)?;
    run(a, Operand::Tensor(0), Operand::Scalar(s), 2, &REMAINDER)
}
fn fmod_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    run(a, Operand::Tensor(0), Operand::Tensor(1), 2, &FMOD)
}
fn fmod_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let s = a.scalar(1)?;
    run(a, Operand::Tensor(0), Operand::Scalar(s), 2, &FMOD)
}
fn pow_tt_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    run(a, Operand::Tensor(0), Operand::Tensor(1), 2, &POW)
}
fn pow_ts_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let s = a.scalar(1)?;
    run(a, Operand::Tensor(0), Operand::Scalar(s), 2, &POW)
}
fn pow_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let s = a.scalar(0)?;
    run(a, Operand::Scalar(s), Operand::Tensor(1), 2, &POW)
}
fn maximum_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    run(a, Operand::Tensor(0), Operand::Tensor(1), 2, &MAXIMUM)
}
fn minimum_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    run(a, Operand::Tensor(0), Operand::Tensor(1), 2, &MINIMUM)
}
fn atan2_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let od = a.meta(2)?.dtype;
    if !od.is_float() {
        return Err(Error::Dtype {
            arg: 2,
            expected: "a floating dtype".into(),
            found: od,
        });
    }
    binary(
        a,
        Operand::Tensor(0),
        Operand::Tensor(1),
        2,
        ComputeKind::Float,
        &ATAN2,
    )
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::add.out", add_out);
    reg.register("ptero::add_relu.out", add_relu_out);
    reg.register("aten::add.Scalar_out", add_scalar_out);
    reg.register("aten::sub.out", sub_out);
    reg.register("aten::sub.Scalar_out", sub_scalar_out);
    reg.register("aten::rsub.Scalar_out", rsub_scalar_out);
    reg.register("aten::mul.out", mul_out);
    reg.register("aten::mul.Scalar_out", mul_scalar_out);
    reg.register("aten::div.out", div_out);
    reg.register("aten::div.Scalar_out", div_scalar_out);
    reg.register("aten::div.out_mode", div_out_mode);
    reg.register("aten::div.Scalar_mode_out", div_scalar_mode_out);
    reg.register("aten::floor_divide.out", floor_divide_out);
    reg.register("aten::remainder.Tensor_out", remainder_tensor_out);
    reg.register("aten::remainder.Scalar_out", remainder_scalar_out);
    reg.register("aten::fmod.Tensor_out", fmod_tensor_out);
    reg.register("aten::fmod.Scalar_out", fmod_scalar_out);
    reg.register("aten::pow.Tensor_Tensor_out", pow_tt_out);
    reg.register("aten::pow.Tensor_Scalar_out", pow_ts_out);
    reg.register("aten::pow.Scalar_out", pow_scalar_out);
    reg.register("aten::maximum.out", maximum_out);
    reg.register("aten::minimum.out", minimum_out);
    reg.register("aten::atan2.out", atan2_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use ptero_core::ScalarType::{self, *};

    #[test]
    fn add_relu_fused() {
        let f = |s: &[usize], v: &[f64]| Arg::T(OwnedTensor::from_f64(Float, s, v));
        let out = run_op(
            "ptero::add_relu.out",
            vec![
                f(&[2, 3], &[1., -2., 3., -4., f64::NAN, 0.5]),
                f(&[2, 3], &[-2., 1., 1., -2., 1., 1.]),
                Arg::Int(1),
                Arg::Out(Float, vec![2, 3]),
            ],
        )
        .unwrap();
        assert_close(
            &out.tensors[0].to_f64(),
            &[0., 0., 4., 0., f64::NAN, 1.5],
            0.0,
            0.0,
        );
        // Fusion only makes it for one shape, alpha 1: anything else is an error.
        for (other, alpha) in [(f(&[3], &[1., 1., 1.]), 1), (f(&[2, 3], &[0.; 6]), 2)] {
            let r = run_op(
                "ptero::add_relu.out",
                vec![
                    f(&[2, 3], &[0.; 6]),
                    other,
                    Arg::Int(alpha),
                    Arg::Out(Float, vec![2, 3]),
                ],
            );
            assert!(r.is_err());
        }
    }

    #[test]
    fn table() {
        let f = |s: &[usize], v: &[f64]| Arg::T(OwnedTensor::from_f64(Float, s, v));
        let i = |s: &[usize], v: &[f64]| Arg::T(OwnedTensor::from_f64(Long, s, v));
        let cases: alloc::vec::Vec<(&str, alloc::vec::Vec<Arg>, &[usize], alloc::vec::Vec<f64>)> = vec![
            (
                "aten::add.out",
                vec![
                    f(&[2, 2], &[1., 2., 3., 4.]),
                    f(&[2], &[10., 20.]),
                    Arg::Int(1),
                    Arg::Out(Float, vec![2, 2]),
                ],
                &[2, 2],
                vec![11., 22., 13., 24.],
            ),
            (
                "aten::add.out",
                vec![
                    f(&[2], &[1., 2.]),
                    f(&[2], &[1., 1.]),
                    Arg::Double(0.5),
                    Arg::Out(Float, vec![2]),
                ],
                &[2],
                vec![1.5, 2.5],
            ),
            (
                "aten::sub.out",
                vec![
                    i(&[3], &[5., 6., 7.]),
                    i(&[], &[2.]),
                    Arg::Int(2),
                    Arg::Out(Long, vec![3]),
                ],
                &[3],
                vec![1., 2., 3.],
            ),
            (
                "aten::rsub.Scalar_out",
                vec![
                    f(&[2], &[1., 2.]),
                    Arg::Double(10.),
                    Arg::Int(1),
                    Arg::Out(Float, vec![2]),
                ],
                &[2],
                vec![9., 8.],
            ),
            (
                "aten::mul.Scalar_out",
                vec![i(&[2], &[3., -4.]), Arg::Int(3), Arg::Out(Long, vec![2])],
                &[2],
                vec![9., -12.],
            ),
            (
                "aten::div.out",
                vec![
                    i(&[2], &[3., -4.]),
                    i(&[2], &[2., 3.]),
                    Arg::Out(Float, vec![2]),
                ],
                &[2],
                vec![1.5, -4. / 3.],
            ),
            (
                "aten::div.out_mode",
                vec![
                    i(&[2], &[7., -7.]),
                    i(&[2], &[2., 2.]),
                    Arg::Str("floor".into()),
                    Arg::Out(Long, vec![2]),
                ],
                &[2],
                vec![3., -4.],
            ),
            (
                "aten::div.out_mode",
                vec![
                    f(&[2], &[7., -7.]),
                    f(&[2], &[2., 2.]),
                    Arg::Str("trunc".into()),
                    Arg::Out(Float, vec![2]),
                ],
                &[2],
                vec![3., -3.],
            ),
            (
                "aten::remainder.Scalar_out",
                vec![
                    f(&[3], &[5., -5., 5.5]),
                    Arg::Int(3),
                    Arg::Out(Float, vec![3]),
                ],
                &[3],
                vec![2., 1., 2.5],
            ),
            (
                "aten::fmod.Scalar_out",
                vec![i(&[2], &[5., -5.]), Arg::Int(3), Arg::Out(Long, vec![2])],
                &[2],
                vec![2., -2.],
            ),
            (
                "aten::pow.Tensor_Scalar_out",
                vec![f(&[2], &[2., 3.]), Arg::Int(2), Arg::Out(Float, vec![2])],
                &[2],
                vec![4., 9.],
            ),
            (
                "aten::pow.Tensor_Scalar_out",
                vec![
                    f(&[3], &[2., -3., 4.]),
                    Arg::Double(3.0),
                    Arg::Out(Float, vec![3]),
                ],
                &[3],
                vec![8., -27., 64.],
            ),
            (
                "aten::pow.Tensor_Scalar_out",
                vec![
                    f(&[2], &[4., 0.25]),
                    Arg::Double(-0.5),
                    Arg::Out(Float, vec![2]),
                ],
                &[2],
                vec![0.5, 2.],
            ),
            (
                "aten::pow.Tensor_Scalar_out",
                vec![
                    f(&[2], &[2., 9.]),
                    Arg::Double(1.5),
                    Arg::Out(Float, vec![2]),
                ],
                &[2],
                vec![2f64.powf(1.5), 27.],
            ),
            (
                "aten::pow.Tensor_Scalar_out",
                vec![i(&[2], &[2., 3.]), Arg::Int(3), Arg::Out(Long, vec![2])],
                &[2],
                vec![8., 27.],
            ),
            (
                "aten::maximum.out",
                vec![
                    f(&[3], &[1., f64::NAN, 3.]),
                    f(&[3], &[2., 0., 1.]),
                    Arg::Out(Float, vec![3]),
                ],
                &[3],
                vec![2., f64::NAN, 3.],
            ),
            (
                "aten::add.out",
                vec![
                    f(&[0, 2], &[]),
                    f(&[2], &[1., 2.]),
                    Arg::Int(1),
                    Arg::Out(Float, vec![0, 2]),
                ],
                &[0, 2],
                vec![],
            ),
            (
                "aten::add.out",
                vec![
                    f(&[], &[1.5]),
                    f(&[], &[2.]),
                    Arg::Int(1),
                    Arg::Out(Float, vec![]),
                ],
                &[],
                vec![3.5],
            ),
        ];
        for (op, args, shape, want) in cases {
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(out.tensors[0].sizes, shape, "{op}");
            assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 1e-6);
        }
    }

    #[test]
    fn dim_orders_and_half() {
        let a = OwnedTensor::from_f64(
            Float,
            &[1, 2, 2, 3],
            &(0..12).map(|x| x as f64).collect::<alloc::vec::Vec<_>>(),
        );
        let b = a.with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::mul.out",
            vec![
                Arg::T(b.clone()),
                Arg::T(a.clone()),
                Arg::Out(Float, vec![1, 2, 2, 3]),
            ],
        )
        .unwrap();
        let want: alloc::vec::Vec<f64> = (0..12).map(|x| (x * x) as f64).collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        // Broadcast column against row, one operand channels-last: the f32 row path.
        let col = OwnedTensor::from_f64(Float, &[2, 1], &[10., 20.]);
        let row = OwnedTensor::from_f64(Float, &[1, 3], &[1., 2., 3.]);
        let out = run_op(
            "aten::sub.out",
            vec![
                Arg::T(col),
                Arg::T(row),
                Arg::Int(1),
                Arg::Out(Float, vec![2, 3]),
            ],
        )
        .unwrap();
        assert_close(
            &out.tensors[0].to_f64(),
            &[9., 8., 7., 19., 18., 17.],
            0.0,
            0.0,
        );
        let bias = OwnedTensor::from_f64(Float, &[3, 1, 1], &[1., 2., 3.]);
        let out = run_op(
            "aten::add.out",
            vec![
                Arg::T(b.clone()),
                Arg::T(bias),
                Arg::Int(1),
                Arg::Out(Float, vec![1, 2, 2, 3]),
            ],
        );
        assert!(out.is_err(), "[1,2,2,3] + [3,1,1] does not broadcast");
        let bias = OwnedTensor::from_f64(Float, &[2, 1, 1], &[100., 200.]);
        let out = run_op(
            "aten::add.out",
            vec![
                Arg::T(b),
                Arg::T(bias),
                Arg::Int(1),
                Arg::Out(Float, vec![1, 2, 2, 3]),
            ],
        )
        .unwrap();
        let want: alloc::vec::Vec<f64> = (0..12)
            .map(|x| x as f64 + if x < 6 { 100. } else { 200. })
            .collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        // A channels-last image against one value per channel and image (the
        // squeeze-excitation path), the scale on either side.
        let img = OwnedTensor::from_f64(
            Float,
            &[2, 3, 2, 2],
            &(0..24).map(|x| x as f64).collect::<alloc::vec::Vec<_>>(),
        )
        .with_dim_order(&[0, 2, 3, 1]);
        let scale = OwnedTensor::from_f64(Float, &[2, 3, 1, 1], &[1., 2., 3., 4., 5., 6.]);
        let cl_out =
            || Arg::OutLike(OwnedTensor::zeros(Float, &[2, 3, 2, 2]).with_dim_order(&[0, 2, 3, 1]));
        for (x, y, sign) in [(img.clone(), scale.clone(), 1.0), (scale, img, -1.0)] {
            let out = run_op(
                "aten::sub.out",
                vec![Arg::T(x), Arg::T(y), Arg::Int(1), cl_out()],
            )
            .unwrap();
            let want: alloc::vec::Vec<f64> = (0..24)
                .map(|i| sign * (i as f64 - (i / 4 + 1) as f64))
                .collect();
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
        let one = OwnedTensor::from_f64(Float, &[1, 3, 1, 1], &[1., 2., 3.]);
        let img = OwnedTensor::from_f64(
            Float,
            &[2, 3, 2, 2],
            &(0..24).map(|x| x as f64).collect::<alloc::vec::Vec<_>>(),
        )
        .with_dim_order(&[0, 2, 3, 1]);
        let out = run_op("aten::mul.out", vec![Arg::T(img), Arg::T(one), cl_out()]).unwrap();
        let want: alloc::vec::Vec<f64> = (0..24)
            .map(|i| i as f64 * ((i / 4) % 3 + 1) as f64)
            .collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        let h = OwnedTensor::from_f64(Half, &[2], &[1.5, 2.0]);
        let out = run_op(
            "aten::add.out",
            vec![
                Arg::T(h.clone()),
                Arg::T(h),
                Arg::Int(1),
                Arg::Out(Half, vec![2]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &[3.0, 4.0], 0.0, 0.0);
    }

    /// The minimum integer divided by -1 overflows; PyTorch wraps (quotient MIN, remainder
    /// 0) where Rust's `/` and `%` panic in every build.
    #[test]
    fn int_min_by_minus_one_wraps() {
        let l = |v: &[i64]| Arg::T(OwnedTensor::new::<i64>(&[v.len()], v));
        let i = |v: i32| Arg::T(OwnedTensor::new::<i32>(&[1], &[v]));
        let s = |m: &str| Arg::Str(m.into());
        let min = i64::MIN;
        type Case = (
            &'static str,
            alloc::vec::Vec<Arg>,
            ScalarType,
            alloc::vec::Vec<i64>,
        );
        let cases: alloc::vec::Vec<Case> = vec![
            (
                "aten::floor_divide.out",
                vec![l(&[min, 7]), l(&[-1, -2])],
                Long,
                vec![min, -4],
            ),
            (
                "aten::remainder.Tensor_out",
                vec![l(&[min, 7]), l(&[-1, -2])],
                Long,
                vec![0, -1],
            ),
            (
                "aten::remainder.Scalar_out",
                vec![l(&[min]), Arg::Int(-1)],
                Long,
                vec![0],
            ),
            (
                "aten::fmod.Tensor_out",
                vec![l(&[min]), l(&[-1])],
                Long,
                vec![0],
            ),
            (
                "aten::fmod.Scalar_out",
                vec![l(&[min]), Arg::Int(-1)],
                Long,
                vec![0],
            ),
            (
                "aten::div.out_mode",
                vec![l(&[min]), l(&[-1]), s("floor")],
                Long,
                vec![min],
            ),
            (
                "aten::div.out_mode",
                vec![l(&[min]), l(&[-1]), s("trunc")],
                Long,
                vec![min],
            ),
            (
                "aten::div.Scalar_mode_out",
                vec![l(&[min]), Arg::Int(-1), s("floor")],
                Long,
                vec![min],
            ),
            // int32 computes in i64 and wraps back to i32::MIN on store.
            (
                "aten::floor_divide.out",
                vec![i(i32::MIN), i(-1)],
                Int,
                vec![i32::MIN as i64],
            ),
            (
                "aten::remainder.Tensor_out",
                vec![i(i32::MIN), i(-1)],
                Int,
                vec![0],
            ),
        ];
        for (op, mut args, dt, want) in cases {
            args.push(Arg::Out(dt, vec![want.len()]));
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            let got: alloc::vec::Vec<i64> =
                out.tensors[0].to_f64().iter().map(|&v| v as i64).collect();
            assert_eq!(got, want, "{op}");
        }
    }

    #[test]
    fn errors() {
        let f = OwnedTensor::from_f64(Float, &[2], &[1., 2.]);
        let g = OwnedTensor::from_f64(Float, &[3], &[1., 2., 3.]);
        assert!(run_op(
            "aten::add.out",
            vec![
                Arg::T(f.clone()),
                Arg::T(g),
                Arg::Int(1),
                Arg::Out(Float, vec![2])
            ]
        )
        .is_err());
        assert!(run_op(
            "aten::add.out",
            vec![
                Arg::T(f.clone()),
                Arg::T(f.clone()),
                Arg::Int(1),
                Arg::Out(Long, vec![2])
            ]
        )
        .is_err());
        let i = OwnedTensor::from_f64(Long, &[1], &[1.]);
        let z = OwnedTensor::from_f64(Long, &[1], &[0.]);
        assert!(run_op(
            "aten::remainder.Tensor_out",
            vec![Arg::T(i), Arg::T(z), Arg::Out(Long, vec![1])]
        )
        .is_err());
        assert!(run_op("aten::add.out", vec![Arg::T(f)]).is_err());
    }
}
