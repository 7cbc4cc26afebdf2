//! Logical and bitwise binary ops: logical_and/or/xor (any dtypes, non-zero is true),
//! bitwise_and/or/xor (integers and bool) and the bit shifts (integers).

use ptero_core::{Error, KernelArgs, KernelRegistry, Result};

use crate::util::elementwise::{binary, result_type, BinaryFns, Operand};
use crate::util::unary::{cast_scalar, check_can_cast};
use crate::util::ComputeKind;

fn no_float(a: f64, _: f64) -> f64 {
    a
}

const LOGICAL_AND: BinaryFns = BinaryFns {
    name: "logical_and",
    float: no_float,
    int: None,
    boolean: Some(|a, b| a && b),
    f32: None,
    simd: None,
};
const LOGICAL_OR: BinaryFns = BinaryFns {
    name: "logical_or",
    float: no_float,
    int: None,
    boolean: Some(|a, b| a || b),
    f32: None,
    simd: None,
};
const LOGICAL_XOR: BinaryFns = BinaryFns {
    name: "logical_xor",
    float: no_float,
    int: None,
    boolean: Some(|a, b| a != b),
    f32: None,
    simd: None,
};

fn logical(a: &mut KernelArgs<'_>, fns: &BinaryFns) -> Result<()> {
    a.expect_len(3)?;
    binary(
        a,
        Operand::Tensor(0),
        Operand::Tensor(1),
        2,
        ComputeKind::Bool,
        fns,
    )
}

fn logical_and_out(a: &mut KernelArgs<'_>) -> Result<()> {
    logical(a, &LOGICAL_AND)
}
fn logical_or_out(a: &mut KernelArgs<'_>) -> Result<()> {
    logical(a, &LOGICAL_OR)
}
fn logical_xor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    logical(a, &LOGICAL_XOR)
}

const BITWISE_AND: BinaryFns = BinaryFns {
    name: "bitwise_and",
    float: no_float,
    int: Some(|a, b| Ok(a & b)),
    boolean: Some(|a, b| a & b),
    f32: None,
    simd: None,
};
const BITWISE_OR: BinaryFns = BinaryFns {
    name: "bitwise_or",
    float: no_float,
    int: Some(|a, b| Ok(a | b)),
    boolean: Some(|a, b| a | b),
    f32: None,
    simd: None,
};
const BITWISE_XOR: BinaryFns = BinaryFns {
    name: "bitwise_xor",
    float: no_float,
    int: Some(|a, b| Ok(a ^ b)),
    boolean: Some(|a, b| a ^ b),
    f32: None,
    simd: None,
};

/// Values are sign- or zero-extended to i64, so shifting in 64 bits and wrapping to the
/// dtype on store gives PyTorch's results for every width: shifting left by the width or
/// more gives 0, shifting right fills with the sign bit.
fn shl(a: i64, b: i64) -> Result<i64> {
    Ok(if (0..64).contains(&b) {
        ((a as u64) << b) as i64
    } else {
        0
    })
}
fn shr(a: i64, b: i64) -> Result<i64> {
    Ok(if (0..64).contains(&b) {
        a >> b
    } else {
        a >> 63
    })
}

const SHIFT_LEFT: BinaryFns = BinaryFns {
    name: "bitwise_left_shift",
    float: no_float,
    int: Some(shl),
    boolean: None,
    f32: None,
    simd: None,
};
const SHIFT_RIGHT: BinaryFns = BinaryFns {
    name: "bitwise_right_shift",
    float: no_float,
    int: Some(shr),
    boolean: None,
    f32: None,
    simd: None,
};

/// Runs an integer op in the promoted dtype of `self` and argument 1 (tensor or scalar).
fn integer_op(a: &mut KernelArgs<'_>, scalar: bool, fns: &BinaryFns) -> Result<()> {
    a.expect_len(3)?;
    let b = if scalar {
        Operand::Scalar(a.scalar(1)?)
    } else {
        Operand::Tensor(1)
    };
    let c = result_type(a, Operand::Tensor(0), b)?;
    let kind = ComputeKind::of(c)?;
    let ok = match kind {
        ComputeKind::Int => true,
        ComputeKind::Bool => fns.boolean.is_some(),
        ComputeKind::Float => false,
    };
    if !ok {
        let what = if fns.boolean.is_some() {
            "integer or bool dtypes"
        } else {
            "integer dtypes"
        };
        return Err(Error::Dtype {
            arg: 0,
            expected: alloc::format!("{what} for {}", fns.name),
            found: c,
        });
    }
    let od = a.meta(2)?.dtype;
    check_can_cast(2, c, od)?;
    let b = match b {
        Operand::Scalar(s) => Operand::Scalar(cast_scalar(s, c)),
        t => t,
    };
    binary(a, Operand::Tensor(0), b, 2, kind, fns)
}

fn bitwise_and_tensor(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, false, &BITWISE_AND)
}
fn bitwise_and_scalar(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, true, &BITWISE_AND)
}
fn bitwise_or_tensor(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, false, &BITWISE_OR)
}
fn bitwise_or_scalar(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, true, &BITWISE_OR)
}
fn bitwise_xor_tensor(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, false, &BITWISE_XOR)
}
fn bitwise_xor_scalar(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, true, &BITWISE_XOR)
}
fn shl_tensor(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, false, &SHIFT_LEFT)
}
fn shl_scalar(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, true, &SHIFT_LEFT)
}
fn shr_tensor(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, false, &SHIFT_RIGHT)
}
fn shr_scalar(a: &mut KernelArgs<'_>) -> Result<()> {
    integer_op(a, true, &SHIFT_RIGHT)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    let ops: &[(&str, ptero_core::KernelFn)] = &[
        ("aten::logical_and.out", logical_and_out),
        ("aten::logical_or.out", logical_or_out),
        ("aten::logical_xor.out", logical_xor_out),
        ("aten::bitwise_and.Tensor_out", bitwise_and_tensor),
        ("aten::bitwise_and.Scalar_out", bitwise_and_scalar),
        ("aten::bitwise_or.Tensor_out", bitwise_or_tensor),
        ("aten::bitwise_or.Scalar_out", bitwise_or_scalar),
        ("aten::bitwise_xor.Tensor_out", bitwise_xor_tensor),
        ("aten::bitwise_xor.Scalar_out", bitwise_xor_scalar),
        ("aten::bitwise_left_shift.Tensor_out", shl_tensor),
        ("aten::bitwise_left_shift.Tensor_Scalar_out", shl_scalar),
        ("aten::bitwise_right_shift.Tensor_out", shr_tensor),
        ("aten::bitwise_right_shift.Tensor_Scalar_out", shr_scalar),
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
    fn table() {
        let nan = f64::NAN;
        type Case = (&'static str, Vec<Arg>, Vec<usize>, Vec<f64>);
        let cases: Vec<Case> = vec![
            (
                "aten::logical_and.out",
                vec![
                    t(Float, &[4], &[0., 1., nan, -2.]),
                    t(Long, &[4], &[1., 0., 3., 4.]),
                    Arg::Out(Bool, vec![4]),
                ],
                vec![4],
                vec![0., 0., 1., 1.],
            ),
            (
                "aten::logical_or.out",
                vec![
                    t(Bool, &[2, 1], &[0., 1.]),
                    t(Int, &[2], &[0., 5.]),
                    Arg::Out(Float, vec![2, 2]),
                ],
                vec![2, 2],
                vec![0., 1., 1., 1.],
            ),
            (
                "aten::logical_xor.out",
                vec![
                    t(Half, &[3], &[0., 1., 2.]),
                    t(Half, &[3], &[0., 0., 3.]),
                    Arg::Out(Bool, vec![3]),
                ],
                vec![3],
                vec![0., 1., 0.],
            ),
            (
                "aten::bitwise_and.Tensor_out",
                vec![
                    t(Int, &[3], &[12., -1., 7.]),
                    t(Int, &[3], &[10., 6., 0.]),
                    Arg::Out(Int, vec![3]),
                ],
                vec![3],
                vec![8., 6., 0.],
            ),
            (
                "aten::bitwise_or.Scalar_out",
                vec![
                    t(Byte, &[2], &[1., 128.]),
                    Arg::Int(2),
                    Arg::Out(Byte, vec![2]),
                ],
                vec![2],
                vec![3., 130.],
            ),
            (
                "aten::bitwise_xor.Tensor_out",
                vec![
                    t(Bool, &[3], &[0., 1., 1.]),
                    t(Bool, &[3], &[1., 1., 0.]),
                    Arg::Out(Bool, vec![3]),
                ],
                vec![3],
                vec![1., 0., 1.],
            ),
            // A bool tensor with an int scalar computes in int64.
            (
                "aten::bitwise_xor.Scalar_out",
                vec![
                    t(Bool, &[2], &[0., 1.]),
                    Arg::Int(6),
                    Arg::Out(Long, vec![2]),
                ],
                vec![2],
                vec![6., 7.],
            ),
            (
                "aten::bitwise_left_shift.Tensor_out",
                vec![
                    t(Char, &[4], &[1., 1., 3., -1.]),
                    t(Char, &[4], &[3., 7., 8., 2.]),
                    Arg::Out(Char, vec![4]),
                ],
                vec![4],
                vec![8., -128., 0., -4.],
            ),
            (
                "aten::bitwise_right_shift.Tensor_Scalar_out",
                vec![
                    t(Short, &[3], &[-32768., 1024., -1.]),
                    Arg::Int(20),
                    Arg::Out(Short, vec![3]),
                ],
                vec![3],
                vec![-1., 0., -1.],
            ),
            (
                "aten::bitwise_right_shift.Tensor_out",
                vec![
                    t(Long, &[3], &[-16., 16., 5.]),
                    t(Long, &[3], &[2., 2., -1.]),
                    Arg::Out(Long, vec![3]),
                ],
                vec![3],
                vec![-4., 4., 0.],
            ),
            (
                "aten::bitwise_left_shift.Tensor_Scalar_out",
                vec![t(Long, &[], &[3.]), Arg::Int(64), Arg::Out(Long, vec![])],
                vec![],
                vec![0.],
            ),
            (
                "aten::bitwise_and.Tensor_out",
                vec![
                    t(Long, &[0], &[]),
                    t(Long, &[1], &[1.]),
                    Arg::Out(Long, vec![0]),
                ],
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
        let x = OwnedTensor::from_f64(Int, &[1, 3, 2, 2], &vals).with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::bitwise_and.Scalar_out",
            vec![
                Arg::T(x.clone()),
                Arg::Int(5),
                Arg::Out(Int, vec![1, 3, 2, 2]),
            ],
        )
        .unwrap();
        let want: Vec<f64> = (0..12).map(|x| (x & 5) as f64).collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        let out = run_op(
            "aten::logical_and.out",
            vec![
                Arg::T(x),
                Arg::T(OwnedTensor::from_f64(Int, &[1, 3, 2, 2], &vals)),
                Arg::Out(Bool, vec![1, 3, 2, 2]),
            ],
        )
        .unwrap();
        let want: Vec<f64> = (0..12).map(|x| (x != 0) as u8 as f64).collect();
        assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
    }

    #[test]
    fn errors() {
        let f = || t(Float, &[2], &[1., 2.]);
        let i = || t(Int, &[2], &[1., 2.]);
        let bo = || t(Bool, &[2], &[1., 0.]);
        let cases: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::bitwise_and.Tensor_out",
                vec![f(), i(), Arg::Out(Float, vec![2])],
            ),
            (
                "aten::bitwise_and.Scalar_out",
                vec![i(), Arg::Double(1.5), Arg::Out(Float, vec![2])],
            ),
            (
                "aten::bitwise_left_shift.Tensor_out",
                vec![bo(), bo(), Arg::Out(Bool, vec![2])],
            ),
            (
                "aten::bitwise_or.Tensor_out",
                vec![i(), i(), Arg::Out(Bool, vec![2])],
            ),
            (
                "aten::logical_and.out",
                vec![i(), t(Int, &[3], &[1., 2., 3.]), Arg::Out(Bool, vec![2])],
            ),
        ];
        for (op, args) in cases {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }
}
