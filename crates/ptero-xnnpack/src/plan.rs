//! Planning a graph once at load: nodes become steps with their weights packed, values
//! get buffers shared by those whose lives do not overlap.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use ptero_gemm::{Activation, Conv2d, Image, MatRef, PackedB, PackedConv};
use ptero_simd::ops::{Binary, Unary};

use ptero_core::ScalarType;

use crate::error::{Result, XnnError};
use crate::fuse::{fuse_pairs, fuse_q8_clamp, fuse_silu, readers};
use crate::graph::{
    BinaryOp, ConstantSource, ConvKind, Datatype, Graph, Node, Op, PoolAttrs, UnaryOp, Value,
    MAX_DIMS, NO_VALUE,
};
use crate::qplan;
use crate::quant::Kind;

/// `XNN_FLAG_TRANSPOSE_WEIGHTS`: a fully connected filter stored `[in, out]`.
pub(crate) const FLAG_TRANSPOSE_WEIGHTS: u32 = 1;

/// A shape without allocation: up to [`MAX_DIMS`] sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Shape {
    pub(crate) dims: [usize; MAX_DIMS],
    pub(crate) rank: usize,
}

impl Shape {
    pub(crate) fn of(d: &[usize]) -> Option<Shape> {
        if d.len() > MAX_DIMS {
            return None;
        }
        let mut s = Shape {
            dims: [0; MAX_DIMS],
            rank: d.len(),
        };
        s.dims[..d.len()].copy_from_slice(d);
        Some(s)
    }
    pub(crate) fn d(&self) -> &[usize] {
        &self.dims[..self.rank]
    }
    pub(crate) fn numel(&self) -> Option<usize> {
        self.d().iter().try_fold(1usize, |a, &b| a.checked_mul(b))
    }
    /// Whether every product of its dims fits a `usize` (a zero dim alone does not
    /// make huge other dims safe to multiply).
    pub(crate) fn sane(&self) -> bool {
        self.d()
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .is_some()
    }
}

/// Where a value's elements live while the graph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The delegate call's argument.
    Arg(usize),
    /// One of the delegate's buffers.
    Buf(usize),
    /// A constant, converted to f32 at load.
    Const(usize),
    /// Declared but never read or written.
    Unused,
}

/// A node ready to run: its operands as value indices and its prepared state.
pub(crate) enum Step {
    /// A step on quantized values (or converting to and from them).
    Q(Box<crate::quant::QStep>),
    /// A less common node.
    X(Box<crate::rare::XStep>),
    FullyConnected {
        x: usize,
        out: usize,
        /// Input and output features.
        k: usize,
        n: usize,
        w: PackedB,
        bias: Option<usize>,
        act: Activation,
    },
    Conv(Box<ConvStep>),
    /// A 1 x 1 convolution whose result only feeds the depthwise one after it, run as
    /// one banded step (`ptero_gemm::pointwise_depthwise`) when it fits, else through the
    /// intermediate value's buffer.
    PwDw {
        pw: Box<ConvStep>,
        dw: Box<ConvStep>,
    },
    Binary {
        op: Binary,
        a: usize,
        b: usize,
        out: usize,
        clamp: Option<(f32, f32)>,
    },
    Unary {
        op: Unary,
        x: usize,
        out: usize,
        clamp: Option<(f32, f32)>,
    },
    Softmax {
        x: usize,
        out: usize,
    },
    GlobalAvgPool {
        x: usize,
        out: usize,
        clamp: Option<(f32, f32)>,
    },
    Pool {
        max: bool,
        attrs: PoolAttrs,
        x: usize,
        out: usize,
        clamp: Option<(f32, f32)>,
    },
    Transpose {
        rank: usize,
        perm: [usize; MAX_DIMS],
        x: usize,
        out: usize,
    },
    /// Reshape and copy: the elements in order, under a new shape.
    Reshape {
        new_shape: Shape,
        x: usize,
        out: usize,
    },
    Slice {
        offsets: [usize; MAX_DIMS],
        sizes: [usize; MAX_DIMS],
        x: usize,
        out: usize,
    },
    BatchMatMul {
        a: usize,
        b: usize,
        out: usize,
    },
    Concat {
        axis: usize,
        inputs: [usize; 5],
        count: usize,
        out: usize,
    },
    /// Elementwise functions without a vector form here (scalar, through `libm`).
    Scalar {
        f: ScalarFn,
        x: usize,
        out: usize,
        clamp: Option<(f32, f32)>,
    },
    /// `x >= 0 ? x : slope · x`, the slope broadcast against `x`.
    PRelu {
        x: usize,
        slope: usize,
        out: usize,
    },
    /// Constant padding: `pre[i]` and `post[i]` elements around dim `i`.
    Pad {
        rank: usize,
        pre: [usize; MAX_DIMS],
        post: [usize; MAX_DIMS],
        value: f32,
        x: usize,
        out: usize,
    },
}

/// The functions of [`Step::Scalar`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarFn {
    Floor,
    Ceil,
    Sin,
    Cos,
    Square,
}

/// A convolution with its weights packed once.
pub(crate) struct ConvStep {
    pub(crate) x: usize,
    pub(crate) out: usize,
    pub(crate) w: PackedConv,
    pub(crate) geo: Conv2d,
    pub(crate) bias: Option<usize>,
    pub(crate) act: Activation,
    /// The exported filter's strides as `(o, i, y, x)`.
    pub(crate) fstrides: [usize; 4],
}

/// An executable delegate.
pub(crate) struct Executor {
    pub(crate) slots: Vec<Slot>,
    /// Per value: the sizes it may hold at most (the graph's declaration).
    pub(crate) bounds: Vec<usize>,
    pub(crate) shapes: Vec<Shape>,
    pub(crate) steps: Vec<Step>,
    /// Node index of each step, for errors.
    pub(crate) step_node: Vec<(usize, &'static str)>,
    /// Further nodes folded into the step (a fused activation, the depthwise half of a
    /// fused pair).
    pub(crate) step_extra: Vec<Vec<usize>>,
    /// Debug handle of each node of the graph, for the event tracer.
    pub(crate) node_handles: Vec<u32>,
    pub(crate) buffers: Vec<Vec<f32>>,
    pub(crate) consts: Vec<Vec<f32>>,
    /// (value, argument) of the graph's inputs.
    pub(crate) inputs: Vec<(usize, usize)>,
    /// How each value is stored.
    pub(crate) kinds: Vec<Kind>,
    /// Half-precision inputs and outputs: (value, argument, dtype), widened into the
    /// value's buffer before the steps run, narrowed from it after.
    pub(crate) casts_in: Vec<(usize, usize, ScalarType)>,
    pub(crate) casts_out: Vec<(usize, usize, ScalarType)>,
}

pub(crate) fn act_of(clamp: Option<(f32, f32)>) -> Activation {
    match clamp {
        None => Activation::None,
        Some((lo, hi)) if lo == f32::NEG_INFINITY && hi == f32::INFINITY => Activation::None,
        Some((lo, hi)) if lo == 0.0 && hi == f32::INFINITY => Activation::Relu,
        Some((lo, hi)) => Activation::Clamp(lo, hi),
    }
}

pub(crate) fn clamp_of(c: Option<(f32, f32)>) -> Option<(f32, f32)> {
    c.filter(|&(lo, hi)| !(lo == f32::NEG_INFINITY && hi == f32::INFINITY))
}

pub(crate) fn unsupported(index: usize, node: &Node, what: impl ToString) -> XnnError {
    XnnError::Unsupported {
        index,
        node: node.name,
        what: what.to_string(),
    }
}

pub(crate) fn bad(index: usize, node: &Node, what: impl ToString) -> XnnError {
    XnnError::Node {
        index,
        node: node.name,
        what: what.to_string(),
    }
}

/// What the delegate may still allocate at load.
pub(crate) struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    fn take(&mut self, bytes: usize, what: &str) -> Result<()> {
        if bytes > self.left {
            return Err(XnnError::Flatbuffer(format!(
                "{what} need {bytes} more bytes, over the method's memory limit of {} \
                 ({} left)",
                self.limit, self.left
            )));
        }
        self.left -= bytes;
        Ok(())
    }
}

/// The constant behind value `i`, if it is one.
fn const_of_value(slots: &[Slot], i: usize) -> Option<usize> {
    match slots.get(i) {
        Some(Slot::Const(c)) => Some(*c),
        _ => None,
    }
}

/// The f32 elements of a constant value.
pub(crate) fn constant_f32<'d>(
    g: &Graph,
    v: &Value,
    vi: usize,
    blob: &crate::blob::Blob<'_>,
    named: &(dyn Fn(&str) -> Option<&'d [u8]> + 'd),
) -> Result<Vec<f32>> {
    let err = |what: alloc::string::String| XnnError::Constant { value: vi, what };
    let idx = v.constant.ok_or_else(|| err("not a constant".into()))? as usize;
    let src = g
        .constants
        .get(idx)
        .ok_or_else(|| err(format!("constant {idx} does not exist")))?;
    let bytes: &[u8] = match src {
        ConstantSource::Blob { offset, size } => blob
            .constants
            .get(*offset..offset.saturating_add(*size))
            .ok_or_else(|| err("region outside the constant data".into()))?,
        ConstantSource::Flatbuffer { offset, size } => blob
            .flatbuffer
            .get(*offset..offset.saturating_add(*size))
            .ok_or_else(|| err("region outside the flatbuffer".into()))?,
        ConstantSource::Named { key, .. } => {
            named(key).ok_or_else(|| err(format!("named data '{key}' is missing")))?
        }
    };
    let n = v
        .numel()
        .ok_or_else(|| err("element count overflows".into()))?;
    let need = n
        .checked_mul(match v.dtype {
            Datatype::Fp32 => 4,
            Datatype::Fp16 | Datatype::Bf16 => 2,
            d => {
                return Err(err(format!(
                    "constants of {} are not supported yet",
                    d.name()
                )))
            }
        })
        .ok_or_else(|| err("size overflows".into()))?;
    if bytes.len() < need {
        return Err(err(format!(
            "{} bytes for {n} elements of {}",
            bytes.len(),
            v.dtype.name()
        )));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| err(format!("cannot allocate {n} elements")))?;
    match v.dtype {
        Datatype::Fp32 => out.extend(
            bytes[..need]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Datatype::Fp16 => out.extend(
            bytes[..need]
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        _ => out.extend(
            bytes[..need]
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
    }
    Ok(out)
}

/// The bytes of constant `idx` (blob region, flatbuffer buffer or named data).
fn raw_constant<'p, 'b: 'p, 'd: 'p>(
    g: &Graph,
    idx: usize,
    blob: &'p crate::blob::Blob<'b>,
    named: &'p (dyn Fn(&str) -> Option<&'d [u8]> + 'd),
) -> Result<&'p [u8]> {
    let err = |what: alloc::string::String| XnnError::Constant { value: idx, what };
    match g
        .constants
        .get(idx)
        .ok_or_else(|| err(format!("constant {idx} does not exist")))?
    {
        ConstantSource::Blob { offset, size } => blob
            .constants
            .get(*offset..offset.saturating_add(*size))
            .ok_or_else(|| err("region outside the constant data".into())),
        ConstantSource::Flatbuffer { offset, size } => blob
            .flatbuffer
            .get(*offset..offset.saturating_add(*size))
            .ok_or_else(|| err("region outside the flatbuffer".into())),
        ConstantSource::Named { key, .. } => {
            named(key).ok_or_else(|| err(format!("named data '{key}' is missing")))
        }
    }
}

/// Float-only steps must not be handed quantized filters or biases.
fn float_weights(g: &Graph, index: usize, node: &Node, ids: &[u32]) -> Result<()> {
    for &id in ids {
        if id == NO_VALUE {
            continue;
        }
        let v = &g.values[g.by_id[&id]];
        if !matches!(v.dtype, Datatype::Fp32 | Datatype::Fp16 | Datatype::Bf16) {
            return Err(unsupported(
                index,
                node,
                format!(
                    "float inputs with {} weights (value id {id})",
                    v.dtype.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Steps built for f32 run on f32 values; the data-movement ones also on int8 values
/// whose quantization they keep.
fn check_kinds(step: &Step, kinds: &[Kind], g: &Graph, index: usize, node: &Node) -> Result<()> {
    if matches!(step, Step::Q(_)) {
        return Ok(());
    }
    let moves = matches!(
        step,
        Step::Transpose { .. }
            | Step::Reshape { .. }
            | Step::Slice { .. }
            | Step::Concat { .. }
            | Step::Pad { .. }
            | Step::Pool { max: true, .. }
    );
    let out = kinds[step.out()];
    let mut bad_kind = None;
    step.reads(|v, is_const| {
        if is_const {
            return;
        }
        let k = kinds[v];
        let ok = if moves {
            k == out && !matches!(k, Kind::Qd8 { .. })
        } else {
            k == Kind::F32
        };
        if !ok && bad_kind.is_none() {
            bad_kind = Some(v);
        }
    });
    if out != Kind::F32 && !moves {
        bad_kind = bad_kind.or(Some(step.out()));
    }
    if let Some(v) = bad_kind {
        let what = if moves {
            "operands quantized differently (or not at all) from the output"
        } else {
            "this operation on quantized values"
        };
        return Err(unsupported(
            index,
            node,
            format!(
                "{what} (value id {}, {})",
                g.values[v].id,
                g.values[v].dtype.name()
            ),
        ));
    }
    Ok(())
}

impl Executor {
    /// Plans `g`: every node must be one this build runs, on fp32 values.
    pub(crate) fn new<'d>(
        g: &Graph,
        blob: &crate::blob::Blob<'_>,
        named: &(dyn Fn(&str) -> Option<&'d [u8]> + 'd),
        release: &dyn Fn(&[u8]),
        max_memory: usize,
    ) -> Result<Executor> {
        let mut budget = Budget {
            left: max_memory,
            limit: max_memory,
        };
        let nv = g.values.len();
        let mut slots = vec![Slot::Unused; nv];
        let mut consts = Vec::new();
        // Per constant: its value index while its f32 copy is still to be made.
        let mut pending: Vec<Option<usize>> = Vec::new();
        let mut const_value = Vec::new();
        let mut bounds = Vec::with_capacity(nv);
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let (mut casts_in, mut casts_out) = (Vec::new(), Vec::new());
        let mut kinds = vec![Kind::F32; nv];
        // Why a value cannot be stored, reported by the first node that uses it.
        let mut no_kind: Vec<Option<&'static str>> = vec![None; nv];
        let raw = |idx: usize| raw_constant(g, idx, blob, named);
        for (i, v) in g.values.iter().enumerate() {
            let n = v.numel().ok_or_else(|| XnnError::Value {
                index: i,
                what: "element count overflows".into(),
            })?;
            bounds.push(n);
            if v.constant.is_some() {
                slots[i] = Slot::Const(consts.len());
                // The f32 copy, and about as much again once packed.
                budget.take(n.saturating_mul(8), "constants")?;
                pending.push(None);
                const_value.push(i);
                consts.push(match v.dtype {
                    Datatype::Fp32 | Datatype::Fp16 | Datatype::Bf16 => {
                        // Converted when the first node reading it is planned, and freed
                        // once packed: the copies of all filters never coexist.
                        pending[consts.len()] = Some(i);
                        Vec::new()
                    }
                    Datatype::QInt8 => {
                        // Read by the int8 steps as bytes, four to a slot.
                        let kind = Kind::of(v).map_err(|w| XnnError::Constant {
                            value: i,
                            what: w.into(),
                        })?;
                        kinds[i] = kind;
                        let b = raw(v.constant.unwrap_or(0) as usize)?;
                        let b = b.get(..n).ok_or_else(|| XnnError::Constant {
                            value: i,
                            what: format!("{} bytes for {n} int8 elements", b.len()),
                        })?;
                        let mut f = vec![0f32; n.div_ceil(4)];
                        bytemuck::cast_slice_mut::<f32, u8>(&mut f)[..n].copy_from_slice(b);
                        f
                    }
                    // Quantized filters and biases: packed from their bytes by the steps
                    // that read them.
                    _ => {
                        no_kind[i] = Some("a quantized constant where floats are read");
                        Vec::new()
                    }
                });
                continue;
            }
            match Kind::of(v) {
                Ok(k) => kinds[i] = k,
                Err(w) => no_kind[i] = Some(w),
            }
            if let Some(e) = v.external {
                let cast = match (kinds[i], v.dtype) {
                    (Kind::F32, Datatype::Fp16) => Some(ScalarType::Half),
                    (Kind::F32, Datatype::Bf16) => Some(ScalarType::BFloat16),
                    (Kind::F32, _) => None,
                    _ => {
                        return Err(XnnError::Value {
                            index: i,
                            what: format!(
                                "delegate inputs and outputs of {} are not supported",
                                v.dtype.name()
                            ),
                        })
                    }
                };
                let (e, is_in) = (e as usize, v.flags & crate::graph::FLAG_EXTERNAL_INPUT != 0);
                let is_out = v.flags & crate::graph::FLAG_EXTERNAL_OUTPUT != 0;
                if let Some(t) = cast {
                    // In a buffer of its own planning; copied at the edges.
                    if is_in {
                        casts_in.push((i, e, t));
                    }
                    if is_out {
                        casts_out.push((i, e, t));
                    }
                } else {
                    slots[i] = Slot::Arg(e);
                }
                if is_in {
                    inputs.push((i, e));
                }
                if is_out {
                    outputs.push((i, e));
                }
            }
        }
        let vi = |id: u32| g.by_id[&id];
        let const_of = |id: u32| match slots[vi(id)] {
            Slot::Const(c) => Some(c),
            _ => None,
        };
        // Nodes still to read each constant, and whether a step reads its f32 copy
        // while running (otherwise the copy goes once its last reader is planned).
        let mut readers_left = vec![0usize; consts.len()];
        for node in &g.nodes {
            for id in node.op.value_ids().0 {
                if let Some(c) = const_of(id) {
                    readers_left[c] += 1;
                }
            }
        }
        let mut read_raw = vec![false; consts.len()];
        let mut steps = Vec::with_capacity(g.nodes.len());
        let mut step_node = Vec::with_capacity(g.nodes.len());
        for (index, node) in g.nodes.iter().enumerate() {
            let (ins, outs) = node.op.value_ids();
            for &id in &ins {
                if let Some(c) = const_of(id) {
                    if let Some(i) = pending[c].take() {
                        consts[c] = constant_f32(g, &g.values[i], i, blob, named)?;
                    }
                }
            }
            for &id in ins.iter().chain(&outs) {
                let v = &g.values[vi(id)];
                if let (Some(w), None) = (no_kind[vi(id)], v.constant) {
                    return Err(unsupported(
                        index,
                        node,
                        format!("{w} ({}, value id {id})", v.dtype.name()),
                    ));
                }
            }
            for &id in &outs {
                if matches!(slots[vi(id)], Slot::Const(_)) {
                    return Err(bad(index, node, format!("writes constant value id {id}")));
                }
            }
            let konst = |id: u32| -> Option<usize> {
                match slots[vi(id)] {
                    Slot::Const(c) => Some(c),
                    _ => None,
                }
            };
            let clamp = clamp_of(node.clamp);
            let step = match &node.op {
                Op::FullyConnected {
                    input,
                    filter,
                    bias,
                    output,
                } if kinds[vi(*input)] != Kind::F32 => {
                    let f32_const = |v: usize| match (slots[v], g.values[v].dtype) {
                        (Slot::Const(c), Datatype::Fp32 | Datatype::Fp16 | Datatype::Bf16) => {
                            Some(c)
                        }
                        _ => None,
                    };
                    let q = qplan::plan_fc(
                        g,
                        index,
                        node,
                        (*input, *filter, *bias, *output),
                        &f32_const,
                        &raw,
                    )?
                    .ok_or_else(|| unsupported(index, node, "this input datatype"))?;
                    Step::Q(Box::new(q))
                }
                Op::FullyConnected {
                    input,
                    filter,
                    bias,
                    output,
                } => {
                    float_weights(g, index, node, &[*filter, *bias])?;
                    let c = konst(*filter)
                        .ok_or_else(|| unsupported(index, node, "a filter computed at run time"))?;
                    let fd = &g.values[vi(*filter)].dims;
                    if fd.len() != 2 {
                        return Err(bad(index, node, format!("filter dims {fd:?}")));
                    }
                    let bias = if *bias == NO_VALUE {
                        None
                    } else {
                        Some(konst(*bias).ok_or_else(|| {
                            unsupported(index, node, "a bias computed at run time")
                        })?)
                    };
                    let w = &consts[c];
                    // B is `in x out`: the filter `[out, in]` read transposed, or
                    // `[in, out]` as it is.
                    let view = if node.flags & FLAG_TRANSPOSE_WEIGHTS != 0 {
                        MatRef::new(w, fd[0], fd[1], fd[1], 1)
                    } else {
                        MatRef::new(w, fd[1], fd[0], 1, fd[1])
                    }
                    .map_err(|e| bad(index, node, e))?;
                    let (k, n) = if node.flags & FLAG_TRANSPOSE_WEIGHTS != 0 {
                        (fd[0], fd[1])
                    } else {
                        (fd[1], fd[0])
                    };
                    if bias.is_some_and(|b| consts[b].len() < n) {
                        return Err(bad(index, node, "bias shorter than the outputs"));
                    }
                    Step::FullyConnected {
                        x: vi(*input),
                        out: vi(*output),
                        k,
                        n,
                        w: PackedB::new(view).map_err(|e| bad(index, node, e))?,
                        bias,
                        act: act_of(node.clamp),
                    }
                }
                Op::Conv { kind, attrs } if kinds[vi(attrs.input)] != Kind::F32 => {
                    let f32_const = |v: usize| match slots[v] {
                        Slot::Const(c) => Some(c),
                        _ => None,
                    };
                    let q = qplan::plan_conv(g, index, node, *kind, attrs, &f32_const, &raw)?
                        .ok_or_else(|| unsupported(index, node, "this input datatype"))?;
                    Step::Q(Box::new(q))
                }
                Op::Conv { kind, attrs } => {
                    float_weights(g, index, node, &[attrs.filter, attrs.bias])?;
                    if *kind == ConvKind::ConvTranspose2d {
                        let x = crate::rare::plan_deconv(g, index, node, attrs, &consts, &konst)?;
                        steps.push(Step::X(Box::new(x)));
                        step_node.push((index, node.name));
                        continue;
                    }
                    let p = attrs.padding;
                    if p[0] != p[2] || p[1] != p[3] {
                        return Err(unsupported(
                            index,
                            node,
                            format!("asymmetric padding {p:?} (top, right, bottom, left)"),
                        ));
                    }
                    let c = konst(attrs.filter)
                        .ok_or_else(|| unsupported(index, node, "a filter computed at run time"))?;
                    let xd = &g.values[vi(attrs.input)].dims;
                    let od = &g.values[vi(attrs.output)].dims;
                    if xd.len() != 4 || od.len() != 4 {
                        return Err(bad(index, node, "input and output must be 4-d (NHWC)"));
                    }
                    let u = |x: u32| x as usize;
                    let groups = u(attrs.groups);
                    let (cin_g, cout_g) = (
                        u(attrs.group_input_channels),
                        u(attrs.group_output_channels),
                    );
                    let geo = Conv2d {
                        n: xd[0],
                        cin: groups.saturating_mul(cin_g),
                        cout: groups.saturating_mul(cout_g),
                        groups,
                        ih: xd[1],
                        iw: xd[2],
                        oh: od[1],
                        ow: od[2],
                        kh: u(attrs.kernel[0]),
                        kw: u(attrs.kernel[1]),
                        stride: [u(attrs.stride[0]), u(attrs.stride[1])],
                        pad: [u(p[0]), u(p[3])],
                        dilation: [u(attrs.dilation[0]), u(attrs.dilation[1])],
                    };
                    let (kh, kw, cout) = (geo.kh, geo.kw, geo.cout);
                    // Filters indexed (o, i, y, x): `[O, KH, KW, I/g]`, or depthwise
                    // `[1, KH, KW, C·M]`.
                    let strides = if *kind == ConvKind::DepthwiseConv2d {
                        [1, 0, kw.saturating_mul(cout), cout]
                    } else {
                        [
                            kh.saturating_mul(kw).saturating_mul(cin_g),
                            1,
                            kw.saturating_mul(cin_g),
                            cin_g,
                        ]
                    };
                    // The filter's own data bounds what packing allocates: a damaged
                    // geometry must not ask for more than the constant holds.
                    let per_oc = if *kind == ConvKind::DepthwiseConv2d {
                        1
                    } else {
                        cin_g
                    };
                    let need = kh
                        .checked_mul(kw)
                        .and_then(|t| t.checked_mul(cout))
                        .and_then(|t| t.checked_mul(per_oc));
                    if need.is_none_or(|nd| nd == 0 || consts[c].len() < nd) || geo.cin == 0 {
                        return Err(bad(
                            index,
                            node,
                            format!(
                                "filter of {} elements for {cout} outputs of {kh} x {kw} x {per_oc}",
                                consts[c].len()
                            ),
                        ));
                    }
                    let wi = Image {
                        data: &consts[c],
                        strides,
                    };
                    // K x K filters over images where the channels-first kernels pay
                    // (Winograd, pixels as rows) read and write NHWC through strides;
                    // the rest take the channels-last packing.
                    let dense = *kind == ConvKind::Conv2d && geo.kh * geo.kw > 1;
                    let w = if dense && PackedConv::winograd_pays(&geo) {
                        PackedConv::winograd(&geo, wi)
                    } else if dense && PackedConv::pixel_rows_pays(&geo) {
                        PackedConv::pixel_rows(&geo, wi)
                    } else {
                        PackedConv::channels_last(&geo, wi)
                    }
                    .map_err(|e| bad(index, node, e))?;
                    let bias = if attrs.bias == NO_VALUE {
                        None
                    } else {
                        Some(konst(attrs.bias).ok_or_else(|| {
                            unsupported(index, node, "a bias computed at run time")
                        })?)
                    };
                    Step::Conv(Box::new(ConvStep {
                        x: vi(attrs.input),
                        out: vi(attrs.output),
                        w,
                        geo,
                        bias,
                        act: act_of(node.clamp),
                        fstrides: strides,
                    }))
                }
                Op::Binary { op, a, b, output }
                    if [*a, *b, *output]
                        .iter()
                        .any(|&id| kinds[vi(id)] != Kind::F32) =>
                {
                    let q = qplan::plan_binary(g, index, node, *op, (*a, *b, *output))?
                        .ok_or_else(|| unsupported(index, node, "these datatypes"))?;
                    Step::Q(Box::new(q))
                }
                Op::Binary { op, a, b, output } => {
                    let f = match op {
                        BinaryOp::Add => Binary::Add,
                        BinaryOp::Subtract => Binary::Sub,
                        BinaryOp::Multiply => Binary::Mul,
                        BinaryOp::Div => Binary::Div,
                        BinaryOp::Minimum => Binary::Minimum,
                        BinaryOp::Maximum => Binary::Maximum,
                        BinaryOp::BatchMatrixMultiply => {
                            steps.push(Step::BatchMatMul {
                                a: vi(*a),
                                b: vi(*b),
                                out: vi(*output),
                            });
                            step_node.push((index, node.name));
                            continue;
                        }
                        BinaryOp::PRelu => {
                            steps.push(Step::PRelu {
                                x: vi(*a),
                                slope: vi(*b),
                                out: vi(*output),
                            });
                            step_node.push((index, node.name));
                            continue;
                        }
                    };
                    Step::Binary {
                        op: f,
                        a: vi(*a),
                        b: vi(*b),
                        out: vi(*output),
                        clamp,
                    }
                }
                Op::Unary { op, input, output } => {
                    if let Some(q) = qplan::plan_unary(g, index, node, *op, (*input, *output))? {
                        steps.push(Step::Q(Box::new(q)));
                        step_node.push((index, node.name));
                        continue;
                    }
                    let (x, out) = (vi(*input), vi(*output));
                    let u = match op {
                        UnaryOp::Softmax => {
                            steps.push(Step::Softmax { x, out });
                            step_node.push((index, node.name));
                            continue;
                        }
                        UnaryOp::GlobalAvgPooling2d => {
                            steps.push(Step::GlobalAvgPool { x, out, clamp });
                            step_node.push((index, node.name));
                            continue;
                        }
                        UnaryOp::Copy | UnaryOp::Convert => {
                            let s = Shape::of(&g.values[out].dims).unwrap_or_default();
                            steps.push(Step::Reshape {
                                new_shape: s,
                                x,
                                out,
                            });
                            step_node.push((index, node.name));
                            continue;
                        }
                        UnaryOp::Sigmoid => Unary::Sigmoid,
                        UnaryOp::Tanh => Unary::Tanh,
                        UnaryOp::Gelu => Unary::Gelu,
                        UnaryOp::Exp => Unary::Exp,
                        UnaryOp::Log => Unary::Log,
                        UnaryOp::Abs => Unary::Abs,
                        UnaryOp::Negate => Unary::Neg,
                        UnaryOp::SquareRoot => Unary::Sqrt,
                        UnaryOp::ReciprocalSquareRoot => Unary::Rsqrt,
                        UnaryOp::Hardswish => Unary::Hardswish,
                        UnaryOp::Clamp => {
                            let (lo, hi) = node.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
                            Unary::Clamp(lo, hi)
                        }
                        UnaryOp::Floor
                        | UnaryOp::Ceiling
                        | UnaryOp::Sin
                        | UnaryOp::Cos
                        | UnaryOp::Square => {
                            let f = match op {
                                UnaryOp::Floor => ScalarFn::Floor,
                                UnaryOp::Ceiling => ScalarFn::Ceil,
                                UnaryOp::Sin => ScalarFn::Sin,
                                UnaryOp::Cos => ScalarFn::Cos,
                                _ => ScalarFn::Square,
                            };
                            steps.push(Step::Scalar { f, x, out, clamp });
                            step_node.push((index, node.name));
                            continue;
                        }
                    };
                    Step::Unary {
                        op: u,
                        x,
                        out,
                        clamp: if *op == UnaryOp::Clamp { None } else { clamp },
                    }
                }
                Op::LeakyRelu {
                    slope,
                    input,
                    output,
                } => Step::Unary {
                    op: Unary::LeakyRelu(*slope),
                    x: vi(*input),
                    out: vi(*output),
                    clamp,
                },
                Op::AvgPooling2d(p) | Op::MaxPooling2d(p) => Step::Pool {
                    max: matches!(node.op, Op::MaxPooling2d(_)),
                    attrs: *p,
                    x: vi(p.input),
                    out: vi(p.output),
                    clamp,
                },
                Op::Transpose {
                    perm,
                    input,
                    output,
                } => {
                    let mut seen = [false; MAX_DIMS];
                    for &p in perm {
                        if p >= perm.len() || seen[p] {
                            return Err(bad(index, node, format!("perm {perm:?}")));
                        }
                        seen[p] = true;
                    }
                    let mut pm = [0; MAX_DIMS];
                    pm[..perm.len()].copy_from_slice(perm);
                    Step::Transpose {
                        rank: perm.len(),
                        perm: pm,
                        x: vi(*input),
                        out: vi(*output),
                    }
                }
                Op::Reshape {
                    new_shape,
                    input,
                    output,
                } => Step::Reshape {
                    new_shape: Shape::of(new_shape)
                        .ok_or_else(|| bad(index, node, "too many dims"))?,
                    x: vi(*input),
                    out: vi(*output),
                },
                Op::Slice {
                    offsets,
                    sizes,
                    input,
                    output,
                } => {
                    let (mut o, mut s) = ([0; MAX_DIMS], [0; MAX_DIMS]);
                    o[..offsets.len()].copy_from_slice(offsets);
                    s[..sizes.len()].copy_from_slice(sizes);
                    Step::Slice {
                        offsets: o,
                        sizes: s,
                        x: vi(*input),
                        out: vi(*output),
                    }
                }
                Op::Concatenate {
                    axis,
                    inputs,
                    output,
                } => {
                    let mut ins = [0usize; 5];
                    for (d, id) in ins.iter_mut().zip(inputs) {
                        *d = vi(*id);
                    }
                    Step::Concat {
                        axis: *axis,
                        inputs: ins,
                        count: inputs.len().min(5),
                        out: vi(*output),
                    }
                }
                Op::ConstantPad {
                    pre,
                    post,
                    value,
                    input,
                    output,
                } => {
                    let (mut p0, mut p1) = ([0; MAX_DIMS], [0; MAX_DIMS]);
                    p0[..pre.len()].copy_from_slice(pre);
                    p1[..post.len()].copy_from_slice(post);
                    Step::Pad {
                        rank: pre.len(),
                        pre: p0,
                        post: p1,
                        value: *value,
                        x: vi(*input),
                        out: vi(*output),
                    }
                }
                Op::ResizeBilinear2d {
                    height,
                    width,
                    input,
                    output,
                } => Step::X(Box::new(crate::rare::plan_resize(
                    g,
                    node,
                    (*height, *width, *input, *output),
                ))),
                Op::Elu {
                    alpha,
                    input,
                    output,
                } => Step::X(Box::new(crate::rare::XStep::Elu {
                    alpha: *alpha,
                    x: vi(*input),
                    out: vi(*output),
                })),
                _ => return Err(unsupported(index, node, "not implemented yet")),
            };
            check_kinds(&step, &kinds, g, index, node)?;
            step.reads(&mut |i, is_const| {
                let c = if is_const {
                    Some(i)
                } else {
                    const_of_value(&slots, i)
                };
                if let Some(c) = c {
                    read_raw[c] = true;
                }
            });
            for &id in &ins {
                if let Some(c) = const_of(id) {
                    readers_left[c] -= 1;
                    if readers_left[c] == 0 {
                        if !read_raw[c] {
                            consts[c] = Vec::new();
                        }
                        // Packed or copied: the file's bytes are not read again.
                        if let Some(k) = g.values[const_value[c]].constant {
                            if let Ok(b) = raw(k as usize) {
                                release(b);
                            }
                        }
                    }
                }
            }
            steps.push(step);
            step_node.push((index, node.name));
        }
        let mut shapes = vec![Shape::default(); nv];
        for (i, v) in g.values.iter().enumerate() {
            if v.constant.is_some() {
                shapes[i] = Shape::of(&v.dims).unwrap_or_default();
            }
        }
        qplan::per_row_qd8(&mut steps, &mut kinds);
        let readers = readers(g);
        let step_extra = vec![Vec::new(); steps.len()];
        let (steps, step_node, step_extra) =
            fuse_silu(steps, step_node, step_extra, &slots, &readers);
        let (steps, step_node, step_extra) =
            fuse_pairs(steps, step_node, step_extra, &slots, &readers);
        let (steps, step_node, step_extra) =
            fuse_q8_clamp(steps, step_node, step_extra, &slots, &readers);
        let mut ex = Executor {
            slots,
            bounds,
            shapes,
            steps,
            step_node,
            step_extra,
            node_handles: g.nodes.iter().map(|n| n.debug_handle).collect(),
            buffers: Vec::new(),
            consts,
            inputs,
            kinds,
            casts_in,
            casts_out,
        };
        for &(v, a) in &outputs {
            if !ex.steps.iter().any(|s| s.out() == v) {
                return Err(XnnError::Value {
                    index: v,
                    what: format!("output {a} of the delegate is written by no node"),
                });
            }
        }
        ex.release_packed_constants();
        ex.plan_buffers(g, &mut budget)?;
        Ok(ex)
    }

    /// Frees the f32 copies of constants no step reads while running: filters live on
    /// in their packed forms only.
    fn release_packed_constants(&mut self) {
        let mut keep = vec![false; self.consts.len()];
        for st in &self.steps {
            st.reads(|i, is_const| {
                if is_const {
                    keep[i] = true;
                } else if let Slot::Const(c) = self.slots[i] {
                    keep[c] = true;
                }
            });
        }
        for (c, k) in self.consts.iter_mut().zip(keep) {
            if !k {
                *c = Vec::new();
            }
        }
    }

    /// Gives every internal value a buffer; values whose lives do not overlap share one
    /// (the largest need of its users).
    fn plan_buffers(&mut self, g: &Graph, budget: &mut Budget) -> Result<()> {
        let nv = self.slots.len();
        let mut last = vec![0usize; nv];
        let mut first = vec![usize::MAX; nv];
        for (s, ((index, _), extra)) in self.step_node.iter().zip(&self.step_extra).enumerate() {
            for &n in core::iter::once(index).chain(extra) {
                let (ins, outs) = g.nodes[n].op.value_ids();
                for id in ins.iter().chain(&outs) {
                    let v = g.by_id[id];
                    last[v] = s;
                    first[v] = first[v].min(s);
                }
            }
        }
        // Half-precision edges are widened before the first step and narrowed after the
        // last.
        for &(v, _, _) in &self.casts_in {
            first[v] = 0;
        }
        for &(v, _, _) in &self.casts_out {
            last[v] = self.steps.len();
            first[v] = first[v].min(self.steps.len());
        }
        // A reshape (or plain copy) that is its input's last reader takes the input's
        // buffer over and does not run: the elements are already there, in order.
        let mut alias = vec![usize::MAX; nv];
        for (s, step) in self.steps.iter().enumerate() {
            if let Step::Reshape { x, out, .. } = *step {
                if x != out
                    && self.step_extra[s].is_empty()
                    && self.slots[x] == Slot::Unused
                    && self.slots[out] == Slot::Unused
                    && last[x] == s
                    && first[out] == s
                    && self.kinds[x] == self.kinds[out]
                    && matches!(self.kinds[x], Kind::F32 | Kind::Q8 { .. })
                {
                    alias[out] = x;
                }
                // An f32 input of the delegate is read in place under the new shape
                // (no step writes a delegate input).
                if let Slot::Arg(a) = self.slots[x] {
                    if self.step_extra[s].is_empty()
                        && self.slots[out] == Slot::Unused
                        && self.inputs.iter().any(|&(v, _)| v == x)
                        && self.kinds[x] == Kind::F32
                        && self.kinds[out] == Kind::F32
                    {
                        self.slots[out] = Slot::Arg(a);
                    }
                }
            }
        }
        // (buffer, free from step)
        let mut free: Vec<(usize, usize)> = Vec::new();
        let mut caps: Vec<usize> = Vec::new();
        let mut order: Vec<usize> = (0..nv)
            .filter(|&v| self.slots[v] == Slot::Unused && first[v] != usize::MAX)
            .collect();
        order.sort_by_key(|&v| first[v]);
        for v in order {
            let inherited = match self.slots.get(alias[v]) {
                Some(&Slot::Buf(b)) => free.iter().position(|&(fb, _)| fb == b),
                _ => None,
            };
            // A buffer whose last user ran before this value's first writer.
            let pick = inherited.or_else(|| free.iter().position(|&(_, until)| until < first[v]));
            let b = match pick {
                Some(i) => free.swap_remove(i).0,
                None => {
                    caps.push(0);
                    caps.len() - 1
                }
            };
            caps[b] = caps[b].max(self.kinds[v].floats(self.bounds[v], &g.values[v].dims));
            self.slots[v] = Slot::Buf(b);
            // Listed with the step after which it is free again.
            free.push((b, last[v]));
        }
        let total = caps.iter().fold(0usize, |a, &c| a.saturating_add(c));
        budget.take(total.saturating_mul(4), "intermediate buffers")?;
        let mut buffers = Vec::new();
        for c in caps {
            // Zeroed by the allocator: pages become resident only once written, so a
            // buffer sized for a shape's upper bound, or the intermediate of a fused
            // pair that runs banded (never written), costs address space only.
            let b = ptero_simd::zeroed(c).ok_or_else(|| {
                XnnError::Flatbuffer(format!(
                    "cannot allocate {} bytes of intermediate buffers",
                    total.saturating_mul(4)
                ))
            })?;
            buffers.push(b);
        }
        self.buffers = buffers;
        Ok(())
    }
}
