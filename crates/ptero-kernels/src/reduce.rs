//! Reductions: sum, mean, amax/amin, var, var_mean, argmax/argmin, max/min (dim and full), prod,
//! any, plus the scans cumsum and topk.
//!
//! A reduction splits the input's dims into kept dims (one output element each) and
//! reduced dims (one "lane" of input elements per output element). Floats accumulate in
//! f64 and integers in i64, whatever the storage dtype; the result is cast to out's dtype.

use alloc::vec::Vec;
use core::cmp::Ordering;

use ptero_core::{
    normalize_dim, Dims, Error, KernelArgs, KernelRegistry, Result, ScalarType, TensorMeta,
};

use crate::util::copy::ElemCopy;
use crate::util::work::{sat_product, Meter};
use crate::util::{
    contiguous_strides, for_each_offset, load_bool, load_f64, load_i64, store_bool, store_f64,
    store_i64, ComputeKind,
};

const MAXD: usize = ptero_core::MAX_DIMS;

/// Which dims of a `rank`-d tensor an optional dim list reduces (None or [] = all).
fn dim_mask(a: &KernelArgs<'_>, arg: usize, rank: usize) -> Result<[bool; MAXD]> {
    let mut mask = [false; MAXD];
    let list = a.opt_int_list(arg)?;
    match list {
        Some(l) if !l.is_empty() => {
            for k in 0..l.len() {
                let d = normalize_dim(l.get(k)?, rank)?;
                if mask[d] {
                    return Err(Error::invalid(alloc::format!(
                        "dim {d} appears multiple times in the list of dims"
                    )));
                }
                mask[d] = true;
            }
        }
        _ => mask.iter_mut().take(rank).for_each(|m| *m = true),
    }
    Ok(mask)
}

fn single_dim_mask(dim: i64, rank: usize) -> Result<[bool; MAXD]> {
    let mut mask = [false; MAXD];
    let d = normalize_dim(dim, rank)?;
    mask[d] = true;
    Ok(mask)
}

/// How one reduction walks its input.
struct Plan {
    out_shape: Dims,
    kept_shape: Dims,
    kept_in: Dims,
    red_shape: Dims,
    red_in: Dims,
    /// Elements per lane.
    n: usize,
    /// The lane is row-major contiguous in storage (flat slice fast path, logical order).
    flat: bool,
    mask: [bool; MAXD],
    keepdim: bool,
}

impl Plan {
    fn new(m: &TensorMeta, mask: [bool; MAXD], keepdim: bool) -> Plan {
        let (mut out_shape, mut kept_shape, mut kept_in) = (Dims::new(), Dims::new(), Dims::new());
        let (mut red_shape, mut red_in) = (Dims::new(), Dims::new());
        for (d, (&s, &st)) in m.sizes().iter().zip(m.strides()).enumerate() {
            if mask[d] {
                red_shape.push(s);
                red_in.push(st);
                if keepdim {
                    out_shape.push(1);
                }
            } else {
                kept_shape.push(s);
                kept_in.push(st);
                out_shape.push(s);
            }
        }
        // Saturating: with an empty kept dim the reduced ones may multiply past usize
        // (and no lane is visited).
        let n = sat_product(&red_shape);
        let cst = contiguous_strides(&red_shape);
        let flat = red_shape
            .iter()
            .zip(red_in.iter().zip(cst.iter()))
            .all(|(&s, (&a, &b))| s <= 1 || a == b);
        Plan {
            out_shape,
            kept_shape,
            kept_in,
            red_shape,
            red_in,
            n,
            flat,
            mask,
            keepdim,
        }
    }

    /// Strides of an out tensor (already resized to `out_shape`) over the kept dims.
    fn kept_out(&self, om: &TensorMeta) -> Dims {
        if !self.keepdim {
            return om.stride_dims();
        }
        let mut st = Dims::new();
        for (d, &s) in om.strides().iter().enumerate() {
            if !self.mask[d] {
                st.push(s);
            }
        }
        st
    }

    /// Calls `f(lane_base, [out offsets])` once per output element.
    fn each<const N: usize>(&self, outs: [&[usize]; N], mut f: impl FnMut(usize, [usize; N])) {
        let mut strides: [&[usize]; 3] = [&self.kept_in, &[], &[]];
        for (k, o) in outs.iter().enumerate().take(2) {
            strides[k + 1] = *o;
        }
        match N {
            0 => for_each_offset(&self.kept_shape, [strides[0]], |[b]| f(b, [0; N])),
            1 => for_each_offset(&self.kept_shape, [strides[0], strides[1]], |[b, o]| {
                f(b, core::array::from_fn(|_| o))
            }),
            _ => for_each_offset(
                &self.kept_shape,
                [strides[0], strides[1], strides[2]],
                |[b, o0, o1]| f(b, core::array::from_fn(|k| if k == 0 { o0 } else { o1 })),
            ),
        }
    }

    /// Visits the lane at `base` in logical order as f64.
    fn lane_f64(&self, bytes: &[u8], dt: ScalarType, base: usize, mut f: impl FnMut(f64)) {
        if self.flat && dt == ScalarType::Float {
            if let Some(s) = bytes
                .get(base * 4..(base + self.n) * 4)
                .and_then(|b| bytemuck::try_cast_slice::<u8, f32>(b).ok())
            {
                s.iter().for_each(|&v| f(v as f64));
                return;
            }
        }
        for_each_offset(&self.red_shape, [&self.red_in], |[o]| {
            f(load_f64(bytes, dt, base + o))
        });
    }

    fn lane_i64(&self, bytes: &[u8], dt: ScalarType, base: usize, mut f: impl FnMut(i64)) {
        for_each_offset(&self.red_shape, [&self.red_in], |[o]| {
            f(load_i64(bytes, dt, base + o))
        });
    }
}

/// Checks an optional `dtype` argument agrees with out's dtype.
fn check_dtype_arg(a: &KernelArgs<'_>, arg: usize, out: usize) -> Result<()> {
    if let Some(code) = a.opt_int(arg)? {
        let od = a.meta(out)?.dtype;
        if ScalarType::from_code(code) != Some(od) {
            return Err(Error::Dtype {
                arg: out,
                expected: alloc::format!("the requested dtype (code {code})"),
                found: od,
            });
        }
    }
    Ok(())
}

fn numeric(arg: usize, t: ScalarType) -> Result<()> {
    if t.is_numeric() {
        Ok(())
    } else {
        Err(Error::Dtype {
            arg,
            expected: "a numeric dtype".into(),
            found: t,
        })
    }
}

fn resize_plan(
    a: &mut KernelArgs<'_>,
    x: usize,
    mask: [bool; MAXD],
    keepdim: bool,
    outs: &[usize],
) -> Result<Plan> {
    let m = a.meta(x)?;
    numeric(x, m.dtype)?;
    let plan = Plan::new(m, mask, keepdim);
    for &o in outs {
        a.resize(o, &plan.out_shape)?;
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------
// sum, mean, prod
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Acc {
    Sum,
    Mean,
    Prod,
}

fn accumulate(
    a: &mut KernelArgs<'_>,
    mask: [bool; MAXD],
    keepdim: bool,
    out: usize,
    op: Acc,
) -> Result<()> {
    let plan = resize_plan(a, 0, mask, keepdim, &[out])?;
    let om = *a.meta(out)?;
    let od = om.dtype;
    numeric(out, od)?;
    if op == Acc::Mean && !od.is_float() {
        return Err(Error::Dtype {
            arg: out,
            expected: "a floating dtype (mean)".into(),
            found: od,
        });
    }
    let ost = plan.kept_out(&om);
    let x = a.tensor(0)?;
    let xd = x.meta.dtype;
    if op != Acc::Mean && xd.is_float() && !od.is_float() {
        return Err(Error::Dtype {
            arg: out,
            expected: alloc::format!("a dtype {xd} can be cast to"),
            found: od,
        });
    }
    if op != Acc::Prod
        && xd == ScalarType::Float
        && od == ScalarType::Float
        && pools_channels_last(x.meta, &om, mask)
    {
        Meter::new(a).add(x.meta.numel() as u64)?;
        return image_sum_channels_last(&x, a.out(out)?, op == Acc::Mean);
    }
    let o = a.out(out)?;
    let ob = o.bytes;
    let n = plan.n;
    let float = od.is_float() || xd.is_float();
    let mut meter = Meter::new(a);
    let mut stop = Ok(());
    plan.each([ost.as_slice()], |base, [oo]| {
        if stop.is_err() {
            return;
        }
        stop = meter.add(n as u64);
        if float {
            let mut acc = if op == Acc::Prod { 1.0 } else { 0.0 };
            // f32 lanes stored contiguously: a vector sum (f32 partial sums, as PyTorch's
            // vectorized reduction).
            let lane = (plan.flat && xd == ScalarType::Float && op != Acc::Prod)
                .then(|| x.bytes.get(base * 4..(base + n) * 4))
                .flatten()
                .and_then(|b| bytemuck::try_cast_slice::<u8, f32>(b).ok());
            match op {
                _ if lane.is_some() => acc = lane.map_or(0.0, |l| ptero_simd::ops::sum(l) as f64),
                Acc::Prod => plan.lane_f64(x.bytes, xd, base, |v| acc *= v),
                _ => plan.lane_f64(x.bytes, xd, base, |v| acc += v),
            }
            if op == Acc::Mean {
                acc /= n as f64;
            }
            store_f64(ob, od, oo, acc);
        } else {
            let mut acc: i64 = if op == Acc::Prod { 1 } else { 0 };
            match op {
                Acc::Prod => plan.lane_i64(x.bytes, xd, base, |v| acc = acc.wrapping_mul(v)),
                _ => plan.lane_i64(x.bytes, xd, base, |v| acc = acc.wrapping_add(v)),
            }
            store_i64(ob, od, oo, acc);
        }
    });
    stop
}

/// True for a sum over the height and width of a channels-last 4-d image whose output
/// holds each image's channels contiguously (a global average pool).
fn pools_channels_last(m: &TensorMeta, om: &TensorMeta, mask: [bool; MAXD]) -> bool {
    let os = om.strides();
    m.dim() == 4
        && m.dim_order() == [0, 2, 3, 1]
        && mask[..4] == [false, false, true, true]
        && om.numel() == m.sizes()[0] * m.sizes()[1]
        && os.len() >= 2
        && (m.sizes()[1] <= 1 || os[1] == 1)
}

/// Sum (or mean) of a channels-last f32 image over its height and width (see
/// [`pools_channels_last`]): whole rows of channels are added pixel by pixel, where the
/// generic walk would stride through memory once per channel.
fn image_sum_channels_last(
    x: &ptero_core::TensorRef<'_>,
    mut o: ptero_core::TensorMut<'_>,
    mean: bool,
) -> Result<()> {
    let m = x.meta;
    let [n, c, h, w] = [m.sizes()[0], m.sizes()[1], m.sizes()[2], m.sizes()[3]];
    let os = o.meta.strides();
    let xd: &[f32] = x.data()?;
    let od: &mut [f32] = o.data()?;
    let pixels = h * w;
    let scale = if mean { 1.0 / pixels as f32 } else { 1.0 };
    let oob = |what: &str| Error::OutOfBounds(alloc::format!("{what} of a channels-last mean"));
    for b in 0..n {
        let row = od
            .get_mut(b * os[0]..b * os[0] + c)
            .ok_or_else(|| oob("output"))?;
        row.fill(0.0);
        let img = xd
            .get(b * c * pixels..(b + 1) * c * pixels)
            .ok_or_else(|| oob("input"))?;
        if c > 0 {
            ptero_simd::ops::add_rows(img, row);
        }
        if mean {
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(())
}

/// `self, dim[]?, keepdim=False, *, dtype=None, out`
fn sum_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    check_dtype_arg(a, 3, 4)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let keepdim = a.bool(2)?;
    accumulate(a, mask, keepdim, 4, Acc::Sum)
}

/// `self, dim[]?, keepdim=False, *, dtype=None, out`
fn mean_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    check_dtype_arg(a, 3, 4)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let keepdim = a.bool(2)?;
    accumulate(a, mask, keepdim, 4, Acc::Mean)
}

/// `self, *, dtype=None, out`
fn mean_dtype_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    check_dtype_arg(a, 1, 2)?;
    let mask = [true; MAXD];
    accumulate(a, mask, false, 2, Acc::Mean)
}

/// `self, *, dtype=None, out`
fn prod_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    check_dtype_arg(a, 1, 2)?;
    accumulate(a, [true; MAXD], false, 2, Acc::Prod)
}

/// `self, dim, keepdim=False, *, dtype=None, out`
fn prod_int_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    check_dtype_arg(a, 3, 4)?;
    let mask = single_dim_mask(a.int(1)?, a.meta(0)?.dim())?;
    let keepdim = a.bool(2)?;
    accumulate(a, mask, keepdim, 4, Acc::Prod)
}

// ---------------------------------------------------------------------------------------
// amax/amin, max/min, argmax/argmin
// ---------------------------------------------------------------------------------------

fn empty_reduction(what: &str) -> Error {
    Error::invalid(alloc::format!(
        "{what}: cannot reduce over a dimension of size 0 (the reduction has no identity)"
    ))
}

/// The extreme value of a lane and the logical position of its first occurrence.
/// NaN wins over everything (first NaN), like PyTorch.
fn extreme(plan: &Plan, bytes: &[u8], dt: ScalarType, base: usize, max: bool) -> (f64, i64, usize) {
    let (mut bf, mut bi, mut at, mut k) = (0.0f64, 0i64, 0usize, 0usize);
    if dt.is_float() {
        plan.lane_f64(bytes, dt, base, |v| {
            let better =
                k == 0 || (!bf.is_nan() && (v.is_nan() || if max { v > bf } else { v < bf }));
            if better {
                bf = v;
                at = k;
            }
            k += 1;
        });
        (bf, 0, at)
    } else {
        plan.lane_i64(bytes, dt, base, |v| {
            if k == 0 || if max { v > bi } else { v < bi } {
                bi = v;
                at = k;
            }
            k += 1;
        });
        (bi as f64, bi, at)
    }
}

/// Reduces to the extreme value (`vals`) and/or its index (`idx`).
fn extreme_into(
    a: &mut KernelArgs<'_>,
    mask: [bool; MAXD],
    keepdim: bool,
    vals: Option<usize>,
    idx: Option<usize>,
    max: bool,
    what: &str,
) -> Result<()> {
    let (mut outs, mut n_outs) = ([0usize; 2], 0);
    for &o in vals.iter().chain(idx.iter()) {
        outs[n_outs] = o;
        n_outs += 1;
    }
    let plan = resize_plan(a, 0, mask, keepdim, &outs[..n_outs])?;
    if plan.n == 0 {
        return Err(empty_reduction(what));
    }
    if let Some(i) = idx {
        let t = a.meta(i)?.dtype;
        if t != ScalarType::Long {
            return Err(Error::Dtype {
                arg: i,
                expected: "int64 (indices)".into(),
                found: t,
            });
        }
    }
    let vm = match vals {
        Some(v) => Some(*a.meta(v)?),
        None => None,
    };
    if let Some(m) = &vm {
        // The value store helpers skip opaque dtypes: reject them rather than leave
        // the out unwritten.
        numeric(vals.unwrap_or(0), m.dtype)?;
    }
    let im = match idx {
        Some(i) => Some(*a.meta(i)?),
        None => None,
    };
    let zeros = Dims::filled(plan.kept_shape.len(), 0).unwrap_or_default();
    let vst = vm.as_ref().map_or(zeros, |m| plan.kept_out(m));
    let ist = im.as_ref().map_or(zeros, |m| plan.kept_out(m));
    let x = a.tensor(0)?;
    let xd = x.meta.dtype;
    let mut vo = match vals {
        Some(v) => Some(a.out(v)?),
        None => None,
    };
    let mut io = match idx {
        Some(i) => Some(a.out(i)?),
        None => None,
    };
    let vdt = vm.map(|m| m.dtype).unwrap_or(xd);
    let exact_int = !xd.is_float();
    let mut meter = Meter::new(a);
    let mut stop = Ok(());
    plan.each([vst.as_slice(), ist.as_slice()], |base, [o0, o1]| {
        if stop.is_err() {
            return;
        }
        stop = meter.add(plan.n as u64);
        let (f, i, at) = extreme(&plan, x.bytes, xd, base, max);
        if let Some(v) = vo.as_mut() {
            if exact_int {
                store_i64(v.bytes, vdt, o0, i);
            } else {
                store_f64(v.bytes, vdt, o0, f);
            }
        }
        if let Some(ix) = io.as_mut() {
            store_i64(ix.bytes, ScalarType::Long, o1, at as i64);
        }
    });
    stop
}

/// `self, dim[]=[], keepdim=False, *, out`
fn amax_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let keepdim = a.bool(2)?;
    extreme_into(a, mask, keepdim, Some(3), None, true, "amax")
}

fn amin_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let keepdim = a.bool(2)?;
    extreme_into(a, mask, keepdim, Some(3), None, false, "amin")
}

/// `self, dim?, keepdim=False, *, out`
fn arg_extreme(a: &mut KernelArgs<'_>, max: bool) -> Result<()> {
    a.expect_len(4)?;
    let rank = a.meta(0)?.dim();
    let (mask, keepdim) = match a.opt_int(1)? {
        Some(d) => (single_dim_mask(d, rank)?, a.bool(2)?),
        // Over the flattened tensor; keepdim then keeps every dim as size 1.
        None => ([true; MAXD], a.bool(2)?),
    };
    extreme_into(
        a,
        mask,
        keepdim,
        None,
        Some(3),
        max,
        if max { "argmax" } else { "argmin" },
    )
}

fn argmax_out(a: &mut KernelArgs<'_>) -> Result<()> {
    arg_extreme(a, true)
}

fn argmin_out(a: &mut KernelArgs<'_>) -> Result<()> {
    arg_extreme(a, false)
}

/// `self, dim, keepdim=False, *, values, indices`
fn dim_extreme(a: &mut KernelArgs<'_>, max: bool) -> Result<()> {
    a.expect_len(5)?;
    let rank = a.meta(0)?.dim();
    let mask = single_dim_mask(a.int(1)?, rank)?;
    let keepdim = a.bool(2)?;
    extreme_into(
        a,
        mask,
        keepdim,
        Some(3),
        Some(4),
        max,
        if max { "max" } else { "min" },
    )
}

fn max_dim_out(a: &mut KernelArgs<'_>) -> Result<()> {
    dim_extreme(a, true)
}

fn min_dim_out(a: &mut KernelArgs<'_>) -> Result<()> {
    dim_extreme(a, false)
}

/// `self, *, out`
fn max_unary_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    extreme_into(a, [true; MAXD], false, Some(1), None, true, "max")
}

fn min_unary_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    extreme_into(a, [true; MAXD], false, Some(1), None, false, "min")
}

// ---------------------------------------------------------------------------------------
// var
// ---------------------------------------------------------------------------------------

fn variance(
    a: &mut KernelArgs<'_>,
    mask: [bool; MAXD],
    keepdim: bool,
    correction: f64,
    out: usize,
    mean_out: Option<usize>,
) -> Result<()> {
    let outs: &[usize] = match mean_out {
        Some(m) => &[out, m],
        None => &[out],
    };
    let plan = resize_plan(a, 0, mask, keepdim, outs)?;
    for &o in outs {
        let t = a.meta(o)?.dtype;
        if !t.is_float() {
            return Err(Error::Dtype {
                arg: o,
                expected: "a floating dtype (var)".into(),
                found: t,
            });
        }
    }
    let om = *a.meta(out)?;
    let ost = plan.kept_out(&om);
    let x = a.tensor(0)?;
    let xd = x.meta.dtype;
    let o = a.out(out)?;
    let n = plan.n as f64;
    let denom = (n - correction).max(0.0);
    let lane = |base: usize| {
        let mut sum = 0.0;
        plan.lane_f64(x.bytes, xd, base, |v| sum += v);
        let mean = sum / n;
        let mut ss = 0.0;
        plan.lane_f64(x.bytes, xd, base, |v| ss += (v - mean) * (v - mean));
        (ss / denom, mean)
    };
    let mut meter = Meter::new(a);
    let mut stop = Ok(());
    let units = plan.n as u64;
    match mean_out {
        None => plan.each([ost.as_slice()], |base, [oo]| {
            if stop.is_err() {
                return;
            }
            stop = meter.add(units);
            store_f64(o.bytes, om.dtype, oo, lane(base).0);
        }),
        Some(mo) => {
            let mm = *a.meta(mo)?;
            let mst = plan.kept_out(&mm);
            let m = a.out(mo)?;
            plan.each([ost.as_slice(), mst.as_slice()], |base, [oo, mo]| {
                if stop.is_err() {
                    return;
                }
                stop = meter.add(units);
                let (v, mean) = lane(base);
                store_f64(o.bytes, om.dtype, oo, v);
                store_f64(m.bytes, mm.dtype, mo, mean);
            });
        }
    }
    stop
}

/// `self, dim[]?, *, correction=None, keepdim=False, out`
fn var_correction_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let correction = a.opt_scalar(2)?.map_or(1.0, |s| s.to_f64());
    let keepdim = a.bool(3)?;
    variance(a, mask, keepdim, correction, 4, None)
}

/// `var_mean.correction_out(self, dim[]?, *, correction=None, keepdim=False, out0, out1)`:
/// `(var, mean)`.
fn var_mean_correction_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let correction = a.opt_scalar(2)?.map_or(1.0, |s| s.to_f64());
    let keepdim = a.bool(3)?;
    variance(a, mask, keepdim, correction, 4, Some(5))
}

/// `self, dim[]?, unbiased=True, keepdim=False, *, out`
fn var_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let correction = if a.bool(2)? { 1.0 } else { 0.0 };
    let keepdim = a.bool(3)?;
    variance(a, mask, keepdim, correction, 4, None)
}

// ---------------------------------------------------------------------------------------
// any
// ---------------------------------------------------------------------------------------

fn any_into(a: &mut KernelArgs<'_>, mask: [bool; MAXD], keepdim: bool, out: usize) -> Result<()> {
    let plan = resize_plan(a, 0, mask, keepdim, &[out])?;
    let om = *a.meta(out)?;
    if !matches!(om.dtype, ScalarType::Bool | ScalarType::Byte) {
        return Err(Error::Dtype {
            arg: out,
            expected: "bool or uint8".into(),
            found: om.dtype,
        });
    }
    let ost = plan.kept_out(&om);
    let x = a.tensor(0)?;
    let xd = x.meta.dtype;
    let o = a.out(out)?;
    let mut meter = Meter::new(a);
    let mut stop = Ok(());
    // A byte mask reduced over one contiguous run: scan the bytes.
    let run = matches!(xd, ScalarType::Bool | ScalarType::Byte)
        && crate::util::contiguous_strides(&plan.red_shape).as_slice() == plan.red_in.as_slice();
    plan.each([ost.as_slice()], |base, [oo]| {
        if stop.is_err() {
            return;
        }
        stop = meter.add(plan.n as u64);
        let bytes = base
            .checked_add(plan.n)
            .and_then(|end| x.bytes.get(base..end));
        let any = match bytes {
            Some(b) if run => b.iter().any(|&v| v != 0),
            _ => {
                let mut any = false;
                for_each_offset(&plan.red_shape, [&plan.red_in], |[r]| {
                    any = any || load_bool(x.bytes, xd, base + r);
                });
                any
            }
        };
        store_bool(o.bytes, om.dtype, oo, any);
    });
    stop
}

/// `self, dim, keepdim=False, *, out`
fn any_dim_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let mask = single_dim_mask(a.int(1)?, a.meta(0)?.dim())?;
    let keepdim = a.bool(2)?;
    any_into(a, mask, keepdim, 3)
}

/// `self, *, out`
fn any_all_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    any_into(a, [true; MAXD], false, 1)
}

/// `self, dim[]?, keepdim=False, *, out`
fn any_dims_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let mask = dim_mask(a, 1, a.meta(0)?.dim())?;
    let keepdim = a.bool(2)?;
    any_into(a, mask, keepdim, 3)
}

// ---------------------------------------------------------------------------------------
// cumsum, topk
// ---------------------------------------------------------------------------------------

/// Input and out dims split into "all but `dim`" and `dim` itself.
fn lanes_along(m: &TensorMeta, dim: usize) -> (Dims, Dims) {
    let (mut shape, mut st) = (m.dims(), m.stride_dims());
    if m.dim() > 0 {
        shape.remove(dim);
        st.remove(dim);
    }
    (shape, st)
}

/// `self, dim, *, dtype=None, out`
fn cumsum_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    check_dtype_arg(a, 2, 3)?;
    let m = *a.meta(0)?;
    numeric(0, m.dtype)?;
    let dim = normalize_dim(a.int(1)?, m.dim())?;
    a.resize(3, m.sizes())?;
    let om = *a.meta(3)?;
    let od = om.dtype;
    if m.dtype.is_float() && !od.is_float() {
        return Err(Error::Dtype {
            arg: 3,
            expected: alloc::format!("a dtype {} can be cast to", m.dtype),
            found: od,
        });
    }
    let float = ComputeKind::of(od)? == ComputeKind::Float;
    if m.numel() == 0 {
        // Lanes of length 0 can be enormously many: visit none.
        return Ok(());
    }
    let (shape, ist) = lanes_along(&m, dim);
    let (_, ost) = lanes_along(&om, dim);
    let (len, istep, ostep) = if m.dim() == 0 {
        (1, 0, 0)
    } else {
        (m.sizes()[dim], m.strides()[dim], om.strides()[dim])
    };
    let x = a.tensor(0)?;
    let o = a.out(3)?;
    let mut meter = Meter::new(a);
    let mut stop = Ok(());
    for_each_offset(&shape, [&ist, &ost], |[ib, ob]| {
        if stop.is_err() {
            return;
        }
        stop = meter.add(len as u64);
        if float {
            let mut acc = 0.0;
            for k in 0..len {
                acc += load_f64(x.bytes, m.dtype, ib + k * istep);
                store_f64(o.bytes, od, ob + k * ostep, acc);
            }
        } else {
            let mut acc = 0i64;
            for k in 0..len {
                acc = acc.wrapping_add(load_i64(x.bytes, m.dtype, ib + k * istep));
                store_i64(o.bytes, od, ob + k * ostep, acc);
            }
        }
    });
    stop
}

/// Orders (value, index) pairs for topk: by value (NaN above everything), ties by index.
fn cmp_f(a: &(f64, usize), b: &(f64, usize), largest: bool) -> Ordering {
    let ord = match (a.0.is_nan(), b.0.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal),
    };
    let ord = if largest { ord.reverse() } else { ord };
    ord.then(a.1.cmp(&b.1))
}

/// `self, k, dim=-1, largest=True, sorted=True, *, values, indices`
fn topk_values(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(7)?;
    let m = *a.meta(0)?;
    numeric(0, m.dtype)?;
    let dim = normalize_dim(a.int(2)?, m.dim())?;
    let size = if m.dim() == 0 { 1 } else { m.sizes()[dim] };
    let k = a.int(1)?;
    if k < 0 || k as usize > size {
        return Err(Error::invalid(alloc::format!(
            "topk: k = {k} is out of range for a dimension of size {size}"
        )));
    }
    let k = k as usize;
    let largest = a.bool(3)?;
    let mut shape = m.dims();
    if m.dim() > 0 {
        shape[dim] = k;
    }
    a.resize(5, &shape)?;
    a.resize(6, &shape)?;
    // A program may pass the input as an out: the resize then changed it under us.
    if a.meta(0)?.sizes() != m.sizes() {
        return Err(Error::invalid("topk: an out tensor is the input"));
    }
    let (vm, im) = (*a.meta(5)?, *a.meta(6)?);
    if im.dtype != ScalarType::Long {
        return Err(Error::Dtype {
            arg: 6,
            expected: "int64 (indices)".into(),
            found: im.dtype,
        });
    }
    if m.numel() == 0 {
        // `k <= size`, so the outs are empty too; lanes of length 0 can be enormously
        // many: visit none.
        return Ok(());
    }
    let (lshape, xst) = lanes_along(&m, dim);
    let (_, vst) = lanes_along(&vm, dim);
    let (_, ist) = lanes_along(&im, dim);
    let step = |t: &TensorMeta| if t.dim() == 0 { 0 } else { t.strides()[dim] };
    let (xs, vs, is) = (step(&m), step(&vm), step(&im));
    let x = a.tensor(0)?;
    let vo = a.out(5)?;
    let io = a.out(6)?;
    let ec = ElemCopy::new(vm.dtype, m.dtype)?;
    let float = m.dtype.is_float();
    // Scratch: one (key, index) pair per element of a lane, fallible and within the
    // method's memory limit (a lane is as long as the input).
    let mut keys: Vec<(f64, usize)> = a.scratch(if float { size } else { 0 })?;
    let mut ikeys: Vec<(i64, usize)> = a.scratch(if float { 0 } else { size })?;
    // Sorting a lane costs about size * log2(size) comparisons.
    let sort_units = (size as u64).saturating_mul(u64::from(usize::BITS - size.leading_zeros()));
    let mut meter = Meter::charging(a);
    let mut stop = Ok(());
    for_each_offset(&lshape, [&xst, &vst, &ist], |[xb, vb, ib]| {
        if stop.is_err() {
            return;
        }
        stop = meter.add(sort_units);
        let mut emit = |r: usize, j: usize| {
            ec.copy(vo.bytes, vb + r * vs, x.bytes, xb + j * xs);
            store_i64(io.bytes, ScalarType::Long, ib + r * is, j as i64);
        };
        if float {
            for (j, key) in keys.iter_mut().enumerate() {
                *key = (load_f64(x.bytes, m.dtype, xb + j * xs), j);
            }
            keys.sort_by(|p, q| cmp_f(p, q, largest));
            for (r, p) in keys.iter().take(k).enumerate() {
                emit(r, p.1);
            }
        } else {
            for (j, key) in ikeys.iter_mut().enumerate() {
                *key = (load_i64(x.bytes, m.dtype, xb + j * xs), j);
            }
            ikeys.sort_by(|p, q| {
                let o = p.0.cmp(&q.0);
                (if largest { o.reverse() } else { o }).then(p.1.cmp(&q.1))
            });
            for (r, p) in ikeys.iter().take(k).enumerate() {
                emit(r, p.1);
            }
        }
    });
    stop
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::sum.IntList_out", sum_out);
    reg.register("aten::mean.out", mean_out);
    reg.register("aten::mean.dtype_out", mean_dtype_out);
    reg.register("aten::prod.out", prod_out);
    reg.register("aten::prod.int_out", prod_int_out);
    reg.register("aten::amax.out", amax_out);
    reg.register("aten::amin.out", amin_out);
    reg.register("aten::argmax.out", argmax_out);
    reg.register("aten::argmin.out", argmin_out);
    reg.register("aten::max.dim_max", max_dim_out);
    reg.register("aten::min.dim_min", min_dim_out);
    reg.register("aten::max.unary_out", max_unary_out);
    reg.register("aten::min.unary_out", min_unary_out);
    reg.register("aten::var.correction_out", var_correction_out);
    reg.register("aten::var.out", var_out);
    reg.register("aten::var_mean.correction_out", var_mean_correction_out);
    reg.register("aten::any.out", any_dim_out);
    reg.register("aten::any.all_out", any_all_out);
    reg.register("aten::any.dims_out", any_dims_out);
    reg.register("aten::cumsum.out", cumsum_out);
    reg.register("aten::topk.values", topk_values);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    fn iota(dt: ScalarType, shape: &[usize]) -> OwnedTensor {
        let n: usize = shape.iter().product();
        OwnedTensor::from_f64(dt, shape, &(0..n).map(|x| x as f64).collect::<Vec<_>>())
    }
    fn f(shape: &[usize], v: &[f64]) -> Arg {
        Arg::T(OwnedTensor::from_f64(Float, shape, v))
    }
    fn t(x: OwnedTensor) -> Arg {
        Arg::T(x)
    }
    fn ints(v: &[i64]) -> Arg {
        Arg::Ints(v.to_vec())
    }
    fn out(dt: ScalarType, shape: &[usize]) -> Arg {
        Arg::Out(dt, shape.to_vec())
    }

    type Case = (&'static str, Vec<Arg>, usize, Vec<usize>, Vec<f64>);

    #[test]
    fn table() {
        let x = iota(Float, &[2, 3]);
        // Channels-last [1, 2, 2, 2]: sums over C must follow logical indices.
        let cl = iota(Float, &[1, 2, 2, 2]).with_dim_order(&[0, 2, 3, 1]);
        let nan = f(&[4], &[1., f64::NAN, 5., f64::NAN]);
        let cases: Vec<Case> = vec![
            (
                "aten::sum.IntList_out",
                vec![
                    t(x.clone()),
                    ints(&[1]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[2]),
                ],
                0,
                vec![2],
                vec![3., 12.],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(x.clone()),
                    Arg::None,
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[]),
                ],
                0,
                vec![],
                vec![15.],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(x.clone()),
                    ints(&[]),
                    Arg::Bool(true),
                    Arg::None,
                    out(Float, &[1, 1]),
                ],
                0,
                vec![1, 1],
                vec![15.],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(cl.clone()),
                    ints(&[1]),
                    Arg::Bool(true),
                    Arg::None,
                    out(Float, &[1, 1, 2, 2]),
                ],
                0,
                vec![1, 1, 2, 2],
                vec![4., 6., 8., 10.],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(iota(Int, &[3])),
                    ints(&[0]),
                    Arg::Bool(false),
                    Arg::Int(4),
                    out(Long, &[]),
                ],
                0,
                vec![],
                vec![3.],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(OwnedTensor::bools(&[3], &[true, false, true])),
                    Arg::None,
                    Arg::Bool(false),
                    Arg::None,
                    out(Long, &[]),
                ],
                0,
                vec![],
                vec![2.],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(iota(Float, &[0, 3])),
                    ints(&[0]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[3]),
                ],
                0,
                vec![3],
                vec![0., 0., 0.],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(iota(Half, &[4])),
                    ints(&[0]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Half, &[]),
                ],
                0,
                vec![],
                vec![6.],
            ),
            (
                "aten::mean.out",
                vec![
                    t(x.clone()),
                    ints(&[0, 1]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[]),
                ],
                0,
                vec![],
                vec![2.5],
            ),
            // A global average pool of a channels-last image (its own fast path).
            (
                "aten::mean.out",
                vec![
                    t(iota(Float, &[2, 3, 2, 2]).with_dim_order(&[0, 2, 3, 1])),
                    ints(&[-1, -2]),
                    Arg::Bool(true),
                    Arg::None,
                    out(Float, &[2, 3, 1, 1]),
                ],
                0,
                vec![2, 3, 1, 1],
                vec![1.5, 5.5, 9.5, 13.5, 17.5, 21.5],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(iota(Float, &[2, 3, 2, 2]).with_dim_order(&[0, 2, 3, 1])),
                    ints(&[2, 3]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[2, 3]),
                ],
                0,
                vec![2, 3],
                vec![6., 22., 38., 54., 70., 86.],
            ),
            (
                "aten::mean.out",
                vec![
                    t(iota(Float, &[0])),
                    ints(&[0]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[]),
                ],
                0,
                vec![],
                vec![f64::NAN],
            ),
            (
                "aten::mean.dtype_out",
                vec![t(x.clone()), Arg::None, out(Float, &[])],
                0,
                vec![],
                vec![2.5],
            ),
            (
                "aten::amax.out",
                vec![
                    t(cl.clone()),
                    ints(&[1, -1]),
                    Arg::Bool(false),
                    out(Float, &[1, 2]),
                ],
                0,
                vec![1, 2],
                vec![5., 7.],
            ),
            (
                "aten::amin.out",
                vec![nan.clone(), ints(&[]), Arg::Bool(false), out(Float, &[])],
                0,
                vec![],
                vec![f64::NAN],
            ),
            (
                "aten::amax.out",
                vec![
                    t(iota(Long, &[3])),
                    ints(&[0]),
                    Arg::Bool(false),
                    out(Long, &[]),
                ],
                0,
                vec![],
                vec![2.],
            ),
            (
                "aten::var.correction_out",
                vec![
                    f(&[4], &[1., 2., 3., 4.]),
                    Arg::None,
                    Arg::None,
                    Arg::Bool(false),
                    out(Float, &[]),
                ],
                0,
                vec![],
                vec![5. / 3.],
            ),
            (
                "aten::var.correction_out",
                vec![
                    t(x.clone()),
                    ints(&[1]),
                    Arg::Int(0),
                    Arg::Bool(true),
                    out(Float, &[2, 1]),
                ],
                0,
                vec![2, 1],
                vec![2. / 3., 2. / 3.],
            ),
            (
                "aten::var.out",
                vec![
                    f(&[2], &[1., 3.]),
                    ints(&[0]),
                    Arg::Bool(true),
                    Arg::Bool(false),
                    out(Float, &[]),
                ],
                0,
                vec![],
                vec![2.],
            ),
            (
                "aten::argmax.out",
                vec![
                    f(&[5], &[1., 7., 3., 7., 0.]),
                    Arg::None,
                    Arg::Bool(false),
                    out(Long, &[]),
                ],
                0,
                vec![],
                vec![1.],
            ),
            (
                "aten::argmax.out",
                vec![nan.clone(), Arg::Int(0), Arg::Bool(true), out(Long, &[1])],
                0,
                vec![1],
                vec![1.],
            ),
            (
                "aten::argmin.out",
                vec![
                    t(cl.clone()),
                    Arg::Int(1),
                    Arg::Bool(false),
                    out(Long, &[1, 2, 2]),
                ],
                0,
                vec![1, 2, 2],
                vec![0., 0., 0., 0.],
            ),
            (
                "aten::argmax.out",
                vec![t(x.clone()), Arg::None, Arg::Bool(true), out(Long, &[1, 1])],
                0,
                vec![1, 1],
                vec![5.],
            ),
            (
                "aten::max.dim_max",
                vec![
                    f(&[2, 2], &[1., 4., 3., 2.]),
                    Arg::Int(1),
                    Arg::Bool(false),
                    out(Float, &[2]),
                    out(Long, &[2]),
                ],
                1,
                vec![2],
                vec![1., 0.],
            ),
            (
                "aten::max.dim_max",
                vec![
                    f(&[2, 2], &[1., 4., 3., 2.]),
                    Arg::Int(1),
                    Arg::Bool(false),
                    out(Float, &[2]),
                    out(Long, &[2]),
                ],
                0,
                vec![2],
                vec![4., 3.],
            ),
            (
                "aten::min.dim_min",
                vec![
                    f(&[2, 2], &[1., 4., 3., 2.]),
                    Arg::Int(0),
                    Arg::Bool(true),
                    out(Float, &[1, 2]),
                    out(Long, &[1, 2]),
                ],
                1,
                vec![1, 2],
                vec![0., 1.],
            ),
            (
                "aten::max.unary_out",
                vec![t(x.clone()), out(Float, &[])],
                0,
                vec![],
                vec![5.],
            ),
            (
                "aten::min.unary_out",
                vec![f(&[], &[-3.]), out(Float, &[])],
                0,
                vec![],
                vec![-3.],
            ),
            (
                "aten::prod.out",
                vec![f(&[3], &[2., 3., 4.]), Arg::None, out(Float, &[])],
                0,
                vec![],
                vec![24.],
            ),
            (
                "aten::prod.int_out",
                vec![
                    t(iota(Long, &[2, 2])),
                    Arg::Int(0),
                    Arg::Bool(false),
                    Arg::None,
                    out(Long, &[2]),
                ],
                0,
                vec![2],
                vec![0., 3.],
            ),
            (
                "aten::any.out",
                vec![
                    f(&[2, 2], &[0., 0., 0., 1.]),
                    Arg::Int(1),
                    Arg::Bool(false),
                    out(Bool, &[2]),
                ],
                0,
                vec![2],
                vec![0., 1.],
            ),
            (
                "aten::any.all_out",
                vec![f(&[2], &[0., f64::NAN]), out(Bool, &[])],
                0,
                vec![],
                vec![1.],
            ),
            (
                "aten::any.dims_out",
                vec![
                    t(iota(Float, &[0, 2])),
                    Arg::None,
                    Arg::Bool(false),
                    out(Bool, &[]),
                ],
                0,
                vec![],
                vec![0.],
            ),
            (
                "aten::cumsum.out",
                vec![t(x.clone()), Arg::Int(1), Arg::None, out(Float, &[2, 3])],
                0,
                vec![2, 3],
                vec![0., 1., 3., 3., 7., 12.],
            ),
            (
                "aten::cumsum.out",
                vec![
                    t(iota(Int, &[3])),
                    Arg::Int(0),
                    Arg::Int(4),
                    out(Long, &[3]),
                ],
                0,
                vec![3],
                vec![0., 1., 3.],
            ),
            (
                "aten::topk.values",
                vec![
                    f(&[5], &[3., 1., 4., 1., 5.]),
                    Arg::Int(3),
                    Arg::Int(-1),
                    Arg::Bool(true),
                    Arg::Bool(true),
                    out(Float, &[3]),
                    out(Long, &[3]),
                ],
                0,
                vec![3],
                vec![5., 4., 3.],
            ),
            (
                "aten::topk.values",
                vec![
                    f(&[5], &[3., 1., 4., 1., 5.]),
                    Arg::Int(2),
                    Arg::Int(0),
                    Arg::Bool(false),
                    Arg::Bool(true),
                    out(Float, &[2]),
                    out(Long, &[2]),
                ],
                1,
                vec![2],
                vec![1., 3.],
            ),
            (
                "aten::topk.values",
                vec![
                    t(x.with_dim_order(&[1, 0])),
                    Arg::Int(1),
                    Arg::Int(0),
                    Arg::Bool(true),
                    Arg::Bool(true),
                    out(Float, &[1, 3]),
                    out(Long, &[1, 3]),
                ],
                0,
                vec![1, 3],
                vec![3., 4., 5.],
            ),
        ];
        for (op, args, which, shape, want) in cases {
            let o = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(o.tensors[which].sizes, shape, "{op}");
            assert_close(&o.tensors[which].to_f64(), &want, 1e-6, 1e-6);
        }
    }

    #[test]
    fn errors() {
        let x = iota(Float, &[2, 3]);
        let e = iota(Float, &[0]);
        let bad: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::amax.out",
                vec![t(e.clone()), ints(&[0]), Arg::Bool(false), out(Float, &[])],
            ),
            (
                "aten::argmax.out",
                vec![t(e), Arg::None, Arg::Bool(false), out(Long, &[])],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(x.clone()),
                    ints(&[0, 0]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[3]),
                ],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(x.clone()),
                    ints(&[2]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[2]),
                ],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(x.clone()),
                    ints(&[1]),
                    Arg::Bool(false),
                    Arg::Int(7),
                    out(Float, &[2]),
                ],
            ),
            (
                "aten::mean.out",
                vec![
                    t(iota(Long, &[2])),
                    ints(&[0]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Long, &[]),
                ],
            ),
            (
                "aten::topk.values",
                vec![
                    t(x.clone()),
                    Arg::Int(4),
                    Arg::Int(-1),
                    Arg::Bool(true),
                    Arg::Bool(true),
                    out(Float, &[2, 4]),
                    out(Long, &[2, 4]),
                ],
            ),
            (
                "aten::max.dim_max",
                vec![
                    t(x),
                    Arg::Int(0),
                    Arg::Bool(false),
                    out(Float, &[3]),
                    out(Int, &[3]),
                ],
            ),
        ];
        for (op, args) in bad {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }

    #[test]
    fn var_mean() {
        let name = "aten::var_mean.correction_out";
        let x = OwnedTensor::from_f64(Float, &[2, 3], &[1., 2., 3., 4., 6., 8.]);
        let cases: [(Arg, Arg, bool, &[usize], Vec<f64>, Vec<f64>); 3] = [
            (
                Arg::Ints(vec![1]),
                Arg::None,
                false,
                &[2],
                vec![1., 4.],
                vec![2., 6.],
            ),
            (
                Arg::Ints(vec![-1]),
                Arg::Int(0),
                true,
                &[2, 1],
                vec![2. / 3., 8. / 3.],
                vec![2., 6.],
            ),
            (
                Arg::Ints(vec![0]),
                Arg::Double(1.0),
                false,
                &[3],
                vec![4.5, 8., 12.5],
                vec![2.5, 4., 5.5],
            ),
        ];
        for (dims, corr, keep, shape, var, mean) in cases {
            let out = run_op(
                name,
                vec![
                    Arg::T(x.clone()),
                    dims,
                    corr,
                    Arg::Bool(keep),
                    Arg::Out(Float, shape.to_vec()),
                    Arg::Out(Float, shape.to_vec()),
                ],
            )
            .unwrap();
            assert_eq!(out.tensors[0].sizes, shape);
            assert_close(&out.tensors[0].to_f64(), &var, 1e-6, 1e-6);
            assert_close(&out.tensors[1].to_f64(), &mean, 1e-6, 1e-6);
        }
        // Channels-last, all dims; empty lane gives NaN; int out is an error.
        let cl = OwnedTensor::from_f64(Double, &[1, 2, 1, 2], &[1., 2., 3., 4.])
            .with_dim_order(&[0, 2, 3, 1]);
        let out = run_op(
            name,
            vec![
                Arg::T(cl),
                Arg::None,
                Arg::None,
                Arg::Bool(false),
                Arg::Out(Double, vec![]),
                Arg::Out(Double, vec![]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &[5. / 3.], 1e-12, 0.0);
        assert_close(&out.tensors[1].to_f64(), &[2.5], 1e-12, 0.0);
        let e = OwnedTensor::zeros(Float, &[0, 2]);
        let out = run_op(
            name,
            vec![
                Arg::T(e),
                Arg::Ints(vec![0]),
                Arg::None,
                Arg::Bool(false),
                Arg::Out(Float, vec![2]),
                Arg::Out(Float, vec![2]),
            ],
        )
        .unwrap();
        assert!(out.tensors[0].to_f64().iter().all(|v| v.is_nan()));
        assert!(out.tensors[1].to_f64().iter().all(|v| v.is_nan()));
        assert!(run_op(
            name,
            vec![
                Arg::T(x),
                Arg::None,
                Arg::None,
                Arg::Bool(false),
                Arg::Out(Float, vec![]),
                Arg::Out(Long, vec![])
            ],
        )
        .is_err());
    }

    #[test]
    fn empty_inputs_with_huge_dims() {
        // No elements, but 2^62 lanes of length 0 (cumsum and topk used to walk them all)
        // or reduced dims multiplying past usize (a panic in debug builds).
        let big = 1usize << 31;
        let cases: Vec<(&str, Vec<Arg>, Vec<usize>)> = vec![
            (
                "aten::cumsum.out",
                vec![
                    t(OwnedTensor::zeros(Float, &[0, big, big])),
                    Arg::Int(0),
                    Arg::None,
                    out(Float, &[0, 1, 1]),
                ],
                vec![0, big, big],
            ),
            (
                "aten::topk.values",
                vec![
                    t(OwnedTensor::zeros(Float, &[big, big, 0])),
                    Arg::Int(0),
                    Arg::Int(-1),
                    Arg::Bool(true),
                    Arg::Bool(true),
                    out(Float, &[1, 1, 0]),
                    out(Long, &[1, 1, 0]),
                ],
                vec![big, big, 0],
            ),
            (
                "aten::sum.IntList_out",
                vec![
                    t(OwnedTensor::zeros(Float, &[0, big, big, big])),
                    ints(&[1, 2, 3]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[0]),
                ],
                vec![0],
            ),
        ];
        for (op, args, shape) in cases {
            let got = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(got.tensors[0].sizes, shape, "{op}");
        }
    }

    #[test]
    fn opaque_value_outs_are_rejected() {
        // The value stores skip float8: an error rather than an unwritten out.
        let f8 = OwnedTensor {
            dtype: Float8E5M2,
            sizes: vec![],
            dim_order: vec![],
            bytes: vec![0xff],
        };
        assert!(run_op(
            "aten::amax.out",
            vec![
                f(&[2], &[1., 2.]),
                ints(&[]),
                Arg::Bool(false),
                Arg::OutLike(f8)
            ],
        )
        .is_err());
    }

    #[test]
    fn scratch_and_deadline() {
        // topk's scratch is bounded by the method's memory limit: an error, not an abort.
        let x = iota(Float, &[1000]);
        let small = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: 1000,
            ..Default::default()
        };
        let got = run_op_with(
            "aten::topk.values",
            vec![
                t(x.clone()),
                Arg::Int(1),
                Arg::Int(0),
                Arg::Bool(true),
                Arg::Bool(true),
                out(Float, &[1]),
                out(Long, &[1]),
            ],
            small,
        );
        assert!(matches!(got, Err(ptero_core::Error::OutOfMemory { .. })));
        // Long reductions poll the caller's deadline.
        let big = OwnedTensor::zeros(Float, &[512, 1024]);
        let cases: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::sum.IntList_out",
                vec![
                    t(big.clone()),
                    ints(&[1]),
                    Arg::Bool(false),
                    Arg::None,
                    out(Float, &[512]),
                ],
            ),
            (
                "aten::amax.out",
                vec![
                    t(big.clone()),
                    ints(&[1]),
                    Arg::Bool(false),
                    out(Float, &[512]),
                ],
            ),
            (
                "aten::cumsum.out",
                vec![
                    t(big.clone()),
                    Arg::Int(1),
                    Arg::None,
                    out(Float, &[512, 1024]),
                ],
            ),
            (
                "aten::var.correction_out",
                vec![
                    t(big.clone()),
                    ints(&[1]),
                    Arg::None,
                    Arg::Bool(false),
                    out(Float, &[512]),
                ],
            ),
            (
                "aten::any.dims_out",
                vec![
                    t(big.clone()),
                    ints(&[1]),
                    Arg::Bool(false),
                    out(Bool, &[512]),
                ],
            ),
        ];
        for (op, args) in cases {
            assert_eq!(
                run_op_interrupted(op, args).unwrap_err(),
                ptero_core::Error::Interrupted,
                "{op}"
            );
        }
    }
}
