//! Mask-driven selection: `nonzero`, `masked_select` and `masked_scatter`. Their result
//! sizes depend on the data, so the mask is counted before the out is resized.

use ptero_core::{Dims, Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::index::try_for_each_index;
use crate::util::copy::ElemCopy;
use crate::util::work::Meter;
use crate::util::{
    broadcast_shapes, broadcast_strides, for_each_index, for_each_offset, load_bool, store_i64,
};

/// Like `for_each_offset`, one innermost row at a time, recording each row's elements on
/// `meter` (which stops the walk with an error once the caller's deadline passed).
fn for_each_offset_metered<const N: usize>(
    meter: &mut Meter<'_, '_>,
    shape: &[usize],
    strides: [&[usize]; N],
    mut f: impl FnMut([usize; N]),
) -> Result<()> {
    let Some((&inner, outer)) = shape.split_last() else {
        meter.add(1)?;
        f([0; N]);
        return Ok(());
    };
    if shape.contains(&0) {
        return Ok(());
    }
    let r = outer.len();
    try_for_each_index(outer, |idx| {
        meter.add(inner as u64)?;
        let mut off: [usize; N] =
            core::array::from_fn(|k| idx.iter().zip(strides[k]).map(|(i, s)| i * s).sum());
        for _ in 0..inner {
            f(off);
            for (o, st) in off.iter_mut().zip(strides) {
                *o += st[r];
            }
        }
        Ok(())
    })
}

fn check_mask(a: &KernelArgs<'_>, arg: usize, what: &str) -> Result<()> {
    let t = a.meta(arg)?.dtype;
    if t == ScalarType::Bool {
        Ok(())
    } else {
        Err(Error::Dtype {
            arg,
            expected: alloc::format!("a bool mask ({what})"),
            found: t,
        })
    }
}

fn check_same(a: &KernelArgs<'_>, arg: usize, want: ScalarType) -> Result<()> {
    let t = a.meta(arg)?.dtype;
    if t == want {
        Ok(())
    } else {
        Err(Error::Dtype {
            arg,
            expected: want.name().into(),
            found: t,
        })
    }
}

/// `self, *, out`: int64 `[n, self.dim()]` coordinates of the non-zero elements, in
/// row-major order.
fn nonzero_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let m = *a.meta(0)?;
    check_same(a, 1, ScalarType::Long)?;
    if !m.dtype.is_numeric() {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a numeric or bool dtype".into(),
            found: m.dtype,
        });
    }
    let mut count = 0usize;
    {
        let x = a.tensor(0)?;
        for_each_offset(m.sizes(), [m.strides()], |[o]| {
            count += load_bool(x.bytes, m.dtype, o) as usize;
        });
    }
    let rank = m.dim();
    a.resize(1, &[count, rank])?;
    // A program may pass the input as the out: the resize then changed it under us.
    if a.meta(0)?.sizes() != m.sizes() {
        return Err(Error::invalid("nonzero: the out tensor is the input"));
    }
    let ost = a.meta(1)?.stride_dims();
    let x = a.tensor(0)?;
    let o = a.out(1)?;
    let ob = &mut *o.bytes;
    let mut row = 0usize;
    let xst = m.strides();
    for_each_index(m.sizes(), |idx| {
        let off: usize = idx.iter().zip(xst).map(|(i, s)| i * s).sum();
        if load_bool(x.bytes, m.dtype, off) {
            for (d, &i) in idx.iter().enumerate() {
                store_i64(ob, ScalarType::Long, row * ost[0] + d * ost[1], i as i64);
            }
            row += 1;
        }
    });
    Ok(())
}

/// `self, mask, *, out`: the elements of `self` where the (broadcast) mask is true, as a
/// 1-d tensor in row-major order of the broadcast shape.
fn masked_select_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    check_mask(a, 1, "masked_select")?;
    let (sm, mm) = (*a.meta(0)?, *a.meta(1)?);
    check_same(a, 2, sm.dtype)?;
    let shape = broadcast_shapes(sm.sizes(), mm.sizes())?;
    let (sst, mst) = (
        broadcast_strides(&sm, &shape)?,
        broadcast_strides(&mm, &shape)?,
    );
    // Count the mask's own true elements, times the number of times broadcasting repeats
    // each (so a mask broadcast over a huge shape is not walked just to count).
    let mut trues = 0usize;
    {
        let m = a.tensor(1)?;
        for_each_offset(mm.sizes(), [mm.strides()], |[o]| {
            trues += (m.bytes.get(o).copied().unwrap_or(0) != 0) as usize;
        });
    }
    let lead = shape.len() - mm.dim();
    let mut count = trues;
    for (d, &s) in shape.iter().enumerate() {
        if d < lead || mm.sizes()[d - lead] != s {
            count = count.checked_mul(s).ok_or_else(|| {
                Error::shape(alloc::format!(
                    "masked_select: the mask selects more than {} elements of shape {shape}",
                    usize::MAX
                ))
            })?;
        }
    }
    a.resize(2, &[count])?;
    if count == 0 {
        return Ok(());
    }
    let ost = a.meta(2)?.strides().first().copied().unwrap_or(1);
    let ec = ElemCopy::new(sm.dtype, sm.dtype)?;
    let s = a.tensor(0)?;
    let m = a.tensor(1)?;
    let o = a.out(2)?;
    let ob = &mut *o.bytes;
    let mut k = 0usize;
    // The broadcast shape can be far larger than the inputs and the selection: charged,
    // and stopped by the caller's deadline.
    let mut meter = Meter::charging(a);
    for_each_offset_metered(&mut meter, &shape, [&sst, &mst], |[so, mo]| {
        if m.bytes.get(mo).copied().unwrap_or(0) != 0 {
            ec.copy(ob, k * ost, s.bytes, so);
            k += 1;
        }
    })
}

/// `self, mask, source, *, out`: `self` (broadcast with the mask) with the elements where
/// the mask is true replaced by consecutive elements of `source` (row-major order).
fn masked_scatter_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    check_mask(a, 1, "masked_scatter")?;
    let (sm, mm, srcm) = (*a.meta(0)?, *a.meta(1)?, *a.meta(2)?);
    check_same(a, 2, sm.dtype)?;
    check_same(a, 3, sm.dtype)?;
    let shape = broadcast_shapes(sm.sizes(), mm.sizes())?;
    let (sst, mst) = (
        broadcast_strides(&sm, &shape)?,
        broadcast_strides(&mm, &shape)?,
    );
    a.resize(3, &shape)?;
    let ost = a.meta(3)?.stride_dims();
    let ec = ElemCopy::new(sm.dtype, sm.dtype)?;
    let n_src = srcm.numel();
    let src_sizes = srcm.sizes();
    let src_st = srcm.stride_dims();
    // Storage offset of `source`'s k-th element in row-major order.
    let src_off = |mut k: usize| -> usize {
        let mut off = 0usize;
        for d in (0..src_sizes.len()).rev() {
            let s = src_sizes[d];
            if s > 0 {
                off += (k % s) * src_st[d];
                k /= s;
            }
        }
        off
    };
    let s = a.tensor(0)?;
    let m = a.tensor(1)?;
    let src = a.tensor(2)?;
    let o = a.out(3)?;
    let ob = &mut *o.bytes;
    let mut k = 0usize;
    let mut short = false;
    let dims: Dims = shape;
    for_each_offset(&dims, [&ost, &sst, &mst], |[oo, so, mo]| {
        if m.bytes.get(mo).copied().unwrap_or(0) != 0 {
            if k < n_src {
                ec.copy(ob, oo, src.bytes, src_off(k));
            } else {
                short = true;
            }
            k += 1;
        } else {
            ec.copy(ob, oo, s.bytes, so);
        }
    });
    if short {
        return Err(Error::invalid(alloc::format!(
            "masked_scatter: the mask selects {k} elements but source has only {n_src}"
        )));
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::nonzero.out", nonzero_out);
    reg.register("aten::masked_select.out", masked_select_out);
    reg.register("aten::masked_scatter.out", masked_scatter_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use ptero_core::ScalarType::*;

    #[test]
    fn nonzero() {
        let x = OwnedTensor::from_f64(Float, &[2, 3], &[0., 1., 0., 2., f64::NAN, 0.]);
        let out = run_op(
            "aten::nonzero.out",
            vec![Arg::T(x.clone()), Arg::Out(Long, vec![6, 2])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [3, 2]);
        assert_eq!(out.tensors[0].to_f64(), [0., 1., 1., 0., 1., 1.]);
        // Channels-last bool input: order is logical.
        let b = OwnedTensor::bools(&[1, 2, 1, 2], &[true, false, false, true])
            .with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::nonzero.out",
            vec![Arg::T(b), Arg::Out(Long, vec![4, 4])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [0., 0., 0., 0., 0., 1., 0., 1.]);
        // 0-d and empty inputs.
        let z = OwnedTensor::from_f64(Int, &[], &[5.]);
        let out = run_op(
            "aten::nonzero.out",
            vec![Arg::T(z), Arg::Out(Long, vec![1, 0])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [1, 0]);
        let e = OwnedTensor::zeros(Float, &[0, 3]);
        let out = run_op(
            "aten::nonzero.out",
            vec![Arg::T(e), Arg::Out(Long, vec![0, 2])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, 2]);
        assert!(run_op(
            "aten::nonzero.out",
            vec![Arg::T(x), Arg::Out(Int, vec![6, 2])]
        )
        .is_err());
    }

    /// Selecting through a broadcast walks a space larger than the operands: charged, and
    /// stopped by the caller's deadline.
    #[test]
    fn masked_select_charges_the_broadcast_and_stops_when_interrupted() {
        let n = 1024;
        let mut m = alloc::vec![false; n];
        m[0] = true;
        let args = vec![
            Arg::T(OwnedTensor::zeros(Float, &[1, n])),
            Arg::T(OwnedTensor::bools(&[n, 1], &m)),
            Arg::Out(Float, vec![n]),
        ];
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        let (out, charged) = run_op_with("aten::masked_select.out", args.clone(), ctx).unwrap();
        assert_eq!(out.tensors[0].sizes, [n]);
        assert_eq!(charged, (n * n) as u64);
        assert_eq!(
            run_op_interrupted("aten::masked_select.out", args).unwrap_err(),
            ptero_core::Error::Interrupted
        );
    }

    /// A mask broadcast against self over an N x N space selecting nothing: counted from
    /// the mask alone (the N^2 walk took seconds before), and a row selected through the
    /// broadcast.
    #[test]
    fn masked_select_counts_without_walking_the_broadcast() {
        let n = 1usize << 17;
        let out = run_op(
            "aten::masked_select.out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[1, n])),
                Arg::T(OwnedTensor::bools(&[n, 1], &alloc::vec![false; n])),
                Arg::Out(Float, vec![1]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0]);
        let x = OwnedTensor::from_f64(Float, &[1, 4], &[1., 2., 3., 4.]);
        let m = OwnedTensor::bools(&[3, 1], &[false, true, false]);
        let out = run_op(
            "aten::masked_select.out",
            vec![Arg::T(x), Arg::T(m), Arg::Out(Float, vec![4])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [1., 2., 3., 4.]);
    }

    #[test]
    fn masked_select_and_scatter() {
        let x = OwnedTensor::from_f64(Float, &[2, 2], &[1., 2., 3., 4.]);
        let m = OwnedTensor::bools(&[2], &[false, true]);
        let out = run_op(
            "aten::masked_select.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(m.clone()),
                Arg::Out(Float, vec![4]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [2., 4.]);
        // Broadcast self against a bigger mask; channels-last self.
        let xs = OwnedTensor::from_f64(Long, &[1, 2, 1, 2], &[1., 2., 3., 4.])
            .with_dim_order(&[0, 2, 3, 1]);
        let mm = OwnedTensor::bools(&[2, 1, 1, 1], &[true, false]);
        let out = run_op(
            "aten::masked_select.out",
            vec![Arg::T(xs), Arg::T(mm), Arg::Out(Long, vec![8])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [1., 2., 3., 4.]);
        let src = OwnedTensor::from_f64(Float, &[3], &[10., 20., 30.]);
        let out = run_op(
            "aten::masked_scatter.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(m.clone()),
                Arg::T(src.clone()),
                Arg::Out(Float, vec![2, 2]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [1., 10., 3., 20.]);
        // Empty.
        let e = OwnedTensor::zeros(Float, &[0, 2]);
        let out = run_op(
            "aten::masked_select.out",
            vec![Arg::T(e), Arg::T(m.clone()), Arg::Out(Float, vec![1])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0]);
        // Errors: non-bool mask, source too short, dtype mismatch.
        let im = OwnedTensor::from_f64(Long, &[2], &[0., 1.]);
        assert!(run_op(
            "aten::masked_select.out",
            vec![Arg::T(x.clone()), Arg::T(im), Arg::Out(Float, vec![4])]
        )
        .is_err());
        let all = OwnedTensor::bools(&[2], &[true, true]);
        assert!(run_op(
            "aten::masked_scatter.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(all),
                Arg::T(src),
                Arg::Out(Float, vec![2, 2])
            ]
        )
        .is_err());
        assert!(run_op(
            "aten::masked_select.out",
            vec![Arg::T(x), Arg::T(m), Arg::Out(Double, vec![4])]
        )
        .is_err());
    }
}
