//! AVX-512 VNNI kernels for int8 activations against int8 or int4 weights.
//!
//! Weights are packed in panels of 16 output columns. Within a panel, each 64-byte
//! vector holds, for every column, 4 consecutive k (int8) or 8 (int4: byte `t` of a
//! column holds k = `4 q + t` in its low nibble and `4 q + 4 + t` in its high nibble, two's
//! complement). `vpdpbusd` multiplies unsigned by signed bytes, so activations are
//! offset by 128 (`x ^ 0x80`) and the offset is taken back with the weights' sums:
//! `Σ (x − zp) · w = Σ (x + 128) · w − (128 + zp) · Σ w`. 4-bit weights are unpacked as
//! `16 · w` (the nibble moved to the high half), and the sum shifted back by 4, exactly.

#![allow(unsafe_code)]

use alloc::vec::Vec;

/// Columns per panel: one zmm of i32.
pub(crate) const PANEL: usize = 16;

/// Weights in the VNNI panel layout, with per-panel scales and sums.
#[derive(Debug, Clone)]
pub(crate) struct VnniWeights {
    /// k padded to whole vectors (4 k for int8, 8 for int4).
    pub(crate) kq: usize,
    /// Bytes per panel.
    pub(crate) panel_bytes: usize,
    pub(crate) data: Vec<u8>,
    /// `[panel][group][16]`.
    pub(crate) scales: Vec<f32>,
    /// `[panel][group][16]`: Σ w over the group.
    pub(crate) sums: Vec<i32>,
    /// Grouped weights whose scales are bf16 values (the `qb4w` format): the scales as
    /// bf16 bits, `[panel][group][16]`, and per column the packed weight sum
    /// (`QPacked::ksum`), so that decode reads 2 bytes of metadata per group and column
    /// instead of 8.
    pub(crate) grouped: Option<(Vec<u16>, Vec<f32>)>,
}

impl VnniWeights {
    /// Packs `w(row, col)` (`n` rows of `k`; int4 values in `-8..=7`), `groups` groups
    /// of `group` k each (the last group may be short when there is one group).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        n: usize,
        k: usize,
        bits: u8,
        group: usize,
        groups: usize,
        w: &impl Fn(usize, usize) -> i8,
        scale: &impl Fn(usize, usize) -> f32,
        sum: &impl Fn(usize, usize) -> i32,
        ksum: &[f32],
    ) -> Option<VnniWeights> {
        let per_vec = if bits == 4 { 8 } else { 4 };
        // Each group must hold whole vectors (true for the 4-bit groups of 32 and more);
        // a single group is padded.
        if groups > 1 && !group.is_multiple_of(per_vec) {
            return None;
        }
        let kq = if groups > 1 {
            group * groups
        } else {
            k.div_ceil(per_vec) * per_vec
        };
        let panels = n.div_ceil(PANEL);
        let panel_bytes = kq / per_vec * 64;
        let mut data = Vec::new();
        data.try_reserve_exact(panels.checked_mul(panel_bytes)?)
            .ok()?;
        data.resize(panels * panel_bytes, 0u8);
        let mut scales = Vec::new();
        scales.try_reserve_exact(panels * groups * PANEL).ok()?;
        scales.resize(panels * groups * PANEL, 0.0f32);
        let mut sums = Vec::new();
        sums.try_reserve_exact(panels * groups * PANEL).ok()?;
        sums.resize(panels * groups * PANEL, 0i32);
        for p in 0..panels {
            let base = p * panel_bytes;
            for j in 0..PANEL {
                let r = p * PANEL + j;
                if r >= n {
                    continue;
                }
                for c in 0..k {
                    let v = w(r, c);
                    if bits == 8 {
                        let (q, t) = (c / 4, c % 4);
                        data[base + q * 64 + j * 4 + t] = v as u8;
                    } else {
                        let (o, rem) = (c / 8, c % 8);
                        let (t, high) = (rem % 4, rem >= 4);
                        let nib = (v as u8) & 0x0f;
                        let b = &mut data[base + o * 64 + j * 4 + t];
                        *b |= if high { nib << 4 } else { nib };
                    }
                }
                for g in 0..groups {
                    scales[(p * groups + g) * PANEL + j] = scale(r, g);
                    sums[(p * groups + g) * PANEL + j] = sum(r, g);
                }
            }
        }
        // With bf16 group scales, the products start from the packed weight sums
        // (`QPacked::ksum`), per column of each panel.
        let grouped = if ksum.len() == n {
            let bits16: Vec<u16> = scales.iter().map(|s| (s.to_bits() >> 16) as u16).collect();
            let mut csum = alloc::vec![0f32; panels * PANEL];
            csum[..n].copy_from_slice(ksum);
            Some((bits16, csum))
        } else {
            None
        };
        if grouped.is_some() {
            // Read through `grouped` only (grouped weights always take `tile4`).
            scales = Vec::new();
            sums = Vec::new();
        }
        Some(VnniWeights {
            grouped,
            kq,
            panel_bytes,
            data,
            scales,
            sums,
        })
    }
}

/// What to do with each output: f32 with per-row dynamic quantization, or int8.
#[derive(Clone, Copy)]
pub(crate) enum Epi<'a> {
    /// `(scale, zero point)` per row (pairs), bias per column, clamp.
    Qd8 {
        params: &'a [f32],
        bias: Option<&'a [f32]>,
        clamp: (f32, f32),
    },
    /// Static: per-column int32 bias with the input zero point folded in, output zero
    /// point and range; the weights' scales are the requantization multipliers.
    Qs8 {
        bias: &'a [i32],
        zy: i32,
        range: (i32, i32),
    },
}

/// Whether the running CPU (and the selected level) has AVX-512 VNNI.
pub(crate) fn available() -> bool {
    cfg!(target_arch = "x86_64") && ptero_simd::features().avx512vnni
}

/// Computes columns `[p0 · 16, p1 · 16)` of `m` rows of `x` (row stride `k`).
///
/// # Safety
/// The CPU must support AVX-512 F/BW and VNNI; `x` holds `m · k` values; `out` points to
/// `m · n` writable elements of which this call writes only its panels' columns, and
/// `k`, `n`, `group`, `groups`, `bits` are those `w` was packed with.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn columns(
    w: &VnniWeights,
    bits: u8,
    group: usize,
    groups: usize,
    x: &[i8],
    m: usize,
    k: usize,
    n: usize,
    panels: core::ops::Range<usize>,
    epi: Epi<'_>,
    out_f: *mut f32,
    out_q: *mut i8,
) {
    // SAFETY: the caller guarantees the CPU features and the sizes of `x` and the
    // outputs; weight reads stay inside `w`'s panels (`p < w.panels`, `v` below the
    // panel's vectors), and the writes inside this call's panels of the outputs.
    unsafe {
        use core::arch::x86_64::*;
        let per_vec = if bits == 4 { 8 } else { 4 };
        let vecs_per_group = if groups > 1 {
            group / per_vec
        } else {
            w.kq / per_vec
        };
        // Activation word of row `r` at quad `q` (4 k), offset to unsigned; zeros past k.
        let word = |r: usize, q: usize| -> i32 {
            let at = r * k + 4 * q;
            if 4 * q + 4 <= k {
                // `at + 4 <= r · k + k <= m · k = x.len()`.
                let v = core::ptr::read_unaligned(x.as_ptr().add(at) as *const i32);
                v ^ (0x8080_8080u32 as i32)
            } else {
                let mut b = [0x80u8; 4];
                for (t, bb) in b.iter_mut().enumerate() {
                    if 4 * q + t < k {
                        *bb = (x[at + t] as u8) ^ 0x80;
                    }
                }
                i32::from_le_bytes(b)
            }
        };
        let nib = _mm512_set1_epi8(0xf0u8 as i8);
        // int8 weights with one group: register tiles of up to 4 rows x 4 panels.
        if bits == 8 && groups == 1 {
            // Row `r` is one run of `k` values.
            let at = |r: usize, _t: usize| x.as_ptr().add(r * k);
            columns_runs(w, m, n, 1, k, &at, panels, epi, out_f, out_q);
            return;
        }
        // int4 weights with groups: tiles of up to 2 rows x 4 panels, the groups folded
        // into f32 as they end (independent chains hide the dot products' latency).
        if bits == 4 && groups > 1 && k.is_multiple_of(8) && w.grouped.is_some() {
            let mut p = panels.start;
            while p < panels.end {
                let np = (panels.end - p).min(4);
                let mut r0 = 0;
                while r0 < m {
                    let rows = (m - r0).min(2);
                    let mut facc = [[_mm512_setzero_ps(); 4]; 2];
                    match (rows, np) {
                        (2, 4) => {
                            tile4::<2, 4>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc)
                        }
                        (2, 3) => {
                            tile4::<2, 3>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc)
                        }
                        (2, 2) => {
                            tile4::<2, 2>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc)
                        }
                        (2, _) => {
                            tile4::<2, 1>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc)
                        }
                        (_, 4) => {
                            tile4::<1, 4>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc)
                        }
                        (_, 3) => {
                            tile4::<1, 3>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc)
                        }
                        (_, 2) => {
                            tile4::<1, 2>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc)
                        }
                        _ => tile4::<1, 1>(w, x, k, groups, vecs_per_group, r0, p, epi, &mut facc),
                    }
                    for (j, pp) in (p..p + np).enumerate() {
                        let mask = panel_mask(n, pp);
                        for (i, fa) in facc.iter().enumerate().take(rows) {
                            storef(pp, r0 + i, n, mask, fa[j], epi, out_f);
                        }
                    }
                    r0 += rows;
                }
                p += np;
            }
            return;
        }
        for p in panels {
            let mask = panel_mask(n, p);
            let wp = w.data.as_ptr().add(p * w.panel_bytes);
            let mut r0 = 0;
            while r0 < m {
                let rows = (m - r0).min(4);
                let mut facc = [_mm512_setzero_ps(); 4];
                let mut iacc_total = [_mm512_setzero_si512(); 4];
                for g in 0..groups {
                    let mut acc = [_mm512_setzero_si512(); 4];
                    let v0 = g * vecs_per_group;
                    for v in v0..v0 + vecs_per_group {
                        let wv = _mm512_loadu_si512(wp.add(v * 64) as *const _);
                        if bits == 8 {
                            for (i, a) in acc.iter_mut().enumerate().take(rows) {
                                let xw = _mm512_set1_epi32(word(r0 + i, v));
                                *a = _mm512_dpbusd_epi32(*a, xw, wv);
                            }
                        } else {
                            let lo = _mm512_and_si512(_mm512_slli_epi16(wv, 4), nib);
                            let hi = _mm512_and_si512(wv, nib);
                            for (i, a) in acc.iter_mut().enumerate().take(rows) {
                                let x0 = _mm512_set1_epi32(word(r0 + i, 2 * v));
                                let x1 = _mm512_set1_epi32(word(r0 + i, 2 * v + 1));
                                *a = _mm512_dpbusd_epi32(*a, x0, lo);
                                *a = _mm512_dpbusd_epi32(*a, x1, hi);
                            }
                        }
                    }
                    let sums = _mm512_loadu_si512(
                        w.sums.as_ptr().add((p * groups + g) * PANEL) as *const _
                    );
                    let scales = _mm512_loadu_ps(w.scales.as_ptr().add((p * groups + g) * PANEL));
                    for i in 0..rows {
                        let zx = match epi {
                            Epi::Qd8 { params, .. } => params[2 * (r0 + i) + 1] as i32,
                            // Folded into the bias already.
                            Epi::Qs8 { .. } => 0,
                        };
                        let mut a = acc[i];
                        if bits == 4 {
                            a = _mm512_srai_epi32(a, 4);
                        }
                        let corr = _mm512_mullo_epi32(sums, _mm512_set1_epi32(128 + zx));
                        let t = _mm512_sub_epi32(a, corr);
                        if groups == 1 {
                            iacc_total[i] = t;
                        } else {
                            facc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), scales, facc[i]);
                        }
                    }
                }
                let c0 = p * PANEL;
                for i in 0..rows {
                    let r = r0 + i;
                    match epi {
                        Epi::Qd8 {
                            params,
                            bias,
                            clamp,
                        } => {
                            let sx = _mm512_set1_ps(params[2 * r]);
                            let mut y = if groups == 1 {
                                let scales = _mm512_loadu_ps(w.scales.as_ptr().add(p * PANEL));
                                _mm512_mul_ps(
                                    _mm512_mul_ps(_mm512_cvtepi32_ps(iacc_total[i]), sx),
                                    scales,
                                )
                            } else {
                                _mm512_mul_ps(facc[i], sx)
                            };
                            if let Some(b) = bias {
                                y = _mm512_add_ps(
                                    y,
                                    _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)),
                                );
                            }
                            y = _mm512_min_ps(
                                _mm512_max_ps(y, _mm512_set1_ps(clamp.0)),
                                _mm512_set1_ps(clamp.1),
                            );
                            _mm512_mask_storeu_ps(out_f.add(r * n + c0), mask, y);
                        }
                        Epi::Qs8 {
                            bias, zy, range, ..
                        } => {
                            let b = _mm512_maskz_loadu_epi32(mask, bias.as_ptr().add(c0));
                            let scales = _mm512_loadu_ps(w.scales.as_ptr().add(p * PANEL));
                            let f = _mm512_mul_ps(
                                _mm512_cvtepi32_ps(_mm512_add_epi32(iacc_total[i], b)),
                                scales,
                            );
                            let f = _mm512_min_ps(
                                _mm512_max_ps(f, _mm512_set1_ps((range.0 - zy) as f32)),
                                _mm512_set1_ps((range.1 - zy) as f32),
                            );
                            // Round half to even (the default MXCSR mode), then the zero point.
                            let q = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(zy));
                            _mm512_mask_cvtsepi32_storeu_epi8(
                                out_q.add(r * n + c0) as *mut _,
                                mask,
                                q,
                            );
                        }
                    }
                }
                r0 += rows;
            }
        }
    }
}

/// Rows `0..m` of int8 activations against panels `panels` of int8 weights (one group),
/// through the epilogue. Row `r` is `segs` runs of `seg` values, run `t` at `at(r, t)`
/// (a convolution's input pixels read in place, one run per filter tap); with more than
/// one run, `seg` is a multiple of 4 (a quad never straddles two runs).
///
/// # Safety
/// As [`columns`], with every `at(r, t)` readable for `seg` values; `segs · seg` is the
/// `k` the weights were packed with.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn columns_runs(
    w: &VnniWeights,
    m: usize,
    n: usize,
    segs: usize,
    seg: usize,
    at: &impl Fn(usize, usize) -> *const i8,
    panels: core::ops::Range<usize>,
    epi: Epi<'_>,
    out_f: *mut f32,
    out_q: *mut i8,
) {
    // SAFETY: forwarded from the caller: tiles cover rows below `m` and panels inside
    // `panels`; `store8` writes only those rows and panels.
    unsafe {
        use core::arch::x86_64::*;
        let mut p = panels.start;
        while p < panels.end {
            let np = (panels.end - p).min(4);
            let mut r0 = 0;
            while r0 < m {
                let rows = (m - r0).min(4);
                let mut acc = [[_mm512_setzero_si512(); 4]; 4];
                let src = |i: usize, t: usize| at(r0 + i, t);
                match (rows, np) {
                    (4, 4) => tile8::<4, 4>(w, segs, seg, &src, p, &mut acc),
                    (4, 3) => tile8::<4, 3>(w, segs, seg, &src, p, &mut acc),
                    (4, 2) => tile8::<4, 2>(w, segs, seg, &src, p, &mut acc),
                    (4, _) => tile8::<4, 1>(w, segs, seg, &src, p, &mut acc),
                    (3, 4) => tile8::<3, 4>(w, segs, seg, &src, p, &mut acc),
                    (3, 3) => tile8::<3, 3>(w, segs, seg, &src, p, &mut acc),
                    (3, 2) => tile8::<3, 2>(w, segs, seg, &src, p, &mut acc),
                    (3, _) => tile8::<3, 1>(w, segs, seg, &src, p, &mut acc),
                    (2, 4) => tile8::<2, 4>(w, segs, seg, &src, p, &mut acc),
                    (2, 3) => tile8::<2, 3>(w, segs, seg, &src, p, &mut acc),
                    (2, 2) => tile8::<2, 2>(w, segs, seg, &src, p, &mut acc),
                    (2, _) => tile8::<2, 1>(w, segs, seg, &src, p, &mut acc),
                    (_, 4) => tile8::<1, 4>(w, segs, seg, &src, p, &mut acc),
                    (_, 3) => tile8::<1, 3>(w, segs, seg, &src, p, &mut acc),
                    (_, 2) => tile8::<1, 2>(w, segs, seg, &src, p, &mut acc),
                    _ => tile8::<1, 1>(w, segs, seg, &src, p, &mut acc),
                }
                for (j, pp) in (p..p + np).enumerate() {
                    let mask = panel_mask(n, pp);
                    let sums = _mm512_loadu_si512(w.sums.as_ptr().add(pp * PANEL) as *const _);
                    if let Epi::Qs8 { bias, zy, range } = epi {
                        // One bias per panel for every row: the activations' offset
                        // (128 · Σ w) taken out of it once.
                        let c0 = pp * PANEL;
                        let b = _mm512_sub_epi32(
                            _mm512_maskz_loadu_epi32(mask, bias.as_ptr().add(c0)),
                            _mm512_slli_epi32(sums, 7),
                        );
                        let scales = _mm512_loadu_ps(w.scales.as_ptr().add(c0));
                        let lo = _mm512_set1_ps((range.0 - zy) as f32);
                        let hi = _mm512_set1_ps((range.1 - zy) as f32);
                        let z = _mm512_set1_epi32(zy);
                        for (i, a) in acc.iter().enumerate().take(rows) {
                            let f = _mm512_mul_ps(
                                _mm512_cvtepi32_ps(_mm512_add_epi32(a[j], b)),
                                scales,
                            );
                            let f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
                            // Round half to even (the default MXCSR mode), then the zero point.
                            let q = _mm512_add_epi32(_mm512_cvtps_epi32(f), z);
                            let dst = out_q.add((r0 + i) * n + c0);
                            _mm512_mask_cvtsepi32_storeu_epi8(dst as *mut _, mask, q);
                        }
                        continue;
                    }
                    for (i, a) in acc.iter().enumerate().take(rows) {
                        let zx = match epi {
                            Epi::Qd8 { params, .. } => params[2 * (r0 + i) + 1] as i32,
                            Epi::Qs8 { .. } => 0,
                        };
                        let corr = _mm512_mullo_epi32(sums, _mm512_set1_epi32(128 + zx));
                        let t = _mm512_sub_epi32(a[j], corr);
                        store8(w, pp, r0 + i, n, mask, t, epi, out_f, out_q);
                    }
                }
                r0 += rows;
            }
            p += np;
        }
    }
}

/// One register tile: `R` rows of activations against `P` panels of int8 weights, the
/// raw sums of `(x + 128) · w` into `acc[row][panel]`; row `i`'s run `t` starts at
/// `src(i, t)`.
///
/// # Safety
/// As [`columns_runs`]; `p + P` panels and `R` rows exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile8<const R: usize, const P: usize>(
    w: &VnniWeights,
    segs: usize,
    seg: usize,
    src: &impl Fn(usize, usize) -> *const i8,
    p: usize,
    acc: &mut [[core::arch::x86_64::__m512i; 4]; 4],
) {
    use core::arch::x86_64::*;
    // SAFETY: weight reads stay within panels `p..p + P` (each `w.kq / 4` vectors of 64
    // bytes: run `t` covers quads `t · seg / 4 ..`, the last partial quad only with one
    // run); activation reads of whole quads stay within each run (`4 q + 4 <= seg`).
    unsafe {
        let full = seg / 4;
        let mut a = [[_mm512_setzero_si512(); P]; R];
        let base: [*const u8; P] =
            core::array::from_fn(|j| w.data.as_ptr().add((p + j) * w.panel_bytes));
        for t in 0..segs {
            let rows: [*const i8; R] = core::array::from_fn(|i| src(i, t));
            let wq: [*const u8; P] = core::array::from_fn(|j| base[j].add(t * full * 64));
            for q in 0..full {
                let wv: [__m512i; P] =
                    core::array::from_fn(|j| _mm512_loadu_si512(wq[j].add(q * 64) as *const _));
                for i in 0..R {
                    let word = core::ptr::read_unaligned(rows[i].add(4 * q) as *const i32);
                    let xb = _mm512_set1_epi32(word ^ (0x8080_8080u32 as i32));
                    for j in 0..P {
                        a[i][j] = _mm512_dpbusd_epi32(a[i][j], xb, wv[j]);
                    }
                }
            }
            if !seg.is_multiple_of(4) {
                // The last, partial quad (one run only): zeros (offset to 128) past it.
                let wv: [__m512i; P] =
                    core::array::from_fn(|j| _mm512_loadu_si512(wq[j].add(full * 64) as *const _));
                for i in 0..R {
                    let mut b = [0x80u8; 4];
                    for (u, bb) in b.iter_mut().enumerate() {
                        if 4 * full + u < seg {
                            *bb = (*rows[i].add(4 * full + u) as u8) ^ 0x80;
                        }
                    }
                    let xb = _mm512_set1_epi32(i32::from_le_bytes(b));
                    for j in 0..P {
                        a[i][j] = _mm512_dpbusd_epi32(a[i][j], xb, wv[j]);
                    }
                }
            }
        }
        for i in 0..R {
            for j in 0..P {
                acc[i][j] = a[i][j];
            }
        }
    }
}

/// The epilogue of one row of one panel: `t` holds `Σ (x − zp) · w` per column.
///
/// # Safety
/// As [`columns`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn store8(
    w: &VnniWeights,
    p: usize,
    r: usize,
    n: usize,
    mask: core::arch::x86_64::__mmask16,
    t: core::arch::x86_64::__m512i,
    epi: Epi<'_>,
    out_f: *mut f32,
    out_q: *mut i8,
) {
    use core::arch::x86_64::*;
    // SAFETY: column `p · 16 + j` for the set bits `j` of `mask` is below `n`, row `r`
    // below the output's rows; the scales hold a full panel.
    unsafe {
        let c0 = p * PANEL;
        let scales = _mm512_loadu_ps(w.scales.as_ptr().add(p * PANEL));
        match epi {
            Epi::Qd8 {
                params,
                bias,
                clamp,
            } => {
                let sx = _mm512_set1_ps(params[2 * r]);
                let mut y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(t), sx), scales);
                if let Some(b) = bias {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)));
                }
                y = _mm512_min_ps(
                    _mm512_max_ps(y, _mm512_set1_ps(clamp.0)),
                    _mm512_set1_ps(clamp.1),
                );
                _mm512_mask_storeu_ps(out_f.add(r * n + c0), mask, y);
            }
            Epi::Qs8 { bias, zy, range } => {
                let b = _mm512_maskz_loadu_epi32(mask, bias.as_ptr().add(c0));
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(t, b)), scales);
                let f = _mm512_min_ps(
                    _mm512_max_ps(f, _mm512_set1_ps((range.0 - zy) as f32)),
                    _mm512_set1_ps((range.1 - zy) as f32),
                );
                let q = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(zy));
                _mm512_mask_cvtsepi32_storeu_epi8(out_q.add(r * n + c0) as *mut _, mask, q);
            }
        }
    }
}

/// One int4 tile: `R` rows against `P` panels, every group's `Σ (x − zp) · w` scaled by
/// the group's scales into `facc[row][panel]`. Needs `k` a multiple of 8 (whole
/// activation quads) and groups of whole vectors.
///
/// # Safety
/// As [`columns`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile4<const R: usize, const P: usize>(
    w: &VnniWeights,
    x: &[i8],
    k: usize,
    groups: usize,
    vecs_per_group: usize,
    r0: usize,
    p: usize,
    epi: Epi<'_>,
    facc: &mut [[core::arch::x86_64::__m512; 4]; 2],
) {
    use core::arch::x86_64::*;
    // SAFETY: weight reads stay within panels `p..p + P` (groups · vecs_per_group vectors
    // each); activation quads `2 v` and `2 v + 1` lie inside row `r0 + i` because
    // `8 · vecs = k` and `k % 8 == 0`; sums and scales hold `groups · 16` per panel.
    unsafe {
        let nib = _mm512_set1_epi8(0xf0u8 as i8);
        let base: [*const u8; P] =
            core::array::from_fn(|j| w.data.as_ptr().add((p + j) * w.panel_bytes));
        let rows: [*const i8; R] = core::array::from_fn(|i| x.as_ptr().add((r0 + i) * k));
        let zp: [__m512i; R] = core::array::from_fn(|i| {
            let z = match epi {
                Epi::Qd8 { params, .. } => params[2 * (r0 + i) + 1] as i32,
                Epi::Qs8 { .. } => 0,
            };
            _mm512_set1_epi32(128 + z)
        });
        let flip = 0x8080_8080u32 as i32;
        let Some((scales16, csum)) = &w.grouped else {
            return;
        };
        // XNNPACK's order: the packed weight sums times the unsigned zero point first.
        let cs: [__m512; P] =
            core::array::from_fn(|j| _mm512_loadu_ps(csum.as_ptr().add((p + j) * PANEL)));
        let mut f: [[__m512; P]; R] = core::array::from_fn(|i| {
            let z = _mm512_cvtepi32_ps(zp[i]);
            core::array::from_fn(|j| _mm512_mul_ps(cs[j], z))
        });
        for g in 0..groups {
            let mut a = [[_mm512_setzero_si512(); P]; R];
            for v in g * vecs_per_group..(g + 1) * vecs_per_group {
                let mut lo = [_mm512_setzero_si512(); P];
                let mut hi = [_mm512_setzero_si512(); P];
                for j in 0..P {
                    let wv = _mm512_loadu_si512(base[j].add(v * 64) as *const _);
                    lo[j] = _mm512_and_si512(_mm512_slli_epi16(wv, 4), nib);
                    hi[j] = _mm512_and_si512(wv, nib);
                }
                for i in 0..R {
                    let x0 = core::ptr::read_unaligned(rows[i].add(8 * v) as *const i32) ^ flip;
                    let x1 = core::ptr::read_unaligned(rows[i].add(8 * v + 4) as *const i32) ^ flip;
                    let (b0, b1) = (_mm512_set1_epi32(x0), _mm512_set1_epi32(x1));
                    for j in 0..P {
                        a[i][j] = _mm512_dpbusd_epi32(a[i][j], b0, lo[j]);
                        a[i][j] = _mm512_dpbusd_epi32(a[i][j], b1, hi[j]);
                    }
                }
            }
            for j in 0..P {
                let at = ((p + j) * groups + g) * PANEL;
                // bf16 -> f32: the 16 bits moved to the top half.
                let s16 = _mm256_loadu_si256(scales16.as_ptr().add(at) as *const _);
                let scales = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(s16), 16));
                for i in 0..R {
                    let t = _mm512_cvtepi32_ps(_mm512_srai_epi32(a[i][j], 4));
                    f[i][j] = _mm512_fmadd_ps(t, scales, f[i][j]);
                }
            }
        }
        for (dst, src) in facc.iter_mut().zip(f) {
            dst[..P].copy_from_slice(&src);
        }
    }
}

/// The f32 epilogue of one row of one panel from grouped sums already scaled by the
/// weights' scales: `· s_x + bias`, clamped.
///
/// # Safety
/// As [`columns`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn storef(
    p: usize,
    r: usize,
    n: usize,
    mask: core::arch::x86_64::__mmask16,
    f: core::arch::x86_64::__m512,
    epi: Epi<'_>,
    out_f: *mut f32,
) {
    use core::arch::x86_64::*;
    // SAFETY: the columns set in `mask` are below `n`, row `r` below the output's rows.
    unsafe {
        if let Epi::Qd8 {
            params,
            bias,
            clamp,
        } = epi
        {
            let c0 = p * PANEL;
            let mut y = _mm512_mul_ps(f, _mm512_set1_ps(params[2 * r]));
            if let Some(b) = bias {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)));
            }
            y = _mm512_min_ps(
                _mm512_max_ps(y, _mm512_set1_ps(clamp.0)),
                _mm512_set1_ps(clamp.1),
            );
            _mm512_mask_storeu_ps(out_f.add(r * n + c0), mask, y);
        }
    }
}

/// The columns of panel `p` that exist among `n`, as a lane mask.
#[inline(always)]
fn panel_mask(n: usize, p: usize) -> u16 {
    let cols = n.saturating_sub(p * PANEL).min(PANEL);
    if cols == PANEL {
        0xffff
    } else {
        (1u16 << cols) - 1
    }
}
