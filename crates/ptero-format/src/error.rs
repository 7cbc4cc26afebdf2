use alloc::string::String;
use core::fmt;

/// Why a byte buffer is not a usable `.pte` program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the smallest possible program header.
    TooShort { len: usize, needed: usize },
    /// The file identifier at offset 4 is not an ExecuTorch program identifier.
    NotAProgram { found: [u8; 4] },
    /// An ExecuTorch program of a format version this reader does not support.
    IncompatibleVersion {
        found: String,
        supported: &'static str,
    },
    /// The extended header is malformed.
    BadHeader(String),
    /// The file is shorter than its header says.
    Truncated { needed: u64, len: usize },
    /// The flatbuffer verifier rejected the program table.
    InvalidFlatbuffer(String),
    /// An offset, length or index inside the program is out of range.
    OutOfRange { what: String },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::TooShort { len, needed } => write!(
                f,
                "file is too short to be a .pte program: {len} bytes, need at least {needed}"
            ),
            FormatError::NotAProgram { found } => write!(
                f,
                "not an ExecuTorch .pte program: expected file identifier \"ET12\" at byte 4, found {}",
                crate::header::show_magic(found)
            ),
            FormatError::IncompatibleVersion { found, supported } => write!(
                f,
                "unsupported .pte format version: file identifier \"{found}\", this build reads \"{supported}\""
            ),
            FormatError::BadHeader(why) => write!(f, "malformed extended header: {why}"),
            FormatError::Truncated { needed, len } => write!(
                f,
                "file is truncated: header says it holds {needed} bytes, but it has {len}"
            ),
            FormatError::InvalidFlatbuffer(why) => {
                write!(f, "corrupt program flatbuffer: {why}")
            }
            FormatError::OutOfRange { what } => write!(f, "corrupt program: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FormatError {}
