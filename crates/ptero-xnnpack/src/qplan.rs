//! Planning quantized nodes: filters packed with their scales, zero points folded into
//! biases, XNNPACK's requantization constants derived once.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

use ptero_gemm::{QDwWeights, QPacked};

use crate::error::{Result, XnnError};
use crate::graph::{BinaryOp, ConvAttrs, ConvKind, Datatype, Graph, Node, Quant, Value, NO_VALUE};
use crate::plan::{bad, unsupported, FLAG_TRANSPOSE_WEIGHTS};
use crate::quant::{range_of, Kind, QBin, QStep, Qs8Conv};

/// Reads constants' raw bytes while planning.
pub(crate) type ConstBytes<'p> = dyn Fn(usize) -> Result<&'p [u8]> + 'p;

/// Per-channel (or per-tensor) scales of a quantized constant: `count` of them.
fn channel_scales(v: &Value, vi: usize, count: usize, bytes: &ConstBytes<'_>) -> Result<Vec<f32>> {
    let err = |what: alloc::string::String| XnnError::Constant { value: vi, what };
    let s: Vec<f32> = match &v.quant {
        Quant::PerTensor { scale, .. } => alloc::vec![*scale; count],
        Quant::PerChannel {
            scales,
            scale_buffer,
            ..
        } => match scale_buffer {
            Some(b) => bytes(*b as usize)?
                .chunks_exact(4)
                .take(count)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None => scales.iter().copied().take(count).collect(),
        },
        _ => return Err(err("expected per-tensor or per-channel scales".into())),
    };
    if s.len() < count || s.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return Err(err(format!(
            "{} scales for {count} channels, each must be finite and positive",
            s.len()
        )));
    }
    Ok(s)
}

/// Int32 biases (qint32 / qcint32).
fn int_bias(g: &Graph, id: u32, n: usize, bytes: &ConstBytes<'_>) -> Result<Vec<i32>> {
    if id == NO_VALUE {
        return Ok(alloc::vec![0; n]);
    }
    let vi = g.by_id[&id];
    let v = &g.values[vi];
    let err = |what: alloc::string::String| XnnError::Constant { value: vi, what };
    if !matches!(
        v.dtype,
        Datatype::QInt32 | Datatype::QcInt32 | Datatype::Int32
    ) {
        return Err(err(format!("an int8 product's bias of {}", v.dtype.name())));
    }
    let c = v
        .constant
        .ok_or_else(|| err("a bias computed at run time".into()))?;
    let b = bytes(c as usize)?;
    if b.len() < n * 4 {
        return Err(err(format!("{} bytes for {n} int32 biases", b.len())));
    }
    Ok(b.chunks_exact(4)
        .take(n)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn q8_of(g: &Graph, id: u32) -> Option<(f32, i32)> {
    match Kind::of(&g.values[g.by_id[&id]]) {
        Ok(Kind::Q8 { scale, zp }) => Some((scale, zp)),
        _ => None,
    }
}

fn kind_of(g: &Graph, id: u32) -> Option<Kind> {
    Kind::of(&g.values[g.by_id[&id]]).ok()
}

/// A fully connected node reading `qdint8` or `qint8`; `None` when it reads f32.
pub(crate) fn plan_fc(
    g: &Graph,
    index: usize,
    node: &Node,
    (input, filter, bias, output): (u32, u32, u32, u32),
    consts_f32: &dyn Fn(usize) -> Option<usize>,
    bytes: &ConstBytes<'_>,
) -> Result<Option<QStep>> {
    let vi = |id: u32| g.by_id[&id];
    let kin = kind_of(g, input);
    if !matches!(kin, Some(Kind::Q8 { .. } | Kind::Qd8 { .. })) {
        return Ok(None);
    }
    let fv = &g.values[vi(filter)];
    let fc = fv
        .constant
        .ok_or_else(|| unsupported(index, node, "a quantized filter computed at run time"))?;
    // A 1 x 1 convolution's filter `[OC, 1, 1, IC]` serves as `[OC, IC]`.
    let pointwise = fv.dims.len() == 4 && fv.dims[1] == 1 && fv.dims[2] == 1;
    let fdims = if pointwise {
        alloc::vec![fv.dims[0], fv.dims[3]]
    } else {
        fv.dims.clone()
    };
    if fdims.len() != 2 {
        return Err(bad(index, node, format!("filter dims {:?}", fv.dims)));
    }
    let transposed = !pointwise && node.flags & FLAG_TRANSPOSE_WEIGHTS != 0;
    let (n, k) = if transposed {
        (fdims[1], fdims[0])
    } else {
        (fdims[0], fdims[1])
    };
    if k == 0 {
        return Err(bad(index, node, "a filter with no inputs"));
    }
    let raw = bytes(fc as usize)?;
    let err = |e: ptero_gemm::QPackError| bad(index, node, e);
    let short = || bad(index, node, format!("filter data too short for [{n}, {k}]"));
    let pack8 = |scales: &dyn Fn(usize, usize) -> f32| -> Result<QPacked> {
        if raw.len() < n * k {
            return Err(short());
        }
        QPacked::new(
            n,
            k,
            8,
            k,
            |r, c| {
                (if transposed {
                    raw[c * n + r]
                } else {
                    raw[r * k + c]
                }) as i8
            },
            scales,
        )
        .map_err(err)
    };
    match kin {
        Some(Kind::Qd8 { nonbatch }) => {
            let w = match fv.dtype {
                Datatype::QcInt8 | Datatype::QInt8 => {
                    if let Quant::PerTensor { zero_point, .. } = fv.quant {
                        if zero_point != 0 {
                            return Err(unsupported(index, node, "int8 weights with a zero point"));
                        }
                    }
                    let s = channel_scales(fv, vi(filter), n, bytes)?;
                    pack8(&|r, _| s[r])?
                }
                Datatype::QcInt4 | Datatype::QbInt4 => {
                    if transposed {
                        return Err(unsupported(index, node, "transposed 4-bit weights"));
                    }
                    let rb = k.div_ceil(2);
                    if raw.len() < n * rb {
                        return Err(short());
                    }
                    let nib = |r: usize, c: usize| -> i8 {
                        let b = raw[r * rb + c / 2];
                        (if c.is_multiple_of(2) { b & 15 } else { b >> 4 }) as i8 - 8
                    };
                    if fv.dtype == Datatype::QcInt4 {
                        let s = channel_scales(fv, vi(filter), n, bytes)?;
                        QPacked::new(n, k, 4, k, nib, |r, _| s[r]).map_err(err)?
                    } else {
                        let Quant::PerChannelGroup {
                            group_size,
                            scale_buffer,
                            scales,
                            ..
                        } = &fv.quant
                        else {
                            return Err(bad(index, node, "qbint4 weights without group scales"));
                        };
                        let gs = *group_size;
                        if gs == 0 || k % gs != 0 {
                            return Err(bad(
                                index,
                                node,
                                format!("group size {gs} for {k} inputs"),
                            ));
                        }
                        let count = n * (k / gs);
                        let s: Vec<f32> = match scale_buffer {
                            Some(b) => bytes(*b as usize)?
                                .chunks_exact(2)
                                .take(count)
                                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                                .collect(),
                            // Legacy inline f32 scales, narrowed to bf16 as XNNPACK's
                            // loader does (a nudge up, then truncation).
                            #[allow(clippy::excessive_precision)] // XNNPACK's literal
                            None => scales
                                .iter()
                                .take(count)
                                .map(|&f| {
                                    f32::from_bits((f * 1.003_891_05).to_bits() & 0xffff_0000)
                                })
                                .collect(),
                        };
                        if s.len() < count {
                            return Err(bad(
                                index,
                                node,
                                format!("{} group scales, {count} needed", s.len()),
                            ));
                        }
                        let groups = k / gs;
                        QPacked::new(n, k, 4, gs, nib, |r, gi| s[r * groups + gi]).map_err(err)?
                    }
                }
                d => {
                    return Err(unsupported(
                        index,
                        node,
                        format!("dynamically quantized inputs against {} weights", d.name()),
                    ))
                }
            };
            let bias = if bias == NO_VALUE {
                None
            } else {
                let b = consts_f32(vi(bias)).ok_or_else(|| {
                    unsupported(index, node, "a bias that is not an f32 constant")
                })?;
                Some(b)
            };
            let clamp = node.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            Ok(Some(QStep::Qd8Fc {
                x: vi(input),
                out: vi(output),
                w,
                bias,
                clamp,
                nonbatch,
            }))
        }
        Some(Kind::Q8 { scale: sx, zp: zx }) => {
            let (sy, zy) = q8_of(g, output).ok_or_else(|| {
                unsupported(index, node, "an int8 product with a non-int8 output")
            })?;
            if !matches!(fv.dtype, Datatype::QcInt8 | Datatype::QInt8) {
                return Err(unsupported(
                    index,
                    node,
                    format!("int8 inputs against {} weights", fv.dtype.name()),
                ));
            }
            if let Quant::PerTensor { zero_point, .. } = fv.quant {
                if zero_point != 0 {
                    return Err(unsupported(index, node, "int8 weights with a zero point"));
                }
            }
            let s = channel_scales(fv, vi(filter), n, bytes)?;
            let w = pack8(&|r, _| (sx * s[r]) / sy)?;
            let bias = int_bias(g, bias, n, bytes)?;
            let b = (0..n)
                .map(|r| bias[r].wrapping_sub(zx.wrapping_mul(w.sums(r)[0])))
                .collect();
            Ok(Some(QStep::Qs8Fc {
                x: vi(input),
                out: vi(output),
                w,
                b,
                zy,
                range: range_of(node.clamp, sy, zy),
            }))
        }
        _ => Ok(None),
    }
}

/// A convolution reading `qint8`; `None` when it reads f32.
pub(crate) fn plan_conv(
    g: &Graph,
    index: usize,
    node: &Node,
    kind: ConvKind,
    a: &ConvAttrs,
    consts_f32: &dyn Fn(usize) -> Option<usize>,
    bytes: &ConstBytes<'_>,
) -> Result<Option<QStep>> {
    let vi = |id: u32| g.by_id[&id];
    let Some(kin) = kind_of(g, a.input) else {
        return Ok(None);
    };
    let dynamic = match kin {
        Kind::F32 => return Ok(None),
        Kind::Qd8 { nonbatch } => {
            if nonbatch != 3 {
                return Err(unsupported(
                    index,
                    node,
                    format!("images quantized per {nonbatch} trailing dims (3 expected)"),
                ));
            }
            true
        }
        Kind::Q8 { .. } => false,
    };
    if kind == ConvKind::ConvTranspose2d {
        return Err(unsupported(index, node, "int8 transposed convolutions"));
    }
    // XNNPACK runs a dynamically quantized 1 x 1 convolution as a fully connected
    // product over pixels, its input quantized per pixel (see `per_row_qd8`).
    let u = |x: u32| x as usize;
    if dynamic
        && kind == ConvKind::Conv2d
        && a.kernel == [1, 1]
        && a.stride == [1, 1]
        && a.padding == [0; 4]
        && a.groups == 1
    {
        return plan_fc(
            g,
            index,
            node,
            (a.input, a.filter, a.bias, a.output),
            consts_f32,
            bytes,
        );
    }
    // Static: the input's and output's scales; dynamic: f32 out, the input's per image.
    let ((sx, zx), (sy, zy)) = match (kin, dynamic) {
        (Kind::Q8 { scale, zp }, false) => (
            (scale, zp),
            q8_of(g, a.output).ok_or_else(|| {
                unsupported(index, node, "an int8 convolution with a non-int8 output")
            })?,
        ),
        _ => {
            if kind_of(g, a.output) != Some(Kind::F32) {
                return Err(unsupported(
                    index,
                    node,
                    "a dynamically quantized convolution with a quantized output",
                ));
            }
            ((1.0, 0), (1.0, 0))
        }
    };
    let p = a.padding;
    if p[0] != p[2] || p[1] != p[3] {
        return Err(unsupported(
            index,
            node,
            format!("asymmetric padding {p:?}"),
        ));
    }
    let (groups, cin_g, cout_g) = (
        u(a.groups),
        u(a.group_input_channels),
        u(a.group_output_channels),
    );
    let (cin, cout) = (groups.saturating_mul(cin_g), groups.saturating_mul(cout_g));
    let (kh, kw) = (u(a.kernel[0]), u(a.kernel[1]));
    let taps = kh.saturating_mul(kw);
    let depthwise = kind == ConvKind::DepthwiseConv2d;
    if groups == 0 || taps == 0 || cin_g == 0 || cout_g == 0 || (depthwise && cin_g != 1) {
        return Err(bad(index, node, "empty filter or groups"));
    }
    let fv = &g.values[vi(a.filter)];
    let fc = fv
        .constant
        .ok_or_else(|| unsupported(index, node, "a quantized filter computed at run time"))?;
    if !matches!(fv.dtype, Datatype::QcInt8 | Datatype::QInt8) {
        return Err(unsupported(
            index,
            node,
            format!("int8 inputs against {} filters", fv.dtype.name()),
        ));
    }
    if let Quant::PerTensor { zero_point, .. } = fv.quant {
        if zero_point != 0 {
            return Err(unsupported(index, node, "int8 filters with a zero point"));
        }
    }
    let need = taps
        .saturating_mul(cout)
        .saturating_mul(if depthwise { 1 } else { cin_g });
    let raw = bytes(fc as usize)?;
    if raw.len() < need || fv.numel() != Some(need) {
        return Err(bad(
            index,
            node,
            format!("filter of {} bytes, {need} needed", raw.len()),
        ));
    }
    let w: Vec<i8> = raw[..need].iter().map(|&b| b as i8).collect();
    let ws = channel_scales(fv, vi(a.filter), cout, bytes)?;
    let wsum = if depthwise {
        Vec::new()
    } else {
        w.chunks_exact(cin_g.max(1))
            .map(|c| c.iter().fold(0i32, |a, &v| a.wrapping_add(i32::from(v))))
            .collect()
    };
    let (bias, fbias) = if dynamic {
        let fb = if a.bias == NO_VALUE {
            None
        } else {
            let bv = vi(a.bias);
            match (g.values[bv].dtype, consts_f32(bv)) {
                (Datatype::Fp32 | Datatype::Fp16 | Datatype::Bf16, Some(c)) => Some(c),
                _ => {
                    return Err(unsupported(
                        index,
                        node,
                        "a bias that is not an f32 constant",
                    ))
                }
            }
        };
        (alloc::vec![0; cout], fb)
    } else {
        (int_bias(g, a.bias, cout, bytes)?, None)
    };
    let conv = Box::new(Qs8Conv {
        x: vi(a.input),
        out: vi(a.output),
        depthwise,
        kh,
        kw,
        stride: [u(a.stride[0]).max(1), u(a.stride[1]).max(1)],
        pad: [u(p[0]), u(p[3])],
        dilation: [u(a.dilation[0]).max(1), u(a.dilation[1]).max(1)],
        groups,
        cin,
        cout,
        w,
        wsum,
        bias,
        scale: ws.iter().map(|&s| (sx * s) / sy).collect(),
        zx,
        zy,
        range: range_of(node.clamp, sy, zy),
        gemm: None,
        dw: None,
    });
    let mut conv = conv;
    if depthwise && cin == cout && !dynamic {
        conv.dw = QDwWeights::new(taps, cout, &conv.w, &conv.bias, &conv.scale, zx);
        if conv.dw.is_some() {
            // Only the prepared weights are read.
            conv.w = Vec::new();
            conv.wsum = Vec::new();
        }
    }
    if !depthwise && groups == 1 {
        // The filter `[cout, kh·kw·cin]` packed for the int8 product.
        let kk = taps * cin;
        let scale = conv.scale.clone();
        let wref = &conv.w;
        let packed = QPacked::new(cout, kk, 8, kk, |r, c| wref[r * kk + c], |r, _| scale[r])
            .map_err(|e| bad(index, node, e))?;
        let b = (0..cout)
            .map(|r| conv.bias[r].wrapping_sub(zx.wrapping_mul(packed.sums(r)[0])))
            .collect();
        conv.gemm = Some((packed, b));
        if kk <= ptero_gemm::Q_CONV_MAX_K {
            // Only the packed filter is read.
            conv.w = Vec::new();
            conv.wsum = Vec::new();
        }
    }
    Ok(Some(if dynamic {
        QStep::Qd8Conv {
            conv,
            bias: fbias,
            clamp: node.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY)),
        }
    } else {
        QStep::Conv(conv)
    }))
}

/// Add, Subtract or Multiply on int8 values; `None` when they are f32.
pub(crate) fn plan_binary(
    g: &Graph,
    index: usize,
    node: &Node,
    op: BinaryOp,
    (a, b, output): (u32, u32, u32),
) -> Result<Option<QStep>> {
    let vi = |id: u32| g.by_id[&id];
    let (qa, qb, qy) = (q8_of(g, a), q8_of(g, b), q8_of(g, output));
    let ((sa, za), (sb, zb), (sy, zy)) = match (qa, qb, qy) {
        (None, None, None) => return Ok(None),
        (Some(x), Some(y), Some(z)) => (x, y, z),
        _ => return Err(unsupported(index, node, "int8 mixed with other datatypes")),
    };
    let op = match op {
        BinaryOp::Add | BinaryOp::Subtract => {
            let ra = sa / sy;
            let rb = if op == BinaryOp::Subtract {
                -(sb / sy)
            } else {
                sb / sy
            };
            let max = ra.abs().max(rb.abs());
            let exp = ((max.to_bits() >> 23) & 0xff) as i32 - 127;
            let shift = 20 - exp;
            if !(12..=30).contains(&shift) {
                return Err(unsupported(
                    index,
                    node,
                    format!("input to output scale ratio {max} (XNNPACK accepts 2^-10 to 2^8)"),
                ));
            }
            let m = |r: f32| {
                let f = r * (1u32 << shift) as f32;
                ((f + 12_582_912.0) - 12_582_912.0) as i32
            };
            let (ma, mb) = (m(ra), m(rb));
            let bias = (1i32 << (shift - 1))
                .wrapping_sub(ma.wrapping_mul(za))
                .wrapping_sub(mb.wrapping_mul(zb));
            QBin::Add {
                ma,
                mb,
                bias,
                shift: shift as u32,
            }
        }
        BinaryOp::Multiply => QBin::Mul {
            za,
            zb,
            scale: sa * sb / sy,
        },
        _ => return Err(unsupported(index, node, "this operation on int8 values")),
    };
    Ok(Some(QStep::Binary {
        op,
        a: vi(a),
        b: vi(b),
        out: vi(output),
        zy,
        range: range_of(node.clamp, sy, zy),
    }))
}

/// Convert, Clamp and GlobalAvgPooling2d when int8 is involved; `None` otherwise.
pub(crate) fn plan_unary(
    g: &Graph,
    index: usize,
    node: &Node,
    op: crate::graph::UnaryOp,
    (input, output): (u32, u32),
) -> Result<Option<QStep>> {
    use crate::graph::UnaryOp as U;
    let vi = |id: u32| g.by_id[&id];
    let (x, out) = (vi(input), vi(output));
    let (ki, ko) = (kind_of(g, input), kind_of(g, output));
    let (ki, ko) = match (ki, ko) {
        (Some(a), Some(b)) => (a, b),
        _ => return Ok(None),
    };
    if op == U::Convert {
        return Ok(match (ki, ko) {
            (Kind::F32, Kind::Qd8 { nonbatch }) => Some(QStep::ToQd8 { x, out, nonbatch }),
            (Kind::F32, Kind::Q8 { scale, zp }) => Some(QStep::ToQ8 { x, out, scale, zp }),
            (Kind::Q8 { scale, zp }, Kind::F32) => Some(QStep::FromQ8 { x, out, scale, zp }),
            (Kind::F32, Kind::F32) => (g.values[out].dtype == Datatype::Fp16
                && g.values[x].dtype != Datatype::Fp16)
                .then_some(QStep::RoundF16 { x, out }),
            _ => {
                return Err(unsupported(
                    index,
                    node,
                    format!(
                        "converting {} to {}",
                        g.values[x].dtype.name(),
                        g.values[out].dtype.name()
                    ),
                ))
            }
        });
    }
    if ki == Kind::F32 && ko == Kind::F32 {
        return Ok(None);
    }
    let (Kind::Q8 { scale: sx, zp: zx }, Kind::Q8 { scale: sy, zp: zy }) = (ki, ko) else {
        return Err(unsupported(
            index,
            node,
            "this operation on quantized values",
        ));
    };
    match op {
        U::Clamp => {
            if (sx, zx) != (sy, zy) {
                return Err(unsupported(
                    index,
                    node,
                    "an int8 clamp that changes quantization",
                ));
            }
            let (lo, hi) = range_of(node.clamp, sy, zy);
            Ok(Some(QStep::Clamp {
                x,
                out,
                lo: lo as i8,
                hi: hi as i8,
            }))
        }
        U::GlobalAvgPooling2d => Ok(Some(QStep::Gap {
            x,
            out,
            zx,
            ratio: sx / sy,
            zy,
            range: range_of(node.clamp, sy, zy),
        })),
        U::Copy => Ok(None),
        _ => Err(unsupported(index, node, "this operation on int8 values")),
    }
}

/// Dynamically quantized values read only by fully connected products are quantized per
/// row, whatever the exporter declared: XNNPACK turns 1 x 1 convolutions of such values
/// into fully connected products and quantizes their input per pixel.
pub(crate) fn per_row_qd8(steps: &mut [crate::plan::Step], kinds: &mut [Kind]) {
    use crate::plan::Step;
    let candidates: Vec<usize> = (0..kinds.len())
        .filter(|&v| matches!(kinds[v], Kind::Qd8 { nonbatch } if nonbatch != 1))
        .collect();
    for v in candidates {
        let mut all_fc = true;
        let mut any = false;
        for st in steps.iter() {
            let mut reads = false;
            st.reads(|x, is_const| reads |= !is_const && x == v);
            if reads {
                any = true;
                all_fc &= matches!(st, Step::Q(q) if matches!(**q, QStep::Qd8Fc { .. }));
            }
        }
        if !(any && all_fc) {
            continue;
        }
        kinds[v] = Kind::Qd8 { nonbatch: 1 };
        for st in steps.iter_mut() {
            if let Step::Q(q) = st {
                match &mut **q {
                    QStep::ToQd8 { out, nonbatch, .. } if *out == v => *nonbatch = 1,
                    QStep::Qd8Fc { x, nonbatch, .. } if *x == v => *nonbatch = 1,
                    _ => {}
                }
            }
        }
    }
}
