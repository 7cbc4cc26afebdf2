//! x86-64 levels: AVX2 + FMA (8 lanes) and AVX-512 (16 lanes).
//!
//! Every method wraps one or a few intrinsics. The tokens are only created by
//! [`dispatch`](crate::dispatch) after CPU detection, which is the invariant each
//! `// SAFETY:` below relies on ("the token proves the feature").

use core::arch::x86_64::*;

use crate::{Level, Simd};

/// AVX2 + FMA token.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

/// AVX-512 F/BW/VL/DQ token.
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx2 {
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn new_unchecked() -> Avx2 {
        Avx2(())
    }
}

impl Avx512 {
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and DQ (and AVX2 + FMA).
    #[inline(always)]
    pub unsafe fn new_unchecked() -> Avx512 {
        Avx512(())
    }
}

impl Simd for Avx2 {
    type F = __m256;
    type I = __m256i;
    type M = __m256;
    const LANES: usize = 8;
    const LEVEL: Level = Level::Avx2;

    #[inline(always)]
    fn zero(self) -> Self::F {
        // SAFETY (every block in this impl): the token proves AVX2 + FMA.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> Self::F {
        // SAFETY: the caller guarantees 8 readable f32; the token proves AVX.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: Self::F) {
        // SAFETY: the caller guarantees 8 writable f32; the token proves AVX.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    fn load_part(self, s: &[f32]) -> Self::F {
        let n = s.len().min(8) as i32;
        // SAFETY: the mask enables only lanes below `n`, which are inside `s`; masked-off
        // lanes are not read.
        unsafe {
            let m = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            _mm256_maskload_ps(s.as_ptr(), m)
        }
    }
    #[inline(always)]
    fn store_part(self, s: &mut [f32], v: Self::F) {
        let n = s.len().min(8) as i32;
        // SAFETY: only lanes below `n`, inside `s`, are written.
        unsafe {
            let m = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            _mm256_maskstore_ps(s.as_mut_ptr(), m, v)
        }
    }
    #[inline(always)]
    fn store_from(self, s: &mut [f32], lo: usize, v: Self::F) {
        let n = s.len().min(8) as i32;
        let lo = lo.min(8) as i32;
        // SAFETY: only lanes in [lo, n), inside `s`, are written.
        unsafe {
            let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let below = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
            let from = _mm256_cmpgt_epi32(_mm256_set1_epi32(lo), idx);
            _mm256_maskstore_ps(s.as_mut_ptr(), _mm256_andnot_si256(from, below), v)
        }
    }
    #[inline(always)]
    fn add(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`. `maxps` returns the second operand when either is NaN.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn abs(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn neg(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_xor_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn sqrt(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_sqrt_ps(a) }
    }
    #[inline(always)]
    fn round(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn floor(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn lt(self, a: Self::F, b: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn le(self, a: Self::F, b: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm256_cmp_ps::<_CMP_LE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: Self::F, b: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn is_nan(self, a: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a) }
    }
    #[inline(always)]
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_blendv_ps(b, a, m) }
    }
    #[inline(always)]
    fn and_mask(self, a: Self::M, b: Self::M) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm256_and_ps(a, b) }
    }
    #[inline(always)]
    fn or_mask(self, a: Self::M, b: Self::M) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm256_or_ps(a, b) }
    }
    #[inline(always)]
    fn and(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_and_ps(a, b) }
    }
    #[inline(always)]
    fn or(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_or_ps(a, b) }
    }
    #[inline(always)]
    fn xor(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_xor_ps(a, b) }
    }
    #[inline(always)]
    fn splat_i(self, x: i32) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_set1_epi32(x) }
    }
    #[inline(always)]
    fn add_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    fn sub_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_sub_epi32(a, b) }
    }
    #[inline(always)]
    fn and_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    fn shl_i<const N: i32>(self, a: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_slli_epi32::<N>(a) }
    }
    #[inline(always)]
    fn shr_i<const N: i32>(self, a: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_srli_epi32::<N>(a) }
    }
    #[inline(always)]
    fn to_i32(self, a: Self::F) -> Self::I {
        // SAFETY: see `zero`. The default MXCSR mode rounds half to even.
        unsafe { _mm256_cvtps_epi32(a) }
    }
    #[inline(always)]
    fn to_f32(self, a: Self::I) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn cast_i(self, a: Self::F) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_castps_si256(a) }
    }
    #[inline(always)]
    fn cast_f(self, a: Self::I) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm256_castsi256_ps(a) }
    }
    #[inline(always)]
    unsafe fn load_i8_ptr(self, p: *const i8) -> Self::I {
        // SAFETY: see `zero`; the caller guarantees 8 readable bytes.
        unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
    }
    #[inline(always)]
    fn load_i8(self, s: &[i8]) -> Self::I {
        let s = &s[..8];
        // SAFETY: see `zero`; `s` holds the 8 bytes read.
        unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(s.as_ptr() as *const __m128i)) }
    }
    #[inline(always)]
    fn load_i(self, s: &[i32]) -> Self::I {
        let s = &s[..8];
        // SAFETY: see `zero`; `s` holds the 8 values read.
        unsafe { _mm256_loadu_si256(s.as_ptr() as *const __m256i) }
    }
    #[inline(always)]
    fn store_i8(self, s: &mut [i8], v: Self::I) {
        let s = &mut s[..8];
        // SAFETY: see `zero`; `s` holds the 8 bytes written.
        unsafe {
            let w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            _mm_storel_epi64(s.as_mut_ptr() as *mut __m128i, _mm_packs_epi16(w, w));
        }
    }
    #[inline(always)]
    fn mul_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_mullo_epi32(a, b) }
    }
    #[inline(always)]
    fn madd_i16(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm256_madd_epi16(a, b) }
    }
    #[inline(always)]
    fn reduce_add(self, a: Self::F) -> f32 {
        // SAFETY: see `zero`.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn reduce_max(self, a: Self::F) -> f32 {
        // SAFETY: see `zero`.
        unsafe {
            let s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn reduce_min(self, a: Self::F) -> f32 {
        // SAFETY: see `zero`.
        unsafe {
            let s = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_min_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_min_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    unsafe fn gather_ptr(self, p: *const f32, stride: usize) -> Self::F {
        // SAFETY: the caller guarantees every lane is readable and the offsets fit i32.
        unsafe {
            let idx = _mm256_mullo_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(stride as i32),
            );
            _mm256_i32gather_ps::<4>(p, idx)
        }
    }
    #[inline(always)]
    fn even_odd(self, a: Self::F, b: Self::F) -> (Self::F, Self::F) {
        // SAFETY: see `zero`.
        unsafe {
            // Within each 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; then the 64-bit
            // pairs reordered to [a0 a2 a4 a6 b0 b2 b4 b6].
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)));
            let o = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o)));
            (e, o)
        }
    }
    #[inline(always)]
    fn interleave(self, a: Self::F, b: Self::F) -> (Self::F, Self::F) {
        // SAFETY: see `zero`.
        unsafe {
            // Per 128-bit half: [a0 b0 a1 b1 | a4 b4 a5 b5] and [a2 b2 a3 b3 | a6 b6 a7 b7];
            // the halves then regrouped.
            let l = _mm256_unpacklo_ps(a, b);
            let h = _mm256_unpackhi_ps(a, b);
            (
                _mm256_permute2f128_ps::<0x20>(l, h),
                _mm256_permute2f128_ps::<0x31>(l, h),
            )
        }
    }
}

impl Simd for Avx512 {
    type F = __m512;
    type I = __m512i;
    type M = __mmask16;
    const LANES: usize = 16;
    const LEVEL: Level = Level::Avx512;

    #[inline(always)]
    fn zero(self) -> Self::F {
        // SAFETY (every block in this impl): the token proves AVX-512 F/BW/VL/DQ.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> Self::F {
        // SAFETY: the caller guarantees 16 readable f32.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: Self::F) {
        // SAFETY: the caller guarantees 16 writable f32.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    fn load_part(self, s: &[f32]) -> Self::F {
        let n = s.len().min(16);
        let m: __mmask16 = ((1u32 << n) - 1) as u16;
        // SAFETY: masked-off lanes are not read (no fault), enabled ones are inside `s`.
        unsafe { _mm512_maskz_loadu_ps(m, s.as_ptr()) }
    }
    #[inline(always)]
    fn store_part(self, s: &mut [f32], v: Self::F) {
        let n = s.len().min(16);
        let m: __mmask16 = ((1u32 << n) - 1) as u16;
        // SAFETY: only enabled lanes, inside `s`, are written.
        unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr(), m, v) }
    }
    #[inline(always)]
    fn store_from(self, s: &mut [f32], lo: usize, v: Self::F) {
        let n = s.len().min(16);
        let lo = lo.min(n);
        let m: __mmask16 = (((1u32 << n) - 1) & !((1u32 << lo) - 1)) as u16;
        // SAFETY: only enabled lanes, inside `s`, are written.
        unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr(), m, v) }
    }
    #[inline(always)]
    fn add(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`. Like `maxps`: the second operand when either is NaN.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn abs(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    fn neg(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero` (DQ has the float xor).
        unsafe { _mm512_xor_ps(_mm512_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn sqrt(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_sqrt_ps(a) }
    }
    #[inline(always)]
    fn round(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn floor(self, a: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn lt(self, a: Self::F, b: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn le(self, a: Self::F, b: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: Self::F, b: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn is_nan(self, a: Self::F) -> Self::M {
        // SAFETY: see `zero`.
        unsafe { _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a) }
    }
    #[inline(always)]
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_mask_blend_ps(m, b, a) }
    }
    #[inline(always)]
    fn and_mask(self, a: Self::M, b: Self::M) -> Self::M {
        a & b
    }
    #[inline(always)]
    fn or_mask(self, a: Self::M, b: Self::M) -> Self::M {
        a | b
    }
    #[inline(always)]
    fn and(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_and_ps(a, b) }
    }
    #[inline(always)]
    fn or(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_or_ps(a, b) }
    }
    #[inline(always)]
    fn xor(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_xor_ps(a, b) }
    }
    #[inline(always)]
    fn splat_i(self, x: i32) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_set1_epi32(x) }
    }
    #[inline(always)]
    fn add_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    fn sub_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_sub_epi32(a, b) }
    }
    #[inline(always)]
    fn and_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_and_si512(a, b) }
    }
    #[inline(always)]
    fn shl_i<const N: i32>(self, a: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_sllv_epi32(a, _mm512_set1_epi32(N)) }
    }
    #[inline(always)]
    fn shr_i<const N: i32>(self, a: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_srlv_epi32(a, _mm512_set1_epi32(N)) }
    }
    #[inline(always)]
    fn to_i32(self, a: Self::F) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_cvtps_epi32(a) }
    }
    #[inline(always)]
    fn to_f32(self, a: Self::I) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn cast_i(self, a: Self::F) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_castps_si512(a) }
    }
    #[inline(always)]
    fn cast_f(self, a: Self::I) -> Self::F {
        // SAFETY: see `zero`.
        unsafe { _mm512_castsi512_ps(a) }
    }
    #[inline(always)]
    unsafe fn load_i8_ptr(self, p: *const i8) -> Self::I {
        // SAFETY: see `zero`; the caller guarantees 16 readable bytes.
        unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[inline(always)]
    fn load_i8(self, s: &[i8]) -> Self::I {
        let s = &s[..16];
        // SAFETY: see `zero`; `s` holds the 16 bytes read.
        unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(s.as_ptr() as *const __m128i)) }
    }
    #[inline(always)]
    fn load_i(self, s: &[i32]) -> Self::I {
        let s = &s[..16];
        // SAFETY: see `zero`; `s` holds the 16 values read.
        unsafe { _mm512_loadu_si512(s.as_ptr() as *const _) }
    }
    #[inline(always)]
    fn store_i8(self, s: &mut [i8], v: Self::I) {
        let s = &mut s[..16];
        // SAFETY: see `zero`; `s` holds the 16 bytes written.
        unsafe { _mm_storeu_si128(s.as_mut_ptr() as *mut __m128i, _mm512_cvtsepi32_epi8(v)) }
    }
    #[inline(always)]
    fn mul_i(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_mullo_epi32(a, b) }
    }
    #[inline(always)]
    fn madd_i16(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see `zero`.
        unsafe { _mm512_madd_epi16(a, b) }
    }
    #[inline(always)]
    fn reduce_add(self, a: Self::F) -> f32 {
        // SAFETY: see `zero`.
        unsafe {
            let h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps::<1>(a));
            Avx2(()).reduce_add(h)
        }
    }
    #[inline(always)]
    fn reduce_max(self, a: Self::F) -> f32 {
        // SAFETY: see `zero`.
        unsafe {
            let h = _mm256_max_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps::<1>(a));
            Avx2(()).reduce_max(h)
        }
    }
    #[inline(always)]
    fn reduce_min(self, a: Self::F) -> f32 {
        // SAFETY: see `zero`.
        unsafe {
            let h = _mm256_min_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps::<1>(a));
            Avx2(()).reduce_min(h)
        }
    }
    #[inline(always)]
    unsafe fn gather_ptr(self, p: *const f32, stride: usize) -> Self::F {
        // SAFETY: the caller guarantees every lane is readable and the offsets fit i32.
        unsafe {
            let idx = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(stride as i32),
            );
            _mm512_i32gather_ps::<4>(idx, p)
        }
    }
    #[inline(always)]
    unsafe fn scatter_ptr(self, p: *mut f32, stride: usize, v: Self::F) {
        // SAFETY: the caller guarantees every lane is writable, distinct, and the offsets
        // fit i32.
        unsafe {
            let idx = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(stride as i32),
            );
            _mm512_i32scatter_ps::<4>(p, idx, v)
        }
    }
    #[inline(always)]
    fn even_odd(self, a: Self::F, b: Self::F) -> (Self::F, Self::F) {
        // SAFETY: see `zero`.
        unsafe {
            // Index bit 4 picks `b`.
            let ei = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let oi = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            (
                _mm512_permutex2var_ps(a, ei, b),
                _mm512_permutex2var_ps(a, oi, b),
            )
        }
    }
    #[inline(always)]
    fn interleave(self, a: Self::F, b: Self::F) -> (Self::F, Self::F) {
        // SAFETY: see `zero`.
        unsafe {
            // Index bit 4 picks `b`.
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            (
                _mm512_permutex2var_ps(a, lo, b),
                _mm512_permutex2var_ps(a, hi, b),
            )
        }
    }
}
