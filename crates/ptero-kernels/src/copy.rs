//! Copies that change dtype or layout: clone, `_to_copy`, `copy`, the dim-order ops and
//! the view-like `alias_copy`/`detach_copy`/`lift_fresh_copy`, the device copies
//! `et_copy::_h2d_copy`/`_d2h_copy` (plain copies: this runtime has only host memory),
//! `_conj_physical` (a copy for real tensors) and `view_as_real_copy` (complex tensors are
//! not representable, so it always fails).

use ptero_core::{Dims, Error, KernelArgs, KernelRegistry, Result};

use crate::util::broadcast_strides;
use crate::util::copy::{copy_tensor, copy_view_to_out, Strided};

/// `out = self` with out's dtype and dim order.
fn same_shape_copy(a: &mut KernelArgs<'_>, src: usize, out: usize) -> Result<()> {
    let shape = a.meta(src)?.dims();
    a.resize(out, &shape)?;
    copy_tensor(a, src, out)
}

/// `self, *, memory_format=None, out`
fn clone_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    same_shape_copy(a, 0, 2)
}

/// `self, *, non_blocking=False, memory_format=None, out`
fn to_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    same_shape_copy(a, 0, 3)
}

/// `self, *, out` (alias_copy, detach_copy, lift_fresh_copy)
fn plain_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    same_shape_copy(a, 0, 1)
}

/// `self, src, non_blocking=False, *, out`: `src` broadcast to `self`'s shape.
fn copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let shape = a.meta(0)?.dims();
    let st = broadcast_strides(a.meta(1)?, &shape)?;
    a.resize(3, &shape)?;
    copy_view_to_out(a, 1, Strided::new(&st, 0), &shape, 3)
}

/// Checks the `dim_order` argument against the out tensor's dim order (set by the
/// program when it was exported), as ExecuTorch does.
fn check_dim_order(a: &KernelArgs<'_>, arg: usize, out: usize) -> Result<()> {
    let Some(list) = a.opt_int_list(arg)? else {
        return Ok(());
    };
    let om = a.meta(out)?;
    let want = om.dim_order();
    if list.len() != want.len() {
        return Err(Error::invalid(alloc::format!(
            "dim_order has {} entries, the out tensor has {} dims",
            list.len(),
            want.len()
        )));
    }
    for (k, &w) in want.iter().enumerate() {
        let v = list.get(k)?;
        if v != w as i64 {
            return Err(Error::invalid(alloc::format!(
                "dim_order argument differs from the out tensor's dim order {want:?}"
            )));
        }
    }
    Ok(())
}

/// `self, *, non_blocking=False, dim_order=None, out` (`_to_dim_order_copy`, `_clone_dim_order`)
fn dim_order_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    check_dim_order(a, 2, 3)?;
    same_shape_copy(a, 0, 3)
}

/// `size, *, dim_order=None, out`: only the shape matters, the data is uninitialised.
fn empty_dim_order_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let size: Dims = a.int_list(0)?.to_dims()?;
    a.resize(2, &size)?;
    check_dim_order(a, 1, 2)
}

/// `self, *, out`: host and device memory are the same here, so the copy keeps dtype and
/// values exactly (out must have self's dtype, as ExecuTorch requires).
fn device_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let (sd, od) = (a.meta(0)?.dtype, a.meta(1)?.dtype);
    if sd != od {
        return Err(Error::Dtype {
            arg: 1,
            expected: sd.name().into(),
            found: od,
        });
    }
    same_shape_copy(a, 0, 1)
}

/// `self, *, out`: the conjugate of a real tensor is itself.
fn conj_physical_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let sd = a.meta(0)?.dtype;
    if !sd.is_numeric() {
        return Err(Error::NotImplemented(alloc::format!(
            "_conj_physical of a {sd} tensor (only real dtypes are supported)"
        )));
    }
    same_shape_copy(a, 0, 1)
}

/// `self, *, out`: needs a complex input, which the tensor format here cannot hold.
fn view_as_real_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    Err(Error::NotImplemented(alloc::format!(
        "view_as_real_copy needs a complex tensor; complex dtypes are not supported (input is {})",
        a.meta(0)?.dtype
    )))
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("et_copy::_h2d_copy.out", device_copy_out);
    reg.register("et_copy::_d2h_copy.out", device_copy_out);
    reg.register("aten::_conj_physical.out", conj_physical_out);
    reg.register("aten::view_as_real_copy.out", view_as_real_copy_out);
    reg.register("aten::clone.out", clone_out);
    reg.register("aten::_to_copy.out", to_copy_out);
    reg.register("aten::copy.out", copy_out);
    reg.register("aten::alias_copy.out", plain_copy_out);
    reg.register("aten::detach_copy.out", plain_copy_out);
    reg.register("aten::lift_fresh_copy.out", plain_copy_out);
    reg.register("dim_order_ops::_to_dim_order_copy.out", dim_order_copy_out);
    reg.register("dim_order_ops::_clone_dim_order.out", dim_order_copy_out);
    reg.register("dim_order_ops::_empty_dim_order.out", empty_dim_order_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    fn iota(dtype: ptero_core::ScalarType, shape: &[usize]) -> OwnedTensor {
        let n: usize = shape.iter().product();
        OwnedTensor::from_f64(dtype, shape, &(0..n).map(|x| x as f64).collect::<Vec<_>>())
    }

    #[test]
    fn table() {
        let x = OwnedTensor::from_f64(Float, &[2, 2], &[1.5, -2.75, 0.0, 300.0]);
        type Case = (&'static str, Vec<Arg>, &'static [usize], Vec<f64>);
        let cases: Vec<Case> = vec![
            (
                "aten::clone.out",
                vec![Arg::T(x.clone()), Arg::None, Arg::Out(Float, vec![2, 2])],
                &[2, 2],
                vec![1.5, -2.75, 0.0, 300.0],
            ),
            (
                "aten::_to_copy.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Bool(false),
                    Arg::None,
                    Arg::Out(Int, vec![2, 2]),
                ],
                &[2, 2],
                vec![1., -2., 0., 300.],
            ),
            (
                "aten::_to_copy.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Bool(false),
                    Arg::None,
                    Arg::Out(Byte, vec![2, 2]),
                ],
                &[2, 2],
                vec![1., 254., 0., 44.],
            ),
            (
                "aten::_to_copy.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Bool(false),
                    Arg::None,
                    Arg::Out(Bool, vec![2, 2]),
                ],
                &[2, 2],
                vec![1., 1., 0., 1.],
            ),
            (
                "aten::_to_copy.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Bool(false),
                    Arg::None,
                    Arg::Out(Half, vec![2, 2]),
                ],
                &[2, 2],
                vec![1.5, -2.75, 0.0, 300.0],
            ),
            (
                "aten::copy.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::T(OwnedTensor::from_f64(Long, &[2], &[7., 8.])),
                    Arg::Bool(false),
                    Arg::Out(Float, vec![2, 2]),
                ],
                &[2, 2],
                vec![7., 8., 7., 8.],
            ),
            (
                "aten::alias_copy.out",
                vec![
                    Arg::T(OwnedTensor::from_f64(Float, &[], &[4.0])),
                    Arg::Out(Float, vec![]),
                ],
                &[],
                vec![4.0],
            ),
            (
                "aten::detach_copy.out",
                vec![Arg::T(iota(Float, &[0, 3])), Arg::Out(Float, vec![0, 3])],
                &[0, 3],
                vec![],
            ),
            (
                "aten::lift_fresh_copy.out",
                vec![Arg::T(iota(BFloat16, &[3])), Arg::Out(BFloat16, vec![3])],
                &[3],
                vec![0., 1., 2.],
            ),
        ];
        for (op, args, shape, want) in cases {
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(out.tensors[0].sizes, shape, "{op}");
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
    }

    #[test]
    fn dim_order_copies() {
        let reg = crate::portable();
        let k = reg
            .lookup("dim_order_ops::_to_dim_order_copy.out", &[])
            .unwrap();
        let x = iota(Float, &[2, 3, 2, 2]);
        let want = x.to_f64();
        // Contiguous -> channels last, converting to f16 on the way.
        let out_cl = OwnedTensor::zeros(Half, &[2, 3, 2, 2]).with_dim_order(&[0, 2, 3, 1]);
        let got = run(
            k,
            vec![
                Arg::T(x.clone()),
                Arg::Bool(false),
                Arg::Ints(vec![0, 2, 3, 1]),
                Arg::OutLike(out_cl),
            ],
        )
        .unwrap()
        .tensors
        .remove(0);
        assert_eq!(got.dim_order, [0, 2, 3, 1]);
        assert_close(&got.to_f64(), &want, 0.0, 0.0);
        // The stored bytes really are channels-last: element (0,1,0,0) is second.
        assert_close(
            &[crate::util::load_f64(&got.bytes, Half, 1)],
            &[4.0],
            0.0,
            0.0,
        );
        // Channels last -> contiguous.
        let back = run(
            k,
            vec![
                Arg::T(got.clone()),
                Arg::Bool(false),
                Arg::None,
                Arg::Out(Float, vec![2, 3, 2, 2]),
            ],
        )
        .unwrap();
        assert_eq!(back.tensors[0].dim_order, [0, 1, 2, 3]);
        assert_close(&back.tensors[0].to_f64(), &want, 0.0, 0.0);
        // A dim_order argument that disagrees with the out tensor is an error.
        assert!(run(
            k,
            vec![
                Arg::T(x),
                Arg::Bool(false),
                Arg::Ints(vec![0, 2, 3, 1]),
                Arg::Out(Float, vec![2, 3, 2, 2]),
            ],
        )
        .is_err());
    }

    #[test]
    fn empty_and_errors() {
        let out = run_op(
            "dim_order_ops::_empty_dim_order.out",
            vec![
                Arg::Ints(vec![2, 3]),
                Arg::None,
                Arg::Out(Float, vec![4, 4]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [2, 3]);
        // Rank change is not possible for out tensors.
        assert!(run_op(
            "aten::clone.out",
            vec![
                Arg::T(iota(Float, &[2, 2])),
                Arg::None,
                Arg::Out(Float, vec![4])
            ]
        )
        .is_err());
        // copy.out cannot broadcast [3] to [2, 2].
        assert!(run_op(
            "aten::copy.out",
            vec![
                Arg::T(iota(Float, &[2, 2])),
                Arg::T(iota(Float, &[3])),
                Arg::Bool(false),
                Arg::Out(Float, vec![2, 2])
            ]
        )
        .is_err());
    }

    #[test]
    fn device_and_conj_copies() {
        let x = OwnedTensor::from_f64(Float, &[1, 2, 1, 2], &[1., 2., 3., 4.])
            .with_dim_order(&[0, 2, 3, 1]);
        for name in [
            "et_copy::_h2d_copy.out",
            "et_copy::_d2h_copy.out",
            "aten::_conj_physical.out",
        ] {
            let out = run_op(
                name,
                vec![Arg::T(x.clone()), Arg::Out(Float, vec![1, 2, 1, 2])],
            )
            .unwrap();
            assert_eq!(out.tensors[0].to_f64(), [1., 2., 3., 4.], "{name}");
            let e = OwnedTensor::zeros(Int, &[0, 3]);
            let out = run_op(name, vec![Arg::T(e), Arg::Out(Int, vec![0, 3])]).unwrap();
            assert_eq!(out.tensors[0].sizes, [0, 3]);
            let z = OwnedTensor::from_f64(Long, &[], &[7.]);
            let out = run_op(name, vec![Arg::T(z), Arg::Out(Long, vec![])]).unwrap();
            assert_eq!(out.tensors[0].to_f64(), [7.]);
        }
        assert!(run_op(
            "et_copy::_h2d_copy.out",
            vec![Arg::T(x.clone()), Arg::Out(Double, vec![1, 2, 1, 2])]
        )
        .is_err());
        assert!(run_op(
            "aten::view_as_real_copy.out",
            vec![Arg::T(x), Arg::Out(Float, vec![1, 2, 1, 2, 2])]
        )
        .is_err());
    }
}
