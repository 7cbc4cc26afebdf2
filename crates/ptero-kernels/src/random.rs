//! Random ops: `rand`, `randn` and `native_dropout`.
//!
//! Values come from one process-wide SplitMix64 stream (an atomic counter, so kernels
//! stay `fn` pointers without a context and results are reproducible for a given call
//! sequence from process start). They do NOT bit-match PyTorch's generators (mt19937 /
//! Philox); only the distributions match. Dropout in inference (`train=False`) and the
//! degenerate `p = 0` / `p = 1` cases are deterministic and match PyTorch exactly.

use core::sync::atomic::{AtomicU64, Ordering};

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::unary::round_to;
use crate::util::{for_each_offset, load_f64, store_bool, store_f64, FLOAT};

static STATE: AtomicU64 = AtomicU64::new(0x5EED_0FD1_CE00);

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn next_u64() -> u64 {
    let mut z = STATE
        .fetch_add(GAMMA, Ordering::Relaxed)
        .wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1), with no more mantissa bits than `t` holds so rounding to `t` can
/// never produce 1.0.
fn uniform(t: ScalarType) -> f64 {
    let bits = match t {
        ScalarType::Double => 53,
        ScalarType::Half => 11,
        ScalarType::BFloat16 => 8,
        _ => 24,
    };
    (next_u64() >> (64 - bits)) as f64 / (1u64 << bits) as f64
}

/// Standard normal (Box-Muller).
fn normal() -> f64 {
    let u1 = 1.0 - uniform(ScalarType::Double); // (0, 1]
    let u2 = uniform(ScalarType::Double);
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * core::f64::consts::PI * u2)
}

fn check_float(a: &KernelArgs<'_>, arg: usize, what: &str) -> Result<ScalarType> {
    let t = a.meta(arg)?.dtype;
    if FLOAT.contains(&t) {
        Ok(t)
    } else {
        Err(Error::Dtype {
            arg,
            expected: alloc::format!("a floating dtype ({what})"),
            found: t,
        })
    }
}

fn fill_random(a: &mut KernelArgs<'_>, what: &str, sample: fn(ScalarType) -> f64) -> Result<()> {
    a.expect_len(2)?;
    let shape = a.int_list(0)?.to_dims()?;
    a.resize(1, &shape)?;
    let t = check_float(a, 1, what)?;
    let st = a.meta(1)?.stride_dims();
    let o = a.out(1)?;
    let ob = &mut *o.bytes;
    for_each_offset(&shape, [&st], |[oo]| store_f64(ob, t, oo, sample(t)));
    Ok(())
}

/// `rand.out(size, *, out)`: uniform on [0, 1).
fn rand_out(a: &mut KernelArgs<'_>) -> Result<()> {
    fill_random(a, "rand", uniform)
}

/// `randn.out(size, *, out)`: standard normal.
fn randn_out(a: &mut KernelArgs<'_>) -> Result<()> {
    fill_random(a, "randn", |_| normal())
}

/// `native_dropout.out(input, p, train: bool?, *, out0, out1)`: `(input * mask / (1 - p),
/// mask)` with `mask ~ Bernoulli(1 - p)` when training (`train` None counts as training,
/// as in ATen); `(input, all true)` otherwise.
fn native_dropout_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let p = a.double(1)?;
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(alloc::format!(
            "native_dropout: p must be in [0, 1], found {p}"
        )));
    }
    let train = a.opt_bool(2)?.unwrap_or(true);
    let xm = *a.meta(0)?;
    let t = check_float(a, 0, "native_dropout")?;
    let shape = xm.dims();
    a.resize(3, &shape)?;
    a.resize(4, &shape)?;
    if a.meta(3)?.dtype != t {
        return Err(Error::Dtype {
            arg: 3,
            expected: t.name().into(),
            found: a.meta(3)?.dtype,
        });
    }
    if a.meta(4)?.dtype != ScalarType::Bool {
        return Err(Error::Dtype {
            arg: 4,
            expected: "a bool mask".into(),
            found: a.meta(4)?.dtype,
        });
    }
    let (ost, mst) = (a.meta(3)?.stride_dims(), a.meta(4)?.stride_dims());
    let x = a.tensor(0)?;
    let o = a.out(3)?;
    let m = a.out(4)?;
    let (ob, mb) = (&mut *o.bytes, &mut *m.bytes);
    let keep_p = 1.0 - p;
    // ATen multiplies by the mask, then by the scale rounded to the compute dtype.
    let scale = round_to(t, if keep_p == 0.0 { 0.0 } else { 1.0 / keep_p });
    for_each_offset(&shape, [xm.strides(), &ost, &mst], |[xo, oo, mo]| {
        let v = load_f64(x.bytes, t, xo);
        let keep = !train || p == 0.0 || (p < 1.0 && uniform(ScalarType::Double) < keep_p);
        let r = if !train {
            v
        } else {
            round_to(t, v * keep as u8 as f64) * scale
        };
        store_f64(ob, t, oo, r);
        store_bool(mb, ScalarType::Bool, mo, keep);
    });
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::rand.out", rand_out);
    reg.register("aten::randn.out", randn_out);
    reg.register("aten::native_dropout.out", native_dropout_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_op, Arg, OwnedTensor};
    use alloc::vec;
    use ptero_core::ScalarType::*;

    #[test]
    fn rand_and_randn_distributions() {
        for dt in [Float, Double, Half, BFloat16] {
            let out = run_op(
                "aten::rand.out",
                vec![Arg::Ints(vec![40, 50]), Arg::Out(dt, vec![40, 50])],
            )
            .unwrap();
            let v = out.tensors[0].to_f64();
            assert_eq!(v.len(), 2000);
            assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)), "{dt}");
            let mean = v.iter().sum::<f64>() / 2000.0;
            assert!((mean - 0.5).abs() < 0.05, "{dt}: mean {mean}");
        }
        let out = run_op(
            "aten::randn.out",
            vec![Arg::Ints(vec![4000]), Arg::Out(Float, vec![4000])],
        )
        .unwrap();
        let v = out.tensors[0].to_f64();
        let mean = v.iter().sum::<f64>() / 4000.0;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 4000.0;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{mean} {var}");
        // Empty and 0-d; integer out is an error.
        let out = run_op(
            "aten::rand.out",
            vec![Arg::Ints(vec![0, 3]), Arg::Out(Float, vec![0, 3])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, 3]);
        let out = run_op(
            "aten::randn.out",
            vec![Arg::Ints(vec![]), Arg::Out(Float, vec![])],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64().len(), 1);
        assert!(run_op(
            "aten::rand.out",
            vec![Arg::Ints(vec![2]), Arg::Out(Long, vec![2])]
        )
        .is_err());
    }

    #[test]
    fn dropout() {
        let name = "aten::native_dropout.out";
        let x = OwnedTensor::from_f64(Float, &[1, 2, 1, 2], &[1., 2., 3., f64::NAN])
            .with_dim_order(&[0, 2, 3, 1]);
        let run = |p: f64, train: Arg| {
            let out = run_op(
                name,
                vec![
                    Arg::T(x.clone()),
                    Arg::Double(p),
                    train,
                    Arg::Out(Float, vec![1, 2, 1, 2]),
                    Arg::Out(Bool, vec![1, 2, 1, 2]),
                ],
            )
            .unwrap();
            (out.tensors[0].to_f64(), out.tensors[1].to_f64())
        };
        let (o, m) = run(0.5, Arg::Bool(false));
        assert_eq!(o[..3], [1., 2., 3.]);
        assert!(o[3].is_nan());
        assert_eq!(m, [1.; 4]);
        let (o, m) = run(0.0, Arg::None);
        assert_eq!(o[..3], [1., 2., 3.]);
        assert_eq!(m, [1.; 4]);
        let (o, m) = run(1.0, Arg::Bool(true));
        assert_eq!(o[..3], [0., 0., 0.]);
        assert!(o[3].is_nan());
        assert_eq!(m, [0.; 4]);
        // Training with p = 0.5: kept values are doubled, dropped ones are zero.
        let big = OwnedTensor::from_f64(Double, &[1000], &[3.0; 1000]);
        let out = run_op(
            name,
            vec![
                Arg::T(big),
                Arg::Double(0.5),
                Arg::Bool(true),
                Arg::Out(Double, vec![1000]),
                Arg::Out(Bool, vec![1000]),
            ],
        )
        .unwrap();
        let (o, m) = (out.tensors[0].to_f64(), out.tensors[1].to_f64());
        assert!(o
            .iter()
            .zip(&m)
            .all(|(&v, &k)| v == if k == 1.0 { 6.0 } else { 0.0 }));
        let kept = m.iter().sum::<f64>();
        assert!((400.0..600.0).contains(&kept), "{kept}");
        // Empty input; bad p; int input.
        let e = OwnedTensor::zeros(Float, &[0]);
        let out = run_op(
            name,
            vec![
                Arg::T(e),
                Arg::Double(0.5),
                Arg::Bool(true),
                Arg::Out(Float, vec![0]),
                Arg::Out(Bool, vec![0]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0]);
        assert!(run_op(
            name,
            vec![
                Arg::T(x.clone()),
                Arg::Double(1.5),
                Arg::Bool(true),
                Arg::Out(Float, vec![1, 2, 1, 2]),
                Arg::Out(Bool, vec![1, 2, 1, 2])
            ]
        )
        .is_err());
        let xi = OwnedTensor::from_f64(Long, &[1], &[1.]);
        assert!(run_op(
            name,
            vec![
                Arg::T(xi),
                Arg::Double(0.5),
                Arg::Bool(false),
                Arg::Out(Long, vec![1]),
                Arg::Out(Bool, vec![1])
            ]
        )
        .is_err());
    }
}
