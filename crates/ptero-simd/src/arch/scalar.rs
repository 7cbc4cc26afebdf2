//! The portable level: fixed-size arrays the compiler maps to whatever vectors the build
//! target has (SSE2 on x86-64, NEON on aarch64), or to scalar code.

use crate::{Level, Simd};

const N: usize = 4;

/// The portable token; always available.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

#[inline(always)]
fn map(a: [f32; N], f: impl Fn(f32) -> f32) -> [f32; N] {
    [f(a[0]), f(a[1]), f(a[2]), f(a[3])]
}

#[inline(always)]
fn zip(a: [f32; N], b: [f32; N], f: impl Fn(f32, f32) -> f32) -> [f32; N] {
    [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])]
}

#[inline(always)]
fn zip_i(a: [i32; N], b: [i32; N], f: impl Fn(i32, i32) -> i32) -> [i32; N] {
    [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])]
}

#[inline(always)]
fn cmp(a: [f32; N], b: [f32; N], f: impl Fn(f32, f32) -> bool) -> [bool; N] {
    [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])]
}

/// Round half to even without `std` (`f32::round_ties_even` needs it).
#[inline(always)]
fn round_even(x: f32) -> f32 {
    // Adding and subtracting 2^23 rounds to even in the default rounding mode; values at
    // or above 2^23 are already integers.
    const BIG: f32 = 8_388_608.0;
    if x.is_nan() || x.abs() >= BIG {
        return x;
    }
    let r = if x >= 0.0 {
        (x + BIG) - BIG
    } else {
        (x - BIG) + BIG
    };
    // Keep the sign of zero (e.g. -0.3 rounds to -0.0).
    f32::from_bits(r.to_bits() | (x.to_bits() & 0x8000_0000))
}

#[inline(always)]
fn floor(x: f32) -> f32 {
    let r = round_even(x);
    if r > x {
        r - 1.0
    } else {
        r
    }
}

#[inline(always)]
fn sqrt(x: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        x.sqrt()
    }
    #[cfg(not(feature = "std"))]
    {
        // Newton iterations from a bit-level estimate, for no_std builds.
        if x.is_nan() || x < 0.0 {
            return f32::NAN;
        }
        if x == 0.0 || x.is_infinite() {
            return x;
        }
        let mut y = f32::from_bits((x.to_bits() >> 1) + 0x1fbd_1df5);
        for _ in 0..4 {
            y = 0.5 * (y + x / y);
        }
        y
    }
}

impl Simd for Scalar {
    type F = [f32; N];
    type I = [i32; N];
    type M = [bool; N];
    const LANES: usize = N;
    const LEVEL: Level = Level::Scalar;

    #[inline(always)]
    fn zero(self) -> Self::F {
        [0.0; N]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::F {
        [x; N]
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> Self::F {
        // SAFETY: the caller guarantees N readable values.
        unsafe { core::ptr::read_unaligned(p as *const [f32; N]) }
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: Self::F) {
        // SAFETY: the caller guarantees N writable values.
        unsafe { core::ptr::write_unaligned(p as *mut [f32; N], v) }
    }
    #[inline(always)]
    fn load_part(self, s: &[f32]) -> Self::F {
        let mut v = [0.0; N];
        let n = s.len().min(N);
        v[..n].copy_from_slice(&s[..n]);
        v
    }
    #[inline(always)]
    fn store_part(self, s: &mut [f32], v: Self::F) {
        let n = s.len().min(N);
        s[..n].copy_from_slice(&v[..n]);
    }
    #[inline(always)]
    fn store_from(self, s: &mut [f32], lo: usize, v: Self::F) {
        let n = s.len().min(N);
        let lo = lo.min(n);
        s[lo..n].copy_from_slice(&v[lo..n]);
    }
    #[inline(always)]
    fn add(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| x * y)
    }
    #[inline(always)]
    fn div(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| x / y)
    }
    #[inline(always)]
    fn mul_add(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F {
        // Not fused: a software fma is slow, and the portable level trades the last bit
        // for speed like the compilers' own vectorised code.
        [
            a[0] * b[0] + c[0],
            a[1] * b[1] + c[1],
            a[2] * b[2] + c[2],
            a[3] * b[3] + c[3],
        ]
    }
    #[inline(always)]
    fn max(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| if x > y { x } else { y })
    }
    #[inline(always)]
    fn min(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| if x < y { x } else { y })
    }
    #[inline(always)]
    fn abs(self, a: Self::F) -> Self::F {
        map(a, |x| f32::from_bits(x.to_bits() & 0x7fff_ffff))
    }
    #[inline(always)]
    fn neg(self, a: Self::F) -> Self::F {
        map(a, |x| -x)
    }
    #[inline(always)]
    fn sqrt(self, a: Self::F) -> Self::F {
        map(a, sqrt)
    }
    #[inline(always)]
    fn round(self, a: Self::F) -> Self::F {
        map(a, round_even)
    }
    #[inline(always)]
    fn floor(self, a: Self::F) -> Self::F {
        map(a, floor)
    }
    #[inline(always)]
    fn lt(self, a: Self::F, b: Self::F) -> Self::M {
        cmp(a, b, |x, y| x < y)
    }
    #[inline(always)]
    fn le(self, a: Self::F, b: Self::F) -> Self::M {
        cmp(a, b, |x, y| x <= y)
    }
    #[inline(always)]
    fn eq(self, a: Self::F, b: Self::F) -> Self::M {
        cmp(a, b, |x, y| x == y)
    }
    #[inline(always)]
    fn is_nan(self, a: Self::F) -> Self::M {
        cmp(a, a, |x, _| x.is_nan())
    }
    #[inline(always)]
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F {
        [
            if m[0] { a[0] } else { b[0] },
            if m[1] { a[1] } else { b[1] },
            if m[2] { a[2] } else { b[2] },
            if m[3] { a[3] } else { b[3] },
        ]
    }
    #[inline(always)]
    fn and_mask(self, a: Self::M, b: Self::M) -> Self::M {
        [a[0] & b[0], a[1] & b[1], a[2] & b[2], a[3] & b[3]]
    }
    #[inline(always)]
    fn or_mask(self, a: Self::M, b: Self::M) -> Self::M {
        [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]
    }
    #[inline(always)]
    fn and(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| f32::from_bits(x.to_bits() & y.to_bits()))
    }
    #[inline(always)]
    fn or(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| f32::from_bits(x.to_bits() | y.to_bits()))
    }
    #[inline(always)]
    fn xor(self, a: Self::F, b: Self::F) -> Self::F {
        zip(a, b, |x, y| f32::from_bits(x.to_bits() ^ y.to_bits()))
    }
    #[inline(always)]
    fn splat_i(self, x: i32) -> Self::I {
        [x; N]
    }
    #[inline(always)]
    fn add_i(self, a: Self::I, b: Self::I) -> Self::I {
        zip_i(a, b, i32::wrapping_add)
    }
    #[inline(always)]
    fn sub_i(self, a: Self::I, b: Self::I) -> Self::I {
        zip_i(a, b, i32::wrapping_sub)
    }
    #[inline(always)]
    fn and_i(self, a: Self::I, b: Self::I) -> Self::I {
        zip_i(a, b, |x, y| x & y)
    }
    #[inline(always)]
    fn shl_i<const S: i32>(self, a: Self::I) -> Self::I {
        zip_i(a, a, |x, _| ((x as u32) << S) as i32)
    }
    #[inline(always)]
    fn shr_i<const S: i32>(self, a: Self::I) -> Self::I {
        zip_i(a, a, |x, _| ((x as u32) >> S) as i32)
    }
    #[inline(always)]
    fn to_i32(self, a: Self::F) -> Self::I {
        let f = |x: f32| {
            let r = round_even(x);
            if (-2_147_483_648.0..2_147_483_648.0).contains(&r) {
                r as i32
            } else {
                i32::MIN
            }
        };
        [f(a[0]), f(a[1]), f(a[2]), f(a[3])]
    }
    #[inline(always)]
    fn to_f32(self, a: Self::I) -> Self::F {
        [a[0] as f32, a[1] as f32, a[2] as f32, a[3] as f32]
    }
    #[inline(always)]
    fn cast_i(self, a: Self::F) -> Self::I {
        [
            a[0].to_bits() as i32,
            a[1].to_bits() as i32,
            a[2].to_bits() as i32,
            a[3].to_bits() as i32,
        ]
    }
    #[inline(always)]
    fn cast_f(self, a: Self::I) -> Self::F {
        [
            f32::from_bits(a[0] as u32),
            f32::from_bits(a[1] as u32),
            f32::from_bits(a[2] as u32),
            f32::from_bits(a[3] as u32),
        ]
    }
    #[inline(always)]
    unsafe fn load_i8_ptr(self, p: *const i8) -> Self::I {
        // SAFETY: the caller guarantees `N` readable bytes.
        self.load_i8(unsafe { core::slice::from_raw_parts(p, N) })
    }
    #[inline(always)]
    fn load_i8(self, s: &[i8]) -> Self::I {
        let s = &s[..N];
        [s[0].into(), s[1].into(), s[2].into(), s[3].into()]
    }
    #[inline(always)]
    fn load_i(self, s: &[i32]) -> Self::I {
        [s[0], s[1], s[2], s[3]]
    }
    #[inline(always)]
    fn store_i8(self, s: &mut [i8], v: Self::I) {
        for (o, x) in s[..N].iter_mut().zip(v) {
            *o = x.clamp(-128, 127) as i8;
        }
    }
    #[inline(always)]
    fn mul_i(self, a: Self::I, b: Self::I) -> Self::I {
        zip_i(a, b, i32::wrapping_mul)
    }
    #[inline(always)]
    fn madd_i16(self, a: Self::I, b: Self::I) -> Self::I {
        zip_i(a, b, |x, y| {
            let lo = i32::from(x as i16) * i32::from(y as i16);
            let hi = i32::from((x >> 16) as i16) * i32::from((y >> 16) as i16);
            lo.wrapping_add(hi)
        })
    }
    #[inline(always)]
    fn reduce_add(self, a: Self::F) -> f32 {
        (a[0] + a[2]) + (a[1] + a[3])
    }
    #[inline(always)]
    fn reduce_max(self, a: Self::F) -> f32 {
        let m = |x: f32, y: f32| if x > y { x } else { y };
        m(m(a[0], a[2]), m(a[1], a[3]))
    }
    #[inline(always)]
    fn reduce_min(self, a: Self::F) -> f32 {
        let m = |x: f32, y: f32| if x < y { x } else { y };
        m(m(a[0], a[2]), m(a[1], a[3]))
    }
    #[inline(always)]
    fn even_odd(self, a: Self::F, b: Self::F) -> (Self::F, Self::F) {
        let mut e = [0.0; N];
        let mut o = [0.0; N];
        for i in 0..N {
            let (x, y) = if 2 * i < N {
                (a[2 * i], a[2 * i + 1])
            } else {
                (b[2 * i - N], b[2 * i + 1 - N])
            };
            e[i] = x;
            o[i] = y;
        }
        (e, o)
    }
    #[inline(always)]
    fn interleave(self, a: Self::F, b: Self::F) -> (Self::F, Self::F) {
        let mut lo = [0.0; N];
        let mut hi = [0.0; N];
        for i in 0..N {
            let dst = if 2 * i < N { &mut lo } else { &mut hi };
            let at = 2 * i % N;
            dst[at] = a[i];
            dst[at + 1] = b[i];
        }
        (lo, hi)
    }
}
