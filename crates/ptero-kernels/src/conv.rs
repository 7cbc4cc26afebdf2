//! Convolution (`aten::convolution.out`): 1-d and 2-d, strided, padded, dilated,
//! grouped (depthwise included) and transposed, over any dim order; and its backward
//! (`convolution_backward.out`, non-transposed 1-d and 2-d).
//!
//! 1-d convolutions run as 2-d ones with a unit height. The f32 path is direct, with no
//! scratch: for each (output channel, input channel, kernel tap) it adds one weighted
//! input row to one output row, so with unit stride and contiguous rows the inner loop
//! is a vectorizable axpy. Transposed convolution scatters the same way. Other float
//! dtypes gather each output element in f64.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType, Value};

use ptero_core::Prepared;
use ptero_gemm::{conv2d, Conv2d, ConvWeights, Image, ImageMut, Lhs, PackedConv, Rhs};

use crate::util::gemm::{err as gemm_err, is_const_f32};
use crate::util::work::{sat_product, Meter};
use crate::util::{load_f64, store_f64};

/// Bound on every coordinate the loops form (`o * stride`, `k * dilation`, padding): a
/// quarter of the `isize` range, so sums and differences of a few of them cannot overflow.
const COORD_LIMIT: i128 = (isize::MAX / 4) as i128;

/// Output length of one spatial dim, in i128 so hostile strides, paddings and dilations
/// cannot overflow; fails when there is no output or when the geometry reaches past
/// [`COORD_LIMIT`].
#[allow(clippy::too_many_arguments)]
fn conv_len(
    what: &str,
    transposed: bool,
    inp: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    op: usize,
) -> Result<usize> {
    let (i, kk, s_, p_, d_, op_) = (
        inp as i128,
        k as i128,
        s as i128,
        p as i128,
        d as i128,
        op as i128,
    );
    // Products of two sizes can pass i128::MAX: saturate, and let the range check below
    // reject what saturated.
    let span = d_.saturating_mul(kk.max(1) - 1).saturating_add(1);
    let len = if transposed {
        (i.max(1) - 1)
            .saturating_mul(s_)
            .saturating_add(span)
            .saturating_add(op_)
            - 2 * p_
    } else if i + 2 * p_ >= span {
        (i + 2 * p_ - span) / s_ + 1
    } else {
        0
    };
    if len <= 0 || k == 0 || (inp == 0 && transposed) {
        return Err(Error::shape(alloc::format!(
            "{what}: input size {inp} with kernel {k}, stride {s}, padding {p}, dilation {d} gives no output"
        )));
    }
    // The largest coordinates formed: output (or, transposed, input) positions times the
    // stride, plus the kernel span, padding and output padding.
    let steps = if transposed { i.max(len) } else { len };
    let reach = (steps - 1)
        .saturating_mul(s_)
        .saturating_add(s_)
        .saturating_add(span)
        .saturating_add(2 * p_ + op_);
    if reach > COORD_LIMIT || len > usize::MAX as i128 {
        return Err(Error::invalid(alloc::format!(
            "{what}: stride {s}, padding {p}, dilation {d} and kernel {k} over input size {inp} reach past the supported coordinate range"
        )));
    }
    Ok(len as usize)
}

/// Geometry of one convolution, always as 2-d (`h == 1` for 1-d).
#[derive(Debug, Clone, Copy)]
struct Geo {
    n: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    s: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
    ist: [usize; 4],
    wst: [usize; 4],
    ost: [usize; 4],
    bst: usize,
    transposed: bool,
    dtype: ScalarType,
}

impl Geo {
    fn conv2d(&self) -> Conv2d {
        Conv2d {
            n: self.n,
            cin: self.cin,
            cout: self.cout,
            groups: self.groups,
            ih: self.ih,
            iw: self.iw,
            oh: self.oh,
            ow: self.ow,
            kh: self.kh,
            kw: self.kw,
            stride: self.s,
            pad: self.p,
            dilation: self.d,
        }
    }
}

/// A per-spatial-dim parameter list: one value for all dims, or one per dim.
fn spatial(a: &KernelArgs<'_>, i: usize, nsp: usize, name: &str) -> Result<[i64; 2]> {
    let l = a.int_list(i)?;
    let v: [i64; 2] = match (l.len(), nsp) {
        (1, 1) => [0, l.get(0)?],
        (1, 2) => [l.get(0)?, l.get(0)?],
        (2, 2) => [l.get(0)?, l.get(1)?],
        (len, _) => {
            return Err(Error::invalid(alloc::format!(
                "convolution: {name} has {len} entries for {nsp} spatial dims"
            )))
        }
    };
    Ok(v)
}

/// Sizes/strides of a 3-d or 4-d tensor as 4-d (a unit height inserted for 3-d).
fn as4(sizes: &[usize], strides: &[usize]) -> ([usize; 4], [usize; 4]) {
    if sizes.len() == 3 {
        (
            [sizes[0], sizes[1], 1, sizes[2]],
            [strides[0], strides[1], 0, strides[2]],
        )
    } else {
        (
            [sizes[0], sizes[1], sizes[2], sizes[3]],
            [strides[0], strides[1], strides[2], strides[3]],
        )
    }
}

fn conv_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(10)?;
    conv_with(a, 0, 9, None)
}

/// Convolution + batch norm (+ clamp activation), fused at load (`ptero::conv_bn_act.out`):
/// `x, w, b, stride, padding, dilation, transposed, output_padding, groups, bn_weight,
/// bn_bias, running_mean, running_var, eps, act, lo, hi, *, out`. The prepare step folds
/// the normalization into the weights and bias.
fn conv_bn_act_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(18)?;
    let Some(f) = a.state::<FusedConv>() else {
        return Err(Error::invalid(
            "conv_bn_act: the normalization was not folded at load (non-constant parameters)",
        ));
    };
    conv_with(a, 0, 17, Some(f))
}

/// A pointwise `conv_bn_act` whose result only feeds a depthwise one, fused at load
/// (`ptero::conv_dw.out`): the first's 17 arguments (`x, w, …, hi`), the second's 17
/// (its input is the intermediate, which the fast path never writes), `*, out`.
///
/// The fast path expands a band of rows at a time into scratch (see
/// [`ptero_gemm::pointwise_depthwise`]); any case it declines runs the two halves in turn,
/// through the intermediate's planned memory.
fn conv_dw_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(35)?;
    let Some(pair) = a.state::<FusedPair>() else {
        return Err(Error::invalid(
            "conv_dw: the normalizations were not folded at load (non-constant parameters)",
        ));
    };
    let g1 = conv_geo(a, 0, 17)?;
    let g2 = conv_geo(a, 17, 34)?;
    if g1.dtype == ScalarType::Float && !g1.transposed && !g2.transposed {
        if let Some(packed) = &pair.first.packed {
            let (c1, c2) = (g1.conv2d(), g2.conv2d());
            let macs = sat_product(&[c1.n, c1.cout, c1.oh, c1.ow, c1.cin])
                .saturating_add(sat_product(&[c2.n, c2.cout, c2.oh, c2.ow, c2.kh, c2.kw]));
            let xt = a.tensor(0)?;
            let mut ot = a.out(34)?;
            let done = ptero_gemm::pointwise_depthwise(
                a.parallel(),
                a.arena(),
                &c1,
                ptero_gemm::PointwiseStage {
                    w: packed,
                    bias: Some(&pair.first.bias),
                    act: pair.first.act,
                },
                ptero_gemm::DepthwiseStage {
                    geo: c2,
                    w: Image {
                        data: &pair.second.weights,
                        strides: pair.second.wst,
                    },
                    packed: pair.second.packed.as_ref(),
                    bias: Some(&pair.second.bias),
                    act: pair.second.act,
                },
                Image {
                    data: xt.data()?,
                    strides: g1.ist,
                },
                ImageMut {
                    data: ot.data()?,
                    strides: g2.ost,
                },
            )
            .map_err(gemm_err)?;
            if done {
                Meter::charging(a).add(macs as u64)?;
                return Ok(());
            }
        }
    }
    a.release_views();
    conv_run(a, 0, 17, Some(&pair.first), &g1)?;
    a.release_views();
    conv_run(a, 17, 34, Some(&pair.second), &g2)
}

/// Both halves of `ptero::conv_dw.out`, folded.
struct FusedPair {
    first: FusedConv,
    second: FusedConv,
}

fn prepare_conv_dw(a: &KernelArgs<'_>) -> Result<Prepared> {
    let state = match (fold(a, 0, false, true)?, fold(a, 17, false, false)?) {
        (Some(first), Some(second)) => {
            Some(alloc::boxed::Box::new(FusedPair { first, second }) as _)
        }
        _ => None,
    };
    Ok(Prepared {
        state,
        scratch_floats: ptero_gemm::conv_scratch_floats().max(ptero_gemm::fused_scratch_floats()),
    })
}

/// Folded weights, bias and activation of a fused convolution.
struct FusedConv {
    packed: Option<PackedConv>,
    /// `[cout, cin / groups, kh, kw]`, contiguous (read directly by depthwise convolutions);
    /// empty when `packed` serves every call (see `fold`).
    weights: alloc::vec::Vec<f32>,
    wst: [usize; 4],
    bias: alloc::vec::Vec<f32>,
    act: ptero_gemm::Activation,
}

fn prepare_conv_bn_act(a: &KernelArgs<'_>) -> Result<Prepared> {
    Ok(Prepared {
        state: fold(a, 0, true, true)?.map(|f| alloc::boxed::Box::new(f) as _),
        scratch_floats: ptero_gemm::conv_scratch_floats(),
    })
}

/// Folds the normalization of the `conv_bn_act` whose arguments start at `o` into its
/// weights and bias; `None` when its parameters are not constant. With `planar` (a
/// convolution alone, not half of a pair), weights that pay for it are packed for
/// Winograd or for pixels as rows ([`planar_geo`]); with `drop` (not the depthwise half of a pair, which reads the folded copy),
/// a folded copy no call reads is not kept.
fn fold(a: &KernelArgs<'_>, o: usize, planar: bool, drop: bool) -> Result<Option<FusedConv>> {
    let p = None;
    // The normalization's four parameters are all constant, or all None (a convolution
    // fused with its activation alone).
    let norm = (1..=4).all(|i| is_const_f32(a, o + 8 + i));
    let no_norm = (1..=4).all(|i| matches!(a.value(o + 8 + i), Ok(Value::None)));
    if a.bool(o + 6)? || !(norm || no_norm) || !is_const_f32(a, o + 1) {
        return Ok(p);
    }
    let w = a.tensor(o + 1)?;
    if w.meta.dim() != 3 && w.meta.dim() != 4 {
        return Ok(p);
    }
    let (ws, wst) = as4(w.meta.sizes(), w.meta.strides());
    let (cout, cin_g, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let wd: &[f32] = w.data()?;
    let vec_of = |i: usize| -> Result<&[f32]> {
        let t = a.tensor(o + i)?;
        if t.meta.numel() != cout || t.meta.dim() != 1 {
            return Err(Error::shape(alloc::format!(
                "conv_bn_act: argument {i} must be [{cout}], found {:?}",
                t.meta.sizes()
            )));
        }
        t.data()
    };
    let stats = if norm {
        Some((
            vec_of(9)?,
            vec_of(10)?,
            vec_of(11)?,
            vec_of(12)?,
            a.double(o + 13)?,
        ))
    } else {
        None
    };
    let bias: Option<&[f32]> = match a.opt_tensor(o + 2)? {
        Some(b) if b.meta.numel() == cout && b.meta.dim() == 1 => Some(b.data()?),
        Some(_) => return Ok(p),
        None => None,
    };
    let Some((per, total)) = cin_g
        .checked_mul(kh)
        .and_then(|x| x.checked_mul(kw))
        .and_then(|per| Some((per, per.checked_mul(cout)?)))
    else {
        return Ok(p);
    };
    let mut weights = a.scratch::<f32>(total)?;
    let mut fb = a.scratch::<f32>(cout)?;
    for oc in 0..cout {
        let b0 = bias.map_or(0.0, |b| b[oc] as f64);
        let scale = match stats {
            // PyTorch's eval batch norm: (y - mean) / sqrt(var + eps) * gamma + beta.
            Some((gamma, beta, mean, var, eps)) => {
                let scale = gamma[oc] as f64 / libm::sqrt(var[oc] as f64 + eps);
                fb[oc] = ((b0 - mean[oc] as f64) * scale + beta[oc] as f64) as f32;
                scale
            }
            None => {
                fb[oc] = b0 as f32;
                1.0
            }
        };
        for ic in 0..cin_g {
            for y in 0..kh {
                for x in 0..kw {
                    let src = oc * wst[0] + ic * wst[1] + y * wst[2] + x * wst[3];
                    let v = *wd
                        .get(src)
                        .ok_or_else(|| Error::OutOfBounds("conv weight".into()))?;
                    weights[oc * per + (ic * kh + y) * kw + x] = (v as f64 * scale) as f32;
                }
            }
        }
    }
    let act = match a.int(o + 14)? {
        0 => ptero_gemm::Activation::None,
        1 => ptero_gemm::Activation::Clamp(a.double(o + 15)? as f32, a.double(o + 16)? as f32),
        2 => ptero_gemm::Activation::Silu,
        k => {
            return Err(Error::invalid(alloc::format!(
                "conv_bn_act: unknown activation {k}"
            )))
        }
    };
    let groups = a.int(o + 8)?;
    let wst_c = [per, kh * kw, kw, 1];
    let cin = usize::try_from(groups)
        .ok()
        .and_then(|g| Some((g, cin_g.checked_mul(g)?)));
    // Channels-last input and output (the layout pass's choice) take the weights packed
    // for pixels as rows, depthwise filters included.
    let cl = cl_packing(a, o, o + 17);
    let packed = match cin {
        Some((g, cin)) if g > 0 && (cl || !(g == cin && cout == g && g > 1)) => {
            let geo = Conv2d::for_weights(cin, cout, g, kh, kw);
            let wi = Image {
                data: &weights,
                strides: wst_c,
            };
            let wg = if planar && !cl {
                planar_geo(a, o, o + 17)
            } else {
                None
            };
            Some(
                if cl {
                    PackedConv::channels_last(&geo, wi)
                } else if let Some(wg) = wg {
                    pack_planar(&wg, wi)
                } else {
                    PackedConv::new(&geo, wi)
                }
                .map_err(gemm_err)?,
            )
        }
        _ => None,
    };
    // A convolution alone whose weights are packed reads the folded copy only as a
    // matrix-vector product over 1 x 1 images (`matvec`, which falls back to the packed
    // weights without it): not kept unless the planned image is 1 x 1.
    let planned_unit = a.meta(o).is_ok_and(|m| {
        m.dim() >= 3
            && m.sizes()[2..]
                .iter()
                .fold(1usize, |p, &d| p.saturating_mul(d))
                <= 1
    });
    let weights = if drop && packed.is_some() && !planned_unit {
        alloc::vec::Vec::new()
    } else {
        weights
    };
    Ok(Some(FusedConv {
        packed,
        weights,
        wst: wst_c,
        bias: fb,
        act,
    }))
}

/// The convolution writing argument `out`, with folded parameters when fused.
fn conv_with(
    a: &mut KernelArgs<'_>,
    o: usize,
    out: usize,
    fused: Option<&FusedConv>,
) -> Result<()> {
    let g = conv_geo(a, o, out)?;
    conv_run(a, o, out, fused, &g)
}

/// Validates the convolution whose arguments start at `o`, resizes `out`, and returns
/// its geometry.
fn conv_geo(a: &mut KernelArgs<'_>, o: usize, out: usize) -> Result<Geo> {
    a.expect_len(o + 10)?;
    let x = a.meta(o)?;
    let w = a.meta(o + 1)?;
    let rank = x.dim();
    if rank != 3 && rank != 4 {
        return Err(Error::shape(alloc::format!(
            "convolution: expected a 3-d or 4-d input, found shape {:?}",
            x.sizes()
        )));
    }
    if w.dim() != rank {
        return Err(Error::shape(alloc::format!(
            "convolution: weight {:?} must have the input's rank {rank}",
            w.sizes()
        )));
    }
    let dtype = x.dtype;
    if !dtype.is_float() {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a floating dtype".into(),
            found: dtype,
        });
    }
    for i in [o + 1, out] {
        let t = a.meta(i)?.dtype;
        if t != dtype {
            return Err(Error::Dtype {
                arg: i,
                expected: alloc::string::ToString::to_string(dtype.name()),
                found: t,
            });
        }
    }
    let nsp = rank - 2;
    let s = spatial(a, o + 3, nsp, "stride")?;
    let p = spatial(a, o + 4, nsp, "padding")?;
    let d = spatial(a, o + 5, nsp, "dilation")?;
    let transposed = a.bool(o + 6)?;
    let op = if transposed {
        spatial(a, o + 7, nsp, "output_padding")?
    } else {
        [0, 0]
    };
    let groups = a.int(o + 8)?;
    if groups <= 0 {
        return Err(Error::invalid(alloc::format!(
            "convolution: groups must be positive, found {groups}"
        )));
    }
    let groups = groups as usize;
    // A 1-d convolution has a unit height: stride/dilation 1, no padding.
    let (s, p, d, op) = if nsp == 1 {
        ([1, s[1]], [0, p[1]], [1, d[1]], [0, op[1]])
    } else {
        (s, p, d, op)
    };
    for q in 0..2 {
        if s[q] <= 0 || d[q] <= 0 || p[q] < 0 || op[q] < 0 {
            return Err(Error::invalid(alloc::format!(
                "convolution: stride {s:?} and dilation {d:?} must be positive, padding {p:?} and output_padding {op:?} non-negative"
            )));
        }
        if transposed && op[q] >= s[q].max(d[q]) {
            return Err(Error::invalid(alloc::format!(
                "convolution: output_padding {op:?} must be smaller than stride or dilation"
            )));
        }
    }
    let (xs, xst) = as4(x.sizes(), x.strides());
    let (ws, wst) = as4(w.sizes(), w.strides());
    let (n, cin, ih, iw) = (xs[0], xs[1], xs[2], xs[3]);
    let (kh, kw) = (ws[2], ws[3]);
    let cout = if transposed {
        let cout = ws[1].checked_mul(groups);
        match cout {
            Some(c) if ws[0] == cin && cin % groups == 0 => c,
            _ => {
                return Err(Error::shape(alloc::format!(
                    "transposed convolution: weight {:?} must start with the input channels {cin} (divisible by groups {groups})",
                    w.sizes()
                )))
            }
        }
    } else {
        if cin % groups != 0 || ws[0] % groups != 0 || ws[1].checked_mul(groups) != Some(cin) {
            return Err(Error::shape(alloc::format!(
                "convolution: weight {:?} does not fit input channels {cin} with {groups} groups",
                w.sizes()
            )));
        }
        ws[0]
    };
    let u = |v: i64| v as usize;
    let (s, p, d, op) = (
        [u(s[0]), u(s[1])],
        [u(p[0]), u(p[1])],
        [u(d[0]), u(d[1])],
        [u(op[0]), u(op[1])],
    );
    let out_len = |q: usize, inp: usize, k: usize| -> Result<usize> {
        conv_len("convolution", transposed, inp, k, s[q], p[q], d[q], op[q])
    };
    let oh = out_len(0, ih, kh)?;
    let ow = out_len(1, iw, kw)?;
    let bias = a.opt_meta(o + 2)?;
    let mut bst = 0;
    if let Some(b) = bias {
        if b.numel() != cout || b.dim() != 1 {
            return Err(Error::shape(alloc::format!(
                "convolution: bias {:?} must be [{cout}]",
                b.sizes()
            )));
        }
        if b.dtype != dtype {
            return Err(Error::Dtype {
                arg: o + 2,
                expected: alloc::string::ToString::to_string(dtype.name()),
                found: b.dtype,
            });
        }
        bst = b.strides()[0];
    }
    if nsp == 1 {
        a.resize(out, &[n, cout, ow])?;
    } else {
        a.resize(out, &[n, cout, oh, ow])?;
    }
    let om = a.meta(out)?;
    let (_, ost) = as4(om.sizes(), om.strides());
    let g = Geo {
        n,
        cin,
        cout,
        groups,
        ih,
        iw,
        oh,
        ow,
        kh,
        kw,
        s,
        p,
        d,
        ist: xst,
        wst,
        ost,
        bst,
        transposed,
        dtype,
    };
    Ok(g)
}

/// Runs a convolution validated by [`conv_geo`].
fn conv_run(
    a: &mut KernelArgs<'_>,
    o: usize,
    out: usize,
    fused: Option<&FusedConv>,
    g: &Geo,
) -> Result<()> {
    let dtype = g.dtype;
    let xt = a.tensor(o)?;
    let wt = a.tensor(o + 1)?;
    let bt = a.opt_tensor(o + 2)?;
    let mut ot = a.out(out)?;
    if ot.numel() == 0 {
        return Ok(());
    }
    // Multiply-adds are charged as done, and the caller's deadline is polled between them.
    let mut meter = Meter::charging(a);
    if dtype == ScalarType::Float {
        let b = match (&bt, fused) {
            (_, Some(f)) => Some(&f.bias[..]),
            (Some(t), None) => Some(t.data::<f32>()?),
            (None, None) => None,
        };
        // The shared GEMM (im2col or direct pointwise, depthwise kernel) for forward
        // convolutions with a contiguous bias; the direct path for the rest.
        if !g.transposed && (b.is_none() || g.bst == 1 || g.cout <= 1 || fused.is_some()) {
            let geo = g.conv2d();
            let macs = sat_product(&[g.n, g.cout, g.oh, g.ow, g.cin / g.groups.max(1), g.kh, g.kw]);
            meter.add(macs as u64)?;
            let wd: &[f32] = wt.data()?;
            if let Some(r) = matvec(a.parallel(), g, fused, wd, xt.data()?, b, ot.data()?) {
                return r;
            }
            let weights = match (fused, a.state::<PackedConv>()) {
                (
                    Some(FusedConv {
                        packed: Some(p), ..
                    }),
                    _,
                ) => ConvWeights::Packed(p),
                (Some(f), _) => ConvWeights::Image(Image {
                    data: &f.weights,
                    strides: f.wst,
                }),
                (None, Some(p)) => ConvWeights::Packed(p),
                (None, None) => ConvWeights::Image(Image {
                    data: wd,
                    strides: g.wst,
                }),
            };
            return conv2d(
                a.parallel(),
                a.arena(),
                &geo,
                Image {
                    data: xt.data()?,
                    strides: g.ist,
                },
                weights,
                b,
                ImageMut {
                    data: ot.data()?,
                    strides: g.ost,
                },
                fused.map_or(ptero_gemm::Activation::None, |f| f.act),
            )
            .map_err(gemm_err);
        }
        if fused.is_some() {
            return Err(Error::invalid(
                "conv_bn_act: transposed convolutions are not fused",
            ));
        }
        conv_f32(g, xt.data()?, wt.data()?, b, ot.data()?, &mut meter)
    } else {
        conv_generic(
            g,
            dtype,
            xt.bytes,
            wt.bytes,
            bt.map(|t| t.bytes),
            &mut *ot.bytes,
            &mut meter,
        )
    }
}

/// A 1 × 1 convolution of 1 × 1 images (a squeeze-excitation's) is a matrix-vector
/// product per image: the weights are streamed once, where the convolution GEMM would
/// fill a whole register tile to compute one column. `None` for any other geometry.
fn matvec(
    par: &dyn ptero_core::Parallel,
    g: &Geo,
    fused: Option<&FusedConv>,
    wd: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Option<Result<()>> {
    let unit = g.kh == 1 && g.kw == 1 && g.ih == 1 && g.iw == 1 && g.oh == 1 && g.ow == 1;
    if !unit || g.groups != 1 || g.transposed || g.p != [0, 0] {
        return None;
    }
    let (w, wst) = match fused {
        // Folded weights dropped at load: the packed ones serve (`fold`).
        Some(f) if f.weights.is_empty() => return None,
        Some(f) => (&f.weights[..], f.wst),
        None => (wd, g.wst),
    };
    let mut run = || -> core::result::Result<(), ptero_gemm::GemmError> {
        let a = ptero_gemm::MatRef::new(w, g.cout, g.cin, wst[0], wst[1])?;
        let b = ptero_gemm::MatRef::new(x, g.cin, g.n, g.ist[1], g.ist[0])?;
        let c = ptero_gemm::MatMut::new(out, g.cout, g.n, g.ost[1], g.ost[0])?;
        let epi = ptero_gemm::Epilogue {
            alpha: 1.0,
            beta: if bias.is_some() { 1.0 } else { 0.0 },
            bias: bias.map_or(ptero_gemm::Bias::None, ptero_gemm::Bias::PerRow),
            act: fused.map_or(ptero_gemm::Activation::None, |f| f.act),
        };
        ptero_gemm::gemm(par, None, Lhs::Mat(a), Rhs::Mat(b), c, &epi)
    };
    Some(run().map_err(gemm_err))
}

/// Output indices `o` in `0..n_out` with `o * s + off` inside `0..n_in`.
fn valid(n_out: usize, s: usize, off: isize, n_in: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if off < 0 { (-off + s - 1) / s } else { 0 };
    let hi = if (n_in as isize) - off <= 0 {
        0
    } else {
        ((n_in as isize - 1 - off) / s + 1).min(n_out as isize)
    };
    (lo as usize, (hi.max(lo)) as usize)
}

/// `dst[dbase + i*dstep] += w * src[sbase + i*sstep]` for `i < len`.
#[inline]
#[allow(clippy::too_many_arguments)]
fn axpy(
    dst: &mut [f32],
    dbase: usize,
    dstep: usize,
    src: &[f32],
    sbase: usize,
    sstep: usize,
    len: usize,
    w: f32,
) {
    if len == 0 {
        return;
    }
    if dstep == 1 && sstep == 1 {
        if let (Some(dd), Some(ss)) = (dst.get_mut(dbase..dbase + len), src.get(sbase..sbase + len))
        {
            for (o, x) in dd.iter_mut().zip(ss) {
                *o += w * x;
            }
        }
        return;
    }
    for i in 0..len {
        let x = src.get(sbase + i * sstep).copied().unwrap_or(0.0);
        if let Some(o) = dst.get_mut(dbase + i * dstep) {
            *o += w * x;
        }
    }
}

fn conv_f32(
    g: &Geo,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    o: &mut [f32],
    meter: &mut Meter<'_, '_>,
) -> Result<()> {
    let [on, oc_s, oh_s, ow_s] = g.ost;
    let [xn, xc, xh, xw] = g.ist;
    let [w0, w1, w2, w3] = g.wst;
    for n in 0..g.n {
        for oc in 0..g.cout {
            let bv = b.and_then(|b| b.get(oc * g.bst).copied()).unwrap_or(0.0);
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    if let Some(v) = o.get_mut(n * on + oc * oc_s + oy * oh_s + ox * ow_s) {
                        *v = bv;
                    }
                }
            }
        }
    }
    let cin_g = g.cin / g.groups;
    let cout_g = g.cout / g.groups;
    let (sy, sx) = (g.s[0], g.s[1]);
    for n in 0..g.n {
        if !g.transposed {
            for oc in 0..g.cout {
                let grp = oc / cout_g.max(1);
                for icl in 0..cin_g {
                    let ic = grp * cin_g + icl;
                    for ky in 0..g.kh {
                        let offy = (ky * g.d[0]) as isize - g.p[0] as isize;
                        let (oy0, oy1) = valid(g.oh, sy, offy, g.ih);
                        for kx in 0..g.kw {
                            let wv = w
                                .get(oc * w0 + icl * w1 + ky * w2 + kx * w3)
                                .copied()
                                .unwrap_or(0.0);
                            let offx = (kx * g.d[1]) as isize - g.p[1] as isize;
                            let (ox0, ox1) = valid(g.ow, sx, offx, g.iw);
                            // The tap itself counts: a huge kernel whose taps all fall in
                            // the padding is still work.
                            let rows = oy1.saturating_sub(oy0);
                            meter.add((1 + rows * ox1.saturating_sub(ox0)) as u64)?;
                            if ox1 <= ox0 {
                                continue;
                            }
                            let ix0 = (ox0 as isize * sx as isize + offx) as usize;
                            for oy in oy0..oy1 {
                                let iy = (oy as isize * sy as isize + offy) as usize;
                                // Saturating: a stride past the input leaves one tap per
                                // row, whose step is unused.
                                axpy(
                                    o,
                                    n * on + oc * oc_s + oy * oh_s + ox0 * ow_s,
                                    ow_s,
                                    x,
                                    n * xn + ic * xc + iy * xh + ix0 * xw,
                                    xw.saturating_mul(sx),
                                    ox1 - ox0,
                                    wv,
                                );
                            }
                        }
                    }
                }
            }
        } else {
            // Each input pixel scatters into the outputs its taps reach.
            for ic in 0..g.cin {
                let grp = ic / cin_g.max(1);
                for ocl in 0..cout_g {
                    let oc = grp * cout_g + ocl;
                    for ky in 0..g.kh {
                        let offy = (ky * g.d[0]) as isize - g.p[0] as isize;
                        let (iy0, iy1) = valid(g.ih, sy, offy, g.oh);
                        for kx in 0..g.kw {
                            let wv = w
                                .get(ic * w0 + ocl * w1 + ky * w2 + kx * w3)
                                .copied()
                                .unwrap_or(0.0);
                            let offx = (kx * g.d[1]) as isize - g.p[1] as isize;
                            let (ix0, ix1) = valid(g.iw, sx, offx, g.ow);
                            let rows = iy1.saturating_sub(iy0);
                            meter.add((1 + rows * ix1.saturating_sub(ix0)) as u64)?;
                            if ix1 <= ix0 {
                                continue;
                            }
                            let ox0 = (ix0 as isize * sx as isize + offx) as usize;
                            for iy in iy0..iy1 {
                                let oy = (iy as isize * sy as isize + offy) as usize;
                                axpy(
                                    o,
                                    n * on + oc * oc_s + oy * oh_s + ox0 * ow_s,
                                    ow_s.saturating_mul(sx),
                                    x,
                                    n * xn + ic * xc + iy * xh + ix0 * xw,
                                    xw,
                                    ix1 - ix0,
                                    wv,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Gathers every output element in f64 (double, half, bfloat16).
fn conv_generic(
    g: &Geo,
    dtype: ScalarType,
    x: &[u8],
    w: &[u8],
    b: Option<&[u8]>,
    o: &mut [u8],
    meter: &mut Meter<'_, '_>,
) -> Result<()> {
    let [on, oc_s, oh_s, ow_s] = g.ost;
    let [xn, xc, xh, xw] = g.ist;
    let [w0, w1, w2, w3] = g.wst;
    let cin_g = g.cin / g.groups;
    let cout_g = g.cout / g.groups;
    // Input coordinate feeding output `o` through tap `k`, if any.
    let src = |o: usize, k: usize, q: usize, n_in: usize| -> Option<usize> {
        let (s, p, d) = (g.s[q] as isize, g.p[q] as isize, g.d[q] as isize);
        let (o, k) = (o as isize, k as isize);
        let i = if g.transposed {
            let t = o + p - k * d;
            if t < 0 || t % s != 0 {
                return None;
            }
            t / s
        } else {
            o * s - p + k * d
        };
        (i >= 0 && (i as usize) < n_in).then_some(i as usize)
    };
    for n in 0..g.n {
        for oc in 0..g.cout {
            let grp = oc / cout_g.max(1);
            let ocl = oc - grp * cout_g;
            let bv = b.map_or(0.0, |b| load_f64(b, dtype, oc * g.bst));
            for oy in 0..g.oh {
                meter.add(sat_product(&[g.ow, cin_g, g.kh, g.kw]) as u64)?;
                for ox in 0..g.ow {
                    let mut acc = bv;
                    for icl in 0..cin_g {
                        let ic = grp * cin_g + icl;
                        let wbase = if g.transposed {
                            ic * w0 + ocl * w1
                        } else {
                            oc * w0 + icl * w1
                        };
                        for ky in 0..g.kh {
                            let Some(iy) = src(oy, ky, 0, g.ih) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ix) = src(ox, kx, 1, g.iw) else {
                                    continue;
                                };
                                acc += load_f64(x, dtype, n * xn + ic * xc + iy * xh + ix * xw)
                                    * load_f64(w, dtype, wbase + ky * w2 + kx * w3);
                            }
                        }
                    }
                    store_f64(o, dtype, n * on + oc * oc_s + oy * oh_s + ox * ow_s, acc);
                }
            }
        }
    }
    Ok(())
}

/// `convolution_backward.out(grad_output, input, weight, bias_sizes: int[]?, stride,
/// padding, dilation, transposed, output_padding, groups, output_mask: bool[3], *, out0,
/// out1, out2)`: `(grad_input, grad_weight, grad_bias)`, each computed only when its
/// mask entry is set (other outs are left untouched, as in ExecuTorch). Non-transposed
/// 1-d and 2-d convolutions; gradients accumulate in f64.
fn conv_backward_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(14)?;
    let (gm, xm, wm) = (*a.meta(0)?, *a.meta(1)?, *a.meta(2)?);
    let rank = xm.dim();
    if (rank != 3 && rank != 4) || wm.dim() != rank || gm.dim() != rank {
        return Err(Error::shape(alloc::format!(
            "convolution_backward: expected 3-d or 4-d grad_output, input and weight of one rank, found {:?}, {:?}, {:?}",
            gm.sizes(),
            xm.sizes(),
            wm.sizes()
        )));
    }
    if a.bool(7)? {
        return Err(Error::NotImplemented(
            "convolution_backward of a transposed convolution".into(),
        ));
    }
    let dtype = xm.dtype;
    if !dtype.is_float() {
        return Err(Error::Dtype {
            arg: 1,
            expected: "a floating dtype".into(),
            found: dtype,
        });
    }
    let mask = a.bool_list(10)?;
    if mask.len() != 3 {
        return Err(Error::invalid(alloc::format!(
            "convolution_backward: output_mask must have 3 entries, found {}",
            mask.len()
        )));
    }
    let mask = [mask[0], mask[1], mask[2]];
    let mut check = alloc::vec![0usize, 2];
    for (k, &m) in mask.iter().enumerate() {
        if m {
            check.push(11 + k);
        }
    }
    for i in check {
        let t = a.meta(i)?.dtype;
        if t != dtype {
            return Err(Error::Dtype {
                arg: i,
                expected: dtype.name().into(),
                found: t,
            });
        }
    }
    let nsp = rank - 2;
    let s = spatial(a, 4, nsp, "stride")?;
    let p = spatial(a, 5, nsp, "padding")?;
    let d = spatial(a, 6, nsp, "dilation")?;
    let groups = a.int(9)?;
    let (s, p, d) = if nsp == 1 {
        ([1, s[1]], [0, p[1]], [1, d[1]])
    } else {
        (s, p, d)
    };
    if groups <= 0 || (0..2).any(|q| s[q] <= 0 || d[q] <= 0 || p[q] < 0) {
        return Err(Error::invalid(alloc::format!(
            "convolution_backward: groups {groups}, stride {s:?} and dilation {d:?} must be positive, padding {p:?} non-negative"
        )));
    }
    let groups = groups as usize;
    let (xs, xst) = as4(xm.sizes(), xm.strides());
    let (ws, wst) = as4(wm.sizes(), wm.strides());
    let (gs, gst) = as4(gm.sizes(), gm.strides());
    let (n, cin, ih, iw) = (xs[0], xs[1], xs[2], xs[3]);
    let (cout, kh, kw) = (ws[0], ws[2], ws[3]);
    if cin % groups != 0 || cout % groups != 0 || ws[1].checked_mul(groups) != Some(cin) {
        return Err(Error::shape(alloc::format!(
            "convolution_backward: weight {:?} does not fit input channels {cin} with {groups} groups",
            wm.sizes()
        )));
    }
    let u = |v: i64| v as usize;
    let (s, p, d) = ([u(s[0]), u(s[1])], [u(p[0]), u(p[1])], [u(d[0]), u(d[1])]);
    let out_len = |q: usize, inp: usize, k: usize| {
        conv_len("convolution_backward", false, inp, k, s[q], p[q], d[q], 0)
    };
    let (oh, ow) = (out_len(0, ih, kh)?, out_len(1, iw, kw)?);
    if oh != gs[2] || ow != gs[3] || gs[0] != n || gs[1] != cout {
        return Err(Error::shape(alloc::format!(
            "convolution_backward: grad_output {:?} does not match the convolution of {:?} by {:?}",
            gm.sizes(),
            xm.sizes(),
            wm.sizes()
        )));
    }
    let (oh, ow) = (gs[2], gs[3]);
    if mask[0] {
        a.resize(11, xm.sizes())?;
    }
    if mask[1] {
        a.resize(12, wm.sizes())?;
    }
    if mask[2] {
        if let Some(bs) = a.opt_int_list(3)? {
            let bs = bs.to_dims()?;
            if bs.numel() != Some(cout) {
                return Err(Error::shape(alloc::format!(
                    "convolution_backward: bias_sizes {bs} must hold {cout} elements"
                )));
            }
            a.resize(13, &bs)?;
        } else if a.meta(13)?.numel() != cout {
            return Err(Error::shape(alloc::format!(
                "convolution_backward: grad_bias must hold {cout} elements"
            )));
        }
    }
    // Scratch: f64 accumulators for the requested gradients (input- and weight-sized,
    // row-major), allocated fallibly within the memory limit.
    let mut gx = a.scratch::<f64>(if mask[0] { xm.numel() } else { 0 })?;
    let mut gw = a.scratch::<f64>(if mask[1] { wm.numel() } else { 0 })?;
    let mut gb = a.scratch::<f64>(if mask[2] { cout } else { 0 })?;
    // Nothing flows back from an empty grad_output (its batch or channel dims may still
    // be huge): the gradients stay zero.
    if gm.numel() > 0 {
        let mut meter = Meter::charging(a);
        let gt = a.tensor(0)?;
        let xt = a.tensor(1)?;
        let wt = a.tensor(2)?;
        let (cin_g, cout_g) = (cin / groups, cout / groups);
        for ni in 0..n {
            for co in 0..cout {
                let gi = co / cout_g;
                for oy in 0..oh {
                    let taps = if mask[0] || mask[1] { cin_g } else { 0 };
                    meter.add(sat_product(&[ow, taps, kh, kw]) as u64)?;
                    for ox in 0..ow {
                        let go = load_f64(
                            gt.bytes,
                            dtype,
                            ni * gst[0] + co * gst[1] + oy * gst[2] + ox * gst[3],
                        );
                        if let Some(b) = gb.get_mut(co) {
                            *b += go;
                        }
                        if !(mask[0] || mask[1]) {
                            continue;
                        }
                        for cl in 0..cin_g {
                            let ci = gi * cin_g + cl;
                            for ky in 0..kh {
                                let iy = (oy * s[0] + ky * d[0]) as isize - p[0] as isize;
                                if iy < 0 || iy >= ih as isize {
                                    continue;
                                }
                                for kx in 0..kw {
                                    let ix = (ox * s[1] + kx * d[1]) as isize - p[1] as isize;
                                    if ix < 0 || ix >= iw as isize {
                                        continue;
                                    }
                                    let (iy, ix) = (iy as usize, ix as usize);
                                    let widx = ((co * cin_g + cl) * kh + ky) * kw + kx;
                                    if mask[0] {
                                        let wv = load_f64(
                                            wt.bytes,
                                            dtype,
                                            co * wst[0] + cl * wst[1] + ky * wst[2] + kx * wst[3],
                                        );
                                        if let Some(v) =
                                            gx.get_mut(((ni * cin + ci) * ih + iy) * iw + ix)
                                        {
                                            *v += go * wv;
                                        }
                                    }
                                    if mask[1] {
                                        let xv = load_f64(
                                            xt.bytes,
                                            dtype,
                                            ni * xst[0] + ci * xst[1] + iy * xst[2] + ix * xst[3],
                                        );
                                        if let Some(v) = gw.get_mut(widx) {
                                            *v += go * xv;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Write the row-major accumulators through each out's own strides.
    let store = |a: &KernelArgs<'_>, arg: usize, vals: &[f64]| -> Result<()> {
        let m = *a.meta(arg)?;
        let o = a.out(arg)?;
        let mut k = 0usize;
        crate::util::for_each_offset(m.sizes(), [m.strides()], |[off]| {
            if let Some(&v) = vals.get(k) {
                store_f64(o.bytes, dtype, off, v);
            }
            k += 1;
        });
        Ok(())
    };
    for (k, vals) in [(0usize, &gx), (1, &gw), (2, &gb)] {
        if mask[k] {
            store(a, 11 + k, vals)?;
        }
    }
    Ok(())
}

/// True when argument `i` is a 4-d tensor laid out channels-last (`[0, 2, 3, 1]`).
fn channels_last(a: &KernelArgs<'_>, i: usize) -> bool {
    a.meta(i)
        .is_ok_and(|m| m.dim() == 4 && m.dim_order() == [0, 2, 3, 1])
}

/// True when a convolution (input `x`, output `out`) takes weights packed for
/// channels-last images: its output is channels-last, and so is its input unless that has
/// a few channels only (a first layer reading the model's input, computed directly).
fn cl_packing(a: &KernelArgs<'_>, x: usize, out: usize) -> bool {
    let few = a.meta(x).is_ok_and(|m| m.dim() == 4 && m.sizes()[1] <= 4);
    channels_last(a, out) && (channels_last(a, x) || few)
}

/// The planned geometry of the convolution whose arguments start at `o`, when its
/// weights are best packed for Winograd or with pixels as rows (f32 channels-first
/// images, one group, sizes where it pays: [`PackedConv::winograd_pays`],
/// [`PackedConv::pixel_rows_pays`]).
fn planar_geo(a: &KernelArgs<'_>, o: usize, out: usize) -> Option<Conv2d> {
    let x = a.meta(o).ok()?;
    let w = a.meta(o + 1).ok()?;
    if x.dim() != 4 || w.dim() != 4 || x.dtype != ScalarType::Float || channels_last(a, out) {
        return None;
    }
    if a.bool(o + 6).ok()? || a.int(o + 8).ok()? != 1 {
        return None;
    }
    let s = spatial(a, o + 3, 2, "stride").ok()?;
    let p = spatial(a, o + 4, 2, "padding").ok()?;
    let d = spatial(a, o + 5, 2, "dilation").ok()?;
    let (xs, ws) = (x.sizes(), w.sizes());
    if ws[1] != xs[1] {
        return None;
    }
    let u = |v: i64| usize::try_from(v).ok().filter(|&v| v > 0);
    let (stride, dilation) = ([u(s[0])?, u(s[1])?], [u(d[0])?, u(d[1])?]);
    let pad = [usize::try_from(p[0]).ok()?, usize::try_from(p[1]).ok()?];
    // (i + 2p - d(k - 1) - 1) / s + 1, checked.
    let side = |i: usize, p: usize, k: usize, d: usize, s: usize| {
        let span = k.checked_sub(1)?.checked_mul(d)?.checked_add(1)?;
        Some(i.checked_add(p.checked_mul(2)?)?.checked_sub(span)? / s + 1)
    };
    let geo = Conv2d {
        n: xs[0],
        cin: xs[1],
        cout: ws[0],
        groups: 1,
        ih: xs[2],
        iw: xs[3],
        oh: side(xs[2], pad[0], ws[2], dilation[0], stride[0])?,
        ow: side(xs[3], pad[1], ws[3], dilation[1], stride[1])?,
        kh: ws[2],
        kw: ws[3],
        stride,
        pad,
        dilation,
    };
    (PackedConv::winograd_pays(&geo) || PackedConv::pixel_rows_pays(&geo)).then_some(geo)
}

/// Packs planar weights for `geo` as [`planar_geo`] chose them.
fn pack_planar(
    geo: &Conv2d,
    wi: Image<'_>,
) -> core::result::Result<PackedConv, ptero_gemm::GemmError> {
    if PackedConv::winograd_pays(geo) {
        PackedConv::winograd(geo, wi)
    } else {
        PackedConv::pixel_rows(geo, wi)
    }
}

/// Packs constant f32 weights of a forward convolution once, per group (depthwise ones
/// only for channels-last images: channels-first ones read their few taps directly).
fn prepare_conv(a: &KernelArgs<'_>) -> Result<Prepared> {
    let mut p = Prepared {
        state: None,
        scratch_floats: ptero_gemm::conv_scratch_floats(),
    };
    if !is_const_f32(a, 1) || a.bool(6)? {
        return Ok(p);
    }
    let w = a.meta(1)?;
    if w.dim() != 3 && w.dim() != 4 {
        return Ok(p);
    }
    let groups = a.int(8)?;
    let (ws, wst) = as4(w.sizes(), w.strides());
    let (cout, cin_g, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let Some(cin) = usize::try_from(groups)
        .ok()
        .and_then(|g| cin_g.checked_mul(g))
    else {
        return Ok(p);
    };
    let groups = groups as usize;
    let cl = cl_packing(a, 0, 9);
    // Depthwise convolutions of channels-first images read their few taps directly.
    if groups == 0 || cout % groups != 0 || (!cl && groups == cin && cout == cin && groups > 1) {
        return Ok(p);
    }
    let geo = Conv2d::for_weights(cin, cout, groups, kh, kw);
    let wt = a.tensor(1)?;
    let wi = Image {
        data: wt.data()?,
        strides: wst,
    };
    let packed = if cl {
        PackedConv::channels_last(&geo, wi)
    } else if let Some(wg) = planar_geo(a, 0, 9) {
        pack_planar(&wg, wi)
    } else {
        PackedConv::new(&geo, wi)
    }
    .map_err(gemm_err)?;
    p.state = Some(alloc::boxed::Box::new(packed));
    Ok(p)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register_prepared("aten::convolution.out", conv_out, prepare_conv);
    reg.register_prepared(
        "ptero::conv_bn_act.out",
        conv_bn_act_out,
        prepare_conv_bn_act,
    );
    reg.register_prepared("ptero::conv_dw.out", conv_dw_out, prepare_conv_dw);
    reg.register("aten::convolution_backward.out", conv_backward_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    struct Case {
        x: Vec<usize>,
        w: Vec<usize>,
        bias: bool,
        s: Vec<i64>,
        p: Vec<i64>,
        d: Vec<i64>,
        tr: bool,
        op: Vec<i64>,
        groups: usize,
        /// Weights and bias constant, so prepare packs them.
        constant: bool,
    }

    fn seq(n: usize, k: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * k + 1) % 13) as f64 * 0.25 - 1.5)
            .collect()
    }

    fn idx(sizes: &[usize], i: &[usize]) -> usize {
        i.iter().zip(sizes).fold(0, |acc, (i, s)| acc * s + i)
    }

    /// Reference on 4-d row-major data (1-d cases are passed with h = 1).
    fn reference(c: &Case, x: &[f64], w: &[f64], b: &[f64]) -> (Vec<usize>, Vec<f64>) {
        let sp = |v: &[i64], q: usize, dflt: usize| -> usize {
            if c.x.len() == 3 {
                if q == 0 {
                    dflt
                } else {
                    v[0] as usize
                }
            } else {
                v[if v.len() == 1 { 0 } else { q }] as usize
            }
        };
        let xs4: Vec<usize> = if c.x.len() == 3 {
            vec![c.x[0], c.x[1], 1, c.x[2]]
        } else {
            c.x.clone()
        };
        let ws4: Vec<usize> = if c.w.len() == 3 {
            vec![c.w[0], c.w[1], 1, c.w[2]]
        } else {
            c.w.clone()
        };
        let (n, cin, ih, iw) = (xs4[0], xs4[1], xs4[2], xs4[3]);
        let (kh, kw) = (ws4[2], ws4[3]);
        let g = c.groups;
        let cout = if c.tr { ws4[1] * g } else { ws4[0] };
        let (s, p, d, op) = (
            [sp(&c.s, 0, 1), sp(&c.s, 1, 1)],
            [sp(&c.p, 0, 0), sp(&c.p, 1, 0)],
            [sp(&c.d, 0, 1), sp(&c.d, 1, 1)],
            [sp(&c.op, 0, 0), sp(&c.op, 1, 0)],
        );
        let olen = |q: usize, i: usize, k: usize| {
            if c.tr {
                (i - 1) * s[q] - 2 * p[q] + d[q] * (k - 1) + op[q] + 1
            } else {
                (i + 2 * p[q] - d[q] * (k - 1) - 1) / s[q] + 1
            }
        };
        let (oh, ow) = (olen(0, ih, kh), olen(1, iw, kw));
        let mut out = vec![0.0; n * cout * oh * ow];
        let os = [n, cout, oh, ow];
        for nn in 0..n {
            for oc in 0..cout {
                for y in 0..oh {
                    for xx in 0..ow {
                        out[idx(&os, &[nn, oc, y, xx])] = if c.bias { b[oc] } else { 0.0 };
                    }
                }
            }
        }
        let (cin_g, cout_g) = (cin / g, cout / g);
        for nn in 0..n {
            for ic in 0..cin {
                let grp = ic / cin_g;
                for ocl in 0..cout_g {
                    let oc = grp * cout_g + ocl;
                    for iy in 0..ih {
                        for ix in 0..iw {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let xv = x[idx(&xs4, &[nn, ic, iy, ix])];
                                    if c.tr {
                                        let wv = w[idx(&ws4, &[ic, ocl, ky, kx])];
                                        let oy = (iy * s[0] + ky * d[0]) as isize - p[0] as isize;
                                        let ox = (ix * s[1] + kx * d[1]) as isize - p[1] as isize;
                                        if oy >= 0
                                            && ox >= 0
                                            && (oy as usize) < oh
                                            && (ox as usize) < ow
                                        {
                                            out[idx(&os, &[nn, oc, oy as usize, ox as usize])] +=
                                                xv * wv;
                                        }
                                    } else {
                                        let icl = ic - grp * cin_g;
                                        let wv = w[idx(&ws4, &[oc, icl, ky, kx])];
                                        // Output (oy, ox) reads input iy = oy*s - p + ky*d.
                                        let ty = iy as isize + p[0] as isize - (ky * d[0]) as isize;
                                        let tx = ix as isize + p[1] as isize - (kx * d[1]) as isize;
                                        if ty >= 0
                                            && tx >= 0
                                            && ty % s[0] as isize == 0
                                            && tx % s[1] as isize == 0
                                        {
                                            let (oy, ox) = (ty as usize / s[0], tx as usize / s[1]);
                                            if oy < oh && ox < ow {
                                                out[idx(&os, &[nn, oc, oy, ox])] += xv * wv;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let shape = if c.x.len() == 3 {
            vec![n, cout, ow]
        } else {
            vec![n, cout, oh, ow]
        };
        (shape, out)
    }

    fn run(c: &Case, dtype: ScalarType, order: Option<&[u8]>) -> (Vec<usize>, Vec<f64>) {
        let xn: usize = c.x.iter().product();
        let wn: usize = c.w.iter().product();
        let xv = seq(xn, 5);
        let wv = seq(wn, 3);
        let cout = if c.tr { c.w[1] * c.groups } else { c.w[0] };
        let bv = seq(cout, 7);
        let (shape, want) = reference(c, &xv, &wv, &bv);
        let mut xt = OwnedTensor::from_f64(dtype, &c.x, &xv);
        if let Some(o) = order {
            xt = xt.with_dim_order(o);
        }
        let arg = |t: OwnedTensor| if c.constant { Arg::Const(t) } else { Arg::T(t) };
        let out = run_op(
            "aten::convolution.out",
            vec![
                Arg::T(xt),
                arg(OwnedTensor::from_f64(dtype, &c.w, &wv)),
                if c.bias {
                    arg(OwnedTensor::from_f64(dtype, &[cout], &bv))
                } else {
                    Arg::None
                },
                Arg::Ints(c.s.clone()),
                Arg::Ints(c.p.clone()),
                Arg::Ints(c.d.clone()),
                Arg::Bool(c.tr),
                Arg::Ints(c.op.clone()),
                Arg::Int(c.groups as i64),
                Arg::Out(dtype, shape.clone()),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.tensors[0].sizes, shape);
        let tol = if matches!(dtype, Half | BFloat16) {
            0.15
        } else {
            1e-4
        };
        assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
        (shape, want)
    }

    #[allow(clippy::too_many_arguments)]
    fn case(
        x: &[usize],
        w: &[usize],
        s: &[i64],
        p: &[i64],
        d: &[i64],
        tr: bool,
        op: &[i64],
        groups: usize,
    ) -> Case {
        Case {
            x: x.to_vec(),
            w: w.to_vec(),
            bias: true,
            s: s.to_vec(),
            p: p.to_vec(),
            d: d.to_vec(),
            tr,
            op: op.to_vec(),
            groups,
            constant: false,
        }
    }

    #[test]
    fn table() {
        let cases = [
            case(
                &[1, 2, 5, 6],
                &[3, 2, 3, 3],
                &[1],
                &[1],
                &[1],
                false,
                &[0],
                1,
            ),
            case(
                &[2, 4, 7, 6],
                &[4, 2, 3, 2],
                &[2, 1],
                &[1, 0],
                &[1, 2],
                false,
                &[0, 0],
                2,
            ),
            case(
                &[1, 3, 6, 6],
                &[3, 1, 3, 3],
                &[2],
                &[1],
                &[1],
                false,
                &[0],
                3,
            ),
            case(&[2, 3, 9], &[4, 3, 3], &[2], &[2], &[2], false, &[0], 1),
            case(
                &[1, 2, 3, 4],
                &[2, 3, 3, 3],
                &[2],
                &[1],
                &[1],
                true,
                &[1],
                1,
            ),
            case(
                &[1, 4, 3, 3],
                &[4, 1, 2, 3],
                &[2, 3],
                &[0, 1],
                &[2, 1],
                true,
                &[1, 2],
                2,
            ),
            case(&[2, 2, 5], &[2, 3, 4], &[3], &[1], &[1], true, &[2], 1),
            // 1 × 1 images through a 1 × 1 kernel: a squeeze-excitation's matrix-vector
            // product (also channels-last below, where the images' strides differ).
            case(
                &[2, 37, 1, 1],
                &[5, 37, 1, 1],
                &[1],
                &[0],
                &[1],
                false,
                &[0],
                1,
            ),
            case(
                &[1, 8, 1, 1],
                &[20, 8, 1, 1],
                &[2],
                &[0],
                &[1],
                false,
                &[0],
                1,
            ),
        ];
        for c in &cases {
            run(c, Float, None);
            run(c, Double, None);
            run(c, Half, None);
            if c.x.len() == 4 {
                run(c, Float, Some(&[0, 2, 3, 1]));
                run(c, Double, Some(&[0, 2, 3, 1]));
            }
        }
        let mut nb = case(
            &[1, 2, 4, 4],
            &[2, 2, 1, 1],
            &[1],
            &[0],
            &[1],
            false,
            &[0],
            1,
        );
        nb.bias = false;
        run(&nb, Float, None);
        // Empty batch.
        run(
            &case(
                &[0, 2, 4, 4],
                &[2, 2, 3, 3],
                &[1],
                &[1],
                &[1],
                false,
                &[0],
                1,
            ),
            Float,
            None,
        );
    }

    /// Constant weights packed at prepare for Winograd (a 3×3 filter over a large image)
    /// or with pixels as rows (small images, many channels, any stride) still match the
    /// direct reference, in either input layout.
    #[test]
    fn constant_weights_packed_at_prepare() {
        let geo = |c: &Case| {
            let side = |i: usize, k: usize| (i + 2 * c.p[0] as usize - k) / c.s[0] as usize + 1;
            ptero_gemm::Conv2d {
                n: c.x[0],
                cin: c.x[1],
                cout: c.w[0],
                groups: 1,
                ih: c.x[2],
                iw: c.x[3],
                oh: side(c.x[2], c.w[2]),
                ow: side(c.x[3], c.w[3]),
                kh: c.w[2],
                kw: c.w[3],
                stride: [c.s[0] as usize; 2],
                pad: [c.p[0] as usize; 2],
                dilation: [1, 1],
            }
        };
        let mut wino = case(
            &[1, 16, 22, 21],
            &[20, 16, 3, 3],
            &[1],
            &[1],
            &[1],
            false,
            &[0],
            1,
        );
        let mut rows = case(
            &[1, 32, 7, 7],
            &[40, 32, 3, 3],
            &[1],
            &[1],
            &[1],
            false,
            &[0],
            1,
        );
        let mut strided = case(
            &[2, 16, 13, 14],
            &[48, 16, 3, 3],
            &[2],
            &[1],
            &[1],
            false,
            &[0],
            1,
        );
        for c in [&mut wino, &mut rows, &mut strided] {
            c.constant = true;
        }
        assert!(ptero_gemm::PackedConv::winograd_pays(&geo(&wino)));
        for c in [&rows, &strided] {
            assert!(ptero_gemm::PackedConv::pixel_rows_pays(&geo(c)));
        }
        for c in [&wino, &rows, &strided] {
            run(c, Float, None);
            run(c, Float, Some(&[0, 2, 3, 1]));
        }
    }

    #[test]
    fn errors() {
        let x = OwnedTensor::from_f64(Float, &[1, 2, 3, 3], &[0.0; 18]);
        let w = OwnedTensor::from_f64(Float, &[1, 2, 5, 5], &[0.0; 50]);
        let go = |w: OwnedTensor, groups: i64, dtype: ScalarType| {
            run_op(
                "aten::convolution.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::T(w),
                    Arg::None,
                    Arg::Ints(vec![1]),
                    Arg::Ints(vec![0]),
                    Arg::Ints(vec![1]),
                    Arg::Bool(false),
                    Arg::Ints(vec![0]),
                    Arg::Int(groups),
                    Arg::Out(dtype, vec![1, 1, 1, 1]),
                ],
            )
        };
        // Kernel larger than the input, bad groups, mismatched out dtype.
        assert!(go(w, 1, Float).is_err());
        let w3 = OwnedTensor::from_f64(Float, &[1, 2, 3, 3], &[0.0; 18]);
        assert!(go(w3.clone(), 0, Float).is_err());
        assert!(go(w3.clone(), 2, Float).is_err());
        assert!(go(w3.clone(), 1, Double).is_err());
        assert!(go(w3, 1, Float).is_ok());
    }

    /// Hostile geometry: sizes, paddings, strides, dilations and groups whose products
    /// overflowed (panicking in debug builds, or forming wrapped offsets) are errors.
    #[test]
    fn geometry_of_extreme_sizes_is_an_error_not_an_overflow() {
        // Products of two sizes passed i128::MAX ("attempt to multiply with overflow",
        // found by the fuzzer on a damaged fixture).
        let m = usize::MAX;
        for (tr, inp, k, s, p, d, op) in [
            (false, m, 1, m, 0, 1, 0),
            (false, m, m, 1, m / 2, m, 0),
            (true, m, m, m, 0, m, m),
            (true, m, 1, m, 0, 1, 0),
            (false, 1 << 40, 3, 1 << 63, 1 << 62, 1 << 63, 0),
        ] {
            assert!(super::conv_len("conv", tr, inp, k, s, p, d, op).is_err());
        }
    }

    #[test]
    fn hostile_geometry_is_an_error() {
        let z = |s: &[usize]| Arg::T(OwnedTensor::zeros(Float, s));
        let conv = |x: &[usize], w: &[usize], s: i64, p: i64, d: i64, tr: bool, g: i64| {
            run_op(
                "aten::convolution.out",
                vec![
                    z(x),
                    z(w),
                    Arg::None,
                    Arg::Ints(vec![s]),
                    Arg::Ints(vec![p]),
                    Arg::Ints(vec![d]),
                    Arg::Bool(tr),
                    Arg::Ints(vec![0]),
                    Arg::Int(g),
                    Arg::Out(Float, vec![1, 1, 1, 1]),
                ],
            )
        };
        let max = i64::MAX;
        let cases: Vec<(&[usize], &[usize], i64, i64, i64, bool, i64)> = vec![
            // input + 2 * padding
            (&[1, 1, 3, 3], &[1, 1, 1, 1], 1, max, 1, false, 1),
            // dilation * (kernel - 1)
            (&[1, 1, 3, 3], &[1, 1, 1, 4], 1, 0, max, false, 1),
            // (input - 1) * stride, transposed
            (&[1, 1, 3, 3], &[1, 1, 1, 1], max, 0, 1, true, 1),
            // output index * stride past isize (3 outputs at stride 2^62)
            (&[1, 1, 3, 3], &[1, 1, 3, 3], 1 << 62, 1 << 62, 1, false, 1),
            // weight channels * groups
            (&[1, 0, 3, 3], &[0, 2, 1, 1], 1, 0, 1, false, max),
            (&[1, 0, 3, 3], &[0, 2, 1, 1], 1, 0, 1, true, max),
        ];
        for (i, &(x, w, s, p, d, tr, g)) in cases.iter().enumerate() {
            assert!(conv(x, w, s, p, d, tr, g).is_err(), "case {i}");
        }
        // A large but representable stride still works: one output per row.
        let out = run_op(
            "aten::convolution.out",
            vec![
                Arg::T(OwnedTensor::from_f64(Float, &[1, 1, 1, 3], &[1., 2., 3.])),
                Arg::T(OwnedTensor::from_f64(Float, &[1, 1, 1, 2], &[1., 10.])),
                Arg::None,
                Arg::Ints(vec![1, 1 << 40]),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![1]),
                Arg::Bool(false),
                Arg::Ints(vec![0]),
                Arg::Int(1),
                Arg::Out(Float, vec![1, 1, 1, 1]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [21.]);
    }

    /// An empty grad_output with a huge batch: nothing to accumulate, so no loop over the
    /// batch (it ran for 2^62 iterations before).
    #[test]
    fn backward_of_empty_grad_output_is_immediate() {
        let big = 1usize << 62;
        let out = run_op(
            "aten::convolution_backward.out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[big, 0, 3, 3])),
                Arg::T(OwnedTensor::zeros(Float, &[big, 0, 3, 3])),
                Arg::T(OwnedTensor::zeros(Float, &[0, 0, 1, 1])),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![1]),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![1]),
                Arg::Bool(false),
                Arg::Ints(vec![0]),
                Arg::Int(1),
                Arg::Bools(vec![true, true, true]),
                Arg::Out(Float, vec![big, 0, 3, 3]),
                Arg::Out(Float, vec![0, 0, 1, 1]),
                Arg::Out(Float, vec![0]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [big, 0, 3, 3]);
    }

    /// Convolutions charge their multiply-adds and stop with `Interrupted` once the
    /// caller's deadline has passed (checked between taps, rows or channels).
    #[test]
    fn convolutions_charge_work_and_stop_when_interrupted() {
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        let z = |dt: ScalarType, s: &[usize]| Arg::T(OwnedTensor::zeros(dt, s));
        let conv = |dt: ScalarType, tr: bool, out: &[usize]| {
            vec![
                z(dt, &[1, 16, 16, 16]),
                z(dt, &[16, 16, 3, 3]),
                Arg::None,
                Arg::Ints(vec![1]),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![1]),
                Arg::Bool(tr),
                Arg::Ints(vec![0]),
                Arg::Int(1),
                Arg::Out(dt, out.to_vec()),
            ]
        };
        let back = vec![
            z(Float, &[1, 16, 14, 14]),
            z(Float, &[1, 16, 16, 16]),
            z(Float, &[16, 16, 3, 3]),
            Arg::Ints(vec![16]),
            Arg::Ints(vec![1]),
            Arg::Ints(vec![0]),
            Arg::Ints(vec![1]),
            Arg::Bool(false),
            Arg::Ints(vec![0]),
            Arg::Int(1),
            Arg::Bools(vec![true, true, true]),
            Arg::Out(Float, vec![1, 16, 16, 16]),
            Arg::Out(Float, vec![16, 16, 3, 3]),
            Arg::Out(Float, vec![16]),
        ];
        // Channels x channels x taps x outputs (transposed: x inputs). The direct f32
        // path (transposed) also counts one unit per (channel, channel, tap).
        let taps = 16 * 16 * 9;
        let (fwd, tr) = (taps * 14 * 14, taps * 16 * 16);
        let cases: Vec<(&str, Vec<Arg>, u64)> = vec![
            (
                "aten::convolution.out",
                conv(Float, false, &[1, 16, 14, 14]),
                fwd,
            ),
            (
                "aten::convolution.out",
                conv(Double, false, &[1, 16, 14, 14]),
                fwd,
            ),
            (
                "aten::convolution.out",
                conv(Float, true, &[1, 16, 18, 18]),
                tr + taps,
            ),
            (
                "aten::convolution.out",
                conv(Half, true, &[1, 16, 18, 18]),
                16 * 16 * 9 * 18 * 18,
            ),
            ("aten::convolution_backward.out", back, fwd),
        ];
        for (i, (op, args, work)) in cases.into_iter().enumerate() {
            let (_, charged) = run_op_with(op, args.clone(), ctx).unwrap();
            assert_eq!(charged, work, "case {i}");
            assert_eq!(
                run_op_interrupted(op, args).unwrap_err(),
                ptero_core::Error::Interrupted,
                "case {i}"
            );
        }
    }

    /// Plain forward 2-d convolution on row-major data (unit dilation).
    fn conv_ref(
        x: &[f64],
        w: &[f64],
        xs: [usize; 4],
        ws: [usize; 4],
        s: usize,
        p: usize,
        g: usize,
    ) -> (Vec<f64>, [usize; 2]) {
        let (n, cin, ih, iw) = (xs[0], xs[1], xs[2], xs[3]);
        let (cout, cin_g, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let oh = (ih + 2 * p - kh) / s + 1;
        let ow = (iw + 2 * p - kw) / s + 1;
        let mut o = vec![0.0; n * cout * oh * ow];
        for ni in 0..n {
            for co in 0..cout {
                let gi = co / (cout / g);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for cl in 0..cin_g {
                            let ci = gi * cin_g + cl;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * s + ky) as isize - p as isize;
                                    let ix = (ox * s + kx) as isize - p as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < ih
                                        && (ix as usize) < iw
                                    {
                                        acc += x[((ni * cin + ci) * ih + iy as usize) * iw
                                            + ix as usize]
                                            * w[((co * cin_g + cl) * kh + ky) * kw + kx];
                                    }
                                }
                            }
                        }
                        o[((ni * cout + co) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        (o, [oh, ow])
    }

    #[test]
    fn convolution_backward() {
        let (xs, ws, st, pd, g) = ([2usize, 4, 5, 4], [6usize, 2, 3, 2], 2usize, 1usize, 2usize);
        let xv: Vec<f64> = (0..160)
            .map(|i| ((i * 7) % 11) as f64 * 0.25 - 1.0)
            .collect();
        let wv: Vec<f64> = (0..72).map(|i| ((i * 5) % 9) as f64 * 0.5 - 2.0).collect();
        let (_, [oh, ow]) = conv_ref(&xv, &wv, xs, ws, st, pd, g);
        let gv: Vec<f64> = (0..2 * 6 * oh * ow)
            .map(|i| ((i * 3) % 7) as f64 - 3.0)
            .collect();
        // The conv is bilinear: grad_x[i] = <g, conv(e_i, w)>, grad_w[j] = <g, conv(x, e_j)>.
        let dot = |o: &[f64]| o.iter().zip(&gv).map(|(a, b)| a * b).sum::<f64>();
        let unit = |n: usize, i: usize| (0..n).map(|k| (k == i) as u8 as f64).collect::<Vec<_>>();
        let want_x: Vec<f64> = (0..160)
            .map(|i| dot(&conv_ref(&unit(160, i), &wv, xs, ws, st, pd, g).0))
            .collect();
        let want_w: Vec<f64> = (0..72)
            .map(|j| dot(&conv_ref(&xv, &unit(72, j), xs, ws, st, pd, g).0))
            .collect();
        let want_b: Vec<f64> = (0..6)
            .map(|c| {
                (0..2)
                    .map(|n| {
                        (0..oh * ow)
                            .map(|k| gv[(n * 6 + c) * oh * ow + k])
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect();
        for (order, dt) in [([0u8, 1, 2, 3], Double), ([0, 2, 3, 1], Float)] {
            let t =
                |v: &[f64], sz: &[usize]| OwnedTensor::from_f64(dt, sz, v).with_dim_order(&order);
            let out = run_op(
                "aten::convolution_backward.out",
                vec![
                    Arg::T(t(&gv, &[2, 6, oh, ow])),
                    Arg::T(t(&xv, &xs)),
                    Arg::T(t(&wv, &ws)),
                    Arg::Ints(vec![6]),
                    Arg::Ints(vec![st as i64]),
                    Arg::Ints(vec![pd as i64]),
                    Arg::Ints(vec![1]),
                    Arg::Bool(false),
                    Arg::Ints(vec![0]),
                    Arg::Int(g as i64),
                    Arg::Bools(vec![true, true, true]),
                    Arg::OutLike(OwnedTensor::zeros(dt, &xs).with_dim_order(&order)),
                    Arg::Out(dt, ws.to_vec()),
                    Arg::Out(dt, vec![6]),
                ],
            )
            .unwrap();
            assert_close(&out.tensors[0].to_f64(), &want_x, 1e-4, 1e-5);
            assert_close(&out.tensors[1].to_f64(), &want_w, 1e-4, 1e-5);
            assert_close(&out.tensors[2].to_f64(), &want_b, 1e-4, 1e-5);
        }
        // Only the weight gradient; 1-d; transposed and mismatched grad_output fail.
        let x1 = OwnedTensor::from_f64(Float, &[1, 1, 3], &[1., 2., 3.]);
        let w1 = OwnedTensor::from_f64(Float, &[1, 1, 2], &[1., -1.]);
        let g1 = OwnedTensor::from_f64(Float, &[1, 1, 2], &[1., 10.]);
        let args = |g1: OwnedTensor, transposed: bool| {
            vec![
                Arg::T(g1),
                Arg::T(x1.clone()),
                Arg::T(w1.clone()),
                Arg::None,
                Arg::Ints(vec![1]),
                Arg::Ints(vec![0]),
                Arg::Ints(vec![1]),
                Arg::Bool(transposed),
                Arg::Ints(vec![0]),
                Arg::Int(1),
                Arg::Bools(vec![false, true, false]),
                Arg::Out(Float, vec![1, 1, 3]),
                Arg::Out(Float, vec![1, 1, 2]),
                Arg::Out(Float, vec![1]),
            ]
        };
        let out = run_op("aten::convolution_backward.out", args(g1.clone(), false)).unwrap();
        // grad_w[k] = sum_o g[o] * x[o + k] = [1*1 + 10*2, 1*2 + 10*3].
        assert_eq!(out.tensors[1].to_f64(), [21., 32.]);
        assert_eq!(out.tensors[0].to_f64(), [0., 0., 0.]);
        assert!(run_op("aten::convolution_backward.out", args(g1, true)).is_err());
        let bad = OwnedTensor::from_f64(Float, &[1, 1, 3], &[1., 1., 1.]);
        assert!(run_op("aten::convolution_backward.out", args(bad, false)).is_err());
    }
}
