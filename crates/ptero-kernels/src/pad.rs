//! Padding: `constant_pad_nd` (negative pads crop).

use ptero_core::{Error, KernelArgs, KernelRegistry, Result};

use crate::util::{for_each_index, load_f64, load_i64, store_f64, store_i64};

/// `constant_pad_nd(self, pad[], value, *, out)`: `pad` holds (before, after) pairs from
/// the last dimension backwards.
fn constant_pad_nd(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let x = *a.meta(0)?;
    let pads = a.int_list(1)?;
    let value = a.scalar(2)?;
    let rank = x.dim();
    if pads.len() % 2 != 0 || pads.len() / 2 > rank {
        return Err(Error::invalid(alloc::format!(
            "constant_pad_nd: pad must have an even length of at most {} for a {rank}-d input, got {}",
            2 * rank,
            pads.len()
        )));
    }
    let mut before = [0i64; ptero_core::MAX_DIMS];
    let mut shape = x.dims();
    for k in 0..pads.len() / 2 {
        let d = rank - 1 - k;
        let (l, r) = (pads.get(2 * k)?, pads.get(2 * k + 1)?);
        let size = x.sizes()[d] as i64 + l + r;
        if size < 0 {
            return Err(Error::shape(alloc::format!(
                "constant_pad_nd: padding ({l}, {r}) of dimension {d} (size {}) gives a negative size",
                x.sizes()[d]
            )));
        }
        before[d] = l;
        shape[d] = size as usize;
    }
    a.resize(3, &shape)?;
    let od = a.meta(3)?.dtype;
    if od != x.dtype {
        return Err(Error::Dtype {
            arg: 3,
            expected: x.dtype.name().into(),
            found: od,
        });
    }
    let o_strides = a.meta(3)?.stride_dims();
    let xv = a.tensor(0)?;
    let ov = a.out(3)?;
    let ob = &mut *ov.bytes;
    let int = !od.is_float();
    let (vf, vi) = (value.to_f64(), value.to_i64());
    for_each_index(&shape, |idx| {
        let mut inside = true;
        let mut xo = 0usize;
        let mut oo = 0usize;
        for d in 0..rank {
            let i = idx[d] as i64 - before[d];
            if i < 0 || i >= x.sizes()[d] as i64 {
                inside = false;
            } else {
                xo += i as usize * x.strides()[d];
            }
            oo += idx[d] * o_strides[d];
        }
        match (inside, int) {
            (true, true) => store_i64(ob, od, oo, load_i64(xv.bytes, od, xo)),
            (true, false) => store_f64(ob, od, oo, load_f64(xv.bytes, od, xo)),
            (false, true) => store_i64(ob, od, oo, vi),
            (false, false) => store_f64(ob, od, oo, vf),
        }
    });
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::constant_pad_nd.out", constant_pad_nd);
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_op, Arg, OwnedTensor};
    use alloc::vec;
    use ptero_core::ScalarType::*;

    #[test]
    fn table() {
        let x = OwnedTensor::from_f64(Float, &[2, 2], &[1., 2., 3., 4.]);
        let cases: [(alloc::vec::Vec<i64>, &[usize], alloc::vec::Vec<f64>); 3] = [
            (vec![1, 0], &[2, 3], vec![9., 1., 2., 9., 3., 4.]),
            (vec![0, 0, 1, 0], &[3, 2], vec![9., 9., 1., 2., 3., 4.]),
            (vec![-1, 1], &[2, 2], vec![2., 9., 4., 9.]),
        ];
        for (pad, shape, want) in cases {
            let out = run_op(
                "aten::constant_pad_nd.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Ints(pad.clone()),
                    Arg::Double(9.0),
                    Arg::Out(Float, vec![3, 3]),
                ],
            )
            .unwrap();
            assert_eq!(out.tensors[0].sizes, shape, "{pad:?}");
            assert_eq!(out.tensors[0].to_f64(), want, "{pad:?}");
        }
        let cl =
            OwnedTensor::from_f64(Long, &[1, 1, 1, 2], &[5., 6.]).with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::constant_pad_nd.out",
            vec![
                Arg::T(cl),
                Arg::Ints(vec![1, 1]),
                Arg::Int(0),
                Arg::Out(Long, vec![1, 1, 1, 4]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [0., 5., 6., 0.]);
        assert!(run_op(
            "aten::constant_pad_nd.out",
            vec![
                Arg::T(x.clone()),
                Arg::Ints(vec![1]),
                Arg::Double(0.0),
                Arg::Out(Float, vec![2, 2])
            ]
        )
        .is_err());
        assert!(run_op(
            "aten::constant_pad_nd.out",
            vec![
                Arg::T(x),
                Arg::Ints(vec![-3, 0]),
                Arg::Double(0.0),
                Arg::Out(Float, vec![2, 2])
            ]
        )
        .is_err());
    }
}
