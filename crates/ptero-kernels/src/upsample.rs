//! Upsampling: nearest, nearest-exact, (bi)linear and anti-aliased bilinear, on `[N, C, W]`
//! (1-d) or `[N, C, H, W]` (2-d) inputs in any dim order, in the `vec` overloads
//! (`output_size` or `scale_factors`) and the fixed-size ones (`output_size` plus optional
//! per-dim scales).
//!
//! Source indices and weights follow ATen's `UpSample.h` exactly, including its float32
//! arithmetic for non-double inputs (nearest uses `floorf(dst * scale)`, linear uses
//! `(dst + 0.5) * scale - 0.5` clamped at 0) and the rule that a given scale factor is used
//! as `1 / scale_factor` rather than `in / out`. Each spatial axis is reduced to a table of
//! (source index, weight) taps per output position, so one loop serves every mode.

use alloc::vec::Vec;

use half::{bf16, f16};
use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::copy::ElemCopy;
use crate::util::work::Meter;
use crate::util::{load_f64, store_f64};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nearest,
    NearestExact,
    Linear { align_corners: bool },
    LinearAa { align_corners: bool },
}

/// Rounds an intermediate to the precision ATen computes in (`opmath_t`: float32 for every
/// dtype but double).
#[derive(Clone, Copy)]
struct Prec {
    double: bool,
}

impl Prec {
    #[inline]
    fn r(self, v: f64) -> f64 {
        if self.double {
            v
        } else {
            v as f32 as f64
        }
    }
}

/// ATen's `compute_scales_value`: `1 / scale` when a positive scale factor was given.
fn scales_value(p: Prec, scale: Option<f64>, inp: usize, out: usize) -> f64 {
    match scale {
        Some(s) if s > 0.0 => p.r(1.0 / s),
        _ => p.r(p.r(inp as f64) / out as f64),
    }
}

/// ATen's `area_pixel_compute_scale`.
fn area_scale(p: Prec, inp: usize, out: usize, align_corners: bool, scale: Option<f64>) -> f64 {
    if align_corners {
        if out > 1 {
            p.r(p.r((inp - 1) as f64) / (out - 1) as f64)
        } else {
            0.0
        }
    } else {
        scales_value(p, scale, inp, out)
    }
}

/// Source taps of one spatial axis: `taps` (index, weight) pairs per output position.
/// Scratch memory: two small tables per axis (`out * taps` entries).
struct Axis {
    taps: usize,
    idx: Vec<usize>,
    w: Vec<f64>,
}

impl Axis {
    fn identity(a: &KernelArgs<'_>) -> Result<Axis> {
        let mut w = a.scratch::<f64>(1)?;
        w[0] = 1.0;
        Ok(Axis {
            taps: 1,
            idx: a.scratch(1)?,
            w,
        })
    }

    /// Empty tables of `out * taps` entries, allocated within the method's memory limit.
    fn tables(a: &KernelArgs<'_>, out: usize, taps: usize) -> Result<(Vec<usize>, Vec<f64>)> {
        // An overflowing count asks for more than any limit: the same error.
        let n = out.saturating_mul(taps);
        Ok((a.scratch(n)?, a.scratch(n)?))
    }

    fn new(
        a: &KernelArgs<'_>,
        mode: Mode,
        p: Prec,
        inp: usize,
        out: usize,
        scale: Option<f64>,
    ) -> Result<Axis> {
        Ok(match mode {
            Mode::Nearest | Mode::NearestExact => {
                // Float32 in ATen for every dtype (nearest_idx / nearest_exact_idx).
                let s = scales_value(Prec { double: false }, scale, inp, out) as f32;
                let (mut idx, mut w) = Axis::tables(a, out, 1)?;
                for (i, (ix, wt)) in idx.iter_mut().zip(w.iter_mut()).enumerate() {
                    *ix = if mode == Mode::Nearest {
                        if out == inp {
                            i
                        } else if out == 2 * inp {
                            i >> 1
                        } else {
                            (libm::floorf(i as f32 * s) as usize).min(inp - 1)
                        }
                    } else {
                        let v = ((i as f64 + 0.5) * s as f64) as f32;
                        (libm::floorf(v) as usize).min(inp - 1)
                    };
                    *wt = 1.0;
                }
                Axis { taps: 1, idx, w }
            }
            Mode::Linear { align_corners } => {
                let ratio = area_scale(p, inp, out, align_corners, scale);
                let (mut idx, mut w) = Axis::tables(a, out, 2)?;
                for i in 0..out {
                    let (ix, wt) = (&mut idx[2 * i..2 * i + 2], &mut w[2 * i..2 * i + 2]);
                    if inp == out {
                        ix.copy_from_slice(&[i, i]);
                        wt.copy_from_slice(&[1.0, 0.0]);
                        continue;
                    }
                    let real = if align_corners {
                        p.r(ratio * i as f64)
                    } else {
                        let v = p.r(p.r(ratio * p.r(i as f64 + 0.5)) - 0.5);
                        v.max(0.0)
                    };
                    let i0 = (libm::floor(real) as usize).min(inp - 1);
                    let l1 = p.r(real - i0 as f64).clamp(0.0, 1.0);
                    let i1 = i0 + usize::from(i0 < inp - 1);
                    ix.copy_from_slice(&[i0, i1]);
                    wt.copy_from_slice(&[p.r(1.0 - l1), l1]);
                }
                Axis { taps: 2, idx, w }
            }
            Mode::LinearAa { align_corners } => {
                // ATen's _compute_index_ranges_weights with the triangle filter.
                let scale = area_scale(p, inp, out, align_corners, scale);
                let support = if scale >= 1.0 { p.r(scale) } else { 1.0 };
                // A window never holds more than the input's `inp` positions, so the table
                // needs no more taps than that, however tiny the given scale factor (it
                // used to ask for `2 * ceil(1 / scale) + 1` taps per output: gigabytes).
                let want = libm::ceil(support) * 2.0 + 1.0;
                let taps = if want < inp as f64 {
                    want as usize
                } else {
                    inp
                }
                .max(1);
                let invscale = if scale >= 1.0 { p.r(1.0 / scale) } else { 1.0 };
                let (mut idx, mut w) = Axis::tables(a, out, taps)?;
                for i in 0..out {
                    let center = p.r(scale * p.r(i as f64 + 0.5));
                    let xmin = (p.r(p.r(center - support) + 0.5) as i64).max(0) as usize;
                    let xmax = (p.r(p.r(center + support) + 0.5) as i64).clamp(0, inp as i64);
                    let xsize = (xmax as usize).saturating_sub(xmin).min(taps);
                    let (ix, wt) = (&mut idx[i * taps..], &mut w[i * taps..]);
                    let mut total = 0.0;
                    for j in 0..xsize {
                        let arg = p.r(p.r(p.r((j + xmin) as f64 - center) + 0.5) * invscale);
                        let a = libm::fabs(arg);
                        let v = if a < 1.0 { 1.0 - a } else { 0.0 };
                        ix[j] = j + xmin;
                        wt[j] = v;
                        total = p.r(total + v);
                    }
                    if total != 0.0 {
                        for v in wt.iter_mut().take(xsize) {
                            *v = p.r(*v / total);
                        }
                    }
                    // Unused taps keep weight 0 and a valid index.
                    for v in ix.iter_mut().take(taps).skip(xsize) {
                        *v = xmin.min(inp - 1);
                    }
                }
                Axis { taps, idx, w }
            }
        })
    }
}

/// Output spatial sizes from `output_size` or `scale_factors` (exactly one given).
fn vec_sizes(
    a: &KernelArgs<'_>,
    size_arg: usize,
    scale_arg: usize,
    inp: &[usize],
    what: &str,
) -> Result<([usize; 2], [Option<f64>; 2])> {
    let k = inp.len();
    let sizes = a.opt_int_list(size_arg)?;
    let scales = if a.is_none(scale_arg)? {
        None
    } else {
        Some(a.double_list(scale_arg)?)
    };
    let mut out = [1usize; 2];
    let mut sc = [None; 2];
    match (sizes, scales) {
        (Some(s), None) => {
            if s.len() != k {
                return Err(Error::invalid(alloc::format!(
                    "{what}: output_size must have {k} entries, found {}",
                    s.len()
                )));
            }
            for (d, o) in out.iter_mut().enumerate().take(k) {
                let v = s.get(d)?;
                if v <= 0 {
                    return Err(Error::invalid(alloc::format!(
                        "{what}: output sizes must be positive, found {v}"
                    )));
                }
                *o = v as usize;
            }
        }
        (None, Some(f)) => {
            if f.len() != k {
                return Err(Error::invalid(alloc::format!(
                    "{what}: scale_factors must have {k} entries, found {}",
                    f.len()
                )));
            }
            for d in 0..k {
                let v = inp[d] as f64 * f[d];
                if v.is_nan() || v < 1.0 || v > i64::MAX as f64 {
                    return Err(Error::invalid(alloc::format!(
                        "{what}: scale factor {} of input size {} gives output size {v}",
                        f[d],
                        inp[d]
                    )));
                }
                out[d] = v as usize;
                sc[d] = Some(f[d]);
            }
        }
        _ => {
            return Err(Error::invalid(alloc::format!(
                "{what}: exactly one of output_size and scale_factors must be given"
            )))
        }
    }
    Ok((out, sc))
}

/// Checks the input (rank `2 + k`, non-empty C and spatial dims, a supported dtype) and the
/// out dtype.
fn check_io(a: &KernelArgs<'_>, out: usize, k: usize, interp: bool, what: &str) -> Result<()> {
    let m = a.meta(0)?;
    if m.dim() != k + 2 || m.sizes()[1..].contains(&0) {
        return Err(Error::shape(alloc::format!(
            "{what}: expected a non-empty {}-d input (N may be 0), found {:?}",
            k + 2,
            m.sizes()
        )));
    }
    let ok = if interp {
        m.dtype.is_float() || m.dtype == ScalarType::Byte
    } else {
        m.dtype.is_numeric()
    };
    if !ok {
        return Err(Error::Dtype {
            arg: 0,
            expected: if interp {
                "a floating dtype or uint8".into()
            } else {
                "a numeric or bool dtype".into()
            },
            found: m.dtype,
        });
    }
    let od = a.meta(out)?.dtype;
    if od != m.dtype {
        return Err(Error::Dtype {
            arg: out,
            expected: m.dtype.name().into(),
            found: od,
        });
    }
    Ok(())
}

/// Called per output element: (out offset, input plane offset, [row taps, column taps]
/// source indices, the matching weights).
type Visit<'f> = dyn FnMut(usize, usize, [&[usize]; 2], [&[f64]; 2]) + 'f;

/// Resizes `out` and runs the interpolation for `k` spatial dims (1 or 2).
fn run(
    a: &mut KernelArgs<'_>,
    out: usize,
    k: usize,
    osz: [usize; 2],
    scales: [Option<f64>; 2],
    mode: Mode,
) -> Result<()> {
    let xm = *a.meta(0)?;
    let dtype = xm.dtype;
    let (n, c) = (xm.sizes()[0], xm.sizes()[1]);
    let mut shape = xm.dims();
    shape[2..2 + k].copy_from_slice(&osz[..k]);
    a.resize(out, &shape)?;
    if shape.contains(&0) {
        return Ok(());
    }
    let p = Prec {
        double: dtype == ScalarType::Double,
    };
    // A 1-d problem is a 2-d one with H = 1.
    let (ih, iw, oh, ow) = if k == 2 {
        (xm.sizes()[2], xm.sizes()[3], osz[0], osz[1])
    } else {
        (1, xm.sizes()[2], 1, osz[0])
    };
    let (ax_h, ax_w) = if k == 2 {
        (
            Axis::new(a, mode, p, ih, oh, scales[0])?,
            Axis::new(a, mode, p, iw, ow, scales[1])?,
        )
    } else {
        (
            Axis::identity(a)?,
            Axis::new(a, mode, p, iw, ow, scales[0])?,
        )
    };
    let om = *a.meta(out)?;
    let st4 = |s: &[usize]| -> [usize; 4] {
        if k == 2 {
            [s[0], s[1], s[2], s[3]]
        } else {
            [s[0], s[1], 0, s[2]]
        }
    };
    let (xs, os) = (st4(xm.strides()), st4(om.strides()));
    let x = a.tensor(0)?;
    let mut o = a.out(out)?;
    let nearest = matches!(mode, Mode::Nearest | Mode::NearestExact);
    // Taps read per output row (anti-aliasing with a tiny scale reads many): charged,
    // and the deadline polled row by row.
    let row_units = (ow as u64)
        .saturating_mul(ax_h.taps as u64)
        .saturating_mul(ax_w.taps as u64);
    let meter = core::cell::RefCell::new(Meter::charging(a));

    // Visits every output element with its offset and the (taps of the) source offsets.
    let for_each = |f: &mut Visit<'_>| -> Result<()> {
        for ni in 0..n {
            for ci in 0..c {
                let xb = ni * xs[0] + ci * xs[1];
                let ob = ni * os[0] + ci * os[1];
                for oy in 0..oh {
                    meter.borrow_mut().add(row_units)?;
                    let hi = &ax_h.idx[oy * ax_h.taps..(oy + 1) * ax_h.taps];
                    let hw = &ax_h.w[oy * ax_h.taps..(oy + 1) * ax_h.taps];
                    for ox in 0..ow {
                        let wi = &ax_w.idx[ox * ax_w.taps..(ox + 1) * ax_w.taps];
                        let ww = &ax_w.w[ox * ax_w.taps..(ox + 1) * ax_w.taps];
                        f(ob + oy * os[2] + ox * os[3], xb, [hi, wi], [hw, ww]);
                    }
                }
            }
        }
        Ok(())
    };

    if dtype == ScalarType::Float && xm.is_contiguous() && om.is_contiguous() {
        // Contiguous NCHW fast path: whole planes and rows as slices.
        let xd = x.data::<f32>()?;
        let od = o.data::<f32>()?;
        // Scratch: the weights as f32, once per axis.
        let mut wh: Vec<f32> = a.scratch(ax_h.w.len())?;
        let mut ww: Vec<f32> = a.scratch(ax_w.w.len())?;
        for (d, s) in wh.iter_mut().zip(&ax_h.w).chain(ww.iter_mut().zip(&ax_w.w)) {
            *d = *s as f32;
        }
        let (th, tw) = (ax_h.taps, ax_w.taps);
        for (xp, op) in xd.chunks_exact(ih * iw).zip(od.chunks_exact_mut(oh * ow)) {
            let row = |y: usize| xp.get(y * iw..(y + 1) * iw).unwrap_or(&[]);
            for (oy, orow) in op.chunks_exact_mut(ow).enumerate() {
                meter.borrow_mut().add(row_units)?;
                let hi = &ax_h.idx[oy * th..(oy + 1) * th];
                if nearest {
                    let r = row(hi[0]);
                    for (v, &xi) in orow.iter_mut().zip(&ax_w.idx) {
                        *v = r.get(xi).copied().unwrap_or(0.0);
                    }
                    continue;
                }
                let hw = &wh[oy * th..(oy + 1) * th];
                for (ox, v) in orow.iter_mut().enumerate() {
                    let wi = &ax_w.idx[ox * tw..(ox + 1) * tw];
                    let wx = &ww[ox * tw..(ox + 1) * tw];
                    let mut acc = 0f32;
                    for (&yi, &yw) in hi.iter().zip(hw) {
                        let r = row(yi);
                        let mut t = 0f32;
                        for (&xi, &xw) in wi.iter().zip(wx) {
                            t += r.get(xi).copied().unwrap_or(0.0) * xw;
                        }
                        acc += t * yw;
                    }
                    *v = acc;
                }
            }
        }
        return Ok(());
    }
    if nearest {
        let ec = ElemCopy::new(dtype, dtype)?;
        let ob = &mut *o.bytes;
        return for_each(&mut |oo, xb, [hi, wi], _| {
            ec.copy(ob, oo, x.bytes, xb + hi[0] * xs[2] + wi[0] * xs[3]);
        });
    }
    if dtype == ScalarType::Float {
        // Typed path (any dim order): float32 weights and accumulation, as ATen does.
        let xd = x.data::<f32>()?;
        let od = o.data::<f32>()?;
        return for_each(&mut |oo, xb, [hi, wi], [hw, ww]| {
            let mut acc = 0f32;
            for (&yi, &yw) in hi.iter().zip(hw) {
                let row = xb + yi * xs[2];
                let mut t = 0f32;
                for (&xi, &xw) in wi.iter().zip(ww) {
                    t += xd.get(row + xi * xs[3]).copied().unwrap_or(0.0) * xw as f32;
                }
                acc += t * yw as f32;
            }
            if let Some(v) = od.get_mut(oo) {
                *v = acc;
            }
        });
    }
    // ATen stores the weights as the input dtype.
    let wround = |w: f64| match dtype {
        ScalarType::Half => f16::from_f64(w).to_f64(),
        ScalarType::BFloat16 => bf16::from_f64(w).to_f64(),
        _ => w,
    };
    let byte = dtype == ScalarType::Byte;
    let ob = &mut *o.bytes;
    for_each(&mut |oo, xb, [hi, wi], [hw, ww]| {
        let mut acc = 0.0;
        for (&yi, &yw) in hi.iter().zip(hw) {
            let row = xb + yi * xs[2];
            let mut t = 0.0;
            for (&xi, &xw) in wi.iter().zip(ww) {
                t = p.r(t + p.r(load_f64(x.bytes, dtype, row + xi * xs[3]) * wround(xw)));
            }
            acc = p.r(acc + p.r(t * wround(yw)));
        }
        if byte {
            // uint8 rounds to nearest and saturates (ATen's separable uint8 path).
            acc = libm::round(acc).clamp(0.0, 255.0);
        }
        store_f64(ob, dtype, oo, acc);
    })
}

/// `input, output_size: int[]?, scale_factors: float[]?, *, out`
fn nearest2d_vec(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    check_io(a, 3, 2, false, "upsample_nearest2d")?;
    let inp = [a.meta(0)?.sizes()[2], a.meta(0)?.sizes()[3]];
    let (o, s) = vec_sizes(a, 1, 2, &inp, "upsample_nearest2d")?;
    run(a, 3, 2, o, s, Mode::Nearest)
}

/// `input, output_size: int[]?, scale_factors: float[]?, *, out`
fn nearest_exact2d_vec(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    check_io(a, 3, 2, false, "_upsample_nearest_exact2d")?;
    let inp = [a.meta(0)?.sizes()[2], a.meta(0)?.sizes()[3]];
    let (o, s) = vec_sizes(a, 1, 2, &inp, "_upsample_nearest_exact2d")?;
    run(a, 3, 2, o, s, Mode::NearestExact)
}

/// `input, output_size: int[]?, scale_factors: float[]?, *, out`
fn nearest1d_vec(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    check_io(a, 3, 1, false, "upsample_nearest1d")?;
    let inp = [a.meta(0)?.sizes()[2]];
    let (o, s) = vec_sizes(a, 1, 2, &inp, "upsample_nearest1d")?;
    run(a, 3, 1, o, s, Mode::Nearest)
}

/// `input, output_size: int[]?, align_corners, scale_factors: float[]?, *, out`
fn bilinear2d_vec(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    check_io(a, 4, 2, true, "upsample_bilinear2d")?;
    let align_corners = a.bool(2)?;
    let inp = [a.meta(0)?.sizes()[2], a.meta(0)?.sizes()[3]];
    let (o, s) = vec_sizes(a, 1, 3, &inp, "upsample_bilinear2d")?;
    run(a, 4, 2, o, s, Mode::Linear { align_corners })
}

/// `input, output_size: int[]?, align_corners, scale_factors: float[]?, *, out`
fn linear1d_vec(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    check_io(a, 4, 1, true, "upsample_linear1d")?;
    let align_corners = a.bool(2)?;
    let inp = [a.meta(0)?.sizes()[2]];
    let (o, s) = vec_sizes(a, 1, 3, &inp, "upsample_linear1d")?;
    run(a, 4, 1, o, s, Mode::Linear { align_corners })
}

/// An `output_size: int[k]` argument (the non-`vec` overloads).
fn fixed_sizes(a: &KernelArgs<'_>, arg: usize, k: usize, what: &str) -> Result<[usize; 2]> {
    let l = a.int_list(arg)?;
    if l.len() != k {
        return Err(Error::invalid(alloc::format!(
            "{what}: output_size must have {k} entries, found {}",
            l.len()
        )));
    }
    let mut out = [1usize; 2];
    for (d, o) in out.iter_mut().enumerate().take(k) {
        let v = l.get(d)?;
        if v <= 0 {
            return Err(Error::invalid(alloc::format!(
                "{what}: output sizes must be positive, found {v}"
            )));
        }
        *o = v as usize;
    }
    Ok(out)
}

/// `self, output_size: int[2], align_corners, scales_h: float?, scales_w: float?, *, out`
fn bilinear2d_aa(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    check_io(a, 5, 2, true, "_upsample_bilinear2d_aa")?;
    let align_corners = a.bool(2)?;
    let o = fixed_sizes(a, 1, 2, "_upsample_bilinear2d_aa")?;
    let scales = [a.opt_double(3)?, a.opt_double(4)?];
    run(a, 5, 2, o, scales, Mode::LinearAa { align_corners })
}

/// `self, output_size: int[2], align_corners, scales_h: float?, scales_w: float?, *, out`
fn bilinear2d(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    check_io(a, 5, 2, true, "upsample_bilinear2d")?;
    let align_corners = a.bool(2)?;
    let o = fixed_sizes(a, 1, 2, "upsample_bilinear2d")?;
    let scales = [a.opt_double(3)?, a.opt_double(4)?];
    run(a, 5, 2, o, scales, Mode::Linear { align_corners })
}

/// `self, output_size: int[2], scales_h: float?, scales_w: float?, *, out`
fn nearest2d(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    check_io(a, 4, 2, false, "upsample_nearest2d")?;
    let o = fixed_sizes(a, 1, 2, "upsample_nearest2d")?;
    let scales = [a.opt_double(2)?, a.opt_double(3)?];
    run(a, 4, 2, o, scales, Mode::Nearest)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::upsample_nearest2d.vec_out", nearest2d_vec);
    reg.register(
        "aten::_upsample_nearest_exact2d.vec_out",
        nearest_exact2d_vec,
    );
    reg.register("aten::upsample_nearest1d.vec_out", nearest1d_vec);
    reg.register("aten::upsample_bilinear2d.vec_out", bilinear2d_vec);
    reg.register("aten::upsample_linear1d.vec_out", linear1d_vec);
    reg.register("aten::_upsample_bilinear2d_aa.out", bilinear2d_aa);
    reg.register("aten::upsample_bilinear2d.out", bilinear2d);
    reg.register("aten::upsample_nearest2d.out", nearest2d);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    /// A plain f64 reference of ATen's linear interpolation along one axis.
    fn lin_ref(
        inp: usize,
        out: usize,
        align: bool,
        scale: Option<f64>,
    ) -> Vec<(usize, usize, f64)> {
        (0..out)
            .map(|i| {
                if inp == out {
                    return (i, i, 0.0);
                }
                let r = if align {
                    if out > 1 {
                        (inp - 1) as f64 / (out - 1) as f64
                    } else {
                        0.0
                    }
                } else {
                    scale.map_or(inp as f64 / out as f64, |s| 1.0 / s)
                };
                let src = if align {
                    r * i as f64
                } else {
                    (r * (i as f64 + 0.5) - 0.5).max(0.0)
                };
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                (i0, i1, (src - i0 as f64).clamp(0.0, 1.0))
            })
            .collect()
    }

    fn bilinear_ref(
        x: &[f64],
        [n, c, h, w]: [usize; 4],
        [oh, ow]: [usize; 2],
        align: bool,
        sc: [Option<f64>; 2],
    ) -> Vec<f64> {
        let (ry, rx) = (lin_ref(h, oh, align, sc[0]), lin_ref(w, ow, align, sc[1]));
        let mut out = Vec::new();
        for p in 0..n * c {
            for &(y0, y1, ly) in &ry {
                for &(x0, x1, lx) in &rx {
                    let g = |y: usize, xx: usize| x[p * h * w + y * w + xx];
                    out.push(
                        (1.0 - ly) * ((1.0 - lx) * g(y0, x0) + lx * g(y0, x1))
                            + ly * ((1.0 - lx) * g(y1, x0) + lx * g(y1, x1)),
                    );
                }
            }
        }
        out
    }

    fn seq(n: usize) -> Vec<f64> {
        (0..n).map(|i| ((i * 7) % 11) as f64 - 3.5).collect()
    }

    #[test]
    fn nearest_table() {
        let x = OwnedTensor::from_f64(Float, &[1, 1, 2, 3], &[1., 2., 3., 4., 5., 6.]);
        let cases: [(Arg, Arg, &[usize], Vec<f64>); 3] = [
            (
                Arg::Ints(vec![4, 6]),
                Arg::None,
                &[1, 1, 4, 6],
                vec![
                    1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3., 4., 4., 5., 5., 6., 6., 4., 4.,
                    5., 5., 6., 6.,
                ],
            ),
            // floor(i * 3/2): 0, 1 of 2 columns.
            (
                Arg::Ints(vec![1, 2]),
                Arg::None,
                &[1, 1, 1, 2],
                vec![1., 2.],
            ),
            // scale 1.5 on w: out 4, src floor(i / 1.5) = 0,0,1,2.
            (
                Arg::None,
                Arg::Doubles(vec![1.0, 1.5]),
                &[1, 1, 2, 4],
                vec![1., 1., 2., 3., 4., 4., 5., 6.],
            ),
        ];
        for (size, scales, shape, want) in cases {
            let out = run_op(
                "aten::upsample_nearest2d.vec_out",
                vec![
                    Arg::T(x.clone()),
                    size,
                    scales,
                    Arg::Out(Float, vec![1, 1, 4, 6]),
                ],
            )
            .unwrap();
            assert_eq!(out.tensors[0].sizes, shape);
            assert_eq!(out.tensors[0].to_f64(), want);
        }
        // Channels-last int input and out: same values.
        let xi = OwnedTensor::from_f64(Long, &[1, 2, 1, 2], &[1., 2., 3., 4.])
            .with_dim_order(&[0, 2, 3, 1]);
        let o = OwnedTensor::zeros(Long, &[1, 2, 2, 4]).with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            "aten::upsample_nearest2d.vec_out",
            vec![
                Arg::T(xi),
                Arg::Ints(vec![2, 4]),
                Arg::None,
                Arg::OutLike(o),
            ],
        )
        .unwrap();
        assert_eq!(
            out.tensors[0].to_f64(),
            [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
        // nearest-exact: floor((i + 0.5) * 3/2) over 3 -> 2: 0, 2.
        let out = run_op(
            "aten::_upsample_nearest_exact2d.vec_out",
            vec![
                Arg::T(x.clone()),
                Arg::Ints(vec![2, 2]),
                Arg::None,
                Arg::Out(Float, vec![1, 1, 2, 2]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [1., 3., 4., 6.]);
        // 1-d, bool.
        let b = OwnedTensor::bools(&[1, 1, 2], &[true, false]);
        let out = run_op(
            "aten::upsample_nearest1d.vec_out",
            vec![
                Arg::T(b),
                Arg::None,
                Arg::Doubles(vec![2.0]),
                Arg::Out(Bool, vec![1, 1, 4]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [1., 1., 0., 0.]);
        // Empty batch.
        let e = OwnedTensor::zeros(Float, &[0, 1, 2, 2]);
        let out = run_op(
            "aten::upsample_nearest2d.vec_out",
            vec![
                Arg::T(e),
                Arg::Ints(vec![4, 4]),
                Arg::None,
                Arg::Out(Float, vec![0, 1, 4, 4]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, 1, 4, 4]);
        // Errors: both size and scales, wrong rank, dtype mismatch.
        for args in [
            vec![
                Arg::T(x.clone()),
                Arg::Ints(vec![4, 4]),
                Arg::Doubles(vec![2.0, 2.0]),
                Arg::Out(Float, vec![1, 1, 4, 4]),
            ],
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[2, 2])),
                Arg::Ints(vec![4, 4]),
                Arg::None,
                Arg::Out(Float, vec![4, 4]),
            ],
            vec![
                Arg::T(x.clone()),
                Arg::Ints(vec![4, 4]),
                Arg::None,
                Arg::Out(Double, vec![1, 1, 4, 4]),
            ],
        ] {
            assert!(run_op("aten::upsample_nearest2d.vec_out", args).is_err());
        }
    }

    #[test]
    fn bilinear_matches_reference() {
        let dims = [2, 3, 3, 5];
        let xv = seq(90);
        let cases: [(Option<[usize; 2]>, Option<[f64; 2]>, bool, [usize; 2]); 5] = [
            (Some([6, 10]), None, false, [6, 10]),
            (Some([5, 3]), None, true, [5, 3]),
            (Some([2, 7]), None, false, [2, 7]),
            (None, Some([1.7, 2.5]), false, [5, 12]),
            (Some([1, 1]), None, true, [1, 1]),
        ];
        for (size, scales, align, osz) in cases {
            let want = bilinear_ref(
                &xv,
                dims,
                osz,
                align,
                scales.map_or([None; 2], |s| [Some(s[0]), Some(s[1])]),
            );
            for (dt, order) in [
                (Float, [0u8, 1, 2, 3]),
                (Float, [0, 2, 3, 1]),
                (Double, [0, 1, 2, 3]),
                (Half, [0, 1, 2, 3]),
            ] {
                let xt = OwnedTensor::from_f64(dt, &dims, &xv).with_dim_order(&order);
                let o = OwnedTensor::zeros(dt, &[2, 3, 6, 12]).with_dim_order(&order);
                let out = run_op(
                    "aten::upsample_bilinear2d.vec_out",
                    vec![
                        Arg::T(xt),
                        size.map_or(Arg::None, |s| Arg::Ints(vec![s[0] as i64, s[1] as i64])),
                        Arg::Bool(align),
                        scales.map_or(Arg::None, |s| Arg::Doubles(s.to_vec())),
                        Arg::OutLike(o),
                    ],
                )
                .unwrap();
                assert_eq!(out.tensors[0].sizes, [2, 3, osz[0], osz[1]]);
                let tol = if dt == Half { 2e-2 } else { 1e-5 };
                assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
            }
        }
        // 1-d linear: [0, 10] -> 4 points, align_corners=False: src -0.25 -> 0, 0.25, 0.75, 1.25.
        let l = OwnedTensor::from_f64(Float, &[1, 1, 2], &[0., 10.]);
        let out = run_op(
            "aten::upsample_linear1d.vec_out",
            vec![
                Arg::T(l),
                Arg::Ints(vec![4]),
                Arg::Bool(false),
                Arg::None,
                Arg::Out(Float, vec![1, 1, 4]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &[0., 2.5, 7.5, 10.], 1e-6, 0.0);
        // Integer input other than uint8 is rejected.
        let xi = OwnedTensor::from_f64(Long, &[1, 1, 1, 2], &[1., 2.]);
        assert!(run_op(
            "aten::upsample_bilinear2d.vec_out",
            vec![
                Arg::T(xi),
                Arg::Ints(vec![2, 2]),
                Arg::Bool(false),
                Arg::None,
                Arg::Out(Long, vec![1, 1, 2, 2])
            ]
        )
        .is_err());
    }

    /// Plain reference of ATen's anti-aliased weights on one axis.
    fn aa_ref(inp: usize, out: usize) -> Vec<Vec<(usize, f64)>> {
        let scale = inp as f64 / out as f64;
        let support = if scale >= 1.0 { scale } else { 1.0 };
        let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        (0..out)
            .map(|i| {
                let center = scale * (i as f64 + 0.5);
                let lo = ((center - support + 0.5) as i64).max(0) as usize;
                let hi = ((center + support + 0.5) as i64).min(inp as i64) as usize;
                let mut v: Vec<(usize, f64)> = (lo..hi)
                    .map(|j| (j, (1.0 - ((j as f64 - center + 0.5) * inv).abs()).max(0.0)))
                    .collect();
                let t: f64 = v.iter().map(|p| p.1).sum();
                v.iter_mut().for_each(|p| p.1 /= t);
                v
            })
            .collect()
    }

    #[test]
    fn antialias_matches_reference() {
        let (h, w) = (9, 12);
        let xv = seq(h * w);
        for (oh, ow) in [(3, 4), (2, 5), (9, 6), (12, 20)] {
            let (ry, rx) = (aa_ref(h, oh), aa_ref(w, ow));
            let mut want = Vec::new();
            for wy in &ry {
                for wx in &rx {
                    let mut s = 0.0;
                    for &(y, a) in wy {
                        for &(x, b) in wx {
                            s += a * b * xv[y * w + x];
                        }
                    }
                    want.push(s);
                }
            }
            for order in [[0u8, 1, 2, 3], [0, 2, 3, 1]] {
                let xt = OwnedTensor::from_f64(Float, &[1, 1, h, w], &xv).with_dim_order(&order);
                let out = run_op(
                    "aten::_upsample_bilinear2d_aa.out",
                    vec![
                        Arg::T(xt),
                        Arg::Ints(vec![oh as i64, ow as i64]),
                        Arg::Bool(false),
                        Arg::None,
                        Arg::None,
                        Arg::Out(Float, vec![1, 1, 12, 20]),
                    ],
                )
                .unwrap();
                assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);
            }
        }
        assert!(run_op(
            "aten::_upsample_bilinear2d_aa.out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[1, 1, 2, 2])),
                Arg::Ints(vec![0, 2]),
                Arg::Bool(false),
                Arg::None,
                Arg::None,
                Arg::Out(Float, vec![1, 1, 2, 2]),
            ],
        )
        .is_err());
    }

    #[test]
    fn fixed_size_overloads() {
        let xv = seq(2 * 3 * 4);
        let x = OwnedTensor::from_f64(Float, &[1, 2, 3, 4], &xv);
        // Sizes alone match the vec overload; a given scale replaces in/out.
        for (scales, vec_scales) in [
            ([Arg::None, Arg::None], Arg::None),
            (
                [Arg::Double(2.0), Arg::Double(1.5)],
                Arg::Doubles(vec![2.0, 1.5]),
            ),
        ] {
            let want = run_op(
                "aten::upsample_bilinear2d.vec_out",
                vec![
                    Arg::T(x.clone()),
                    if matches!(vec_scales, Arg::None) {
                        Arg::Ints(vec![6, 6])
                    } else {
                        Arg::None
                    },
                    Arg::Bool(false),
                    vec_scales.clone(),
                    Arg::Out(Float, vec![1, 2, 6, 6]),
                ],
            )
            .unwrap();
            let [sh, sw] = scales.clone();
            let got = run_op(
                "aten::upsample_bilinear2d.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Ints(vec![6, 6]),
                    Arg::Bool(false),
                    sh,
                    sw,
                    Arg::Out(Float, vec![1, 2, 6, 6]),
                ],
            )
            .unwrap();
            assert_eq!(got.tensors[0].to_f64(), want.tensors[0].to_f64());
            let [sh, sw] = scales;
            let got = run_op(
                "aten::upsample_nearest2d.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Ints(vec![6, 6]),
                    sh,
                    sw,
                    Arg::Out(Float, vec![1, 2, 6, 6]),
                ],
            )
            .unwrap();
            assert_eq!(got.tensors[0].sizes, [1, 2, 6, 6]);
        }
        assert!(run_op(
            "aten::upsample_nearest2d.out",
            vec![
                Arg::T(x),
                Arg::Ints(vec![6]),
                Arg::None,
                Arg::None,
                Arg::Out(Float, vec![1, 2, 6, 6])
            ],
        )
        .is_err());
    }

    fn aa_args(x: OwnedTensor, o: [usize; 2], sh: Option<f64>, sw: Option<f64>) -> Vec<Arg> {
        let sc = |v: Option<f64>| v.map_or(Arg::None, Arg::Double);
        vec![
            Arg::T(x),
            Arg::Ints(vec![o[0] as i64, o[1] as i64]),
            Arg::Bool(false),
            sc(sh),
            sc(sw),
            Arg::Out(Float, vec![1, 1, o[0], o[1]]),
        ]
    }

    #[test]
    fn antialias_with_a_tiny_scale() {
        // scale_h = 1e-9 means a filter support of 1e9 input rows: the tap tables used to
        // be sized 2e9 + 1 taps per output (32 GB, an abort). A window never holds more
        // than the 4 input rows, so 4 taps do, with the same weights.
        let xv = seq(16);
        let x = OwnedTensor::from_f64(Double, &[1, 1, 4, 4], &xv);
        let mut args = aa_args(x, [2, 2], Some(1e-9), None);
        args[5] = Arg::Out(Double, vec![1, 1, 2, 2]);
        let out = run_op("aten::_upsample_bilinear2d_aa.out", args).unwrap();
        // Output row 0 averages the 4 rows (equal weights up to 1e-9); row 1's window
        // starts 5e8 rows past the input: no taps, 0.
        let rx = aa_ref(4, 2);
        let mut want = Vec::new();
        for row in 0..2 {
            for wx in &rx {
                let mut s = 0.0;
                if row == 0 {
                    for y in 0..4 {
                        for &(x, b) in wx {
                            s += 0.25 * b * xv[y * 4 + x];
                        }
                    }
                }
                want.push(s);
            }
        }
        assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 0.0);
    }

    #[test]
    fn tables_are_bounded_and_work_is_polled() {
        // 1000 taps for each of 1000 outputs: 16 MB of tables, over a 64 KB budget.
        let x = OwnedTensor::zeros(Float, &[1, 1, 1, 1000]);
        let small = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: 1 << 16,
            ..Default::default()
        };
        let got = run_op_with(
            "aten::_upsample_bilinear2d_aa.out",
            aa_args(x, [1, 1000], None, Some(1e-9)),
            small,
        );
        assert!(matches!(got, Err(ptero_core::Error::OutOfMemory { .. })));
        // Four outputs that each read a 512 x 512 window: charged, and interruptible.
        let x = OwnedTensor::zeros(Float, &[1, 1, 512, 512]);
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        let (_, charged) = run_op_with(
            "aten::_upsample_bilinear2d_aa.out",
            aa_args(x.clone(), [2, 2], Some(1e-9), Some(1e-9)),
            ctx,
        )
        .unwrap();
        assert!(charged >= 4 * 512 * 512, "charged {charged}");
        for order in [[0u8, 1, 2, 3], [0, 2, 3, 1]] {
            let got = run_op_interrupted(
                "aten::_upsample_bilinear2d_aa.out",
                aa_args(x.with_dim_order(&order), [2, 2], Some(1e-9), Some(1e-9)),
            );
            assert_eq!(got.unwrap_err(), ptero_core::Error::Interrupted);
        }
    }
}
