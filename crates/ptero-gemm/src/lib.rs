//! One matrix multiplication for every operator: `C = act(alpha · A·B + beta · bias)`.
//!
//! - Operands are strided views ([`MatRef`]) or packed once ([`PackedA`], [`PackedB`]):
//!   constant weights are packed at load, so `execute` only packs activations.
//! - A register-blocked microkernel written once over [`ptero_simd::Simd`] runs at the
//!   level picked at run time; K is blocked for the caches and C is updated in place.
//! - The epilogue (alpha, a bias per column, per row or a whole matrix scaled by beta —
//!   which also serves as a residual add — and ReLU/clamp) is applied while the tile is
//!   still in registers.
//! - A single row (`M = 1`, decode) or column streams the matrix with dot products or
//!   row updates instead of packing it.
//! - Work is split over a [`Parallel`] executor in blocks of rows × columns; packing
//!   buffers come from a [`SlotArena`] reserved once.
//!
//! ```
//! use ptero_gemm::{gemm, Epilogue, Lhs, MatMut, MatRef, Rhs};
//! use ptero_simd::Serial;
//! let a = [1.0f32, 2.0, 3.0, 4.0]; // 2 × 2
//! let b = [5.0f32, 6.0, 7.0, 8.0]; // 2 × 2
//! let mut c = [0.0f32; 4];
//! gemm(
//!     &Serial,
//!     None,
//!     Lhs::Mat(MatRef::row_major(&a, 2, 2).unwrap()),
//!     Rhs::Mat(MatRef::row_major(&b, 2, 2).unwrap()),
//!     MatMut::row_major(&mut c, 2, 2).unwrap(),
//!     &Epilogue::default(),
//! )
//! .unwrap();
//! assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod batch;
mod conv;
mod depthwise;
mod driver;
mod fused;
mod gemv;
mod kernel;
mod mat;
mod nhwc;
mod nhwc_dw;
mod pack;
mod pixel_rows;
mod qavx2;
mod qconv;
mod qdepthwise;
mod quant;
mod qvnni;
mod stem;
mod winograd;
mod winograd_rows;

pub use batch::{gemm_batched, Batch, MAX_BATCH_DIMS};
pub use conv::{conv2d, conv_scratch_floats, Conv2d, ConvWeights, Image, ImageMut, PackedConv};
pub use driver::{gemm, scratch_floats};
pub use fused::{fused_scratch_floats, pointwise_depthwise, DepthwiseStage, PointwiseStage};
pub use mat::{MatMut, MatRef};
pub use pack::{PackedA, PackedB, PackedBRef};
pub use qconv::{q_conv, QConv, QConvOut, Q_CONV_MAX_K};
pub use qdepthwise::{q8_depthwise, q8_depthwise_packed, QDepthwise, QDwWeights};
pub use quant::{
    q_rows, qd8_gemm, qs8_gemm, quantize, quantize_rows, requantize, QOut, QPackError, QPacked,
    Q4_BLOCK,
};

/// The left operand: `M × K`.
#[derive(Clone, Copy, Debug)]
pub enum Lhs<'a> {
    Mat(MatRef<'a>),
    Packed(&'a PackedA),
}

/// The right operand: `K × N`.
#[derive(Clone, Copy, Debug)]
pub enum Rhs<'a> {
    Mat(MatRef<'a>),
    Packed(PackedBRef<'a>),
}

/// What is added (times `beta`) to the product.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    None,
    /// One value per column (`linear`'s bias), at least `N` long.
    PerCol(&'a [f32]),
    /// One value per row (a convolution's bias when the weights are `A`), at least `M`.
    PerRow(&'a [f32]),
    /// A whole `M × N` matrix (`addmm`'s input, or a residual).
    Mat(MatRef<'a>),
}

/// Applied last, to each output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    /// `max(x, 0)`, NaN kept.
    Relu,
    /// `min(max(x, lo), hi)`, NaN kept: ReLU6, hardtanh, XNNPACK's output min/max.
    Clamp(f32, f32),
    /// `x · sigmoid(x)` (SiLU, swish).
    Silu,
}

/// `C = act(alpha · A·B + beta · bias)`. With `beta == 0` the bias is not read (so a
/// NaN in it does not propagate, as in PyTorch's addmm).
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    pub alpha: f32,
    pub beta: f32,
    pub bias: Bias<'a>,
    pub act: Activation,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue {
            alpha: 1.0,
            beta: 1.0,
            bias: Bias::None,
            act: Activation::None,
        }
    }
}

/// Why a product could not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GemmError {
    /// A view's data is shorter than its shape and strides need.
    OutOfBounds {
        operand: &'static str,
        needed: usize,
        len: usize,
    },
    /// Shapes or strides overflow `usize`.
    Overflow,
    /// The output's strides map two elements to the same memory.
    Aliasing,
    /// Operand shapes disagree.
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// Packed operands were packed for different instruction-set levels.
    LevelMismatch,
    OutOfMemory {
        bytes: usize,
    },
}

impl core::fmt::Display for GemmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GemmError::OutOfBounds {
                operand,
                needed,
                len,
            } => write!(
                f,
                "matrix {operand} needs {needed} elements but its data has {len}"
            ),
            GemmError::Overflow => f.write_str("matrix shape or strides overflow"),
            GemmError::Aliasing => f.write_str("output strides make elements overlap"),
            GemmError::Shape {
                what,
                expected,
                found,
            } => write!(f, "{what}: expected {expected}, found {found}"),
            GemmError::LevelMismatch => {
                f.write_str("operands were packed for different instruction sets")
            }
            GemmError::OutOfMemory { bytes } => {
                write!(f, "cannot allocate {bytes} bytes for matrix packing")
            }
        }
    }
}

#[cfg(test)]
mod tests;
