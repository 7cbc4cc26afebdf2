//! AVX2 kernels on the panel layout of [`crate::qvnni`], for CPUs without AVX-512 VNNI:
//! int8 activations against group-wise int4 weights with bf16 scales (XNNPACK's `qb4w`,
//! the decode GEMV of 8da4w language models), and against int8 weights with one scale
//! per column (`qc8w`, static and dynamic int8 convolutions and linears).
//!
//! Without `vpdpbusd`, a 4-byte dot product is `vpmaddubsw` (unsigned activations times
//! signed weights, pairs summed to i16: at most 2 · 255 · 8, so it never saturates) then
//! `vpmaddwd` by ones. The integer sums are the VNNI kernel's, and each group is folded
//! into f32 with one fused multiply-add in the same order, so results are bit-identical.
//!
//! For int8 weights `vpmaddubsw` would saturate (255 · 127 · 2 > i16::MAX), so both sides
//! are widened to i16 and multiplied by `vpmaddwd`, exact, as XNNPACK's AVX2 kernels do.
//! Activations stay signed (no offset to take back): the sums are `Σ x · w` directly.

#![allow(unsafe_code)]

use crate::qvnni::{Epi, VnniWeights, PANEL};

/// True when the selected level runs these kernels.
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

/// Computes columns `[p0 · 16, p1 · 16)` of `m` rows of `x` (row stride `k`) against
/// int8 weights `w` with one group, written through `epi` to `out_f` or `out_q`; false
/// (nothing written) when `w` is not such weights.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` holds `m · k` values (and `params` `2 · m`
/// for [`Epi::Qd8`]); the output points to `m · n` writable elements of which this call
/// writes only its panels' columns; `k`, `n` are those `w` was packed with.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn columns8(
    w: &VnniWeights,
    x: &[i8],
    m: usize,
    k: usize,
    n: usize,
    panels: core::ops::Range<usize>,
    epi: Epi<'_>,
    out_f: *mut f32,
    out_q: *mut i8,
) -> bool {
    if w.kq != k.div_ceil(4) * 4 {
        return false;
    }
    // Row `r` is one run of `k` values.
    // SAFETY: `r < m`, and `x` holds `m · k` values (the caller's guarantee).
    let at = |r: usize, _t: usize| unsafe { x.as_ptr().add(r * k) };
    // SAFETY: forwarded from the caller.
    unsafe { columns8_runs(w, m, n, 1, k, &at, panels, epi, out_f, out_q) }
}

/// [`columns8`] with row `r` given as `segs` runs of `seg` values, run `t` at `at(r, t)`
/// (a convolution's input pixels read in place, one run per filter tap); with more
/// than one run, `seg` is a multiple of 4.
///
/// # Safety
/// As [`columns8`], with every `at(r, t)` readable for `seg` values and `segs · seg` the
/// `k` the weights were packed with.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn columns8_runs<F: Fn(usize, usize) -> *const i8>(
    w: &VnniWeights,
    m: usize,
    n: usize,
    segs: usize,
    seg: usize,
    at: &F,
    panels: core::ops::Range<usize>,
    epi: Epi<'_>,
    out_f: *mut f32,
    out_q: *mut i8,
) -> bool {
    let k = segs * seg;
    if w.grouped.is_some()
        || w.kq != k.div_ceil(4) * 4
        || w.panel_bytes != w.kq * 16
        || (segs > 1 && !seg.is_multiple_of(4))
    {
        return false;
    }
    let t = Tile8 {
        w,
        segs,
        seg,
        at,
        n,
        epi,
        out_f,
        out_q,
    };
    for p in panels {
        let mut r = 0;
        while r < m {
            let rows = (m - r).min(3);
            // SAFETY: as the caller guarantees; rows `r..r + rows` are below `m`.
            unsafe {
                match rows {
                    3 => t.run::<3>(p, r),
                    2 => t.run::<2>(p, r),
                    _ => t.run::<1>(p, r),
                }
            }
            r += rows;
        }
    }
    true
}

struct Tile8<'a, F> {
    w: &'a VnniWeights,
    segs: usize,
    seg: usize,
    at: &'a F,
    n: usize,
    epi: Epi<'a>,
    out_f: *mut f32,
    out_q: *mut i8,
}

impl<F: Fn(usize, usize) -> *const i8> Tile8<'_, F> {
    /// Rows `r0..r0 + R` of panel `p`.
    ///
    /// Each 16 weight bytes (4 columns × 4 k) widen to one vector of i16; `vpmaddwd`
    /// against the row's 4 activations (repeated) leaves two partial sums per column,
    /// added pairwise at the end.
    ///
    /// # Safety
    /// As [`columns8_runs`], with `r0 + R <= m`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn run<const R: usize>(&self, p: usize, r0: usize) {
        use core::arch::x86_64::*;
        // SAFETY: weight reads stay inside panel `p` (`kq / 4` vectors of 64 bytes: run
        // `t` starts at quad `t · seg / 4`, and only a single run has a partial quad);
        // activation reads of whole quads stay inside their runs (`4 q + 4 <= seg`), the
        // partial quad is read byte by byte below `seg`; sums, scales and the bias hold a
        // whole panel or are read masked to the columns below `n`; stores are masked
        // likewise.
        unsafe {
            let base = self.w.data.as_ptr().add(p * self.w.panel_bytes);
            let (seg, full) = (self.seg, self.seg / 4);
            let quads = seg.div_ceil(4);
            let mut a = [[_mm256_setzero_si256(); 4]; R];
            for t in 0..self.segs {
                let rows: [*const i8; R] = core::array::from_fn(|i| (self.at)(r0 + i, t));
                // Run `t` covers quads `t · full ..` (whole quads when there are runs).
                let wq = base.add(t * full * 64);
                for q in 0..quads {
                    let xb: [__m256i; R] = core::array::from_fn(|i| {
                        let word = if q < full {
                            core::ptr::read_unaligned(rows[i].add(4 * q) as *const i32)
                        } else {
                            // Past k the weights are zero; the activations only must
                            // not be read.
                            let mut b = [0u8; 4];
                            for (u, bb) in b.iter_mut().enumerate() {
                                if 4 * q + u < seg {
                                    *bb = *rows[i].add(4 * q + u) as u8;
                                }
                            }
                            i32::from_le_bytes(b)
                        };
                        _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(word)))
                    });
                    for v in 0..4 {
                        let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                            wq.add(q * 64 + v * 16) as *const __m128i
                        ));
                        for i in 0..R {
                            a[i][v] = _mm256_add_epi32(a[i][v], _mm256_madd_epi16(xb[i], wv));
                        }
                    }
                }
            }
            let c0 = p * PANEL;
            let cols = self.n.saturating_sub(c0).min(PANEL);
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let masks = [
                _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lanes),
                _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lanes),
            ];
            let scales = [
                _mm256_loadu_ps(self.w.scales.as_ptr().add(c0)),
                _mm256_loadu_ps(self.w.scales.as_ptr().add(c0 + 8)),
            ];
            let sums = [
                _mm256_loadu_si256(self.w.sums.as_ptr().add(c0) as *const __m256i),
                _mm256_loadu_si256(self.w.sums.as_ptr().add(c0 + 8) as *const __m256i),
            ];
            for i in 0..R {
                let r = r0 + i;
                // Pairs of partial sums to one sum per column, in column order:
                // hadd leaves [0 1 4 5 | 2 3 6 7], the permute puts them in place.
                let t: [__m256i; 2] = core::array::from_fn(|h| {
                    let s = _mm256_hadd_epi32(a[i][2 * h], a[i][2 * h + 1]);
                    _mm256_permute4x64_epi64(s, 0b11_01_10_00)
                });
                match self.epi {
                    Epi::Qd8 {
                        params,
                        bias,
                        clamp,
                    } => {
                        let sx = _mm256_set1_ps(params[2 * r]);
                        let zx = _mm256_set1_epi32(params[2 * r + 1] as i32);
                        for h in 0..2 {
                            if 8 * h >= cols {
                                break;
                            }
                            // The VNNI kernel's and the scalar path's order.
                            let d = _mm256_sub_epi32(t[h], _mm256_mullo_epi32(sums[h], zx));
                            let mut y =
                                _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(d), sx), scales[h]);
                            if let Some(b) = bias {
                                y = _mm256_add_ps(
                                    y,
                                    _mm256_maskload_ps(b.as_ptr().add(c0 + 8 * h), masks[h]),
                                );
                            }
                            y = _mm256_min_ps(
                                _mm256_max_ps(y, _mm256_set1_ps(clamp.0)),
                                _mm256_set1_ps(clamp.1),
                            );
                            _mm256_maskstore_ps(
                                self.out_f.add(r * self.n + c0 + 8 * h),
                                masks[h],
                                y,
                            );
                        }
                    }
                    Epi::Qs8 { bias, zy, range } => {
                        let lo = _mm256_set1_ps((range.0 - zy) as f32);
                        let hi = _mm256_set1_ps((range.1 - zy) as f32);
                        let q: [__m256i; 2] = core::array::from_fn(|h| {
                            let b = _mm256_maskload_epi32(bias.as_ptr().add(c0 + 8 * h), masks[h]);
                            let f = _mm256_mul_ps(
                                _mm256_cvtepi32_ps(_mm256_add_epi32(t[h], b)),
                                scales[h],
                            );
                            let f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
                            // Round half to even (the default MXCSR mode), then the zero
                            // point; the clamp keeps the sum inside i8.
                            _mm256_add_epi32(_mm256_cvtps_epi32(f), _mm256_set1_epi32(zy))
                        });
                        // i32 -> i16 -> i8 (packs work per 128-bit lane: put them back).
                        let w16 =
                            _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0b11_01_10_00);
                        let b8 = _mm_packs_epi16(
                            _mm256_castsi256_si128(w16),
                            _mm256_extracti128_si256(w16, 1),
                        );
                        let dst = self.out_q.add(r * self.n + c0);
                        if cols == PANEL {
                            _mm_storeu_si128(dst as *mut __m128i, b8);
                        } else {
                            let mut tmp = [0i8; PANEL];
                            _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, b8);
                            core::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
                        }
                    }
                }
            }
        }
    }
}
