//! Tensor creation: full/full_like/zeros/ones/empty, arange, scalar_tensor and fill.

use ptero_core::{Dims, Error, KernelArgs, KernelRegistry, Result, Scalar, ScalarType};

use crate::util::{load_f64, load_i64, store_f64, store_i64};

/// Sets every element of out-argument `out` to `v` cast to its dtype. The element is
/// encoded once and then repeated, so the dim order does not matter.
fn fill_out(a: &KernelArgs<'_>, out: usize, v: Scalar) -> Result<()> {
    let o = a.out(out)?;
    let dt = o.meta.dtype;
    if !dt.is_numeric() {
        return Err(Error::Dtype {
            arg: out,
            expected: "a numeric dtype".into(),
            found: dt,
        });
    }
    let es = dt.size();
    let mut elem = [0u8; 8];
    match v {
        Scalar::Double(d) => store_f64(&mut elem, dt, 0, d),
        Scalar::Int(i) => store_i64(&mut elem, dt, 0, i),
        Scalar::Bool(b) => store_i64(&mut elem, dt, 0, b as i64),
    }
    let pattern = &elem[..es];
    // Typed fills compile to vector stores; the byte loop is for misaligned views.
    let filled = match es {
        1 => {
            o.bytes.fill(pattern[0]);
            true
        }
        2 => bytemuck::try_cast_slice_mut::<u8, u16>(o.bytes)
            .map(|d| d.fill(u16::from_le_bytes([elem[0], elem[1]])))
            .is_ok(),
        4 => bytemuck::try_cast_slice_mut::<u8, u32>(o.bytes)
            .map(|d| d.fill(u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]])))
            .is_ok(),
        8 => bytemuck::try_cast_slice_mut::<u8, u64>(o.bytes)
            .map(|d| d.fill(u64::from_le_bytes(elem)))
            .is_ok(),
        _ => false,
    };
    if !filled {
        for chunk in o.bytes.chunks_exact_mut(es) {
            chunk.copy_from_slice(pattern);
        }
    }
    Ok(())
}

fn sized(a: &mut KernelArgs<'_>, size_arg: usize, out: usize) -> Result<()> {
    let size: Dims = a.int_list(size_arg)?.to_dims()?;
    a.resize(out, &size)
}

/// `size[], fill_value, *, out`
fn full_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let v = a.scalar(1)?;
    sized(a, 0, 2)?;
    fill_out(a, 2, v)
}

/// `self, fill_value, *, memory_format=None, out`
fn full_like_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let v = a.scalar(1)?;
    let shape = a.meta(0)?.dims();
    a.resize(3, &shape)?;
    fill_out(a, 3, v)
}

/// `size[], *, out`
fn zeros_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    sized(a, 0, 1)?;
    fill_out(a, 1, Scalar::Int(0))
}

fn ones_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    sized(a, 0, 1)?;
    fill_out(a, 1, Scalar::Int(1))
}

/// `size[], *, memory_format=None, out`: only the shape is set.
fn empty_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    sized(a, 0, 2)
}

/// `s, *, out`
fn scalar_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let v = a.scalar(0)?;
    a.resize(1, &[])?;
    fill_out(a, 1, v)
}

/// `self, value, *, out`
fn fill_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let v = a.scalar(1)?;
    let shape = a.meta(0)?.dims();
    a.resize(2, &shape)?;
    fill_out(a, 2, v)
}

/// `self, value (0-d tensor), *, out`
fn fill_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let vm = a.meta(1)?;
    if vm.dim() != 0 {
        return Err(Error::invalid(alloc::format!(
            "fill_ only supports a 0-dimension value tensor, got {} dims",
            vm.dim()
        )));
    }
    let v = {
        let t = a.tensor(1)?;
        let dt = t.meta.dtype;
        if dt.is_float() {
            Scalar::Double(load_f64(t.bytes, dt, 0))
        } else if dt == ScalarType::Bool {
            Scalar::Bool(load_i64(t.bytes, dt, 0) != 0)
        } else {
            Scalar::Int(load_i64(t.bytes, dt, 0))
        }
    };
    let shape = a.meta(0)?.dims();
    a.resize(2, &shape)?;
    fill_out(a, 2, v)
}

/// Fills out-argument `out` with `start + i * step` for the PyTorch arange length.
fn arange(
    a: &mut KernelArgs<'_>,
    start: Scalar,
    end: Scalar,
    step: Scalar,
    out: usize,
) -> Result<()> {
    let (s, e, st) = (start.to_f64(), end.to_f64(), step.to_f64());
    for v in [s, e] {
        if !v.is_finite() {
            return Err(Error::invalid(alloc::format!(
                "arange: unsupported range bound {v}"
            )));
        }
    }
    if st == 0.0 || st.is_nan() {
        return Err(Error::invalid("arange: step must be nonzero"));
    }
    if !((st > 0.0 && e >= s) || (st < 0.0 && e <= s)) {
        return Err(Error::invalid(alloc::format!(
            "arange: upper bound {e} and lower bound {s} are inconsistent with step sign {st}"
        )));
    }
    let od = a.meta(out)?.dtype;
    let all_int = [start, end, step]
        .iter()
        .all(|v| !matches!(v, Scalar::Double(_)));
    // PyTorch computes the length in double; integer outputs with integer bounds use the
    // exact integer difference.
    let len = if od.is_integral() && all_int {
        libm::ceil((end.to_i64() as f64 - start.to_i64() as f64) / step.to_i64() as f64)
    } else {
        libm::ceil((e - s) / st)
    };
    if !(0.0..=(usize::MAX as f64)).contains(&len) {
        return Err(Error::invalid(alloc::format!(
            "arange: invalid length {len}"
        )));
    }
    let len = len as usize;
    a.resize(out, &[len])?;
    let o = a.out(out)?;
    let ostep = o.meta.strides().first().copied().unwrap_or(1);
    if all_int && !od.is_float() {
        let (s, st) = (start.to_i64(), step.to_i64());
        for i in 0..len {
            store_i64(
                o.bytes,
                od,
                i * ostep,
                s.wrapping_add((i as i64).wrapping_mul(st)),
            );
        }
    } else {
        for i in 0..len {
            store_f64(o.bytes, od, i * ostep, s + i as f64 * st);
        }
    }
    Ok(())
}

/// `end, *, out`
fn arange_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let end = a.scalar(0)?;
    arange(a, Scalar::Int(0), end, Scalar::Int(1), 1)
}

/// `start, end, step=1, *, out`
fn arange_start_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let (s, e, st) = (a.scalar(0)?, a.scalar(1)?, a.scalar(2)?);
    arange(a, s, e, st, 3)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::full.out", full_out);
    reg.register("aten::full_like.out", full_like_out);
    reg.register("aten::zeros.out", zeros_out);
    reg.register("aten::ones.out", ones_out);
    reg.register("aten::empty.out", empty_out);
    reg.register("aten::scalar_tensor.out", scalar_tensor_out);
    reg.register("aten::fill.Scalar_out", fill_scalar_out);
    reg.register("aten::fill.Tensor_out", fill_tensor_out);
    reg.register("aten::arange.out", arange_out);
    reg.register("aten::arange.start_out", arange_start_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    fn out(dt: ScalarType, shape: &[usize]) -> Arg {
        Arg::Out(dt, shape.to_vec())
    }
    fn ints(v: &[i64]) -> Arg {
        Arg::Ints(v.to_vec())
    }

    type Case = (&'static str, Vec<Arg>, Vec<usize>, Vec<f64>);

    #[test]
    fn table() {
        let cl = OwnedTensor::zeros(Float, &[1, 2, 1, 2]).with_dim_order(&[0, 2, 3, 1]);
        let cases: Vec<Case> = vec![
            (
                "aten::full.out",
                vec![ints(&[2, 2]), Arg::Double(1.5), out(Float, &[3, 3])],
                vec![2, 2],
                vec![1.5; 4],
            ),
            (
                "aten::full.out",
                vec![ints(&[3]), Arg::Double(-2.7), out(Int, &[3])],
                vec![3],
                vec![-2.; 3],
            ),
            (
                "aten::full.out",
                vec![ints(&[0]), Arg::Int(1), out(Float, &[2])],
                vec![0],
                vec![],
            ),
            (
                "aten::full_like.out",
                vec![
                    Arg::T(cl.clone()),
                    Arg::Bool(true),
                    Arg::None,
                    out(Bool, &[1, 2, 1, 2]),
                ],
                vec![1, 2, 1, 2],
                vec![1.; 4],
            ),
            (
                "aten::full_like.out",
                vec![
                    Arg::T(cl),
                    Arg::Int(3),
                    Arg::None,
                    Arg::OutLike(
                        OwnedTensor::zeros(Half, &[1, 2, 1, 2]).with_dim_order(&[0, 2, 3, 1]),
                    ),
                ],
                vec![1, 2, 1, 2],
                vec![3.; 4],
            ),
            (
                "aten::zeros.out",
                vec![ints(&[2]), out(BFloat16, &[2])],
                vec![2],
                vec![0., 0.],
            ),
            (
                "aten::ones.out",
                vec![ints(&[]), out(Long, &[])],
                vec![],
                vec![1.],
            ),
            (
                "aten::scalar_tensor.out",
                vec![Arg::Double(0.25), out(Double, &[])],
                vec![],
                vec![0.25],
            ),
            (
                "aten::fill.Scalar_out",
                vec![
                    Arg::T(OwnedTensor::zeros(Float, &[3])),
                    Arg::Int(7),
                    out(Float, &[3]),
                ],
                vec![3],
                vec![7.; 3],
            ),
            (
                "aten::fill.Tensor_out",
                vec![
                    Arg::T(OwnedTensor::zeros(Long, &[2])),
                    Arg::T(OwnedTensor::from_f64(Double, &[], &[4.9])),
                    out(Long, &[2]),
                ],
                vec![2],
                vec![4.; 2],
            ),
            (
                "aten::arange.out",
                vec![Arg::Int(4), out(Long, &[8])],
                vec![4],
                vec![0., 1., 2., 3.],
            ),
            (
                "aten::arange.out",
                vec![Arg::Double(2.5), out(Float, &[8])],
                vec![3],
                vec![0., 1., 2.],
            ),
            (
                "aten::arange.start_out",
                vec![
                    Arg::Double(1.),
                    Arg::Double(2.),
                    Arg::Double(0.3),
                    out(Float, &[8]),
                ],
                vec![4],
                vec![1., 1.3, 1.6, 1.9],
            ),
            (
                "aten::arange.start_out",
                vec![Arg::Int(5), Arg::Int(-2), Arg::Int(-3), out(Int, &[8])],
                vec![3],
                vec![5., 2., -1.],
            ),
            (
                "aten::arange.start_out",
                vec![Arg::Int(3), Arg::Int(3), Arg::Int(1), out(Long, &[8])],
                vec![0],
                vec![],
            ),
        ];
        for (op, args, shape, want) in cases {
            let o = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(o.tensors[0].sizes, shape, "{op}");
            assert_close(&o.tensors[0].to_f64(), &want, 1e-6, 1e-6);
        }
        let e = run_op(
            "aten::empty.out",
            vec![ints(&[2, 5]), Arg::None, out(Float, &[4, 4])],
        )
        .unwrap();
        assert_eq!(e.tensors[0].sizes, [2, 5]);
    }

    #[test]
    fn errors() {
        let bad: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::arange.start_out",
                vec![Arg::Int(0), Arg::Int(5), Arg::Int(0), out(Long, &[8])],
            ),
            (
                "aten::arange.start_out",
                vec![Arg::Int(0), Arg::Int(5), Arg::Int(-1), out(Long, &[8])],
            ),
            ("aten::arange.out", vec![Arg::Int(100), out(Long, &[8])]),
            (
                "aten::full.out",
                vec![ints(&[-1]), Arg::Int(0), out(Float, &[2])],
            ),
            (
                "aten::fill.Tensor_out",
                vec![
                    Arg::T(OwnedTensor::zeros(Float, &[2])),
                    Arg::T(OwnedTensor::zeros(Float, &[1])),
                    out(Float, &[2]),
                ],
            ),
        ];
        for (op, args) in bad {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }
}
