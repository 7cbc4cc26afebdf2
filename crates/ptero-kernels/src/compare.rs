//! Comparisons: eq, ne, lt, le, gt, ge, in `Tensor` and `Scalar` forms, and `allclose`.
//!
//! Operands are compared in their promoted dtype, as PyTorch does: each value is first
//! rounded to that dtype (`f32_tensor == 0.1` compares against `0.1f32`, an int64 tensor
//! against a float32 one compares float32 roundings). NaN compares unequal to everything.
//! The out is normally bool but may be any numeric dtype (it receives 0 or 1).

use half::{bf16, f16};
use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType, Value};

use crate::util::elementwise::{binary, result_type, BinaryFns, Operand};
use crate::util::unary::cast_scalar;
use crate::util::ComputeKind;
use crate::util::{for_each_offset, load_f64, load_i64, same_layout, store_bool};

const EQ: u8 = 0;
const NE: u8 = 1;
const LT: u8 = 2;
const LE: u8 = 3;
const GT: u8 = 4;
const GE: u8 = 5;

#[inline]
fn apply<T: PartialOrd>(op: u8, a: T, b: T) -> bool {
    match op {
        EQ => a == b,
        NE => a != b,
        LT => a < b,
        LE => a <= b,
        GT => a > b,
        _ => a >= b,
    }
}

/// Rounding of an f64 operand to the compute dtype.
trait Round {
    fn r(x: f64) -> f64;
}
struct R64;
struct R32;
struct R16;
struct Rbf16;
impl Round for R64 {
    #[inline]
    fn r(x: f64) -> f64 {
        x
    }
}
impl Round for R32 {
    #[inline]
    fn r(x: f64) -> f64 {
        x as f32 as f64
    }
}
impl Round for R16 {
    #[inline]
    fn r(x: f64) -> f64 {
        f16::from_f64(x).to_f64()
    }
}
impl Round for Rbf16 {
    #[inline]
    fn r(x: f64) -> f64 {
        bf16::from_f64(x).to_f64()
    }
}

fn float_cmp<R: Round, const OP: u8>(a: f64, b: f64) -> f64 {
    apply(OP, R::r(a), R::r(b)) as u8 as f64
}
fn int_cmp<const OP: u8>(a: i64, b: i64) -> Result<i64> {
    Ok(apply(OP, a, b) as i64)
}
fn bool_cmp<const OP: u8>(a: bool, b: bool) -> bool {
    apply(OP, a, b)
}

fn fns<R: Round, const OP: u8>() -> BinaryFns {
    BinaryFns {
        name: "comparison",
        float: float_cmp::<R, OP>,
        int: Some(int_cmp::<OP>),
        boolean: Some(bool_cmp::<OP>),
        f32: None,
        simd: None,
    }
}

fn fns_for<const OP: u8>(c: ScalarType) -> BinaryFns {
    match c {
        ScalarType::Float => fns::<R32, OP>(),
        ScalarType::Half => fns::<R16, OP>(),
        ScalarType::BFloat16 => fns::<Rbf16, OP>(),
        _ => fns::<R64, OP>(),
    }
}

/// Flat f32 inputs to a bool out, the common case after a float computation.
/// Returns `false` when the operands do not fit this path.
fn f32_to_bool<const OP: u8>(
    args: &mut KernelArgs<'_>,
    a: usize,
    b: Operand,
    out: usize,
) -> Result<bool> {
    let am = args.meta(a)?;
    let shape = am.dims();
    if am.dtype != ScalarType::Float || shape.contains(&0) {
        return Ok(false);
    }
    let fits = match b {
        Operand::Tensor(i) => {
            let bm = args.meta(i)?;
            bm.dtype == ScalarType::Float && same_layout(&shape, &[am, bm])
        }
        Operand::Scalar(_) => true,
    };
    if !fits {
        return Ok(false);
    }
    args.resize(out, &shape)?;
    let (am, om) = (args.meta(a)?, args.meta(out)?);
    if om.dtype != ScalarType::Bool || !same_layout(&shape, &[am, om]) {
        return Ok(false);
    }
    let av = args.tensor(a)?;
    let x = av.data::<f32>()?;
    let mut ov = args.out(out)?;
    let o = ov.bools()?;
    match b {
        Operand::Tensor(i) => {
            let bv = args.tensor(i)?;
            for (o, (x, y)) in o.iter_mut().zip(x.iter().zip(bv.data::<f32>()?)) {
                *o = apply(OP, *x, *y) as u8;
            }
        }
        Operand::Scalar(s) => {
            let y = s.to_f64() as f32;
            for (o, x) in o.iter_mut().zip(x) {
                *o = apply(OP, *x, y) as u8;
            }
        }
    }
    Ok(true)
}

fn compare<const OP: u8>(args: &mut KernelArgs<'_>, scalar: bool) -> Result<()> {
    args.expect_len(3)?;
    let b = if scalar {
        Operand::Scalar(args.scalar(1)?)
    } else {
        Operand::Tensor(1)
    };
    let c = result_type(args, Operand::Tensor(0), b)?;
    let b = match b {
        Operand::Scalar(s) => Operand::Scalar(cast_scalar(s, c)),
        t => t,
    };
    if c == ScalarType::Float && f32_to_bool::<OP>(args, 0, b, 2)? {
        return Ok(());
    }
    let kind = ComputeKind::of(c)?;
    binary(args, Operand::Tensor(0), b, 2, kind, &fns_for::<OP>(c))
}

macro_rules! kernels {
    ($( $t:ident, $s:ident, $op:ident; )*) => {
        $(
            fn $t(a: &mut KernelArgs<'_>) -> Result<()> {
                compare::<$op>(a, false)
            }
            fn $s(a: &mut KernelArgs<'_>) -> Result<()> {
                compare::<$op>(a, true)
            }
        )*
    };
}

kernels! {
    eq_tensor, eq_scalar, EQ;
    ne_tensor, ne_scalar, NE;
    lt_tensor, lt_scalar, LT;
    le_tensor, le_scalar, LE;
    gt_tensor, gt_scalar, GT;
    ge_tensor, ge_scalar, GE;
}

/// PyTorch's `allclose`: `self` and `other` (same shape and dtype) are close when every
/// pair is equal, or both NaN with `equal_nan`, or differs by a finite amount at most
/// `atol + rtol * |other|`. Integer and bool tensors compare exactly.
fn all_close(a: &KernelArgs<'_>, rtol: f64, atol: f64, equal_nan: bool) -> Result<bool> {
    let (sm, om) = (*a.meta(0)?, *a.meta(1)?);
    if sm.dtype != om.dtype {
        return Err(Error::Dtype {
            arg: 1,
            expected: sm.dtype.name().into(),
            found: om.dtype,
        });
    }
    if sm.sizes() != om.sizes() {
        return Err(Error::shape(alloc::format!(
            "allclose: shapes {:?} and {:?} differ",
            sm.sizes(),
            om.sizes()
        )));
    }
    if !sm.dtype.is_numeric() {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a numeric or bool dtype".into(),
            found: sm.dtype,
        });
    }
    let (x, y) = (a.tensor(0)?, a.tensor(1)?);
    let dt = sm.dtype;
    let float = dt.is_float();
    let mut close = true;
    for_each_offset(sm.sizes(), [sm.strides(), om.strides()], |[i, j]| {
        if !close {
            return;
        }
        close = if float {
            let (p, q) = (load_f64(x.bytes, dt, i), load_f64(y.bytes, dt, j));
            p == q
                || (equal_nan && p.is_nan() && q.is_nan())
                || ((p - q).is_finite() && libm::fabs(p - q) <= atol + rtol * libm::fabs(q))
        } else {
            load_i64(x.bytes, dt, i) == load_i64(y.bytes, dt, j)
        };
    });
    Ok(close)
}

/// `allclose.out(self, other, rtol=1e-05, atol=1e-08, equal_nan=False, dummy_param=False,
/// *, out)`: out is a one-element bool tensor.
fn allclose_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(7)?;
    allclose_into(a, 6)
}

/// `allclose.Tensor(self, other, rtol, atol, equal_nan, dummy_param) -> Tensor`: the
/// result goes to the return slot.
fn allclose_tensor(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(7)?;
    if !matches!(a.value(6)?, Value::Tensor(_)) {
        return Err(Error::invalid(
            "allclose.Tensor: the return slot must be a tensor",
        ));
    }
    allclose_into(a, 6)
}

fn allclose_into(a: &mut KernelArgs<'_>, out: usize) -> Result<()> {
    let (rtol, atol, equal_nan) = (a.double(2)?, a.double(3)?, a.bool(4)?);
    let om = *a.meta(out)?;
    if om.dtype != ScalarType::Bool || om.numel() != 1 {
        return Err(Error::invalid(alloc::format!(
            "allclose: out must be a one-element bool tensor, found {} of shape {:?}",
            om.dtype,
            om.sizes()
        )));
    }
    let close = all_close(a, rtol, atol, equal_nan)?;
    let o = a.out(out)?;
    store_bool(o.bytes, ScalarType::Bool, 0, close);
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::allclose.out", allclose_out);
    reg.register("aten::allclose.Tensor", allclose_tensor);
    let ops: &[(&str, ptero_core::KernelFn)] = &[
        ("aten::eq.Tensor_out", eq_tensor),
        ("aten::eq.Scalar_out", eq_scalar),
        ("aten::ne.Tensor_out", ne_tensor),
        ("aten::ne.Scalar_out", ne_scalar),
        ("aten::lt.Tensor_out", lt_tensor),
        ("aten::lt.Scalar_out", lt_scalar),
        ("aten::le.Tensor_out", le_tensor),
        ("aten::le.Scalar_out", le_scalar),
        ("aten::gt.Tensor_out", gt_tensor),
        ("aten::gt.Scalar_out", gt_scalar),
        ("aten::ge.Tensor_out", ge_tensor),
        ("aten::ge.Scalar_out", ge_scalar),
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
    fn all_ops_float_and_int() {
        let xs = [1.0, 2.0, f64::NAN, -1.0, 3.0];
        let ys = [1.0, 3.0, f64::NAN, -2.0, f64::NAN];
        type Case = (&'static str, fn(f64, f64) -> bool);
        let ops: [Case; 6] = [
            ("eq", |a, b| a == b),
            ("ne", |a, b| a != b),
            ("lt", |a, b| a < b),
            ("le", |a, b| a <= b),
            ("gt", |a, b| a > b),
            ("ge", |a, b| a >= b),
        ];
        for (name, f) in ops {
            let want: Vec<f64> = xs
                .iter()
                .zip(&ys)
                .map(|(a, b)| f(*a, *b) as u8 as f64)
                .collect();
            for (da, db) in [(Float, Float), (Double, Float), (Half, Half), (Float, Long)] {
                let ys_b: Vec<f64> = ys
                    .iter()
                    .map(|y| if db == Long && y.is_nan() { 7.0 } else { *y })
                    .collect();
                let want: Vec<f64> = if db == Long {
                    xs.iter()
                        .zip(&ys_b)
                        .map(|(a, b)| f(*a, *b) as u8 as f64)
                        .collect()
                } else {
                    want.clone()
                };
                let op = alloc::format!("aten::{name}.Tensor_out");
                let out = run_op(
                    &op,
                    vec![
                        t(da, &[5], &xs),
                        t(db, &[5], &ys_b),
                        Arg::Out(Bool, vec![5]),
                    ],
                )
                .unwrap_or_else(|e| panic!("{op}: {e}"));
                assert_eq!(out.tensors[0].dtype, Bool);
                assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
            }
            // Integers and a scalar.
            let op = alloc::format!("aten::{name}.Scalar_out");
            let ints = [1.0, 2.0, 3.0];
            let want: Vec<f64> = ints.iter().map(|a| f(*a, 2.0) as u8 as f64).collect();
            let out = run_op(
                &op,
                vec![t(Int, &[3], &ints), Arg::Int(2), Arg::Out(Bool, vec![3])],
            )
            .unwrap();
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
    }

    #[test]
    fn table() {
        type Case = (&'static str, Vec<Arg>, Vec<usize>, Vec<f64>);
        let cases: Vec<Case> = vec![
            // The scalar is rounded to float32 before comparing.
            (
                "aten::eq.Scalar_out",
                vec![
                    t(Float, &[1], &[0.1]),
                    Arg::Double(0.1),
                    Arg::Out(Bool, vec![1]),
                ],
                vec![1],
                vec![1.],
            ),
            // An int tensor and a float scalar compare in float.
            (
                "aten::lt.Scalar_out",
                vec![
                    t(Long, &[3], &[0., 1., 2.]),
                    Arg::Double(1.5),
                    Arg::Out(Bool, vec![3]),
                ],
                vec![3],
                vec![1., 1., 0.],
            ),
            // int64 values round to float32 when compared with a float32 tensor.
            (
                "aten::eq.Tensor_out",
                vec![
                    t(Long, &[1], &[16777217.]),
                    t(Float, &[1], &[16777216.]),
                    Arg::Out(Bool, vec![1]),
                ],
                vec![1],
                vec![1.],
            ),
            (
                "aten::ge.Tensor_out",
                vec![
                    t(Float, &[2, 1], &[1., 2.]),
                    t(Float, &[3], &[0., 1.5, 3.]),
                    Arg::Out(Bool, vec![2, 3]),
                ],
                vec![2, 3],
                vec![1., 0., 0., 1., 1., 0.],
            ),
            (
                "aten::ne.Tensor_out",
                vec![
                    t(Bool, &[2], &[0., 1.]),
                    t(Bool, &[2], &[1., 1.]),
                    Arg::Out(Float, vec![2]),
                ],
                vec![2],
                vec![1., 0.],
            ),
            (
                "aten::gt.Scalar_out",
                vec![
                    t(Bool, &[2], &[0., 1.]),
                    Arg::Bool(false),
                    Arg::Out(Bool, vec![2]),
                ],
                vec![2],
                vec![0., 1.],
            ),
            (
                "aten::le.Scalar_out",
                vec![t(Float, &[], &[2.]), Arg::Int(2), Arg::Out(Bool, vec![])],
                vec![],
                vec![1.],
            ),
            (
                "aten::eq.Tensor_out",
                vec![
                    t(Float, &[0, 2], &[]),
                    t(Float, &[2], &[1., 2.]),
                    Arg::Out(Bool, vec![0, 2]),
                ],
                vec![0, 2],
                vec![],
            ),
            (
                "aten::eq.Scalar_out",
                vec![t(Float, &[0], &[]), Arg::Int(1), Arg::Out(Bool, vec![0])],
                vec![0],
                vec![],
            ),
        ];
        for (op, args, shape, want) in cases {
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(out.tensors[0].sizes, shape, "{op}");
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
    }

    #[test]
    fn channels_last() {
        let vals: Vec<f64> = (0..12).map(|x| x as f64).collect();
        let a = OwnedTensor::from_f64(Float, &[1, 3, 2, 2], &vals);
        let cl = a.with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::gt.Tensor_out",
            vec![
                Arg::T(cl),
                Arg::T(OwnedTensor::from_f64(Float, &[1], &[5.5])),
                Arg::Out(Bool, vec![1, 3, 2, 2]),
            ],
        )
        .unwrap();
        let want: Vec<f64> = vals.iter().map(|&x| (x > 5.5) as u8 as f64).collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        // Scalar form.
        let cl = a.with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::le.Scalar_out",
            vec![
                Arg::T(cl),
                Arg::Double(4.0),
                Arg::Out(Bool, vec![1, 3, 2, 2]),
            ],
        )
        .unwrap();
        let want: Vec<f64> = vals.iter().map(|&x| (x <= 4.0) as u8 as f64).collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
    }

    #[test]
    fn errors() {
        assert!(run_op(
            "aten::eq.Tensor_out",
            vec![
                t(Float, &[2], &[1., 2.]),
                t(Float, &[3], &[1., 2., 3.]),
                Arg::Out(Bool, vec![2])
            ]
        )
        .is_err());
        assert!(run_op(
            "aten::eq.Scalar_out",
            vec![
                t(Float, &[2], &[1., 2.]),
                Arg::Str("x".into()),
                Arg::Out(Bool, vec![2])
            ]
        )
        .is_err());
    }

    #[test]
    fn allclose() {
        let run = |x: &[f64], y: &[f64], dt: ScalarType, rtol: f64, atol: f64, nan: bool| {
            let n = x.len();
            let out = run_op(
                "aten::allclose.out",
                vec![
                    t(dt, &[n], x),
                    t(dt, &[n], y),
                    Arg::Double(rtol),
                    Arg::Double(atol),
                    Arg::Bool(nan),
                    Arg::Bool(false),
                    Arg::Out(Bool, vec![1]),
                ],
            )
            .unwrap();
            out.tensors[0].to_f64()[0] == 1.0
        };
        let inf = f64::INFINITY;
        let nan = f64::NAN;
        assert!(run(
            &[1.0, 2.0],
            &[1.0, 2.0 + 1e-6],
            Float,
            1e-5,
            1e-8,
            false
        ));
        assert!(!run(&[1.0, 2.0], &[1.0, 2.1], Float, 1e-5, 1e-8, false));
        assert!(run(&[inf, 1.0], &[inf, 1.0], Double, 1e-5, 1e-8, false));
        assert!(!run(&[inf], &[-inf], Double, 1e-5, 1e-8, false));
        assert!(!run(&[nan], &[nan], Float, 1e-5, 1e-8, false));
        assert!(run(&[nan], &[nan], Float, 1e-5, 1e-8, true));
        assert!(!run(&[1.0], &[2.0], Long, 10.0, 10.0, false));
        assert!(run(&[], &[], Float, 0.0, 0.0, false));
        // Different dim orders compare logically; the return-slot form.
        let x = OwnedTensor::from_f64(Float, &[1, 2, 1, 2], &[1., 2., 3., 4.]);
        let y = x.with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::allclose.Tensor",
            vec![
                Arg::T(x.clone()),
                Arg::T(y),
                Arg::Double(0.0),
                Arg::Double(0.0),
                Arg::Bool(false),
                Arg::Bool(false),
                Arg::Out(Bool, vec![]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [1.0]);
        // Shape or dtype mismatch, non-bool out.
        for (o, other) in [
            (Arg::Out(Bool, vec![1]), t(Float, &[4], &[1., 2., 3., 4.])),
            (
                Arg::Out(Bool, vec![1]),
                t(Double, &[1, 2, 1, 2], &[1., 2., 3., 4.]),
            ),
            (Arg::Out(Float, vec![1]), Arg::T(x.clone())),
        ] {
            assert!(run_op(
                "aten::allclose.out",
                vec![
                    Arg::T(x.clone()),
                    other,
                    Arg::Double(0.0),
                    Arg::Double(0.0),
                    Arg::Bool(false),
                    Arg::Bool(false),
                    o
                ]
            )
            .is_err());
        }
    }
}
