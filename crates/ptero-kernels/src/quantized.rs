//! ExecuTorch's quantized kernels (`kernels/quantized/cpu`, namespace
//! `quantized_decomposed::`): (de)quantization per tensor / channel / token, qparam
//! selection, quantized embeddings (8, 4 and 2 bit), int8-weight matmuls and quantized add.
//!
//! Rounding follows ExecuTorch exactly: `x * (1 / scale)` in f32, `nearbyint` (round half
//! to even), the zero point added in f32, then clamped to `quant_min` before `quant_max`.

use alloc::format;
use half::f16;
use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType, TensorMeta};

use crate::util::work::{checked_size, sat_product, Meter};
use crate::util::{for_each_offset, load_f64, load_i64, store_f64, store_i64};

fn dtype_arg(a: &KernelArgs<'_>, i: usize) -> Result<ScalarType> {
    let code = a.int(i)?;
    ScalarType::from_code(code)
        .ok_or_else(|| Error::invalid(format!("argument {i}: unknown dtype code {code}")))
}

fn opt_dtype_arg(a: &KernelArgs<'_>, i: usize) -> Result<Option<ScalarType>> {
    match a.opt_int(i)? {
        None => Ok(None),
        Some(code) => ScalarType::from_code(code)
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("argument {i}: unknown dtype code {code}"))),
    }
}

fn dtype_err(arg: usize, expected: &str, found: ScalarType) -> Error {
    Error::Dtype {
        arg,
        expected: expected.into(),
        found,
    }
}

/// ExecuTorch's `quantize_val`: `zp + nearbyint(x / scale)` with `1/scale` in f32.
#[inline]
fn quantize_val(inv_scale: f32, zp: i64, x: f64, in_dt: ScalarType, qmin: i64, qmax: i64) -> i64 {
    // A double input multiplies in double and then narrows; float and half in f32.
    let prod = if in_dt == ScalarType::Double {
        (inv_scale as f64 * x) as f32
    } else {
        inv_scale * x as f32
    };
    let q = ((zp as i32) as f32 + libm::rintf(prod)) as i64;
    q.max(qmin).min(qmax)
}

/// Checks `quant_min`/`quant_max` fit the quantized dtype (ExecuTorch's
/// `check_quantize_per_tensor_args`).
fn check_quant_out(
    in_dt: ScalarType,
    dtype: ScalarType,
    out_dt: ScalarType,
    qmin: i64,
    qmax: i64,
) -> Result<()> {
    if !matches!(
        in_dt,
        ScalarType::Float | ScalarType::Double | ScalarType::Half
    ) {
        return Err(dtype_err(0, "Float, Double or Half", in_dt));
    }
    if out_dt != dtype {
        return Err(Error::invalid(format!(
            "quantize: out dtype {out_dt:?} does not match the dtype argument {dtype:?}"
        )));
    }
    let (lo, hi): (i64, i64) = match out_dt {
        ScalarType::Byte => (0, 255),
        ScalarType::Char => (-128, 127),
        ScalarType::UInt16 => (0, 65535),
        ScalarType::Short => (-32768, 32767),
        ScalarType::Int => (i32::MIN as i64, i32::MAX as i64),
        dt => {
            return Err(dtype_err(
                usize::MAX,
                "Byte, Char, UInt16, Short or Int",
                dt,
            ))
        }
    };
    if qmin < lo || qmax > hi {
        return Err(Error::invalid(format!(
            "quantize: quant range [{qmin}, {qmax}] exceeds {out_dt:?}'s [{lo}, {hi}]"
        )));
    }
    Ok(())
}

/// Per-element (scale, zero point) source: one pair, or one per index along an axis.
enum Params<'a> {
    Tensor(f64, i64),
    /// Scales and zero points (as loaded) per channel.
    Channel {
        scale: (&'a [u8], ScalarType),
        zp: Option<(&'a [u8], ScalarType)>,
    },
}

impl Params<'_> {
    #[inline]
    fn get(&self, c: usize) -> (f64, i64) {
        match self {
            Params::Tensor(s, z) => (*s, *z),
            Params::Channel { scale, zp } => (
                load_f64(scale.0, scale.1, c),
                zp.map_or(0, |(b, t)| load_i64(b, t, c)),
            ),
        }
    }
}

/// Channel "strides": 1 along `axis`, 0 elsewhere, so the offset walk yields the channel.
fn channel_strides(rank: usize, axis: Option<usize>) -> [usize; ptero_core::MAX_DIMS] {
    let mut st = [0usize; ptero_core::MAX_DIMS];
    if let Some(ax) = axis {
        if ax < rank {
            st[ax] = 1;
        }
    }
    st
}

fn quantize_impl(
    a: &mut KernelArgs<'_>,
    params: impl Fn(&KernelArgs<'_>) -> Result<ParamsOwned>,
    axis: Option<usize>,
    qmin: i64,
    qmax: i64,
    dtype: ScalarType,
    out: usize,
) -> Result<()> {
    let im = *a.meta(0)?;
    let shape = im.dims();
    a.resize(out, &shape)?;
    let om = *a.meta(out)?;
    check_quant_out(im.dtype, dtype, om.dtype, qmin, qmax)?;
    let p = params(a)?;
    let it = a.tensor(0)?;
    let ot = a.out(out)?;
    let ob = &mut *ot.bytes;
    let cs = channel_strides(shape.len(), axis);
    let pv = p.view(a)?;
    let mut cached = (usize::MAX, 0f32, 0i64);
    for_each_offset(
        &shape,
        [om.strides(), im.strides(), &cs[..shape.len()]],
        |[o, i, c]| {
            if cached.0 != c {
                let (s, z) = pv.get(c);
                cached = (c, 1.0f32 / s as f32, z);
            }
            let q = quantize_val(
                cached.1,
                cached.2,
                load_f64(it.bytes, im.dtype, i),
                im.dtype,
                qmin,
                qmax,
            );
            store_i64(ob, om.dtype, o, q);
        },
    );
    Ok(())
}

/// Argument positions of per-channel parameters, or a single pair.
enum ParamsOwned {
    Tensor(f64, i64),
    Channel { scale: usize, zp: Option<usize> },
}

impl ParamsOwned {
    fn view<'a>(&self, a: &'a KernelArgs<'_>) -> Result<Params<'a>> {
        Ok(match *self {
            ParamsOwned::Tensor(s, z) => Params::Tensor(s, z),
            ParamsOwned::Channel { scale, zp } => {
                let st = a.tensor(scale)?;
                let zt = match zp {
                    Some(z) => a.opt_tensor(z)?,
                    None => None,
                };
                Params::Channel {
                    scale: (st.bytes, st.dtype()),
                    zp: zt.map(|t| (t.bytes, t.dtype())),
                }
            }
        })
    }
}

/// Scale (Double) and zero point (Long) one-element tensors of the `.Tensor_out` overloads.
fn scalar_params(a: &KernelArgs<'_>, si: usize, zi: usize) -> Result<(f64, i64)> {
    let (sm, zm) = (a.meta(si)?, a.meta(zi)?);
    if sm.dtype != ScalarType::Double {
        return Err(dtype_err(si, "Double", sm.dtype));
    }
    if zm.dtype != ScalarType::Long {
        return Err(dtype_err(zi, "Long", zm.dtype));
    }
    if sm.numel() != 1 || zm.numel() != 1 {
        return Err(Error::shape(format!(
            "scale {:?} and zero_point {:?} must have one element",
            sm.sizes(),
            zm.sizes()
        )));
    }
    Ok((
        a.tensor(si)?.data::<f64>()?[0],
        a.tensor(zi)?.data::<i64>()?[0],
    ))
}

fn quantize_per_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(8)?;
    let (s, z) = (a.double(1)?, a.int(2)?);
    let (qmin, qmax, dt) = (a.int(3)?, a.int(4)?, dtype_arg(a, 5)?);
    quantize_impl(
        a,
        |_| Ok(ParamsOwned::Tensor(s, z)),
        None,
        qmin,
        qmax,
        dt,
        6,
    )
}

fn quantize_per_tensor_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(8)?;
    let (s, z) = scalar_params(a, 1, 2)?;
    let (qmin, qmax, dt) = (a.int(3)?, a.int(4)?, dtype_arg(a, 5)?);
    quantize_impl(
        a,
        |_| Ok(ParamsOwned::Tensor(s, z)),
        None,
        qmin,
        qmax,
        dt,
        6,
    )
}

/// Checks per-channel quantize parameters: Double scales and Long zero points, one per
/// channel of `axis_size`.
fn check_channel_qparams(a: &KernelArgs<'_>, si: usize, zi: usize, axis_size: usize) -> Result<()> {
    let (sm, zm) = (a.meta(si)?, a.meta(zi)?);
    if sm.dtype != ScalarType::Double {
        return Err(dtype_err(si, "Double", sm.dtype));
    }
    if zm.dtype != ScalarType::Long {
        return Err(dtype_err(zi, "Long", zm.dtype));
    }
    if sm.numel() != axis_size || zm.numel() != axis_size {
        return Err(Error::shape(format!(
            "scales ({}) and zero points ({}) must have one entry per channel ({axis_size})",
            sm.numel(),
            zm.numel()
        )));
    }
    Ok(())
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank.max(1) as i64;
    if axis < -r || axis >= r {
        return Err(Error::invalid(format!(
            "axis {axis} out of range for a {rank}-D tensor"
        )));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

fn quantize_per_channel_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(9)?;
    let im = *a.meta(0)?;
    let axis = norm_axis(a.int(3)?, im.dim())?;
    let axis_size = im.sizes().get(axis).copied().unwrap_or(1);
    check_channel_qparams(a, 1, 2, axis_size)?;
    let (qmin, qmax, dt) = (a.int(4)?, a.int(5)?, dtype_arg(a, 6)?);
    quantize_impl(
        a,
        |_| {
            Ok(ParamsOwned::Channel {
                scale: 1,
                zp: Some(2),
            })
        },
        Some(axis),
        qmin,
        qmax,
        dt,
        7,
    )
}

/// Number of tokens (all but the last dim) of a tensor.
fn num_tokens(m: &TensorMeta) -> usize {
    let s = m.sizes();
    // Saturating: with an empty last dim the others may multiply past usize.
    sat_product(&s[..s.len().saturating_sub(1)])
}

/// The per-token ops view the input as `[tokens, last]` (contiguous) and quantize per
/// channel along the token axis.
fn token_axis(m: &TensorMeta, arg: usize) -> Result<Option<usize>> {
    if !m.is_contiguous() {
        return Err(Error::invalid(format!(
            "argument {arg}: per-token ops need a contiguous tensor"
        )));
    }
    Ok(if m.dim() >= 2 {
        Some(m.dim() - 2)
    } else {
        None
    })
}

fn quantize_per_token_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(8)?;
    let im = *a.meta(0)?;
    if im.dim() == 0 {
        return Err(Error::shape(
            "quantize_per_token: input must have at least 1 dim",
        ));
    }
    check_channel_qparams(a, 1, 2, num_tokens(&im))?;
    let (qmin, qmax, dt) = (a.int(3)?, a.int(4)?, dtype_arg(a, 5)?);
    token_axis(&im, 0)?;
    quantize_tokens(a, qmin, qmax, dt, 6)
}

/// Walks the input as rows of its last dim, token `t` using parameter entry `t`.
fn quantize_tokens(
    a: &mut KernelArgs<'_>,
    qmin: i64,
    qmax: i64,
    dt: ScalarType,
    out: usize,
) -> Result<()> {
    let im = *a.meta(0)?;
    let shape = im.dims();
    a.resize(out, &shape)?;
    let om = *a.meta(out)?;
    check_quant_out(im.dtype, dt, om.dtype, qmin, qmax)?;
    if !om.is_contiguous() {
        return Err(Error::invalid("quantize_per_token: out must be contiguous"));
    }
    let pv = ParamsOwned::Channel {
        scale: 1,
        zp: Some(2),
    }
    .view(a)?;
    let it = a.tensor(0)?;
    let ot = a.out(out)?;
    let ob = &mut *ot.bytes;
    let last = shape.last().copied().unwrap_or(1).max(1);
    for i in 0..im.numel() {
        let (s, z) = pv.get(i / last);
        let q = quantize_val(
            1.0f32 / s as f32,
            z,
            load_f64(it.bytes, im.dtype, i),
            im.dtype,
            qmin,
            qmax,
        );
        store_i64(ob, om.dtype, i, q);
    }
    Ok(())
}

fn check_dequant(
    in_dt: ScalarType,
    dtype: ScalarType,
    out_dt: ScalarType,
    out_dtype: Option<ScalarType>,
    qmin: i64,
    qmax: i64,
) -> Result<()> {
    if !matches!(
        in_dt,
        ScalarType::Byte
            | ScalarType::Char
            | ScalarType::UInt16
            | ScalarType::Short
            | ScalarType::Int
    ) {
        return Err(dtype_err(0, "Byte, Char, UInt16, Short or Int", in_dt));
    }
    if in_dt != dtype {
        return Err(dtype_err(0, dtype.name(), in_dt));
    }
    if let Some(od) = out_dtype {
        if od != out_dt {
            return Err(Error::invalid(format!(
                "dequantize: out_dtype {od:?} does not match the out tensor's {out_dt:?}"
            )));
        }
    }
    if qmin > qmax {
        return Err(Error::invalid(format!(
            "dequantize: quant_min {qmin} > quant_max {qmax}"
        )));
    }
    if !matches!(
        out_dt,
        ScalarType::Float | ScalarType::Double | ScalarType::Half
    ) {
        return Err(dtype_err(usize::MAX, "Float, Double or Half", out_dt));
    }
    Ok(())
}

/// `(q - zp) * scale` in ExecuTorch's types: the difference in int32, the product in f32.
#[inline]
fn dequantize_val(q: i64, zp: i64, scale: f32) -> f64 {
    ((q as i32).wrapping_sub(zp as i32) as f32 * scale) as f64
}

#[allow(clippy::too_many_arguments)]
fn dequantize_impl(
    a: &mut KernelArgs<'_>,
    p: ParamsOwned,
    axis: Option<usize>,
    qmin: i64,
    qmax: i64,
    dtype: ScalarType,
    out_dtype: Option<ScalarType>,
    out: usize,
) -> Result<()> {
    let im = *a.meta(0)?;
    let shape = im.dims();
    a.resize(out, &shape)?;
    let om = *a.meta(out)?;
    check_dequant(im.dtype, dtype, om.dtype, out_dtype, qmin, qmax)?;
    let pv = p.view(a)?;
    // ExecuTorch's int8 per-channel fast path checks each zero point is in range.
    if axis.is_some()
        && im.dtype == ScalarType::Char
        && im.is_contiguous()
        && out_dtype.is_none_or(|d| d == ScalarType::Float)
    {
        let n = im.sizes().get(axis.unwrap_or(0)).copied().unwrap_or(1);
        for c in 0..n {
            let z = pv.get(c).1;
            if z < qmin || z > qmax {
                return Err(Error::invalid(format!(
                    "dequantize: zero point {z} outside [{qmin}, {qmax}]"
                )));
            }
        }
    }
    let it = a.tensor(0)?;
    let ot = a.out(out)?;
    let ob = &mut *ot.bytes;
    let cs = channel_strides(shape.len(), axis);
    for_each_offset(
        &shape,
        [om.strides(), im.strides(), &cs[..shape.len()]],
        |[o, i, c]| {
            let (s, z) = pv.get(c);
            let v = dequantize_val(load_i64(it.bytes, im.dtype, i), z, s as f32);
            store_f64(ob, om.dtype, o, v);
        },
    );
    Ok(())
}

fn dequantize_per_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(9)?;
    let p = ParamsOwned::Tensor(a.double(1)?, a.int(2)?);
    let (qmin, qmax, dt, odt) = (a.int(3)?, a.int(4)?, dtype_arg(a, 5)?, opt_dtype_arg(a, 6)?);
    dequantize_impl(a, p, None, qmin, qmax, dt, odt, 7)
}

fn dequantize_per_tensor_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(9)?;
    let (s, z) = scalar_params(a, 1, 2)?;
    let (qmin, qmax, dt, odt) = (a.int(3)?, a.int(4)?, dtype_arg(a, 5)?, opt_dtype_arg(a, 6)?);
    dequantize_impl(a, ParamsOwned::Tensor(s, z), None, qmin, qmax, dt, odt, 7)
}

/// Dequantize scales may be Double or Float, zero points Int or Long.
fn check_dequant_channel_params(a: &KernelArgs<'_>, si: usize, zi: usize, n: usize) -> Result<()> {
    let sm = a.meta(si)?;
    if !matches!(sm.dtype, ScalarType::Double | ScalarType::Float) {
        return Err(dtype_err(si, "Double or Float", sm.dtype));
    }
    if sm.numel() != n {
        return Err(Error::shape(format!(
            "scales ({}) must have one entry per channel ({n})",
            sm.numel()
        )));
    }
    if let Some(zm) = a.opt_meta(zi)? {
        if !matches!(zm.dtype, ScalarType::Int | ScalarType::Long) {
            return Err(dtype_err(zi, "Int or Long", zm.dtype));
        }
        if zm.numel() != n {
            return Err(Error::shape(format!(
                "zero points ({}) must have one entry per channel ({n})",
                zm.numel()
            )));
        }
    }
    Ok(())
}

fn dequantize_per_channel_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(10)?;
    let im = *a.meta(0)?;
    let axis = norm_axis(a.int(3)?, im.dim())?;
    let n = im.sizes().get(axis).copied().unwrap_or(1);
    check_dequant_channel_params(a, 1, 2, n)?;
    let (qmin, qmax, dt, odt) = (a.int(4)?, a.int(5)?, dtype_arg(a, 6)?, opt_dtype_arg(a, 7)?);
    let p = ParamsOwned::Channel {
        scale: 1,
        zp: Some(2),
    };
    dequantize_impl(a, p, Some(axis), qmin, qmax, dt, odt, 8)
}

fn dequantize_per_token_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(9)?;
    let im = *a.meta(0)?;
    if im.dim() == 0 {
        return Err(Error::shape(
            "dequantize_per_token: input must have at least 1 dim",
        ));
    }
    check_dequant_channel_params(a, 1, 2, num_tokens(&im))?;
    let (qmin, qmax, dt, odt) = (a.int(3)?, a.int(4)?, dtype_arg(a, 5)?, dtype_arg(a, 6)?);
    token_axis(&im, 0)?;
    let shape = im.dims();
    a.resize(7, &shape)?;
    let om = *a.meta(7)?;
    check_dequant(im.dtype, dt, om.dtype, Some(odt), qmin, qmax)?;
    if !om.is_contiguous() {
        return Err(Error::invalid(
            "dequantize_per_token: out must be contiguous",
        ));
    }
    let pv = ParamsOwned::Channel {
        scale: 1,
        zp: Some(2),
    }
    .view(a)?;
    let last = shape.last().copied().unwrap_or(1).max(1);
    if im.dtype == ScalarType::Char && odt == ScalarType::Float {
        for t in 0..num_tokens(&im) {
            let z = pv.get(t).1;
            if z < qmin || z > qmax {
                return Err(Error::invalid(format!(
                    "dequantize: zero point {z} outside [{qmin}, {qmax}]"
                )));
            }
        }
    }
    let it = a.tensor(0)?;
    let ot = a.out(7)?;
    let ob = &mut *ot.bytes;
    for i in 0..im.numel() {
        let (s, z) = pv.get(i / last);
        store_f64(
            ob,
            om.dtype,
            i,
            dequantize_val(load_i64(it.bytes, im.dtype, i), z, s as f32),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// choose_qparams

const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;

/// ExecuTorch's `calculate_scale_and_zero_point` (asymmetric, zero exactly representable).
fn scale_and_zero_point(min: f32, max: f32, qmin: i32, qmax: i32) -> (f64, i64) {
    // std::min/std::max keep a NaN first argument.
    let mut min = if 0.0 < min { 0.0 } else { min };
    let mut max = if max < 0.0 { 0.0 } else { max };
    // i64: `qmax - qmin` overflows i32 for the full int32 range.
    let range = (qmax as i64 - qmin as i64) as f64;
    let mut scale = (max as f64 - min as f64) / range;
    if scale as f32 == 0.0 || (1.0f32 / scale as f32).is_infinite() {
        scale = 0.1;
    }
    if scale < SMALL_SCALE_THRESHOLD as f64 {
        let org = scale as f32;
        scale = SMALL_SCALE_THRESHOLD as f64;
        if min == 0.0 {
            max = SMALL_SCALE_THRESHOLD * range as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE_THRESHOLD * range as f32;
        } else {
            let amp = SMALL_SCALE_THRESHOLD / org;
            min *= amp;
            max *= amp;
        }
    }
    let zp_min = qmin as f64 - min as f64 / scale;
    let zp_max = qmax as f64 - max as f64 / scale;
    let err_min = (qmin.unsigned_abs() as f64) - libm::fabs(min as f64 / scale);
    let err_max = (qmax.unsigned_abs() as f64) - libm::fabs(max as f64 / scale);
    let initial = if err_min < err_max { zp_min } else { zp_max };
    let zp = if initial < qmin as f64 {
        qmin
    } else if initial > qmax as f64 {
        qmax
    } else {
        libm::rintf(initial as f32) as i32
    };
    (scale, zp as i64)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn check_qparams_outs(
    a: &KernelArgs<'_>,
    input: usize,
    qmin: i64,
    qmax: i64,
    so: usize,
    zo: usize,
) -> Result<()> {
    if qmin >= qmax {
        return Err(Error::invalid(format!(
            "choose_qparams: quant_min {qmin} must be < quant_max {qmax}"
        )));
    }
    if i32::try_from(qmin).is_err() || i32::try_from(qmax).is_err() {
        return Err(Error::invalid(format!(
            "choose_qparams: quant range [{qmin}, {qmax}] exceeds int32"
        )));
    }
    let im = a.meta(input)?;
    if im.dtype != ScalarType::Float {
        return Err(dtype_err(input, "Float", im.dtype));
    }
    if !im.is_contiguous() {
        return Err(Error::invalid("choose_qparams: input must be contiguous"));
    }
    let (sm, zm) = (a.meta(so)?, a.meta(zo)?);
    if sm.dtype != ScalarType::Double {
        return Err(dtype_err(so, "Double", sm.dtype));
    }
    if zm.dtype != ScalarType::Long {
        return Err(dtype_err(zo, "Long", zm.dtype));
    }
    Ok(())
}

/// `choose_qparams.Tensor_out(input, quant_min, quant_max, eps, dtype, *, scale_out,
/// zero_point_out)`; `eps` is unused, as in ExecuTorch.
fn choose_qparams_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(8)?;
    let (qmin, qmax) = (a.int(1)?, a.int(2)?);
    check_qparams_outs(a, 0, qmin, qmax, 5, 6)?;
    if a.meta(5)?.numel() != 1 || a.meta(6)?.numel() != 1 {
        return Err(Error::shape(
            "choose_qparams: scale and zero point outs need one element",
        ));
    }
    let (min, max) = min_max(a.tensor(0)?.data::<f32>()?);
    let (s, z) = scale_and_zero_point(min, max, qmin as i32, qmax as i32);
    a.out(5)?.data::<f64>()?[0] = s;
    a.out(6)?.data::<i64>()?[0] = z;
    Ok(())
}

/// `choose_qparams_per_token_asymmetric.out(input, dtype, *, scale_out, zero_point_out)`:
/// int8 range [-128, 127], one pair per row of the last dim.
fn choose_qparams_per_token_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let im = *a.meta(0)?;
    if im.dim() == 0 {
        return Err(Error::shape(
            "choose_qparams_per_token: input must have at least 1 dim",
        ));
    }
    let mut shape = im.dims();
    let r = shape.len();
    shape[r - 1] = 1;
    a.resize(2, &shape)?;
    a.resize(3, &shape)?;
    check_qparams_outs(a, 0, -128, 127, 2, 3)?;
    let x = a.tensor(0)?.data::<f32>()?;
    let last = im.sizes()[r - 1];
    let mut so = a.out(2)?;
    let mut zo = a.out(3)?;
    let (sd, zd) = (so.data::<f64>()?, zo.data::<i64>()?);
    for t in 0..num_tokens(&im) {
        let row = x.get(t * last..(t + 1) * last).unwrap_or(&[]);
        let (min, max) = min_max(row);
        let (s, z) = scale_and_zero_point(min, max, -128, 127);
        if let (Some(sv), Some(zv)) = (sd.get_mut(t), zd.get_mut(t)) {
            *sv = s;
            *zv = z;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Quantized embeddings

/// The embedding row width and the packed value at column `j` of a weight row.
#[derive(Clone, Copy)]
enum Packing {
    Byte,
    /// 4-bit pairs: even columns in the high nibble, minus 8.
    Nibble,
    /// 2-bit quads: column `j % 4` in bits `2*(j % 4)`, minus 2.
    Crumb,
}

impl Packing {
    fn per_byte(self) -> usize {
        match self {
            Packing::Byte => 1,
            Packing::Nibble => 2,
            Packing::Crumb => 4,
        }
    }
}

fn embedding(
    a: &mut KernelArgs<'_>,
    pack: Packing,
    dtype_arg_at: Option<usize>,
    out: usize,
) -> Result<()> {
    a.expect_len(out + 2)?;
    let wm = *a.meta(0)?;
    let sm = *a.meta(1)?;
    let zm = a.opt_meta(2)?.copied();
    let (qmin, qmax) = (a.int(3)?, a.int(4)?);
    let xm = *a.meta(5)?;
    if wm.dim() != 2 {
        return Err(Error::shape(format!(
            "embedding: weight must be 2-D, got {:?}",
            wm.sizes()
        )));
    }
    let dim = checked_size(wm.sizes()[1], pack.per_byte(), "embedding: row width")?;
    let mut shape = xm.dims();
    if !shape.push(dim) {
        return Err(Error::shape("embedding: too many dims"));
    }
    a.resize(out, &shape)?;
    let od = a.meta(out)?.dtype;
    if sm.dim() != 1 && sm.dim() != 2 {
        return Err(Error::shape("embedding: weight_scales must be 1-D or 2-D"));
    }
    if sm.sizes()[0] != wm.sizes()[0] {
        return Err(Error::shape(format!(
            "embedding: {} scale rows for {} weight rows",
            sm.sizes()[0],
            wm.sizes()[0]
        )));
    }
    let groups = if sm.dim() == 2 { sm.sizes()[1] } else { 1 };
    if groups == 0 || !dim.is_multiple_of(groups) {
        return Err(Error::shape(format!(
            "embedding: {groups} groups do not divide the embedding dim {dim}"
        )));
    }
    let wd = wm.dtype;
    let w_ok = match pack {
        Packing::Byte => matches!(wd, ScalarType::Byte | ScalarType::Char),
        _ => wd == ScalarType::Byte,
    };
    if !w_ok {
        return Err(dtype_err(0, "Byte (or Char for embedding_byte)", wd));
    }
    let floats = [ScalarType::Float, ScalarType::Half, ScalarType::BFloat16];
    if !floats.contains(&od) {
        return Err(dtype_err(out, "Float, Half or BFloat16", od));
    }
    if !floats.contains(&sm.dtype) {
        return Err(dtype_err(1, "Float, Half or BFloat16", sm.dtype));
    }
    // The `.out` overloads read the scales as the out dtype.
    if dtype_arg_at.is_none() && sm.dtype != od {
        return Err(dtype_err(1, od.name(), sm.dtype));
    }
    if let Some(z) = &zm {
        if z.dim() != sm.dim() || z.sizes() != sm.sizes() {
            return Err(Error::shape(
                "embedding: weight_zero_points must match weight_scales' shape",
            ));
        }
        if z.dtype != od {
            return Err(dtype_err(2, od.name(), z.dtype));
        }
    }
    let idx_ok = match pack {
        Packing::Byte => xm.dtype == ScalarType::Long,
        _ => matches!(xm.dtype, ScalarType::Long | ScalarType::Int),
    };
    if !idx_ok {
        return Err(dtype_err(5, "Long (or Int for 2/4-bit)", xm.dtype));
    }
    if qmin > qmax {
        return Err(Error::invalid(format!(
            "embedding: quant_min {qmin} > quant_max {qmax}"
        )));
    }
    if let Some(at) = dtype_arg_at {
        if let Some(dt) = opt_dtype_arg(a, at)? {
            if dt != od {
                return Err(Error::invalid(
                    "embedding: dtype must match the out tensor's dtype",
                ));
            }
        }
    }
    for (arg, m) in [(0, &wm), (1, &sm), (5, &xm)] {
        if !m.is_contiguous() {
            return Err(Error::invalid(format!(
                "embedding: argument {arg} must be contiguous"
            )));
        }
    }
    let om = *a.meta(out)?;
    if !om.is_contiguous() {
        return Err(Error::invalid("embedding: out must be contiguous"));
    }
    let (wt, st, xt) = (a.tensor(0)?, a.tensor(1)?, a.tensor(5)?);
    let zt = a.opt_tensor(2)?;
    let ot = a.out(out)?;
    let ob = &mut *ot.bytes;
    let rows = wm.sizes()[0];
    let wcols = wm.sizes()[1];
    let gsize = dim / groups;
    let mut o = 0usize;
    for i in 0..xm.numel() {
        let ix = load_i64(xt.bytes, xm.dtype, i);
        let r = usize::try_from(ix)
            .ok()
            .filter(|&r| r < rows)
            .ok_or_else(|| {
                Error::invalid(format!("embedding: index {ix} out of range [0, {rows})"))
            })?;
        let wrow = wt
            .bytes
            .get(r * wcols..(r + 1) * wcols)
            .ok_or_else(|| Error::invalid("embedding: weight smaller than its shape"))?;
        for j in 0..dim {
            let g = r * groups + j / gsize;
            let scale = load_f64(st.bytes, sm.dtype, g) as f32;
            let zp = zt.map_or(0.0, |z| load_f64(z.bytes, z.dtype(), g) as f32);
            let w = match pack {
                Packing::Byte => {
                    if wd == ScalarType::Char {
                        wrow[j] as i8 as f32
                    } else {
                        wrow[j] as f32
                    }
                }
                Packing::Nibble => {
                    let b = wrow[j / 2];
                    let n = if j % 2 == 1 { b & 0x0f } else { b >> 4 };
                    n as i32 as f32 - 8.0
                }
                Packing::Crumb => {
                    let b = wrow[j / 4];
                    ((b >> (2 * (j % 4))) & 3) as i32 as f32 - 2.0
                }
            };
            store_f64(ob, od, o, ((w - zp) * scale) as f64);
            o += 1;
        }
    }
    Ok(())
}

fn embedding_byte_out(a: &mut KernelArgs<'_>) -> Result<()> {
    embedding(a, Packing::Byte, None, 6)
}
fn embedding_byte_dtype_out(a: &mut KernelArgs<'_>) -> Result<()> {
    embedding(a, Packing::Byte, Some(6), 7)
}
fn embedding_4bit_out(a: &mut KernelArgs<'_>) -> Result<()> {
    embedding(a, Packing::Nibble, None, 6)
}
fn embedding_4bit_dtype_out(a: &mut KernelArgs<'_>) -> Result<()> {
    embedding(a, Packing::Nibble, Some(6), 7)
}
fn embedding_2bit_out(a: &mut KernelArgs<'_>) -> Result<()> {
    embedding(a, Packing::Crumb, None, 6)
}
fn embedding_2bit_dtype_out(a: &mut KernelArgs<'_>) -> Result<()> {
    embedding(a, Packing::Crumb, Some(6), 7)
}

// ---------------------------------------------------------------------------------------
// int8-weight matmuls

/// Rounds through `t` when it is Half: ExecuTorch does Half arithmetic op by op.
#[inline]
fn rnd(t: ScalarType, v: f32) -> f32 {
    if t == ScalarType::Half {
        f16::from_f32(v).to_f32()
    } else {
        v
    }
}

fn check_2d(a: &KernelArgs<'_>, i: usize, what: &str) -> Result<TensorMeta> {
    let m = *a.meta(i)?;
    if m.dim() != 2 {
        return Err(Error::shape(format!(
            "{what} must be 2-D, got {:?}",
            m.sizes()
        )));
    }
    if !m.is_contiguous() {
        return Err(Error::invalid(format!("{what} must be contiguous")));
    }
    Ok(m)
}

fn check_mixed_common(
    a: &KernelArgs<'_>,
    im: &TensorMeta,
    wm: &TensorMeta,
    sm: &TensorMeta,
    zi: usize,
) -> Result<()> {
    if wm.dtype != ScalarType::Char {
        return Err(dtype_err(1, "Char", wm.dtype));
    }
    if !matches!(im.dtype, ScalarType::Float | ScalarType::Half) {
        return Err(dtype_err(0, "Float or Half", im.dtype));
    }
    if sm.dtype != im.dtype {
        return Err(dtype_err(2, im.dtype.name(), sm.dtype));
    }
    if a.opt_meta(zi)?.is_some() {
        return Err(Error::NotImplemented(
            "mixed matmul: zero points are not supported (as in ExecuTorch)".into(),
        ));
    }
    Ok(())
}

/// `mixed_mm.out(input [m, n], weight [n, p] int8, weight_scales [n], zp?, *, out)`:
/// `out = input @ (weight * scales[:, None])`, one scale per input column.
fn mixed_mm_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    let im = check_2d(a, 0, "mixed_mm input")?;
    let wm = check_2d(a, 1, "mixed_mm weight")?;
    let sm = *a.meta(2)?;
    let om = *a.meta(4)?;
    if sm.dim() != 1 || om.dim() != 2 {
        return Err(Error::shape(
            "mixed_mm: weight_scales must be 1-D and out 2-D",
        ));
    }
    let (m, n, p) = (im.sizes()[0], im.sizes()[1], wm.sizes()[1]);
    if wm.sizes()[0] != n || sm.sizes()[0] != n {
        return Err(Error::shape(format!(
            "mixed_mm: input {:?}, weight {:?}, scales {:?} do not line up",
            im.sizes(),
            wm.sizes(),
            sm.sizes()
        )));
    }
    check_mixed_common(a, &im, &wm, &sm, 3)?;
    if om.dtype != im.dtype {
        return Err(dtype_err(4, im.dtype.name(), om.dtype));
    }
    a.resize(4, &[m, p])?;
    let dt = im.dtype;
    let (it, wt, st) = (a.tensor(0)?, a.tensor(1)?, a.tensor(2)?);
    let w = wt.data::<i8>()?;
    let ot = a.out(4)?;
    let om = *ot.meta;
    let ob = &mut *ot.bytes;
    // n multiply-adds per output: charged, and the deadline polled row by row.
    let mut meter = Meter::charging(a);
    for i in 0..m {
        meter.add((p as u64).saturating_mul(n as u64))?;
        for j in 0..p {
            let mut sum = 0f32;
            for k in 0..n {
                let x = load_f64(it.bytes, dt, i * n + k) as f32;
                let s = load_f64(st.bytes, dt, k) as f32;
                let term = rnd(dt, rnd(dt, x * w[k * p + j] as f32) * s);
                sum = rnd(dt, sum + term);
            }
            store_f64(
                ob,
                dt,
                i * om.strides()[0] + j * om.strides()[1],
                sum as f64,
            );
        }
    }
    Ok(())
}

/// `mixed_linear.out(input [m, n], weight [p, n] int8, weight_scales [p] or [p, groups],
/// zp?, dtype?, *, out)`: `out = input @ (weight * scales).T`, scales per output row and
/// group of `ceil(n / groups)` input columns.
fn mixed_linear_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(7)?;
    let im = check_2d(a, 0, "mixed_linear input")?;
    let wm = check_2d(a, 1, "mixed_linear weight")?;
    let sm = *a.meta(2)?;
    let om = *a.meta(5)?;
    if !(sm.dim() == 1 || sm.dim() == 2) || om.dim() != 2 {
        return Err(Error::shape(
            "mixed_linear: weight_scales must be 1-D or 2-D and out 2-D",
        ));
    }
    let (m, n, p) = (im.sizes()[0], im.sizes()[1], wm.sizes()[0]);
    if wm.sizes()[1] != n || sm.sizes()[0] != p {
        return Err(Error::shape(format!(
            "mixed_linear: input {:?}, weight {:?}, scales {:?} do not line up",
            im.sizes(),
            wm.sizes(),
            sm.sizes()
        )));
    }
    check_mixed_common(a, &im, &wm, &sm, 3)?;
    let od = match opt_dtype_arg(a, 4)? {
        Some(d) => {
            if d != om.dtype || !matches!(d, ScalarType::Float | ScalarType::Half) {
                return Err(dtype_err(5, "the dtype argument (Float or Half)", om.dtype));
            }
            d
        }
        None => om.dtype,
    };
    if !matches!(
        od,
        ScalarType::Float | ScalarType::Double | ScalarType::Half
    ) {
        return Err(dtype_err(5, "Float, Double or Half", od));
    }
    let g = if sm.dim() == 2 && sm.sizes()[1] > 0 {
        n.div_ceil(sm.sizes()[1])
    } else {
        n
    }
    .max(1);
    let groups = n.div_ceil(g);
    let srow = if sm.dim() == 2 { sm.sizes()[1] } else { 1 };
    if groups > srow.max(1) && n > 0 {
        return Err(Error::shape(
            "mixed_linear: fewer scale groups than the input needs",
        ));
    }
    a.resize(5, &[m, p])?;
    let dt = im.dtype;
    let (it, wt, st) = (a.tensor(0)?, a.tensor(1)?, a.tensor(2)?);
    let w = wt.data::<i8>()?;
    let ot = a.out(5)?;
    let om = *ot.meta;
    let ob = &mut *ot.bytes;
    let mut meter = Meter::charging(a);
    for i in 0..m {
        meter.add((p as u64).saturating_mul(n as u64))?;
        for j in 0..p {
            let mut sum = 0f32;
            let mut k = 0;
            while k < n {
                let mut psum = 0f32;
                for k2 in k..(k + g).min(n) {
                    let x = load_f64(it.bytes, dt, i * n + k2) as f32;
                    psum = rnd(od, psum + rnd(dt, x * w[j * n + k2] as f32));
                }
                let s = load_f64(st.bytes, dt, j * groups + k / g) as f32;
                sum = rnd(od, sum + rnd(od, psum * s));
                k += g;
            }
            store_f64(
                ob,
                od,
                i * om.strides()[0] + j * om.strides()[1],
                sum as f64,
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Quantized add

/// `add.out(a, a_scale, a_zero_point, a_quant_min, a_quant_max, b, ..., out_scale,
/// out_zero_point, out_quant_min, out_quant_max, *, out)`: dequantize both, add in f32,
/// requantize.
fn add_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(16)?;
    let (am, bm) = (*a.meta(0)?, *a.meta(5)?);
    let q = |s: usize| -> Result<(f32, i32, i64, i64)> {
        Ok((
            a.double(s)? as f32,
            a.int(s + 1)? as i32,
            a.int(s + 2)?,
            a.int(s + 3)?,
        ))
    };
    let (qa, qb) = (q(1)?, q(6)?);
    let (os, oz, omin, omax) = (
        a.double(10)? as f32,
        a.int(11)? as i32,
        a.int(12)?,
        a.int(13)?,
    );
    if am.sizes() != bm.sizes() || am.dtype != bm.dtype {
        return Err(Error::shape(format!(
            "quantized add: a {:?} {:?} and b {:?} {:?} must have the same shape and dtype",
            am.sizes(),
            am.dtype,
            bm.sizes(),
            bm.dtype
        )));
    }
    for (lo, hi, what) in [(qa.2, qa.3, "a"), (qb.2, qb.3, "b"), (omin, omax, "out")] {
        if lo < 0 || hi > 255 || lo > hi {
            return Err(Error::invalid(format!(
                "quantized add: invalid quant range [{lo}, {hi}] for {what}"
            )));
        }
    }
    if !matches!(
        am.dtype,
        ScalarType::Byte
            | ScalarType::Char
            | ScalarType::Short
            | ScalarType::Int
            | ScalarType::Long
    ) {
        return Err(dtype_err(0, "an integer dtype", am.dtype));
    }
    let shape = am.dims();
    a.resize(14, &shape)?;
    let om = *a.meta(14)?;
    if om.dtype != am.dtype {
        return Err(dtype_err(14, am.dtype.name(), om.dtype));
    }
    let (at, bt) = (a.tensor(0)?, a.tensor(5)?);
    let ot = a.out(14)?;
    let ob = &mut *ot.bytes;
    let inv = 1.0f32 / os;
    for_each_offset(
        &shape,
        [om.strides(), am.strides(), bm.strides()],
        |[o, i, j]| {
            // (value - zp) in int64 times the scale in double, then to f32.
            // Wrapping: an int64 input of i64::MIN minus a positive zero point overflows.
            let da = (load_i64(at.bytes, am.dtype, i).wrapping_sub(qa.1 as i64) as f64
                * qa.0 as f64) as f32;
            let db = (load_i64(bt.bytes, bm.dtype, j).wrapping_sub(qb.1 as i64) as f64
                * qb.0 as f64) as f32;
            let v = ((oz as i64) as f32 + libm::rintf(inv * (da + db))) as i64;
            store_i64(ob, om.dtype, o, v.max(omin).min(omax));
        },
    );
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    let q = |n: &str| format!("quantized_decomposed::{n}");
    reg.register(&q("quantize_per_tensor.out"), quantize_per_tensor_out);
    reg.register(
        &q("quantize_per_tensor.Tensor_out"),
        quantize_per_tensor_tensor_out,
    );
    reg.register(&q("dequantize_per_tensor.out"), dequantize_per_tensor_out);
    reg.register(
        &q("dequantize_per_tensor.Tensor_out"),
        dequantize_per_tensor_tensor_out,
    );
    reg.register(&q("quantize_per_channel.out"), quantize_per_channel_out);
    reg.register(&q("dequantize_per_channel.out"), dequantize_per_channel_out);
    reg.register(&q("quantize_per_token.out"), quantize_per_token_out);
    reg.register(&q("dequantize_per_token.out"), dequantize_per_token_out);
    reg.register(&q("choose_qparams.Tensor_out"), choose_qparams_tensor_out);
    reg.register(
        &q("choose_qparams_per_token_asymmetric.out"),
        choose_qparams_per_token_out,
    );
    reg.register(&q("embedding_byte.out"), embedding_byte_out);
    reg.register(&q("embedding_byte.dtype_out"), embedding_byte_dtype_out);
    reg.register(&q("embedding_2bit.out"), embedding_2bit_out);
    reg.register(&q("embedding_2bit.dtype_out"), embedding_2bit_dtype_out);
    reg.register(&q("embedding_4bit.out"), embedding_4bit_out);
    reg.register(&q("embedding_4bit.dtype_out"), embedding_4bit_dtype_out);
    reg.register(&q("mixed_mm.out"), mixed_mm_out);
    reg.register(&q("mixed_linear.out"), mixed_linear_out);
    reg.register(&q("add.out"), add_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    fn f(shape: &[usize], v: &[f64]) -> OwnedTensor {
        OwnedTensor::from_f64(Float, shape, v)
    }
    fn code(t: ptero_core::ScalarType) -> Arg {
        Arg::Int(t as i64)
    }

    #[test]
    fn quantize_per_tensor_rounds_half_even_and_clamps() {
        let x = f(&[6], &[0.5, 1.5, 2.5, -0.5, 300., -300.]);
        for (s, z, want) in [
            (1.0, 0, [0., 2., 2., 0., 127., -128.]),
            (0.5, 3, [4., 6., 8., 2., 127., -128.]),
        ] {
            let r = run_op(
                "quantized_decomposed::quantize_per_tensor.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::Double(s),
                    Arg::Int(z),
                    Arg::Int(-128),
                    Arg::Int(127),
                    code(Char),
                    Arg::Out(Char, vec![6]),
                ],
            )
            .unwrap();
            assert_eq!(r.tensors[0].to_f64(), want);
        }
        // Tensor overload, Byte, quant range narrower than the dtype.
        let r = run_op(
            "quantized_decomposed::quantize_per_tensor.Tensor_out",
            vec![
                Arg::T(x.clone()),
                Arg::T(OwnedTensor::from_f64(Double, &[1], &[1.0])),
                Arg::T(OwnedTensor::new::<i64>(&[1], &[10])),
                Arg::Int(0),
                Arg::Int(100),
                code(Byte),
                Arg::Out(Byte, vec![6]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [10., 12., 12., 10., 100., 0.]);
        // quant_min below the dtype's range, and a 0-d input.
        assert!(run_op(
            "quantized_decomposed::quantize_per_tensor.out",
            vec![
                Arg::T(x),
                Arg::Double(1.0),
                Arg::Int(0),
                Arg::Int(-129),
                Arg::Int(127),
                code(Char),
                Arg::Out(Char, vec![6])
            ],
        )
        .is_err());
        let r = run_op(
            "quantized_decomposed::quantize_per_tensor.out",
            vec![
                Arg::T(f(&[], &[3.0])),
                Arg::Double(2.0),
                Arg::Int(0),
                Arg::Int(-128),
                Arg::Int(127),
                code(Char),
                Arg::Out(Char, vec![]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [2.]);
    }

    #[test]
    fn dequantize_per_tensor_and_channel() {
        let q = OwnedTensor::from_f64(Char, &[3], &[-128., 0., 5.]);
        let r = run_op(
            "quantized_decomposed::dequantize_per_tensor.out",
            vec![
                Arg::T(q),
                Arg::Double(0.5),
                Arg::Int(2),
                Arg::Int(-128),
                Arg::Int(127),
                code(Char),
                Arg::None,
                Arg::Out(Float, vec![3]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [-65., -1., 1.5]);
        // Per channel along dim 1 of a [2, 2] in a transposed dim order.
        let q = OwnedTensor::from_f64(Char, &[2, 2], &[1., 2., 3., 4.]).with_dim_order(&[1, 0]);
        let r = run_op(
            "quantized_decomposed::dequantize_per_channel.out",
            vec![
                Arg::T(q),
                Arg::T(f(&[2], &[1.0, 0.5])),
                Arg::T(OwnedTensor::new::<i64>(&[2], &[1, 0])),
                Arg::Int(-1),
                Arg::Int(-128),
                Arg::Int(127),
                code(Char),
                Arg::None,
                Arg::Out(Float, vec![2, 2]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [0., 1., 2., 2.]);
        // Empty input.
        let r = run_op(
            "quantized_decomposed::dequantize_per_tensor.out",
            vec![
                Arg::T(OwnedTensor::from_f64(Byte, &[0], &[])),
                Arg::Double(1.0),
                Arg::Int(0),
                Arg::Int(0),
                Arg::Int(255),
                code(Byte),
                Arg::None,
                Arg::Out(Float, vec![0]),
            ],
        )
        .unwrap();
        assert!(r.tensors[0].to_f64().is_empty());
    }

    #[test]
    fn per_channel_and_per_token_roundtrip() {
        let x = f(&[2, 3], &[0.1, -0.2, 0.3, 1.0, 2.0, -3.0]);
        let scales = OwnedTensor::from_f64(Double, &[2], &[0.01, 0.05]);
        let zps = OwnedTensor::new::<i64>(&[2], &[0, 5]);
        let r = run_op(
            "quantized_decomposed::quantize_per_channel.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(scales.clone()),
                Arg::T(zps.clone()),
                Arg::Int(0),
                Arg::Int(-128),
                Arg::Int(127),
                code(Char),
                Arg::Out(Char, vec![2, 3]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [10., -20., 30., 25., 45., -55.]);
        let r2 = run_op(
            "quantized_decomposed::quantize_per_token.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(scales.clone()),
                Arg::T(zps.clone()),
                Arg::Int(-128),
                Arg::Int(127),
                code(Char),
                Arg::Out(Char, vec![2, 3]),
            ],
        )
        .unwrap();
        assert_eq!(r2.tensors[0].to_f64(), r.tensors[0].to_f64());
        let d = run_op(
            "quantized_decomposed::dequantize_per_token.out",
            vec![
                Arg::T(r2.tensors[0].clone()),
                Arg::T(scales),
                Arg::T(zps),
                Arg::Int(-128),
                Arg::Int(127),
                code(Char),
                code(Float),
                Arg::Out(Float, vec![2, 3]),
            ],
        )
        .unwrap();
        assert_close(&d.tensors[0].to_f64(), &x.to_f64(), 1e-6, 1e-6);
    }

    #[test]
    fn choose_qparams_matches_executorch_formula() {
        let r = run_op(
            "quantized_decomposed::choose_qparams.Tensor_out",
            vec![
                Arg::T(f(&[2], &[-1.0, 3.0])),
                Arg::Int(-128),
                Arg::Int(127),
                Arg::Double(1e-5),
                code(Char),
                Arg::Out(Double, vec![1]),
                Arg::Out(Long, vec![1]),
            ],
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &[4.0 / 255.0], 1e-12, 0.0);
        assert_eq!(r.tensors[1].to_f64(), [-64.]);
        // Per token: an all-zero row falls back to scale 0.1.
        let r = run_op(
            "quantized_decomposed::choose_qparams_per_token_asymmetric.out",
            vec![
                Arg::T(f(&[2, 2], &[0., 0., 0., 2.55])),
                code(Float),
                Arg::Out(Double, vec![2, 1]),
                Arg::Out(Long, vec![2, 1]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].sizes, [2, 1]);
        assert_close(
            &r.tensors[0].to_f64(),
            &[0.1, 2.55f32 as f64 / 255.0],
            1e-9,
            0.0,
        );
        assert_eq!(r.tensors[1].to_f64(), [127., -128.]);
        assert!(run_op(
            "quantized_decomposed::choose_qparams.Tensor_out",
            vec![
                Arg::T(f(&[2], &[-1.0, 3.0])),
                Arg::Int(5),
                Arg::Int(5),
                Arg::Double(1e-5),
                code(Char),
                Arg::Out(Double, vec![1]),
                Arg::Out(Long, vec![1])
            ],
        )
        .is_err());
    }

    fn emb(
        op: &str,
        w: OwnedTensor,
        s: OwnedTensor,
        z: Option<OwnedTensor>,
        idx: OwnedTensor,
        out: Vec<usize>,
    ) -> Vec<f64> {
        run_op(
            op,
            vec![
                Arg::T(w),
                Arg::T(s),
                z.map_or(Arg::None, Arg::T),
                Arg::Int(-8),
                Arg::Int(7),
                Arg::T(idx),
                Arg::Out(Float, out),
            ],
        )
        .unwrap()
        .tensors[0]
            .to_f64()
    }

    #[test]
    fn embedding_4bit_and_2bit_packing() {
        let w = OwnedTensor::new::<u8>(&[2, 1], &[0x1F, 0x80]);
        let s = f(&[2], &[0.5, 2.0]);
        let idx = OwnedTensor::new::<i64>(&[2], &[1, 0]);
        let op = "quantized_decomposed::embedding_4bit.out";
        assert_eq!(
            emb(op, w.clone(), s.clone(), None, idx.clone(), vec![2, 2]),
            [0., -16., -3.5, 3.5]
        );
        let z = f(&[2], &[-1.0, 1.0]);
        assert_eq!(
            emb(op, w.clone(), s.clone(), Some(z), idx.clone(), vec![2, 2]),
            [-2., -18., -3., 4.]
        );
        let w2 = OwnedTensor::new::<u8>(&[1, 1], &[0xE4]);
        let idx0 = OwnedTensor::new::<i32>(&[1, 1], &[0]);
        let got = emb(
            "quantized_decomposed::embedding_2bit.out",
            w2,
            f(&[1], &[1.0]),
            None,
            idx0,
            vec![1, 1, 4],
        );
        assert_eq!(got, [-2., -1., 0., 1.]);
        // Out-of-range index is an error.
        let bad = OwnedTensor::new::<i64>(&[1], &[2]);
        assert!(run_op(
            op,
            vec![
                Arg::T(w),
                Arg::T(s),
                Arg::None,
                Arg::Int(-8),
                Arg::Int(7),
                Arg::T(bad),
                Arg::Out(Float, vec![1, 2])
            ]
        )
        .is_err());
    }

    #[test]
    fn embedding_byte_groups_and_dtype_out() {
        let w = OwnedTensor::new::<u8>(&[1, 4], &[10, 20, 30, 40]);
        let s = f(&[1, 2], &[1.0, 0.5]);
        let z = f(&[1, 2], &[10.0, 20.0]);
        let idx = OwnedTensor::new::<i64>(&[1], &[0]);
        let got = emb(
            "quantized_decomposed::embedding_byte.out",
            w.clone(),
            s.clone(),
            Some(z),
            idx.clone(),
            vec![1, 4],
        );
        assert_eq!(got, [0., 10., 5., 10.]);
        // dtype_out: float scales, half out.
        let r = run_op(
            "quantized_decomposed::embedding_byte.dtype_out",
            vec![
                Arg::T(w),
                Arg::T(s),
                Arg::None,
                Arg::Int(0),
                Arg::Int(255),
                Arg::T(idx),
                code(Half),
                Arg::Out(Half, vec![1, 4]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [10., 20., 15., 20.]);
    }

    #[test]
    fn mixed_mm_and_linear() {
        let x = f(&[2, 3], &[1., 2., 3., -1., 0.5, 2.]);
        let w = OwnedTensor::new::<i8>(&[3, 2], &[1, -2, 3, 4, -5, 6]);
        let s = f(&[3], &[0.5, 1.0, 2.0]);
        let r = run_op(
            "quantized_decomposed::mixed_mm.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(w),
                Arg::T(s),
                Arg::None,
                Arg::Out(Float, vec![2, 2]),
            ],
        )
        .unwrap();
        // x @ diag(s) @ w
        let want = [
            1. * 0.5 * 1. + 2. * 3. - 3. * 2. * 5.,
            1. * 0.5 * -2. + 2. * 4. + 3. * 2. * 6.,
            -0.5 + 0.5 * 3. - 2. * 2. * 5.,
            -0.5 * -2. + 0.5 * 4. + 2. * 2. * 6.,
        ];
        assert_close(&r.tensors[0].to_f64(), &want, 1e-6, 0.0);
        // Linear with 2 groups over n = 3 (group size 2, the last group short).
        let wl = OwnedTensor::new::<i8>(&[1, 3], &[1, 2, 3]);
        let sl = f(&[1, 2], &[0.5, 2.0]);
        let r = run_op(
            "quantized_decomposed::mixed_linear.out",
            vec![
                Arg::T(x),
                Arg::T(wl),
                Arg::T(sl),
                Arg::None,
                Arg::None,
                Arg::Out(Float, vec![2, 1]),
            ],
        )
        .unwrap();
        assert_close(
            &r.tensors[0].to_f64(),
            &[(1. + 4.) * 0.5 + 9. * 2., (-1. + 1.) * 0.5 + 6. * 2.],
            1e-6,
            0.0,
        );
    }

    #[test]
    fn quantized_add() {
        let a = OwnedTensor::new::<u8>(&[2], &[10, 20]);
        let b = OwnedTensor::new::<u8>(&[2], &[4, 6]);
        let args = |omax: i64| {
            vec![
                Arg::T(a.clone()),
                Arg::Double(0.5),
                Arg::Int(0),
                Arg::Int(0),
                Arg::Int(255),
                Arg::T(b.clone()),
                Arg::Double(1.0),
                Arg::Int(2),
                Arg::Int(0),
                Arg::Int(255),
                Arg::Double(1.0),
                Arg::Int(1),
                Arg::Int(0),
                Arg::Int(omax),
                Arg::Out(Byte, vec![2]),
            ]
        };
        assert_eq!(
            run_op("quantized_decomposed::add.out", args(255))
                .unwrap()
                .tensors[0]
                .to_f64(),
            [8., 15.]
        );
        assert_eq!(
            run_op("quantized_decomposed::add.out", args(10))
                .unwrap()
                .tensors[0]
                .to_f64(),
            [8., 10.]
        );
        assert!(run_op("quantized_decomposed::add.out", args(256)).is_err());
    }

    #[test]
    fn hostile_ranges_and_sizes() {
        // The full int32 range: `qmax - qmin` used to overflow i32 (a panic in debug).
        let r = run_op(
            "quantized_decomposed::choose_qparams.Tensor_out",
            vec![
                Arg::T(f(&[2], &[-1.0, 1.0])),
                Arg::Int(i32::MIN as i64),
                Arg::Int(i32::MAX as i64),
                Arg::Double(1e-5),
                code(Int),
                Arg::Out(Double, vec![1]),
                Arg::Out(Long, vec![1]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [6.1e-5f32 as f64]);
        // A range past int32 is rejected rather than truncated.
        assert!(run_op(
            "quantized_decomposed::choose_qparams.Tensor_out",
            vec![
                Arg::T(f(&[2], &[-1.0, 1.0])),
                Arg::Int(-(1 << 40)),
                Arg::Int(1 << 40),
                Arg::Double(1e-5),
                code(Int),
                Arg::Out(Double, vec![1]),
                Arg::Out(Long, vec![1]),
            ],
        )
        .is_err());
        // int64 inputs at i64::MIN with a positive zero point: the difference wraps (it
        // used to overflow).
        let a = OwnedTensor::new::<i64>(&[1], &[i64::MIN]);
        let mut args = vec![
            Arg::T(a.clone()),
            Arg::Double(1.0),
            Arg::Int(1),
            Arg::Int(0),
        ];
        args.extend([Arg::Int(255), Arg::T(a), Arg::Double(1.0), Arg::Int(1)]);
        args.extend([Arg::Int(0), Arg::Int(255), Arg::Double(1.0), Arg::Int(0)]);
        args.extend([Arg::Int(0), Arg::Int(255), Arg::Out(Long, vec![1])]);
        let r = run_op("quantized_decomposed::add.out", args).unwrap();
        assert_eq!(r.tensors[0].to_f64(), [255.]);
        // A packed row width whose unpacked width overflows usize.
        let w = OwnedTensor::zeros(Byte, &[0, 1 << 62]);
        assert!(run_op(
            "quantized_decomposed::embedding_2bit.out",
            vec![
                Arg::T(w),
                Arg::T(OwnedTensor::zeros(Float, &[0])),
                Arg::None,
                Arg::Int(-2),
                Arg::Int(1),
                Arg::T(OwnedTensor::new::<i32>(&[0], &[])),
                Arg::Out(Float, vec![0, 4]),
            ],
        )
        .is_err());
    }

    #[test]
    fn matmuls_poll_the_deadline() {
        let (m, n, p) = (128usize, 64usize, 64usize);
        let x = OwnedTensor::zeros(Float, &[m, n]);
        let s = OwnedTensor::zeros(Float, &[n]);
        let w = OwnedTensor::new::<i8>(&[n, p], &alloc::vec![1i8; n * p]);
        let got = run_op_interrupted(
            "quantized_decomposed::mixed_mm.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(w),
                Arg::T(s),
                Arg::None,
                Arg::Out(Float, vec![m, p]),
            ],
        );
        assert_eq!(got.unwrap_err(), ptero_core::Error::Interrupted);
        let w = OwnedTensor::new::<i8>(&[p, n], &alloc::vec![1i8; n * p]);
        let got = run_op_interrupted(
            "quantized_decomposed::mixed_linear.out",
            vec![
                Arg::T(x),
                Arg::T(w),
                Arg::T(OwnedTensor::zeros(Float, &[p])),
                Arg::None,
                Arg::None,
                Arg::Out(Float, vec![m, p]),
            ],
        );
        assert_eq!(got.unwrap_err(), ptero_core::Error::Interrupted);
    }
}
