//! Softmax and log-softmax along one dimension, numerically stable (the row maximum is
//! subtracted first). NaN anywhere in a row, or a row whose maximum is infinite, gives
//! NaN as in PyTorch.

use ptero_core::{normalize_dim, Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::work::Meter;
use crate::util::{for_each_offset, load_f64, store_f64};

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn run(a: &mut KernelArgs<'_>, log: bool) -> Result<()> {
    a.expect_len(4)?;
    let xm = a.meta(0)?;
    let dtype = xm.dtype;
    let half_to_float = a.bool(2)?;
    let od = a.meta(3)?.dtype;
    if !dtype.is_float() {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a floating dtype".into(),
            found: dtype,
        });
    }
    let want_out = if half_to_float {
        if !matches!(dtype, ScalarType::Half | ScalarType::BFloat16) {
            return Err(Error::invalid(
                "softmax: half_to_float needs a half or bfloat16 input",
            ));
        }
        ScalarType::Float
    } else {
        dtype
    };
    if od != want_out {
        return Err(Error::Dtype {
            arg: 3,
            expected: alloc::string::ToString::to_string(want_out.name()),
            found: od,
        });
    }
    let rank = xm.dim();
    let dim = normalize_dim(a.int(1)?, rank)?;
    let shape = xm.dims();
    a.resize(3, &shape)?;
    let xm = a.meta(0)?;
    let om = a.meta(3)?;
    if rank == 0 {
        let xt = a.tensor(0)?;
        let x = load_f64(xt.bytes, dtype, 0);
        // A single element normalizes to 1 (log 0), except NaN or infinite input.
        let d = if x.is_finite() { 0.0 } else { f64::NAN };
        let v = if log { d } else { libm::exp(d) };
        let ot = a.out(3)?;
        store_f64(&mut *ot.bytes, od, 0, v);
        return Ok(());
    }
    let len = shape[dim];
    let (xs, os) = (xm.strides()[dim], om.strides()[dim]);
    let fast = dtype == ScalarType::Float
        && od == ScalarType::Float
        && dim == rank - 1
        && xm.is_contiguous()
        && om.is_contiguous();
    let mut outer = shape;
    outer[dim] = 1;
    let xst = xm.stride_dims();
    let ost = om.stride_dims();
    let xt = a.tensor(0)?;
    let mut ot = a.out(3)?;
    if len == 0 || shape.contains(&0) {
        return Ok(());
    }
    let mut meter = Meter::new(a);
    if fast {
        let x = xt.data::<f32>()?;
        let o = ot.data::<f32>()?;
        meter.add(o.len() as u64)?;
        let par = a.parallel();
        // Whole rows per task, vectorised.
        ptero_simd::for_each_chunk_by(par, o, len, &|r, o| {
            for (xr, or) in x[r].chunks_exact(len).zip(o.chunks_exact_mut(len)) {
                if log {
                    ptero_simd::ops::log_softmax(xr, or);
                } else {
                    ptero_simd::ops::softmax(xr, or);
                }
            }
        });
        return Ok(());
    }
    let ob = &mut *ot.bytes;
    let mut stop = Ok(());
    for_each_offset(&outer, [&xst, &ost], |[xo, oo]| {
        if stop.is_err() {
            return;
        }
        stop = meter.add(len as u64);
        let mut m = f64::NEG_INFINITY;
        for i in 0..len {
            m = nan_max(m, load_f64(xt.bytes, dtype, xo + i * xs));
        }
        let mut sum = 0.0;
        for i in 0..len {
            sum += libm::exp(load_f64(xt.bytes, dtype, xo + i * xs) - m);
        }
        let ls = libm::log(sum);
        for i in 0..len {
            let d = load_f64(xt.bytes, dtype, xo + i * xs) - m;
            let v = if log { d - ls } else { libm::exp(d) / sum };
            store_f64(ob, od, oo + i * os, v);
        }
    });
    stop
}

fn softmax_out(a: &mut KernelArgs<'_>) -> Result<()> {
    run(a, false)
}

fn log_softmax_out(a: &mut KernelArgs<'_>) -> Result<()> {
    run(a, true)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::_softmax.out", softmax_out);
    reg.register("aten::_log_softmax.out", log_softmax_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    fn go(
        op: &str,
        x: OwnedTensor,
        dim: i64,
        h2f: bool,
        od: ScalarType,
    ) -> ptero_core::Result<Vec<f64>> {
        let s = x.sizes.clone();
        Ok(run_op(
            op,
            vec![Arg::T(x), Arg::Int(dim), Arg::Bool(h2f), Arg::Out(od, s)],
        )?
        .tensors[0]
            .to_f64())
    }

    fn soft(v: &[f64]) -> Vec<f64> {
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
        v.iter().map(|x| (x - m).exp() / s).collect()
    }

    #[test]
    fn values_dims_layouts() {
        let x: Vec<f64> = (0..12).map(|i| (i as f64 * 0.7).sin() * 3.0).collect();
        // Along the last dim of [3, 4].
        let mut want = vec![];
        for r in 0..3 {
            want.extend(soft(&x[r * 4..][..4]));
        }
        let logw: Vec<f64> = want.iter().map(|v| v.ln()).collect();
        for dtype in [Float, Double, Half] {
            let tol = if dtype == Half { 2e-2 } else { 1e-6 };
            let t = OwnedTensor::from_f64(dtype, &[3, 4], &x);
            let got = go("aten::_softmax.out", t.clone(), -1, false, dtype).unwrap();
            assert_close(&got, &want, tol, tol);
            let got = go("aten::_log_softmax.out", t.clone(), 1, false, dtype).unwrap();
            assert_close(&got, &logw, tol, tol);
            // Transposed storage, same logical values.
            let got = go(
                "aten::_softmax.out",
                t.with_dim_order(&[1, 0]),
                1,
                false,
                dtype,
            )
            .unwrap();
            assert_close(&got, &want, tol, tol);
        }
        // Along dim 0.
        let mut want0 = vec![0.0; 12];
        for c in 0..4 {
            let col: Vec<f64> = (0..3).map(|r| x[r * 4 + c]).collect();
            for (r, v) in soft(&col).into_iter().enumerate() {
                want0[r * 4 + c] = v;
            }
        }
        let t = OwnedTensor::from_f64(Float, &[3, 4], &x);
        assert_close(
            &go("aten::_softmax.out", t, 0, false, Float).unwrap(),
            &want0,
            1e-6,
            1e-6,
        );
        // half_to_float.
        let h = OwnedTensor::from_f64(Half, &[2], &[0.0, 0.0]);
        assert_close(
            &go("aten::_softmax.out", h, 0, true, Float).unwrap(),
            &[0.5, 0.5],
            0.0,
            0.0,
        );
    }

    #[test]
    fn special_values_and_edges() {
        let inf = f64::INFINITY;
        let f = |v: &[f64]| OwnedTensor::from_f64(Float, &[v.len()], v);
        let got = go("aten::_softmax.out", f(&[-inf, 0.0, -inf]), 0, false, Float).unwrap();
        assert_close(&got, &[0.0, 1.0, 0.0], 0.0, 0.0);
        let got = go("aten::_log_softmax.out", f(&[-inf, 0.0]), 0, false, Float).unwrap();
        assert_close(&got, &[-inf, 0.0], 0.0, 0.0);
        let got = go("aten::_softmax.out", f(&[-inf, -inf]), 0, false, Float).unwrap();
        assert!(got.iter().all(|v| v.is_nan()));
        let got = go("aten::_softmax.out", f(&[1.0, f64::NAN]), 0, false, Float).unwrap();
        assert!(got.iter().all(|v| v.is_nan()));
        let got = go(
            "aten::_softmax.out",
            OwnedTensor::from_f64(Double, &[2], &[1.0, f64::NAN]),
            0,
            false,
            Double,
        )
        .unwrap();
        assert!(got.iter().all(|v| v.is_nan()));
        // 0-d and empty.
        let z = OwnedTensor::from_f64(Float, &[], &[5.0]);
        assert_eq!(
            go("aten::_softmax.out", z.clone(), 0, false, Float).unwrap(),
            [1.0]
        );
        assert_eq!(
            go("aten::_log_softmax.out", z, -1, false, Float).unwrap(),
            [0.0]
        );
        let e = OwnedTensor::from_f64(Float, &[0, 3], &[]);
        assert!(go("aten::_softmax.out", e, 1, false, Float)
            .unwrap()
            .is_empty());
        // Errors: bad dim, int input, half_to_float on float.
        assert!(go("aten::_softmax.out", f(&[1.0]), 1, false, Float).is_err());
        let i = OwnedTensor::from_f64(Long, &[1], &[1.0]);
        assert!(go("aten::_softmax.out", i, 0, false, Long).is_err());
        assert!(go("aten::_softmax.out", f(&[1.0]), 0, true, Float).is_err());
    }

    #[test]
    fn big_inputs_poll_the_deadline() {
        let x = OwnedTensor::zeros(Float, &[512, 1024]);
        for (order, dim) in [([0u8, 1], 1), ([0, 1], 0), ([1, 0], 1)] {
            let got = crate::testing::run_op_interrupted(
                "aten::_softmax.out",
                vec![
                    Arg::T(x.with_dim_order(&order)),
                    Arg::Int(dim),
                    Arg::Bool(false),
                    Arg::Out(Float, vec![512, 1024]),
                ],
            );
            assert_eq!(
                got.unwrap_err(),
                ptero_core::Error::Interrupted,
                "{order:?} {dim}"
            );
        }
    }
}
