//! Normalization: batch norm (inference and training forms), layer norm, group norm.
//!
//! Statistics are computed in f64 with two passes (mean, then squared deviations), which
//! matches PyTorch's Welford results to within rounding. Every op walks its tensors
//! through their strides, so any dim order works; layer norm over contiguous f32 rows,
//! the transformer case, has a typed path.

use ptero_core::{Dims, Error, KernelArgs, KernelRegistry, Result, ScalarType, Storage};

use crate::util::work::{sat_product, Meter};
use crate::util::{broadcast_strides, for_each_offset, load_f64, store_f64};

fn check_float(a: &KernelArgs<'_>, arg: usize, dtype: Option<ScalarType>) -> Result<ScalarType> {
    let t = a.meta(arg)?.dtype;
    let ok = match dtype {
        Some(d) => t == d,
        None => t.is_float(),
    };
    if !ok {
        return Err(Error::Dtype {
            arg,
            expected: match dtype {
                Some(d) => alloc::string::ToString::to_string(d.name()),
                None => "a floating dtype".into(),
            },
            found: t,
        });
    }
    Ok(t)
}

fn opt_float(a: &KernelArgs<'_>, arg: usize, dtype: ScalarType) -> Result<()> {
    if a.opt_meta(arg)?.is_some() {
        check_float(a, arg, Some(dtype))?;
    }
    Ok(())
}

/// A per-channel vector (weight, bias, running stats): must hold `c` elements.
fn check_vec(a: &KernelArgs<'_>, arg: usize, c: usize, what: &str) -> Result<Option<usize>> {
    match a.opt_meta(arg)? {
        None => Ok(None),
        Some(m) => {
            if m.numel() != c || m.dim() != 1 {
                return Err(Error::shape(alloc::format!(
                    "{what} must have shape [{c}], found {:?}",
                    m.sizes()
                )));
            }
            Ok(Some(m.strides()[0]))
        }
    }
}

fn dims(s: &[usize]) -> Dims {
    Dims::from_slice(s).unwrap_or_default()
}

/// Mean and biased variance of the elements of `shape` at `base + idx·strides`.
fn stats(
    x: &[u8],
    dtype: ScalarType,
    shape: &[usize],
    strides: &[usize],
    base: usize,
) -> (f64, f64) {
    let count = sat_product(shape);
    if count == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut sum = 0.0;
    for_each_offset(shape, [strides], |[o]| sum += load_f64(x, dtype, base + o));
    let mean = sum / count as f64;
    let mut sq = 0.0;
    for_each_offset(shape, [strides], |[o]| {
        let d = load_f64(x, dtype, base + o) - mean;
        sq += d * d;
    });
    (mean, sq / count as f64)
}

/// Batch norm over `[N, C, ...]` channels with given per-channel statistics, or batch
/// statistics when `stats_args` is `None`.
struct Bn {
    input: usize,
    weight: usize,
    bias: usize,
    out: usize,
    eps: f64,
}

fn bn_shape(a: &KernelArgs<'_>, input: usize) -> Result<(Dims, usize)> {
    let m = a.meta(input)?;
    if m.dim() < 2 {
        return Err(Error::shape(alloc::format!(
            "batch norm: expected an input of at least 2 dims [N, C, ...], found {:?}",
            m.sizes()
        )));
    }
    Ok((m.dims(), m.sizes()[1]))
}

/// Normalizes `input` into `out`, per channel `c`: `(x - mean(c)) * invstd(c) * w + b`.
fn bn_apply(a: &KernelArgs<'_>, bn: &Bn, stat: &dyn Fn(usize) -> (f64, f64)) -> Result<()> {
    let xm = a.meta(bn.input)?;
    let dtype = xm.dtype;
    let shape = xm.dims();
    let c = shape[1];
    let mut sub = shape;
    sub[1] = 1;
    let xst = xm.strides();
    let ost = a.meta(bn.out)?.strides();
    let wst = check_vec(a, bn.weight, c, "batch norm weight")?;
    let bst = check_vec(a, bn.bias, c, "batch norm bias")?;
    let (xs1, os1) = (xst[1], ost[1]);
    let xt = a.tensor(bn.input)?;
    let wt = a.opt_tensor(bn.weight)?;
    let bt = a.opt_tensor(bn.bias)?;
    let mut ot = a.out(bn.out)?;
    let contiguous = xm.is_contiguous() && a.meta(bn.out)?.is_contiguous();
    // Saturating: with N = 0 the other dims may multiply past usize (nothing is visited).
    let inner = sat_product(&shape[2..]);
    let mut meter = Meter::new(a);
    for ch in 0..c {
        meter.add(sat_product(&sub) as u64)?;
        let (mean, invstd) = stat(ch);
        let w = match (&wt, wst) {
            (Some(t), Some(s)) => load_f64(t.bytes, dtype, ch * s),
            _ => 1.0,
        };
        let b = match (&bt, bst) {
            (Some(t), Some(s)) => load_f64(t.bytes, dtype, ch * s),
            _ => 0.0,
        };
        if contiguous && dtype == ScalarType::Float {
            let (x, o) = (xt.data::<f32>()?, ot.data::<f32>()?);
            let (mean, invstd, w, b) = (mean as f32, invstd as f32, w as f32, b as f32);
            for n in 0..shape[0] {
                let s = (n * c + ch) * inner;
                if let (Some(xr), Some(or)) = (x.get(s..s + inner), o.get_mut(s..s + inner)) {
                    for (o, &x) in or.iter_mut().zip(xr) {
                        *o = (x - mean) * invstd * w + b;
                    }
                }
            }
            continue;
        }
        let ob = &mut *ot.bytes;
        for_each_offset(&sub, [xst, ost], |[xo, oo]| {
            let x = load_f64(xt.bytes, dtype, xo + ch * xs1);
            store_f64(ob, dtype, oo + ch * os1, (x - mean) * invstd * w + b);
        });
    }
    Ok(())
}

fn bn_running(
    a: &mut KernelArgs<'_>,
    bn: Bn,
    rm: usize,
    rv: usize,
    outs: [usize; 2],
) -> Result<()> {
    let (shape, c) = bn_shape(a, bn.input)?;
    let dtype = check_float(a, bn.input, None)?;
    opt_float(a, bn.weight, dtype)?;
    opt_float(a, bn.bias, dtype)?;
    check_float(a, rm, Some(dtype))?;
    check_float(a, rv, Some(dtype))?;
    check_float(a, bn.out, Some(dtype))?;
    let rms = check_vec(a, rm, c, "running_mean")?.unwrap_or(0);
    let rvs = check_vec(a, rv, c, "running_var")?.unwrap_or(0);
    a.resize(bn.out, &shape)?;
    a.resize(outs[0], &[0])?;
    a.resize(outs[1], &[0])?;
    let rmt = a.tensor(rm)?;
    let rvt = a.tensor(rv)?;
    let eps = bn.eps;
    let stat = |ch: usize| {
        let m = load_f64(rmt.bytes, dtype, ch * rms);
        let v = load_f64(rvt.bytes, dtype, ch * rvs);
        (m, 1.0 / libm::sqrt(v + eps))
    };
    bn_apply(a, &bn, &stat)
}

/// Training-mode batch norm: batch statistics, saved as `mean`/`invstd` outputs
/// (`[C]`), and the running statistics updated in place when given and writable.
fn bn_batch(
    a: &mut KernelArgs<'_>,
    bn: Bn,
    running: Option<(usize, usize)>,
    momentum: f64,
    outs: [usize; 2],
) -> Result<()> {
    let (shape, c) = bn_shape(a, bn.input)?;
    let dtype = check_float(a, bn.input, None)?;
    opt_float(a, bn.weight, dtype)?;
    opt_float(a, bn.bias, dtype)?;
    for i in [bn.out, outs[0], outs[1]] {
        check_float(a, i, Some(dtype))?;
    }
    a.resize(bn.out, &shape)?;
    a.resize(outs[0], &[c])?;
    a.resize(outs[1], &[c])?;
    let eps = bn.eps;
    let xm = a.meta(bn.input)?;
    let (xst, xs1) = (dims(xm.strides()), xm.strides()[1]);
    let mut sub = shape;
    sub[1] = 1;
    let count = sat_product(&sub);
    let (ms, is) = (a.meta(outs[0])?.strides()[0], a.meta(outs[1])?.strides()[0]);
    // Views stay registered for the whole call, so the stats outputs are written and
    // then read back through the same mutable views.
    let xt = a.tensor(bn.input)?;
    let mt = a.out(outs[0])?;
    let it = a.out(outs[1])?;
    let mut meter = Meter::new(a);
    for ch in 0..c {
        meter.add(count as u64)?;
        let (mean, var) = stats(xt.bytes, dtype, &sub, &xst, ch * xs1);
        store_f64(&mut *mt.bytes, dtype, ch * ms, mean);
        store_f64(&mut *it.bytes, dtype, ch * is, 1.0 / libm::sqrt(var + eps));
    }
    if let Some((rm, rv)) = running {
        update_running(a, rm, rv, c, bn.input, momentum, count)?;
    }
    let (mb, ib) = (&*mt.bytes, &*it.bytes);
    let stat = |ch: usize| (load_f64(mb, dtype, ch * ms), load_f64(ib, dtype, ch * is));
    bn_apply(a, &bn, &stat)
}

/// `running = (1 - momentum) * running + momentum * batch_stat`, with the unbiased batch
/// variance, as PyTorch's training mode does. Constant (read-only) stats are left as is.
fn update_running(
    a: &KernelArgs<'_>,
    rm: usize,
    rv: usize,
    c: usize,
    input: usize,
    momentum: f64,
    count: usize,
) -> Result<()> {
    let dtype = a.meta(input)?.dtype;
    let (rms, rvs) = (
        check_vec(a, rm, c, "running_mean")?,
        check_vec(a, rv, c, "running_var")?,
    );
    check_float(a, rm, Some(dtype))?;
    check_float(a, rv, Some(dtype))?;
    let writable =
        |i: usize| -> Result<bool> { Ok(!matches!(a.meta(i)?.storage, Storage::Constant { .. })) };
    let (Some(rms), Some(rvs)) = (rms, rvs) else {
        return Ok(());
    };
    if !writable(rm)? || !writable(rv)? {
        return Ok(());
    }
    let xm = a.meta(input)?;
    let (xst, xs1) = (dims(xm.strides()), xm.strides()[1]);
    let mut sub = xm.dims();
    sub[1] = 1;
    let xt = a.tensor(input)?;
    let rmt = a.out(rm)?;
    let rvt = a.out(rv)?;
    let unbias = if count > 1 {
        count as f64 / (count - 1) as f64
    } else {
        f64::NAN
    };
    let mut meter = Meter::new(a);
    for ch in 0..c {
        meter.add(count as u64)?;
        let (mean, var) = stats(xt.bytes, dtype, &sub, &xst, ch * xs1);
        let om = load_f64(rmt.bytes, dtype, ch * rms);
        let ov = load_f64(rvt.bytes, dtype, ch * rvs);
        store_f64(
            &mut *rmt.bytes,
            dtype,
            ch * rms,
            (1.0 - momentum) * om + momentum * mean,
        );
        store_f64(
            &mut *rvt.bytes,
            dtype,
            ch * rvs,
            (1.0 - momentum) * ov + momentum * var * unbias,
        );
    }
    Ok(())
}

fn bn_no_training_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(10)?;
    let eps = a.double(6)?;
    let bn = Bn {
        input: 0,
        weight: 1,
        bias: 2,
        out: 7,
        eps,
    };
    bn_running(a, bn, 3, 4, [8, 9])
}

fn bn_legit_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(11)?;
    let training = a.bool(5)?;
    let momentum = a.double(6)?;
    let eps = a.double(7)?;
    let bn = Bn {
        input: 0,
        weight: 1,
        bias: 2,
        out: 8,
        eps,
    };
    if training {
        bn_batch(a, bn, Some((3, 4)), momentum, [9, 10])
    } else {
        bn_running(a, bn, 3, 4, [9, 10])
    }
}

fn bn_no_stats_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(9)?;
    let momentum = a.double(4)?;
    let eps = a.double(5)?;
    let bn = Bn {
        input: 0,
        weight: 1,
        bias: 2,
        out: 6,
        eps,
    };
    bn_batch(a, bn, None, momentum, [7, 8])
}

fn layer_norm_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(8)?;
    let xm = a.meta(0)?;
    let dtype = check_float(a, 0, None)?;
    let shape = xm.dims();
    let ns = a.int_list(1)?.to_dims()?;
    let r = shape.len();
    if ns.len() > r || ns.is_empty() || shape[r - ns.len()..] != ns[..] {
        return Err(Error::shape(alloc::format!(
            "layer norm: normalized_shape {ns} does not match the end of input {:?}",
            shape.as_slice()
        )));
    }
    for i in [2, 3] {
        if let Some(m) = a.opt_meta(i)? {
            check_float(a, i, Some(dtype))?;
            if m.sizes() != ns.as_slice() {
                return Err(Error::shape(alloc::format!(
                    "layer norm: {} {:?} must have the normalized shape {ns}",
                    if i == 2 { "weight" } else { "bias" },
                    m.sizes()
                )));
            }
        }
    }
    for i in [5, 6, 7] {
        check_float(a, i, Some(dtype))?;
    }
    let eps = a.double(4)?;
    let lead = r - ns.len();
    let mut stat_shape = shape;
    for d in stat_shape[lead..].iter_mut() {
        *d = 1;
    }
    a.resize(5, &shape)?;
    a.resize(6, &stat_shape)?;
    a.resize(7, &stat_shape)?;
    let xm = a.meta(0)?;
    let om = a.meta(5)?;
    let (xst, ost) = (dims(xm.strides()), dims(om.strides()));
    let mst = dims(a.meta(6)?.strides());
    let rst = dims(a.meta(7)?.strides());
    let wst = match a.opt_meta(2)? {
        Some(m) => broadcast_strides(m, &ns)?,
        None => Dims::filled(ns.len(), 0).unwrap_or_default(),
    };
    let bst = match a.opt_meta(3)? {
        Some(m) => broadcast_strides(m, &ns)?,
        None => Dims::filled(ns.len(), 0).unwrap_or_default(),
    };
    let rows_contig = xm.is_contiguous()
        && om.is_contiguous()
        && a.opt_meta(2)?.is_none_or(|m| m.is_contiguous())
        && a.opt_meta(3)?.is_none_or(|m| m.is_contiguous());
    let xt = a.tensor(0)?;
    let wt = a.opt_tensor(2)?;
    let bt = a.opt_tensor(3)?;
    let mut ot = a.out(5)?;
    let mt = a.out(6)?;
    let rt = a.out(7)?;
    let inner = &ns[..];
    // Saturating: the leading dims may be empty while the normalized ones multiply past
    // usize (no row is visited then).
    let m = sat_product(inner);
    let mut meter = Meter::new(a);
    let outer = &shape[..lead];
    let (ostr_x, ostr_o) = (&xst[..lead], &ost[..lead]);
    let (istr_x, istr_o) = (&xst[lead..], &ost[lead..]);
    if rows_contig && dtype == ScalarType::Float && m > 0 {
        let x = xt.data::<f32>()?;
        let o = ot.data::<f32>()?;
        let w = wt.as_ref().map(|t| t.data::<f32>()).transpose()?;
        let b = bt.as_ref().map(|t| t.data::<f32>()).transpose()?;
        let rows = x.len().min(o.len()) / m;
        meter.add((rows as u64).saturating_mul(m as u64))?;
        // Rows split over threads; each row is one vector pass for its moments and one
        // for the normalization.
        ptero_simd::for_each_chunk_by(a.parallel(), &mut o[..rows * m], m, &|r, oc| {
            for (xr, or) in x[r].chunks_exact(m).zip(oc.chunks_exact_mut(m)) {
                let (mean, var) = ptero_simd::ops::mean_var(xr);
                let rstd = (1.0 / libm::sqrt(var as f64 + eps)) as f32;
                ptero_simd::ops::normalize(xr, or, rstd, -mean * rstd, w, b);
            }
        });
        for (stat_i, xr) in x.chunks_exact(m).take(rows).enumerate() {
            let (mean, var) = ptero_simd::ops::mean_var(xr);
            let (mean, rstd) = (mean as f64, 1.0 / libm::sqrt(var as f64 + eps));
            // Stats tensors are [lead..., 1...]: contiguous or not, their offset
            // follows the leading index, so recompute it from the row number.
            let mut rem = stat_i;
            let (mut mo, mut ro) = (0, 0);
            for d in (0..lead).rev() {
                let sz = shape[d].max(1);
                let i = rem % sz;
                rem /= sz;
                mo += i * mst[d];
                ro += i * rst[d];
            }
            store_f64(&mut *mt.bytes, dtype, mo, mean);
            store_f64(&mut *rt.bytes, dtype, ro, rstd);
        }
        return Ok(());
    }
    let ob = &mut *ot.bytes;
    let (mb, rb) = (&mut *mt.bytes, &mut *rt.bytes);
    let mut stop = Ok(());
    for_each_offset(
        outer,
        [ostr_x, ostr_o, &mst[..lead], &rst[..lead]],
        |[xo, oo, mo, ro]| {
            if stop.is_err() {
                return;
            }
            stop = meter.add(m as u64);
            let (mean, var) = stats(xt.bytes, dtype, inner, istr_x, xo);
            let rstd = 1.0 / libm::sqrt(var + eps);
            for_each_offset(inner, [istr_x, istr_o, &wst, &bst], |[xi, oi, wi, bi]| {
                let x = load_f64(xt.bytes, dtype, xo + xi);
                let w = wt.as_ref().map_or(1.0, |t| load_f64(t.bytes, dtype, wi));
                let b = bt.as_ref().map_or(0.0, |t| load_f64(t.bytes, dtype, bi));
                store_f64(ob, dtype, oo + oi, (x - mean) * rstd * w + b);
            });
            store_f64(mb, dtype, mo, mean);
            store_f64(rb, dtype, ro, rstd);
        },
    );
    stop
}

fn group_norm_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(11)?;
    let dtype = check_float(a, 0, None)?;
    let xm = a.meta(0)?;
    let shape = xm.dims();
    let (n, c, hxw, g) = (a.int(3)?, a.int(4)?, a.int(5)?, a.int(6)?);
    let eps = a.double(7)?;
    if shape.len() < 2 || g <= 0 || c < 0 || n < 0 || hxw < 0 {
        return Err(Error::invalid(alloc::format!(
            "group norm: bad input {:?} or group {g}",
            shape.as_slice()
        )));
    }
    let (n, c, hxw, g) = (n as usize, c as usize, hxw as usize, g as usize);
    let rest = sat_product(&shape[2..]);
    if shape[0] != n || shape[1] != c || rest != hxw || c % g != 0 {
        return Err(Error::shape(alloc::format!(
            "group norm: input {:?} does not match N={n}, C={c}, HxW={hxw}, group={g} (C divisible by group)",
            shape.as_slice()
        )));
    }
    opt_float(a, 1, dtype)?;
    opt_float(a, 2, dtype)?;
    let wst = check_vec(a, 1, c, "group norm weight")?;
    let bst = check_vec(a, 2, c, "group norm bias")?;
    for i in [8, 9, 10] {
        check_float(a, i, Some(dtype))?;
    }
    a.resize(8, &shape)?;
    a.resize(9, &[n, g])?;
    a.resize(10, &[n, g])?;
    let xst = dims(a.meta(0)?.strides());
    let ost = dims(a.meta(8)?.strides());
    let mst = dims(a.meta(9)?.strides());
    let rst = dims(a.meta(10)?.strides());
    let cg = c / g;
    let mut sub = shape;
    sub[0] = 1;
    sub[1] = cg;
    // Third operand: stride 1 along channels, so its offset is the channel index.
    let mut chan = Dims::filled(shape.len(), 0).unwrap_or_default();
    chan[1] = 1;
    let xt = a.tensor(0)?;
    let wt = a.opt_tensor(1)?;
    let bt = a.opt_tensor(2)?;
    let ot = a.out(8)?;
    let mt = a.out(9)?;
    let rt = a.out(10)?;
    let ob = &mut *ot.bytes;
    let mut meter = Meter::new(a);
    for ni in 0..n {
        for gi in 0..g {
            meter.add(cg.saturating_mul(hxw) as u64)?;
            let xb = ni * xst[0] + gi * cg * xst[1];
            let ob0 = ni * ost[0] + gi * cg * ost[1];
            let (mean, var) = stats(xt.bytes, dtype, &sub, &xst, xb);
            let rstd = 1.0 / libm::sqrt(var + eps);
            for_each_offset(&sub, [&xst, &ost, &chan], |[xo, oo, cl]| {
                let ch = gi * cg + cl;
                let x = load_f64(xt.bytes, dtype, xb + xo);
                let w = match (&wt, wst) {
                    (Some(t), Some(s)) => load_f64(t.bytes, dtype, ch * s),
                    _ => 1.0,
                };
                let b = match (&bt, bst) {
                    (Some(t), Some(s)) => load_f64(t.bytes, dtype, ch * s),
                    _ => 0.0,
                };
                store_f64(ob, dtype, ob0 + oo, (x - mean) * rstd * w + b);
            });
            store_f64(&mut *mt.bytes, dtype, ni * mst[0] + gi * mst[1], mean);
            store_f64(&mut *rt.bytes, dtype, ni * rst[0] + gi * rst[1], rstd);
        }
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register(
        "aten::_native_batch_norm_legit_no_training.out",
        bn_no_training_out,
    );
    reg.register("aten::_native_batch_norm_legit.out", bn_legit_out);
    reg.register(
        "aten::_native_batch_norm_legit.no_stats_out",
        bn_no_stats_out,
    );
    reg.register("aten::native_layer_norm.out", layer_norm_out);
    reg.register("aten::native_group_norm.out", group_norm_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    fn t(d: ScalarType, s: &[usize], v: &[f64]) -> OwnedTensor {
        OwnedTensor::from_f64(d, s, v)
    }

    fn seq(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7 + 2) % 11) as f64 * 0.5 - 2.0)
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    /// Reference: normalize groups of a row-major [outer, C, inner] tensor.
    fn bn_ref(
        x: &[f64],
        n: usize,
        c: usize,
        inner: usize,
        mean: &[f64],
        var: &[f64],
        w: &[f64],
        b: &[f64],
        eps: f64,
    ) -> Vec<f64> {
        let mut o = vec![0.0; x.len()];
        for i in 0..n {
            for ch in 0..c {
                for j in 0..inner {
                    let k = (i * c + ch) * inner + j;
                    o[k] = (x[k] - mean[ch]) / (var[ch] + eps).sqrt() * w[ch] + b[ch];
                }
            }
        }
        o
    }

    #[test]
    fn batch_norm_inference() {
        let (n, c, h, w) = (2, 3, 2, 2);
        let x = seq(n * c * h * w);
        let (rm, rv) = (vec![0.5, -1.0, 0.0], vec![1.0, 4.0, 0.25]);
        let (wv, bv) = (vec![1.0, 2.0, -1.0], vec![0.0, 1.0, 0.5]);
        let want = bn_ref(&x, n, c, h * w, &rm, &rv, &wv, &bv, 1e-5);
        for dtype in [Float, Double, Half] {
            for order in [None, Some(&[0u8, 2, 3, 1][..])] {
                let mut xt = t(dtype, &[n, c, h, w], &x);
                if let Some(o) = order {
                    xt = xt.with_dim_order(o);
                }
                let out = run_op(
                    "aten::_native_batch_norm_legit_no_training.out",
                    vec![
                        Arg::T(xt),
                        Arg::T(t(dtype, &[c], &wv)),
                        Arg::T(t(dtype, &[c], &bv)),
                        Arg::T(t(dtype, &[c], &rm)),
                        Arg::T(t(dtype, &[c], &rv)),
                        Arg::Double(0.1),
                        Arg::Double(1e-5),
                        Arg::Out(dtype, vec![n, c, h, w]),
                        Arg::Out(dtype, vec![1]),
                        Arg::Out(dtype, vec![1]),
                    ],
                )
                .unwrap();
                let tol = if dtype == Half { 1e-2 } else { 1e-5 };
                assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
                assert_eq!(out.tensors[1].sizes, [0]);
            }
        }
        // No affine, 2-d input, legit.out in eval mode.
        let x2 = seq(6);
        let want = bn_ref(&x2, 2, 3, 1, &rm, &rv, &[1.0; 3], &[0.0; 3], 1e-5);
        let out = run_op(
            "aten::_native_batch_norm_legit.out",
            vec![
                Arg::T(t(Float, &[2, 3], &x2)),
                Arg::None,
                Arg::None,
                Arg::T(t(Float, &[c], &rm)),
                Arg::T(t(Float, &[c], &rv)),
                Arg::Bool(false),
                Arg::Double(0.1),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![2, 3]),
                Arg::Out(Float, vec![1]),
                Arg::Out(Float, vec![1]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);
        // Empty batch.
        let out = run_op(
            "aten::_native_batch_norm_legit_no_training.out",
            vec![
                Arg::T(t(Float, &[0, 3], &[])),
                Arg::None,
                Arg::None,
                Arg::T(t(Float, &[c], &rm)),
                Arg::T(t(Float, &[c], &rv)),
                Arg::Double(0.1),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![0, 3]),
                Arg::Out(Float, vec![1]),
                Arg::Out(Float, vec![1]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, 3]);
        // A 1-d input is an error.
        assert!(run_op(
            "aten::_native_batch_norm_legit_no_training.out",
            vec![
                Arg::T(t(Float, &[3], &rm)),
                Arg::None,
                Arg::None,
                Arg::T(t(Float, &[c], &rm)),
                Arg::T(t(Float, &[c], &rv)),
                Arg::Double(0.1),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![3]),
                Arg::Out(Float, vec![1]),
                Arg::Out(Float, vec![1]),
            ],
        )
        .is_err());
    }

    #[test]
    fn batch_norm_training() {
        let (n, c, l) = (2, 2, 3);
        let x = seq(n * c * l);
        let mut mean = vec![0.0; c];
        let mut var = vec![0.0; c];
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| (0..l).map(move |j| (i * c + ch) * l + j))
                .map(|k| x[k])
                .collect();
            mean[ch] = vals.iter().sum::<f64>() / vals.len() as f64;
            var[ch] = vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / vals.len() as f64;
        }
        let want = bn_ref(&x, n, c, l, &mean, &var, &[1.0; 2], &[0.0; 2], 1e-5);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
        let out = run_op(
            "aten::_native_batch_norm_legit.no_stats_out",
            vec![
                Arg::T(t(Float, &[n, c, l], &x)),
                Arg::None,
                Arg::None,
                Arg::Bool(true),
                Arg::Double(0.1),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![n, c, l]),
                Arg::Out(Float, vec![c]),
                Arg::Out(Float, vec![c]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);
        assert_close(&out.tensors[1].to_f64(), &mean, 1e-6, 1e-6);
        assert_close(&out.tensors[2].to_f64(), &invstd, 1e-5, 1e-5);
        let out = run_op(
            "aten::_native_batch_norm_legit.out",
            vec![
                Arg::T(t(Double, &[n, c, l], &x)),
                Arg::None,
                Arg::None,
                Arg::T(t(Double, &[c], &[0.0, 0.0])),
                Arg::T(t(Double, &[c], &[1.0, 1.0])),
                Arg::Bool(true),
                Arg::Double(0.1),
                Arg::Double(1e-5),
                Arg::Out(Double, vec![n, c, l]),
                Arg::Out(Double, vec![c]),
                Arg::Out(Double, vec![c]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-9, 1e-9);
    }

    #[test]
    fn layer_norm() {
        let (rows, m) = (6, 5);
        let x = seq(rows * m);
        let w: Vec<f64> = (0..m).map(|i| 0.5 + i as f64 * 0.25).collect();
        let b: Vec<f64> = (0..m).map(|i| i as f64 * -0.1).collect();
        let mut want = vec![0.0; rows * m];
        let mut means = vec![];
        let mut rstds = vec![];
        for r in 0..rows {
            let row = &x[r * m..][..m];
            let mean = row.iter().sum::<f64>() / m as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m as f64;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            for j in 0..m {
                want[r * m + j] = (row[j] - mean) * rstd * w[j] + b[j];
            }
            means.push(mean);
            rstds.push(rstd);
        }
        for dtype in [Float, Double, BFloat16] {
            for order in [[0u8, 1, 2], [1, 0, 2], [2, 0, 1]] {
                let out = run_op(
                    "aten::native_layer_norm.out",
                    vec![
                        Arg::T(t(dtype, &[2, 3, m], &x).with_dim_order(&order)),
                        Arg::Ints(vec![m as i64]),
                        Arg::T(t(dtype, &[m], &w)),
                        Arg::T(t(dtype, &[m], &b)),
                        Arg::Double(1e-5),
                        Arg::Out(dtype, vec![2, 3, m]),
                        Arg::Out(dtype, vec![2, 3, 1]),
                        Arg::Out(dtype, vec![2, 3, 1]),
                    ],
                )
                .unwrap();
                let tol = if dtype == BFloat16 { 5e-2 } else { 1e-5 };
                assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
                assert_eq!(out.tensors[1].sizes, [2, 3, 1]);
                assert_close(&out.tensors[1].to_f64(), &means, tol, tol);
                assert_close(&out.tensors[2].to_f64(), &rstds, tol, tol);
            }
        }
        // Normalizing the last two dims, no affine.
        let out = run_op(
            "aten::native_layer_norm.out",
            vec![
                Arg::T(t(Float, &[2, 2, 2], &[1., 2., 3., 4., 0., 0., 0., 0.])),
                Arg::Ints(vec![2, 2]),
                Arg::None,
                Arg::None,
                Arg::Double(0.0),
                Arg::Out(Float, vec![2, 2, 2]),
                Arg::Out(Float, vec![2, 1, 1]),
                Arg::Out(Float, vec![2, 1, 1]),
            ],
        )
        .unwrap();
        let s = 1.0 / 1.25f64.sqrt();
        assert_close(
            &out.tensors[0].to_f64(),
            &[
                -1.5 * s,
                -0.5 * s,
                0.5 * s,
                1.5 * s,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                f64::NAN,
            ],
            1e-5,
            1e-5,
        );
        // Normalized shape not matching the input.
        assert!(run_op(
            "aten::native_layer_norm.out",
            vec![
                Arg::T(t(Float, &[2, 3], &[0.0; 6])),
                Arg::Ints(vec![2]),
                Arg::None,
                Arg::None,
                Arg::Double(1e-5),
                Arg::Out(Float, vec![2, 3]),
                Arg::Out(Float, vec![2, 1]),
                Arg::Out(Float, vec![2, 1]),
            ],
        )
        .is_err());
    }

    #[test]
    fn group_norm() {
        let (n, c, h, w, g) = (2, 4, 1, 3, 2);
        let x = seq(n * c * h * w);
        let wv = vec![1.0, 2.0, 0.5, -1.0];
        let bv = vec![0.0, 0.1, 0.2, 0.3];
        let cg = c / g;
        let mut want = vec![0.0; x.len()];
        let mut means = vec![];
        for ni in 0..n {
            for gi in 0..g {
                let idx: Vec<usize> = (0..cg * h * w)
                    .map(|k| ni * c * h * w + gi * cg * h * w + k)
                    .collect();
                let mean = idx.iter().map(|&k| x[k]).sum::<f64>() / idx.len() as f64;
                let var =
                    idx.iter().map(|&k| (x[k] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
                means.push(mean);
                for &k in &idx {
                    let ch = (k / (h * w)) % c;
                    want[k] = (x[k] - mean) / (var + 1e-5).sqrt() * wv[ch] + bv[ch];
                }
            }
        }
        for order in [[0u8, 1, 2, 3], [0, 2, 3, 1]] {
            let out = run_op(
                "aten::native_group_norm.out",
                vec![
                    Arg::T(t(Float, &[n, c, h, w], &x).with_dim_order(&order)),
                    Arg::T(t(Float, &[c], &wv)),
                    Arg::T(t(Float, &[c], &bv)),
                    Arg::Int(n as i64),
                    Arg::Int(c as i64),
                    Arg::Int((h * w) as i64),
                    Arg::Int(g as i64),
                    Arg::Double(1e-5),
                    Arg::Out(Float, vec![n, c, h, w]),
                    Arg::Out(Float, vec![n, g]),
                    Arg::Out(Float, vec![n, g]),
                ],
            )
            .unwrap();
            assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);
            assert_close(&out.tensors[1].to_f64(), &means, 1e-6, 1e-6);
        }
        assert!(run_op(
            "aten::native_group_norm.out",
            vec![
                Arg::T(t(Float, &[1, 3, 2], &[0.0; 6])),
                Arg::None,
                Arg::None,
                Arg::Int(1),
                Arg::Int(3),
                Arg::Int(2),
                Arg::Int(2),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![1, 3, 2]),
                Arg::Out(Float, vec![1, 2]),
                Arg::Out(Float, vec![1, 2]),
            ],
        )
        .is_err());
    }

    #[test]
    fn empty_inputs_with_huge_dims() {
        // No elements, but the non-empty dims multiply past usize: partial products used
        // to overflow (a panic in debug builds).
        let big = 1usize << 31;
        let out = run_op(
            "aten::_native_batch_norm_legit_no_training.out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[0, 1, big, big, big])),
                Arg::None,
                Arg::None,
                Arg::T(t(Float, &[1], &[0.])),
                Arg::T(t(Float, &[1], &[1.])),
                Arg::Double(0.1),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![0, 1, 1, 1, 1]),
                Arg::Out(Float, vec![1]),
                Arg::Out(Float, vec![1]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, 1, big, big, big]);
        for order in [[0u8, 1, 2, 3], [3, 2, 1, 0]] {
            let out = run_op(
                "aten::native_layer_norm.out",
                vec![
                    Arg::T(OwnedTensor::zeros(Float, &[0, big, big, big]).with_dim_order(&order)),
                    Arg::Ints(vec![big as i64; 3]),
                    Arg::None,
                    Arg::None,
                    Arg::Double(1e-5),
                    Arg::Out(Float, vec![0, 1, 1, 1]),
                    Arg::Out(Float, vec![0, 1, 1, 1]),
                    Arg::Out(Float, vec![0, 1, 1, 1]),
                ],
            )
            .unwrap();
            assert_eq!(out.tensors[1].sizes, [0, 1, 1, 1]);
        }
        assert!(run_op(
            "aten::native_group_norm.out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[0, 2, big, big, big])),
                Arg::None,
                Arg::None,
                Arg::Int(0),
                Arg::Int(2),
                Arg::Int(i64::MAX),
                Arg::Int(1),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![0, 2, 1, 1, 1]),
                Arg::Out(Float, vec![0, 1]),
                Arg::Out(Float, vec![0, 1]),
            ],
        )
        .is_err());
    }

    #[test]
    fn big_inputs_poll_the_deadline() {
        let (rows, m) = (512usize, 1024usize);
        let x = OwnedTensor::zeros(Float, &[rows, m]);
        for order in [[0u8, 1], [1, 0]] {
            let got = run_op_interrupted(
                "aten::native_layer_norm.out",
                vec![
                    Arg::T(x.with_dim_order(&order)),
                    Arg::Ints(vec![m as i64]),
                    Arg::None,
                    Arg::None,
                    Arg::Double(1e-5),
                    Arg::Out(Float, vec![rows, m]),
                    Arg::Out(Float, vec![rows, 1]),
                    Arg::Out(Float, vec![rows, 1]),
                ],
            );
            assert_eq!(got.unwrap_err(), ptero_core::Error::Interrupted);
        }
        let got = run_op_interrupted(
            "aten::_native_batch_norm_legit.no_stats_out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[rows, 2, m])),
                Arg::None,
                Arg::None,
                Arg::Bool(true),
                Arg::Double(0.1),
                Arg::Double(1e-5),
                Arg::Out(Float, vec![rows, 2, m]),
                Arg::Out(Float, vec![2]),
                Arg::Out(Float, vec![2]),
            ],
        );
        assert_eq!(got.unwrap_err(), ptero_core::Error::Interrupted);
    }
}
