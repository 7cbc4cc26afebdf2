//! 2-d pooling: max pooling with indices (and its backward), average pooling and adaptive
//! average pooling,
//! on `[C, H, W]` or `[N, C, H, W]` inputs in any dim order.
//!
//! Window arithmetic follows ATen's `pooling_output_shape` (ceil mode drops a last
//! window that would start in the right padding) and its kernels' index conventions
//! (max pool indices are `h * W + w` within each plane; NaN wins a max).

use ptero_core::{Error, KernelArgs, KernelRegistry, Prepared, Result, ScalarType};
use ptero_simd::phase::{phase_planes, Phases};
use ptero_simd::{Simd, SimdOp};

use crate::util::work::Meter;
use crate::util::{load_f64, load_i64, store_f64, store_i64};

/// A 3-d/4-d tensor as `[N, C, H, W]` sizes and strides.
fn nchw(sizes: &[usize], strides: &[usize]) -> ([usize; 4], [usize; 4]) {
    if sizes.len() == 3 {
        (
            [1, sizes[0], sizes[1], sizes[2]],
            [0, strides[0], strides[1], strides[2]],
        )
    } else {
        (
            [sizes[0], sizes[1], sizes[2], sizes[3]],
            [strides[0], strides[1], strides[2], strides[3]],
        )
    }
}

fn check_input(a: &KernelArgs<'_>, what: &str) -> Result<()> {
    let m = a.meta(0)?;
    let ok = (m.dim() == 3 || m.dim() == 4) && m.sizes()[m.dim() - 2..].iter().all(|&s| s > 0);
    let batch_ok = m.sizes()[..m.dim().saturating_sub(2)]
        .iter()
        .skip(if m.dim() == 4 { 1 } else { 0 })
        .all(|&s| s > 0);
    if !ok || !batch_ok {
        return Err(Error::shape(alloc::format!(
            "{what}: expected a 3-d or 4-d input with non-empty C, H, W, found {:?}",
            m.sizes()
        )));
    }
    if !m.dtype.is_numeric() || m.dtype == ScalarType::Bool {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a real numeric dtype".into(),
            found: m.dtype,
        });
    }
    Ok(())
}

/// A list of one value (both dims) or two; `empty` is used for an empty list.
fn pair(a: &KernelArgs<'_>, i: usize, empty: Option<[i64; 2]>, name: &str) -> Result<[i64; 2]> {
    let l = a.int_list(i)?;
    match l.len() {
        0 => empty.ok_or_else(|| Error::invalid(alloc::format!("{name} must not be empty"))),
        1 => Ok([l.get(0)?, l.get(0)?]),
        2 => Ok([l.get(0)?, l.get(1)?]),
        n => Err(Error::invalid(alloc::format!(
            "{name} must have 1 or 2 entries, found {n}"
        ))),
    }
}

/// ATen's `pooling_output_shape`, in i128: window parameters are arbitrary positive i64s,
/// whose sums and products overflow i64.
fn out_len(inp: usize, k: usize, p: usize, s: usize, d: usize, ceil: bool) -> Result<usize> {
    let (inp, k, p, s, d) = (inp as i128, k as i128, p as i128, s as i128, d as i128);
    let num = inp + 2 * p - d * (k - 1) - 1 + if ceil { s - 1 } else { 0 };
    let mut o = num.div_euclid(s) + 1;
    if ceil && (o - 1) * s >= inp + p {
        o -= 1;
    }
    if o < 1 {
        return Err(Error::shape(alloc::format!(
            "pooling: input size {inp} with kernel {k}, stride {s}, padding {p}, dilation {d} gives output size {o}"
        )));
    }
    usize::try_from(o)
        .map_err(|_| Error::shape(alloc::format!("pooling: output size {o} is too large")))
}

/// The input positions a dilated max-pool window reads along one axis: `first` (the
/// window start moved right past the padding by whole dilation steps, as ATen does) up
/// to `end` (exclusive, clamped to the input). `first` may be at or past `end`: an empty
/// window.
#[derive(Clone, Copy, Debug)]
struct Span {
    first: i128,
    end: i128,
    /// Positions read: `ceil((end - first) / step)`.
    count: u64,
}

fn dilated_span(o: usize, k: usize, s: usize, p: usize, d: usize, len: usize) -> Span {
    let (k, s, p, d) = (k as i128, s as i128, p as i128, d as i128);
    let start = o as i128 * s - p;
    if d == 1 {
        // No dilation: no i128 divisions (a library call each) per output.
        let end = (start + k).min(len as i128);
        let first = start.max(0);
        let count = if first < end { (end - first) as u64 } else { 0 };
        return Span { first, end, count };
    }
    let end = (start + (k - 1) * d + 1).min(len as i128);
    // ATen's `while (start < 0) start += dilation`, in one step.
    let first = if start < 0 {
        start + (-start + d - 1) / d * d
    } else {
        start
    };
    let count = if first < end {
        ((end - first - 1) / d + 1) as u64
    } else {
        0
    };
    Span { first, end, count }
}

impl Span {
    /// `[first, end)` as input indices (empty when the window is).
    #[inline]
    fn bounds(self) -> (usize, usize) {
        if self.first < self.end {
            (self.first as usize, self.end as usize)
        } else {
            (0, 0)
        }
    }

    /// The positions, in order, as input indices.
    fn iter(self, step: usize) -> impl Iterator<Item = usize> {
        let (a, b) = if self.first < self.end {
            (self.first as usize, self.end as usize)
        } else {
            (0, 0)
        };
        (a..b).step_by(step)
    }
}

/// A plain (undilated) window along one axis: `[start, end)` before clamping, in i128,
/// as ATen's avg pool computes it.
fn avg_span(o: usize, k: usize, s: usize, p: usize, len: usize) -> (i128, i128) {
    let start = o as i128 * s as i128 - p as i128;
    let end = (start + k as i128).min(len as i128 + p as i128);
    (start, end)
}

struct Win {
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
}

fn window(a: &KernelArgs<'_>, ki: usize, si: usize, pi: usize, di: Option<usize>) -> Result<Win> {
    let k = pair(a, ki, None, "kernel_size")?;
    let s = pair(a, si, Some(k), "stride")?;
    let p = pair(a, pi, None, "padding")?;
    let d = match di {
        Some(i) => pair(a, i, None, "dilation")?,
        None => [1, 1],
    };
    for q in 0..2 {
        if k[q] <= 0 || s[q] <= 0 || d[q] <= 0 || p[q] < 0 {
            return Err(Error::invalid(alloc::format!(
                "pooling: kernel {k:?}, stride {s:?} and dilation {d:?} must be positive, padding {p:?} non-negative"
            )));
        }
        if p[q] > k[q] / 2 {
            return Err(Error::invalid(alloc::format!(
                "pooling: padding {p:?} must be at most half the kernel size {k:?}"
            )));
        }
    }
    let u = |v: [i64; 2]| -> Result<[usize; 2]> {
        let c = |x: i64| {
            usize::try_from(x).map_err(|_| {
                Error::invalid(alloc::format!("pooling: window parameter {x} is too large"))
            })
        };
        Ok([c(v[0])?, c(v[1])?])
    };
    Ok(Win {
        k: u(k)?,
        s: u(s)?,
        p: u(p)?,
        d: u(d)?,
    })
}

fn out_shape(rank: usize, n: usize, c: usize, oh: usize, ow: usize) -> ptero_core::Dims {
    let dims: &[usize] = if rank == 3 {
        &[c, oh, ow]
    } else {
        &[n, c, oh, ow]
    };
    ptero_core::Dims::from_slice(dims).unwrap_or_default()
}

fn max_pool_out(a: &mut KernelArgs<'_>) -> Result<()> {
    max_pool(a, true)
}

/// `ptero::max_pool2d.out(self, kernel_size, stride, padding, dilation, ceil_mode, *,
/// out)`: `max_pool2d_with_indices` without the indices, which load-time fusion
/// substitutes when nothing reads them (a CNN's stem): half the bytes written, and no
/// index kept per tap.
fn max_pool_values_out(a: &mut KernelArgs<'_>) -> Result<()> {
    max_pool(a, false)
}

fn max_pool(a: &mut KernelArgs<'_>, with_idx: bool) -> Result<()> {
    a.expect_len(if with_idx { 8 } else { 7 })?;
    check_input(a, "max_pool2d")?;
    let w = window(a, 1, 2, 3, Some(4))?;
    let ceil = a.bool(5)?;
    let xm = a.meta(0)?;
    let dtype = xm.dtype;
    let rank = xm.dim();
    let ([n, c, h, wd], xst) = nchw(xm.sizes(), xm.strides());
    let oh = out_len(h, w.k[0], w.p[0], w.s[0], w.d[0], ceil)?;
    let ow = out_len(wd, w.k[1], w.p[1], w.s[1], w.d[1], ceil)?;
    if a.meta(6)?.dtype != dtype {
        return Err(Error::Dtype {
            arg: 6,
            expected: alloc::string::ToString::to_string(dtype.name()),
            found: a.meta(6)?.dtype,
        });
    }
    if with_idx && a.meta(7)?.dtype != ScalarType::Long {
        return Err(Error::Dtype {
            arg: 7,
            expected: "int64 indices".into(),
            found: a.meta(7)?.dtype,
        });
    }
    let shape = out_shape(rank, n, c, oh, ow);
    a.resize(6, &shape)?;
    let (_, ost) = nchw(&shape, a.meta(6)?.strides());
    let ist = if with_idx {
        a.resize(7, &shape)?;
        nchw(&shape, a.meta(7)?.strides()).1
    } else {
        [c * oh * ow, oh * ow, ow, 1]
    };
    let xt = a.tensor(0)?;
    let mut ot = a.out(6)?;
    let mut it = if with_idx { Some(a.out(7)?) } else { None };
    let is_float = dtype.is_float();
    // Windows can be as large as the input (a huge kernel with half of it as padding), so
    // the work is charged and the deadline polled as it goes.
    let mut meter = Meter::charging(a);
    let wd_i = wd as i128;
    let contiguous = |st: &[usize; 4]| *st == [c * oh * ow, oh * ow, ow, 1];
    // Small windows (the usual 2 x 2, 3 x 3): planes split over threads, the work charged
    // up front. Larger ones take the metered path below, which polls the interrupt.
    let small = w.k[0].saturating_mul(w.k[1]) <= 64;
    if dtype == ScalarType::Float && small && contiguous(&ost) && contiguous(&ist) && oh * ow > 0 {
        let x: &[f32] = xt.data()?;
        let o: &mut [f32] = ot.data()?;
        let per_out = (w.k[0] as u64)
            .saturating_mul(w.k[1] as u64)
            .saturating_add(1);
        meter.add(((n * c * oh * ow) as u64).saturating_mul(per_out))?;
        let failed = core::sync::atomic::AtomicBool::new(false);
        let plane = oh * ow;
        let arena = a.arena();
        let phases = max_phases(&w, (h, wd, oh, ow));
        // Planes `r` into `o` (and `idx`, empty without indices).
        let planes = |r: core::ops::Range<usize>, o: &mut [f32], idx: &mut [i64]| {
            let idx_of = |idx: &mut [i64], k: usize| -> core::ops::Range<usize> {
                if idx.is_empty() {
                    0..0
                } else {
                    k * plane..(k + 1) * plane
                }
            };
            // Vector path: each plane copied into its padded phases in scratch.
            let vector = phases.zip(arena).and_then(|(ph, ar)| {
                let need = ph.floats()?;
                ar.with(need, |buf| {
                    for (k, p) in r.clone().enumerate() {
                        let xb = (p / c) * xst[0] + (p % c) * xst[1];
                        let (rs, cs) = (xst[2], xst[3]);
                        let last = xb + (h - 1) * rs + (wd - 1) * cs;
                        if last >= x.len() {
                            failed.store(true, core::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                        let buf = &mut buf[..need];
                        phase_planes(x, xb, (rs, cs), &ph, f32::NEG_INFINITY, &|_, _| true, buf);
                        let ir = idx_of(idx, k);
                        ptero_simd::dispatch(MaxPhases {
                            ph: &ph,
                            buf,
                            w: &w,
                            o: &mut o[k * plane..(k + 1) * plane],
                            idx: &mut idx[ir],
                            oh,
                            ow,
                        });
                    }
                })
            });
            if vector.is_some() {
                return;
            }
            for (k, p) in r.enumerate() {
                let xb = (p / c) * xst[0] + (p % c) * xst[1];
                let ir = idx_of(idx, k);
                let ok = max_plane_f32(
                    x,
                    xb,
                    &xst,
                    &mut o[k * plane..(k + 1) * plane],
                    &mut idx[ir],
                    (h, wd, oh, ow),
                    &w,
                );
                if !ok {
                    failed.store(true, core::sync::atomic::Ordering::Relaxed);
                }
            }
        };
        let whole = match it.as_mut() {
            Some(it) => {
                let idx: &mut [i64] = it.data()?;
                ptero_simd::for_each_chunk_pair(
                    a.parallel(),
                    o,
                    idx,
                    (plane, plane),
                    &|r, o, idx| planes(r, o, idx),
                )
            }
            None => {
                ptero_simd::for_each_chunk_by(a.parallel(), o, plane, &|r, o| {
                    planes(r.start / plane..r.end / plane, o, &mut [])
                });
                true
            }
        };
        if failed.into_inner() || !whole {
            return Err(Error::OutOfBounds(
                "max_pool2d: view exceeds its tensor".into(),
            ));
        }
        return Ok(());
    }
    if dtype == ScalarType::Float {
        // Typed slices: the generic loop below converts every element through f64.
        let x: &[f32] = xt.data()?;
        let o: &mut [f32] = ot.data()?;
        let mut idx: Option<&mut [i64]> = match it.as_mut() {
            Some(t) => Some(t.data()?),
            None => None,
        };
        let oob = || Error::OutOfBounds("max_pool2d: view exceeds its tensor".into());
        // Column windows are the same for every row and channel: computed once per block
        // of 256 output columns, kept on the stack.
        const BLOCK: usize = 256;
        let mut spans = [dilated_span(0, 1, 1, 0, 1, 1); BLOCK];
        for ox0 in (0..ow).step_by(BLOCK) {
            let bw = BLOCK.min(ow - ox0);
            for (j, sp) in spans.iter_mut().enumerate().take(bw) {
                *sp = dilated_span(ox0 + j, w.k[1], w.s[1], w.p[1], w.d[1], wd);
            }
            let row_work: u64 = spans[..bw].iter().map(|s| s.count.saturating_add(1)).sum();
            for ni in 0..n {
                for ci in 0..c {
                    let xb = ni * xst[0] + ci * xst[1];
                    for oy in 0..oh {
                        let ys = dilated_span(oy, w.k[0], w.s[0], w.p[0], w.d[0], h);
                        meter.add(row_work.saturating_mul(ys.count.max(1)))?;
                        let orow = ni * ost[0] + ci * ost[1] + oy * ost[2];
                        let irow = ni * ist[0] + ci * ist[1] + oy * ist[2];
                        for (j, xs) in spans[..bw].iter().enumerate() {
                            let ox = ox0 + j;
                            let mut best_i = ys.first * wd_i + xs.first;
                            let mut best = f32::NEG_INFINITY;
                            // Plain counted loops: `step_by` iterators cost more than the
                            // comparisons of a 3 x 3 window.
                            let (yr, xr) = (ys.bounds(), xs.bounds());
                            let mut y = yr.0;
                            'win: while y < yr.1 {
                                let row = xb + y * xst[2];
                                let mut xx = xr.0;
                                while xx < xr.1 {
                                    let v = *x.get(row + xx * xst[3]).ok_or_else(oob)?;
                                    if v > best || v.is_nan() {
                                        best = v;
                                        best_i = (y * wd + xx) as i128;
                                        if v.is_nan() {
                                            break 'win;
                                        }
                                    }
                                    xx += w.d[1];
                                }
                                y += w.d[0];
                            }
                            *o.get_mut(orow + ox * ost[3]).ok_or_else(oob)? = best;
                            if let Some(idx) = idx.as_deref_mut() {
                                *idx.get_mut(irow + ox * ist[3]).ok_or_else(oob)? =
                                    best_i.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
                            }
                        }
                    }
                }
            }
        }
        return Ok(());
    }
    for ni in 0..n {
        for ci in 0..c {
            let xb = ni * xst[0] + ci * xst[1];
            for oy in 0..oh {
                let ys = dilated_span(oy, w.k[0], w.s[0], w.p[0], w.d[0], h);
                for ox in 0..ow {
                    let xs = dilated_span(ox, w.k[1], w.s[1], w.p[1], w.d[1], wd);
                    meter.add(ys.count.saturating_mul(xs.count).saturating_add(1))?;
                    // An empty window reports its (adjusted) start, as ATen does.
                    let mut best_i = ys.first * wd_i + xs.first;
                    let mut best_f = f64::NEG_INFINITY;
                    let mut best_n = i64::MIN;
                    let mut first = true;
                    'window: for y in ys.iter(w.d[0]) {
                        for x in xs.iter(w.d[1]) {
                            let off = xb + y * xst[2] + x * xst[3];
                            if is_float {
                                let v = load_f64(xt.bytes, dtype, off);
                                if v > best_f || v.is_nan() {
                                    best_f = v;
                                    best_i = (y * wd + x) as i128;
                                    if v.is_nan() {
                                        break 'window;
                                    }
                                }
                            } else {
                                let v = load_i64(xt.bytes, dtype, off);
                                if v > best_n || first {
                                    best_n = v;
                                    best_i = (y * wd + x) as i128;
                                }
                            }
                            first = false;
                        }
                    }
                    let oo = ni * ost[0] + ci * ost[1] + oy * ost[2] + ox * ost[3];
                    if is_float {
                        store_f64(&mut *ot.bytes, dtype, oo, best_f);
                    } else {
                        store_i64(&mut *ot.bytes, dtype, oo, best_n);
                    }
                    if let Some(it) = it.as_mut() {
                        let io = ni * ist[0] + ci * ist[1] + oy * ist[2] + ox * ist[3];
                        let best_i = best_i.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
                        store_i64(&mut *it.bytes, ScalarType::Long, io, best_i);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Max pooling of one contiguous output plane (values and flat input indices); `false`
/// when a window reads outside `x`.
/// Scratch floats one plane's phases may take in the vector max-pool path.
const MAX_PHASE_FLOATS: usize = 1 << 16;

/// The phase geometry of the vector max-pool path, when it applies: every window inside
/// the padded input (not so for some ceil-mode windows), indices exact in f32, and the
/// copy small enough.
fn max_phases(w: &Win, (h, wd, oh, ow): (usize, usize, usize, usize)) -> Option<Phases> {
    if oh == 0 || ow == 0 || h == 0 || wd == 0 {
        return None;
    }
    let inside = |o: usize, i: usize, k: usize, s: usize, p: usize, d: usize| {
        (o - 1) * s + (k - 1) * d < i + 2 * p
    };
    let ok = inside(oh, h, w.k[0], w.s[0], w.p[0], w.d[0])
        && inside(ow, wd, w.k[1], w.s[1], w.p[1], w.d[1])
        && (h + 2 * w.p[0]) * (wd + 2 * w.p[1]) < 1 << 24;
    let ph = Phases {
        ih: h,
        iw: wd,
        pad: w.p,
        stride: w.s,
    };
    (ok && ph.floats()? <= MAX_PHASE_FLOATS).then_some(ph)
}

/// One plane of max_pool2d from its padded phases (padding -inf, which never wins):
/// vectors of outputs along a row, one contiguous read per tap, branch-free selects.
struct MaxPhases<'a> {
    ph: &'a Phases,
    buf: &'a [f32],
    w: &'a Win,
    o: &'a mut [f32],
    idx: &'a mut [i64],
    oh: usize,
    ow: usize,
}

impl SimdOp for MaxPhases<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        if self.idx.is_empty() {
            self.go::<S, false>(s)
        } else {
            self.go::<S, true>(s)
        }
    }
}

impl MaxPhases<'_> {
    /// With `IDX`, the indices too (`idx` as long as `o`).
    #[inline(always)]
    fn go<S: Simd, const IDX: bool>(self, s: S) {
        let (w, l) = (self.w, S::LANES);
        let (hq, wq) = self.ph.dims();
        let (h, wd) = (self.ph.ih, self.ph.iw);
        let mut lane = [0.0f32; 64];
        for (i, v) in lane.iter_mut().enumerate() {
            *v = (i * w.s[1]) as f32;
        }
        let step = s.load(&lane);
        let mut init = [0.0f32; 64];
        let mut tmp = [0.0f32; 64];
        // Offsets of each horizontal tap in the phases (the same for every output), and of
        // each vertical tap's row (per output row): divisions kept out of the inner loop.
        let kw = w.k[1].min(64);
        let mut colk = [0usize; 64];
        for (kx, c) in colk.iter_mut().enumerate().take(kw) {
            let xp = kx * w.d[1];
            *c = (xp % w.s[1]) * hq * wq + xp / w.s[1];
        }
        let kh = w.k[0].min(64);
        let mut rowk = [None::<(usize, isize)>; 64];
        for oy in 0..self.oh {
            let ys = dilated_span(oy, w.k[0], w.s[0], w.p[0], w.d[0], h);
            for (ky, r) in rowk.iter_mut().enumerate().take(kh) {
                let yp = oy * w.s[0] + ky * w.d[0];
                let iy = yp as isize - w.p[0] as isize;
                *r = (iy >= 0 && iy < h as isize)
                    .then(|| ((yp % w.s[0] * w.s[1]) * hq * wq + yp / w.s[0] * wq, iy));
            }
            // Small: the plane has fewer than 2^24 padded elements.
            let row_first = ys.first as i64 * wd as i64;
            let mut ox0 = 0;
            while ox0 < self.ow {
                let n = l.min(self.ow - ox0);
                // An empty window reports its (adjusted) start, as ATen does.
                for (j, v) in init.iter_mut().enumerate().take(if IDX { n } else { 0 }) {
                    let start = ((ox0 + j) * w.s[1]) as isize - w.p[1] as isize;
                    let first = if start < 0 {
                        start + ((-start) as usize).div_ceil(w.d[1]) as isize * w.d[1] as isize
                    } else {
                        start
                    };
                    *v = (row_first + first as i64) as f32;
                }
                let mut best = s.splat(f32::NEG_INFINITY);
                let mut bi = if IDX { s.load(&init) } else { s.zero() };
                for &(row, iy) in rowk[..kh].iter().flatten() {
                    let row = row + ox0;
                    for (kx, &col) in colk[..kw].iter().enumerate() {
                        let xp = kx * w.d[1];
                        let at = row + col;
                        let v = if n == l {
                            s.load(&self.buf[at..])
                        } else {
                            s.load_part(&self.buf[at..at + n])
                        };
                        let take =
                            s.or_mask(s.lt(best, v), s.and_mask(s.is_nan(v), s.eq(best, best)));
                        best = s.select(take, v, best);
                        if IDX {
                            let first =
                                iy * wd as isize + (ox0 * w.s[1] + xp) as isize - w.p[1] as isize;
                            bi = s.select(take, s.add(s.splat(first as f32), step), bi);
                        }
                    }
                }
                let at = oy * self.ow + ox0;
                s.store_part(&mut self.o[at..at + n], best);
                if !IDX {
                    ox0 += n;
                    continue;
                }
                // Indices are below 2^24 (exact in f32): converted to i32 in the vector,
                // carried through f32 lanes as bits, and widened.
                s.store_part(&mut tmp[..n], s.cast_f(s.to_i32(bi)));
                for (d, v) in self.idx[at..at + n].iter_mut().zip(&tmp) {
                    *d = v.to_bits() as i32 as i64;
                }
                ox0 += n;
            }
        }
    }
}

fn max_plane_f32(
    x: &[f32],
    xb: usize,
    xst: &[usize; 4],
    o: &mut [f32],
    idx: &mut [i64],
    dims: (usize, usize, usize, usize),
    w: &Win,
) -> bool {
    if idx.is_empty() {
        max_plane_f32_as::<false>(x, xb, xst, o, idx, dims, w)
    } else {
        max_plane_f32_as::<true>(x, xb, xst, o, idx, dims, w)
    }
}

/// [`max_plane_f32`], with the indices when `IDX` (else `idx` is empty and not written).
fn max_plane_f32_as<const IDX: bool>(
    x: &[f32],
    xb: usize,
    xst: &[usize; 4],
    o: &mut [f32],
    idx: &mut [i64],
    (h, wd, oh, ow): (usize, usize, usize, usize),
    w: &Win,
) -> bool {
    if h == 0 || wd == 0 {
        return false;
    }
    // The last element of the plane must exist: then every read below does.
    let last = (h - 1)
        .checked_mul(xst[2])
        .and_then(|v| v.checked_add((wd - 1).checked_mul(xst[3])?))
        .and_then(|v| v.checked_add(xb));
    if last.is_none_or(|l| l >= x.len()) {
        return false;
    }
    let (s1, p1, d1) = (w.s[1], w.p[1] as isize, w.d[1]);
    let wd_i = wd as i128;
    for oy in 0..oh {
        let ys = dilated_span(oy, w.k[0], w.s[0], w.p[0], w.d[0], h);
        let orow = &mut o[oy * ow..(oy + 1) * ow];
        let irow = if IDX {
            &mut idx[oy * ow..(oy + 1) * ow]
        } else {
            &mut []
        };
        // An empty window reports its (adjusted) start, as ATen does.
        let row_first = ys.first * wd_i;
        orow.fill(f32::NEG_INFINITY);
        for (ox, i) in irow.iter_mut().enumerate() {
            let start = (ox * s1) as isize - p1;
            let first = if start < 0 {
                start + ((-start) as usize).div_ceil(d1) as isize * d1 as isize
            } else {
                start
            };
            *i = (row_first + first as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        }
        // Tap by tap over the whole row, in the window's order, branch-free: the first
        // maximum wins, and the first NaN stays.
        let (y0, y1) = ys.bounds();
        let mut y = y0;
        while y < y1 {
            let row = xb + y * xst[2];
            for kx in 0..w.k[1] {
                let off = (kx * d1) as isize - p1;
                // Outputs whose column ox * s1 + off is inside [0, wd).
                let lo = if off < 0 {
                    ((-off) as usize).div_ceil(s1)
                } else {
                    0
                };
                let hi = if wd as isize - off <= 0 {
                    0
                } else {
                    (((wd as isize - 1 - off) / s1 as isize) as usize + 1).min(ow)
                };
                for ox in lo..hi.max(lo) {
                    let ix = ((ox * s1) as isize + off) as usize;
                    let v = x[row + ix * xst[3]];
                    let b = orow[ox];
                    let take = v > b || (v.is_nan() && !b.is_nan());
                    orow[ox] = if take { v } else { b };
                    if IDX {
                        irow[ox] = if take { (y * wd + ix) as i64 } else { irow[ox] };
                    }
                }
            }
            y += w.d[0];
        }
    }
    true
}

fn avg_pool_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(8)?;
    check_input(a, "avg_pool2d")?;
    let w = window(a, 1, 2, 3, None)?;
    let ceil = a.bool(4)?;
    let include_pad = a.bool(5)?;
    let divisor = a.opt_int(6)?;
    if divisor == Some(0) {
        return Err(Error::invalid("avg_pool2d: divisor_override must not be 0"));
    }
    let xm = a.meta(0)?;
    let dtype = xm.dtype;
    if a.meta(7)?.dtype != dtype {
        return Err(Error::Dtype {
            arg: 7,
            expected: alloc::string::ToString::to_string(dtype.name()),
            found: a.meta(7)?.dtype,
        });
    }
    let rank = xm.dim();
    let ([n, c, h, wd], xst) = nchw(xm.sizes(), xm.strides());
    let oh = out_len(h, w.k[0], w.p[0], w.s[0], 1, ceil)?;
    let ow = out_len(wd, w.k[1], w.p[1], w.s[1], 1, ceil)?;
    let shape = out_shape(rank, n, c, oh, ow);
    a.resize(7, &shape)?;
    let (_, ost) = nchw(&shape, a.meta(7)?.strides());
    let xt = a.tensor(0)?;
    let ot = a.out(7)?;
    let is_float = dtype.is_float();
    let mut meter = Meter::charging(a);
    for ni in 0..n {
        for ci in 0..c {
            let xb = ni * xst[0] + ci * xst[1];
            for oy in 0..oh {
                let (ys, ye) = avg_span(oy, w.k[0], w.s[0], w.p[0], h);
                let (y0, y1) = (
                    ys.clamp(0, h as i128) as usize,
                    ye.clamp(0, h as i128) as usize,
                );
                for ox in 0..ow {
                    let (xs, xe) = avg_span(ox, w.k[1], w.s[1], w.p[1], wd);
                    let (x0, x1) = (
                        xs.clamp(0, wd as i128) as usize,
                        xe.clamp(0, wd as i128) as usize,
                    );
                    let (ny, nx) = (y1.saturating_sub(y0), x1.saturating_sub(x0));
                    meter.add((ny as u64).saturating_mul(nx as u64).saturating_add(1))?;
                    // i128: window extents are up to 2^63 each.
                    let factor: i128 = match divisor {
                        Some(d) => d as i128,
                        None if include_pad => (ye - ys) * (xe - xs),
                        None => ny as i128 * nx as i128,
                    };
                    let oo = ni * ost[0] + ci * ost[1] + oy * ost[2] + ox * ost[3];
                    if is_float {
                        let mut sum = 0.0;
                        for y in y0..y1 {
                            for x in x0..x1 {
                                sum += load_f64(xt.bytes, dtype, xb + y * xst[2] + x * xst[3]);
                            }
                        }
                        store_f64(&mut *ot.bytes, dtype, oo, sum / factor as f64);
                    } else {
                        let mut sum = 0i64;
                        for y in y0..y1 {
                            for x in x0..x1 {
                                sum = sum.wrapping_add(load_i64(
                                    xt.bytes,
                                    dtype,
                                    xb + y * xst[2] + x * xst[3],
                                ));
                            }
                        }
                        // In i128 `MIN / -1` cannot overflow; the cast wraps like C++.
                        let v = if factor == 0 {
                            0
                        } else {
                            (sum as i128 / factor) as i64
                        };
                        store_i64(&mut *ot.bytes, dtype, oo, v);
                    }
                }
            }
        }
    }
    Ok(())
}

fn adaptive_avg_pool_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    check_input(a, "adaptive_avg_pool2d")?;
    let os = pair(a, 1, None, "output_size")?;
    if os[0] < 0 || os[1] < 0 {
        return Err(Error::invalid(alloc::format!(
            "adaptive_avg_pool2d: negative output size {os:?}"
        )));
    }
    let (oh, ow) = (os[0] as usize, os[1] as usize);
    let xm = a.meta(0)?;
    let dtype = xm.dtype;
    if !dtype.is_float() {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a floating dtype".into(),
            found: dtype,
        });
    }
    if a.meta(2)?.dtype != dtype {
        return Err(Error::Dtype {
            arg: 2,
            expected: alloc::string::ToString::to_string(dtype.name()),
            found: a.meta(2)?.dtype,
        });
    }
    let rank = xm.dim();
    let ([n, c, h, wd], xst) = nchw(xm.sizes(), xm.strides());
    let shape = out_shape(rank, n, c, oh, ow);
    a.resize(2, &shape)?;
    let (_, ost) = nchw(&shape, a.meta(2)?.strides());
    let xt = a.tensor(0)?;
    let ot = a.out(2)?;
    // u128: `o * inp` can pass 2^64 for huge output sizes of an empty batch.
    let start = |o: usize, out: usize, inp: usize| (o as u128 * inp as u128 / out as u128) as usize;
    let end = |o: usize, out: usize, inp: usize| {
        ((o as u128 + 1) * inp as u128).div_ceil(out as u128) as usize
    };
    let mut meter = Meter::new(a);
    for ni in 0..n {
        for ci in 0..c {
            // At least 1 per plane: empty planes still cost a step each, and a huge
            // batch of them must hit the work limit, not spin.
            meter.add(
                (h as u64)
                    .saturating_mul(wd as u64)
                    .saturating_add((oh * ow) as u64)
                    .saturating_add(1),
            )?;
            let xb = ni * xst[0] + ci * xst[1];
            for oy in 0..oh {
                let (y0, y1) = (start(oy, oh, h), end(oy, oh, h));
                for ox in 0..ow {
                    let (x0, x1) = (start(ox, ow, wd), end(ox, ow, wd));
                    let mut sum = 0.0;
                    for y in y0..y1 {
                        for x in x0..x1 {
                            sum += load_f64(xt.bytes, dtype, xb + y * xst[2] + x * xst[3]);
                        }
                    }
                    let cnt = ((y1 - y0) * (x1 - x0)) as f64;
                    let oo = ni * ost[0] + ci * ost[1] + oy * ost[2] + ox * ost[3];
                    store_f64(&mut *ot.bytes, dtype, oo, sum / cnt);
                }
            }
        }
    }
    Ok(())
}

/// `max_pool2d_with_indices_backward.grad_input(grad_output, self, kernel_size, stride,
/// padding, dilation, ceil_mode, indices, *, grad_input)`: each output gradient is added
/// to the input position its index names (`h * W + w` within its plane).
fn max_pool_backward(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(9)?;
    check_input(a, "max_pool2d_with_indices_backward")?;
    let w = window(a, 2, 3, 4, Some(5))?;
    let ceil = a.bool(6)?;
    let (gm, xm, im) = (*a.meta(0)?, *a.meta(1)?, *a.meta(7)?);
    let dtype = xm.dtype;
    if !dtype.is_float() {
        return Err(Error::Dtype {
            arg: 1,
            expected: "a floating dtype".into(),
            found: dtype,
        });
    }
    for (arg, t) in [(0, gm.dtype), (8, a.meta(8)?.dtype)] {
        if t != dtype {
            return Err(Error::Dtype {
                arg,
                expected: dtype.name().into(),
                found: t,
            });
        }
    }
    if im.dtype != ScalarType::Long {
        return Err(Error::Dtype {
            arg: 7,
            expected: "int64 indices".into(),
            found: im.dtype,
        });
    }
    let rank = xm.dim();
    let ([n, c, h, wd], _) = nchw(xm.sizes(), xm.strides());
    let oh = out_len(h, w.k[0], w.p[0], w.s[0], w.d[0], ceil)?;
    let ow = out_len(wd, w.k[1], w.p[1], w.s[1], w.d[1], ceil)?;
    let shape = out_shape(rank, n, c, oh, ow);
    if gm.sizes() != shape.as_slice() || im.sizes() != shape.as_slice() {
        return Err(Error::shape(alloc::format!(
            "max_pool2d_with_indices_backward: grad_output {:?} and indices {:?} must have the pooled shape {shape:?}",
            gm.sizes(),
            im.sizes()
        )));
    }
    a.resize(8, xm.sizes())?;
    let (_, ost) = nchw(xm.sizes(), a.meta(8)?.strides());
    let (_, gst) = nchw(gm.sizes(), gm.strides());
    let (_, ist) = nchw(im.sizes(), im.strides());
    let g = a.tensor(0)?;
    let it = a.tensor(7)?;
    let o = a.out(8)?;
    let ob = &mut *o.bytes;
    let mut meter = Meter::new(a);
    // Zero the planes first (only the indexed positions receive gradient).
    for ni in 0..n {
        for ci in 0..c {
            meter.add(
                (h as u64)
                    .saturating_mul(wd as u64)
                    .saturating_add((oh * ow) as u64),
            )?;
            for y in 0..h {
                for x in 0..wd {
                    store_f64(
                        ob,
                        dtype,
                        ni * ost[0] + ci * ost[1] + y * ost[2] + x * ost[3],
                        0.0,
                    );
                }
            }
        }
    }
    for ni in 0..n {
        for ci in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let io = ni * ist[0] + ci * ist[1] + oy * ist[2] + ox * ist[3];
                    let idx = load_i64(it.bytes, ScalarType::Long, io);
                    if idx < 0 || idx >= (h * wd) as i64 {
                        return Err(Error::invalid(alloc::format!(
                            "max_pool2d_with_indices_backward: index {idx} is outside the {h}x{wd} plane"
                        )));
                    }
                    let (y, x) = (idx as usize / wd, idx as usize % wd);
                    let oo = ni * ost[0] + ci * ost[1] + y * ost[2] + x * ost[3];
                    let go = ni * gst[0] + ci * gst[1] + oy * gst[2] + ox * gst[3];
                    let v = load_f64(ob, dtype, oo) + load_f64(g.bytes, dtype, go);
                    store_f64(ob, dtype, oo, v);
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register(
        "aten::max_pool2d_with_indices_backward.grad_input",
        max_pool_backward,
    );
    reg.register_prepared("aten::max_pool2d_with_indices.out", max_pool_out, |_| {
        Ok(Prepared {
            state: None,
            scratch_floats: MAX_PHASE_FLOATS,
        })
    });
    reg.register_prepared("ptero::max_pool2d.out", max_pool_values_out, |_| {
        Ok(Prepared {
            state: None,
            scratch_floats: MAX_PHASE_FLOATS,
        })
    });
    reg.register("aten::avg_pool2d.out", avg_pool_out);
    reg.register("aten::_adaptive_avg_pool2d.out", adaptive_avg_pool_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    fn grid() -> Vec<f64> {
        // 1x1x4x5, distinct values.
        (0..20).map(|i| ((i * 7) % 20) as f64).collect()
    }

    /// The f32 fast path (planes over threads) against the generic path (f64), on values
    /// with ties, -inf and NaN, over strides, padding, dilation and ceil mode.
    #[test]
    fn max_pool_f32_matches_generic() {
        let (n, c, h, w) = (2, 3, 9, 11);
        let x: Vec<f64> = (0..n * c * h * w)
            .map(|i| match (i * 7919) % 37 {
                0 => f64::NAN,
                1 => f64::NEG_INFINITY,
                v => (v % 5) as f64,
            })
            .collect();
        for (k, s, p, d, ceil) in [
            (3, 2, 1, 1, false),
            (2, 2, 0, 1, true),
            (3, 1, 1, 2, false),
            (3, 3, 1, 1, true),
            (4, 2, 2, 1, true),
        ] {
            let mut got = Vec::new();
            for dtype in [Float, Double] {
                let o = |i: usize| {
                    let span = i + 2 * p - d * (k - 1) - 1;
                    let q = if ceil { span.div_ceil(s) } else { span / s } + 1;
                    // The last window must start inside the input or left padding.
                    if ceil && (q - 1) * s >= i + p {
                        q - 1
                    } else {
                        q
                    }
                };
                let shape = vec![n, c, o(h), o(w)];
                let out = run_op(
                    "aten::max_pool2d_with_indices.out",
                    vec![
                        Arg::T(OwnedTensor::from_f64(dtype, &[n, c, h, w], &x)),
                        Arg::Ints(vec![k as i64]),
                        Arg::Ints(vec![s as i64]),
                        Arg::Ints(vec![p as i64]),
                        Arg::Ints(vec![d as i64]),
                        Arg::Bool(ceil),
                        Arg::Out(dtype, shape.clone()),
                        Arg::Out(Long, shape),
                    ],
                )
                .unwrap();
                got.push((out.tensors[0].to_f64(), out.tensors[1].to_f64()));
                // The values-only kernel (load-time fusion's, when nothing reads the
                // indices), in both layouts: the same values.
                for order in [None, Some(&[0u8, 2, 3, 1][..])] {
                    let mut xt = OwnedTensor::from_f64(dtype, &[n, c, h, w], &x);
                    if let Some(o) = order {
                        xt = xt.with_dim_order(o);
                    }
                    let vals = run_op(
                        "ptero::max_pool2d.out",
                        vec![
                            Arg::T(xt),
                            Arg::Ints(vec![k as i64]),
                            Arg::Ints(vec![s as i64]),
                            Arg::Ints(vec![p as i64]),
                            Arg::Ints(vec![d as i64]),
                            Arg::Bool(ceil),
                            Arg::Out(dtype, vec![n, c, o(h), o(w)]),
                        ],
                    )
                    .unwrap();
                    assert_eq!(vals.tensors.len(), 1);
                    assert_close(&vals.tensors[0].to_f64(), &got[0].0, 0.0, 0.0);
                }
            }
            assert_close(&got[0].0, &got[1].0, 0.0, 0.0);
            assert_eq!(
                got[0].1, got[1].1,
                "indices, k {k} s {s} p {p} d {d} ceil {ceil}"
            );
        }
    }

    #[test]
    fn max_pool() {
        let x = grid();
        // x rows: [0 7 14 1 8] [15 2 9 16 3] [10 17 4 11 18] [5 12 19 6 13]
        let cases: [(
            Vec<i64>,
            Vec<i64>,
            Vec<i64>,
            Vec<i64>,
            bool,
            Vec<usize>,
            Vec<f64>,
            Vec<f64>,
        ); 3] = [
            (
                vec![2],
                vec![],
                vec![0],
                vec![1],
                false,
                vec![1, 1, 2, 2],
                vec![15., 16., 17., 19.],
                vec![5., 8., 11., 17.],
            ),
            (
                vec![2],
                vec![2],
                vec![0],
                vec![1],
                true,
                vec![1, 1, 2, 3],
                vec![15., 16., 8., 17., 19., 18.],
                vec![5., 8., 4., 11., 17., 14.],
            ),
            (
                vec![3, 3],
                vec![2],
                vec![1],
                vec![1],
                false,
                vec![1, 1, 2, 3],
                vec![15., 16., 16., 17., 19., 18.],
                vec![5., 8., 8., 11., 17., 14.],
            ),
        ];
        for (k, s, p, d, ceil, shape, want, idx) in cases {
            for order in [[0u8, 1, 2, 3], [0, 2, 3, 1]] {
                for dtype in [Float, Double, Long] {
                    let out = run_op(
                        "aten::max_pool2d_with_indices.out",
                        vec![
                            Arg::T(
                                OwnedTensor::from_f64(dtype, &[1, 1, 4, 5], &x)
                                    .with_dim_order(&order),
                            ),
                            Arg::Ints(k.clone()),
                            Arg::Ints(s.clone()),
                            Arg::Ints(p.clone()),
                            Arg::Ints(d.clone()),
                            Arg::Bool(ceil),
                            Arg::Out(dtype, shape.clone()),
                            Arg::Out(Long, shape.clone()),
                        ],
                    )
                    .unwrap();
                    assert_eq!(out.tensors[0].sizes, shape);
                    assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
                    assert_close(&out.tensors[1].to_f64(), &idx, 0.0, 0.0);
                }
            }
        }
        // Dilation 2, 3-d input, NaN wins.
        let mut xn = x.clone();
        xn[2] = f64::NAN;
        let out = run_op(
            "aten::max_pool2d_with_indices.out",
            vec![
                Arg::T(OwnedTensor::from_f64(Float, &[1, 4, 5], &xn)),
                Arg::Ints(vec![2]),
                Arg::Ints(vec![1]),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![2]),
                Arg::Bool(false),
                Arg::Out(Float, vec![1, 2, 3]),
                Arg::Out(Long, vec![1, 2, 3]),
            ],
        )
        .unwrap();
        assert_close(
            &out.tensors[0].to_f64(),
            &[f64::NAN, 17., f64::NAN, 19., 16., 19.],
            0.0,
            0.0,
        );
        assert_close(
            &out.tensors[1].to_f64(),
            &[2., 11., 2., 17., 8., 17.],
            0.0,
            0.0,
        );
        // Kernel larger than padded input; padding above half the kernel.
        for (k, p) in [(vec![6], vec![0]), (vec![2], vec![2])] {
            assert!(run_op(
                "aten::max_pool2d_with_indices.out",
                vec![
                    Arg::T(OwnedTensor::from_f64(Float, &[1, 4, 5], &x)),
                    Arg::Ints(k),
                    Arg::Ints(vec![1]),
                    Arg::Ints(p),
                    Arg::Ints(vec![1]),
                    Arg::Bool(false),
                    Arg::Out(Float, vec![1, 1, 1]),
                    Arg::Out(Long, vec![1, 1, 1]),
                ],
            )
            .is_err());
        }
    }

    #[test]
    fn avg_pool() {
        let x: Vec<f64> = (0..16).map(|i| i as f64).collect(); // 4x4
        let go =
            |k: i64, s: i64, p: i64, ceil: bool, inc: bool, div: Option<i64>, shape: Vec<usize>| {
                run_op(
                    "aten::avg_pool2d.out",
                    vec![
                        Arg::T(
                            OwnedTensor::from_f64(Float, &[1, 1, 4, 4], &x)
                                .with_dim_order(&[0, 2, 3, 1]),
                        ),
                        Arg::Ints(vec![k]),
                        Arg::Ints(vec![s]),
                        Arg::Ints(vec![p]),
                        Arg::Bool(ceil),
                        Arg::Bool(inc),
                        div.map_or(Arg::None, Arg::Int),
                        Arg::Out(Float, shape),
                    ],
                )
                .unwrap()
                .tensors[0]
                    .to_f64()
            };
        assert_close(
            &go(2, 2, 0, false, true, None, vec![1, 1, 2, 2]),
            &[2.5, 4.5, 10.5, 12.5],
            1e-6,
            0.0,
        );
        // Padding 1, kernel 3, stride 2: corners average 4 valid of 9.
        let inc = go(3, 2, 1, false, true, None, vec![1, 1, 2, 2]);
        let exc = go(3, 2, 1, false, false, None, vec![1, 1, 2, 2]);
        assert_close(&inc, &[10.0 / 9.0, 24.0 / 9.0, 51.0 / 9.0, 10.0], 1e-6, 0.0);
        assert_close(&exc, &[2.5, 4.0, 8.5, 10.0], 1e-6, 0.0);
        assert_close(
            &go(2, 2, 0, false, true, Some(1), vec![1, 1, 2, 2]),
            &[10., 18., 42., 50.],
            1e-6,
            0.0,
        );
        // Ceil mode with a partial last window (kernel 3 stride 2 on 4: 2 windows).
        let c = go(3, 2, 0, true, true, None, vec![1, 1, 2, 2]);
        assert_close(&c, &[5.0, 6.5, 11.0, 12.5], 1e-6, 0.0);
    }

    #[test]
    fn adaptive_avg_pool() {
        let x: Vec<f64> = (0..15).map(|i| i as f64).collect(); // 3x5
        let out = run_op(
            "aten::_adaptive_avg_pool2d.out",
            vec![
                Arg::T(OwnedTensor::from_f64(Double, &[1, 3, 5], &x)),
                Arg::Ints(vec![2, 3]),
                Arg::Out(Double, vec![1, 2, 3]),
            ],
        )
        .unwrap();
        // Rows [0,2) and [1,3); cols [0,2), [1,4), [3,5).
        let avg = |ys: core::ops::Range<usize>, xs: core::ops::Range<usize>| {
            let mut s = 0.0;
            let mut n = 0.0;
            for y in ys {
                for xx in xs.clone() {
                    s += x[y * 5 + xx];
                    n += 1.0;
                }
            }
            s / n
        };
        let want = vec![
            avg(0..2, 0..2),
            avg(0..2, 1..4),
            avg(0..2, 3..5),
            avg(1..3, 0..2),
            avg(1..3, 1..4),
            avg(1..3, 3..5),
        ];
        assert_close(&out.tensors[0].to_f64(), &want, 1e-12, 0.0);
        // Global pooling of a channels-last batch.
        let x2: Vec<f64> = (0..2 * 3 * 2 * 2).map(|i| i as f64).collect();
        let out = run_op(
            "aten::_adaptive_avg_pool2d.out",
            vec![
                Arg::T(
                    OwnedTensor::from_f64(Float, &[2, 3, 2, 2], &x2).with_dim_order(&[0, 2, 3, 1]),
                ),
                Arg::Ints(vec![1, 1]),
                Arg::Out(Float, vec![2, 3, 1, 1]),
            ],
        )
        .unwrap();
        let want: Vec<f64> = (0..6).map(|p| (p * 4) as f64 + 1.5).collect();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 0.0);
        // Empty spatial input is an error.
        assert!(run_op(
            "aten::_adaptive_avg_pool2d.out",
            vec![
                Arg::T(OwnedTensor::from_f64(Float, &[1, 0, 2], &[])),
                Arg::Ints(vec![1, 1]),
                Arg::Out(Float, vec![1, 1, 1]),
            ],
        )
        .is_err());
    }

    #[test]
    fn max_pool_backward() {
        let name = "aten::max_pool2d_with_indices_backward.grad_input";
        // 1x1x3x3 input, kernel 2, stride 1: 2x2 outputs; two windows pick index 4.
        let x = OwnedTensor::from_f64(Float, &[1, 1, 3, 3], &[0., 0., 0., 0., 9., 0., 0., 0., 8.]);
        let g = OwnedTensor::from_f64(Float, &[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let idx = OwnedTensor::from_f64(Long, &[1, 1, 2, 2], &[4., 4., 4., 8.]);
        let args = |x: OwnedTensor, g: OwnedTensor, idx: OwnedTensor, out: Arg| {
            vec![
                Arg::T(g),
                Arg::T(x),
                Arg::Ints(vec![2, 2]),
                Arg::Ints(vec![1, 1]),
                Arg::Ints(vec![0, 0]),
                Arg::Ints(vec![1, 1]),
                Arg::Bool(false),
                Arg::T(idx),
                out,
            ]
        };
        let want = [0., 0., 0., 0., 6., 0., 0., 0., 4.];
        let out = run_op(
            name,
            args(
                x.clone(),
                g.clone(),
                idx.clone(),
                Arg::Out(Float, vec![1, 1, 3, 3]),
            ),
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), want);
        // Channels-last everything (C = 1 still exercises the strided path) and double.
        let order = [0u8, 2, 3, 1];
        let out = run_op(
            name,
            args(
                x.with_dim_order(&order),
                g.with_dim_order(&order),
                idx.with_dim_order(&order),
                Arg::OutLike(OwnedTensor::zeros(Float, &[1, 1, 3, 3]).with_dim_order(&order)),
            ),
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), want);
        // Consistent with the forward pass on a 2-channel input.
        let v: Vec<f64> = (0..32).map(|i| ((i * 7) % 13) as f64).collect();
        let x2 = OwnedTensor::from_f64(Double, &[2, 4, 4], &v);
        let fwd = run_op(
            "aten::max_pool2d_with_indices.out",
            vec![
                Arg::T(x2.clone()),
                Arg::Ints(vec![2]),
                Arg::Ints(vec![2]),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![1]),
                Arg::Bool(false),
                Arg::Out(Double, vec![2, 2, 2]),
                Arg::Out(Long, vec![2, 2, 2]),
            ],
        )
        .unwrap();
        let ones = OwnedTensor::from_f64(Double, &[2, 2, 2], &[1.; 8]);
        let out = run_op(
            name,
            vec![
                Arg::T(ones),
                Arg::T(x2),
                Arg::Ints(vec![2]),
                Arg::Ints(vec![2]),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![1]),
                Arg::Bool(false),
                Arg::T(fwd.tensors[1].clone()),
                Arg::Out(Double, vec![2, 4, 4]),
            ],
        )
        .unwrap();
        let gi = out.tensors[0].to_f64();
        assert_eq!(gi.iter().sum::<f64>(), 8.0);
        for (p, &gv) in gi.iter().enumerate() {
            if gv == 1.0 {
                // The chosen element is the max of its 2x2 window.
                let (c, y, x) = (p / 16, (p % 16) / 4, p % 4);
                let (y0, x0) = (y / 2 * 2, x / 2 * 2);
                let m = (0..4)
                    .map(|k| v[c * 16 + (y0 + k / 2) * 4 + x0 + k % 2])
                    .fold(f64::MIN, f64::max);
                assert_eq!(v[p], m);
            }
        }
        // Bad index; wrong grad_output shape.
        let bad = OwnedTensor::from_f64(Long, &[1, 1, 2, 2], &[4., 4., 4., 9.]);
        assert!(run_op(
            name,
            args(x.clone(), g.clone(), bad, Arg::Out(Float, vec![1, 1, 3, 3]))
        )
        .is_err());
        let g3 = OwnedTensor::from_f64(Float, &[1, 1, 1, 2], &[1., 2.]);
        let i3 = OwnedTensor::from_f64(Long, &[1, 1, 1, 2], &[0., 0.]);
        assert!(run_op(name, args(x, g3, i3, Arg::Out(Float, vec![1, 1, 3, 3]))).is_err());
    }

    fn max_pool_args(x: OwnedTensor, k: i64, s: i64, p: i64, d: i64, shape: &[usize]) -> Vec<Arg> {
        vec![
            Arg::T(x),
            Arg::Ints(vec![k]),
            Arg::Ints(vec![s]),
            Arg::Ints(vec![p]),
            Arg::Ints(vec![d]),
            Arg::Bool(false),
            Arg::Out(Float, shape.to_vec()),
            Arg::Out(Long, shape.to_vec()),
        ]
    }

    fn avg_pool_args(
        x: OwnedTensor,
        k: i64,
        p: i64,
        include_pad: bool,
        shape: &[usize],
    ) -> Vec<Arg> {
        vec![
            Arg::T(x),
            Arg::Ints(vec![k]),
            Arg::Ints(vec![1]),
            Arg::Ints(vec![p]),
            Arg::Bool(false),
            Arg::Bool(include_pad),
            Arg::None,
            Arg::Out(Float, shape.to_vec()),
        ]
    }

    #[test]
    fn huge_windows() {
        let max = i64::MAX;
        let x = OwnedTensor::from_f64(Float, &[1, 1, 4, 5], &grid());
        // A kernel of i64::MAX with half of it as padding: every window covers the whole
        // input. The window start used to be moved past the padding one step at a time
        // (2^62 steps), and window extents overflowed i64.
        let out = run_op(
            "aten::max_pool2d_with_indices.out",
            max_pool_args(x.clone(), max, 1, max / 2, 1, &[1, 1, 4, 5]),
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [1, 1, 4, 5]);
        assert_eq!(out.tensors[0].to_f64(), [19.; 20]);
        assert_eq!(out.tensors[1].to_f64(), [17.; 20]);
        let out = run_op(
            "aten::avg_pool2d.out",
            avg_pool_args(x.clone(), max, max / 2, false, &[1, 1, 4, 5]),
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [9.5; 20]);
        // Counting the padding, the divisor is about 2^126: the averages vanish.
        let out = run_op(
            "aten::avg_pool2d.out",
            avg_pool_args(x.clone(), max, max / 2, true, &[1, 1, 4, 5]),
        )
        .unwrap();
        assert!(out.tensors[0].to_f64().iter().all(|v| v.abs() < 1e-30));
        // Products and sums of window parameters past i64: errors, not overflow panics.
        for (k, s, p, d) in [(max, 1, 0, max), (2, max, 1, max), (max, max, max / 2, 2)] {
            assert!(
                run_op(
                    "aten::max_pool2d_with_indices.out",
                    max_pool_args(x.clone(), k, s, p, d, &[1, 1, 4, 5]),
                )
                .is_err(),
                "{k} {s} {p} {d}"
            );
        }
        // Integer average with a divisor of -1 over i64::MIN wraps (it used to panic).
        let xi = OwnedTensor::from_f64(Long, &[1, 1, 1], &[i64::MIN as f64]);
        let out = run_op(
            "aten::avg_pool2d.out",
            vec![
                Arg::T(xi),
                Arg::Ints(vec![1]),
                Arg::Ints(vec![1]),
                Arg::Ints(vec![0]),
                Arg::Bool(false),
                Arg::Bool(true),
                Arg::Int(-1),
                Arg::Out(Long, vec![1, 1, 1]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].bytes, i64::MIN.to_le_bytes());
    }

    #[test]
    fn window_work_is_charged_and_interruptible() {
        let n = 32usize;
        let v: Vec<f64> = (0..n * n).map(|i| i as f64).collect();
        let x = OwnedTensor::from_f64(Float, &[1, 1, n, n], &v);
        let max = i64::MAX;
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        // Every one of the n*n windows reads the whole n*n input.
        let (out, charged) = run_op_with(
            "aten::max_pool2d_with_indices.out",
            max_pool_args(x.clone(), max, 1, max / 2, 1, &[1, 1, n, n]),
            ctx,
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64()[0], (n * n - 1) as f64);
        assert!(charged >= (n * n * n * n) as u64, "charged {charged}");
        for (op, args) in [
            (
                "aten::max_pool2d_with_indices.out",
                max_pool_args(x.clone(), max, 1, max / 2, 1, &[1, 1, n, n]),
            ),
            (
                "aten::avg_pool2d.out",
                avg_pool_args(x.clone(), max, max / 2, false, &[1, 1, n, n]),
            ),
        ] {
            assert_eq!(
                run_op_interrupted(op, args).unwrap_err(),
                ptero_core::Error::Interrupted,
                "{op}"
            );
        }
    }
}
