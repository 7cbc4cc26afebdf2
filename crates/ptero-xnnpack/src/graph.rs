//! The delegate's graph read from its flatbuffer into owned, checked structures: every
//! value id a node names exists, every list is as long as its count says, every
//! constant region lies inside the blob or names a key. Nothing here interprets the
//! arithmetic; that is the planner's job.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::blob::Blob;
use crate::error::{Result, XnnError};
use crate::fb;

/// `XNN_INVALID_VALUE_ID`: an optional input (bias, mask) that is absent.
pub const NO_VALUE: u32 = u32::MAX;
/// Value flag: the value is an input of the delegate call.
pub const FLAG_EXTERNAL_INPUT: u32 = 1;
/// Value flag: the value is an output of the delegate call.
pub const FLAG_EXTERNAL_OUTPUT: u32 = 2;
/// Most values a graph may declare: every one costs a table entry at load.
pub const MAX_VALUES: usize = 1 << 20;
/// Most external values (the official runtime's limit).
pub const MAX_EXTERNS: u32 = 4096;
/// Most dimensions of a tensor value (XNNPACK's `XNN_MAX_TENSOR_DIMS`).
pub const MAX_DIMS: usize = 6;

/// An element type of a value (`XNNDatatype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datatype {
    Fp32,
    Fp16,
    Bf16,
    /// Static int8, per tensor (`qint8`).
    QInt8,
    /// Static uint8, per tensor (`quint8`).
    QUInt8,
    /// int32 with a scale (biases of static int8 products, per tensor).
    QInt32,
    /// int8 per output channel (`qcint8`).
    QcInt8,
    /// int32 per output channel (`qcint32`, biases).
    QcInt32,
    /// int4 per output channel (`qcint4`).
    QcInt4,
    /// int8 quantized at run time, per token (`qdint8`).
    QdInt8,
    /// int4 per block of input channels (`qbint4`).
    QbInt4,
    /// Packed int8 (`qpint8`).
    QpInt8,
    Int32,
    /// Packed fp32 (`pfp32`).
    Pfp32,
}

impl Datatype {
    fn from_fb(d: fb::XNNDatatype) -> Option<Datatype> {
        use fb::XNNDatatype as D;
        Some(match d {
            D::xnn_datatype_fp32 => Datatype::Fp32,
            D::xnn_datatype_fp16 => Datatype::Fp16,
            D::xnn_datatype_bf16 => Datatype::Bf16,
            D::xnn_datatype_qint8 => Datatype::QInt8,
            D::xnn_datatype_quint8 => Datatype::QUInt8,
            D::xnn_datatype_qint32 => Datatype::QInt32,
            D::xnn_datatype_qcint8 => Datatype::QcInt8,
            D::xnn_datatype_qcint32 => Datatype::QcInt32,
            D::xnn_datatype_qcint4 => Datatype::QcInt4,
            D::xnn_datatype_qdint8 => Datatype::QdInt8,
            D::xnn_datatype_qbint4 => Datatype::QbInt4,
            D::xnn_datatype_qpint8 => Datatype::QpInt8,
            D::xnn_datatype_int32 => Datatype::Int32,
            D::xnn_datatype_pfp32 => Datatype::Pfp32,
            _ => return None,
        })
    }

    /// The name the schema gives it.
    pub fn name(self) -> &'static str {
        match self {
            Datatype::Fp32 => "fp32",
            Datatype::Fp16 => "fp16",
            Datatype::Bf16 => "bf16",
            Datatype::QInt8 => "qint8",
            Datatype::QUInt8 => "quint8",
            Datatype::QInt32 => "qint32",
            Datatype::QcInt8 => "qcint8",
            Datatype::QcInt32 => "qcint32",
            Datatype::QcInt4 => "qcint4",
            Datatype::QdInt8 => "qdint8",
            Datatype::QbInt4 => "qbint4",
            Datatype::QpInt8 => "qpint8",
            Datatype::Int32 => "int32",
            Datatype::Pfp32 => "pfp32",
        }
    }
}

/// How a value's integers map to reals.
#[derive(Debug, Clone, PartialEq)]
pub enum Quant {
    None,
    PerTensor {
        scale: f32,
        zero_point: i32,
    },
    PerChannel {
        scales: Vec<f32>,
        channel_dim: usize,
        /// Scales stored as constant data instead (index into `constant_data`).
        scale_buffer: Option<u32>,
        num_scales: usize,
    },
    PerTokenDynamic {
        num_nonbatch_dims: usize,
    },
    PerChannelGroup {
        scales: Vec<f32>,
        channel_dim: usize,
        group_size: usize,
        scale_buffer: Option<u32>,
        num_scales: usize,
    },
}

/// A tensor value of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The id nodes and the graph's input and output lists name it by (`id_out`).
    pub id: u32,
    pub dtype: Datatype,
    pub dims: Vec<usize>,
    /// Index into the graph's constant table (`constant_buffer_idx`, 0 = none).
    pub constant: Option<u32>,
    /// Position among the delegate call's arguments, for external values.
    pub external: Option<u32>,
    pub flags: u32,
    pub quant: Quant,
    /// The type a value is quantized to at run time (`dq_datatype`), if any.
    pub dq_dtype: Option<Datatype>,
}

impl Value {
    /// Elements, or `None` when the product overflows.
    pub fn numel(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

/// Where a constant's bytes are: a region of the blob's constant data or a key of the
/// program's named data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstantSource {
    Blob {
        offset: usize,
        size: usize,
    },
    Named {
        key: String,
        size: u64,
    },
    /// A `Buffer` of the deprecated `constant_buffer` table, inside the flatbuffer
    /// (verified with it).
    Flatbuffer {
        offset: usize,
        size: usize,
    },
}

/// One-input nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Softmax,
    Sigmoid,
    Clamp,
    Floor,
    Ceiling,
    SquareRoot,
    ReciprocalSquareRoot,
    Square,
    Abs,
    Negate,
    Hardswish,
    Gelu,
    Tanh,
    Exp,
    Log,
    Sin,
    Cos,
    Convert,
    Copy,
    GlobalAvgPooling2d,
}

/// Two-input elementwise nodes (and batched matrix products).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Subtract,
    Multiply,
    Div,
    Minimum,
    Maximum,
    PRelu,
    BatchMatrixMultiply,
}

/// The convolutions' common attributes (`_XNNNodeConv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvAttrs {
    /// Top, right, bottom, left.
    pub padding: [u32; 4],
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub dilation: [u32; 2],
    pub group_input_channels: u32,
    pub group_output_channels: u32,
    pub groups: u32,
    /// Extra output rows and columns of a transposed convolution.
    pub adjustment: [u32; 2],
    pub input: u32,
    pub filter: u32,
    pub bias: u32,
    pub output: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    Conv2d,
    DepthwiseConv2d,
    ConvTranspose2d,
}

/// Pooling attributes (`_XNNPooling2D`, `XNNArgMaxPooling2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolAttrs {
    /// Top, right, bottom, left.
    pub padding: [u32; 4],
    pub window: [u32; 2],
    pub stride: [u32; 2],
    pub dilation: [u32; 2],
    pub input: u32,
    pub output: u32,
}

/// What a node computes, with the ids of the values it reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Unary {
        op: UnaryOp,
        input: u32,
        output: u32,
    },
    Binary {
        op: BinaryOp,
        a: u32,
        b: u32,
        output: u32,
    },
    FullyConnected {
        input: u32,
        filter: u32,
        bias: u32,
        output: u32,
    },
    Conv {
        kind: ConvKind,
        attrs: ConvAttrs,
    },
    AvgPooling2d(PoolAttrs),
    MaxPooling2d(PoolAttrs),
    ArgMaxPooling2d {
        attrs: PoolAttrs,
        indices: u32,
    },
    Transpose {
        perm: Vec<usize>,
        input: u32,
        output: u32,
    },
    Reshape {
        new_shape: Vec<usize>,
        input: u32,
        output: u32,
    },
    Slice {
        offsets: Vec<usize>,
        sizes: Vec<usize>,
        input: u32,
        output: u32,
    },
    ConstantPad {
        pre: Vec<usize>,
        post: Vec<usize>,
        value: f32,
        input: u32,
        output: u32,
    },
    ResizeBilinear2d {
        height: u32,
        width: u32,
        input: u32,
        output: u32,
    },
    Concatenate {
        axis: usize,
        inputs: Vec<u32>,
        output: u32,
    },
    Elu {
        alpha: f32,
        input: u32,
        output: u32,
    },
    LeakyRelu {
        slope: f32,
        input: u32,
        output: u32,
    },
    ScaledDotProductAttention {
        query: u32,
        key: u32,
        value: u32,
        scale: u32,
        mask: u32,
        output: u32,
    },
}

impl Op {
    /// Every value id the node reads, then those it writes; absent optional inputs
    /// ([`NO_VALUE`]) are left out.
    pub fn value_ids(&self) -> (Vec<u32>, Vec<u32>) {
        let (ins, outs): (Vec<u32>, Vec<u32>) = match self {
            Op::Unary { input, output, .. }
            | Op::Transpose { input, output, .. }
            | Op::Reshape { input, output, .. }
            | Op::Slice { input, output, .. }
            | Op::ConstantPad { input, output, .. }
            | Op::ResizeBilinear2d { input, output, .. }
            | Op::Elu { input, output, .. }
            | Op::LeakyRelu { input, output, .. } => (alloc::vec![*input], alloc::vec![*output]),
            Op::Binary { a, b, output, .. } => (alloc::vec![*a, *b], alloc::vec![*output]),
            Op::FullyConnected {
                input,
                filter,
                bias,
                output,
            } => (alloc::vec![*input, *filter, *bias], alloc::vec![*output]),
            Op::Conv { attrs, .. } => (
                alloc::vec![attrs.input, attrs.filter, attrs.bias],
                alloc::vec![attrs.output],
            ),
            Op::AvgPooling2d(p) | Op::MaxPooling2d(p) => {
                (alloc::vec![p.input], alloc::vec![p.output])
            }
            Op::ArgMaxPooling2d { attrs, indices } => (
                alloc::vec![attrs.input],
                alloc::vec![attrs.output, *indices],
            ),
            Op::Concatenate { inputs, output, .. } => (inputs.clone(), alloc::vec![*output]),
            Op::ScaledDotProductAttention {
                query,
                key,
                value,
                scale,
                mask,
                output,
            } => (
                alloc::vec![*query, *key, *value, *scale, *mask],
                alloc::vec![*output],
            ),
        };
        // Only a bias (and an attention mask) may be absent; any other missing operand
        // stays in the list and fails the graph's id check.
        let optional = match self {
            Op::FullyConnected { .. } | Op::Conv { .. } => Some(2),
            Op::ScaledDotProductAttention { .. } => Some(4),
            _ => None,
        };
        let ins = ins
            .into_iter()
            .enumerate()
            .filter(|&(k, i)| !(i == NO_VALUE && optional == Some(k)))
            .map(|(_, i)| i)
            .collect();
        (ins, outs)
    }
}

/// A node: what it computes, the clamp fused into it, and its debug handle.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The schema's name of the node type (`XNNConv2d`).
    pub name: &'static str,
    pub op: Op,
    pub flags: u32,
    /// `output_min_max`: the output is clamped to this range.
    pub clamp: Option<(f32, f32)>,
    pub debug_handle: u32,
}

/// A checked graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub version: String,
    pub values: Vec<Value>,
    /// Value index by id.
    pub by_id: BTreeMap<u32, usize>,
    pub nodes: Vec<Node>,
    pub num_externs: u32,
    pub input_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// Constants by `constant_buffer_idx` (entry 0 is the "no data" placeholder).
    pub constants: Vec<ConstantSource>,
}

fn flat_err(e: flatbuffers::InvalidFlatbuffer) -> XnnError {
    XnnError::Flatbuffer(format!("verification failed: {e}"))
}

fn node_err(index: usize, node: &'static str, what: impl ToString) -> XnnError {
    XnnError::Node {
        index,
        node,
        what: what.to_string(),
    }
}

fn u32s(v: Option<flatbuffers::Vector<'_, u32>>) -> Vec<u32> {
    v.map(|v| v.iter().collect()).unwrap_or_default()
}

/// Reads `n` entries of a list whose length must be at least `n` (`num_dims` and
/// its list).
fn sized(
    index: usize,
    node: &'static str,
    what: &str,
    n: u32,
    v: Option<flatbuffers::Vector<'_, u32>>,
) -> Result<Vec<usize>> {
    let v = u32s(v);
    let n = n as usize;
    if n > MAX_DIMS || v.len() < n {
        return Err(node_err(
            index,
            node,
            format!(
                "{what}: {} entries for {n} dimensions (at most {MAX_DIMS})",
                v.len()
            ),
        ));
    }
    Ok(v[..n].iter().map(|&d| d as usize).collect())
}

impl Graph {
    /// Reads and checks the graph of a blob.
    pub fn parse(blob: &Blob<'_>) -> Result<Graph> {
        let buf = blob.flatbuffer;
        let ident = |id: &str| flatbuffers::buffer_has_identifier(buf, id, false);
        if buf.len() < 8 || !(ident("XN00") || ident("XN01")) {
            let found = buf.get(4..8).map_or_else(
                || format!("{} bytes", buf.len()),
                |b| format!("{:?}", String::from_utf8_lossy(b)),
            );
            return Err(XnnError::Flatbuffer(format!(
                "identifier should be XN00 or XN01, found {found}"
            )));
        }
        let opts = flatbuffers::VerifierOptions {
            max_tables: 1 << 22,
            ..Default::default()
        };
        let g = fb::root_as_xnngraph_with_opts(&opts, buf).map_err(flat_err)?;

        if g.xvalues().is_none() || g.xnodes().is_none() {
            return Err(XnnError::Flatbuffer(
                "the graph lacks its values or nodes".into(),
            ));
        }
        if g.num_externs() > MAX_EXTERNS {
            return Err(XnnError::Flatbuffer(format!(
                "{} external values, more than {MAX_EXTERNS}",
                g.num_externs()
            )));
        }
        let constants = read_constants(&g, blob)?;
        let xvalues = g.xvalues().map(|v| v.len()).unwrap_or(0);
        if xvalues > MAX_VALUES {
            return Err(XnnError::Flatbuffer(format!(
                "{xvalues} values, more than the {MAX_VALUES} supported"
            )));
        }
        let mut values = Vec::with_capacity(xvalues);
        let mut by_id = BTreeMap::new();
        for (index, xv) in g.xvalues().into_iter().flatten().enumerate() {
            let v = read_value(index, &xv, constants.len())?;
            if by_id.insert(v.id, index).is_some() {
                return Err(XnnError::Value {
                    index,
                    what: format!("id {} is declared twice", v.id),
                });
            }
            values.push(v);
        }
        let mut nodes = Vec::new();
        for (index, xn) in g.xnodes().into_iter().flatten().enumerate() {
            let node = read_node(index, &xn)?;
            let (ins, outs) = node.op.value_ids();
            for id in ins.iter().chain(&outs) {
                if !by_id.contains_key(id) {
                    return Err(node_err(
                        index,
                        node.name,
                        format!("names value id {id}, which the graph does not declare"),
                    ));
                }
            }
            nodes.push(node);
        }
        let input_ids = u32s(g.input_ids());
        let output_ids = u32s(g.output_ids());
        for (what, ids) in [("input", &input_ids), ("output", &output_ids)] {
            if let Some(id) = ids.iter().find(|id| !by_id.contains_key(id)) {
                return Err(XnnError::Flatbuffer(format!(
                    "graph {what} id {id} is not a declared value"
                )));
            }
        }
        Ok(Graph {
            version: g.version().unwrap_or("").into(),
            values,
            by_id,
            nodes,
            num_externs: g.num_externs(),
            input_ids,
            output_ids,
            constants,
        })
    }

    /// The value with id `id` (nodes' ids were checked at parse).
    pub fn value(&self, id: u32) -> Option<&Value> {
        self.by_id.get(&id).map(|&i| &self.values[i])
    }
}

fn read_constants(g: &fb::XNNGraph<'_>, blob: &Blob<'_>) -> Result<Vec<ConstantSource>> {
    let mut out = Vec::new();
    if let Some(table) = g.constant_data() {
        for (i, c) in table.iter().enumerate() {
            let (offset, size) = (c.offset(), c.size_());
            match c.named_key() {
                // A key selects named data, whatever the offset says (the exporter writes
                // u64::MAX there); entry 0, the placeholder, has none.
                Some(key) if !key.is_empty() => out.push(ConstantSource::Named {
                    key: key.into(),
                    size,
                }),
                _ => {
                    let end = offset
                        .checked_add(size)
                        .filter(|&e| e <= blob.constants.len() as u64);
                    if end.is_none() {
                        return Err(XnnError::Constant {
                            value: i,
                            what: format!(
                                "region {offset}..{} outside the {} bytes of constant data",
                                offset.saturating_add(size),
                                blob.constants.len()
                            ),
                        });
                    }
                    out.push(ConstantSource::Blob {
                        offset: offset as usize,
                        size: size as usize,
                    });
                }
            }
        }
    } else if let Some(bufs) = g.constant_buffer() {
        // Graphs of old exporters keep constants inside the flatbuffer.
        let base = blob.flatbuffer.as_ptr() as usize;
        for b in bufs.iter() {
            let s = b.storage().map(|v| v.bytes()).unwrap_or(&[]);
            out.push(ConstantSource::Flatbuffer {
                offset: (s.as_ptr() as usize).wrapping_sub(base),
                size: s.len(),
            });
        }
    }
    Ok(out)
}

fn read_tensor(
    index: usize,
    t: &fb::XNNTensorValue<'_>,
    quant: Quant,
    nconst: usize,
) -> Result<Value> {
    let err = |what: String| XnnError::Value { index, what };
    let dtype = Datatype::from_fb(t.datatype()).ok_or_else(|| {
        err(format!(
            "datatype {} is not one of the schema's",
            t.datatype().0
        ))
    })?;
    let dq = t.dq_datatype();
    let dq_dtype = if dq == fb::XNNDatatype::xnn_datatype_invalid {
        None
    } else {
        Some(Datatype::from_fb(dq).ok_or_else(|| err(format!("dq_datatype {}", dq.0)))?)
    };
    let dims = u32s(t.dims());
    if dims.len() > MAX_DIMS || t.num_dims() as usize != dims.len() {
        return Err(err(format!(
            "num_dims {} with {} dims (at most {MAX_DIMS})",
            t.num_dims(),
            dims.len()
        )));
    }
    let c = t.constant_buffer_idx();
    if c as usize >= nconst.max(1) && c != 0 {
        return Err(err(format!(
            "constant index {c} outside the graph's {nconst} constants"
        )));
    }
    let flags = t.flags();
    let external =
        (flags & (FLAG_EXTERNAL_INPUT | FLAG_EXTERNAL_OUTPUT) != 0).then_some(t.external_id());
    Ok(Value {
        id: t.id_out(),
        dtype,
        dims: dims.iter().map(|&d| d as usize).collect(),
        constant: (c != 0).then_some(c),
        external,
        flags,
        quant,
        dq_dtype,
    })
}

fn read_value(index: usize, xv: &fb::XValue<'_>, nconst: usize) -> Result<Value> {
    if let Some(t) = xv.xvalue_union_as_xnntensor_value() {
        return read_tensor(index, &t, Quant::None, nconst);
    }
    let q = xv
        .xvalue_union_as_xnnquantized_tensor_value()
        .ok_or(XnnError::Value {
            index,
            what: "neither a tensor nor a quantized tensor".into(),
        })?;
    let t = q.tensor_value().ok_or(XnnError::Value {
        index,
        what: "quantized value without its tensor".into(),
    })?;
    let buffer = |i: u32| (i != 0).then_some(i);
    let quant = if let Some(p) = q.quant_params_as_per_tensor_quant() {
        Quant::PerTensor {
            scale: p.scale(),
            zero_point: p.zero_point(),
        }
    } else if let Some(p) = q.quant_params_as_per_channel_quant() {
        Quant::PerChannel {
            scales: p.scale().map(|s| s.iter().collect()).unwrap_or_default(),
            channel_dim: p.channel_dim().max(0) as usize,
            scale_buffer: buffer(p.scale_buffer_idx()),
            num_scales: p.num_scales() as usize,
        }
    } else if let Some(p) = q.quant_params_as_per_token_dynamic_quant() {
        Quant::PerTokenDynamic {
            num_nonbatch_dims: p.num_nonbatch_dims().max(0) as usize,
        }
    } else if let Some(p) = q.quant_params_as_per_channel_group_quant() {
        Quant::PerChannelGroup {
            scales: p.scale().map(|s| s.iter().collect()).unwrap_or_default(),
            channel_dim: p.channel_dim().max(0) as usize,
            group_size: p.group_size().max(0) as usize,
            scale_buffer: buffer(p.scale_buffer_idx()),
            num_scales: p.num_scales() as usize,
        }
    } else {
        return Err(XnnError::Value {
            index,
            what: "quantized value without quantization parameters".into(),
        });
    };
    read_tensor(index, &t, quant, nconst)
}

macro_rules! one {
    ($n:expr, $uop:ident) => {
        $n.map(|n| Op::Unary {
            op: UnaryOp::$uop,
            input: n.input_id(),
            output: n.output_id(),
        })
    };
}

macro_rules! two {
    ($n:expr, $bop:ident) => {
        $n.map(|n| Op::Binary {
            op: BinaryOp::$bop,
            a: n.input1_id(),
            b: n.input2_id(),
            output: n.output_id(),
        })
    };
}

fn conv(n: fb::_XNNNodeConv<'_>, kind: ConvKind) -> Op {
    Op::Conv {
        kind,
        attrs: ConvAttrs {
            padding: [
                n.padding_top(),
                n.padding_right(),
                n.padding_bottom(),
                n.padding_left(),
            ],
            kernel: [n.kernel_height(), n.kernel_width()],
            stride: [n.subsampling_height(), n.subsampling_width()],
            dilation: [n.dilation_height(), n.dilation_width()],
            group_input_channels: n.group_input_channels(),
            group_output_channels: n.group_output_channels(),
            groups: n.groups(),
            adjustment: [n.adjustment_height(), n.adjustment_width()],
            input: n.input1_id(),
            filter: n.filter_id(),
            bias: n.bias_id(),
            output: n.output_id(),
        },
    }
}

fn pool(n: fb::_XNNPooling2D<'_>) -> PoolAttrs {
    PoolAttrs {
        padding: [
            n.padding_top(),
            n.padding_right(),
            n.padding_bottom(),
            n.padding_left(),
        ],
        window: [n.pooling_height(), n.pooling_width()],
        stride: [n.stride_height(), n.stride_width()],
        dilation: [n.dilation_height(), n.dilation_width()],
        input: n.input_id(),
        output: n.output_id(),
    }
}

fn cat(n: fb::_XNNCat<'_>, count: usize) -> Op {
    let all = [
        n.input1_id(),
        n.input2_id(),
        n.input3_id(),
        n.input4_id(),
        n.input5_id(),
    ];
    Op::Concatenate {
        axis: n.axis() as usize,
        inputs: all[..count].to_vec(),
        output: n.output_id(),
    }
}

/// The schema's name of a node type.
fn type_name(t: fb::XNodeUnion) -> &'static str {
    t.variant_name().unwrap_or("unknown node type")
}

fn read_node(index: usize, xn: &fb::XNode<'_>) -> Result<Node> {
    use fb::XNodeUnion as U;
    let t = xn.xnode_union_type();
    let name = type_name(t);
    let missing = || node_err(index, name, "the node's table is missing");
    let op = match t {
        U::XNNAdd => two!(xn.xnode_union_as_xnnadd(), Add),
        U::XNNSubtract => two!(xn.xnode_union_as_xnnsubtract(), Subtract),
        U::XNNMultiply => two!(xn.xnode_union_as_xnnmultiply(), Multiply),
        U::XNNDiv => two!(xn.xnode_union_as_xnndiv(), Div),
        U::XNNMinimum => two!(xn.xnode_union_as_xnnminimum(), Minimum),
        U::XNNMaximum => two!(xn.xnode_union_as_xnnmaximum(), Maximum),
        U::XNNPReLU => two!(xn.xnode_union_as_xnnpre_lu(), PRelu),
        U::XNNBatchMatrixMultiply => {
            two!(
                xn.xnode_union_as_xnnbatch_matrix_multiply(),
                BatchMatrixMultiply
            )
        }
        U::XNNSoftmax => one!(xn.xnode_union_as_xnnsoftmax(), Softmax),
        U::XNNSigmoid => one!(xn.xnode_union_as_xnnsigmoid(), Sigmoid),
        U::XNNClamp => one!(xn.xnode_union_as_xnnclamp(), Clamp),
        U::XNNFloor => one!(xn.xnode_union_as_xnnfloor(), Floor),
        U::XNNCeiling => one!(xn.xnode_union_as_xnnceiling(), Ceiling),
        U::XNNSquareRoot => one!(xn.xnode_union_as_xnnsquare_root(), SquareRoot),
        U::XNNReciprocalSquareRoot => one!(
            xn.xnode_union_as_xnnreciprocal_square_root(),
            ReciprocalSquareRoot
        ),
        U::XNNSquare => one!(xn.xnode_union_as_xnnsquare(), Square),
        U::XNNAbs => one!(xn.xnode_union_as_xnnabs(), Abs),
        U::XNNNegate => one!(xn.xnode_union_as_xnnnegate(), Negate),
        U::XNNHardswish => one!(xn.xnode_union_as_xnnhardswish(), Hardswish),
        U::XNNGelu => one!(xn.xnode_union_as_xnngelu(), Gelu),
        U::XNNTanh => one!(xn.xnode_union_as_xnntanh(), Tanh),
        U::XNNExp => one!(xn.xnode_union_as_xnnexp(), Exp),
        U::XNNLog => one!(xn.xnode_union_as_xnnlog(), Log),
        U::XNNSin => one!(xn.xnode_union_as_xnnsin(), Sin),
        U::XNNCos => one!(xn.xnode_union_as_xnncos(), Cos),
        U::XNNConvert => one!(xn.xnode_union_as_xnnconvert(), Convert),
        U::XNNCopy => one!(xn.xnode_union_as_xnncopy(), Copy),
        U::XNNGlobalAvgPooling2d => {
            one!(
                xn.xnode_union_as_xnnglobal_avg_pooling_2d(),
                GlobalAvgPooling2d
            )
        }
        U::XNNFullyConnected => {
            xn.xnode_union_as_xnnfully_connected()
                .map(|n| Op::FullyConnected {
                    input: n.input1_id(),
                    filter: n.filter_id(),
                    bias: n.bias_id(),
                    output: n.output_id(),
                })
        }
        U::XNNConv2d => xn
            .xnode_union_as_xnnconv_2d()
            .map(|n| conv(n, ConvKind::Conv2d)),
        U::XNNDepthwiseConv2d => xn
            .xnode_union_as_xnndepthwise_conv_2d()
            .map(|n| conv(n, ConvKind::DepthwiseConv2d)),
        U::XNNConvTranspose2d => xn
            .xnode_union_as_xnnconv_transpose_2d()
            .map(|n| conv(n, ConvKind::ConvTranspose2d)),
        U::XNNAvgPooling2d => xn
            .xnode_union_as_xnnavg_pooling_2d()
            .map(|n| Op::AvgPooling2d(pool(n))),
        U::XNNMaxPooling2d => xn
            .xnode_union_as_xnnmax_pooling_2d()
            .map(|n| Op::MaxPooling2d(pool(n))),
        U::XNNArgMaxPooling2d => xn.xnode_union_as_xnnarg_max_pooling_2d().map(|n| {
            Op::ArgMaxPooling2d {
                attrs: PoolAttrs {
                    padding: [
                        n.padding_top(),
                        n.padding_right(),
                        n.padding_bottom(),
                        n.padding_left(),
                    ],
                    window: [n.pooling_height(), n.pooling_width()],
                    // Argmax pooling's stride is its window.
                    stride: [n.pooling_height(), n.pooling_width()],
                    dilation: [1, 1],
                    input: n.input_id(),
                    output: n.output_value_id(),
                },
                indices: n.output_index_id(),
            }
        }),
        U::XNNStaticTranspose => match xn.xnode_union_as_xnnstatic_transpose() {
            Some(n) => Some(Op::Transpose {
                perm: sized(index, name, "perm", n.num_dims(), n.perm())?,
                input: n.input_id(),
                output: n.output_id(),
            }),
            None => None,
        },
        U::XNNStaticReshape => match xn.xnode_union_as_xnnstatic_reshape() {
            Some(n) => Some(Op::Reshape {
                new_shape: sized(index, name, "new_shape", n.num_dims(), n.new_shape())?,
                input: n.input_id(),
                output: n.output_id(),
            }),
            None => None,
        },
        U::XNNStaticSlice => match xn.xnode_union_as_xnnstatic_slice() {
            Some(n) => Some(Op::Slice {
                offsets: sized(index, name, "offsets", n.num_dims(), n.offsets())?,
                sizes: sized(index, name, "sizes", n.num_dims(), n.sizes())?,
                input: n.input_id(),
                output: n.output_id(),
            }),
            None => None,
        },
        U::XNNStaticConstantPad => match xn.xnode_union_as_xnnstatic_constant_pad() {
            Some(n) => {
                let pre = u32s(n.pre_paddings());
                let post = u32s(n.post_paddings());
                if pre.len() != post.len() || pre.len() > MAX_DIMS {
                    return Err(node_err(
                        index,
                        name,
                        format!("{} pre and {} post paddings", pre.len(), post.len()),
                    ));
                }
                Some(Op::ConstantPad {
                    pre: pre.iter().map(|&p| p as usize).collect(),
                    post: post.iter().map(|&p| p as usize).collect(),
                    value: n.padding_value(),
                    input: n.input_id(),
                    output: n.output_id(),
                })
            }
            None => None,
        },
        U::XNNStaticResizeBilinear2D => {
            xn.xnode_union_as_xnnstatic_resize_bilinear_2_d()
                .map(|n| Op::ResizeBilinear2d {
                    height: n.new_height(),
                    width: n.new_width(),
                    input: n.input_id(),
                    output: n.output_id(),
                })
        }
        U::XNNConcatenate2 => xn.xnode_union_as_xnnconcatenate_2().map(|n| cat(n, 2)),
        U::XNNConcatenate3 => xn.xnode_union_as_xnnconcatenate_3().map(|n| cat(n, 3)),
        U::XNNConcatenate4 => xn.xnode_union_as_xnnconcatenate_4().map(|n| cat(n, 4)),
        U::XNNConcatenate5 => xn.xnode_union_as_xnnconcatenate_5().map(|n| cat(n, 5)),
        U::XNNELU => xn.xnode_union_as_xnnelu().map(|n| Op::Elu {
            alpha: n.alpha(),
            input: n.input_id(),
            output: n.output_id(),
        }),
        U::XNNLeakyReLU => xn.xnode_union_as_xnnleaky_re_lu().map(|n| Op::LeakyRelu {
            slope: n.negative_slope(),
            input: n.input_id(),
            output: n.output_id(),
        }),
        U::XNNScaledDotProductAttention => {
            xn.xnode_union_as_xnnscaled_dot_product_attention()
                .map(|n| Op::ScaledDotProductAttention {
                    query: n.query_id(),
                    key: n.key_id(),
                    value: n.value_id(),
                    scale: n.scale_id(),
                    mask: n.mask_id(),
                    output: n.output_id(),
                })
        }
        _ => {
            return Err(node_err(
                index,
                name,
                format!("node type {} is not in the schema", t.0),
            ))
        }
    };
    let op = op.ok_or_else(missing)?;
    let flags = node_flags(xn);
    let clamp = xn
        .output_min_max()
        .map(|m| (m.output_min(), m.output_max()));
    // XNNPACK refuses such a range when the node is defined; the kernels' clamps
    // assume min <= max.
    if let Some((lo, hi)) = clamp {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(node_err(
                index,
                name,
                format!("output_min_max ({lo}, {hi}) is not a range"),
            ));
        }
    }
    Ok(Node {
        name,
        op,
        flags,
        clamp,
        debug_handle: xn.debug_handle(),
    })
}

/// The `flags` field of whichever table the node holds.
fn node_flags(xn: &fb::XNode<'_>) -> u32 {
    use fb::XNodeUnion as U;
    let t = xn.xnode_union_type();
    // Tables share the field's name but not a type: read it per table family.
    if let Some(n) = xn.xnode_union_as_xnnfully_connected() {
        return n.flags();
    }
    let conv = match t {
        U::XNNConv2d => xn.xnode_union_as_xnnconv_2d(),
        U::XNNDepthwiseConv2d => xn.xnode_union_as_xnndepthwise_conv_2d(),
        U::XNNConvTranspose2d => xn.xnode_union_as_xnnconv_transpose_2d(),
        _ => None,
    };
    if let Some(n) = conv {
        return n.flags();
    }
    let pool = match t {
        U::XNNAvgPooling2d => xn.xnode_union_as_xnnavg_pooling_2d(),
        U::XNNMaxPooling2d => xn.xnode_union_as_xnnmax_pooling_2d(),
        _ => None,
    };
    if let Some(n) = pool {
        return n.flags();
    }
    let two = match t {
        U::XNNAdd => xn.xnode_union_as_xnnadd(),
        U::XNNSubtract => xn.xnode_union_as_xnnsubtract(),
        U::XNNMultiply => xn.xnode_union_as_xnnmultiply(),
        U::XNNDiv => xn.xnode_union_as_xnndiv(),
        U::XNNMinimum => xn.xnode_union_as_xnnminimum(),
        U::XNNMaximum => xn.xnode_union_as_xnnmaximum(),
        U::XNNPReLU => xn.xnode_union_as_xnnpre_lu(),
        U::XNNBatchMatrixMultiply => xn.xnode_union_as_xnnbatch_matrix_multiply(),
        _ => None,
    };
    if let Some(n) = two {
        return n.flags();
    }
    let cat = match t {
        U::XNNConcatenate2 => xn.xnode_union_as_xnnconcatenate_2(),
        U::XNNConcatenate3 => xn.xnode_union_as_xnnconcatenate_3(),
        U::XNNConcatenate4 => xn.xnode_union_as_xnnconcatenate_4(),
        U::XNNConcatenate5 => xn.xnode_union_as_xnnconcatenate_5(),
        _ => None,
    };
    if let Some(n) = cat {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnstatic_transpose() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnstatic_reshape() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnstatic_slice() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnstatic_constant_pad() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnstatic_resize_bilinear_2_d() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnarg_max_pooling_2d() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnelu() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnleaky_re_lu() {
        return n.flags();
    }
    if let Some(n) = xn.xnode_union_as_xnnscaled_dot_product_attention() {
        return n.flags();
    }
    // Every remaining type is a one-input table.
    let one = match t {
        U::XNNSoftmax => xn.xnode_union_as_xnnsoftmax(),
        U::XNNSigmoid => xn.xnode_union_as_xnnsigmoid(),
        U::XNNClamp => xn.xnode_union_as_xnnclamp(),
        U::XNNFloor => xn.xnode_union_as_xnnfloor(),
        U::XNNCeiling => xn.xnode_union_as_xnnceiling(),
        U::XNNSquareRoot => xn.xnode_union_as_xnnsquare_root(),
        U::XNNReciprocalSquareRoot => xn.xnode_union_as_xnnreciprocal_square_root(),
        U::XNNSquare => xn.xnode_union_as_xnnsquare(),
        U::XNNAbs => xn.xnode_union_as_xnnabs(),
        U::XNNNegate => xn.xnode_union_as_xnnnegate(),
        U::XNNHardswish => xn.xnode_union_as_xnnhardswish(),
        U::XNNGelu => xn.xnode_union_as_xnngelu(),
        U::XNNTanh => xn.xnode_union_as_xnntanh(),
        U::XNNExp => xn.xnode_union_as_xnnexp(),
        U::XNNLog => xn.xnode_union_as_xnnlog(),
        U::XNNSin => xn.xnode_union_as_xnnsin(),
        U::XNNCos => xn.xnode_union_as_xnncos(),
        U::XNNConvert => xn.xnode_union_as_xnnconvert(),
        U::XNNCopy => xn.xnode_union_as_xnncopy(),
        U::XNNGlobalAvgPooling2d => xn.xnode_union_as_xnnglobal_avg_pooling_2d(),
        _ => None,
    };
    one.map_or(0, |n| n.flags())
}
