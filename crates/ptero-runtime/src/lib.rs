//! Loads ExecuTorch `.pte` programs and executes their methods.
//!
//! [`Program`] holds the file bytes (memory-mapped or owned) and its method metadata.
//! [`Program::load_method`] resolves every operator against a [`KernelRegistry`] and every
//! delegate against a [`BackendRegistry`], allocates the method's planned arenas once,
//! and returns a [`Method`] that runs without allocating.
//!
//! ```no_run
//! use ptero_runtime::{Program, BackendRegistry, EValue, Tensor};
//! # fn kernels() -> ptero_core::KernelRegistry { ptero_core::KernelRegistry::new() }
//! let program = Program::from_file("model.pte")?;
//! let mut method = program.load_method("forward", &kernels(), &BackendRegistry::new())?;
//! method.set_input(0, &EValue::Tensor(Tensor::from_slice(&[1.0f32, 2.0], &[1, 2])?))?;
//! method.execute()?;
//! let out = method.output(0)?;
//! # Ok::<(), ptero_runtime::Error>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod backend;
mod error;
mod evalue;
mod fuse;
mod layout;
mod limits;
mod method;
mod method_meta;
mod parse;
mod plan;
mod program;

pub use backend::{
    Backend, BackendInitContext, BackendRegistry, CompileSpec, DelegateHandle, NodeObserver,
};
pub use error::Error;
pub use evalue::{EValue, Tensor};
#[cfg(feature = "std")]
pub use limits::Deadline;
pub use limits::{Limits, LoadOptions, DEFAULT_MAX_MEMORY};
pub use method::{Method, Observer};
pub use method_meta::{IoMeta, MethodMeta, Tag, TensorInfo};
pub use program::Program;

pub use ptero_core::{CancelToken, Dynamism, Interrupt, KernelRegistry, ScalarType};

/// Most instructions one `execute` may run (ExecuTorch's `ET_MAX_INSTRUCTIONS`).
pub const MAX_INSTRUCTIONS: u64 = 10_000_000;
