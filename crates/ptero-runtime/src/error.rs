use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ptero_format::FormatError;

/// Everything that can go wrong loading or running a program.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The file could not be read.
    Io { path: String, message: String },
    /// The bytes are not a valid `.pte` program.
    Format(FormatError),
    /// The program is structurally invalid (bad indices, impossible tensors...).
    InvalidProgram { method: String, message: String },
    /// No method of that name.
    MethodNotFound {
        name: String,
        available: Vec<String>,
    },
    /// Operators without a kernel, all of them at once.
    MissingOperators {
        method: String,
        operators: Vec<String>,
    },
    /// A delegate whose backend is not registered (or not available).
    UnknownBackend {
        method: String,
        backend: String,
        available: Vec<String>,
    },
    /// A backend failed to initialize its delegate.
    BackendInit {
        method: String,
        backend: String,
        message: String,
    },
    /// An input is missing or does not match the method's signature.
    Input { index: usize, message: String },
    /// An output index is out of range or an output is not what was asked for.
    Output { index: usize, message: String },
    /// An instruction failed.
    Execution {
        method: String,
        instruction: usize,
        operator: String,
        source: ptero_core::Error,
    },
    /// The instruction budget ran out (a program that loops forever).
    InstructionBudget { method: String, limit: u64 },
    /// Memory for the method (`what`: planned arenas, input/output buffers) could not be
    /// allocated.
    OutOfMemory {
        method: String,
        what: &'static str,
        bytes: usize,
    },
    /// The method needs more memory than its limit allows.
    MemoryLimit {
        method: String,
        what: &'static str,
        bytes: u64,
        limit: usize,
    },
    /// A loop did more work than its limit allows (see `Limits::loop_work_factor`).
    WorkBudget {
        method: String,
        instruction: usize,
        work: u64,
        limit: u64,
    },
    /// The caller's deadline passed or its cancellation token was set.
    Interrupted { method: String, instruction: usize },
    /// A user-supplied value is invalid (shape/data mismatch...).
    InvalidArgument(String),
}

/// Writes through to a formatter, escaping control characters other than newline and
/// tab: names in messages come from files (operators, backends, methods, strings) and must
/// not reach a terminal as escape sequences.
struct Escaped<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            if c.is_control() && c != '\n' && c != '\t' {
                write!(self.0, "\\u{{{:x}}}", c as u32)?;
            } else {
                fmt::Write::write_char(self.0, c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        let f = &mut Escaped(f);
        match self {
            Error::Io { path, message } => write!(f, "cannot read {path}: {message}"),
            Error::Format(e) => write!(f, "{e}"),
            Error::InvalidProgram { method, message } => write!(f, "invalid program (method '{method}'): {message}"),
            Error::MethodNotFound { name, available } => {
                write!(f, "no method named '{name}'; the program has: {}", available.join(", "))
            }
            Error::MissingOperators { method, operators } => write!(
                f,
                "method '{method}' uses {} operator{} with no kernel: {}",
                operators.len(),
                if operators.len() == 1 { "" } else { "s" },
                operators
                    .iter()
                    .map(|o| if o.is_empty() { "'' (unnamed)".into() } else { o.clone() })
                    .collect::<Vec<String>>()
                    .join(", ")
            ),
            Error::UnknownBackend { method, backend, available } => write!(
                f,
                "method '{method}' is delegated to backend '{backend}', which is not available (registered: {})",
                if available.is_empty() { "none".into() } else { available.join(", ") }
            ),
            Error::BackendInit { method, backend, message } => {
                write!(f, "method '{method}': backend '{backend}' failed to initialize: {message}")
            }
            Error::Input { index, message } => write!(f, "input {index}: {message}"),
            Error::Output { index, message } => write!(f, "output {index}: {message}"),
            Error::Execution { method, instruction, operator, source } => {
                write!(f, "method '{method}', instruction {instruction} ({operator}): {source}")
            }
            Error::InstructionBudget { method, limit } => {
                write!(f, "method '{method}' ran more than {limit} instructions; stopped (does the program loop?)")
            }
            Error::OutOfMemory { method, what, bytes } => {
                write!(f, "method '{method}': cannot allocate {bytes} bytes of {what}")
            }
            Error::MemoryLimit { method, what, bytes, limit } => write!(
                f,
                "method '{method}' needs {bytes} bytes of {what}, over the memory limit of {limit} bytes"
            ),
            Error::WorkBudget { method, instruction, work, limit } => write!(
                f,
                "method '{method}', instruction {instruction}: a loop did {work} units of work, over its limit of {limit}; stopped (does the program loop for ever?)"
            ),
            Error::Interrupted { method, instruction } => {
                write!(f, "method '{method}' interrupted at instruction {instruction} (deadline passed or cancelled)")
            }
            Error::InvalidArgument(m) => write!(f, "{m}"),
        }
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
