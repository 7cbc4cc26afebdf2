use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use ptero_core::{AlignedBuf, KernelRegistry, SharedBytes};
use ptero_format::PteFile;

use core::ops::Range;

use crate::method_meta::MethodMeta;
use crate::parse::{method_head, method_meta};
use crate::plan::{parse_plan, MethodPlan};
use crate::{BackendRegistry, Error, Method};

/// A loaded `.pte` program: its bytes and the metadata of its methods.
///
/// Cloning is cheap (the bytes are shared); methods loaded from it keep the bytes alive,
/// so constants are read in place from the file or mapping, never copied.
#[derive(Clone)]
pub struct Program {
    data: SharedBytes,
    metas: Arc<Vec<MethodMeta>>,
    /// Parsed once when the program is read. A method whose instructions are invalid
    /// keeps its error here, so the rest of the program stays usable.
    plans: Arc<Vec<Result<Arc<MethodPlan>, Error>>>,
    /// Named data (e.g. delegate weights): key and byte range in the file.
    named: Arc<Vec<(String, Range<usize>)>>,
    /// External data files (`.ptd`): their bytes and entries, searched after `named`.
    data_files: Vec<(SharedBytes, Arc<Vec<ptero_format::DataEntry>>)>,
    /// The files behind `data` and `data_files`, where they are mapped: delegates that
    /// keep packed copies of their weights let the mapped pages go.
    #[cfg(feature = "std")]
    mapped: Vec<Arc<ptero_core::MappedFile>>,
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
        let mut buf = AlignedBuf::try_zeroed(bytes.len()).ok_or_else(|| {
            Error::InvalidArgument(alloc::format!(
                "cannot allocate {} bytes to copy the program",
                bytes.len()
            ))
        })?;
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
        let mut plans = Vec::new();
        for plan in pte.program().execution_plan().into_iter().flatten() {
            let head = method_head(&pte, &plan)?;
            metas.push(method_meta(&plan, &head));
            plans.push(parse_plan(&pte, &plan, head).map(Arc::new));
        }
        let mut named = Vec::new();
        for d in pte.program().named_data().into_iter().flatten() {
            if let Ok(r) = pte.segment_range(d.segment_index() as usize) {
                named.push((d.key().unwrap_or("").to_string(), r));
            }
        }
        Ok(Program {
            data,
            metas: Arc::new(metas),
            plans: Arc::new(plans),
            named: Arc::new(named),
            data_files: Vec::new(),
            #[cfg(feature = "std")]
            mapped: Vec::new(),
        })
    }

    /// Adds an external data file (`.ptd`, FlatTensor) whose entries the program's
    /// methods and delegates read by key (weights exported with
    /// `external_constants`). The bytes are used in place.
    ///
    /// ```
    /// # let mut program = ptero_runtime::Program::from_bytes(
    /// #     &ptero_format::writer::ProgramBuilder::new().method("forward", |_m| {}).finish()).unwrap();
    /// use std::sync::Arc;
    /// let bad: ptero_core::SharedBytes = Arc::new(vec![0u8; 64]);
    /// assert!(program.add_data(bad).is_err());
    /// ```
    pub fn add_data(&mut self, data: SharedBytes) -> Result<(), Error> {
        let file = ptero_format::FlatTensorFile::parse((*data).as_ref())?;
        self.data_files
            .push((data, Arc::new(file.entries().to_vec())));
        Ok(())
    }

    /// Memory-maps a `.ptd` data file and adds it ([`Program::add_data`]).
    #[cfg(feature = "std")]
    pub fn add_data_file(&mut self, path: impl AsRef<std::path::Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let io = |e: std::io::Error| io_error(path, e.to_string());
        let meta = std::fs::metadata(path).map_err(io)?;
        let file = Arc::new(if meta.is_file() && meta.len() > 0 {
            ptero_core::MappedFile::open(path).map_err(io)?
        } else {
            ptero_core::MappedFile::read(path, usize::MAX).map_err(io)?
        });
        let bytes: SharedBytes = file.clone();
        self.add_data(bytes).map_err(|e| match e {
            Error::Format(f) => io_error(path, f.to_string()),
            e => e,
        })?;
        self.mapped.push(file);
        Ok(())
    }

    /// Memory-maps and loads a program file: constants are used in place, and pages are
    /// read from disk as they are touched.
    ///
    /// The file must not be truncated while the program (or a method loaded from it) is
    /// alive: reading a mapped page past the new end kills the process with SIGBUS. Use
    /// [`Program::read_file`] for files that may change, and for pipes and devices,
    /// which cannot be mapped.
    #[cfg(feature = "std")]
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Program, Error> {
        let path = path.as_ref();
        let io = |e: std::io::Error| io_error(path, e.to_string());
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Err(io_error(path, "is a directory".into()));
        }
        if !meta.is_file() {
            return Err(io_error(
                path,
                "is not a regular file, so it cannot be memory-mapped; read it into memory \
                 instead (Program::read_file, or --no-mmap)"
                    .into(),
            ));
        }
        if meta.len() == 0 {
            // Empty files cannot be mapped; report them as what they are.
            return Program::from_bytes(&[]);
        }
        let map = Arc::new(ptero_core::MappedFile::open(path).map_err(io)?);
        let mut program = Program::from_shared(map.clone())?;
        program.mapped.push(map);
        Ok(program)
    }

    /// Reads a program file into memory (no mapping) and loads it: at most `max_bytes`
    /// are read (e.g. [`crate::Limits::max_memory`]), in one fallible allocation for a
    /// regular file, growing with the data for a pipe or device.
    ///
    /// Costs the file's size in memory, but a file truncated or rewritten later cannot
    /// affect the loaded program.
    #[cfg(feature = "std")]
    pub fn read_file(
        path: impl AsRef<std::path::Path>,
        max_bytes: usize,
    ) -> Result<Program, Error> {
        let path = path.as_ref();
        let file = ptero_core::MappedFile::read(path, max_bytes)
            .map_err(|e| io_error(path, e.to_string()))?;
        Program::from_shared(Arc::new(file))
    }

    /// Lets the pages of `part` (bytes of this program or of its data files) leave
    /// resident memory where the file is mapped; see [`ptero_core::MappedFile::release`].
    pub fn release(&self, part: &[u8]) {
        #[cfg(feature = "std")]
        for m in &self.mapped {
            m.release(part);
        }
        #[cfg(not(feature = "std"))]
        let _ = part;
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

    /// Bytes of the constant tensors method `name` reads outside delegates (in the file or
    /// a `.ptd`), leaving out those any operator for which `skip(operator)` holds takes as
    /// an argument: a decoder reads one row of an embedding table per token, not the table.
    ///
    /// ```
    /// use ptero_runtime::Program;
    /// use ptero_format::writer::ProgramBuilder;
    /// let program = Program::from_bytes(&ProgramBuilder::new().method("forward", |_m| {}).finish()).unwrap();
    /// assert_eq!(program.constant_bytes("forward", |_| false).unwrap(), 0);
    /// ```
    pub fn constant_bytes(&self, name: &str, skip: impl Fn(&str) -> bool) -> Result<u64, Error> {
        use crate::plan::Instr;
        let (_, plan) = self.plan(name)?;
        let mut skipped = alloc::vec![false; plan.values.len()];
        for ins in plan.chains.iter().flatten() {
            if let Instr::Kernel { op, start, len } = *ins {
                if plan.operators.get(op as usize).is_some_and(|o| skip(o)) {
                    let args = plan
                        .arg_pool
                        .get(start as usize..(start as usize).saturating_add(len as usize))
                        .unwrap_or(&[]);
                    for &a in args {
                        if let Some(s) = skipped.get_mut(a as usize) {
                            *s = true;
                        }
                    }
                }
            }
        }
        let external = |i: usize| plan.externals.iter().any(|(v, _, m)| *v == i && !m);
        Ok(plan
            .values
            .iter()
            .enumerate()
            .filter(|(i, _)| !skipped[*i])
            .filter_map(|(i, v)| match v {
                ptero_core::Value::Tensor(t)
                    if matches!(t.storage, ptero_core::Storage::Constant { .. }) || external(i) =>
                {
                    Some(t.nbytes() as u64)
                }
                _ => None,
            })
            .fold(0u64, u64::saturating_add))
    }

    /// Prepares method `name` for execution.
    pub fn load_method(
        &self,
        name: &str,
        kernels: &KernelRegistry,
        backends: &BackendRegistry,
    ) -> Result<Method, Error> {
        self.load_method_with_limits(name, kernels, backends, crate::Limits::default())
    }

    /// Prepares method `name` under `limits` (memory checked now, work while executing).
    pub fn load_method_with_limits(
        &self,
        name: &str,
        kernels: &KernelRegistry,
        backends: &BackendRegistry,
        limits: crate::Limits,
    ) -> Result<Method, Error> {
        let options = crate::LoadOptions {
            limits,
            ..crate::LoadOptions::default()
        };
        self.load_method_with(name, kernels, backends, &options)
    }

    /// Prepares method `name` as `options` say.
    pub fn load_method_with(
        &self,
        name: &str,
        kernels: &KernelRegistry,
        backends: &BackendRegistry,
        options: &crate::LoadOptions,
    ) -> Result<Method, Error> {
        self.method_meta(name)?;
        Method::load(self, name, kernels, backends, options)
    }

    /// Metadata and parsed plan of method `name`.
    pub(crate) fn plan(&self, name: &str) -> Result<(&MethodMeta, &Arc<MethodPlan>), Error> {
        let i = self
            .metas
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| Error::MethodNotFound {
                name: name.to_string(),
                available: self.metas.iter().map(|m| m.name.clone()).collect(),
            })?;
        match &self.plans[i] {
            Ok(p) => Ok((&self.metas[i], p)),
            Err(e) => Err(e.clone()),
        }
    }

    /// The delegates of method `name` in call order: each backend id with its processed
    /// blob (for tools such as `ptero inspect`; loading a method hands them to backends).
    ///
    /// ```
    /// use ptero_runtime::Program;
    /// use ptero_format::writer::ProgramBuilder;
    /// let program = Program::from_bytes(&ProgramBuilder::new().method("forward", |_m| {}).finish()).unwrap();
    /// assert!(program.delegate_blobs("forward").unwrap().is_empty());
    /// assert!(program.delegate_blobs("nope").is_err());
    /// ```
    pub fn delegate_blobs(&self, name: &str) -> Result<Vec<(&str, &[u8])>, Error> {
        let (_, plan) = self.plan(name)?;
        plan.delegates
            .iter()
            .map(|d| {
                let data =
                    self.bytes()
                        .get(d.processed.clone())
                        .ok_or_else(|| Error::InvalidProgram {
                            method: name.into(),
                            message: alloc::format!("delegate '{}': data out of range", d.id),
                        })?;
                Ok((d.id.as_str(), data))
            })
            .collect()
    }

    /// Bytes stored under `key` in the program's named data.
    pub fn named_data(&self, key: &str) -> Option<&[u8]> {
        if let Some((_, r)) = self.named.iter().find(|(k, _)| k == key) {
            return self.bytes().get(r.clone());
        }
        self.data_files.iter().find_map(|(bytes, entries)| {
            let e = entries.iter().find(|e| e.key == key)?;
            (**bytes).as_ref().get(e.range.clone())
        })
    }

    pub(crate) fn shared(&self) -> SharedBytes {
        self.data.clone()
    }
}

#[cfg(feature = "std")]
fn io_error(path: &std::path::Path, message: String) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message,
    }
}
