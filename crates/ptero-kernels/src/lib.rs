//! Portable CPU kernels for the core ATen operator set (ExecuTorch's `kernels/portable`).
//!
//! One op family per module, each with a `register` function adding its kernels to a
//! [`KernelRegistry`] under their ExecuTorch names (`aten::add.out`). Every kernel takes
//! any dim order, broadcasts like PyTorch and follows PyTorch's type promotion; the
//! shared machinery for that is in [`util`].
//!
//! ```
//! let reg = ptero_kernels::portable();
//! assert!(reg.contains("aten::add.out"));
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use ptero_core::KernelRegistry;

pub mod util;

mod binary;
mod conv;
mod matmul;
mod norm;
mod pool;
mod softmax;

#[doc(hidden)]
pub mod testing;

/// A registry with every portable kernel.
pub fn portable() -> KernelRegistry {
    let mut reg = KernelRegistry::new();
    register_all(&mut reg);
    reg
}

/// Adds every portable kernel to `reg`.
pub fn register_all(reg: &mut KernelRegistry) {
    binary::register(reg);
    matmul::register(reg);
    conv::register(reg);
    norm::register(reg);
    softmax::register(reg);
    pool::register(reg);
}
