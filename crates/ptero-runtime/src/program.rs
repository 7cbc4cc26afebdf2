use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use ptero_core::{AlignedBuf, KernelRegistry, SharedBytes};
use ptero_format::PteFile;

use crate::method_meta::MethodMeta;
use crate::parse::method_meta;
use crate::{BackendRegistry, Error, Method};

/// A loaded `.pte` program: its bytes and the metadata of its methods.
///
/// Cloning is cheap (the bytes are shared); methods loaded from it keep the bytes alive,
/// so constants are read in place from the file or mapping, never copied.
#[derive(Clone)]
pub struct Program {
    data: SharedBytes,
    metas: Arc<Vec<MethodMeta>>,
}

impl core::fmt::Debug for Program {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Program")
            .field("bytes", &self.bytes().len())
            .field("methods", &self.method_names())
            .finish()
    }
}

impl Program {
    /// Loads a program from bytes (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Program, Error> {
        let buf = AlignedBuf::try_zeroed(bytes.len()).ok_or_else(|| Error::OutOfMemory {
            method: String::new(),
            bytes: bytes.len(),
        });
        let mut buf = buf?;
        buf.as_mut_slice().copy_from_slice(bytes);
        Program::from_shared(Arc::new(buf))
    }

    /// Loads a program from shared bytes, which must be 16-byte aligned (constants are
    /// read in place).
    pub fn from_shared(data: SharedBytes) -> Result<Program, Error> {
        let bytes = (*data).as_ref();
        if !(bytes.as_ptr() as usize).is_multiple_of(16) {
            return Program::from_bytes(bytes);
        }
        let pte = PteFile::parse(bytes)?;
        let mut metas = Vec::new();
        for plan in pte.program().execution_plan().into_iter().flatten() {
            metas.push(method_meta(&pte, &plan)?);
        }
        Ok(Program {
            data,
            metas: Arc::new(metas),
        })
    }

    /// Memory-maps and loads a program file.
    #[cfg(feature = "std")]
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Program, Error> {
        let path = path.as_ref();
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Err(Error::Io {
                path: path.display().to_string(),
                message: "is a directory".into(),
            });
        }
        if meta.len() == 0 {
            // Empty files cannot be mapped; report them as what they are.
            return Program::from_bytes(&[]).map_err(|e| match e {
                Error::Format(f) => Error::Format(f),
                e => e,
            });
        }
        let map = ptero_core::MappedFile::open(path).map_err(io)?;
        Program::from_shared(Arc::new(map))
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        (*self.data).as_ref()
    }

    /// A verified view of the container, for tools that inspect segments and headers.
    pub fn pte(&self) -> Result<PteFile<'_>, Error> {
        Ok(PteFile::parse(self.bytes())?)
    }

    pub fn num_methods(&self) -> usize {
        self.metas.len()
    }

    pub fn method_names(&self) -> Vec<&str> {
        self.metas.iter().map(|m| m.name.as_str()).collect()
    }

    /// Metadata of method `name`.
    pub fn method_meta(&self, name: &str) -> Result<&MethodMeta, Error> {
        self.metas
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::MethodNotFound {
                name: name.to_string(),
                available: self.metas.iter().map(|m| m.name.clone()).collect(),
            })
    }

    /// Metadata of every method, in file order.
    pub fn method_metas(&self) -> &[MethodMeta] {
        &self.metas
    }

    /// Prepares method `name` for execution.
    pub fn load_method(
        &self,
        name: &str,
        kernels: &KernelRegistry,
        backends: &BackendRegistry,
    ) -> Result<Method, Error> {
        self.method_meta(name)?;
        Method::load(self, name, kernels, backends)
    }

    pub(crate) fn shared(&self) -> SharedBytes {
        self.data.clone()
    }
}
