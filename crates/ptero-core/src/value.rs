use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::TensorMeta;

/// One entry of a method's value table (ExecuTorch's `EValue`).
///
/// List variants that the format boxes (`IntList`, `TensorList`, `OptionalTensorList`)
/// hold indices into the same value table: their items can be computed at run time by
/// earlier instructions (e.g. `sym_size` results).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Int(i64),
    Bool(bool),
    Double(f64),
    String(Box<str>),
    IntList(Vec<u32>),
    DoubleList(Vec<f64>),
    BoolList(Vec<bool>),
    TensorList(Vec<u32>),
    /// Indices of `Tensor` or `None` values.
    OptionalTensorList(Vec<u32>),
    Tensor(Box<TensorMeta>),
}

impl Value {
    /// The kind's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Int(_) => "Int",
            Value::Bool(_) => "Bool",
            Value::Double(_) => "Double",
            Value::String(_) => "String",
            Value::IntList(_) => "IntList",
            Value::DoubleList(_) => "DoubleList",
            Value::BoolList(_) => "BoolList",
            Value::TensorList(_) => "TensorList",
            Value::OptionalTensorList(_) => "OptionalTensorList",
            Value::Tensor(_) => "Tensor",
        }
    }

    pub fn as_tensor(&self) -> Option<&TensorMeta> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_tensor_mut(&mut self) -> Option<&mut TensorMeta> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
}
