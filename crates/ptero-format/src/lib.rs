//! Reader and writer for ExecuTorch `.pte` program files.
//!
//! A `.pte` file is a flatbuffer (root table `executorch_flatbuffer.Program`, file
//! identifier `ET12`) with an optional 32-byte extended header spliced in after byte 8,
//! followed by data segments (constants, mutable-buffer initial values, delegate blobs,
//! named data). [`PteFile::parse`] validates the header, runs the flatbuffer verifier and
//! checks that every segment lies inside the file, so later code can index segments
//! without re-checking the container.
//!
//! ```
//! use ptero_format::{PteFile, writer::ProgramBuilder};
//! let bytes = ProgramBuilder::new().method("forward", |_m| {}).finish();
//! let pte = PteFile::parse(&bytes).unwrap();
//! assert_eq!(pte.method_names().collect::<Vec<_>>(), ["forward"]);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code, warnings, clippy::all)]
#[rustfmt::skip]
mod program_generated;

/// The generated flatbuffer bindings for `program.fbs` and `scalar_type.fbs`.
pub mod fb {
    pub use crate::program_generated::executorch_flatbuffer::*;
}

#[allow(unsafe_code, warnings, clippy::all)]
#[rustfmt::skip]
mod flat_tensor_generated;

mod error;
mod flat_tensor;
mod header;
mod pte;
pub mod writer;

pub use error::FormatError;
pub use flat_tensor::{DataEntry, FlatTensorFile, FLAT_TENSOR_IDENTIFIER, FLAT_TENSOR_MAGIC};
pub use header::{check_identifier, ExtendedHeader, Identifier, HEADER_MAGIC, MIN_HEAD_BYTES};
pub use pte::PteFile;
