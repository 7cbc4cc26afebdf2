//! Run PyTorch ExecuTorch (`.pte`) programs in Rust.
//!
//! [`Module`] is the easy way in, in the spirit of ExecuTorch's `Module`: load a file,
//! call `forward`, get tensors back. Methods are loaded lazily on first use and stay
//! loaded, so state such as a KV cache persists between calls.
//!
//! ```no_run
//! use ptero::{Module, Tensor, EValue};
//! let mut module = Module::from_file("model.pte")?;
//! let x = Tensor::from_slice(&[0.5f32; 16], &[4, 4])?;
//! let outputs = module.forward(&[EValue::Tensor(x)])?;
//! let y = outputs[0].as_tensor().unwrap();
//! println!("{:?} {:?}", y.sizes(), y.as_slice::<f32>()?);
//! # Ok::<(), ptero::Error>(())
//! ```
//!
//! Files are memory-mapped by default. A mapped file that is truncated while in use kills
//! the process (SIGBUS); when model files may change under you, read them instead:
//!
//! ```no_run
//! use ptero::{LoadMode, Module, ModuleOptions};
//! let options = ModuleOptions::new().load_mode(LoadMode::Read);
//! let mut module = Module::from_file_with("model.pte", &options)?;
//! # Ok::<(), ptero::Error>(())
//! ```
#![forbid(unsafe_code)]

mod module;
#[cfg(feature = "ndarray")]
mod ndarray_conv;
pub mod npy;
#[cfg(feature = "ndarray")]
pub use ndarray_conv::NdarrayExt;

pub use module::{default_threads, open_program_file, LoadMode, Module, ModuleOptions};
pub use ptero_core::{
    CancelToken, Dynamism, Interrupt, KernelRegistry, MappedFile, Parallel, ScalarType, SharedBytes,
};
/// Devtools: bundled programs, the event [`Recorder`](devtools::Recorder), ETDump and
/// Chrome trace writers.
pub use ptero_devtools as devtools;
pub use ptero_runtime::{
    Backend, BackendRegistry, Deadline, EValue, Error, IoMeta, Limits, LoadOptions, Method,
    MethodMeta, Observer, Program, Tag, Tensor, TensorInfo, DEFAULT_MAX_MEMORY,
};
pub use ptero_simd::pool::ThreadPool;

/// A registry with every kernel this build has (the portable set).
pub fn default_kernels() -> KernelRegistry {
    ptero_kernels::portable()
}

/// A registry with every backend this build has: `XnnpackBackend`.
pub fn default_backends() -> BackendRegistry {
    let mut r = BackendRegistry::new();
    r.register(alloc_backend(ptero_xnnpack::XnnpackBackend));
    r
}

fn alloc_backend(b: impl Backend + 'static) -> std::sync::Arc<dyn Backend> {
    std::sync::Arc::new(b)
}

/// What an `XnnpackBackend` delegate holds (node types, datatypes, constant bytes).
pub use ptero_xnnpack::Summary as XnnpackSummary;
