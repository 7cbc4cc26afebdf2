//! Machinery shared by the kernels: broadcasting, strided iteration over any dim order,
//! dtype-generic element access and type promotion.

pub mod copy;
mod elem_io;
pub mod elementwise;
pub mod gemm;
pub mod inline_vec;
mod strided;
pub mod unary;
pub mod work;

pub use elem_io::{load_bool, load_f64, load_i64, store_bool, store_f64, store_i64, ComputeKind};
pub use strided::{
    broadcast_shapes, broadcast_strides, contiguous_strides, for_each_index, for_each_offset,
    for_each_row, same_layout,
};

use ptero_core::{Error, Result, ScalarType};

/// Fails unless `dtype` is one of `allowed`, naming the argument.
pub fn check_dtype(
    arg: usize,
    dtype: ScalarType,
    allowed: &[ScalarType],
    what: &str,
) -> Result<()> {
    if allowed.contains(&dtype) {
        Ok(())
    } else {
        Err(Error::Dtype {
            arg,
            expected: alloc::string::String::from(what),
            found: dtype,
        })
    }
}

/// Fails unless two dtypes are equal.
pub fn check_same_dtype(arg: usize, found: ScalarType, expected: ScalarType) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::Dtype {
            arg,
            expected: alloc::string::ToString::to_string(expected.name()),
            found,
        })
    }
}

/// Real (non-bool) numeric types.
pub const REAL: &[ScalarType] = &[
    ScalarType::Byte,
    ScalarType::Char,
    ScalarType::Short,
    ScalarType::Int,
    ScalarType::Long,
    ScalarType::Half,
    ScalarType::Float,
    ScalarType::Double,
    ScalarType::BFloat16,
    ScalarType::UInt16,
    ScalarType::UInt32,
    ScalarType::UInt64,
];

/// Floating point types.
pub const FLOAT: &[ScalarType] = &[
    ScalarType::Half,
    ScalarType::Float,
    ScalarType::Double,
    ScalarType::BFloat16,
];
