//! Builds `.pte` programs: used by tests to make valid and deliberately broken programs,
//! and by future compilers of ours to emit them.
//!
//! The layout matches the official exporter: constants go to one 16-byte-aligned constant
//! segment, initial values of mutable tensors to one mutable-data segment, then delegate
//! blobs and named data get a segment each; every segment starts on a 128-byte boundary,
//! and the `eh00` header is written only when there are segments.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::fb;
use crate::header::{ExtendedHeader, HEADER_LEN};

const SEGMENT_ALIGN: usize = 128;
const CONSTANT_ALIGN: usize = 16;

/// Where a tensor's data lives.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// No storage: an unplanned input/output or a placeholder.
    None,
    /// Constant bytes, stored in the constant segment.
    Constant(Vec<u8>),
    /// Memory-planned: `memory_id` is 1-based, as in the official format.
    Planned { memory_id: u32, offset: u64 },
    /// Memory-planned with an initial value (trainable weights, initialized buffers),
    /// stored in the mutable-data segment and copied in when the method loads.
    PlannedInit {
        memory_id: u32,
        offset: u64,
        init: Vec<u8>,
    },
}

/// A tensor value.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub scalar_type: fb::ScalarType,
    pub sizes: Vec<i32>,
    /// Empty means the contiguous order `0..rank`.
    pub dim_order: Vec<u8>,
    pub dynamism: fb::TensorShapeDynamism,
    pub data: TensorData,
}

impl TensorSpec {
    /// A static tensor with the contiguous dim order.
    pub fn new(scalar_type: fb::ScalarType, sizes: &[i32], data: TensorData) -> TensorSpec {
        TensorSpec {
            scalar_type,
            sizes: sizes.to_vec(),
            dim_order: Vec::new(),
            dynamism: fb::TensorShapeDynamism::STATIC,
            data,
        }
    }
}

/// One entry of a method's value table.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueSpec {
    Null,
    Int(i64),
    Bool(bool),
    Double(f64),
    String(String),
    /// Value indices of `Int` values (the format boxes int lists).
    IntList(Vec<i64>),
    DoubleList(Vec<f64>),
    BoolList(Vec<bool>),
    TensorList(Vec<i32>),
    OptionalTensorList(Vec<i32>),
    Tensor(TensorSpec),
}

/// One instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum InstrSpec {
    Kernel { op_index: i32, args: Vec<i32> },
    Delegate { delegate_index: i32, args: Vec<i32> },
    Move { from: i32, to: i32 },
    JumpFalse { cond: i32, destination: i32 },
    Free { value: i32 },
}

/// A delegate: backend id, processed blob and compile specs.
#[derive(Debug, Clone, PartialEq)]
pub struct DelegateSpec {
    pub id: String,
    pub processed: Vec<u8>,
    pub compile_specs: Vec<(String, Vec<u8>)>,
}

/// One method (execution plan).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MethodSpec {
    pub name: String,
    pub values: Vec<ValueSpec>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub instructions: Vec<InstrSpec>,
    /// `(name, overload)` pairs, e.g. `("aten::add", "out")`.
    pub operators: Vec<(String, String)>,
    pub delegates: Vec<DelegateSpec>,
    /// Sizes of planned buffers; the leading reserved entry is added by the writer.
    pub planned_buffers: Vec<i64>,
}

impl MethodSpec {
    /// Appends a value and returns its index.
    pub fn value(&mut self, v: ValueSpec) -> i32 {
        self.values.push(v);
        (self.values.len() - 1) as i32
    }

    /// Returns the index of operator `name.overload`, adding it if new.
    pub fn operator(&mut self, name: &str, overload: &str) -> i32 {
        if let Some(i) = self
            .operators
            .iter()
            .position(|(n, o)| n == name && o == overload)
        {
            return i as i32;
        }
        self.operators.push((name.into(), overload.into()));
        (self.operators.len() - 1) as i32
    }

    /// Appends a kernel call to `name.overload` with the given argument value indices.
    pub fn kernel(&mut self, name: &str, overload: &str, args: &[i32]) {
        let op_index = self.operator(name, overload);
        self.instructions.push(InstrSpec::Kernel {
            op_index,
            args: args.to_vec(),
        });
    }
}

/// Builds a whole program.
#[derive(Debug, Clone, Default)]
pub struct ProgramBuilder {
    methods: Vec<MethodSpec>,
    named_data: Vec<(String, Vec<u8>)>,
}

fn align(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

impl ProgramBuilder {
    pub fn new() -> ProgramBuilder {
        ProgramBuilder::default()
    }

    /// Adds a method built by `f`.
    pub fn method(mut self, name: &str, f: impl FnOnce(&mut MethodSpec)) -> ProgramBuilder {
        let mut m = MethodSpec {
            name: name.into(),
            ..Default::default()
        };
        f(&mut m);
        self.methods.push(m);
        self
    }

    /// Adds a named-data blob (each gets its own segment, as the exporter does).
    pub fn named_data(mut self, key: &str, bytes: &[u8]) -> ProgramBuilder {
        self.named_data.push((key.into(), bytes.to_vec()));
        self
    }

    /// Adds a method given whole.
    pub fn push(mut self, m: MethodSpec) -> ProgramBuilder {
        self.methods.push(m);
        self
    }

    /// Serializes the program to `.pte` bytes.
    pub fn finish(&self) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::with_capacity(4096);
        let mut pools = Pools {
            constants: Vec::new(),
            constant_offsets: vec![0],
            mutable: Vec::new(),
            mutable_offsets: vec![0],
        };
        // Segment payloads, in order: constants first (if any), then delegates.
        let mut segments: Vec<Vec<u8>> = Vec::new();
        let mut delegate_segment: Vec<Vec<usize>> = Vec::new();
        let has_constants = self.methods.iter().any(|m| {
            m.values.iter().any(
                |v| matches!(v, ValueSpec::Tensor(t) if matches!(t.data, TensorData::Constant(_))),
            )
        });
        let has_mutable = self.methods.iter().any(|m| {
            m.values.iter().any(
                |v| matches!(v, ValueSpec::Tensor(t) if matches!(t.data, TensorData::PlannedInit { .. })),
            )
        });
        if has_constants {
            segments.push(Vec::new());
        }
        let mutable_segment = segments.len();
        if has_mutable {
            segments.push(Vec::new());
        }
        for m in &self.methods {
            let mut idx = Vec::new();
            for d in &m.delegates {
                segments.push(d.processed.clone());
                idx.push(segments.len() - 1);
            }
            delegate_segment.push(idx);
        }

        let mut plans = Vec::new();
        for (mi, m) in self.methods.iter().enumerate() {
            let mut values = Vec::new();
            for v in &m.values {
                let (ty, val) = write_value(&mut fbb, v, &mut pools);
                values.push(fb::EValue::create(
                    &mut fbb,
                    &fb::EValueArgs {
                        val_type: ty,
                        val: Some(val),
                    },
                ));
            }
            let values = fbb.create_vector(&values);
            let mut instrs = Vec::new();
            for ins in &m.instructions {
                let (ty, off) = match ins {
                    InstrSpec::Kernel { op_index, args } => {
                        let args = fbb.create_vector(args);
                        let k = fb::KernelCall::create(
                            &mut fbb,
                            &fb::KernelCallArgs {
                                op_index: *op_index,
                                args: Some(args),
                            },
                        );
                        (fb::InstructionArguments::KernelCall, k.as_union_value())
                    }
                    InstrSpec::Delegate {
                        delegate_index,
                        args,
                    } => {
                        let args = fbb.create_vector(args);
                        let d = fb::DelegateCall::create(
                            &mut fbb,
                            &fb::DelegateCallArgs {
                                delegate_index: *delegate_index,
                                args: Some(args),
                            },
                        );
                        (fb::InstructionArguments::DelegateCall, d.as_union_value())
                    }
                    InstrSpec::Move { from, to } => {
                        let c = fb::MoveCall::create(
                            &mut fbb,
                            &fb::MoveCallArgs {
                                move_from: *from,
                                move_to: *to,
                            },
                        );
                        (fb::InstructionArguments::MoveCall, c.as_union_value())
                    }
                    InstrSpec::JumpFalse { cond, destination } => {
                        let c = fb::JumpFalseCall::create(
                            &mut fbb,
                            &fb::JumpFalseCallArgs {
                                cond_value_index: *cond,
                                destination_instruction: *destination,
                            },
                        );
                        (fb::InstructionArguments::JumpFalseCall, c.as_union_value())
                    }
                    InstrSpec::Free { value } => {
                        let c = fb::FreeCall::create(
                            &mut fbb,
                            &fb::FreeCallArgs {
                                value_index: *value,
                            },
                        );
                        (fb::InstructionArguments::FreeCall, c.as_union_value())
                    }
                };
                instrs.push(fb::Instruction::create(
                    &mut fbb,
                    &fb::InstructionArgs {
                        instr_args_type: ty,
                        instr_args: Some(off),
                    },
                ));
            }
            let instrs = fbb.create_vector(&instrs);
            let chain_inputs = fbb.create_vector(&m.inputs);
            let chain_outputs = fbb.create_vector(&m.outputs);
            let chain = fb::Chain::create(
                &mut fbb,
                &fb::ChainArgs {
                    inputs: Some(chain_inputs),
                    outputs: Some(chain_outputs),
                    instructions: Some(instrs),
                    stacktrace: None,
                },
            );
            let chains = fbb.create_vector(&[chain]);
            let mut ops = Vec::new();
            for (n, o) in &m.operators {
                let n = fbb.create_string(n);
                let o = fbb.create_string(o);
                ops.push(fb::Operator::create(
                    &mut fbb,
                    &fb::OperatorArgs {
                        name: Some(n),
                        overload: Some(o),
                    },
                ));
            }
            let ops = fbb.create_vector(&ops);
            let mut dels = Vec::new();
            for (di, d) in m.delegates.iter().enumerate() {
                let id = fbb.create_string(&d.id);
                let processed = fb::BackendDelegateDataReference::create(
                    &mut fbb,
                    &fb::BackendDelegateDataReferenceArgs {
                        location: fb::DataLocation::SEGMENT,
                        index: delegate_segment[mi][di] as u32,
                    },
                );
                let mut specs = Vec::new();
                for (k, v) in &d.compile_specs {
                    let k = fbb.create_string(k);
                    let v = fbb.create_vector(v);
                    specs.push(fb::CompileSpec::create(
                        &mut fbb,
                        &fb::CompileSpecArgs {
                            key: Some(k),
                            value: Some(v),
                        },
                    ));
                }
                let specs = fbb.create_vector(&specs);
                dels.push(fb::BackendDelegate::create(
                    &mut fbb,
                    &fb::BackendDelegateArgs {
                        id: Some(id),
                        processed: Some(processed),
                        compile_specs: Some(specs),
                    },
                ));
            }
            let dels = fbb.create_vector(&dels);
            let mut sizes = vec![0i64];
            sizes.extend_from_slice(&m.planned_buffers);
            let sizes = fbb.create_vector(&sizes);
            let inputs = fbb.create_vector(&m.inputs);
            let outputs = fbb.create_vector(&m.outputs);
            let name = fbb.create_string(&m.name);
            plans.push(fb::ExecutionPlan::create(
                &mut fbb,
                &fb::ExecutionPlanArgs {
                    name: Some(name),
                    container_meta_type: None,
                    values: Some(values),
                    inputs: Some(inputs),
                    outputs: Some(outputs),
                    chains: Some(chains),
                    operators: Some(ops),
                    delegates: Some(dels),
                    non_const_buffer_sizes: Some(sizes),
                    non_const_buffer_device: None,
                },
            ));
        }
        if has_constants {
            segments[0] = core::mem::take(&mut pools.constants);
        }
        if has_mutable {
            segments[mutable_segment] = core::mem::take(&mut pools.mutable);
        }
        let named_first = segments.len();
        for (_, blob) in &self.named_data {
            segments.push(blob.clone());
        }
        let plans = fbb.create_vector(&plans);
        // Segment offsets are relative to the segment base.
        let mut seg_tables = Vec::new();
        let mut cursor = 0usize;
        let mut seg_offsets = Vec::new();
        for s in &segments {
            cursor = align(cursor, SEGMENT_ALIGN);
            seg_offsets.push(cursor);
            seg_tables.push(fb::DataSegment::create(
                &mut fbb,
                &fb::DataSegmentArgs {
                    offset: cursor as u64,
                    size_: s.len() as u64,
                },
            ));
            cursor += s.len();
        }
        let seg_vec = fbb.create_vector(&seg_tables);
        let constant_segment = if has_constants {
            let offs = fbb.create_vector(&pools.constant_offsets);
            Some(fb::SubsegmentOffsets::create(
                &mut fbb,
                &fb::SubsegmentOffsetsArgs {
                    segment_index: 0,
                    offsets: Some(offs),
                },
            ))
        } else {
            None
        };
        let mutable_data_segments = if has_mutable {
            let offs = fbb.create_vector(&pools.mutable_offsets);
            let sub = fb::SubsegmentOffsets::create(
                &mut fbb,
                &fb::SubsegmentOffsetsArgs {
                    segment_index: mutable_segment as u32,
                    offsets: Some(offs),
                },
            );
            Some(fbb.create_vector(&[sub]))
        } else {
            None
        };
        let mut named = Vec::new();
        for (i, (key, _)) in self.named_data.iter().enumerate() {
            let key = fbb.create_string(key);
            named.push(fb::NamedData::create(
                &mut fbb,
                &fb::NamedDataArgs {
                    key: Some(key),
                    segment_index: (named_first + i) as u32,
                },
            ));
        }
        let named_data = if named.is_empty() {
            None
        } else {
            Some(fbb.create_vector(&named))
        };
        let root = fb::Program::create(
            &mut fbb,
            &fb::ProgramArgs {
                version: 0,
                execution_plan: Some(plans),
                constant_buffer: None,
                backend_delegate_data: None,
                segments: Some(seg_vec),
                constant_segment,
                mutable_data_segments,
                named_data,
            },
        );
        fb::finish_program_buffer(&mut fbb, root);
        let body = fbb.finished_data();
        if segments.is_empty() {
            return body.to_vec();
        }
        // Splice the extended header in after byte 8 and shift the root offset.
        let header_len = HEADER_LEN as usize;
        let program_size = body.len() + header_len;
        let base = align(program_size, SEGMENT_ALIGN);
        let header = ExtendedHeader {
            program_size: program_size as u64,
            segment_base_offset: base as u64,
            segment_data_size: cursor as u64,
        };
        let mut out = Vec::with_capacity(base + cursor);
        let root_off = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) + HEADER_LEN;
        out.extend_from_slice(&root_off.to_le_bytes());
        out.extend_from_slice(&body[4..8]);
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&body[8..]);
        for (s, off) in segments.iter().zip(seg_offsets) {
            out.resize(base + off, 0);
            out.extend_from_slice(s);
        }
        out
    }
}

/// Constant and mutable-initial-value bytes, packed 16-byte aligned; offset entry 0 is
/// the format's reserved placeholder.
struct Pools {
    constants: Vec<u8>,
    constant_offsets: Vec<u64>,
    mutable: Vec<u8>,
    mutable_offsets: Vec<u64>,
}

fn pack(pool: &mut Vec<u8>, offsets: &mut Vec<u64>, bytes: &[u8]) -> u32 {
    let start = align(pool.len(), CONSTANT_ALIGN);
    pool.resize(start, 0);
    pool.extend_from_slice(bytes);
    offsets.push(start as u64);
    (offsets.len() - 1) as u32
}

fn write_value<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    v: &ValueSpec,
    pools: &mut Pools,
) -> (fb::KernelTypes, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match v {
        ValueSpec::Null => (
            fb::KernelTypes::Null,
            fb::Null::create(fbb, &fb::NullArgs {}).as_union_value(),
        ),
        ValueSpec::Int(i) => (
            fb::KernelTypes::Int,
            fb::Int::create(fbb, &fb::IntArgs { int_val: *i }).as_union_value(),
        ),
        ValueSpec::Bool(b) => (
            fb::KernelTypes::Bool,
            fb::Bool::create(fbb, &fb::BoolArgs { bool_val: *b }).as_union_value(),
        ),
        ValueSpec::Double(d) => (
            fb::KernelTypes::Double,
            fb::Double::create(fbb, &fb::DoubleArgs { double_val: *d }).as_union_value(),
        ),
        ValueSpec::String(s) => {
            let s = fbb.create_string(s);
            (
                fb::KernelTypes::String,
                fb::String::create(
                    fbb,
                    &fb::StringArgs {
                        string_val: Some(s),
                    },
                )
                .as_union_value(),
            )
        }
        ValueSpec::IntList(items) => {
            let items = fbb.create_vector(items);
            (
                fb::KernelTypes::IntList,
                fb::IntList::create(fbb, &fb::IntListArgs { items: Some(items) }).as_union_value(),
            )
        }
        ValueSpec::DoubleList(items) => {
            let items = fbb.create_vector(items);
            (
                fb::KernelTypes::DoubleList,
                fb::DoubleList::create(fbb, &fb::DoubleListArgs { items: Some(items) })
                    .as_union_value(),
            )
        }
        ValueSpec::BoolList(items) => {
            let items = fbb.create_vector(items);
            (
                fb::KernelTypes::BoolList,
                fb::BoolList::create(fbb, &fb::BoolListArgs { items: Some(items) })
                    .as_union_value(),
            )
        }
        ValueSpec::TensorList(items) => {
            let items = fbb.create_vector(items);
            (
                fb::KernelTypes::TensorList,
                fb::TensorList::create(fbb, &fb::TensorListArgs { items: Some(items) })
                    .as_union_value(),
            )
        }
        ValueSpec::OptionalTensorList(items) => {
            let items = fbb.create_vector(items);
            (
                fb::KernelTypes::OptionalTensorList,
                fb::OptionalTensorList::create(
                    fbb,
                    &fb::OptionalTensorListArgs { items: Some(items) },
                )
                .as_union_value(),
            )
        }
        ValueSpec::Tensor(t) => {
            let sizes = fbb.create_vector(&t.sizes);
            let order: Vec<u8> = if t.dim_order.is_empty() {
                (0..t.sizes.len() as u8).collect()
            } else {
                t.dim_order.clone()
            };
            let dim_order = fbb.create_vector(&order);
            let (data_buffer_idx, allocation_info) = match &t.data {
                TensorData::None => (0, None),
                TensorData::Constant(bytes) => (
                    pack(&mut pools.constants, &mut pools.constant_offsets, bytes),
                    None,
                ),
                TensorData::Planned { memory_id, offset } => {
                    (0, Some(allocation(fbb, *memory_id, *offset)))
                }
                TensorData::PlannedInit {
                    memory_id,
                    offset,
                    init,
                } => {
                    let idx = pack(&mut pools.mutable, &mut pools.mutable_offsets, init);
                    (idx, Some(allocation(fbb, *memory_id, *offset)))
                }
            };
            let t = fb::Tensor::create(
                fbb,
                &fb::TensorArgs {
                    scalar_type: t.scalar_type,
                    storage_offset: 0,
                    sizes: Some(sizes),
                    dim_order: Some(dim_order),
                    requires_grad: false,
                    data_buffer_idx,
                    allocation_info,
                    layout: 0,
                    shape_dynamism: t.dynamism,
                    extra_tensor_info: None,
                },
            );
            (fb::KernelTypes::Tensor, t.as_union_value())
        }
    }
}

fn allocation<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    memory_id: u32,
    offset: u64,
) -> WIPOffset<fb::AllocationDetails<'b>> {
    fb::AllocationDetails::create(
        fbb,
        &fb::AllocationDetailsArgs {
            memory_id,
            memory_offset_low: offset as u32,
            memory_offset_high: (offset >> 32) as u32,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PteFile;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn roundtrip_with_constants_and_header() {
        let bytes = ProgramBuilder::new()
            .method("forward", |m| {
                let w = m.value(ValueSpec::Tensor(TensorSpec::new(
                    fb::ScalarType::FLOAT,
                    &[2],
                    TensorData::Constant(f32_bytes(&[1.0, 2.0])),
                )));
                let x = m.value(ValueSpec::Tensor(TensorSpec::new(
                    fb::ScalarType::FLOAT,
                    &[2],
                    TensorData::Planned {
                        memory_id: 1,
                        offset: 0,
                    },
                )));
                m.planned_buffers.push(8);
                m.inputs.push(x);
                m.outputs.push(w);
            })
            .finish();
        let pte = PteFile::parse(&bytes).unwrap();
        let h = pte.header().unwrap();
        assert_eq!(h.segment_base_offset % 128, 0);
        let r = pte.constant_range(1, 8).unwrap();
        assert_eq!(&bytes[r], &f32_bytes(&[1.0, 2.0])[..]);
        assert!(pte.constant_range(1, 9).is_err());
        assert!(pte.constant_range(2, 1).is_err());
        let plan = pte.method("forward").unwrap();
        assert_eq!(plan.values().unwrap().len(), 2);
    }

    #[test]
    fn mutable_init_and_named_data() {
        let bytes = ProgramBuilder::new()
            .named_data("weights", &[9, 8, 7])
            .method("forward", |m| {
                m.value(ValueSpec::Tensor(TensorSpec::new(
                    fb::ScalarType::FLOAT,
                    &[2],
                    TensorData::PlannedInit {
                        memory_id: 1,
                        offset: 0,
                        init: f32_bytes(&[5.0, 6.0]),
                    },
                )));
                m.planned_buffers.push(8);
            })
            .finish();
        let pte = PteFile::parse(&bytes).unwrap();
        let r = pte.mutable_init_range(1, 8).unwrap();
        assert_eq!(&bytes[r], &f32_bytes(&[5.0, 6.0])[..]);
        assert!(pte.mutable_init_range(1, 9).is_err());
        assert!(pte.mutable_init_range(2, 1).is_err());
        assert_eq!(pte.named_data("weights"), Some(&[9u8, 8, 7][..]));
        assert_eq!(pte.named_data("other"), None);
    }

    #[test]
    fn no_segments_means_no_header() {
        let bytes = ProgramBuilder::new()
            .method("a", |_| {})
            .method("b", |_| {})
            .finish();
        let pte = PteFile::parse(&bytes).unwrap();
        assert!(pte.header().is_none());
        assert_eq!(pte.method_names().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn corrupt_files_are_errors() {
        let bytes = ProgramBuilder::new()
            .method("forward", |m| {
                m.value(ValueSpec::Tensor(TensorSpec::new(
                    fb::ScalarType::FLOAT,
                    &[4],
                    TensorData::Constant(f32_bytes(&[1.0; 4])),
                )));
            })
            .finish();
        for cut in 0..bytes.len() {
            let _ = PteFile::parse(&bytes[..cut]);
            assert!(
                PteFile::parse(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
        let mut other = bytes.clone();
        other[4..8].copy_from_slice(b"ET13");
        assert!(matches!(
            PteFile::parse(&other),
            Err(crate::FormatError::IncompatibleVersion { .. })
        ));
        other[4..8].copy_from_slice(b"ZZZZ");
        assert!(matches!(
            PteFile::parse(&other),
            Err(crate::FormatError::NotAProgram { .. })
        ));
    }
}
