//! Turns a method's flatbuffer value table into runtime [`Value`]s, checking every index,
//! shape and memory reference on the way.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;

use ptero_core::{Dynamism, ScalarType, Storage, TensorMeta, Value};
use ptero_format::{fb, PteFile};

use crate::method_meta::{IoMeta, MethodMeta, Tag, TensorInfo};
use crate::Error;

pub(crate) fn invalid(method: &str, message: impl Into<String>) -> Error {
    Error::InvalidProgram {
        method: method.into(),
        message: message.into(),
    }
}

/// A method's values plus the initial contents to copy into planned memory.
pub(crate) struct ParsedValues {
    pub values: Vec<Value>,
    /// (value index, byte range in the file) of mutable tensors with initial state.
    pub inits: Vec<(usize, Range<usize>)>,
    /// Tensors whose data is in an external `.ptd` file: (value index, key, whether it
    /// is mutable, i.e. planned and only initialised from the file).
    pub externals: Vec<(usize, String, bool)>,
}

/// Planned buffer sizes (dropping the format's reserved entry 0).
pub(crate) fn planned_sizes(
    plan: &fb::ExecutionPlan<'_>,
    method: &str,
) -> Result<Vec<usize>, Error> {
    let Some(sizes) = plan.non_const_buffer_sizes() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, s) in sizes.iter().enumerate().skip(1) {
        if s < 0 {
            return Err(invalid(
                method,
                format!("planned buffer {i} has negative size {s}"),
            ));
        }
        out.push(
            usize::try_from(s)
                .map_err(|_| invalid(method, format!("planned buffer {i} is too large")))?,
        );
    }
    Ok(out)
}

fn dynamism(d: fb::TensorShapeDynamism) -> Dynamism {
    match d {
        fb::TensorShapeDynamism::DYNAMIC_BOUND => Dynamism::DynamicBound,
        fb::TensorShapeDynamism::DYNAMIC_UNBOUND => Dynamism::DynamicUnbound,
        _ => Dynamism::Static,
    }
}

fn parse_tensor(
    pte: &PteFile<'_>,
    t: fb::Tensor<'_>,
    idx: usize,
    method: &str,
    planned: &[usize],
    inits: &mut Vec<(usize, Range<usize>)>,
    externals: &mut Vec<(usize, String, bool)>,
) -> Result<TensorMeta, Error> {
    let st = t.scalar_type().0;
    let dtype = ScalarType::from_code(st as i64).ok_or_else(|| {
        invalid(
            method,
            format!("value {idx}: unknown scalar type code {st}"),
        )
    })?;
    let mut sizes = Vec::new();
    for s in t.sizes().into_iter().flatten() {
        if s < 0 {
            return Err(invalid(
                method,
                format!("value {idx}: negative tensor size {s}"),
            ));
        }
        sizes.push(s as usize);
    }
    let order: Vec<u8> = t
        .dim_order()
        .map(|d| d.bytes().to_vec())
        .unwrap_or_default();
    if t.storage_offset() != 0 {
        return Err(invalid(
            method,
            format!(
                "value {idx}: non-zero storage_offset {}",
                t.storage_offset()
            ),
        ));
    }
    let mut meta = TensorMeta::new(
        dtype,
        &sizes,
        &order,
        dynamism(t.shape_dynamism()),
        Storage::None,
    )
    .map_err(|e| invalid(method, format!("value {idx}: {e}")))?;
    let nbytes = meta.nbytes();
    let external = t
        .extra_tensor_info()
        .is_some_and(|e| e.location() == fb::TensorDataLocation::EXTERNAL);
    if external {
        let name = t
            .extra_tensor_info()
            .and_then(|e| e.fully_qualified_name())
            .ok_or_else(|| {
                invalid(
                    method,
                    format!("value {idx}: external tensor without a fully qualified name"),
                )
            })?;
        // Resolved when the method is loaded, from the program's data files.
        externals.push((idx, name.to_string(), t.allocation_info().is_some()));
        if t.allocation_info().is_none() {
            return Ok(meta);
        }
    }
    let buffer_idx = t.data_buffer_idx() as usize;
    match t.allocation_info() {
        None if buffer_idx > 0 => {
            let r = pte
                .constant_range(buffer_idx, nbytes)
                .map_err(|e| invalid(method, format!("value {idx}: {e}")))?;
            meta.set_storage(Storage::Constant { offset: r.start }, nbytes);
        }
        None => {}
        Some(a) => {
            let id = a.memory_id() as usize;
            if id == 0 || id > planned.len() {
                return Err(invalid(
                    method,
                    format!(
                        "value {idx}: memory_id {id} does not name one of the {} planned buffers",
                        planned.len()
                    ),
                ));
            }
            let offset = (a.memory_offset_low() as u64) | ((a.memory_offset_high() as u64) << 32);
            let end = offset.checked_add(nbytes as u64);
            if end.is_none_or(|e| e > planned[id - 1] as u64) {
                return Err(invalid(
                    method,
                    format!(
                        "value {idx}: {nbytes} bytes at offset {offset} overflow planned buffer {id} ({} bytes)",
                        planned[id - 1]
                    ),
                ));
            }
            meta.set_storage(
                Storage::Buffer {
                    id: (id - 1) as u32,
                    offset: offset as usize,
                },
                nbytes,
            );
            if buffer_idx > 0 {
                let r = pte
                    .mutable_init_range(buffer_idx, nbytes)
                    .map_err(|e| invalid(method, format!("value {idx}: {e}")))?;
                inits.push((idx, r));
            }
        }
    }
    Ok(meta)
}

fn check_index(i: i64, n: usize, idx: usize, method: &str) -> Result<u32, Error> {
    if i < 0 || i as u64 >= n as u64 {
        return Err(invalid(
            method,
            format!("value {idx}: list item {i} is not a value index (the method has {n})"),
        ));
    }
    Ok(i as u32)
}

/// Parses every value of `plan`.
pub(crate) fn parse_values(
    pte: &PteFile<'_>,
    plan: &fb::ExecutionPlan<'_>,
    method: &str,
    planned: &[usize],
) -> Result<ParsedValues, Error> {
    let fvals = plan.values();
    let n = fvals.map_or(0, |v| v.len());
    let mut values = Vec::with_capacity(n);
    let mut inits = Vec::new();
    let mut externals = Vec::new();
    for (idx, ev) in fvals.into_iter().flatten().enumerate() {
        use fb::KernelTypes as K;
        let v = match ev.val_type() {
            K::NONE | K::Null => Value::None,
            K::Int => Value::Int(ev.val_as_int().map_or(0, |x| x.int_val())),
            K::Bool => Value::Bool(ev.val_as_bool().is_some_and(|x| x.bool_val())),
            K::Double => Value::Double(ev.val_as_double().map_or(0.0, |x| x.double_val())),
            K::String => Value::String(
                ev.val_as_string()
                    .and_then(|s| s.string_val())
                    .unwrap_or("")
                    .to_string()
                    .into_boxed_str(),
            ),
            K::IntList => {
                let mut items = Vec::new();
                for i in ev
                    .val_as_int_list()
                    .and_then(|l| l.items())
                    .into_iter()
                    .flatten()
                {
                    items.push(check_index(i, n, idx, method)?);
                }
                Value::IntList(items)
            }
            K::DoubleList => Value::DoubleList(
                ev.val_as_double_list()
                    .and_then(|l| l.items())
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
            K::BoolList => Value::BoolList(
                ev.val_as_bool_list()
                    .and_then(|l| l.items())
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
            K::TensorList => {
                let mut items = Vec::new();
                for i in ev
                    .val_as_tensor_list()
                    .and_then(|l| l.items())
                    .into_iter()
                    .flatten()
                {
                    items.push(check_index(i as i64, n, idx, method)?);
                }
                Value::TensorList(items)
            }
            K::OptionalTensorList => {
                let mut items = Vec::new();
                for i in ev
                    .val_as_optional_tensor_list()
                    .and_then(|l| l.items())
                    .into_iter()
                    .flatten()
                {
                    // The exporter writes -1 for a `None` entry.
                    items.push(if i == -1 {
                        ptero_core::NONE_INDEX
                    } else {
                        check_index(i as i64, n, idx, method)?
                    });
                }
                Value::OptionalTensorList(items)
            }
            K::Tensor => {
                let t = ev
                    .val_as_tensor()
                    .ok_or_else(|| invalid(method, format!("value {idx}: empty tensor")))?;
                Value::Tensor(Box::new(parse_tensor(
                    pte,
                    t,
                    idx,
                    method,
                    planned,
                    &mut inits,
                    &mut externals,
                )?))
            }
            other => {
                return Err(invalid(
                    method,
                    format!("value {idx}: unknown value kind {}", other.0),
                ))
            }
        };
        values.push(v);
    }
    // List items must be of the right kind.
    for (idx, v) in values.iter().enumerate() {
        let bad = match v {
            Value::IntList(items) => items
                .iter()
                .find(|&&i| !matches!(values[i as usize], Value::Int(_))),
            Value::TensorList(items) => items
                .iter()
                .find(|&&i| !matches!(values[i as usize], Value::Tensor(_))),
            Value::OptionalTensorList(items) => items.iter().find(|&&i| {
                i != ptero_core::NONE_INDEX
                    && !matches!(values[i as usize], Value::Tensor(_) | Value::None)
            }),
            _ => None,
        };
        if let Some(&i) = bad {
            return Err(invalid(
                method,
                format!(
                    "value {idx}: {} item {i} is a {}",
                    v.kind(),
                    values[i as usize].kind()
                ),
            ));
        }
    }
    Ok(ParsedValues {
        values,
        inits,
        externals,
    })
}

pub(crate) fn io_indices(
    list: Option<flatbuffers::Vector<'_, i32>>,
    n: usize,
    method: &str,
    what: &str,
) -> Result<Vec<u32>, Error> {
    let mut out = Vec::new();
    for i in list.into_iter().flatten() {
        if i < 0 || i as usize >= n {
            return Err(invalid(
                method,
                format!("{what} refers to value {i}, but the method has {n} values"),
            ));
        }
        out.push(i as u32);
    }
    Ok(out)
}

fn io_meta(v: &Value) -> IoMeta {
    let (tag, value) = match v {
        Value::None => (Tag::None, None),
        Value::Int(i) => (Tag::Int, Some(i.to_string())),
        Value::Bool(b) => (Tag::Bool, Some(b.to_string())),
        Value::Double(d) => (Tag::Double, Some(d.to_string())),
        Value::String(s) => (Tag::String, Some(s.to_string())),
        Value::IntList(_) => (Tag::ListInt, None),
        Value::DoubleList(_) => (Tag::ListDouble, None),
        Value::BoolList(_) => (Tag::ListBool, None),
        Value::TensorList(_) => (Tag::ListTensor, None),
        Value::OptionalTensorList(_) => (Tag::ListOptionalTensor, None),
        Value::Tensor(_) => (Tag::Tensor, None),
    };
    let tensor = v.as_tensor().map(|t| TensorInfo {
        dtype: t.dtype,
        sizes: t.sizes().to_vec(),
        dim_order: t.dim_order().to_vec(),
        dynamism: t.dynamism,
        planned: matches!(t.storage, Storage::Buffer { .. }),
        nbytes: t.nbytes(),
    });
    IoMeta { tag, tensor, value }
}

/// Builds the metadata of one method (parsing and checking its values).
/// What the program says about one method before any instruction is looked at: values,
/// I/O indices and planned memory. Errors here make the whole program unreadable.
pub(crate) struct MethodHead {
    pub planned: Vec<usize>,
    pub values: ParsedValues,
    pub inputs: Vec<u32>,
    pub outputs: Vec<u32>,
}

pub(crate) fn method_head(
    pte: &PteFile<'_>,
    plan: &fb::ExecutionPlan<'_>,
) -> Result<MethodHead, Error> {
    let name = plan.name().unwrap_or("");
    let planned = planned_sizes(plan, name)?;
    let values = parse_values(pte, plan, name, &planned)?;
    let n = values.values.len();
    let inputs = io_indices(plan.inputs(), n, name, "an input")?;
    let outputs = io_indices(plan.outputs(), n, name, "an output")?;
    Ok(MethodHead {
        planned,
        values,
        inputs,
        outputs,
    })
}

/// The metadata of a method.
pub(crate) fn method_meta(plan: &fb::ExecutionPlan<'_>, head: &MethodHead) -> MethodMeta {
    let name = plan.name().unwrap_or("").to_string();
    let values = &head.values.values;
    let operators = plan
        .operators()
        .into_iter()
        .flatten()
        .map(|op| operator_name(op.name().unwrap_or(""), op.overload().unwrap_or("")))
        .collect();
    let backends = plan
        .delegates()
        .into_iter()
        .flatten()
        .map(|d| d.id().unwrap_or("").to_string())
        .collect();
    let num_instructions = plan
        .chains()
        .into_iter()
        .flatten()
        .map(|c| c.instructions().map_or(0, |i| i.len()))
        .sum();
    MethodMeta {
        inputs: head
            .inputs
            .iter()
            .map(|&i| io_meta(&values[i as usize]))
            .collect(),
        outputs: head
            .outputs
            .iter()
            .map(|&i| io_meta(&values[i as usize]))
            .collect(),
        name,
        planned_buffers: head.planned.clone(),
        operators,
        backends,
        num_instructions,
        num_values: values.len(),
    }
}

/// The registry name of an operator: `name.overload`, or `name` without an overload.
pub(crate) fn operator_name(name: &str, overload: &str) -> String {
    if overload.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{overload}")
    }
}
