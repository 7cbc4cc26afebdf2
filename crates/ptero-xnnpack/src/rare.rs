//! Nodes the partitioner emits for less common layers: transposed convolutions,
//! bilinear resizing and ELU (`docs/notes-xnnpack-nodes.md` §1, §4, §5).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::Result;
use crate::graph::{ConvAttrs, Graph, Node, NO_VALUE};
use crate::plan::{bad, clamp_of, unsupported, Shape};
use crate::step::{apply_clamp, Io};

/// `XNN_FLAG_ALIGN_CORNERS`.
const FLAG_ALIGN_CORNERS: u32 = 8;
/// `XNN_FLAG_TENSORFLOW_LEGACY_MODE`.
const FLAG_TENSORFLOW_LEGACY: u32 = 4;

/// A transposed convolution over NHWC images, its filter `[Cout, KH, KW, Cin/g]`.
pub(crate) struct Deconv {
    x: usize,
    out: usize,
    w: Vec<f32>,
    bias: Option<usize>,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Top, left, bottom, right: rows and columns cropped from the full output.
    pad: [usize; 4],
    adjustment: [usize; 2],
    groups: usize,
    cin_g: usize,
    cout_g: usize,
    clamp: Option<(f32, f32)>,
}

/// Steps for the less common nodes (f32).
pub(crate) enum XStep {
    Deconv(Box<Deconv>),
    Resize {
        x: usize,
        out: usize,
        size: [usize; 2],
        align_corners: bool,
        legacy: bool,
    },
    Elu {
        alpha: f32,
        x: usize,
        out: usize,
    },
}

impl XStep {
    pub(crate) fn out(&self) -> usize {
        match self {
            XStep::Deconv(d) => d.out,
            XStep::Resize { out, .. } | XStep::Elu { out, .. } => *out,
        }
    }

    pub(crate) fn reads(&self, f: &mut dyn FnMut(usize, bool)) {
        match self {
            XStep::Deconv(d) => {
                f(d.x, false);
                if let Some(b) = d.bias {
                    f(b, true);
                }
            }
            XStep::Resize { x, .. } | XStep::Elu { x, .. } => f(*x, false),
        }
    }

    pub(crate) fn infer(&self, io: &Io<'_, '_>) -> core::result::Result<Shape, String> {
        match self {
            XStep::Elu { x, .. } => Ok(io.shape(*x)),
            XStep::Resize { x, size, .. } => {
                let s = io.shape(*x);
                if s.rank != 4 {
                    return Err(format!("input {:?} is not NHWC", s.d()));
                }
                Ok(Shape::of(&[s.dims[0], size[0], size[1], s.dims[3]]).unwrap_or_default())
            }
            XStep::Deconv(d) => {
                let s = io.shape(d.x);
                if s.rank != 4 || s.dims[3] != d.groups * d.cin_g {
                    return Err(format!(
                        "input {:?}, expected [N, H, W, {}]",
                        s.d(),
                        d.groups * d.cin_g
                    ));
                }
                let o = |i: usize, axis: usize| -> Option<usize> {
                    let full = d.stride[axis]
                        .checked_mul(i.checked_sub(1)?)?
                        .checked_add(d.adjustment[axis])?
                        .checked_add(d.dilation[axis].checked_mul(d.kernel[axis] - 1)?)?
                        .checked_add(1)?;
                    let crop = d.pad[axis].checked_add(d.pad[axis + 2])?;
                    full.checked_sub(crop)
                };
                match (o(s.dims[1], 0), o(s.dims[2], 1)) {
                    (Some(oh), Some(ow)) => {
                        Ok(
                            Shape::of(&[s.dims[0], oh, ow, d.groups * d.cout_g])
                                .unwrap_or_default(),
                        )
                    }
                    _ => Err(format!("input {:?} gives an empty output", s.d())),
                }
            }
        }
    }

    pub(crate) fn run(&self, io: &Io<'_, '_>, y: &mut [f32]) -> ptero_core::Result<()> {
        match self {
            XStep::Elu { alpha, x, .. } => {
                for (o, &v) in y.iter_mut().zip(io.read(*x)?) {
                    *o = if v < 0.0 { alpha * libm::expm1f(v) } else { v };
                }
                Ok(())
            }
            XStep::Resize {
                x,
                out,
                align_corners,
                legacy,
                ..
            } => {
                resize(
                    io.read(*x)?,
                    io.shape(*x),
                    y,
                    io.shape(*out),
                    *align_corners,
                    *legacy,
                );
                Ok(())
            }
            XStep::Deconv(d) => {
                let bias = d.bias.map(|b| &io.consts[b][..]);
                d.run(
                    io.args.parallel(),
                    io.read(d.x)?,
                    io.shape(d.x),
                    y,
                    io.shape(d.out),
                    bias,
                );
                apply_clamp(y, d.clamp);
                Ok(())
            }
        }
    }
}

impl Deconv {
    fn run(
        &self,
        par: &dyn ptero_simd::Parallel,
        x: &[f32],
        sx: Shape,
        y: &mut [f32],
        so: Shape,
        bias: Option<&[f32]>,
    ) {
        let (ih, iw, cin) = (sx.dims[1], sx.dims[2], sx.dims[3]);
        let (oh, ow, cout) = (so.dims[1], so.dims[2], so.dims[3]);
        let row = ow * cout;
        if row == 0 {
            return;
        }
        let (kh, kw) = (self.kernel[0], self.kernel[1]);
        // The input pixel a tap reads for output coordinate `o`, if any.
        let src = |o: usize, k: usize, axis: usize, size: usize| -> Option<usize> {
            let t = (o + self.pad[axis]).checked_sub(k * self.dilation[axis])?;
            let s = self.stride[axis];
            (t % s == 0 && t / s < size).then_some(t / s)
        };
        ptero_simd::for_each_chunk_by(par, y, row, &|r, part| {
            for (j, yrow) in part.chunks_exact_mut(row).enumerate() {
                let orow = r.start / row + j;
                let (b, oy) = (orow / oh, orow % oh);
                for ox in 0..ow {
                    let yp = &mut yrow[ox * cout..(ox + 1) * cout];
                    match bias {
                        Some(bs) => yp.copy_from_slice(&bs[..cout]),
                        None => yp.fill(0.0),
                    }
                    for ky in 0..kh {
                        let Some(iy) = src(oy, ky, 0, ih) else {
                            continue;
                        };
                        for kx in 0..kw {
                            let Some(ix) = src(ox, kx, 1, iw) else {
                                continue;
                            };
                            let xp = &x[((b * ih + iy) * iw + ix) * cin..][..cin];
                            for (oc, acc) in yp.iter_mut().enumerate() {
                                let g = oc / self.cout_g;
                                let xs = &xp[g * self.cin_g..(g + 1) * self.cin_g];
                                let at = ((oc * kh + ky) * kw + kx) * self.cin_g;
                                let ws = &self.w[at..at + self.cin_g];
                                let mut s = 0.0f32;
                                for (a, w) in xs.iter().zip(ws) {
                                    s += a * w;
                                }
                                *acc += s;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Bilinear resizing of NHWC images, with XNNPACK's source coordinates.
fn resize(x: &[f32], sx: Shape, y: &mut [f32], so: Shape, align: bool, legacy: bool) {
    let (n, ih, iw, c) = (sx.dims[0], sx.dims[1], sx.dims[2], sx.dims[3]);
    let (oh, ow) = (so.dims[1], so.dims[2]);
    if ih == 0 || iw == 0 {
        return;
    }
    // (first source index, second, weight of the second) per output coordinate.
    let coord = |o: usize, out: usize, inp: usize| -> (usize, usize, f32) {
        let last = (inp - 1) as f32;
        let src = if align {
            let scale = if out > 1 {
                (inp as f32 - 1.0) / (out as f32 - 1.0)
            } else {
                inp as f32 / out as f32
            };
            (o as f32 * scale).min(last)
        } else if legacy {
            (o as f32 * (inp as f32 / out as f32)).min(last)
        } else {
            let scale = inp as f32 / out as f32;
            (o as f32 * scale + (0.5 * scale - 0.5)).clamp(0.0, last)
        };
        let i0 = src as usize;
        let i1 = (i0 + 1).min(inp - 1);
        (i0, i1, src - i0 as f32)
    };
    for b in 0..n {
        for oy in 0..oh {
            let (y0, y1, ay) = coord(oy, oh, ih);
            for ox in 0..ow {
                let (x0, x1, ax) = coord(ox, ow, iw);
                let px = |yy: usize, xx: usize| &x[((b * ih + yy) * iw + xx) * c..][..c];
                let (tl, tr, bl, br) = (px(y0, x0), px(y0, x1), px(y1, x0), px(y1, x1));
                let o = &mut y[((b * oh + oy) * ow + ox) * c..][..c];
                for i in 0..c {
                    let t = tl[i] + (tr[i] - tl[i]) * ax;
                    let bb = bl[i] + (br[i] - bl[i]) * ax;
                    o[i] = t + (bb - t) * ay;
                }
            }
        }
    }
}

/// A transposed convolution on f32 values.
pub(crate) fn plan_deconv(
    g: &Graph,
    index: usize,
    node: &Node,
    a: &ConvAttrs,
    consts: &[Vec<f32>],
    konst: &dyn Fn(u32) -> Option<usize>,
) -> Result<XStep> {
    let u = |v: u32| v as usize;
    let (groups, cin_g, cout_g) = (
        u(a.groups),
        u(a.group_input_channels),
        u(a.group_output_channels),
    );
    let (kh, kw) = (u(a.kernel[0]), u(a.kernel[1]));
    if groups == 0 || cin_g == 0 || cout_g == 0 || kh == 0 || kw == 0 {
        return Err(bad(index, node, "empty filter or groups"));
    }
    let c =
        konst(a.filter).ok_or_else(|| unsupported(index, node, "a filter computed at run time"))?;
    let need = groups
        .checked_mul(cout_g)
        .and_then(|v| v.checked_mul(kh * kw))
        .and_then(|v| v.checked_mul(cin_g))
        .ok_or_else(|| bad(index, node, "filter size overflows"))?;
    let w = &consts[c];
    if w.len() != need {
        return Err(bad(
            index,
            node,
            format!("filter of {} elements, {need} expected", w.len()),
        ));
    }
    let bias = if a.bias == NO_VALUE {
        None
    } else {
        let b =
            konst(a.bias).ok_or_else(|| unsupported(index, node, "a bias computed at run time"))?;
        if consts[b].len() < groups * cout_g {
            return Err(bad(index, node, "bias shorter than the outputs"));
        }
        Some(b)
    };
    let p = a.padding;
    Ok(XStep::Deconv(Box::new(Deconv {
        x: g.by_id[&a.input],
        out: g.by_id[&a.output],
        w: w.clone(),
        bias,
        kernel: [kh, kw],
        stride: [u(a.stride[0]).max(1), u(a.stride[1]).max(1)],
        dilation: [u(a.dilation[0]).max(1), u(a.dilation[1]).max(1)],
        pad: [u(p[0]), u(p[3]), u(p[2]), u(p[1])],
        adjustment: [u(a.adjustment[0]), u(a.adjustment[1])],
        groups,
        cin_g,
        cout_g,
        clamp: clamp_of(node.clamp),
    })))
}

/// Bilinear resizing on f32 values.
pub(crate) fn plan_resize(
    g: &Graph,
    node: &Node,
    (height, width, input, output): (u32, u32, u32, u32),
) -> XStep {
    XStep::Resize {
        x: g.by_id[&input],
        out: g.by_id[&output],
        size: [height as usize, width as usize],
        align_corners: node.flags & FLAG_ALIGN_CORNERS != 0,
        legacy: node.flags & FLAG_TENSORFLOW_LEGACY != 0,
    }
}
