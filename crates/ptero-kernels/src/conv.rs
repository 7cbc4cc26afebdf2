//! Convolution (`aten::convolution.out`): 1-d and 2-d, strided, padded, dilated,
//! grouped (depthwise included) and transposed, over any dim order.
//!
//! 1-d convolutions run as 2-d ones with a unit height. The f32 path is direct, with no
//! scratch: for each (output channel, input channel, kernel tap) it adds one weighted
//! input row to one output row, so with unit stride and contiguous rows the inner loop
//! is a vectorizable axpy. Transposed convolution scatters the same way. Other float
//! dtypes gather each output element in f64.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::{load_f64, store_f64};

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
    let x = a.meta(0)?;
    let w = a.meta(1)?;
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
    for i in [1, 9] {
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
    let s = spatial(a, 3, nsp, "stride")?;
    let p = spatial(a, 4, nsp, "padding")?;
    let d = spatial(a, 5, nsp, "dilation")?;
    let transposed = a.bool(6)?;
    let op = if transposed {
        spatial(a, 7, nsp, "output_padding")?
    } else {
        [0, 0]
    };
    let groups = a.int(8)?;
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
        if ws[0] != cin || cin % groups != 0 {
            return Err(Error::shape(alloc::format!(
                "transposed convolution: weight {:?} must start with the input channels {cin} (divisible by groups {groups})",
                w.sizes()
            )));
        }
        ws[1] * groups
    } else {
        if cin % groups != 0 || ws[0] % groups != 0 || ws[1] * groups != cin {
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
        let span = d[q] * (k.max(1) - 1) + 1;
        let len = if transposed {
            ((inp.max(1) - 1) * s[q] + span + op[q]).checked_sub(2 * p[q])
        } else {
            (inp + 2 * p[q]).checked_sub(span).map(|v| v / s[q] + 1)
        };
        match len {
            Some(l) if l > 0 && k > 0 && (inp > 0 || !transposed) => Ok(l),
            _ => Err(Error::shape(alloc::format!(
                "convolution: input size {inp} with kernel {k}, stride {}, padding {}, dilation {} gives no output",
                s[q], p[q], d[q]
            ))),
        }
    };
    let oh = out_len(0, ih, kh)?;
    let ow = out_len(1, iw, kw)?;
    let bias = a.opt_meta(2)?;
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
                arg: 2,
                expected: alloc::string::ToString::to_string(dtype.name()),
                found: b.dtype,
            });
        }
        bst = b.strides()[0];
    }
    if nsp == 1 {
        a.resize(9, &[n, cout, ow])?;
    } else {
        a.resize(9, &[n, cout, oh, ow])?;
    }
    let om = a.meta(9)?;
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
    };
    let xt = a.tensor(0)?;
    let wt = a.tensor(1)?;
    let bt = a.opt_tensor(2)?;
    let mut ot = a.out(9)?;
    if ot.numel() == 0 {
        return Ok(());
    }
    if dtype == ScalarType::Float {
        let b = match &bt {
            Some(t) => Some(t.data::<f32>()?),
            None => None,
        };
        conv_f32(&g, xt.data()?, wt.data()?, b, ot.data()?);
    } else {
        conv_generic(
            &g,
            dtype,
            xt.bytes,
            wt.bytes,
            bt.map(|t| t.bytes),
            &mut *ot.bytes,
        );
    }
    Ok(())
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

fn conv_f32(g: &Geo, x: &[f32], w: &[f32], b: Option<&[f32]>, o: &mut [f32]) {
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
                            if ox1 <= ox0 {
                                continue;
                            }
                            let ix0 = (ox0 as isize * sx as isize + offx) as usize;
                            for oy in oy0..oy1 {
                                let iy = (oy as isize * sy as isize + offy) as usize;
                                axpy(
                                    o,
                                    n * on + oc * oc_s + oy * oh_s + ox0 * ow_s,
                                    ow_s,
                                    x,
                                    n * xn + ic * xc + iy * xh + ix0 * xw,
                                    xw * sx,
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
                            if ix1 <= ix0 {
                                continue;
                            }
                            let ox0 = (ix0 as isize * sx as isize + offx) as usize;
                            for iy in iy0..iy1 {
                                let oy = (iy as isize * sy as isize + offy) as usize;
                                axpy(
                                    o,
                                    n * on + oc * oc_s + oy * oh_s + ox0 * ow_s,
                                    ow_s * sx,
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
}

/// Gathers every output element in f64 (double, half, bfloat16).
fn conv_generic(g: &Geo, dtype: ScalarType, x: &[u8], w: &[u8], b: Option<&[u8]>, o: &mut [u8]) {
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
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::convolution.out", conv_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
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
        let out = run_op(
            "aten::convolution.out",
            vec![
                Arg::T(xt),
                Arg::T(OwnedTensor::from_f64(dtype, &c.w, &wv)),
                if c.bias {
                    Arg::T(OwnedTensor::from_f64(dtype, &[cout], &bv))
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
}
