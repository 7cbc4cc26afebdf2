//! The same tables at every level this CPU supports.

use std::sync::Mutex;
use std::vec::Vec;

use crate::ops::{self, Binary, Lhs, Rhs, Unary};
use crate::{math, set_level, Level, Simd, SimdOp};

/// Levels to test here (a CPU runs its own level and every lower one).
fn levels() -> Vec<Level> {
    [Level::Scalar, Level::Neon, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|l| l.is_supported())
        .collect()
}

static LEVEL_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with the global level forced to each supported level in turn.
fn at_each_level(mut f: impl FnMut(Level)) {
    let _g = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = crate::level();
    for l in levels() {
        set_level(l).unwrap();
        f(l);
    }
    set_level(before).unwrap();
}

fn ulp_diff(a: f32, b: f64) -> f64 {
    let b32 = b as f32;
    if a.is_nan() || b32.is_nan() {
        return if a.is_nan() && b32.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    if a == b32 {
        return 0.0;
    }
    // Subnormal results: an absolute error below the smallest normal is fine.
    if b.abs() < f32::MIN_POSITIVE as f64 && (a as f64 - b).abs() < f32::MIN_POSITIVE as f64 {
        return 0.0;
    }
    let ulp = if b32 == 0.0 {
        f32::MIN_POSITIVE as f64
    } else {
        let bits = b32.abs().to_bits();
        (f32::from_bits(bits + 1) - b32.abs()) as f64
    };
    (a as f64 - b).abs() / ulp
}

fn grid() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        1e-40,
        88.7,
        88.8,
        -87.5,
        -103.0,
        -110.0,
        1e30,
        -1e30,
        0.625,
        -0.625,
        3.9,
        4.5,
    ];
    let mut x = -30.0f32;
    while x < 30.0 {
        v.push(x);
        x += 0.0137;
    }
    for e in -30..30 {
        v.push(1.37f32.powi(e));
        v.push(-(1.41f32.powi(e)));
    }
    v
}

/// Evaluates through `dispatch_at` so every lane position is exercised.
fn eval_at(l: Level, f: Unary, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    crate::dispatch_at(l, ApplyOp { f, x, y: &mut y });
    y
}

struct ApplyOp<'a> {
    f: Unary,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl SimdOp for ApplyOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        for (xc, yc) in self.x.chunks(S::LANES).zip(self.y.chunks_mut(S::LANES)) {
            let v = s.load_part(xc);
            let r = match self.f {
                Unary::Exp => math::exp(s, v),
                Unary::Log => math::log(s, v),
                Unary::Tanh => math::tanh(s, v),
                Unary::Sigmoid => math::sigmoid(s, v),
                Unary::Silu => math::silu(s, v),
                Unary::Erf => math::erf(s, v),
                Unary::Gelu => math::gelu(s, v),
                Unary::GeluTanh => math::gelu_tanh(s, v),
                _ => unreachable!(),
            };
            s.store_part(yc, r);
        }
    }
}

#[test]
fn math_functions_against_f64() {
    let xs = grid();
    let gelu = |x: f64| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let gelu_tanh = |x: f64| {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
    };
    // (function, reference, max ulp, absolute tolerance that also passes)
    let table: [(Unary, fn(f64) -> f64, f64, f64); 8] = [
        (Unary::Exp, f64::exp, 2.0, 0.0),
        (Unary::Log, f64::ln, 2.0, 0.0),
        (Unary::Tanh, f64::tanh, 3.0, 0.0),
        (Unary::Sigmoid, |x| 1.0 / (1.0 + (-x).exp()), 4.0, 0.0),
        (Unary::Silu, |x| x / (1.0 + (-x).exp()), 4.0, 0.0),
        (Unary::Erf, libm::erf, 4.0, 5e-7),
        (Unary::Gelu, gelu, 8.0, 1e-6),
        (Unary::GeluTanh, gelu_tanh, 8.0, 1e-6),
    ];
    for l in levels() {
        for (f, r, max_ulp, atol) in table {
            let y = eval_at(l, f, &xs);
            for (&x, &v) in xs.iter().zip(&y) {
                let want = r(x as f64);
                let err = ulp_diff(v, want);
                let abs_ok = (v as f64 - want).abs() <= atol;
                assert!(
                    err <= max_ulp || abs_ok,
                    "{l} {f:?}({x:e}) = {v:e}, want {want:e} ({err} ulp)"
                );
            }
        }
    }
}

#[test]
fn slice_ops_match_scalar_loops() {
    let n_list = [0usize, 1, 3, 8, 15, 16, 17, 33, 100, 257];
    at_each_level(|l| {
        for &n in &n_list {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.37)
                .collect();
            let w: Vec<f32> = (0..n).map(|i| ((i * 11 % 7) as f32 - 3.0) * 0.5).collect();
            let sum: f32 = x.iter().sum();
            assert!(
                (ops::sum(&x) - sum).abs() <= 1e-4 * (1.0 + sum.abs()),
                "{l} sum {n}"
            );
            let want_max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(ops::max(&x), want_max, "{l} max {n}");
            let d: f32 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            assert!(
                (ops::dot(&x, &w) - d).abs() <= 1e-4 * (1.0 + d.abs()),
                "{l} dot {n}"
            );

            // Rows of a strided matrix: 3 rows of `n` values, `n + 5` apart.
            let stride = n + 5;
            let m: Vec<f32> = (0..2 * stride + n)
                .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
                .collect();
            let mut scores = [0.0f32; 3];
            ops::dot_rows(&x, &m, stride, 0.5, &mut scores);
            for (i, &got) in scores.iter().enumerate() {
                let want: f32 = 0.5
                    * x.iter()
                        .zip(&m[i * stride..])
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{l} dot_rows {n}"
                );
            }
            let p = [0.25f32, 0.0, -2.0];
            let mut acc = w.clone();
            ops::axpy_rows(&p, &m, stride, &mut acc);
            for j in 0..n {
                let want = w[j] + 0.25 * m[j] - 2.0 * m[2 * stride + j];
                assert!(
                    (acc[j] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{l} axpy_rows {n}"
                );
            }

            let mut y = vec![0.0; n];
            ops::softmax(&x, &mut y);
            if n > 0 {
                let m = want_max;
                let z: f32 = x.iter().map(|v| (v - m).exp()).sum();
                for (i, &v) in y.iter().enumerate() {
                    let want = (x[i] - m).exp() / z;
                    assert!((v - want).abs() <= 1e-6 + 1e-5 * want, "{l} softmax {n}");
                }
                let mut inplace = x.clone();
                ops::softmax_inplace(&mut inplace);
                assert_eq!(inplace, y, "{l} softmax in place {n}");
                ops::log_softmax(&x, &mut y);
                for (i, &v) in y.iter().enumerate() {
                    let want = x[i] - m - z.ln();
                    assert!((v - want).abs() <= 1e-5 * (1.0 + want.abs()), "{l} lsm {n}");
                }
            }

            let mut y = vec![0.0; n];
            ops::binary(Binary::Sub, Lhs::Slice(&x), Rhs::Slice(&w), 2.0, &mut y);
            for i in 0..n {
                assert_eq!(y[i], x[i] - 2.0 * w[i], "{l} sub {n}");
            }
            ops::binary(Binary::Div, Lhs::Scalar(1.5), Rhs::Slice(&w), 1.0, &mut y);
            for i in 0..n {
                assert_eq!(y[i], 1.5 / w[i], "{l} rdiv {n}");
            }
            // Rows of a few widths (under, at and past a vector), both operand orders.
            for c in [1usize, 3, 16, 21].into_iter().filter(|&c| c <= n) {
                let rows = n / c;
                let row = &w[..c];
                let mut y = vec![0.0; rows * c];
                ops::binary_rows(Binary::Sub, &x, row, false, &mut y);
                for i in 0..rows * c {
                    let want = x[i] - row[i % c];
                    assert!(
                        y[i] == want || (y[i].is_nan() && want.is_nan()),
                        "{l} rows sub {n} {c}"
                    );
                }
                ops::binary_rows(Binary::Div, &x, row, true, &mut y);
                for i in 0..rows * c {
                    let want = row[i % c] / x[i];
                    assert!(
                        y[i] == want || (y[i].is_nan() && want.is_nan()),
                        "{l} rows rdiv {n} {c}"
                    );
                }
            }
            for c in [1usize, 5, 16, 40].into_iter().filter(|&c| c <= n) {
                let mut acc: Vec<f32> = (0..c).map(|j| j as f32).collect();
                ops::add_rows(&x, &mut acc);
                for (j, &v) in acc.iter().enumerate() {
                    let want: f64 = j as f64 + (0..n / c).map(|r| x[r * c + j] as f64).sum::<f64>();
                    assert!(
                        (v as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()) || want.is_nan(),
                        "{l} add_rows {n} {c}: {v} vs {want}"
                    );
                }
            }
            let mut y2 = x.clone();
            ops::binary_inplace(Binary::Mul, &mut y2, Rhs::Scalar(3.0));
            for i in 0..n {
                assert_eq!(y2[i], x[i] * 3.0);
            }
            let mut y3 = w.clone();
            ops::axpy(0.5, &x, &mut y3);
            for i in 0..n {
                assert!((y3[i] - (w[i] + 0.5 * x[i])).abs() < 1e-6);
            }
            let (mean, var) = ops::mean_var(&x);
            if n > 0 {
                let m = x.iter().sum::<f32>() / n as f32;
                let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / n as f32;
                assert!(
                    (mean - m).abs() < 1e-5 && (var - v).abs() < 1e-4,
                    "{l} meanvar"
                );
            }
            let mut y4 = vec![0.0; n];
            ops::normalize(&x, &mut y4, 2.0, -1.0, Some(&w), Some(&x));
            for i in 0..n {
                assert!((y4[i] - ((x[i] * 2.0 - 1.0) * w[i] + x[i])).abs() < 1e-5);
            }
        }
    });
}

#[test]
fn nan_and_infinity_rules() {
    at_each_level(|l| {
        let x = [f32::NAN, -1.0, 2.0, f32::NEG_INFINITY, 7.0];
        let mut y = [0.0; 5];
        ops::unary(Unary::Relu, &x, &mut y);
        assert!(y[0].is_nan(), "{l} relu keeps NaN");
        assert_eq!(&y[1..], &[0.0, 2.0, 0.0, 7.0]);
        ops::unary(Unary::Clamp(0.0, 6.0), &x, &mut y);
        assert!(y[0].is_nan());
        assert_eq!(&y[1..], &[0.0, 2.0, 0.0, 6.0]);
        assert!(ops::max(&x).is_nan(), "{l} max sees NaN");
        let mut y = [0.0; 5];
        ops::binary(
            Binary::Maximum,
            Lhs::Slice(&[1.0, f32::NAN, 3.0, 0.0, -1.0]),
            Rhs::Slice(&[f32::NAN, 1.0, 2.0, -0.0, -2.0]),
            1.0,
            &mut y,
        );
        assert!(y[0].is_nan() && y[1].is_nan());
        assert_eq!(&y[2..], &[3.0, 0.0, -1.0]);
        // softmax of all -inf is NaN (0/0), as in PyTorch; +inf gives NaN too.
        let mut y = [0.0; 3];
        ops::softmax(&[f32::NEG_INFINITY; 3], &mut y);
        assert!(y.iter().all(|v| v.is_nan()), "{l}");
        ops::softmax(&[1.0, f32::NEG_INFINITY, 1.0], &mut y);
        assert_eq!(y, [0.5, 0.0, 0.5]);
    });
}

#[test]
fn level_names_and_forcing() {
    assert_eq!(Level::parse("avx512"), Some(Level::Avx512));
    assert_eq!(Level::parse(" scalar "), Some(Level::Scalar));
    assert!(Level::Scalar.is_supported());
    assert!(crate::detected() >= Level::Scalar);
    #[cfg(target_arch = "x86_64")]
    assert!(set_level(Level::Neon).is_err());
}

struct EvenOdd<'a>(&'a mut Vec<f32>, &'a mut Vec<f32>);

impl SimdOp for EvenOdd<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let x: Vec<f32> = (0..2 * S::LANES).map(|i| i as f32 * 1.5 - 3.0).collect();
        let (e, o) = s.even_odd(s.load(&x), s.load(&x[S::LANES..]));
        self.0.resize(S::LANES, 0.0);
        self.1.resize(S::LANES, 0.0);
        s.store(self.0, e);
        s.store(self.1, o);
    }
}

#[test]
fn even_odd_splits_pairs() {
    for l in levels() {
        let (mut e, mut o) = (Vec::new(), Vec::new());
        crate::dispatch_at(l, EvenOdd(&mut e, &mut o));
        for (i, (&ev, &ov)) in e.iter().zip(&o).enumerate() {
            assert_eq!(ev, (2 * i) as f32 * 1.5 - 3.0, "{l} even {i}");
            assert_eq!(ov, (2 * i + 1) as f32 * 1.5 - 3.0, "{l} odd {i}");
        }
        assert!(!e.is_empty(), "{l}");
    }
}

struct Interleave<'a>(&'a mut Vec<f32>);

impl SimdOp for Interleave<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let x: Vec<f32> = (0..2 * S::LANES).map(|i| i as f32 * 1.5 - 3.0).collect();
        let (lo, hi) = s.interleave(s.load(&x), s.load(&x[S::LANES..]));
        self.0.resize(2 * S::LANES, 0.0);
        s.store(self.0, lo);
        s.store(&mut self.0[S::LANES..], hi);
        // Lanes 3.. of `lo` only.
        let mut part = vec![-1.0f32; S::LANES];
        s.store_from(&mut part[..S::LANES - 1], 3, lo);
        for (i, &v) in part.iter().enumerate() {
            let want = if (3..S::LANES - 1).contains(&i) {
                self.0[i]
            } else {
                -1.0
            };
            assert_eq!(v, want, "store_from lane {i}");
        }
        // And back.
        let (e, o) = s.even_odd(lo, hi);
        let mut back = vec![0.0; 2 * S::LANES];
        s.store(&mut back, e);
        s.store(&mut back[S::LANES..], o);
        assert_eq!(back, x);
    }
}

#[test]
fn interleave_zips_two_vectors() {
    for l in levels() {
        let mut z = Vec::new();
        crate::dispatch_at(l, Interleave(&mut z));
        let lanes = z.len() / 2;
        assert!(lanes > 0, "{l}");
        for (i, &v) in z.iter().enumerate() {
            let src = if i % 2 == 0 { i / 2 } else { lanes + i / 2 };
            assert_eq!(v, src as f32 * 1.5 - 3.0, "{l} lane {i}");
        }
    }
}

struct Strided<'a>(&'a mut Vec<f32>, &'a mut Vec<f32>);

impl SimdOp for Strided<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let y: Vec<f32> = (0..3 * S::LANES).map(|i| i as f32).collect();
        // SAFETY: lanes 1 + 3i, i < LANES, are inside `y`; offsets are tiny.
        let g = unsafe { s.gather_ptr(y[1..].as_ptr(), 3) };
        self.0.resize(S::LANES, 0.0);
        s.store(self.0, g);
        self.1.clear();
        self.1.resize(2 * S::LANES, -1.0);
        // SAFETY: lanes 2i, i < LANES, are inside the 2 * LANES floats, distinct.
        unsafe { s.scatter_ptr(self.1.as_mut_ptr(), 2, g) };
    }
}

#[test]
fn gather_and_scatter_step_by_their_stride() {
    for l in levels() {
        let (mut g, mut sc) = (Vec::new(), Vec::new());
        crate::dispatch_at(l, Strided(&mut g, &mut sc));
        assert!(!g.is_empty(), "{l}");
        for (i, v) in g.iter().enumerate() {
            assert_eq!(*v, (1 + 3 * i) as f32, "{l} gather lane {i}");
        }
        for (i, v) in sc.iter().enumerate() {
            let want = if i % 2 == 0 {
                (1 + 3 * (i / 2)) as f32
            } else {
                -1.0
            };
            assert_eq!(*v, want, "{l} scatter slot {i}");
        }
    }
}

/// Int8 widening, int32 loads and products, and the saturating narrowing store.
struct Int8Lanes<'a>(&'a mut Vec<i8>);

impl SimdOp for Int8Lanes<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let x: Vec<i8> = (0..S::LANES).map(|i| (i as i32 * 37 - 128) as i8).collect();
        let w: Vec<i32> = (0..S::LANES).map(|i| 5 - i as i32).collect();
        // Products of up to ±640 saturate when narrowed; 3 · x stays exact below.
        let p = s.mul_i(s.load_i8(&x), s.load_i(&w));
        self.0.resize(2 * S::LANES, 0);
        s.store_i8(self.0, p);
        // pmaddwd with zero high halves in `b`: the exact product again.
        let wm: Vec<i32> = w.iter().map(|&v| v & 0xffff).collect();
        assert_eq!(
            {
                let mut a = vec![0i8; S::LANES];
                s.store_i8(&mut a, s.madd_i16(s.load_i8(&x), s.load_i(&wm)));
                a
            },
            self.0[..S::LANES].to_vec()
        );
        // Both halves count: (1, 2) · (3, -4) = 3 - 8.
        let both = s.madd_i16(s.splat_i(1 | (2 << 16)), s.splat_i(3 | (-4i32 << 16)));
        let mut b = vec![0i8; S::LANES];
        s.store_i8(&mut b, both);
        assert!(b.iter().all(|&v| v == -5));
        let t = s.mul_i(s.load_i8(&x), s.splat_i(-1));
        s.store_i8(&mut self.0[S::LANES..], s.add_i(t, s.splat_i(1)));
    }
}

#[test]
fn int8_lanes_widen_multiply_and_saturate() {
    for l in levels() {
        let mut out = Vec::new();
        crate::dispatch_at(l, Int8Lanes(&mut out));
        let lanes = out.len() / 2;
        assert!(lanes > 0, "{l}");
        for i in 0..lanes {
            let x = i32::from((i as i32 * 37 - 128) as i8);
            let want = (x * (5 - i as i32)).clamp(-128, 127);
            assert_eq!(i32::from(out[i]), want, "{l} product lane {i}");
            assert_eq!(
                i32::from(out[lanes + i]),
                (1 - x).clamp(-128, 127),
                "{l} lane {i}"
            );
        }
    }
}
