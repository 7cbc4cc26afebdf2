//! Elementwise unary math: abs, neg, exp/log families, roots, trigonometric and hyperbolic
//! functions, erf, rounding, sign, sigmoid, predicates (isnan, isinf, logical_not) and
//! bitwise_not.
//!
//! Float-valued functions of integer or bool inputs compute in float32 (PyTorch's
//! default dtype), like `torch.exp(int_tensor)`. abs, neg, sign and the rounding functions
//! keep the input dtype.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::unary::{float_result, unary, unary_pred, UnaryFns, UnaryOp};
use ptero_simd::ops::Unary as V;

fn is_unsigned(t: ScalarType) -> bool {
    use ScalarType::*;
    matches!(t, Byte | UInt16 | UInt32 | UInt64)
}

macro_rules! float_ops {
    ($( $kname:ident, $name:literal, $f:expr, $f32:expr, $simd:expr; )*) => {
        $(
            fn $kname(a: &mut KernelArgs<'_>) -> Result<()> {
                const OP: UnaryFns = UnaryFns {
                    name: $name,
                    float: $f,
                    f32: $f32,
                    int: None,
                    boolean: None,
                    simd: $simd,
                };
                a.expect_len(2)?;
                let c = float_result(a.meta(0)?.dtype);
                unary(a, 0, 1, c, &OP)
            }
        )*
    };
}

fn sigmoid_f(x: f64) -> f64 {
    1.0 / (1.0 + libm::exp(-x))
}

float_ops! {
    exp_out, "exp", libm::exp, Some(libm::expf), Some(V::Exp);
    expm1_out, "expm1", libm::expm1, None, None;
    log_out, "log", libm::log, None, Some(V::Log);
    log2_out, "log2", libm::log2, None, None;
    log10_out, "log10", libm::log10, None, None;
    log1p_out, "log1p", libm::log1p, None, None;
    sqrt_out, "sqrt", libm::sqrt, Some(libm::sqrtf), Some(V::Sqrt);
    rsqrt_out, "rsqrt", |x| 1.0 / libm::sqrt(x), Some(|x| 1.0 / libm::sqrtf(x)), Some(V::Rsqrt);
    reciprocal_out, "reciprocal", |x| 1.0 / x, Some(|x| 1.0 / x), None;
    sin_out, "sin", libm::sin, None, None;
    cos_out, "cos", libm::cos, None, None;
    tan_out, "tan", libm::tan, None, None;
    asin_out, "asin", libm::asin, None, None;
    acos_out, "acos", libm::acos, None, None;
    atan_out, "atan", libm::atan, None, None;
    sinh_out, "sinh", libm::sinh, None, None;
    cosh_out, "cosh", libm::cosh, None, None;
    tanh_out, "tanh", libm::tanh, Some(libm::tanhf), Some(V::Tanh);
    asinh_out, "asinh", libm::asinh, None, None;
    acosh_out, "acosh", libm::acosh, None, None;
    atanh_out, "atanh", libm::atanh, None, None;
    erf_out, "erf", libm::erf, None, Some(V::Erf);
    sigmoid_out, "sigmoid", sigmoid_f, Some(|x| 1.0 / (1.0 + libm::expf(-x))), Some(V::Sigmoid);
}

/// Runs a dtype-preserving op: computed in the input's own arithmetic.
fn same_dtype(a: &mut KernelArgs<'_>, op: &UnaryFns) -> Result<()> {
    a.expect_len(2)?;
    let c = a.meta(0)?.dtype;
    unary(a, 0, 1, c, op)
}

fn abs_out(a: &mut KernelArgs<'_>) -> Result<()> {
    let unsigned = is_unsigned(a.meta(0)?.dtype);
    let op = UnaryFns {
        name: "abs",
        float: libm::fabs,
        f32: Some(libm::fabsf),
        // Unsigned values above i64::MAX load as negative i64s: keep them as they are.
        int: Some(if unsigned {
            |x| x
        } else {
            |x: i64| x.wrapping_abs()
        }),
        boolean: None,
        simd: Some(V::Abs),
    };
    same_dtype(a, &op)
}

fn neg_out(a: &mut KernelArgs<'_>) -> Result<()> {
    const OP: UnaryFns = UnaryFns {
        name: "neg",
        float: |x| -x,
        f32: Some(|x| -x),
        int: Some(|x| x.wrapping_neg()),
        boolean: None,
        simd: None,
    };
    same_dtype(a, &OP)
}

macro_rules! rounding_ops {
    ($( $kname:ident, $name:literal, $f:expr, $f32:expr; )*) => {
        $(
            fn $kname(a: &mut KernelArgs<'_>) -> Result<()> {
                // Integers are already integral: the rounding functions copy them.
                const OP: UnaryFns = UnaryFns {
                    name: $name,
                    float: $f,
                    f32: Some($f32),
                    int: Some(|x| x),
                    boolean: None,
                    simd: None,
                };
                same_dtype(a, &OP)
            }
        )*
    };
}

rounding_ops! {
    floor_out, "floor", libm::floor, libm::floorf;
    ceil_out, "ceil", libm::ceil, libm::ceilf;
    trunc_out, "trunc", libm::trunc, libm::truncf;
    // rint rounds half to even, like PyTorch's round (nearbyint).
    round_out, "round", libm::rint, libm::rintf;
}

/// `round(x, decimals)`: PyTorch scales by a power of ten, rounds half to even, scales
/// back, all in the tensor's own precision.
struct RoundDecimals {
    pow: f64,
    neg: bool,
}

impl UnaryOp for RoundDecimals {
    fn name(&self) -> &'static str {
        "round.decimals"
    }
    fn float(&self, x: f64) -> f64 {
        if self.neg {
            libm::rint(x / self.pow) * self.pow
        } else {
            libm::rint(x * self.pow) / self.pow
        }
    }
    fn f32(&self, x: f32) -> f32 {
        let p = self.pow as f32;
        if self.neg {
            libm::rintf(x / p) * p
        } else {
            libm::rintf(x * p) / p
        }
    }
    fn has_int(&self) -> bool {
        true
    }
}

fn round_decimals_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let decimals = a.int(1)?;
    let xd = a.meta(0)?.dtype;
    if decimals == 0 {
        return unary(
            a,
            0,
            2,
            xd,
            &RoundDecimals {
                pow: 1.0,
                neg: false,
            },
        );
    }
    if !xd.is_float() {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a floating dtype (round with decimals != 0)".into(),
            found: xd,
        });
    }
    let e = i32::try_from(decimals.unsigned_abs())
        .map_err(|_| Error::invalid(alloc::format!("round: decimals {decimals} too large")))?;
    let op = RoundDecimals {
        pow: libm::pow(10.0, e as f64),
        neg: decimals < 0,
    };
    unary(a, 0, 2, xd, &op)
}

fn sign_f(x: f64) -> f64 {
    // PyTorch computes (0 < x) - (x < 0), so NaN gives 0.
    ((0.0 < x) as i32 - (x < 0.0) as i32) as f64
}

fn sign_out(a: &mut KernelArgs<'_>) -> Result<()> {
    let unsigned = is_unsigned(a.meta(0)?.dtype);
    let op = UnaryFns {
        name: "sign",
        float: sign_f,
        f32: Some(|x| ((0.0 < x) as i32 - (x < 0.0) as i32) as f32),
        int: Some(if unsigned {
            |x| (x != 0) as i64
        } else {
            |x: i64| x.signum()
        }),
        boolean: Some(|x| x),
        simd: None,
    };
    same_dtype(a, &op)
}

fn bitwise_not_out(a: &mut KernelArgs<'_>) -> Result<()> {
    const OP: UnaryFns = UnaryFns {
        name: "bitwise_not",
        float: |x| x,
        f32: None,
        int: Some(|x| !x),
        boolean: Some(|x| !x),
        simd: None,
    };
    a.expect_len(2)?;
    let xd = a.meta(0)?.dtype;
    if xd.is_float() {
        return Err(Error::Dtype {
            arg: 0,
            expected: "an integer or bool dtype".into(),
            found: xd,
        });
    }
    same_dtype(a, &OP)
}

fn isnan_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    unary_pred(a, 0, 1, |x| x.is_nan(), |_| false, |_| false)
}

fn isinf_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    unary_pred(a, 0, 1, |x| x.is_infinite(), |_| false, |_| false)
}

fn logical_not_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    unary_pred(a, 0, 1, |x| x == 0.0, |x| x == 0, |x| !x)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    let ops: &[(&str, ptero_core::KernelFn)] = &[
        ("aten::abs.out", abs_out),
        ("aten::neg.out", neg_out),
        ("aten::exp.out", exp_out),
        ("aten::expm1.out", expm1_out),
        ("aten::log.out", log_out),
        ("aten::log2.out", log2_out),
        ("aten::log10.out", log10_out),
        ("aten::log1p.out", log1p_out),
        ("aten::sqrt.out", sqrt_out),
        ("aten::rsqrt.out", rsqrt_out),
        ("aten::reciprocal.out", reciprocal_out),
        ("aten::sin.out", sin_out),
        ("aten::cos.out", cos_out),
        ("aten::tan.out", tan_out),
        ("aten::asin.out", asin_out),
        ("aten::acos.out", acos_out),
        ("aten::atan.out", atan_out),
        ("aten::sinh.out", sinh_out),
        ("aten::cosh.out", cosh_out),
        ("aten::tanh.out", tanh_out),
        ("aten::asinh.out", asinh_out),
        ("aten::acosh.out", acosh_out),
        ("aten::atanh.out", atanh_out),
        ("aten::erf.out", erf_out),
        ("aten::sigmoid.out", sigmoid_out),
        ("aten::floor.out", floor_out),
        ("aten::ceil.out", ceil_out),
        ("aten::trunc.out", trunc_out),
        ("aten::round.out", round_out),
        ("aten::round.decimals_out", round_decimals_out),
        ("aten::sign.out", sign_out),
        ("aten::bitwise_not.out", bitwise_not_out),
        ("aten::isnan.out", isnan_out),
        ("aten::isinf.out", isinf_out),
        ("aten::logical_not.out", logical_not_out),
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

    #[test]
    fn float_functions_match_reference() {
        let xs = [
            -2.5,
            -1.0,
            -0.3,
            0.0,
            0.4,
            1.0,
            3.7,
            f64::NAN,
            f64::INFINITY,
        ];
        type Case = (&'static str, fn(f64) -> f64);
        let cases: [Case; 24] = [
            ("exp", f64::exp),
            ("expm1", f64::exp_m1),
            ("log", f64::ln),
            ("log2", f64::log2),
            ("log10", f64::log10),
            ("log1p", f64::ln_1p),
            ("sqrt", f64::sqrt),
            ("rsqrt", |x| 1.0 / x.sqrt()),
            ("reciprocal", |x| 1.0 / x),
            ("sin", f64::sin),
            ("cos", f64::cos),
            ("tan", f64::tan),
            ("asin", f64::asin),
            ("acos", f64::acos),
            ("atan", f64::atan),
            ("sinh", f64::sinh),
            ("cosh", f64::cosh),
            ("tanh", f64::tanh),
            ("asinh", f64::asinh),
            ("acosh", f64::acosh),
            ("atanh", f64::atanh),
            ("erf", libm::erf),
            ("sigmoid", |x| 1.0 / (1.0 + (-x).exp())),
            ("abs", f64::abs),
        ];
        for (name, f) in cases {
            let op = alloc::format!("aten::{name}.out");
            for dt in [Float, Double, Half] {
                let xr: Vec<f64> = xs
                    .iter()
                    .map(|&x| crate::util::unary::round_to(dt, x))
                    .collect();
                let want: Vec<f64> = xr
                    .iter()
                    .map(|&x| crate::util::unary::round_to(dt, f(x)))
                    .collect();
                let out = run_op(&op, vec![t(dt, &[9], &xr), Arg::Out(dt, vec![9])])
                    .unwrap_or_else(|e| panic!("{op}: {e}"));
                let tol = if dt == Half { 2e-3 } else { 1e-6 };
                assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
            }
        }
    }

    #[test]
    fn table() {
        let nan = f64::NAN;
        let cases: Vec<(&str, Vec<Arg>, Vec<f64>)> = vec![
            // Integer input to a float function computes in float.
            (
                "aten::exp.out",
                vec![t(Long, &[2], &[0., 1.]), Arg::Out(Float, vec![2])],
                vec![1., (1.0f32).exp() as f64],
            ),
            (
                "aten::sqrt.out",
                vec![t(Bool, &[2], &[0., 1.]), Arg::Out(Float, vec![2])],
                vec![0., 1.],
            ),
            (
                "aten::abs.out",
                vec![t(Int, &[3], &[-3., 0., 5.]), Arg::Out(Int, vec![3])],
                vec![3., 0., 5.],
            ),
            (
                "aten::abs.out",
                vec![t(Byte, &[2], &[200., 3.]), Arg::Out(Byte, vec![2])],
                vec![200., 3.],
            ),
            (
                "aten::neg.out",
                vec![t(Char, &[3], &[-128., 0., 5.]), Arg::Out(Char, vec![3])],
                vec![-128., 0., -5.],
            ),
            (
                "aten::neg.out",
                vec![t(Float, &[2], &[1.5, nan]), Arg::Out(Float, vec![2])],
                vec![-1.5, nan],
            ),
            (
                "aten::round.out",
                vec![
                    t(Float, &[6], &[0.5, 1.5, 2.5, -0.5, -1.7, 2.4]),
                    Arg::Out(Float, vec![6]),
                ],
                vec![0., 2., 2., -0., -2., 2.],
            ),
            (
                "aten::round.out",
                vec![t(Long, &[2], &[7., -3.]), Arg::Out(Long, vec![2])],
                vec![7., -3.],
            ),
            (
                "aten::round.decimals_out",
                vec![
                    t(Double, &[3], &[1.2345, 125., -0.125]),
                    Arg::Int(2),
                    Arg::Out(Double, vec![3]),
                ],
                vec![1.23, 125., -0.12],
            ),
            (
                "aten::round.decimals_out",
                vec![
                    t(Float, &[2], &[1250., 1351.]),
                    Arg::Int(-2),
                    Arg::Out(Float, vec![2]),
                ],
                vec![1200., 1400.],
            ),
            (
                "aten::floor.out",
                vec![t(Float, &[3], &[-1.5, 1.5, nan]), Arg::Out(Float, vec![3])],
                vec![-2., 1., nan],
            ),
            (
                "aten::ceil.out",
                vec![t(Half, &[2], &[-1.5, 1.5]), Arg::Out(Half, vec![2])],
                vec![-1., 2.],
            ),
            (
                "aten::trunc.out",
                vec![t(Double, &[2], &[-1.5, 1.5]), Arg::Out(Double, vec![2])],
                vec![-1., 1.],
            ),
            (
                "aten::sign.out",
                vec![
                    t(Float, &[5], &[-2., 0., 3., nan, -0.]),
                    Arg::Out(Float, vec![5]),
                ],
                vec![-1., 0., 1., 0., 0.],
            ),
            (
                "aten::sign.out",
                vec![t(Long, &[3], &[-7., 0., 9.]), Arg::Out(Long, vec![3])],
                vec![-1., 0., 1.],
            ),
            (
                "aten::sign.out",
                vec![t(Bool, &[2], &[0., 1.]), Arg::Out(Bool, vec![2])],
                vec![0., 1.],
            ),
            (
                "aten::bitwise_not.out",
                vec![t(Int, &[2], &[0., 5.]), Arg::Out(Int, vec![2])],
                vec![-1., -6.],
            ),
            (
                "aten::bitwise_not.out",
                vec![t(Bool, &[2], &[0., 1.]), Arg::Out(Bool, vec![2])],
                vec![1., 0.],
            ),
            (
                "aten::bitwise_not.out",
                vec![t(Byte, &[1], &[5.]), Arg::Out(Byte, vec![1])],
                vec![250.],
            ),
            (
                "aten::isnan.out",
                vec![
                    t(Float, &[3], &[nan, 1., f64::INFINITY]),
                    Arg::Out(Bool, vec![3]),
                ],
                vec![1., 0., 0.],
            ),
            (
                "aten::isinf.out",
                vec![
                    t(Half, &[3], &[nan, f64::NEG_INFINITY, 1.]),
                    Arg::Out(Bool, vec![3]),
                ],
                vec![0., 1., 0.],
            ),
            (
                "aten::isinf.out",
                vec![t(Long, &[1], &[3.]), Arg::Out(Bool, vec![1])],
                vec![0.],
            ),
            (
                "aten::logical_not.out",
                vec![t(Float, &[3], &[0., nan, -2.]), Arg::Out(Bool, vec![3])],
                vec![1., 0., 0.],
            ),
            (
                "aten::logical_not.out",
                vec![t(Int, &[2], &[0., 3.]), Arg::Out(Float, vec![2])],
                vec![1., 0.],
            ),
            (
                "aten::logical_not.out",
                vec![t(Bool, &[2], &[0., 1.]), Arg::Out(Bool, vec![2])],
                vec![1., 0.],
            ),
            // 0-d and empty.
            (
                "aten::tanh.out",
                vec![t(Float, &[], &[0.5]), Arg::Out(Float, vec![])],
                vec![0.5f32.tanh() as f64],
            ),
            (
                "aten::exp.out",
                vec![t(Float, &[0, 3], &[]), Arg::Out(Float, vec![0, 3])],
                vec![],
            ),
        ];
        for (op, args, want) in cases {
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 1e-6);
        }
    }

    #[test]
    fn dim_orders() {
        let vals: Vec<f64> = (0..24).map(|x| x as f64 * 0.25 - 3.0).collect();
        let a = OwnedTensor::from_f64(Float, &[2, 3, 2, 2], &vals);
        let cl = a.with_dim_order(&[0, 2, 3, 1]);
        let want: Vec<f64> = vals
            .iter()
            .map(|&x| (1.0 / (1.0 + (-x).exp())) as f32 as f64)
            .collect();
        // Channels-last in, contiguous out (general path) and channels-last both ways.
        let out = run_op(
            "aten::sigmoid.out",
            vec![Arg::T(cl.clone()), Arg::Out(Float, vec![2, 3, 2, 2])],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 1e-6);
        let d = OwnedTensor::from_f64(Double, &[2, 3, 2, 2], &vals).with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::neg.out",
            vec![Arg::T(d), Arg::Out(Double, vec![2, 3, 2, 2])],
        )
        .unwrap();
        let want: Vec<f64> = vals.iter().map(|x| -x).collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
    }

    #[test]
    fn errors() {
        let cases: Vec<(&str, Vec<Arg>)> = vec![
            // A float result cannot go into an integer out.
            (
                "aten::exp.out",
                vec![t(Long, &[1], &[1.]), Arg::Out(Long, vec![1])],
            ),
            (
                "aten::neg.out",
                vec![t(Bool, &[1], &[1.]), Arg::Out(Bool, vec![1])],
            ),
            (
                "aten::bitwise_not.out",
                vec![t(Float, &[1], &[1.]), Arg::Out(Float, vec![1])],
            ),
            (
                "aten::abs.out",
                vec![t(Float, &[1], &[1.]), Arg::Out(Int, vec![1])],
            ),
            ("aten::abs.out", vec![t(Float, &[1], &[1.])]),
            (
                "aten::round.decimals_out",
                vec![t(Int, &[1], &[1.]), Arg::Int(1), Arg::Out(Int, vec![1])],
            ),
        ];
        for (op, args) in cases {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }
}
