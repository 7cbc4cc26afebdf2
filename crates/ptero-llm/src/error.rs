use std::fmt;

/// What can go wrong generating text.
#[derive(Debug)]
pub enum Error {
    /// The model program failed (load, input or execution).
    Runtime(ptero::Error),
    /// A tokenizer file could not be read or understood.
    Tokenizer { path: String, message: String },
    /// Text could not be encoded or ids decoded.
    Encoding(String),
    /// The model's inputs/outputs are not those of a text decoder.
    Model(String),
    /// A chat template failed to render.
    Template(String),
    /// Invalid generation settings or prompt.
    InvalidArgument(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Runtime(e) => write!(f, "{e}"),
            Error::Tokenizer { path, message } => write!(f, "tokenizer {path}: {message}"),
            Error::Encoding(m) => write!(f, "tokenizer: {m}"),
            Error::Model(m) => write!(f, "not a supported text decoder: {m}"),
            Error::Template(m) => write!(f, "chat template: {m}"),
            Error::InvalidArgument(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ptero::Error> for Error {
    fn from(e: ptero::Error) -> Self {
        Error::Runtime(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
