use std::collections::HashMap;
use std::path::Path;

use ptero_core::KernelRegistry;
use ptero_runtime::{BackendRegistry, EValue, Error, Method, MethodMeta, Program};

/// A program plus its loaded methods.
pub struct Module {
    program: Program,
    kernels: KernelRegistry,
    backends: BackendRegistry,
    methods: HashMap<String, Method>,
}

impl Module {
    /// Memory-maps `path` and reads its metadata; methods load on first use.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Module, Error> {
        Ok(Module::new(Program::from_file(path)?))
    }

    /// A module over program bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Module, Error> {
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
        }
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
            let m = self
                .program
                .load_method(name, &self.kernels, &self.backends)?;
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

    /// Runs `forward`.
    pub fn forward(&mut self, inputs: &[EValue]) -> Result<Vec<EValue>, Error> {
        self.execute("forward", inputs)
    }
}
