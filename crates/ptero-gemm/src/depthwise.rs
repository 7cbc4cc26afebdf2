//! Depthwise convolution: every channel convolved with its own `kh × kw` filter.
//!
//! The fast path copies a band of each input plane into scratch, padded with zeros and,
//! for a horizontal stride `s`, split into `s` phases (columns `j·s + p`), so that every
//! tap of every output vector is one unaligned load at a fixed offset: no border cases,
//! and strided convolutions read unit-stride rows too.

use ptero_simd::{dispatch_at, split_count, split_range, Parallel, Simd, SimdOp, SlotArena};

use crate::conv::{Conv2d, Image};
use crate::driver::SyncPtr;
use crate::Activation;

/// Scratch floats for one band of one plane (fits L2 with room to spare).
pub(crate) const DW_FLOATS: usize = 1 << 15;
/// Most taps of the fast path (the filter lives in a stack array).
pub(crate) const MAX_TAPS: usize = 64;

/// Planes split over threads.
///
/// # Safety
/// `out` with strides `os` must be valid, non-aliasing and exclusive for the whole
/// `[n, cout, oh, ow]` output.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    w: Image<'_>,
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) {
    let planes = g.n * g.cout;
    // Each plane also costs its copy into scratch: count input and output elements too.
    let work = planes * (g.oh * g.ow * (g.kh * g.kw + 1) + g.ih * g.iw);
    let parts = if work < crate::driver::PAR_MIN_MACS / 4 {
        1
    } else {
        4 * par.threads()
    };
    // Narrow planes go `LANES` channels at a time: split on multiples of the widest.
    let align = if 2 * g.ow <= 16 { 16 } else { 1 };
    let chunks = split_count(planes, parts, align);
    let level = ptero_simd::level();
    par.run(chunks, &|t| {
        let planes = split_range(planes, chunks, align, t);
        let run = |scratch: Option<&mut [f32]>| {
            dispatch_at(
                level,
                DwPlanes {
                    g,
                    x,
                    w,
                    bias,
                    planes: planes.clone(),
                    out,
                    os,
                    act,
                    scratch,
                },
            )
        };
        if arena
            .and_then(|a| a.with(DW_FLOATS, |b| run(Some(b))))
            .is_none()
        {
            run(None);
        }
    });
}

/// One task's planes (`n * cout + c`): run through [`dispatch_at`], on the calling thread.
///
/// Safety contract (of whoever builds one): `out` with strides `os` is valid and exclusive
/// for these planes' outputs, and `x`, `w` hold the geometry's input and weights.
pub(crate) struct DwPlanes<'a> {
    pub g: &'a Conv2d,
    pub x: Image<'a>,
    pub w: Image<'a>,
    pub bias: Option<&'a [f32]>,
    pub planes: core::ops::Range<usize>,
    pub out: SyncPtr,
    pub os: [usize; 4],
    pub act: Activation,
    pub scratch: Option<&'a mut [f32]>,
}

impl SimdOp for DwPlanes<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(mut self, s: S) {
        if self.g.kh * self.g.kw <= MAX_TAPS {
            if let Some(buf) = self.scratch.take() {
                // A row of at most half a vector wastes most lanes; wider ones keep the
                // row path (measured: even at 14 of 16 lanes, moving the pixels between
                // planes and lanes costs what the lanes save).
                if S::LANES > 1 && 2 * self.g.ow <= S::LANES {
                    if let Some(lay) = self.small_layout(S::LANES, buf.len()) {
                        self.small(s, lay, buf);
                        return;
                    }
                }
                if let Some(band) = self.band(S::LANES, buf.len()) {
                    self.padded(s, &band, buf);
                    return;
                }
            }
        }
        for plane in self.planes.clone() {
            self.direct(plane);
        }
    }
}

/// Scratch of the channel-vector path: a padded plane per lane, pixel-major, then the
/// output pixels likewise.
#[derive(Clone, Copy)]
struct Small {
    /// Padded input height and width.
    hp: usize,
    wp: usize,
}

/// Layout of the padded, phase-split band in scratch.
struct Band {
    /// Floats of one phase row: every output vector's widest tap stays inside.
    rowlen: usize,
    /// Floats of one padded input row (all its phases).
    prow: usize,
    /// Output rows per band.
    rows: usize,
}

impl DwPlanes<'_> {
    fn band(&self, lanes: usize, floats: usize) -> Option<Band> {
        let g = self.g;
        let (sw, dw) = (g.stride[1], g.dilation[1]);
        let rowlen = g.ow.div_ceil(lanes) * lanes + (g.kw - 1) * dw / sw;
        let prow = sw * rowlen;
        let span = (g.kh - 1) * g.dilation[0] + 1;
        // Input rows for `r` output rows: (r - 1) * sh + span.
        let fit = floats / prow.max(1);
        if fit < span {
            return None;
        }
        let rows = ((fit - span) / g.stride[0] + 1).min(g.oh);
        Some(Band { rowlen, prow, rows })
    }

    fn small_layout(&self, lanes: usize, floats: usize) -> Option<Small> {
        let g = self.g;
        let hp = g.ih.checked_add(2 * g.pad[0])?;
        let wp = g.iw.checked_add(2 * g.pad[1])?;
        let need = hp.checked_mul(wp)?.checked_add(g.oh.checked_mul(g.ow)?)?;
        (need.checked_mul(lanes)? <= floats).then_some(Small { hp, wp })
    }

    /// Planes at most half a vector wide: `LANES` channels at a time, one per lane. Their
    /// padded planes are interleaved pixel by pixel in scratch, so every tap of an output
    /// pixel is one vector load for all the channels, with no lane wasted on a short row;
    /// the output pixels are written back to their planes after.
    #[inline(always)]
    fn small<S: Simd>(&self, s: S, lay: Small, buf: &mut [f32]) {
        let g = self.g;
        let l = S::LANES;
        let (hp, wp) = (lay.hp, lay.wp);
        let (inp, outp) = buf.split_at_mut(hp * wp * l);
        let outp = &mut outp[..g.oh * g.ow * l];
        let (xs, ws, os) = (self.x.strides, self.w.strides, self.os);
        let taps = g.kh * g.kw;
        // Offset of each tap from its output pixel's first tap, in floats.
        let mut toff = [0usize; MAX_TAPS];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                toff[ky * g.kw + kx] = (ky * g.dilation[0] * wp + kx * g.dilation[1]) * l;
            }
        }
        let (rstep, cstep) = (g.stride[0] * wp * l, g.stride[1] * l);
        let mut wv = [s.zero(); MAX_TAPS];
        let mut tmp = [0.0f32; 64];
        // Full groups move a pixel of every lane at once (a gather in, a scatter out),
        // when the plane strides fit the instructions' 32-bit offsets.
        let fits = |st: usize| {
            st.checked_mul(l - 1)
                .is_some_and(|v| v <= i32::MAX as usize)
        };
        let vec_in = fits(xs[1]);
        let vec_out = fits(os[1]) && os[1] > 0;
        // Padding stays zero; other lanes' stale values only reach lanes never stored.
        inp.fill(0.0);
        let mut p = self.planes.start;
        while p < self.planes.end {
            let (n, c0) = (p / g.cout, p % g.cout);
            let cnt = l.min(self.planes.end - p).min(g.cout - c0);
            let base = n * xs[0] + c0 * xs[1];
            // The last lane's last pixel bounds every read (strides are non-negative); the
            // caller checked the extent, so the element-wise path below is only a guard.
            let last = base + (l - 1) * xs[1] + (g.ih - 1) * xs[2] + (g.iw - 1) * xs[3];
            if cnt == l && vec_in && last < self.x.data.len() {
                for y in 0..g.ih {
                    let dst = ((y + g.pad[0]) * wp + g.pad[1]) * l;
                    for x in 0..g.iw {
                        let src = base + y * xs[2] + x * xs[3];
                        // SAFETY: lane i reads src + i * xs[1] <= last, inside `data`; the
                        // offsets fit i32 (`vec_in`).
                        let v = unsafe { s.gather_ptr(self.x.data.as_ptr().add(src), xs[1]) };
                        s.store(&mut inp[dst + x * l..], v);
                    }
                }
            } else {
                for lane in 0..cnt {
                    let base = base + lane * xs[1];
                    for y in 0..g.ih {
                        let src = base + y * xs[2];
                        let dst = ((y + g.pad[0]) * wp + g.pad[1]) * l + lane;
                        for x in 0..g.iw {
                            inp[dst + x * l] = self.x.data[src + x * xs[3]];
                        }
                    }
                }
            }
            for (t, w) in wv.iter_mut().enumerate().take(taps) {
                let (ky, kx) = (t / g.kw, t % g.kw);
                tmp[..l].fill(0.0);
                for (lane, v) in tmp[..cnt].iter_mut().enumerate() {
                    *v = self.w.data[(c0 + lane) * ws[0] + ky * ws[2] + kx * ws[3]];
                }
                *w = s.load(&tmp[..l]);
            }
            tmp[..l].fill(0.0);
            if let Some(b) = self.bias {
                tmp[..cnt].copy_from_slice(&b[c0..c0 + cnt]);
            }
            let bias = s.load(&tmp[..l]);
            for oy in 0..g.oh {
                let row = oy * rstep;
                let mut ox = 0;
                // Four pixels at a time: independent chains hide the FMA latency.
                while ox + 4 <= g.ow {
                    let at = row + ox * cstep;
                    let mut acc = [bias; 4];
                    for t in 0..taps {
                        let src = &inp[at + toff[t]..];
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = s.mul_add(s.load(&src[j * cstep..]), wv[t], *a);
                        }
                    }
                    for (j, a) in acc.into_iter().enumerate() {
                        s.store(
                            &mut outp[(oy * g.ow + ox + j) * l..],
                            act_vec(s, self.act, a),
                        );
                    }
                    ox += 4;
                }
                for ox in ox..g.ow {
                    let at = row + ox * cstep;
                    let mut a = bias;
                    for t in 0..taps {
                        a = s.mul_add(s.load(&inp[at + toff[t]..]), wv[t], a);
                    }
                    s.store(&mut outp[(oy * g.ow + ox) * l..], act_vec(s, self.act, a));
                }
            }
            let obase = n * os[0] + c0 * os[1];
            if cnt == l && vec_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let v = s.load(&outp[(oy * g.ow + ox) * l..]);
                        // SAFETY: lane i writes (n, c0 + i, oy, ox), one of this task's
                        // planes' outputs: valid, exclusive (the struct's contract) and
                        // distinct (os[1] > 0); the offsets fit i32 (`vec_out`).
                        unsafe {
                            s.scatter_ptr(
                                self.out.get().add(obase + oy * os[2] + ox * os[3]),
                                os[1],
                                v,
                            )
                        };
                    }
                }
            } else {
                for lane in 0..cnt {
                    let base = obase + lane * os[1];
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let v = outp[(oy * g.ow + ox) * l + lane];
                            // SAFETY: (n, c0 + lane, oy, ox) is one of this task's planes'
                            // outputs, valid and exclusive (the struct's contract).
                            unsafe { *self.out.get().add(base + oy * os[2] + ox * os[3]) = v };
                        }
                    }
                }
            }
            p += cnt;
        }
    }

    /// Writes the input values of padded rows `[r0, r0 + count)` of plane `(n, c)` into
    /// `buf`; padding positions are left as they are (zero).
    #[inline(always)]
    fn fill<S: Simd>(&self, s: S, band: &Band, (n, c): (usize, usize), r0: usize, buf: &mut [f32]) {
        let g = self.g;
        let xs = self.x.strides;
        let xbase = n * xs[0] + c * xs[1];
        let (sw, pw) = (g.stride[1], g.pad[1]);
        for (r, row) in buf.chunks_exact_mut(band.prow).enumerate() {
            let iy = (r0 + r) as isize - g.pad[0] as isize;
            if iy < 0 || iy >= g.ih as isize {
                continue;
            }
            let src = xbase + iy as usize * xs[2];
            if sw == 1 && xs[3] == 1 {
                let lo = pw.min(band.rowlen);
                let hi = (pw + g.iw).min(band.rowlen);
                copy(s, &self.x.data[src..src + (hi - lo)], &mut row[lo..hi]);
            } else if sw == 2 && xs[3] == 1 {
                split_pairs(s, &self.x.data[src..src + g.iw], row, band.rowlen, pw);
            } else {
                for p in 0..sw {
                    let ph = &mut row[p * band.rowlen..(p + 1) * band.rowlen];
                    // Phase column j reads input column j * sw + p - pw: valid in [lo, hi).
                    let lo = (pw.saturating_sub(p)).div_ceil(sw).min(band.rowlen);
                    let hi = ((g.iw + pw).saturating_sub(p).div_ceil(sw)).clamp(lo, band.rowlen);
                    if hi > lo {
                        let first = src + (lo * sw + p - pw) * xs[3];
                        let step = sw * xs[3];
                        let taken = &self.x.data[first..first + (hi - lo - 1) * step + 1];
                        for (k, v) in ph[lo..hi].iter_mut().enumerate() {
                            *v = taken[k * step];
                        }
                    }
                }
            }
        }
    }

    /// The fast path, for every plane of the task.
    #[inline(always)]
    fn padded<S: Simd>(&self, s: S, band: &Band, buf: &mut [f32]) {
        let g = self.g;
        let (sh, sw, dh, dw) = (g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]);
        let taps = g.kh * g.kw;
        let mut off = [0usize; MAX_TAPS];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                off[ky * g.kw + kx] =
                    ky * dh * band.prow + (kx * dw % sw) * band.rowlen + kx * dw / sw;
            }
        }
        let nvec = g.ow.div_ceil(S::LANES);
        let span = (g.kh - 1) * dh + 1;
        // A plane in one band puts its padding at the same places every time: zero once.
        let single = band.rows >= g.oh;
        let mut zeroed = false;
        let ws = self.w.strides;
        let mut wt = [0.0f32; MAX_TAPS];
        for plane in self.planes.clone() {
            let (n, c) = (plane / g.cout, plane % g.cout);
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    wt[ky * g.kw + kx] = self.w.data[c * ws[0] + ky * ws[2] + kx * ws[3]];
                }
            }
            let obase = n * self.os[0] + c * self.os[1];
            let mut oy0 = 0;
            while oy0 < g.oh {
                let rows = band.rows.min(g.oh - oy0);
                let count = (rows - 1) * sh + span;
                let b = &mut buf[..count * band.prow];
                if !(single && zeroed) {
                    b.fill(0.0);
                    zeroed = true;
                }
                self.fill(s, band, (n, c), oy0 * sh, b);
                // Every load below ends by (rows - 1) * sh * prow + off[taps - 1] + nvec * LANES,
                // which is at most count * prow (see `band`).
                let last = (rows - 1) * sh * band.prow + off[taps - 1] + nvec * S::LANES;
                assert!(last <= b.len(), "depthwise band overrun");
                let at = Jobs {
                    bp: b.as_ptr(),
                    rstep: sh * band.prow,
                    obase: obase + oy0 * self.os[2],
                    os: self.os,
                    ow: g.ow,
                    bias: self.bias.map_or(0.0, |b| b[c]),
                    act: self.act,
                    out: self.out,
                };
                // Independent accumulators: one chain of `taps` fused multiply-adds is
                // latency-bound, several in flight keep both FMA ports busy.
                // Narrow rows (up to four vectors): blocks of whole rows, each row one base
                // pointer and its vectors fixed displacements from it, so the addresses
                // stay in registers.
                // SAFETY: rows below `rows` load inside `last` and store inside this
                // task's plane.
                let done = unsafe {
                    match nvec {
                        1 => at.rows::<S, 8, 1>(s, rows, &wt, &off, taps),
                        2 => at.rows::<S, 4, 2>(s, rows, &wt, &off, taps),
                        3 => at.rows::<S, 2, 3>(s, rows, &wt, &off, taps),
                        4 => at.rows::<S, 2, 4>(s, rows, &wt, &off, taps),
                        _ => 0,
                    }
                };
                let jobs = (rows - done) * nvec;
                let mut pos = JobPos {
                    r: done,
                    v: 0,
                    nvec,
                };
                let mut q = 0;
                while q + 8 <= jobs {
                    // SAFETY: jobs below `rows * nvec` load inside `last` and store inside
                    // this task's plane.
                    unsafe { at.run::<S, 8>(s, &mut pos, &wt, &off, taps) };
                    q += 8;
                }
                if q + 4 <= jobs {
                    // SAFETY: as above.
                    unsafe { at.run::<S, 4>(s, &mut pos, &wt, &off, taps) };
                    q += 4;
                }
                if q + 2 <= jobs {
                    // SAFETY: as above.
                    unsafe { at.run::<S, 2>(s, &mut pos, &wt, &off, taps) };
                    q += 2;
                }
                if q < jobs {
                    // SAFETY: as above.
                    unsafe { at.run::<S, 1>(s, &mut pos, &wt, &off, taps) };
                }
                oy0 += rows;
            }
        }
    }

    /// Any geometry, without scratch: tap by tap over each output row.
    fn direct(&self, plane: usize) {
        let g = self.g;
        let (n, c) = (plane / g.cout, plane % g.cout);
        let bias = self.bias.map_or(0.0, |b| b[c]);
        let (xs, ws, os) = (self.x.strides, self.w.strides, self.os);
        let xbase = n * xs[0] + c * xs[1];
        let obase = n * os[0] + c * os[1];
        let wbase = c * ws[0];
        for oy in 0..g.oh {
            let ob = obase + oy * os[2];
            for ox in 0..g.ow {
                let mut acc = bias;
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad[0] as isize;
                    if iy < 0 || iy >= g.ih as isize {
                        continue;
                    }
                    let xrow = xbase + iy as usize * xs[2];
                    for kx in 0..g.kw {
                        let ix =
                            (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad[1] as isize;
                        if ix >= 0 && (ix as usize) < g.iw {
                            let wv = self.w.data[wbase + ky * ws[2] + kx * ws[3]];
                            acc += wv * self.x.data[xrow + ix as usize * xs[3]];
                        }
                    }
                }
                // SAFETY: element (oy, ox) of this task's plane, inside the checked output.
                unsafe { *self.out.get().add(ob + ox * os[3]) = act_scalar(self.act, acc) };
            }
        }
    }
}

/// `dst = src` (equal lengths) in vectors: rows here are short, a `memcpy` call costs more.
#[inline(always)]
fn copy<S: Simd>(s: S, src: &[f32], dst: &mut [f32]) {
    let mut d = dst.chunks_exact_mut(S::LANES);
    let mut x = src.chunks_exact(S::LANES);
    for (d, x) in (&mut d).zip(&mut x) {
        s.store(d, s.load(x));
    }
    let (d, x) = (d.into_remainder(), x.remainder());
    if !d.is_empty() {
        s.store_part(d, s.load_part(x));
    }
}

/// Splits one input row into the two phases of a stride-2 row: input column `c` goes to
/// phase `(c + pw) % 2`, column `(c + pw) / 2`; columns past `rowlen` are dropped.
#[inline(always)]
fn split_pairs<S: Simd>(s: S, src: &[f32], row: &mut [f32], rowlen: usize, pw: usize) {
    let (p0, p1) = row.split_at_mut(rowlen);
    let (even, odd) = if pw.is_multiple_of(2) {
        (p0, p1)
    } else {
        (p1, p0)
    };
    let (je, jo) = (pw / 2, pw.div_ceil(2));
    let ne = src.len().div_ceil(2).min(rowlen.saturating_sub(je));
    let no = (src.len() / 2).min(rowlen.saturating_sub(jo));
    let l = S::LANES;
    let mut k = 0;
    while k < ne.max(no) {
        let inp = &src[2 * k..(2 * k + 2 * l).min(src.len())];
        let a = s.load_part(inp);
        let b = if inp.len() > l {
            s.load_part(&inp[l..])
        } else {
            s.zero()
        };
        let (e, o) = s.even_odd(a, b);
        if k < ne {
            s.store_part(&mut even[je + k..je + ne.min(k + l)], e);
        }
        if k < no {
            s.store_part(&mut odd[jo + k..jo + no.min(k + l)], o);
        }
        k += l;
    }
}

/// Output vectors of one band: a job is one vector of one output row.
struct Jobs {
    bp: *const f32,
    /// Scratch floats between consecutive output rows.
    rstep: usize,
    /// Output offset of the band's first row.
    obase: usize,
    os: [usize; 4],
    ow: usize,
    bias: f32,
    act: Activation,
    out: SyncPtr,
}

impl Jobs {
    /// Output rows `0..rows` in blocks of `R` rows of `NV` vectors (`NV` = the row's
    /// vectors); returns the rows done (a multiple of `R`), the rest is left to [`run`].
    ///
    /// # Safety
    /// As [`Jobs::run`], for every job of those rows.
    #[inline(always)]
    unsafe fn rows<S: Simd, const R: usize, const NV: usize>(
        &self,
        s: S,
        rows: usize,
        wt: &[f32; MAX_TAPS],
        off: &[usize; MAX_TAPS],
        taps: usize,
    ) -> usize {
        let mut r0 = 0;
        while r0 + R <= rows {
            let mut acc = [[s.splat(self.bias); NV]; R];
            for t in 0..taps {
                let w = s.splat(wt[t]);
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: rows below `rows` load inside the band (the contract).
                    let p = unsafe { self.bp.add((r0 + r) * self.rstep + off[t]) };
                    for (v, a) in row.iter_mut().enumerate() {
                        // SAFETY: vector v < nvec of this row, inside the band as above.
                        let xv = unsafe { s.load_ptr(p.add(v * S::LANES)) };
                        *a = s.mul_add(w, xv, *a);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                let ob = self.obase + (r0 + r) * self.os[2];
                for (v, &a) in row.iter().enumerate() {
                    let ox = v * S::LANES;
                    let a = act_vec(s, self.act, a);
                    // SAFETY: outputs (r0 + r, ox..) of this task's plane (the contract).
                    unsafe {
                        store_out(
                            s,
                            self.out.get().add(ob + ox * self.os[3]),
                            self.os[3],
                            S::LANES.min(self.ow - ox),
                            a,
                        )
                    };
                }
            }
            r0 += R;
        }
        r0
    }

    /// The next `J` jobs from `pos`, their taps interleaved.
    ///
    /// # Safety
    /// Every job's loads `bp + in + off[t] .. + LANES` lie in the band's scratch and its
    /// stores in the caller's exclusive output plane.
    #[inline(always)]
    unsafe fn run<S: Simd, const J: usize>(
        &self,
        s: S,
        pos: &mut JobPos,
        wt: &[f32; MAX_TAPS],
        off: &[usize; MAX_TAPS],
        taps: usize,
    ) {
        let mut inb = [0usize; J];
        let mut outb = [0usize; J];
        let mut lanes = [0usize; J];
        for j in 0..J {
            let ox = pos.v * S::LANES;
            inb[j] = pos.r * self.rstep + ox;
            outb[j] = self.obase + pos.r * self.os[2] + ox * self.os[3];
            lanes[j] = S::LANES.min(self.ow - ox);
            pos.next();
        }
        let mut acc = [s.splat(self.bias); J];
        for t in 0..taps {
            let w = s.splat(wt[t]);
            for j in 0..J {
                // SAFETY: per the contract.
                let xv = unsafe { s.load_ptr(self.bp.add(inb[j] + off[t])) };
                acc[j] = s.mul_add(w, xv, acc[j]);
            }
        }
        for j in 0..J {
            let a = act_vec(s, self.act, acc[j]);
            // SAFETY: per the contract.
            unsafe { store_out(s, self.out.get().add(outb[j]), self.os[3], lanes[j], a) };
        }
    }
}

/// Walks output vectors row by row (no division per job).
struct JobPos {
    r: usize,
    v: usize,
    nvec: usize,
}

impl JobPos {
    #[inline(always)]
    fn next(&mut self) {
        self.v += 1;
        if self.v == self.nvec {
            self.v = 0;
            self.r += 1;
        }
    }
}

#[inline(always)]
pub(crate) fn act_vec<S: Simd>(s: S, act: Activation, v: S::F) -> S::F {
    match act {
        Activation::None => v,
        Activation::Relu => s.max(s.zero(), v),
        Activation::Clamp(lo, hi) => ptero_simd::ops::clamp(s, v, lo, hi),
        Activation::Silu => ptero_simd::math::silu(s, v),
    }
}

/// Stores the first `n` lanes of `v` at `p`, `st` floats apart.
///
/// # Safety
/// The `n` elements `p + i * st` must be valid and exclusive to the caller.
#[inline(always)]
unsafe fn store_out<S: Simd>(s: S, p: *mut f32, st: usize, n: usize, v: S::F) {
    // SAFETY: per the contract.
    unsafe {
        if st == 1 && n == S::LANES {
            s.store_ptr(p, v);
        } else if st == 1 {
            s.store_part(core::slice::from_raw_parts_mut(p, n), v);
        } else {
            let mut tmp = [0.0f32; 64];
            s.store(&mut tmp, v);
            for (i, t) in tmp.iter().enumerate().take(n) {
                *p.add(i * st) = *t;
            }
        }
    }
}

/// The activation on one value, with the vector forms' NaN rule (NaN passes through).
pub(crate) fn act_scalar(act: Activation, v: f32) -> f32 {
    match act {
        Activation::None => v,
        Activation::Relu => {
            if v < 0.0 {
                0.0
            } else {
                v
            }
        }
        Activation::Clamp(lo, hi) => {
            let v = if v < lo { lo } else { v };
            if v > hi {
                hi
            } else {
                v
            }
        }
        Activation::Silu => {
            // The vector form on one lane, so both paths round alike.
            let mut y = [0.0f32];
            ptero_simd::ops::unary(ptero_simd::ops::Unary::Silu, &[v], &mut y);
            y[0]
        }
    }
}
