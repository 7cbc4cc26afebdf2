//! Padding: `constant_pad_nd` (negative pads crop), and reflection / replication padding
//! of the last 1, 2 or 3 dims.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result};

use crate::util::copy::ElemCopy;
use crate::util::{for_each_index, store_f64, store_i64};

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
    if !x.dtype.is_numeric() {
        // The fill value has no representation in an opaque dtype (float8, bits16...).
        return Err(Error::Dtype {
            arg: 0,
            expected: "a numeric dtype".into(),
            found: x.dtype,
        });
    }
    // Pads are arbitrary i64s: sizes and positions are computed in i128.
    let mut before = [0i128; ptero_core::MAX_DIMS];
    let mut shape = x.dims();
    for k in 0..pads.len() / 2 {
        let d = rank - 1 - k;
        let (l, r) = (pads.get(2 * k)?, pads.get(2 * k + 1)?);
        let size = x.sizes()[d] as i128 + l as i128 + r as i128;
        let size = usize::try_from(size).map_err(|_| {
            Error::shape(alloc::format!(
                "constant_pad_nd: padding ({l}, {r}) of dimension {d} (size {}) gives size {size}",
                x.sizes()[d]
            ))
        })?;
        before[d] = l as i128;
        shape[d] = size;
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
    let ec = ElemCopy::new(od, x.dtype)?;
    // The fill value, stored once in the out dtype.
    let mut fill = [0u8; 8];
    if od.is_float() {
        store_f64(&mut fill, od, 0, value.to_f64());
    } else {
        store_i64(&mut fill, od, 0, value.to_i64());
    }
    let o_strides = a.meta(3)?.stride_dims();
    let xv = a.tensor(0)?;
    let ov = a.out(3)?;
    let ob = &mut *ov.bytes;
    for_each_index(&shape, |idx| {
        let mut inside = true;
        let mut xo = 0usize;
        let mut oo = 0usize;
        for d in 0..rank {
            let i = idx[d] as i128 - before[d];
            if i < 0 || i >= x.sizes()[d] as i128 {
                inside = false;
            } else {
                xo += i as usize * x.strides()[d];
            }
            oo += idx[d] * o_strides[d];
        }
        if inside {
            ec.copy(ob, oo, xv.bytes, xo);
        } else {
            ec.copy(ob, oo, &fill, 0);
        }
    });
    Ok(())
}

/// `self, padding[], *, out` for reflection (`reflect`) or replication padding of the last
/// `k` dims; `padding` holds (before, after) pairs from the last dim backwards. The input
/// has `k + 1` or `k + 2` dims (an optional batch dim).
fn pad_mode(a: &mut KernelArgs<'_>, k: usize, reflect: bool) -> Result<()> {
    a.expect_len(3)?;
    let what = if reflect {
        "reflection_pad"
    } else {
        "replication_pad"
    };
    let x = *a.meta(0)?;
    let rank = x.dim();
    if rank != k + 1 && rank != k + 2 {
        return Err(Error::shape(alloc::format!(
            "{what}{k}d: expected a {}-d or {}-d input, found {:?}",
            k + 1,
            k + 2,
            x.sizes()
        )));
    }
    let pads = a.int_list(1)?;
    if pads.len() != 2 * k {
        return Err(Error::invalid(alloc::format!(
            "{what}{k}d: padding must have {} entries, found {}",
            2 * k,
            pads.len()
        )));
    }
    // Pads are arbitrary i64s: sizes and positions are computed in i128.
    let mut before = [0i128; 3];
    let mut shape = x.dims();
    for (q, b) in before.iter_mut().enumerate().take(k) {
        let d = rank - 1 - q;
        let (l, r) = (pads.get(2 * q)?, pads.get(2 * q + 1)?);
        let size = x.sizes()[d] as i64;
        let bad = if reflect {
            l >= size || r >= size
        } else {
            size == 0
        };
        if bad {
            return Err(Error::invalid(alloc::format!(
                "{what}{k}d: padding ({l}, {r}) is invalid for dimension {d} of size {size}{}",
                if reflect {
                    " (must be less than the size)"
                } else {
                    ""
                }
            )));
        }
        let o = size as i128 + l as i128 + r as i128;
        if o < 1 {
            return Err(Error::shape(alloc::format!(
                "{what}{k}d: padding ({l}, {r}) of dimension {d} (size {size}) gives size {o}"
            )));
        }
        *b = l as i128;
        shape[d] = usize::try_from(o).map_err(|_| {
            Error::shape(alloc::format!(
                "{what}{k}d: padding ({l}, {r}) of dimension {d} gives size {o}"
            ))
        })?;
    }
    for d in 0..rank - k {
        if x.sizes()[d] == 0 && !(d == 0 && rank == k + 2) {
            return Err(Error::shape(alloc::format!(
                "{what}{k}d: expected non-empty dims besides the batch, found {:?}",
                x.sizes()
            )));
        }
    }
    a.resize(2, &shape)?;
    let od = a.meta(2)?.dtype;
    if od != x.dtype {
        return Err(Error::Dtype {
            arg: 2,
            expected: x.dtype.name().into(),
            found: od,
        });
    }
    let ec = ElemCopy::new(od, x.dtype)?;
    let o_strides = a.meta(2)?.stride_dims();
    let xv = a.tensor(0)?;
    let ov = a.out(2)?;
    let ob = &mut *ov.bytes;
    let (xs, xst) = (x.sizes(), x.strides());
    for_each_index(&shape, |idx| {
        let mut xo = 0usize;
        let mut oo = 0usize;
        for d in 0..rank {
            oo += idx[d] * o_strides[d];
            let q = rank - 1 - d;
            let i = if q < k {
                let n = xs[d] as i128;
                let i = idx[d] as i128 - before[q];
                if reflect {
                    // Pads are smaller than the size, so one reflection lands inside.
                    let i = i.abs();
                    if i >= n {
                        2 * (n - 1) - i
                    } else {
                        i
                    }
                } else {
                    i.clamp(0, n - 1)
                }
            } else {
                idx[d] as i128
            };
            xo += i.max(0) as usize * xst[d];
        }
        ec.copy(ob, oo, xv.bytes, xo);
    });
    Ok(())
}

fn reflection_pad1d(a: &mut KernelArgs<'_>) -> Result<()> {
    pad_mode(a, 1, true)
}
fn reflection_pad2d(a: &mut KernelArgs<'_>) -> Result<()> {
    pad_mode(a, 2, true)
}
fn reflection_pad3d(a: &mut KernelArgs<'_>) -> Result<()> {
    pad_mode(a, 3, true)
}
fn replication_pad1d(a: &mut KernelArgs<'_>) -> Result<()> {
    pad_mode(a, 1, false)
}
fn replication_pad2d(a: &mut KernelArgs<'_>) -> Result<()> {
    pad_mode(a, 2, false)
}
fn replication_pad3d(a: &mut KernelArgs<'_>) -> Result<()> {
    pad_mode(a, 3, false)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::constant_pad_nd.out", constant_pad_nd);
    reg.register("aten::reflection_pad1d.out", reflection_pad1d);
    reg.register("aten::reflection_pad2d.out", reflection_pad2d);
    reg.register("aten::reflection_pad3d.out", reflection_pad3d);
    reg.register("aten::replication_pad1d.out", replication_pad1d);
    reg.register("aten::replication_pad2d.out", replication_pad2d);
    reg.register("aten::replication_pad3d.out", replication_pad3d);
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
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

    /// Reference: pad one dim of a row-major tensor by index mapping.
    fn pad_ref(x: &[f64], sizes: &[usize], pads: &[i64], reflect: bool) -> (Vec<usize>, Vec<f64>) {
        let rank = sizes.len();
        let mut shape = sizes.to_vec();
        for q in 0..pads.len() / 2 {
            shape[rank - 1 - q] =
                (sizes[rank - 1 - q] as i64 + pads[2 * q] + pads[2 * q + 1]) as usize;
        }
        let mut out = Vec::new();
        crate::util::for_each_index(&shape, |idx| {
            let mut off = 0usize;
            for d in 0..rank {
                let q = rank - 1 - d;
                let n = sizes[d] as i64;
                let mut i = idx[d] as i64;
                if q < pads.len() / 2 {
                    i -= pads[2 * q];
                    if reflect {
                        if i < 0 {
                            i = -i;
                        }
                        if i >= n {
                            i = 2 * n - 2 - i;
                        }
                    } else {
                        i = i.max(0).min(n - 1);
                    }
                }
                off = off * sizes[d] + i as usize;
            }
            out.push(x[off]);
        });
        (shape, out)
    }

    #[test]
    fn reflection_and_replication() {
        let x = OwnedTensor::from_f64(Float, &[1, 4], &[1., 2., 3., 4.]);
        let cases: [(&str, Vec<i64>, Vec<f64>); 4] = [
            (
                "aten::reflection_pad1d.out",
                vec![2, 1],
                vec![3., 2., 1., 2., 3., 4., 3.],
            ),
            (
                "aten::replication_pad1d.out",
                vec![2, 1],
                vec![1., 1., 1., 2., 3., 4., 4.],
            ),
            (
                "aten::reflection_pad1d.out",
                vec![-1, 3],
                vec![2., 3., 4., 3., 2., 1.],
            ),
            ("aten::replication_pad1d.out", vec![0, -2], vec![1., 2.]),
        ];
        for (name, pad, want) in cases {
            let out = run_op(
                name,
                vec![
                    Arg::T(x.clone()),
                    Arg::Ints(pad.clone()),
                    Arg::Out(Float, vec![1, 8]),
                ],
            )
            .unwrap();
            assert_eq!(out.tensors[0].to_f64(), want, "{name} {pad:?}");
        }
        // 2-d and 3-d against the reference, with channels-last in and out.
        let dims = [2usize, 3, 4, 5];
        let xv: Vec<f64> = (0..120).map(|i| i as f64).collect();
        for reflect in [true, false] {
            let pads = [2i64, 1, 3, 0];
            let (shape, want) = pad_ref(&xv, &dims, &pads, reflect);
            let xt = OwnedTensor::from_f64(Int, &dims, &xv).with_dim_order(&[0, 2, 3, 1]);
            let o = OwnedTensor::zeros(Int, &shape).with_dim_order(&[0, 2, 3, 1]);
            let name = if reflect {
                "aten::reflection_pad2d.out"
            } else {
                "aten::replication_pad2d.out"
            };
            let out = run_op(
                name,
                vec![Arg::T(xt), Arg::Ints(pads.to_vec()), Arg::OutLike(o)],
            )
            .unwrap();
            assert_eq!(out.tensors[0].sizes, shape);
            assert_eq!(out.tensors[0].to_f64(), want);
            let pads3 = [1i64, 2, 0, 1, 1, 1];
            let (shape, want) = pad_ref(&xv, &dims, &pads3, reflect);
            let name = if reflect {
                "aten::reflection_pad3d.out"
            } else {
                "aten::replication_pad3d.out"
            };
            let xt = OwnedTensor::from_f64(Double, &dims, &xv);
            let out = run_op(
                name,
                vec![
                    Arg::T(xt),
                    Arg::Ints(pads3.to_vec()),
                    Arg::Out(Double, shape.clone()),
                ],
            )
            .unwrap();
            assert_eq!(out.tensors[0].to_f64(), want);
        }
        // Empty batch works; reflection pad as large as the size, wrong padding length and
        // wrong rank fail.
        let e = OwnedTensor::zeros(Float, &[0, 2, 3]);
        let out = run_op(
            "aten::replication_pad1d.out",
            vec![
                Arg::T(e),
                Arg::Ints(vec![1, 1]),
                Arg::Out(Float, vec![0, 2, 5]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, 2, 5]);
        for (name, pad) in [
            ("aten::reflection_pad1d.out", vec![4, 0]),
            ("aten::reflection_pad1d.out", vec![1]),
            ("aten::reflection_pad3d.out", vec![1, 1, 1, 1, 1, 1]),
        ] {
            assert!(run_op(
                name,
                vec![
                    Arg::T(x.clone()),
                    Arg::Ints(pad),
                    Arg::Out(Float, vec![1, 8])
                ]
            )
            .is_err());
        }
    }

    #[test]
    fn hostile_pads() {
        let (min, max) = (i64::MIN, i64::MAX);
        let x = OwnedTensor::from_f64(Float, &[3], &[1., 2., 3.]);
        let x2 = OwnedTensor::from_f64(Float, &[1, 3], &[1., 2., 3.]);
        // (op, pads, Some(want) or None for an error). Sums of sizes and pads used to
        // overflow i64 (a panic in debug builds, a wrapped size in release).
        let cases: Vec<(&str, Vec<i64>, Option<Vec<f64>>)> = vec![
            ("aten::constant_pad_nd.out", vec![max, max], None),
            ("aten::constant_pad_nd.out", vec![min, min], None),
            // 3 + MIN + MAX = 2: both positions are far outside the input.
            (
                "aten::constant_pad_nd.out",
                vec![min, max],
                Some(vec![9., 9.]),
            ),
            (
                "aten::constant_pad_nd.out",
                vec![max, min],
                Some(vec![9., 9.]),
            ),
            ("aten::reflection_pad1d.out", vec![min, -5], None),
            ("aten::reflection_pad1d.out", vec![-5, min], None),
            ("aten::replication_pad1d.out", vec![max, max], None),
            ("aten::replication_pad1d.out", vec![min, -1], None),
            // Positions left of the input clamp to its first element, right to its last.
            (
                "aten::replication_pad1d.out",
                vec![min, max],
                Some(vec![3., 3.]),
            ),
            (
                "aten::replication_pad1d.out",
                vec![max, min],
                Some(vec![1., 1.]),
            ),
        ];
        for (name, pads, want) in cases {
            let args = if name.contains("constant") {
                vec![
                    Arg::T(x.clone()),
                    Arg::Ints(pads.clone()),
                    Arg::Double(9.0),
                    Arg::Out(Float, vec![4]),
                ]
            } else {
                vec![
                    Arg::T(x2.clone()),
                    Arg::Ints(pads.clone()),
                    Arg::Out(Float, vec![1, 4]),
                ]
            };
            let got = run_op(name, args);
            match want {
                Some(w) => assert_eq!(got.unwrap().tensors[0].to_f64(), w, "{name} {pads:?}"),
                None => assert!(got.is_err(), "{name} {pads:?}"),
            }
        }
    }

    #[test]
    fn opaque_dtypes() {
        // The fill value cannot be stored as float8: an error up front (the load/store
        // helpers used to call each other for ever on such dtypes).
        let f8 = OwnedTensor {
            dtype: Float8E4M3FN,
            sizes: vec![2],
            dim_order: vec![0],
            bytes: vec![0x38, 0x40],
        };
        assert!(run_op(
            "aten::constant_pad_nd.out",
            vec![
                Arg::T(f8.clone()),
                Arg::Ints(vec![1, 1]),
                Arg::Double(0.0),
                Arg::Out(Float8E4M3FN, vec![4]),
            ]
        )
        .is_err());
        // Reflection and replication only move elements: float8 bytes are copied.
        let out = run_op(
            "aten::replication_pad1d.out",
            vec![
                Arg::T(OwnedTensor {
                    sizes: vec![1, 2],
                    dim_order: vec![0, 1],
                    ..f8
                }),
                Arg::Ints(vec![1, 1]),
                Arg::Out(Float8E4M3FN, vec![1, 4]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].bytes, [0x38, 0x38, 0x40, 0x40]);
    }
}
