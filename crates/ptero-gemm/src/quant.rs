//! Integer products for quantized programs: int8 activations against int8 or int4
//! weights, accumulated exactly in i32 and scaled once per output or per weight group.
//!
//! Two epilogues share one packed weight ([`QPacked`]):
//! - dynamic int8 activations (a scale and zero point per row, [`quantize_rows`]) with
//!   f32 results ([`qd8_gemm`]), the XNNPACK `qd8-f32-qc8w/qc4w/qb4w` kernels' meaning;
//! - static int8 activations requantized to int8 ([`qs8_gemm`]), the `qs8-qc8w` meaning:
//!   `y = RNE(clamp(acc · scale[n], lo − zp, hi − zp)) + zp`.
//!
//! ```
//! use ptero_gemm::{qd8_gemm, quantize_rows, QPacked};
//! use ptero_simd::Serial;
//! // One output of three inputs: weights 1, -2, 3 with scale 0.5 (int8, one group).
//! let w = QPacked::new(1, 3, 8, 3, |_, k| [1i8, -2, 3][k], |_, _| 0.5).unwrap();
//! let x = [1.0f32, 2.0, 3.0];
//! let (mut q, mut p) = ([0i8; 3], [0f32; 2]);
//! quantize_rows(&x, 3, &mut q, &mut p);
//! let mut y = [0f32; 1];
//! qd8_gemm(&Serial, &q, &p, 1, &w, None, (f32::NEG_INFINITY, f32::INFINITY), &mut y);
//! assert!((y[0] - 0.5 * (1.0 - 4.0 + 9.0)).abs() < 0.05);
//! ```

use alloc::vec::Vec;

use ptero_simd::{dispatch, split_count, split_range, Parallel, Simd, SimdOp};

/// Weight values per block of the 4-bit layout: byte `j` of a block holds element `j` in
/// its low nibble and element `16 + j` in its high nibble, so both halves line up with
/// contiguous activations.
pub const Q4_BLOCK: usize = 32;

/// Quantized weights `[n, k]` (one row per output), packed once.
#[derive(Debug, Clone)]
pub struct QPacked {
    n: usize,
    k: usize,
    /// `k` rounded up to a whole 4-bit block (= `k` for int8).
    kp: usize,
    pub(crate) bits: u8,
    /// Elements per scale along k (`kp` when there is one scale per row).
    group: usize,
    pub(crate) groups: usize,
    data: Vec<u8>,
    /// Per row and group: the real scale.
    scales: Vec<f32>,
    /// Per row and group: the sum of the integer weights, for zero-point corrections.
    sums: Vec<i32>,
    /// Group-wise weights with bf16 scales (XNNPACK's `qb4w`), per row: `−Σ t · s` over
    /// the row's 16-wide chunks of k in order (`t` the chunk's integer sum, `s` its
    /// group's scale), rounded as XNNPACK's packing rounds it; empty otherwise. The
    /// products start from it, so that results match XNNPACK's bit for bit.
    ksum: Vec<f32>,
    /// The VNNI panel layout, when the CPU has it (`data` is then empty).
    pub(crate) vnni: Option<crate::qvnni::VnniWeights>,
}

/// Why weights cannot be packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QPackError {
    /// `bits` is neither 4 nor 8.
    Bits(u8),
    /// The group does not divide k, or is not a multiple of the 4-bit block.
    Group { k: usize, group: usize },
    /// Sizes overflow or memory ran out.
    Size,
}

impl core::fmt::Display for QPackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QPackError::Bits(b) => write!(f, "{b}-bit weights (4 or 8 are supported)"),
            QPackError::Group { k, group } => {
                write!(f, "group of {group} over {k} inputs")
            }
            QPackError::Size => f.write_str("weights too large"),
        }
    }
}

fn zeroed<T: Clone + Default>(n: usize) -> Result<Vec<T>, QPackError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| QPackError::Size)?;
    v.resize(n, T::default());
    Ok(v)
}

impl QPacked {
    /// Packs `w(row, col)` (values in `-8..=7` for 4 bits) with `scale(row, group)`.
    /// `group == k` gives one scale per row; otherwise it must divide k (and be a
    /// multiple of [`Q4_BLOCK`] for 4 bits).
    pub fn new(
        n: usize,
        k: usize,
        bits: u8,
        group: usize,
        w: impl Fn(usize, usize) -> i8,
        scale: impl Fn(usize, usize) -> f32,
    ) -> Result<QPacked, QPackError> {
        if bits != 4 && bits != 8 {
            return Err(QPackError::Bits(bits));
        }
        let per_row = group >= k;
        let kp = if bits == 4 {
            k.div_ceil(Q4_BLOCK)
                .checked_mul(Q4_BLOCK)
                .ok_or(QPackError::Size)?
        } else {
            k
        };
        if !per_row
            && (group == 0
                || !k.is_multiple_of(group)
                || (bits == 4 && !group.is_multiple_of(Q4_BLOCK)))
        {
            return Err(QPackError::Group { k, group });
        }
        let (group, groups) = if per_row { (kp, 1) } else { (group, k / group) };
        let value = |r: usize, c: usize| {
            let v = w(r, c);
            if bits == 4 {
                v.clamp(-8, 7)
            } else {
                v
            }
        };
        let ng = n.checked_mul(groups).ok_or(QPackError::Size)?;
        let mut scales: Vec<f32> = zeroed(ng)?;
        let mut sums: Vec<i32> = zeroed(ng)?;
        for r in 0..n {
            for g in 0..groups {
                let cols = g * group..((g + 1) * group).min(k);
                sums[r * groups + g] =
                    cols.fold(0i32, |a, c| a.wrapping_add(i32::from(value(r, c))));
                scales[r * groups + g] = scale(r, g);
            }
        }
        let ksum = if groups > 1 && scales.iter().all(|s| s.to_bits() & 0xffff == 0) {
            let mut ksum: Vec<f32> = zeroed(n)?;
            for (r, ks) in ksum.iter_mut().enumerate() {
                for c0 in (0..k).step_by(16) {
                    let t = (c0..c0 + 16).fold(0i32, |a, c| a + i32::from(value(r, c)));
                    *ks -= t as f32 * scales[r * groups + c0 / group];
                }
            }
            ksum
        } else {
            Vec::new()
        };
        let mut p = QPacked {
            n,
            k,
            kp,
            bits,
            group,
            groups,
            data: Vec::new(),
            scales,
            sums,
            ksum,
            vnni: None,
        };
        // Straight into the panel layout when a kernel for it runs (VNNI for every
        // kind, AVX2 for grouped 4-bit and per-column 8-bit weights): the row layout is
        // then never built.
        if crate::qvnni::available()
            || (crate::qavx2::available()
                && ((bits == 4 && !p.ksum.is_empty()) || (bits == 8 && groups == 1)))
        {
            p.vnni = crate::qvnni::VnniWeights::new(
                n,
                k,
                bits,
                group,
                groups,
                &value,
                &|r, g| p.scales[r * groups + g],
                &|r, g| p.sums[r * groups + g],
                &p.ksum,
            );
            if p.vnni.is_some() {
                return Ok(p);
            }
        }
        let row_bytes = if bits == 4 { kp / 2 } else { kp };
        let mut data: Vec<u8> = zeroed(n.checked_mul(row_bytes).ok_or(QPackError::Size)?)?;
        for r in 0..n {
            let row = &mut data[r * row_bytes..(r + 1) * row_bytes];
            for c in 0..k {
                let v = value(r, c);
                if bits == 8 {
                    row[c] = v as u8;
                } else {
                    let u = (v + 8) as u8;
                    let (blk, j) = (c / Q4_BLOCK, c % Q4_BLOCK);
                    let byte = &mut row[blk * 16 + j % 16];
                    *byte |= if j < 16 { u } else { u << 4 };
                }
            }
            if bits == 4 {
                // Padding holds the value 0, stored as 8.
                for c in k..kp {
                    let (blk, j) = (c / Q4_BLOCK, c % Q4_BLOCK);
                    row[blk * 16 + j % 16] |= if j < 16 { 8 } else { 8 << 4 };
                }
            }
        }
        p.data = data;
        Ok(p)
    }

    /// Weight `(r, c)` from whichever layout holds it.
    fn value(&self, r: usize, c: usize) -> i8 {
        if let Some(v) = &self.vnni {
            let (p, j) = (r / crate::qvnni::PANEL, r % crate::qvnni::PANEL);
            let base = p * v.panel_bytes;
            return if self.bits == 8 {
                v.data[base + (c / 4) * 64 + j * 4 + c % 4] as i8
            } else {
                let rem = c % 8;
                let b = v.data[base + (c / 8) * 64 + j * 4 + rem % 4];
                let nib = if rem >= 4 { b >> 4 } else { b & 15 };
                ((nib << 4) as i8) >> 4
            };
        }
        let row = self.row(r);
        if self.bits == 8 {
            row[c] as i8
        } else {
            let (blk, j) = (c / Q4_BLOCK, c % Q4_BLOCK);
            let b = row[blk * 16 + j % 16];
            (if j < 16 { b & 15 } else { b >> 4 }) as i8 - 8
        }
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
            + 8 * self.scales.len()
            + self
                .vnni
                .as_ref()
                .map_or(0, |v| v.data.len() + 8 * v.scales.len())
    }

    /// The weights' integer sums of row `r`, one per group.
    pub fn sums(&self, r: usize) -> &[i32] {
        &self.sums[r * self.groups..(r + 1) * self.groups]
    }

    fn row(&self, r: usize) -> &[u8] {
        let rb = if self.bits == 4 { self.kp / 2 } else { self.kp };
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Quantizes each row of `x` (rows of `k`) to int8 with its own scale and zero point, as
/// XNNPACK's dynamic quantization does: the range is widened to hold 0, the zero point
/// is nudged to an integer, values round half to even. `params` receives `(scale, zero
/// point)` per row as two f32.
pub fn quantize_rows(x: &[f32], k: usize, q: &mut [i8], params: &mut [f32]) {
    if k == 0 {
        return;
    }
    for ((xr, qr), p) in x
        .chunks_exact(k)
        .zip(q.chunks_exact_mut(k))
        .zip(params.chunks_exact_mut(2))
    {
        let (scale, zp) = dispatch(QuantizeRow { x: xr, q: qr });
        p[0] = scale;
        p[1] = zp as f32;
    }
}

/// `d · s + acc` rounded once, for a bf16 scale `s`: the product is exact when `d` has
/// at most 16 significant bits (groups of up to 32 int4 weights), so only larger sums
/// need the software fused multiply-add.
#[inline(always)]
fn fma_bf16(d: i32, s: f32, acc: f32) -> f32 {
    if d.unsigned_abs() < 1 << 16 {
        d as f32 * s + acc
    } else {
        libm::fmaf(d as f32, s, acc)
    }
}

/// `x + MAGIC - MAGIC` rounds half to even for |x| < 2^22 (the bias `1.5 · 2^23`).
const MAGIC: f32 = 12_582_912.0;

struct QuantizeRow<'a> {
    x: &'a [f32],
    q: &'a mut [i8],
}

impl SimdOp for QuantizeRow<'_> {
    type Output = (f32, i32);
    #[inline(always)]
    fn eval<S: Simd>(self, _s: S) -> (f32, i32) {
        let (mut lo, mut hi) = (0.0f32, 0.0f32);
        for &v in self.x {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let m = if lo == hi { 1.0 } else { 255.0 / (hi - lo) };
        let zmin = -128.0 - lo * m;
        let zmax = 127.0 - hi * m;
        let z = if (-128.0 + lo * m) + (127.0 + hi * m) > 0.0 {
            zmin
        } else {
            zmax
        };
        let z = z.clamp(-128.0, 127.0);
        let zp = ((z + MAGIC) - MAGIC) as i32;
        let (qlo, qhi) = (-128.0 - zp as f32, 127.0 - zp as f32);
        for (o, &v) in self.q.iter_mut().zip(self.x) {
            let f = clamp_f(v * m, qlo, qhi);
            *o = (round_small(f) + zp) as i8;
        }
        (1.0 / m, zp)
    }
}

/// Quantizes `x` to int8 with a fixed scale and zero point (XNNPACK's `f32 -> qs8`
/// convert: multiply by `1 / scale`, saturate, round half to even).
pub fn quantize(x: &[f32], scale: f32, zp: i32, q: &mut [i8]) {
    let inv = 1.0 / scale;
    let (qlo, qhi) = (-128.0 - zp as f32, 127.0 - zp as f32);
    dispatch(Quantize {
        x,
        q,
        inv,
        qlo,
        qhi,
        zp,
    })
}

struct Quantize<'a> {
    x: &'a [f32],
    q: &'a mut [i8],
    inv: f32,
    qlo: f32,
    qhi: f32,
    zp: i32,
}

impl SimdOp for Quantize<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, _s: S) {
        for (o, &v) in self.q.iter_mut().zip(self.x) {
            let f = clamp_f(v * self.inv, self.qlo, self.qhi);
            *o = (round_small(f) + self.zp) as i8;
        }
    }
}

/// Raw output shared by tasks that write disjoint columns.
pub(crate) struct Out<T>(pub(crate) *mut T);
// SAFETY: tasks write disjoint elements (distinct columns) of a buffer borrowed mutably
// for the whole call; the pointer is never used to read.
unsafe impl<T> Send for Out<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// Splits the columns over the threads and calls `f(cols)` per part; `f` must only
/// write its own columns.
fn for_col_parts(
    par: &dyn Parallel,
    n: usize,
    work: usize,
    f: &(dyn Fn(core::ops::Range<usize>) + Sync),
) {
    let threads = par.threads();
    if threads <= 1 || work < 1 << 15 || n < 16 {
        f(0..n);
        return;
    }
    let parts = split_count(n, 2 * threads, crate::qvnni::PANEL);
    par.run(parts, &|i| f(split_range(n, parts, crate::qvnni::PANEL, i)));
}

/// The integer dot product of an activation row (`k` values) with packed weight row `r`,
/// per group, passed to `f(group, dot)`.
#[inline(always)]
fn dots(w: &QPacked, r: usize, x: &[i8], mut f: impl FnMut(usize, i32)) {
    let k = w.k;
    if w.data.is_empty() {
        // Packed for VNNI, running below that level (a forced level in tests).
        for g in 0..w.groups {
            let (a, b) = (g * w.group, ((g + 1) * w.group).min(k));
            let d = (a..b).fold(0i32, |acc, c| {
                acc.wrapping_add(i32::from(x[c]) * i32::from(w.value(r, c)))
            });
            f(g, d);
        }
        return;
    }
    let row = w.row(r);
    if w.bits == 8 {
        let row: &[i8] = bytemuck::cast_slice(row);
        for g in 0..w.groups {
            let (a, b) = (g * w.group, ((g + 1) * w.group).min(k));
            f(g, dot8(&x[a..b], &row[a..b]));
        }
        return;
    }
    let blocks_per_group = w.group / Q4_BLOCK;
    for g in 0..w.groups {
        let mut acc = 0i32;
        for b in g * blocks_per_group..(g + 1) * blocks_per_group {
            let at = b * Q4_BLOCK;
            let wb = &row[b * 16..b * 16 + 16];
            acc = acc.wrapping_add(if at + Q4_BLOCK <= k {
                dot4(&x[at..at + Q4_BLOCK], wb)
            } else {
                // The last, partial block: padded with zeros.
                let mut tail = [0i8; Q4_BLOCK];
                let have = k.saturating_sub(at);
                tail[..have].copy_from_slice(&x[at..at + have]);
                dot4(&tail, wb)
            });
        }
        f(g, acc);
    }
}

#[inline(always)]
fn dot8(x: &[i8], w: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (a, b) in x.iter().zip(w) {
        acc = acc.wrapping_add(i32::from(*a) * i32::from(*b));
    }
    acc
}

/// One 4-bit block: 32 activations against 16 bytes of nibbles (offset by 8).
#[inline(always)]
fn dot4(x: &[i8], w: &[u8]) -> i32 {
    let (lo, hi) = x.split_at(16);
    let mut acc = 0i32;
    for j in 0..16 {
        let b = w[j];
        acc +=
            (i32::from(b & 15) - 8) * i32::from(lo[j]) + (i32::from(b >> 4) - 8) * i32::from(hi[j]);
    }
    acc
}

/// `y[m, n] = clamp(Σ_g scale_x · scale_w[n, g] · Σ_{k∈g} (x − zp_x) · w + bias[n])` for
/// dynamically quantized rows `x` (`params` from [`quantize_rows`]).
#[allow(clippy::too_many_arguments)]
pub fn qd8_gemm(
    par: &dyn Parallel,
    x: &[i8],
    params: &[f32],
    m: usize,
    w: &QPacked,
    bias: Option<&[f32]>,
    clamp: (f32, f32),
    y: &mut [f32],
) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k && params.len() >= 2 * m && y.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n));
    let out = Out(y.as_mut_ptr());
    let work = m.saturating_mul(n).saturating_mul(k);
    for_col_parts(par, n, work, &|cols| {
        dispatch(Qd8Cols {
            x,
            params,
            m,
            w,
            bias,
            clamp,
            cols,
            out: &out,
        })
    });
}

pub(crate) struct Qd8Cols<'a> {
    pub(crate) x: &'a [i8],
    pub(crate) params: &'a [f32],
    pub(crate) m: usize,
    pub(crate) w: &'a QPacked,
    pub(crate) bias: Option<&'a [f32]>,
    pub(crate) clamp: (f32, f32),
    pub(crate) cols: core::ops::Range<usize>,
    pub(crate) out: &'a Out<f32>,
}

/// Runs a column task on the VNNI kernel when the weights are packed for it and the
/// CPU (at the selected level) has it; false otherwise.
fn vnni_cols(
    w: &QPacked,
    x: &[i8],
    m: usize,
    cols: &core::ops::Range<usize>,
    epi: crate::qvnni::Epi<'_>,
    out_f: *mut f32,
    out_q: *mut i8,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = &w.vnni {
        if !crate::qvnni::available() && w.bits == 4 && crate::qavx2::available() {
            let p = crate::qvnni::PANEL;
            let panels = cols.start / p..cols.end.div_ceil(p);
            // SAFETY: AVX2 and FMA are available at the selected level; sizes as below.
            if unsafe {
                crate::qavx2::columns(v, w.group, w.groups, x, m, w.k, w.n, panels, epi, out_f)
            } {
                return true;
            }
        }
        if !crate::qvnni::available() && w.bits == 8 && w.groups == 1 && crate::qavx2::available() {
            let p = crate::qvnni::PANEL;
            let panels = cols.start / p..cols.end.div_ceil(p);
            // SAFETY: AVX2 and FMA are available at the selected level; `x` holds
            // `m · k` values and the output `m · n` (checked by the public entry points);
            // this task's panels are its own columns.
            if unsafe { crate::qavx2::columns8(v, x, m, w.k, w.n, panels, epi, out_f, out_q) } {
                return true;
            }
        }
        if crate::qvnni::available() {
            let p = crate::qvnni::PANEL;
            let panels = cols.start / p..cols.end.div_ceil(p);
            // SAFETY: VNNI was detected (at the selected level); `x` holds `m · k`
            // values and the output `m · n` (checked by the public entry points); this
            // task's panels are its own columns (tasks split on panel boundaries).
            unsafe {
                crate::qvnni::columns(
                    v, w.bits, w.group, w.groups, x, m, w.k, w.n, panels, epi, out_f, out_q,
                )
            };
            return true;
        }
    }
    let _ = (w, x, m, cols, epi, out_f, out_q);
    false
}

impl SimdOp for Qd8Cols<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, _s: S) {
        let (n, k) = (self.w.n, self.w.k);
        let epi = crate::qvnni::Epi::Qd8 {
            params: self.params,
            bias: self.bias,
            clamp: self.clamp,
        };
        if vnni_cols(
            self.w,
            self.x,
            self.m,
            &self.cols,
            epi,
            self.out.get(),
            core::ptr::null_mut(),
        ) {
            return;
        }
        for c in self.cols.clone() {
            let sums = self.w.sums(c);
            let scales = &self.w.scales[c * self.w.groups..(c + 1) * self.w.groups];
            for i in 0..self.m {
                let (sx, zx) = (self.params[2 * i], self.params[2 * i + 1] as i32);
                let xr = &self.x[i * k..(i + 1) * k];
                // XNNPACK's order: the row's scale first, then the weight's (per block,
                // the weight's scale first).
                let mut v = if !self.w.ksum.is_empty() {
                    // XNNPACK's `qb4w` order: from the packed weight sum times the
                    // unsigned zero point, one fused multiply-add per group of the
                    // unsigned activations' dot product, then the row's scale.
                    let mut acc = self.w.ksum[c] * (zx + 128) as f32;
                    dots(self.w, c, xr, |g, d| {
                        let u = d.wrapping_add(sums[g].wrapping_mul(128));
                        acc = fma_bf16(u, scales[g], acc);
                    });
                    acc * sx
                } else if self.w.groups == 1 {
                    let mut d0 = 0;
                    dots(self.w, c, xr, |_, d| d0 = d);
                    (d0.wrapping_sub(zx.wrapping_mul(sums[0])) as f32 * sx) * scales[0]
                } else {
                    let mut acc = 0.0f32;
                    dots(self.w, c, xr, |g, d| {
                        acc += scales[g] * (d.wrapping_sub(zx.wrapping_mul(sums[g]))) as f32;
                    });
                    acc * sx
                };
                if let Some(b) = self.bias {
                    v += b[c];
                }
                let v = v.max(self.clamp.0).min(self.clamp.1);
                // SAFETY: `i < m`, `c < n` and `y` holds `m · n` elements (checked by
                // `qd8_gemm`); this task is the only writer of column `c`.
                unsafe { *self.out.get().add(i * n + c) = v };
            }
        }
    }
}

/// Where [`q_rows`] writes: f32 for dynamically quantized rows, int8 for static ones.
pub enum QOut<'a> {
    /// `params`: `(scale, zero point)` per row; see [`qd8_gemm`].
    F32 {
        y: &'a mut [f32],
        params: &'a [f32],
        bias: Option<&'a [f32]>,
        clamp: (f32, f32),
    },
    /// See [`qs8_gemm`].
    I8 {
        y: &'a mut [i8],
        b: &'a [i32],
        zp: i32,
        range: (i32, i32),
    },
}

/// [`qd8_gemm`] or [`qs8_gemm`] of `m` rows on the calling thread (for callers that
/// split the rows over threads themselves, such as convolutions).
pub fn q_rows(x: &[i8], m: usize, w: &QPacked, out: QOut<'_>) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k);
    match out {
        QOut::F32 {
            y,
            params,
            bias,
            clamp,
        } => {
            assert!(y.len() >= m * n && params.len() >= 2 * m);
            assert!(bias.is_none_or(|b| b.len() >= n));
            let out = Out(y.as_mut_ptr());
            dispatch(Qd8Cols {
                x,
                params,
                m,
                w,
                bias,
                clamp,
                cols: 0..n,
                out: &out,
            })
        }
        QOut::I8 { y, b, zp, range } => {
            assert!(y.len() >= m * n && b.len() >= n);
            let out = Out(y.as_mut_ptr());
            dispatch(Qs8Cols {
                x,
                m,
                w,
                b,
                zp,
                range,
                cols: 0..n,
                out: &out,
            })
        }
    }
}

/// Static int8: `y[m, n] = RNE(clamp((b[n] + Σ_k x · w) · scale[n], lo − zp, hi − zp)) + zp`,
/// with `scale[n]` the weights' scales (already `s_x · s_w / s_y`) and `b` the bias with
/// the input zero point folded in (`bias − zp_x · Σ_k w`).
#[allow(clippy::too_many_arguments)]
pub fn qs8_gemm(
    par: &dyn Parallel,
    x: &[i8],
    m: usize,
    w: &QPacked,
    b: &[i32],
    zp: i32,
    range: (i32, i32),
    y: &mut [i8],
) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k && y.len() >= m * n && b.len() >= n);
    let out = Out(y.as_mut_ptr());
    let work = m.saturating_mul(n).saturating_mul(k);
    for_col_parts(par, n, work, &|cols| {
        dispatch(Qs8Cols {
            x,
            m,
            w,
            b,
            zp,
            range,
            cols,
            out: &out,
        })
    });
}

pub(crate) struct Qs8Cols<'a> {
    pub(crate) x: &'a [i8],
    pub(crate) m: usize,
    pub(crate) w: &'a QPacked,
    pub(crate) b: &'a [i32],
    pub(crate) zp: i32,
    pub(crate) range: (i32, i32),
    pub(crate) cols: core::ops::Range<usize>,
    pub(crate) out: &'a Out<i8>,
}

/// `RNE(clamp(acc · scale, lo − zp, hi − zp)) + zp`: XNNPACK's fp32 requantization.
#[inline(always)]
pub fn requantize(acc: i32, scale: f32, zp: i32, range: (i32, i32)) -> i8 {
    let f = clamp_f(
        acc as f32 * scale,
        (range.0 - zp) as f32,
        (range.1 - zp) as f32,
    );
    (round_small(f) + zp) as i8
}

/// `min(max(v, lo), hi)` with NaN going to `lo` (as C's `fmaxf` then `fminf`), written
/// as selects so that loops of it vectorise.
#[inline(always)]
fn clamp_f(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v >= lo { v } else { lo };
    if v <= hi {
        v
    } else {
        hi
    }
}

/// Round half to even of `|f| < 2^22`, through the bits of `f + 1.5 · 2^23` (no float to
/// int conversion, so loops of it vectorise).
#[inline(always)]
fn round_small(f: f32) -> i32 {
    (f + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

impl SimdOp for Qs8Cols<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, _s: S) {
        let (n, k) = (self.w.n, self.w.k);
        let epi = crate::qvnni::Epi::Qs8 {
            bias: self.b,
            zy: self.zp,
            range: self.range,
        };
        if vnni_cols(
            self.w,
            self.x,
            self.m,
            &self.cols,
            epi,
            core::ptr::null_mut(),
            self.out.get(),
        ) {
            return;
        }
        for c in self.cols.clone() {
            let scale = self.w.scales[c * self.w.groups];
            for i in 0..self.m {
                let mut acc = self.b[c];
                dots(self.w, c, &self.x[i * k..(i + 1) * k], |_, d| {
                    acc = acc.wrapping_add(d)
                });
                let v = requantize(acc, scale, self.zp, self.range);
                // SAFETY: `i < m`, `c < n` and `y` holds `m · n` elements (checked by
                // `qs8_gemm`); this task is the only writer of column `c`.
                unsafe { *self.out.get().add(i * n + c) = v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in f64 over dequantized values.
    fn reference(
        x: &[i8],
        p: &[f32],
        m: usize,
        n: usize,
        k: usize,
        w: &dyn Fn(usize, usize) -> (i8, f32),
    ) -> Vec<f64> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for c in 0..n {
                let mut acc = 0.0f64;
                for j in 0..k {
                    let (q, s) = w(c, j);
                    acc += (f64::from(x[i * k + j]) - f64::from(p[2 * i + 1]))
                        * f64::from(q)
                        * f64::from(s);
                }
                y[i * n + c] = acc * f64::from(p[2 * i]);
            }
        }
        y
    }

    #[test]
    fn qd8_against_the_definition() {
        // (m, n, k, bits, group)
        let cases: &[(usize, usize, usize, u8, usize)] = &[
            (1, 5, 7, 8, 7),
            (3, 17, 64, 8, 64),
            (2, 9, 64, 4, 32),
            (4, 33, 96, 4, 96),
            (1, 40, 50, 4, 50),
            (5, 24, 128, 4, 64),
            (2, 1536, 576, 4, 32),
            (5, 576, 1536, 4, 32),
            (8, 192, 576, 4, 32),
            (2, 100, 576, 8, 576),
        ];
        for &(m, n, k, bits, group) in cases {
            let lim = if bits == 4 { 8 } else { 128 };
            let wv = |r: usize, c: usize| {
                (((r * 31 + c * 17 + 5) % (2 * lim)) as i32 - lim as i32) as i8
            };
            // bf16 values, as `qb4w` scales are (the grouped VNNI path keeps them so).
            let sv = |r: usize, g: usize| {
                f32::from_bits((0.01 + 0.001 * ((r + 3 * g) % 7) as f32).to_bits() & 0xffff_0000)
            };
            let w = QPacked::new(n, k, bits, group, wv, sv).unwrap();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 101) as f32 * 0.05 - 2.0)
                .collect();
            let (mut q, mut p) = (vec![0i8; m * k], vec![0f32; 2 * m]);
            quantize_rows(&x, k, &mut q, &mut p);
            let g = group.min(k);
            let want = reference(&q, &p, m, n, k, &|c, j| (wv(c, j), sv(c, j / g)));
            let _g = crate::tests::LEVEL_LOCK
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let before = ptero_simd::level();
            let pool = ptero_simd::pool::ThreadPool::new(2);
            // Grouped 4-bit weights (`qb4w`) follow XNNPACK's float order at every level
            // and on any split: the results are the same bits everywhere.
            let exact = bits == 4 && group < k;
            let mut first: Option<Vec<f32>> = None;
            for (l, par) in crate::tests::levels().into_iter().flat_map(|l| {
                [
                    (l, &ptero_simd::Serial as &dyn Parallel),
                    (l, &pool as &dyn Parallel),
                ]
            }) {
                ptero_simd::set_level(l).unwrap();
                let mut y = vec![0f32; m * n];
                qd8_gemm(
                    par,
                    &q,
                    &p,
                    m,
                    &w,
                    None,
                    (f32::NEG_INFINITY, f32::INFINITY),
                    &mut y,
                );
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(*a) - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{l:?} {m}x{n}x{k}/{bits}/{group} [{i}]: {a} vs {b}"
                    );
                }
                if exact {
                    match &first {
                        None => first = Some(y),
                        Some(f) => assert!(
                            f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{l:?} {m}x{n}x{k}/{bits}/{group}: not the same bits as the first level"
                        ),
                    }
                }
            }
            ptero_simd::set_level(before).unwrap();
        }
    }

    #[test]
    fn rows_quantize_like_xnnpack() {
        // A row that is all positive still holds 0; the zero point saturates at -128.
        let (mut q, mut p) = ([0i8; 4], [0f32; 2]);
        quantize_rows(&[1.0, 2.0, 3.0, 4.0], 4, &mut q, &mut p);
        assert_eq!(p[1], -128.0);
        assert!((p[0] - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(q, [-64, 0, 63, 127]);
        // Zero rows: scale 1, and the tie between the two zero points goes to the top.
        quantize_rows(&[0.0; 4], 4, &mut q, &mut p);
        assert_eq!((p[0], p[1], q), (1.0, 127.0, [127; 4]));
        // Non-finite values do not panic.
        quantize_rows(&[f32::NAN, f32::INFINITY, -1.0, 0.0], 4, &mut q, &mut p);
    }

    #[test]
    fn qs8_requantizes_with_ties_to_even() {
        assert_eq!(requantize(5, 0.5, 0, (-128, 127)), 2); // 2.5 -> 2
        assert_eq!(requantize(7, 0.5, 1, (-128, 127)), 5); // 3.5 -> 4, + 1
        assert_eq!(requantize(1000, 1.0, 3, (-128, 127)), 127);
        assert_eq!(requantize(-9, 1.0, 0, (0, 127)), 0);
        let w = QPacked::new(
            2,
            3,
            8,
            3,
            |r, c| [[1i8, 2, 3], [-1, -1, -1]][r][c],
            |_, _| 0.25,
        )
        .unwrap();
        let x = [10i8, 20, 30, -5, 0, 5];
        let mut y = [0i8; 4];
        // Input zero point 2 folded into b: b = -2 · Σw.
        let b = [-2 * 6, -2 * -3];
        qs8_gemm(&ptero_simd::Serial, &x, 2, &w, &b, 1, (-128, 127), &mut y);
        // Row 0: (8·1 + 18·2 + 28·3) = 128 -> 32 + 1; (-8 - 18 - 28) = -54 -> -13.5 -> -14 + 1.
        // Row 1: (-7 + -4 + 3·3) = -2 -> -0.5 -> 0 + 1; (7 + 2 - 3) = 6 -> 1.5 -> 2 + 1.
        assert_eq!(y, [33, -13, 1, 3]);
    }

    /// Static int8 at every level, serial and split: row tiles with tails, panels with
    /// tails, k not a multiple of the 4-byte quads, extreme weights and activations.
    #[test]
    fn qs8_at_every_level() {
        // (m, n, k)
        let cases: &[(usize, usize, usize)] = &[
            (1, 1, 1),
            (1, 16, 4),
            (2, 17, 5),
            (3, 31, 27),
            (4, 48, 64),
            (5, 7, 130),
            (7, 40, 3),
            (64, 64, 576),
            (9, 100, 1152),
        ];
        let _g = crate::tests::LEVEL_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = ptero_simd::level();
        let pool = ptero_simd::pool::ThreadPool::new(2);
        for &(m, n, k) in cases {
            // Every weight value, -128 and 127 included, against activations at the ends.
            let wv = |r: usize, c: usize| ((r * 131 + c * 37 + 11) % 256) as u8 as i8;
            let x: Vec<i8> = (0..m * k)
                .map(|i| match i % 11 {
                    0 => -128,
                    1 => 127,
                    _ => ((i * 7919) % 256) as u8 as i8,
                })
                .collect();
            let sv = |r: usize, _| 1.0 / (3000.0 + 97.0 * (r % 13) as f32);
            let b: Vec<i32> = (0..n).map(|c| (c as i32 * 7919) % 20001 - 10000).collect();
            let (zp, range) = (-3, (-120, 110));
            let mut want = vec![0i8; m * n];
            for i in 0..m {
                for c in 0..n {
                    let d = (0..k).fold(i64::from(b[c]), |a, j| {
                        a + i64::from(x[i * k + j]) * i64::from(wv(c, j))
                    });
                    want[i * n + c] = requantize(d as i32, sv(c, 0), zp, range);
                }
            }
            for l in crate::tests::levels() {
                ptero_simd::set_level(l).unwrap();
                // Packed at the level, as a program loaded there packs it.
                let w = QPacked::new(n, k, 8, k, wv, sv).unwrap();
                for par in [&ptero_simd::Serial as &dyn Parallel, &pool] {
                    let mut y = vec![0i8; m * n];
                    qs8_gemm(par, &x, m, &w, &b, zp, range, &mut y);
                    assert_eq!(y, want, "{l:?} {m}x{n}x{k}");
                    let mut y = vec![0i8; m * n];
                    q_rows(
                        &x,
                        m,
                        &w,
                        QOut::I8 {
                            y: &mut y,
                            b: &b,
                            zp,
                            range,
                        },
                    );
                    assert_eq!(y, want, "{l:?} {m}x{n}x{k} rows");
                }
            }
        }
        ptero_simd::set_level(before).unwrap();
    }
}
