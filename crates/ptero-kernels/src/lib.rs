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
// Table-driven tests use tuple rows.
#![cfg_attr(test, allow(clippy::type_complexity))]

extern crate alloc;

use ptero_core::KernelRegistry;

pub mod util;

mod activation;
mod binary;
mod compare;
mod conv;
mod copy;
mod creation;
mod distance;
mod grid_sample;
mod hadamard;
mod index;
mod llm;
mod logical;
mod masked;
mod matmul;
mod mutation;
mod norm;
mod pad;
mod pool;
mod prim;
mod quantized;
mod random;
mod reduce;
mod sdpa_order;
mod shape;
mod softmax;
mod unary;
mod upsample;
mod where_op;

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
    activation::register(reg);
    binary::register(reg);
    compare::register(reg);
    conv::register(reg);
    copy::register(reg);
    creation::register(reg);
    distance::register(reg);
    grid_sample::register(reg);
    hadamard::register(reg);
    index::register(reg);
    llm::register(reg);
    logical::register(reg);
    masked::register(reg);
    matmul::register(reg);
    mutation::register(reg);
    norm::register(reg);
    pad::register(reg);
    pool::register(reg);
    prim::register(reg);
    quantized::register(reg);
    random::register(reg);
    reduce::register(reg);
    shape::register(reg);
    softmax::register(reg);
    unary::register(reg);
    upsample::register(reg);
    where_op::register(reg);
}
