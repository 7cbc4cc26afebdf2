//! `llama::fast_hadamard_transform.out` (SpinQuant): the Walsh-Hadamard transform over the
//! last dim, in natural (Sylvester) order, scaled by `1/sqrt(n)`.

use alloc::format;
use half::f16;
use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType};

/// In-place unnormalized butterflies; `round` applies the element type's rounding after
/// each add (Half arithmetic rounds op by op in ExecuTorch).
fn fwht(v: &mut [f64], round: impl Fn(f64) -> f64) {
    let n = v.len();
    let mut step = 1;
    while step < n {
        for i in (0..n).step_by(2 * step) {
            for j in i..i + step {
                let (x, y) = (v[j], v[j + step]);
                v[j] = round(x + y);
                v[j + step] = round(x - y);
            }
        }
        step *= 2;
    }
}

fn fast_hadamard_transform_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let im = *a.meta(0)?;
    a.resize(1, im.sizes())?;
    let om = *a.meta(1)?;
    if im.dtype != om.dtype {
        return Err(Error::Dtype {
            arg: 1,
            expected: im.dtype.name().into(),
            found: om.dtype,
        });
    }
    if im.dim() == 0 || im.numel() == 0 {
        return Ok(());
    }
    if !im.is_contiguous() || !om.is_contiguous() {
        return Err(Error::invalid(
            "fast_hadamard_transform: input and out must be contiguous",
        ));
    }
    let n = im.sizes()[im.dim() - 1];
    if n % 28 == 0 && (n / 28).is_power_of_two() {
        return Err(Error::NotImplemented(
            "fast_hadamard_transform: 28 * 2^k sizes".into(),
        ));
    }
    if !n.is_power_of_two() {
        return Err(Error::invalid(format!(
            "fast_hadamard_transform: last dim {n} must be a power of two"
        )));
    }
    let log2 = n.trailing_zeros();
    // 2^(k/2) * (sqrt 2 if k is odd), as ExecuTorch computes it.
    let root = (1u64 << (log2 / 2)) as f64
        * if log2 % 2 == 1 {
            core::f64::consts::SQRT_2
        } else {
            1.0
        };
    // log2(n) butterfly passes over every element.
    a.charge((im.numel() as u64).saturating_mul(log2 as u64));
    let it = a.tensor(0)?;
    let mut ot = a.out(1)?;
    match im.dtype {
        ScalarType::Float => {
            let x = it.data::<f32>()?;
            let o = ot.data::<f32>()?;
            o.copy_from_slice(x);
            let inv = 1.0f32 / root as f32;
            for row in o.chunks_exact_mut(n) {
                let mut step = 1;
                while step < n {
                    for i in (0..n).step_by(2 * step) {
                        for j in i..i + step {
                            let (p, q) = (row[j], row[j + step]);
                            row[j] = p + q;
                            row[j + step] = p - q;
                        }
                    }
                    step *= 2;
                }
                for v in row.iter_mut() {
                    *v *= inv;
                }
            }
        }
        ScalarType::Double => {
            let x = it.data::<f64>()?;
            let o = ot.data::<f64>()?;
            o.copy_from_slice(x);
            for row in o.chunks_exact_mut(n) {
                fwht(row, |v| v);
                for v in row.iter_mut() {
                    *v *= 1.0 / root;
                }
            }
        }
        ScalarType::Half => {
            let x = it.data::<f16>()?;
            let o = ot.data::<f16>()?;
            let rh = |v: f64| f16::from_f64(v).to_f64();
            let inv = rh(1.0 / rh(root));
            // Per-row scratch in f64; rows are the last dim (normally a few thousand, but
            // sized by the input, so allocated fallibly).
            let mut buf = a.scratch::<f64>(n)?;
            for (src, dst) in x.chunks_exact(n).zip(o.chunks_exact_mut(n)) {
                for (b, s) in buf.iter_mut().zip(src) {
                    *b = s.to_f64();
                }
                fwht(&mut buf, rh);
                for (d, b) in dst.iter_mut().zip(&buf) {
                    *d = f16::from_f64(*b * inv);
                }
            }
        }
        dt => {
            return Err(Error::Dtype {
                arg: 0,
                expected: "Float, Double or Half".into(),
                found: dt,
            })
        }
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register(
        "llama::fast_hadamard_transform.out",
        fast_hadamard_transform_out,
    );
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use ptero_core::ScalarType::*;

    #[test]
    fn normalized_sylvester_order() {
        let x = OwnedTensor::from_f64(Float, &[2, 4], &[1., 0., 0., 0., 1., 2., 3., 4.]);
        let r = run_op(
            "llama::fast_hadamard_transform.out",
            vec![Arg::T(x), Arg::Out(Float, vec![2, 4])],
        )
        .unwrap();
        // H4 rows: [1 1 1 1], [1 -1 1 -1], [1 1 -1 -1], [1 -1 -1 1], over sqrt(4).
        assert_close(
            &r.tensors[0].to_f64(),
            &[0.5, 0.5, 0.5, 0.5, 5., -1., -2., 0.],
            1e-6,
            0.0,
        );
        let x = OwnedTensor::from_f64(Half, &[2], &[1., 3.]);
        let r = run_op(
            "llama::fast_hadamard_transform.out",
            vec![Arg::T(x), Arg::Out(Half, vec![2])],
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &[2.828, -1.414], 2e-3, 0.0);
        // Empty input is a no-op; a non power of two is an error.
        let e = OwnedTensor::from_f64(Float, &[0, 4], &[]);
        assert!(run_op(
            "llama::fast_hadamard_transform.out",
            vec![Arg::T(e), Arg::Out(Float, vec![0, 4])]
        )
        .is_ok());
        let bad = OwnedTensor::from_f64(Float, &[3], &[1., 2., 3.]);
        assert!(run_op(
            "llama::fast_hadamard_transform.out",
            vec![Arg::T(bad), Arg::Out(Float, vec![3])]
        )
        .is_err());
    }
}
