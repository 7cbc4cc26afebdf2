//! Vectorised elementary functions, generic over [`Simd`], accurate to a few ulp over the
//! whole f32 range with IEEE special values (NaN in gives NaN out, infinities handled).
//!
//! The polynomials are the classic Cephes single-precision ones (exp, log, tanh) and a
//! rational minimax fit for erf, evaluated with FMA where the level has it. The constants
//! keep their published digits.
#![allow(clippy::excessive_precision)]

use crate::Simd;

#[inline(always)]
fn poly<S: Simd>(s: S, x: S::F, c: &[f32]) -> S::F {
    let mut p = s.splat(c[0]);
    for &k in &c[1..] {
        p = s.mul_add(p, x, s.splat(k));
    }
    p
}

/// `e^x`; overflows to +inf above ~88.72, underflows gradually to 0.
#[inline(always)]
pub fn exp<S: Simd>(s: S, x: S::F) -> S::F {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Clamping keeps 2^n representable as the product of two normal powers of two.
    let xc = s.min(s.max(x, s.splat(-104.0)), s.splat(89.0));
    let n = s.round(s.mul(xc, s.splat(LOG2E)));
    let r = s.mul_add(n, s.splat(-LN2_HI), xc);
    let r = s.mul_add(n, s.splat(-LN2_LO), r);
    let p = poly(
        s,
        r,
        &[
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.000_000_1e-1,
        ],
    );
    let r2 = s.mul(r, r);
    let y = s.add(s.mul_add(p, r2, r), s.splat(1.0));
    // 2^n as 2^n1 * 2^n2 with n1 = n / 2, n2 = n - n1: each factor stays normal, so
    // results near the overflow and underflow thresholds come out right.
    let ni = s.to_i32(n);
    let n1 = s.to_i32(s.floor(s.mul(n, s.splat(0.5))));
    let n2 = s.sub_i(ni, n1);
    let bias = s.splat_i(127);
    let p1 = s.cast_f(s.shl_i::<23>(s.add_i(n1, bias)));
    let p2 = s.cast_f(s.shl_i::<23>(s.add_i(n2, bias)));
    let y = s.mul(s.mul(y, p1), p2);
    s.select(s.is_nan(x), x, y)
}

/// Natural logarithm: NaN below 0, -inf at 0, +inf at +inf.
#[inline(always)]
pub fn log<S: Simd>(s: S, x: S::F) -> S::F {
    const SQRT_HALF: f32 = core::f32::consts::FRAC_1_SQRT_2;
    // Subnormals are scaled up by 2^23 first so the exponent field is meaningful.
    let tiny = s.lt(x, s.splat(f32::MIN_POSITIVE));
    let xs = s.select(tiny, s.mul(x, s.splat(8_388_608.0)), x);
    let bits = s.cast_i(xs);
    let e_raw = s.sub_i(
        s.and_i(s.shr_i::<23>(bits), s.splat_i(0xff)),
        s.splat_i(126),
    );
    let e = s.sub(s.to_f32(e_raw), s.select(tiny, s.splat(23.0), s.zero()));
    // Mantissa in [0.5, 1).
    let m = s.cast_f(s.add_i(
        s.and_i(bits, s.splat_i(0x007f_ffff)),
        s.splat_i(0x3f00_0000),
    ));
    let small = s.lt(m, s.splat(SQRT_HALF));
    let e = s.sub(e, s.select(small, s.splat(1.0), s.zero()));
    let m = s.sub(s.add(m, s.select(small, m, s.zero())), s.splat(1.0));
    let z = s.mul(m, m);
    let p = poly(
        s,
        m,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    let y = s.mul(s.mul(m, z), p);
    let y = s.mul_add(e, s.splat(-2.121_944_4e-4), y);
    let y = s.mul_add(z, s.splat(-0.5), y);
    let y = s.add(m, y);
    let y = s.mul_add(e, s.splat(0.693_359_4), y);
    // Special values: x < 0 (or NaN) -> NaN, 0 -> -inf, +inf -> +inf.
    let y = s.select(s.eq(x, s.splat(f32::INFINITY)), x, y);
    let y = s.select(s.eq(x, s.zero()), s.splat(f32::NEG_INFINITY), y);
    let bad = s.or_mask(s.lt(x, s.zero()), s.is_nan(x));
    s.select(bad, s.splat(f32::NAN), y)
}

/// Hyperbolic tangent.
#[inline(always)]
pub fn tanh<S: Simd>(s: S, x: S::F) -> S::F {
    let ax = s.abs(x);
    // Small |x|: odd polynomial (no cancellation).
    let z = s.mul(x, x);
    let p = poly(
        s,
        z,
        &[
            -5.704_988_7e-3,
            2.063_908_9e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328_2e-1,
        ],
    );
    let small = s.mul_add(s.mul(p, z), x, x);
    // Large |x|: 1 - 2 / (e^{2|x|} + 1), sign restored; saturates to 1 when e^{2|x|} = inf.
    let e = exp(s, s.add(ax, ax));
    let big = s.sub(s.splat(1.0), s.div(s.splat(2.0), s.add(e, s.splat(1.0))));
    let sign = s.and(x, s.splat(-0.0));
    let big = s.or(big, sign);
    let y = s.select(s.lt(ax, s.splat(0.625)), small, big);
    s.select(s.is_nan(x), x, y)
}

/// Logistic sigmoid `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid<S: Simd>(s: S, x: S::F) -> S::F {
    let e = exp(s, s.neg(x));
    s.div(s.splat(1.0), s.add(s.splat(1.0), e))
}

/// SiLU (swish): `x * sigmoid(x)`.
#[inline(always)]
pub fn silu<S: Simd>(s: S, x: S::F) -> S::F {
    let e = exp(s, s.neg(x));
    s.div(x, s.add(s.splat(1.0), e))
}

/// Error function.
#[inline(always)]
pub fn erf<S: Simd>(s: S, x: S::F) -> S::F {
    // erf(x) rounds to +-1 in f32 beyond |x| ~ 3.92.
    let xc = s.min(s.max(x, s.splat(-4.0)), s.splat(4.0));
    let x2 = s.mul(xc, xc);
    let p = poly(
        s,
        x2,
        &[
            -2.726_142_3e-10,
            2.770_681_4e-8,
            -2.101_024e-6,
            -5.692_506_5e-5,
            -7.349_906_3e-4,
            -2.954_600_2e-3,
            -1.609_603_4e-2,
        ],
    );
    let q = poly(
        s,
        x2,
        &[
            -1.456_607_2e-5,
            -2.133_740_5e-4,
            -1.682_827e-3,
            -7.373_329_3e-3,
            -1.426_474e-2,
        ],
    );
    let y = s.div(s.mul(xc, p), q);
    // Beyond ~3.92 erf rounds to +-1 in f32: give it exactly, as libm does (GELU of -inf
    // is then NaN, as in PyTorch).
    let one = s.or(s.splat(1.0), s.and(x, s.splat(-0.0)));
    let y = s.select(s.lt(s.splat(3.92), s.abs(x)), one, y);
    s.select(s.is_nan(x), x, y)
}

/// GELU with the exact (erf) form: `x/2 * (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub fn gelu<S: Simd>(s: S, x: S::F) -> S::F {
    let e = erf(s, s.mul(x, s.splat(core::f32::consts::FRAC_1_SQRT_2)));
    s.mul(s.mul(x, s.splat(0.5)), s.add(s.splat(1.0), e))
}

/// GELU with the tanh approximation (`approximate='tanh'`).
#[inline(always)]
pub fn gelu_tanh<S: Simd>(s: S, x: S::F) -> S::F {
    const K: f32 = 0.797_884_6; // sqrt(2 / pi)
    let x3 = s.mul(s.mul(x, x), x);
    let inner = s.mul(s.splat(K), s.mul_add(x3, s.splat(0.044_715), x));
    let t = tanh(s, inner);
    s.mul(s.mul(x, s.splat(0.5)), s.add(s.splat(1.0), t))
}
