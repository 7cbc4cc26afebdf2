//! Errors of the XNNPACK delegate: each names where in the blob it arose.

use alloc::string::String;
use core::fmt;

/// What is wrong with a delegate blob or a call of it.
#[derive(Debug, Clone, PartialEq)]
pub enum XnnError {
    /// The `XH00` header or a region it names does not fit the blob.
    Header(String),
    /// The graph flatbuffer failed verification or has the wrong identifier.
    Flatbuffer(String),
    /// A value of the graph (by its index in `xvalues`).
    Value { index: usize, what: String },
    /// A node of the graph (by its index in `xnodes`, with its type).
    Node {
        index: usize,
        node: &'static str,
        what: String,
    },
    /// A node type or datatype this build does not run.
    Unsupported {
        index: usize,
        node: &'static str,
        what: String,
    },
    /// Constant data: a region out of range or a named key the program lacks.
    Constant { value: usize, what: String },
}

impl fmt::Display for XnnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XnnError::Header(w) => write!(f, "XNNPACK blob header: {w}"),
            XnnError::Flatbuffer(w) => write!(f, "XNNPACK graph: {w}"),
            XnnError::Value { index, what } => write!(f, "XNNPACK value {index}: {what}"),
            XnnError::Node { index, node, what } => {
                write!(f, "XNNPACK node {index} ({node}): {what}")
            }
            XnnError::Unsupported { index, node, what } => {
                write!(f, "XNNPACK node {index} ({node}) is not supported: {what}")
            }
            XnnError::Constant { value, what } => {
                write!(f, "XNNPACK constant data of value {value}: {what}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for XnnError {}

pub type Result<T> = core::result::Result<T, XnnError>;
