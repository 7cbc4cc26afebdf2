use alloc::string::String;
use alloc::vec::Vec;

use ptero_core::{Dynamism, ScalarType};

/// The kind of a method input or output (ExecuTorch's `Tag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    None,
    Tensor,
    String,
    Double,
    Int,
    Bool,
    ListBool,
    ListDouble,
    ListInt,
    ListTensor,
    ListOptionalTensor,
}

impl Tag {
    pub fn name(self) -> &'static str {
        match self {
            Tag::None => "None",
            Tag::Tensor => "Tensor",
            Tag::String => "String",
            Tag::Double => "Double",
            Tag::Int => "Int",
            Tag::Bool => "Bool",
            Tag::ListBool => "List[Bool]",
            Tag::ListDouble => "List[Double]",
            Tag::ListInt => "List[Int]",
            Tag::ListTensor => "List[Tensor]",
            Tag::ListOptionalTensor => "List[Optional[Tensor]]",
        }
    }
}

/// Static description of a tensor input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: ScalarType,
    /// The traced shape; for dynamic tensors, the upper bound.
    pub sizes: Vec<usize>,
    pub dim_order: Vec<u8>,
    pub dynamism: Dynamism,
    /// True when the tensor lives in planned memory.
    pub planned: bool,
    /// Bytes at the traced (maximum) shape.
    pub nbytes: usize,
}

/// One input or output of a method.
#[derive(Debug, Clone, PartialEq)]
pub struct IoMeta {
    pub tag: Tag,
    pub tensor: Option<TensorInfo>,
    /// For primitive inputs, the value baked into the program.
    pub value: Option<String>,
}

/// What a method looks like from outside, without loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodMeta {
    pub name: String,
    pub inputs: Vec<IoMeta>,
    pub outputs: Vec<IoMeta>,
    /// Sizes of the planned memory buffers (the format's reserved entry 0 dropped).
    pub planned_buffers: Vec<usize>,
    /// Operator names (`aten::add.out`), in the method's operator table order.
    pub operators: Vec<String>,
    /// Backend ids of the method's delegates, in order.
    pub backends: Vec<String>,
    pub num_instructions: usize,
    pub num_values: usize,
}

impl MethodMeta {
    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }
    pub fn num_outputs(&self) -> usize {
        self.outputs.len()
    }
    /// Total planned memory in bytes.
    pub fn planned_bytes(&self) -> usize {
        // Sizes come from the file: saturate instead of overflowing.
        self.planned_buffers
            .iter()
            .fold(0usize, |a, &b| a.saturating_add(b))
    }
    pub fn uses_backend(&self, name: &str) -> bool {
        self.backends.iter().any(|b| b == name)
    }
}
