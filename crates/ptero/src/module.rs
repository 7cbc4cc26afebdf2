use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ptero_core::{Interrupt, KernelRegistry, Parallel};
use ptero_devtools::TestSuite;
use ptero_runtime::{BackendRegistry, EValue, Error, Limits, Method, MethodMeta, Program};
use ptero_simd::pool::ThreadPool;

/// How a program file gets into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Memory-map the file: fast to open, constants are used in place and only the pages
    /// touched are read. The file must not be truncated while the module is alive (the
    /// process would be killed by SIGBUS).
    #[default]
    Mmap,
    /// Read the whole file into memory (at most [`Limits::max_memory`] bytes, with
    /// fallible allocation): costs the file's size in memory, but later changes to the
    /// file cannot affect the module. Also works for pipes and devices.
    Read,
}

/// Options of [`Module::from_file_with`].
///
/// ```no_run
/// use ptero::{LoadMode, Module, ModuleOptions};
/// let options = ModuleOptions::new()
///     .load_mode(LoadMode::Read)
///     .max_memory(512 << 20);
/// let mut module = Module::from_file_with("model.pte", &options)?;
/// # Ok::<(), ptero::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ModuleOptions {
    pub load_mode: LoadMode,
    /// Limits of every method the module loads (and, in [`LoadMode::Read`], of the file).
    pub limits: Limits,
    /// Threads kernels split their work over (the calling thread included); 0 means the
    /// number of physical cores ([`default_threads`](crate::default_threads)).
    pub threads: usize,
    /// Keep every value in the exported dim order: no channels-last layout of images
    /// between convolutions (see [`LoadOptions`](crate::LoadOptions)).
    pub keep_dim_order: bool,
    /// Fuse instructions at load (default true).
    pub fuse: bool,
    /// External data files (`.ptd`) holding weights the program refers to by key.
    pub data_files: Vec<std::path::PathBuf>,
}

impl Default for ModuleOptions {
    fn default() -> ModuleOptions {
        ModuleOptions {
            load_mode: LoadMode::default(),
            limits: Limits::default(),
            threads: 0,
            keep_dim_order: false,
            fuse: true,
            data_files: Vec::new(),
        }
    }
}

impl ModuleOptions {
    /// Memory-mapped, with the default [`Limits`].
    pub fn new() -> ModuleOptions {
        ModuleOptions::default()
    }

    /// How the file is loaded.
    pub fn load_mode(mut self, mode: LoadMode) -> ModuleOptions {
        self.load_mode = mode;
        self
    }

    /// Limits of every method the module loads (and, in [`LoadMode::Read`], of the file).
    pub fn limits(mut self, limits: Limits) -> ModuleOptions {
        self.limits = limits;
        self
    }

    /// Shorthand for setting [`Limits::max_memory`].
    pub fn max_memory(mut self, bytes: usize) -> ModuleOptions {
        self.limits.max_memory = bytes;
        self
    }

    /// Threads in all (0: one per physical core).
    pub fn threads(mut self, threads: usize) -> ModuleOptions {
        self.threads = threads;
        self
    }

    /// Whether instructions are fused at load (default `true`). Off, every instruction
    /// runs its own kernel, so a tracer asking for each instruction's output
    /// ([`Module::execute_observed`]) sees all of them; it is slower.
    pub fn fuse(mut self, fuse: bool) -> ModuleOptions {
        self.fuse = fuse;
        self
    }

    /// Keep every value in the exported dim order (see [`ModuleOptions::keep_dim_order`]).
    pub fn keep_dim_order(mut self, keep: bool) -> ModuleOptions {
        self.keep_dim_order = keep;
        self
    }

    /// Adds an external data file (`.ptd`): weights exported apart from the program.
    pub fn data_file(mut self, path: impl AsRef<Path>) -> ModuleOptions {
        self.data_files.push(path.as_ref().to_path_buf());
        self
    }
}

/// Threads a module uses unless told otherwise: the physical cores this process may run
/// on (hyper-threads share one core's vector units, so they add little to these kernels).
pub fn default_threads() -> usize {
    ptero_simd::pool::physical_cores()
}

/// A program plus its loaded methods.
pub struct Module {
    program: Program,
    kernels: KernelRegistry,
    backends: BackendRegistry,
    methods: HashMap<String, Method>,
    limits: Limits,
    interrupt: Option<Arc<dyn Interrupt>>,
    /// The module's worker threads, shared by its methods; started on first load.
    pool: Option<Arc<dyn Parallel + Send + Sync>>,
    threads: usize,
    keep_dim_order: bool,
    fuse: bool,
    /// A bundled program's test cases.
    bundled: Option<Arc<Vec<TestSuite>>>,
}

/// Whether the file at `path` carries the bundled-program identifier (`BP08`).
fn starts_bundled(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && ptero_devtools::is_bundled_program(&head)
}

/// Opens a program file: a `.pte`, or a bundled program (`.bpte`, told apart by its
/// `BP08` identifier, not its name), whose embedded program is returned with its test
/// suites. `LoadMode::Read` reads at most `max_memory` bytes.
///
/// ```no_run
/// use ptero::{open_program_file, LoadMode};
/// let (program, tests) = open_program_file("model.bpte".as_ref(), LoadMode::Mmap, 1 << 30)?;
/// println!("{} methods, bundled: {}", program.method_names().len(), tests.is_some());
/// # Ok::<(), ptero::Error>(())
/// ```
pub fn open_program_file(
    path: &Path,
    mode: LoadMode,
    max_memory: usize,
) -> Result<(Program, Option<Vec<TestSuite>>), Error> {
    if !starts_bundled(path) {
        let program = match mode {
            LoadMode::Mmap => Program::from_file(path)?,
            LoadMode::Read => Program::read_file(path, max_memory)?,
        };
        return Ok((program, None));
    }
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = match mode {
        LoadMode::Mmap => ptero_core::MappedFile::open(path).map_err(io)?,
        LoadMode::Read => ptero_core::MappedFile::read(path, max_memory).map_err(io)?,
    };
    let b = ptero_devtools::BundledProgram::parse(file.as_ref())
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    // The embedded program is copied out, so the file's mapping can go.
    Ok((Program::from_bytes(b.program)?, Some(b.suites)))
}

impl Module {
    /// Memory-maps `path` and reads its metadata; methods load on first use. See
    /// [`Module::from_file_with`] to read the file instead, or to set limits.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Module, Error> {
        Module::from_file_with(path, &ModuleOptions::default())
    }

    /// Opens `path` as `options` say; methods load on first use, under its limits.
    pub fn from_file_with(
        path: impl AsRef<Path>,
        options: &ModuleOptions,
    ) -> Result<Module, Error> {
        let path = path.as_ref();
        let (mut program, bundled) =
            open_program_file(path, options.load_mode, options.limits.max_memory)?;
        for d in &options.data_files {
            program.add_data_file(d)?;
        }
        let mut module = Module::new(program);
        module.bundled = bundled.map(Arc::new);
        module.limits = options.limits;
        module.threads = options.threads;
        module.keep_dim_order = options.keep_dim_order;
        module.fuse = options.fuse;
        Ok(module)
    }

    /// Memory-maps `path` and the external data files (`.ptd`) holding its weights.
    ///
    /// ```no_run
    /// let mut module = ptero::Module::from_file_with_data("model.pte", &["model.ptd"])?;
    /// # Ok::<(), ptero::Error>(())
    /// ```
    pub fn from_file_with_data(
        path: impl AsRef<Path>,
        data_files: &[impl AsRef<Path>],
    ) -> Result<Module, Error> {
        let mut options = ModuleOptions::default();
        for d in data_files {
            options = options.data_file(d);
        }
        Module::from_file_with(path, &options)
    }

    /// A module over program bytes (a `.pte`, or a bundled program's `.bpte`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Module, Error> {
        if ptero_devtools::is_bundled_program(bytes) {
            let b = ptero_devtools::BundledProgram::parse(bytes)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let mut module = Module::new(Program::from_bytes(b.program)?);
            module.bundled = Some(Arc::new(b.suites));
            return Ok(module);
        }
        Ok(Module::new(Program::from_bytes(bytes)?))
    }

    /// A module over an already loaded program, with the default kernels and backends.
    pub fn new(program: Program) -> Module {
        Module::with_registries(program, crate::default_kernels(), crate::default_backends())
    }

    /// A module with custom kernel and backend registries.
    pub fn with_registries(
        program: Program,
        kernels: KernelRegistry,
        backends: BackendRegistry,
    ) -> Module {
        Module {
            program,
            kernels,
            backends,
            methods: HashMap::new(),
            limits: Limits::default(),
            interrupt: None,
            pool: None,
            threads: 0,
            keep_dim_order: false,
            fuse: true,
            bundled: None,
        }
    }

    /// The test suites of a bundled program (`.bpte`), one per method that has cases;
    /// `None` for a plain `.pte`.
    ///
    /// ```no_run
    /// let module = ptero::Module::from_file("model.bpte")?;
    /// for suite in module.bundled_tests().unwrap_or_default() {
    ///     println!("{}: {} cases", suite.method_name, suite.cases.len());
    /// }
    /// # Ok::<(), ptero::Error>(())
    /// ```
    pub fn bundled_tests(&self) -> Option<&[TestSuite]> {
        self.bundled.as_deref().map(|v| v.as_slice())
    }

    /// Sets how many threads the module's methods use (0: one per physical core). Loaded
    /// methods switch to the new pool too.
    ///
    /// ```no_run
    /// let mut module = ptero::Module::from_file("model.pte")?;
    /// module.set_threads(1)?; // single-threaded
    /// # Ok::<(), ptero::Error>(())
    /// ```
    pub fn set_threads(&mut self, threads: usize) -> Result<(), Error> {
        self.threads = threads;
        self.pool = None;
        let pool = self.pool();
        for m in self.methods.values_mut() {
            m.set_parallel(pool.clone())?;
        }
        Ok(())
    }

    /// Threads the module's methods use.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.threads(),
            None if self.threads == 0 => default_threads(),
            None => self.threads,
        }
    }

    fn pool(&mut self) -> Option<Arc<dyn Parallel + Send + Sync>> {
        let n = if self.threads == 0 {
            default_threads()
        } else {
            self.threads
        };
        if n <= 1 {
            return None;
        }
        if self.pool.is_none() {
            self.pool = Some(Arc::new(ThreadPool::new(n)));
        }
        self.pool.clone()
    }

    /// Sets what stops a running method early, for every method, loaded or not: a
    /// [`Deadline`](crate::Deadline) or a [`CancelToken`](crate::CancelToken).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use ptero::{Deadline, Module};
    /// let mut module = Module::from_file("model.pte")?;
    /// module.set_interrupt(Some(Arc::new(Deadline::after(Duration::from_secs(5)))));
    /// match module.forward(&[]) {
    ///     Err(ptero::Error::Interrupted { .. }) => eprintln!("took more than 5 s"),
    ///     other => { other?; }
    /// }
    /// # Ok::<(), ptero::Error>(())
    /// ```
    pub fn set_interrupt(&mut self, interrupt: Option<Arc<dyn Interrupt>>) {
        for m in self.methods.values_mut() {
            m.set_interrupt(interrupt.clone());
        }
        self.interrupt = interrupt;
    }

    /// The limits methods are loaded with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sets the limits of methods loaded from now on (loaded methods keep theirs).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn method_names(&self) -> Vec<&str> {
        self.program.method_names()
    }

    pub fn method_meta(&self, name: &str) -> Result<&MethodMeta, Error> {
        self.program.method_meta(name)
    }

    /// Loads method `name` now (resolving kernels, allocating planned memory).
    pub fn load_method(&mut self, name: &str) -> Result<&mut Method, Error> {
        if !self.methods.contains_key(name) {
            let options = ptero_runtime::LoadOptions {
                limits: self.limits,
                channels_last: !self.keep_dim_order,
                fuse: self.fuse,
            };
            let mut m =
                self.program
                    .load_method_with(name, &self.kernels, &self.backends, &options)?;
            m.set_interrupt(self.interrupt.clone());
            let pool = self.pool();
            m.set_parallel(pool)?;
            self.methods.insert(name.to_string(), m);
        }
        self.methods
            .get_mut(name)
            .ok_or_else(|| Error::MethodNotFound {
                name: name.into(),
                available: vec![],
            })
    }

    pub fn is_method_loaded(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// Drops a loaded method and its state.
    pub fn unload_method(&mut self, name: &str) -> bool {
        self.methods.remove(name).is_some()
    }

    /// Runs method `name` with `inputs` and returns its outputs.
    pub fn execute(&mut self, name: &str, inputs: &[EValue]) -> Result<Vec<EValue>, Error> {
        let m = self.load_method(name)?;
        m.set_inputs(inputs)?;
        m.execute()?;
        m.outputs()
    }

    /// Runs method `name` with an event tracer: `observer` hears of every instruction and
    /// delegate node, and sees their values if it asks (see [`crate::devtools::Recorder`]
    /// for one that records them, and writes ETDump or Chrome trace files).
    ///
    /// ```no_run
    /// use ptero::{Module, ModuleOptions};
    /// use ptero::devtools::{Recorder, RecorderOptions};
    /// let mut module = Module::from_file("model.pte")?;
    /// let mut recorder = Recorder::new(RecorderOptions::default());
    /// module.execute_observed("forward", &[], &mut recorder)?;
    /// for op in recorder.operator_stats() {
    ///     println!("{} x{}: {:.3} ms", op.name, op.count, op.total_ms);
    /// }
    /// # Ok::<(), ptero::Error>(())
    /// ```
    pub fn execute_observed(
        &mut self,
        name: &str,
        inputs: &[EValue],
        observer: &mut dyn ptero_runtime::Observer,
    ) -> Result<Vec<EValue>, Error> {
        let m = self.load_method(name)?;
        m.set_inputs(inputs)?;
        m.execute_observed(observer)?;
        m.outputs()
    }

    /// Runs `forward`.
    pub fn forward(&mut self, inputs: &[EValue]) -> Result<Vec<EValue>, Error> {
        self.execute("forward", inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptero_runtime::Tensor;

    fn mlp() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mlp/model.pte")
    }

    #[test]
    fn read_mode_matches_mmap_and_respects_the_limit() {
        let x = EValue::Tensor(Tensor::from_slice(&[0.25f32; 64], &[4, 16]).unwrap());
        let mut mapped = Module::from_file(mlp()).unwrap();
        let read_opts = ModuleOptions::new().load_mode(LoadMode::Read);
        let mut read = Module::from_file_with(mlp(), &read_opts).unwrap();
        assert_eq!(
            mapped.forward(std::slice::from_ref(&x)).unwrap(),
            read.forward(std::slice::from_ref(&x)).unwrap()
        );
        let e = Module::from_file_with(mlp(), &read_opts.clone().max_memory(1000))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("model.pte") && e.contains("limit of 1000"),
            "{e}"
        );
        // The limit also applies to methods: the file fits, the method's memory does not.
        let mut small =
            Module::from_file_with(mlp(), &ModuleOptions::new().max_memory(5000)).unwrap();
        assert_eq!(small.limits().max_memory, 5000);
        let e = small.forward(&[x]).unwrap_err().to_string();
        assert!(e.contains("limit of 5000"), "{e}");
    }
}
