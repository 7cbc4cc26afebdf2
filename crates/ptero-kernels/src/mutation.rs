//! In-place ops the exporter keeps as mutations: `aten::copy_` writes a mutable buffer's
//! new value back after the graph (`insert_write_back_for_buffers_pass`).

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, Value};

use crate::util::copy::{copy_cast, Strided};
use crate::util::{broadcast_strides, for_each_offset, load_f64, load_i64, store_f64, store_i64};

/// `copy_(self, src, non_blocking=False) -> self`: `src` broadcast into `self`, converting dtype.
fn copy_(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let dst = *a.meta(0)?;
    let src = *a.meta(1)?;
    let shape = dst.dims();
    let src_st = broadcast_strides(&src, &shape)?;
    if src.dtype == dst.dtype && src.sizes() == dst.sizes() && src.dim_order() == dst.dim_order() {
        let s = a.tensor(1)?;
        let d = a.out(0)?;
        d.bytes.copy_from_slice(s.bytes);
    } else if src.dtype == dst.dtype {
        // Same dtype: move element bytes (any dtype, opaque ones included).
        let s = a.tensor(1)?;
        let d = a.out(0)?;
        copy_cast(
            d.bytes,
            dst.dtype,
            Strided::new(dst.strides(), 0),
            s.bytes,
            src.dtype,
            Strided::new(&src_st, 0),
            &shape,
        )?;
    } else {
        if !src.dtype.is_numeric() || !dst.dtype.is_numeric() {
            return Err(Error::Dtype {
                arg: 1,
                expected: dst.dtype.name().into(),
                found: src.dtype,
            });
        }
        let s = a.tensor(1)?;
        let d = a.out(0)?;
        let (sd, dd) = (src.dtype, dst.dtype);
        let ob = &mut *d.bytes;
        let int = !dd.is_float() && !sd.is_float();
        for_each_offset(&shape, [dst.strides(), &src_st], |[o, i]| {
            if int {
                store_i64(ob, dd, o, load_i64(s.bytes, sd, i));
            } else {
                store_f64(ob, dd, o, load_f64(s.bytes, sd, i));
            }
        });
    }
    // The return slot, when it is a separate tensor value, refers to `self`.
    if a.len() > 3
        && matches!(a.value(3)?, Value::Tensor(_))
        && a.value_index(3)? != a.value_index(0)?
    {
        a.alias(3, 0)?;
        a.resize(3, &shape)?;
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::copy_", copy_);
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_op, Arg, OwnedTensor};
    use alloc::vec;
    use ptero_core::ScalarType::*;

    #[test]
    fn copies_with_broadcast_and_cast() {
        // The harness's Out arg plays `self` (it is writable).
        let src = OwnedTensor::from_f64(Long, &[2], &[3., 4.]);
        let out = run_op(
            "aten::copy_",
            vec![Arg::Out(Float, vec![2, 2]), Arg::T(src), Arg::Bool(false)],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [3., 4., 3., 4.]);
        let bad = OwnedTensor::from_f64(Float, &[3], &[1., 2., 3.]);
        assert!(run_op(
            "aten::copy_",
            vec![Arg::Out(Float, vec![2, 2]), Arg::T(bad), Arg::Bool(false)]
        )
        .is_err());
    }

    #[test]
    fn opaque_dtypes_copy_bytes_or_fail() {
        // A broadcast copy of float8 bytes moves them unchanged (it used to go through the
        // numeric load/store helpers, which do not know float8).
        let src = OwnedTensor {
            dtype: Float8E4M3FN,
            sizes: vec![2],
            dim_order: vec![0],
            bytes: vec![0x38, 0xc0],
        };
        let out = run_op(
            "aten::copy_",
            vec![
                Arg::Out(Float8E4M3FN, vec![2, 2]),
                Arg::T(src.clone()),
                Arg::Bool(false),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].bytes, [0x38, 0xc0, 0x38, 0xc0]);
        // Converting an opaque dtype is an error, not garbage.
        assert!(run_op(
            "aten::copy_",
            vec![Arg::Out(Float, vec![2]), Arg::T(src), Arg::Bool(false)]
        )
        .is_err());
    }
}
