//! Types shared by the Ptero runtime and its kernels: scalar types, shapes, tensor
//! metadata, method values, planned memory and the arguments a kernel receives.
//!
//! Kernels see their operands through [`KernelArgs`], which resolves argument value
//! indices, checks kinds and dtypes, and hands out tensor data as typed slices. Data lives
//! in the method's planned arenas or in the program's constant data; [`KernelArgs`]
//! guarantees at run time that a mutable view never overlaps another view.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod dims;
mod dtype;
mod element;
mod error;
mod kernel;
#[cfg(feature = "std")]
mod mapped;
mod memory;
mod registry;
mod tensor;
mod value;

pub use dims::{Dims, MAX_DIMS};
pub use dtype::ScalarType;
pub use element::Element;
pub use error::Error;
pub use kernel::{
    normalize_dim, scratch_vec, BorrowSet, CancelToken, ExecContext, IntListRef, Interrupt,
    KernelArgs, KernelFn, PrepareFn, Prepared, Scalar, TensorListRef, DEFAULT_SCRATCH_LIMIT,
    NONE_INDEX,
};
#[cfg(feature = "std")]
pub use mapped::{read_full, MappedFile};
pub use memory::{AlignedBuf, Memory, SharedBytes};
pub use ptero_simd::{Parallel, Serial, SlotArena};
pub use registry::{KernelEntry, KernelRegistry};
pub use tensor::{Dynamism, Storage, TensorMeta, TensorMut, TensorRef};
pub use value::Value;

/// Result with the kernel-level [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
