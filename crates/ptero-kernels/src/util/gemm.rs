//! Glue between kernels and `ptero-gemm`: views over tensor data, errors, and the
//! prepare step that packs constant weights once.

use alloc::boxed::Box;

use ptero_core::{Error, KernelArgs, Prepared, Result, ScalarType, Storage};
use ptero_gemm::{GemmError, MatMut, MatRef, PackedA, PackedB};

/// A gemm error as a kernel error (shapes and bounds were checked by the caller, so
/// these mean an operand's view does not fit its data).
pub fn err(e: GemmError) -> Error {
    match e {
        GemmError::OutOfMemory { bytes } => Error::OutOfMemory {
            bytes,
            limit: usize::MAX,
        },
        GemmError::Shape { .. } => Error::shape(alloc::format!("{e}")),
        _ => Error::OutOfBounds(alloc::format!("{e}")),
    }
}

/// `rows × cols` at element `off` of `data` with strides `rs`, `cs`.
pub fn mat<'a>(
    data: &'a [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<MatRef<'a>> {
    let d = data
        .get(off..)
        .ok_or_else(|| Error::OutOfBounds("matrix view starts past its tensor".into()))?;
    MatRef::new(d, rows, cols, rs, cs).map_err(err)
}

/// Writable `rows × cols` at element `off` of `data`.
pub fn mat_mut<'a>(
    data: &'a mut [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<MatMut<'a>> {
    let d = data
        .get_mut(off..)
        .ok_or_else(|| Error::OutOfBounds("matrix view starts past its output".into()))?;
    MatMut::new(d, rows, cols, rs, cs).map_err(err)
}

/// A constant weight packed at load, for the instruction that reads it.
pub enum PackedWeight {
    /// The right operand `K × N`.
    B(PackedB),
    /// The left operand `M × K`.
    A(PackedA),
}

/// True when argument `i` is an f32 tensor stored in the program's constant data.
pub fn is_const_f32(a: &KernelArgs<'_>, i: usize) -> bool {
    matches!(a.opt_meta(i), Ok(Some(m)) if m.dtype == ScalarType::Float
        && matches!(m.storage, Storage::Constant { .. }))
}

/// The prepare result for a packed weight: the state plus the packing scratch gemm
/// needs per thread for the other operand.
pub fn prepared(w: Option<PackedWeight>) -> Prepared {
    Prepared {
        state: w.map(|w| Box::new(w) as Box<dyn core::any::Any + Send + Sync>),
        scratch_floats: ptero_gemm::scratch_floats(),
    }
}
