//! AVX2 kernel for int8 activations against group-wise int4 weights with bf16 scales
//! (XNNPACK's `qb4w`), on the panel layout of [`crate::qvnni`]: the decode GEMV of 8da4w
//! language models on CPUs without AVX-512 VNNI.
//!
//! Without `vpdpbusd`, a 4-byte dot product is `vpmaddubsw` (unsigned activations times
//! signed weights, pairs summed to i16: at most 2 · 255 · 8, so it never saturates) then
//! `vpmaddwd` by ones. The integer sums are the VNNI kernel's, and each group is folded
//! into f32 with one fused multiply-add in the same order, so results are bit-identical.

#![allow(unsafe_code)]

use crate::qvnni::{Epi, VnniWeights, PANEL};

/// True when the selected level runs this kernel.
pub(crate) fn available() -> bool {
    cfg!(target_arch = "x86_64") && ptero_simd::level() >= ptero_simd::Level::Avx2
}

/// Computes columns `[p0 · 16, p1 · 16)` of `m` rows of dynamically quantized `x`
/// (row stride `k`) against grouped 4-bit weights `w`; false (nothing written) when `w`
/// or `epi` is not what this kernel handles.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` holds `m · k` values and `params` `2 · m`;
/// `out` points to `m · n` writable elements of which this call writes only its
/// panels' columns; `k`, `n`, `group`, `groups` are those `w` was packed with.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn columns(
    w: &VnniWeights,
    group: usize,
    groups: usize,
    x: &[i8],
    m: usize,
    k: usize,
    n: usize,
    panels: core::ops::Range<usize>,
    epi: Epi<'_>,
    out: *mut f32,
) -> bool {
    let Some((scales16, csum)) = &w.grouped else {
        return false;
    };
    let Epi::Qd8 {
        params,
        bias,
        clamp,
    } = epi
    else {
        return false;
    };
    if groups < 2 || !group.is_multiple_of(8) || k != group * groups {
        return false;
    }
    let t = Tile {
        w,
        scales16,
        csum,
        x,
        k,
        groups,
        vecs: group / 8,
        params,
        bias,
        clamp,
        n,
        out,
    };
    for p in panels {
        let mut r = 0;
        while r < m {
            // SAFETY: as the caller guarantees; rows `r..r + 2` (or `r`) are below `m`.
            unsafe {
                if r + 2 <= m {
                    t.run::<2>(p, r);
                } else {
                    t.run::<1>(p, r);
                }
            }
            r += 2;
        }
    }
    true
}

struct Tile<'a> {
    w: &'a VnniWeights,
    scales16: &'a [u16],
    csum: &'a [f32],
    x: &'a [i8],
    k: usize,
    groups: usize,
    /// 8-k vectors per group.
    vecs: usize,
    params: &'a [f32],
    bias: Option<&'a [f32]>,
    clamp: (f32, f32),
    n: usize,
    out: *mut f32,
}

impl Tile<'_> {
    /// Rows `r0..r0 + R` of panel `p` (both 8-column halves).
    ///
    /// # Safety
    /// As [`columns`], with `r0 + R <= m`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    // Register tiles read best indexed by row and half.
    #[allow(clippy::needless_range_loop)]
    unsafe fn run<const R: usize>(&self, p: usize, r0: usize) {
        use core::arch::x86_64::*;
        // SAFETY: weight reads stay inside panel `p` (`groups · vecs` vectors of 64
        // bytes); activation reads at `8 v .. 8 v + 8 <= k` of rows below `m`; scales and
        // offset sums hold `groups · 16` and 16 values per panel; stores are masked to the
        // columns below `n`.
        unsafe {
            let base = self.w.data.as_ptr().add(p * self.w.panel_bytes);
            let low = _mm256_set1_epi8(0x0f);
            let eight = _mm256_set1_epi8(8);
            let ones = _mm256_set1_epi16(1);
            let flip = 0x8080_8080u32 as i32;
            let rows: [*const i8; R] =
                core::array::from_fn(|i| self.x.as_ptr().add((r0 + i) * self.k));
            // XNNPACK's order: the packed weight sums times the unsigned zero point.
            let cs = [
                _mm256_loadu_ps(self.csum.as_ptr().add(p * PANEL)),
                _mm256_loadu_ps(self.csum.as_ptr().add(p * PANEL + 8)),
            ];
            let mut f: [[__m256; 2]; R] = core::array::from_fn(|i| {
                let z = _mm256_set1_ps(128.0 + self.params[2 * (r0 + i) + 1]);
                [_mm256_mul_ps(cs[0], z), _mm256_mul_ps(cs[1], z)]
            });
            for g in 0..self.groups {
                let mut a = [[_mm256_setzero_si256(); 2]; R];
                for v in g * self.vecs..(g + 1) * self.vecs {
                    let mut lo = [_mm256_setzero_si256(); 2];
                    let mut hi = [_mm256_setzero_si256(); 2];
                    for h in 0..2 {
                        let wv = _mm256_loadu_si256(base.add(v * 64 + h * 32) as *const _);
                        // Two's complement nibbles to signed bytes: (u ^ 8) - 8.
                        let l = _mm256_and_si256(wv, low);
                        let u = _mm256_and_si256(_mm256_srli_epi16(wv, 4), low);
                        lo[h] = _mm256_sub_epi8(_mm256_xor_si256(l, eight), eight);
                        hi[h] = _mm256_sub_epi8(_mm256_xor_si256(u, eight), eight);
                    }
                    for i in 0..R {
                        let x0 = core::ptr::read_unaligned(rows[i].add(8 * v) as *const i32) ^ flip;
                        let x1 =
                            core::ptr::read_unaligned(rows[i].add(8 * v + 4) as *const i32) ^ flip;
                        let (b0, b1) = (_mm256_set1_epi32(x0), _mm256_set1_epi32(x1));
                        for h in 0..2 {
                            let s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(b0, lo[h]), ones);
                            let s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(b1, hi[h]), ones);
                            a[i][h] = _mm256_add_epi32(a[i][h], _mm256_add_epi32(s0, s1));
                        }
                    }
                }
                let at = (p * self.groups + g) * PANEL;
                for h in 0..2 {
                    // bf16 -> f32: the 16 bits moved to the top half.
                    let s16 = _mm_loadu_si128(self.scales16.as_ptr().add(at + 8 * h) as *const _);
                    let s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(s16), 16));
                    for i in 0..R {
                        f[i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[i][h]), s, f[i][h]);
                    }
                }
            }
            let (lo_c, hi_c) = (_mm256_set1_ps(self.clamp.0), _mm256_set1_ps(self.clamp.1));
            for h in 0..2 {
                let c0 = p * PANEL + 8 * h;
                let cols = self.n.saturating_sub(c0).min(8);
                if cols == 0 {
                    continue;
                }
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lanes);
                let b = match self.bias {
                    Some(b) => _mm256_maskload_ps(b.as_ptr().add(c0), mask),
                    None => _mm256_setzero_ps(),
                };
                for i in 0..R {
                    let r = r0 + i;
                    let mut y = _mm256_mul_ps(f[i][h], _mm256_set1_ps(self.params[2 * r]));
                    if self.bias.is_some() {
                        y = _mm256_add_ps(y, b);
                    }
                    y = _mm256_min_ps(_mm256_max_ps(y, lo_c), hi_c);
                    _mm256_maskstore_ps(self.out.add(r * self.n + c0), mask, y);
                }
            }
        }
    }
}
