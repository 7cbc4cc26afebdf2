//! Pairwise p-norm distances: `_cdist_forward` (between two sets of row vectors, with
//! broadcast batch dims) and `_pdist_forward` (the upper triangle within one set).
//!
//! Distances are summed in f64 directly from the differences. ATen's `cdist` may instead
//! use the matrix-product form `|a|^2 + |b|^2 - 2ab` for p = 2 on large inputs
//! (`compute_mode`), which rounds differently; results agree to float tolerance.

use ptero_core::{Dims, Error, KernelArgs, KernelRegistry, Result, TensorMeta};

use crate::index::try_for_each_index;
use crate::util::work::Meter;
use crate::util::{broadcast_shapes, load_f64, store_f64, FLOAT};

/// The p-norm of the difference of two length-`m` vectors, read by `x(k)` and `y(k)`.
fn dist(p: f64, m: usize, x: impl Fn(usize) -> f64, y: impl Fn(usize) -> f64) -> f64 {
    let d = |k: usize| libm::fabs(x(k) - y(k));
    if p == 0.0 {
        (0..m).filter(|&k| d(k) != 0.0).count() as f64
    } else if p == 1.0 {
        (0..m).map(d).sum()
    } else if p == 2.0 {
        libm::sqrt((0..m).map(|k| d(k) * d(k)).sum())
    } else if p.is_infinite() {
        // NaN propagates, like ATen's max.
        (0..m)
            .map(d)
            .fold(0.0, |a, v| if v.is_nan() || v > a { v } else { a })
    } else {
        libm::pow((0..m).map(|k| libm::pow(d(k), p)).sum(), 1.0 / p)
    }
}

fn check(a: &KernelArgs<'_>, args: &[usize], out: usize, p: f64, what: &str) -> Result<()> {
    if p.is_nan() || p < 0.0 {
        return Err(Error::invalid(alloc::format!(
            "{what}: p must be non-negative, found {p}"
        )));
    }
    let t = a.meta(args[0])?.dtype;
    if !FLOAT.contains(&t) {
        return Err(Error::Dtype {
            arg: args[0],
            expected: alloc::format!("a floating dtype ({what})"),
            found: t,
        });
    }
    for &i in args[1..].iter().chain([&out]) {
        let u = a.meta(i)?.dtype;
        if u != t {
            return Err(Error::Dtype {
                arg: i,
                expected: t.name().into(),
                found: u,
            });
        }
    }
    Ok(())
}

fn batch_strides(m: &TensorMeta, bshape: &[usize]) -> Dims {
    // Strides of m's batch dims (all but the last two) broadcast over `bshape`.
    let nb = m.dim() - 2;
    let lead = bshape.len() - nb;
    let mut st = Dims::filled(bshape.len(), 0).unwrap_or_default();
    for d in 0..nb {
        if m.sizes()[d] != 1 {
            st[lead + d] = m.strides()[d];
        }
    }
    st
}

/// `_cdist_forward.out(x1, x2, p, compute_mode: int?, *, out)`: `[..., P, M]` and
/// `[..., R, M]` give `[..., P, R]`.
fn cdist_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let p = a.double(2)?;
    check(a, &[0, 1], 4, p, "cdist")?;
    let (m1, m2) = (*a.meta(0)?, *a.meta(1)?);
    if m1.dim() < 2 || m2.dim() < 2 || m1.sizes()[m1.dim() - 1] != m2.sizes()[m2.dim() - 1] {
        return Err(Error::shape(alloc::format!(
            "cdist: expected [..., P, M] and [..., R, M] inputs, found {:?} and {:?}",
            m1.sizes(),
            m2.sizes()
        )));
    }
    let (r1, r2) = (m1.dim(), m2.dim());
    let bshape = broadcast_shapes(&m1.sizes()[..r1 - 2], &m2.sizes()[..r2 - 2])?;
    let (pn, rn, mn) = (m1.sizes()[r1 - 2], m2.sizes()[r2 - 2], m1.sizes()[r1 - 1]);
    let mut shape = bshape;
    if !(shape.push(pn) && shape.push(rn)) {
        return Err(Error::shape("cdist: too many dims"));
    }
    a.resize(4, &shape)?;
    let (b1, b2) = (batch_strides(&m1, &bshape), batch_strides(&m2, &bshape));
    let ost = a.meta(4)?.stride_dims();
    let t = m1.dtype;
    let (x1, x2) = (a.tensor(0)?, a.tensor(1)?);
    let o = a.out(4)?;
    let ob = &mut *o.bytes;
    let (s1, s2) = (m1.strides(), m2.strides());
    let nb = bshape.len();
    // Each output is a length-M reduction: charge it, and poll the caller's deadline.
    let mut meter = Meter::charging(a);
    try_for_each_index(&shape, |idx| {
        meter.add(mn as u64)?;
        let (bi, i, j) = (&idx[..nb], idx[nb], idx[nb + 1]);
        let o1: usize =
            bi.iter().zip(b1.iter()).map(|(k, s)| k * s).sum::<usize>() + i * s1[r1 - 2];
        let o2: usize =
            bi.iter().zip(b2.iter()).map(|(k, s)| k * s).sum::<usize>() + j * s2[r2 - 2];
        let v = dist(
            p,
            mn,
            |k| load_f64(x1.bytes, t, o1 + k * s1[r1 - 1]),
            |k| load_f64(x2.bytes, t, o2 + k * s2[r2 - 1]),
        );
        let oo: usize = idx.iter().zip(ost.iter()).map(|(k, s)| k * s).sum();
        store_f64(ob, t, oo, v);
        Ok(())
    })
}

/// `_pdist_forward.out(self, p=2, *, out)`: `[N, M]` gives the `N (N - 1) / 2` distances
/// between rows `i < j`, in row-major pair order.
fn pdist_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let p = a.double(1)?;
    check(a, &[0], 2, p, "pdist")?;
    let m = *a.meta(0)?;
    if m.dim() != 2 {
        return Err(Error::shape(alloc::format!(
            "pdist: expected a 2-d input, found {:?}",
            m.sizes()
        )));
    }
    let (n, k) = (m.sizes()[0], m.sizes()[1]);
    // n (n - 1) / 2 in u128: n can be huge when the rows are empty (k == 0).
    let count = usize::try_from(n as u128 * n.saturating_sub(1) as u128 / 2)
        .map_err(|_| Error::shape(alloc::format!("pdist: {n} rows have too many pairs")))?;
    a.resize(2, &[count])?;
    let ost = a.meta(2)?.strides().first().copied().unwrap_or(1);
    let t = m.dtype;
    let x = a.tensor(0)?;
    let o = a.out(2)?;
    let (s0, s1) = (m.strides()[0], m.strides()[1]);
    let mut q = 0usize;
    let mut meter = Meter::charging(a);
    for i in 0..n {
        meter.add(((n - i - 1) as u64).saturating_mul(k as u64))?;
        for j in i + 1..n {
            let v = dist(
                p,
                k,
                |c| load_f64(x.bytes, t, i * s0 + c * s1),
                |c| load_f64(x.bytes, t, j * s0 + c * s1),
            );
            store_f64(o.bytes, t, q * ost, v);
            q += 1;
        }
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::_cdist_forward.out", cdist_out);
    reg.register("aten::_pdist_forward.out", pdist_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    fn refdist(a: &[f64], b: &[f64], p: f64) -> f64 {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
        if p == 0.0 {
            d.iter().filter(|v| **v != 0.0).count() as f64
        } else if p.is_infinite() {
            d.iter().cloned().fold(0.0, f64::max)
        } else {
            d.iter().map(|v| v.powf(p)).sum::<f64>().powf(1.0 / p)
        }
    }

    #[test]
    fn cdist() {
        // x1: [2 batches, 3 rows, 4], x2: [1 batch (broadcast), 2 rows, 4].
        let v1: Vec<f64> = (0..24).map(|i| ((i * 5) % 7) as f64 - 2.0).collect();
        let v2: Vec<f64> = (0..8).map(|i| ((i * 3) % 5) as f64 * 0.5).collect();
        for p in [0.0, 1.0, 2.0, 3.0, 0.5, f64::INFINITY] {
            let mut want = Vec::new();
            for b in 0..2 {
                for i in 0..3 {
                    for j in 0..2 {
                        let r1 = &v1[b * 12 + i * 4..b * 12 + i * 4 + 4];
                        want.push(refdist(r1, &v2[j * 4..j * 4 + 4], p));
                    }
                }
            }
            for order in [[0u8, 1, 2], [0, 2, 1]] {
                let x1 = OwnedTensor::from_f64(Float, &[2, 3, 4], &v1).with_dim_order(&order);
                let x2 = OwnedTensor::from_f64(Float, &[1, 2, 4], &v2);
                let out = run_op(
                    "aten::_cdist_forward.out",
                    vec![
                        Arg::T(x1),
                        Arg::T(x2),
                        Arg::Double(p),
                        Arg::None,
                        Arg::Out(Float, vec![2, 3, 2]),
                    ],
                )
                .unwrap();
                assert_eq!(out.tensors[0].sizes, [2, 3, 2]);
                assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);
            }
        }
        // Empty rows; mismatched M; negative p.
        let e = OwnedTensor::zeros(Double, &[0, 4]);
        let y = OwnedTensor::zeros(Double, &[2, 4]);
        let out = run_op(
            "aten::_cdist_forward.out",
            vec![
                Arg::T(e),
                Arg::T(y.clone()),
                Arg::Double(2.0),
                Arg::None,
                Arg::Out(Double, vec![0, 2]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, 2]);
        let bad = OwnedTensor::zeros(Double, &[2, 3]);
        for (x, p) in [(bad, 2.0), (y.clone(), -1.0)] {
            assert!(run_op(
                "aten::_cdist_forward.out",
                vec![
                    Arg::T(x),
                    Arg::T(y.clone()),
                    Arg::Double(p),
                    Arg::None,
                    Arg::Out(Double, vec![2, 2])
                ]
            )
            .is_err());
        }
    }

    /// cdist and pdist charge one unit per element of every compared pair, and stop with
    /// `Interrupted` once the caller's deadline has passed.
    #[test]
    fn distances_charge_work_and_stop_when_interrupted() {
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        let z = |s: &[usize]| Arg::T(OwnedTensor::zeros(Float, s));
        let cases: Vec<(&str, Vec<Arg>, u64)> = vec![
            (
                "aten::_cdist_forward.out",
                vec![
                    z(&[2, 64, 64]),
                    z(&[64, 64]),
                    Arg::Double(2.0),
                    Arg::None,
                    Arg::Out(Float, vec![2, 64, 64]),
                ],
                2 * 64 * 64 * 64,
            ),
            (
                "aten::_pdist_forward.out",
                vec![
                    z(&[128, 64]),
                    Arg::Double(1.0),
                    Arg::Out(Float, vec![128 * 127 / 2]),
                ],
                128 * 127 / 2 * 64,
            ),
        ];
        for (op, args, work) in cases {
            let (_, charged) = run_op_with(op, args.clone(), ctx).unwrap();
            assert_eq!(charged, work, "{op}");
            assert_eq!(
                run_op_interrupted(op, args).unwrap_err(),
                ptero_core::Error::Interrupted,
                "{op}"
            );
        }
    }

    /// Rows of width 0 can be arbitrarily many: n (n - 1) overflowed.
    #[test]
    fn pdist_pair_count_overflow_is_an_error() {
        let x = OwnedTensor::zeros(Float, &[1 << 33, 0]);
        assert!(run_op(
            "aten::_pdist_forward.out",
            vec![Arg::T(x), Arg::Double(2.0), Arg::Out(Float, vec![1])]
        )
        .is_err());
    }

    #[test]
    fn pdist() {
        let v: Vec<f64> = vec![0., 0., 3., 4., 6., 8., 1., 1.];
        for p in [2.0, 1.0, f64::INFINITY] {
            let mut want = Vec::new();
            for i in 0..4 {
                for j in i + 1..4 {
                    want.push(refdist(&v[i * 2..i * 2 + 2], &v[j * 2..j * 2 + 2], p));
                }
            }
            let x = OwnedTensor::from_f64(Double, &[4, 2], &v).with_dim_order(&[1, 0]);
            let out = run_op(
                "aten::_pdist_forward.out",
                vec![Arg::T(x), Arg::Double(p), Arg::Out(Double, vec![6])],
            )
            .unwrap();
            assert_close(&out.tensors[0].to_f64(), &want, 1e-12, 1e-12);
        }
        let one = OwnedTensor::zeros(Float, &[1, 3]);
        let out = run_op(
            "aten::_pdist_forward.out",
            vec![Arg::T(one), Arg::Double(2.0), Arg::Out(Float, vec![1])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0]);
        let i = OwnedTensor::zeros(Long, &[3, 3]);
        assert!(run_op(
            "aten::_pdist_forward.out",
            vec![Arg::T(i), Arg::Double(2.0), Arg::Out(Long, vec![3])]
        )
        .is_err());
    }
}
