use alloc::string::String;
use core::fmt;

use alloc::vec::Vec;

use crate::ScalarType;

/// What went wrong inside a kernel or while handling method values.
///
/// Argument positions (`arg`) are positions in the operator's argument list; the
/// interpreter adds the operator name and instruction index around these.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The instruction passes a different number of arguments than the kernel takes.
    ArgCount { expected: usize, found: usize },
    /// A value index in the program points past the value table.
    BadValueIndex { index: usize, len: usize },
    /// An argument is of the wrong kind, e.g. an `Int` where a `Tensor` was expected.
    ArgKind {
        arg: usize,
        expected: &'static str,
        found: &'static str,
    },
    /// A tensor argument has a dtype the operation does not accept.
    Dtype {
        arg: usize,
        expected: String,
        found: ScalarType,
    },
    /// Shapes that do not fit together (broadcasting, matmul, concatenation...).
    Shape(String),
    /// A tensor cannot take the requested shape.
    Resize {
        requested: Vec<usize>,
        current: Vec<usize>,
        why: &'static str,
    },
    /// An argument value is out of its valid range.
    InvalidArgument(String),
    /// Tensor data is missing (a freed tensor, an unset input).
    NoData { arg: usize },
    /// Two views of the same memory were requested, one of them mutable.
    Overlap { arg: usize },
    /// A view of memory outside its buffer: a corrupt allocation.
    OutOfBounds(String),
    /// The operation is valid but this build has no implementation for it.
    NotImplemented(String),
    /// Scratch memory the kernel needs is over the method's memory limit or could not be
    /// allocated.
    OutOfMemory { bytes: usize, limit: usize },
    /// The caller's deadline passed or its cancellation token was set.
    Interrupted,
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(msg: impl Into<String>) -> Error {
        Error::Shape(msg.into())
    }
}

/// "argument N: ", or nothing where the position is unknown (`usize::MAX`).
struct ArgPrefix(usize);

impl fmt::Display for ArgPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == usize::MAX {
            Ok(())
        } else {
            write!(f, "argument {}: ", self.0)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ArgCount { expected, found } => {
                write!(
                    f,
                    "expected {expected} arguments, the program passes {found}"
                )
            }
            Error::BadValueIndex { index, len } => {
                write!(
                    f,
                    "value index {index} is out of range (the method has {len} values)"
                )
            }
            Error::ArgKind {
                arg,
                expected,
                found,
            } => {
                write!(f, "{}expected {expected}, found {found}", ArgPrefix(*arg))
            }
            Error::Dtype {
                arg,
                expected,
                found,
            } => {
                write!(
                    f,
                    "{}expected dtype {expected}, found {found}",
                    ArgPrefix(*arg)
                )
            }
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::Resize {
                requested,
                current,
                why,
            } => {
                write!(
                    f,
                    "cannot resize tensor of shape {current:?} to {requested:?}: {why}"
                )
            }
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::NoData { arg } => write!(
                f,
                "{}tensor has no data (unset input or freed value)",
                ArgPrefix(*arg)
            ),
            Error::Overlap { arg } => {
                write!(
                    f,
                    "{}its memory overlaps another operand that is being written",
                    ArgPrefix(*arg)
                )
            }
            Error::OutOfBounds(m) => write!(f, "memory out of bounds: {m}"),
            Error::NotImplemented(m) => write!(f, "not implemented: {m}"),
            Error::OutOfMemory { bytes, limit } if *bytes == usize::MAX => write!(
                f,
                "needs more scratch memory than can be addressed (limit {limit} bytes)"
            ),
            Error::OutOfMemory { bytes, limit } => write!(
                f,
                "needs {bytes} bytes of scratch memory, over the limit of {limit} bytes or unavailable"
            ),
            Error::Interrupted => write!(f, "interrupted (deadline passed or cancelled)"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
