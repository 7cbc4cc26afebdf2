//! The vector abstraction: one trait, implemented per instruction set.

use crate::Level;

/// A SIMD instruction set, as a zero-sized token. A token can only be obtained where its
/// level runs on this CPU (through [`dispatch`](crate::dispatch)), which is what makes
/// its safe methods sound.
///
/// `F` is a vector of `LANES` f32, `I` the i32 vector of the same width and `M` a lane
/// mask from comparisons. Semantics are the same on every level; where instruction sets
/// disagree the trait picks one and emulates it elsewhere:
/// - `max(a, b)` is `if a > b { a } else { b }` and `min(a, b)` is `if a < b { a } else { b }`
///   lane by lane, so a NaN in `a` yields `b` (x86's `maxps`). `max(zero, x)` is a ReLU that
///   keeps NaN.
/// - `round` rounds half to even; `to_i32` converts after rounding half to even.
///
/// Kernels are written once as a [`SimdOp`](crate::SimdOp) generic over `S: Simd`; every
/// method is `#[inline(always)]` so it compiles with the target features of the level
/// that runs it.
pub trait Simd: Copy + Send + Sync + 'static {
    type F: Copy;
    type I: Copy;
    type M: Copy;
    const LANES: usize;
    const LEVEL: Level;

    fn zero(self) -> Self::F;
    fn splat(self, x: f32) -> Self::F;

    /// Loads `LANES` values.
    ///
    /// # Safety
    /// `p` must be valid for reading `LANES` f32 (no alignment needed).
    unsafe fn load_ptr(self, p: *const f32) -> Self::F;
    /// Stores `LANES` values.
    ///
    /// # Safety
    /// `p` must be valid for writing `LANES` f32 (no alignment needed).
    unsafe fn store_ptr(self, p: *mut f32, v: Self::F);

    /// Loads the first `min(len, LANES)` values of `s`, zeros in the rest.
    fn load_part(self, s: &[f32]) -> Self::F;
    /// Stores the first `min(len, LANES)` lanes of `v` into `s`.
    fn store_part(self, s: &mut [f32], v: Self::F);
    /// Stores lanes `lo..min(len, LANES)` of `v` into the same places of `s`, leaving
    /// `s[..lo]` untouched (the tail of a vector split across two destinations).
    fn store_from(self, s: &mut [f32], lo: usize, v: Self::F);

    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    fn sub(self, a: Self::F, b: Self::F) -> Self::F;
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    fn div(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c`, fused where the level has FMA.
    fn mul_add(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    fn max(self, a: Self::F, b: Self::F) -> Self::F;
    fn min(self, a: Self::F, b: Self::F) -> Self::F;
    fn abs(self, a: Self::F) -> Self::F;
    fn neg(self, a: Self::F) -> Self::F;
    fn sqrt(self, a: Self::F) -> Self::F;
    /// Round to nearest, ties to even.
    fn round(self, a: Self::F) -> Self::F;
    fn floor(self, a: Self::F) -> Self::F;

    fn lt(self, a: Self::F, b: Self::F) -> Self::M;
    fn le(self, a: Self::F, b: Self::F) -> Self::M;
    fn eq(self, a: Self::F, b: Self::F) -> Self::M;
    /// True where `a` is NaN.
    fn is_nan(self, a: Self::F) -> Self::M;
    /// `m ? a : b` lane by lane.
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    fn and_mask(self, a: Self::M, b: Self::M) -> Self::M;
    fn or_mask(self, a: Self::M, b: Self::M) -> Self::M;

    /// Bitwise operations on the f32 bit patterns.
    fn and(self, a: Self::F, b: Self::F) -> Self::F;
    fn or(self, a: Self::F, b: Self::F) -> Self::F;
    fn xor(self, a: Self::F, b: Self::F) -> Self::F;

    fn splat_i(self, x: i32) -> Self::I;
    fn add_i(self, a: Self::I, b: Self::I) -> Self::I;
    fn sub_i(self, a: Self::I, b: Self::I) -> Self::I;
    fn and_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// Logical shift left by a constant.
    fn shl_i<const N: i32>(self, a: Self::I) -> Self::I;
    /// Logical shift right by a constant.
    fn shr_i<const N: i32>(self, a: Self::I) -> Self::I;
    /// Rounds half to even and converts (out-of-range lanes give `i32::MIN`).
    fn to_i32(self, a: Self::F) -> Self::I;
    fn to_f32(self, a: Self::I) -> Self::F;
    fn cast_i(self, a: Self::F) -> Self::I;
    fn cast_f(self, a: Self::I) -> Self::F;
    /// Sign-extends the first `LANES` values of `s` (panics when `s` is shorter).
    fn load_i8(self, s: &[i8]) -> Self::I;
    /// Sign-extends `LANES` int8 values from `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading `LANES` bytes.
    unsafe fn load_i8_ptr(self, p: *const i8) -> Self::I;
    /// The first `LANES` values of `s` (panics when `s` is shorter).
    fn load_i(self, s: &[i32]) -> Self::I;
    /// Stores each lane, saturated to int8, into `s[..LANES]` (panics when shorter).
    fn store_i8(self, s: &mut [i8], v: Self::I);
    /// The low 32 bits of each product.
    fn mul_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// Per 32-bit lane, the sum of the products of its signed 16-bit halves:
    /// `a.lo · b.lo + a.hi · b.hi` (`pmaddwd`). With `b`'s high halves zero and `a`
    /// a sign-extended 16-bit value, this is the exact product in one instruction.
    fn madd_i16(self, a: Self::I, b: Self::I) -> Self::I;

    fn reduce_add(self, a: Self::F) -> f32;
    fn reduce_max(self, a: Self::F) -> f32;
    fn reduce_min(self, a: Self::F) -> f32;

    /// Lanes `p[0], p[stride], p[2 * stride], …`.
    ///
    /// # Safety
    /// `p + i * stride` must be readable for every lane `i`, and `(LANES - 1) * stride`
    /// must fit an `i32`.
    #[inline(always)]
    unsafe fn gather_ptr(self, p: *const f32, stride: usize) -> Self::F {
        let mut t = [0.0f32; 64];
        for (i, v) in t.iter_mut().enumerate().take(Self::LANES) {
            // SAFETY: per the contract.
            *v = unsafe { *p.add(i * stride) };
        }
        self.load(&t[..Self::LANES])
    }

    /// Stores lane `i` of `v` at `p[i * stride]`.
    ///
    /// # Safety
    /// `p + i * stride` must be writable for every lane `i`, with `stride > 0`, and
    /// `(LANES - 1) * stride` must fit an `i32`.
    #[inline(always)]
    unsafe fn scatter_ptr(self, p: *mut f32, stride: usize, v: Self::F) {
        let mut t = [0.0f32; 64];
        self.store(&mut t[..Self::LANES], v);
        for (i, x) in t.iter().enumerate().take(Self::LANES) {
            // SAFETY: per the contract.
            unsafe { *p.add(i * stride) = *x };
        }
    }

    /// Splits the `2 * LANES` values `a ++ b` into their even- and odd-indexed halves
    /// (a stride-2 gather, for strided convolutions and pooling).
    fn even_odd(self, a: Self::F, b: Self::F) -> (Self::F, Self::F);

    /// The inverse of [`Simd::even_odd`]: `[a0, b0, a1, b1, …]` over `2 * LANES` values,
    /// as its first and second halves (columns of a stride-2 output).
    fn interleave(self, a: Self::F, b: Self::F) -> (Self::F, Self::F);

    /// Loads `LANES` values from the front of `s`.
    ///
    /// # Panics
    /// If `s` is shorter than `LANES` (a bug in the kernel, not an input error).
    #[inline(always)]
    fn load(self, s: &[f32]) -> Self::F {
        assert!(s.len() >= Self::LANES);
        // SAFETY: the assertion guarantees `LANES` readable values.
        unsafe { self.load_ptr(s.as_ptr()) }
    }

    /// Stores `LANES` values at the front of `s`.
    ///
    /// # Panics
    /// If `s` is shorter than `LANES`.
    #[inline(always)]
    fn store(self, s: &mut [f32], v: Self::F) {
        assert!(s.len() >= Self::LANES);
        // SAFETY: the assertion guarantees `LANES` writable values.
        unsafe { self.store_ptr(s.as_mut_ptr(), v) }
    }
}

/// A kernel written once over every level: [`dispatch`](crate::dispatch) calls `eval`
/// with the token of the selected level, inside a function compiled for that level.
///
/// `eval` must be `#[inline(always)]`, so its body is compiled with the level's target
/// features (otherwise every vector method becomes a call).
pub trait SimdOp {
    type Output;
    fn eval<S: Simd>(self, s: S) -> Self::Output;
}
