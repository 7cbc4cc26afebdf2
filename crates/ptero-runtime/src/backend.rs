//! Delegates: subgraphs the exporter handed to a backend (e.g. `XnnpackBackend`).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use ptero_core::KernelArgs;

/// A compile spec of a delegate: key and opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileSpec {
    pub key: String,
    pub value: Vec<u8>,
}

/// What a backend can see while initializing a delegate.
pub struct BackendInitContext<'a> {
    pub method_name: &'a str,
    /// Looks up the program's named data (e.g. XNNPACK weights keyed by hash).
    pub named_data: &'a dyn Fn(&str) -> Option<&'a [u8]>,
    /// Bytes the delegate may allocate for its state (converted and packed weights,
    /// intermediate buffers): the method's memory limit less what the method planned.
    pub max_memory: usize,
    /// Called with bytes (of `processed` or of named data) the backend has copied into
    /// its own form and will not read again: where the file is memory-mapped, their
    /// pages leave resident memory (they stay readable).
    pub release: &'a dyn Fn(&[u8]),
}

/// Told when each node inside a delegate starts and ends ([`DelegateHandle::execute_observed`]).
pub trait NodeObserver {
    fn node_begin(&mut self);
    /// `name` says what the node ran; `debug_handle` is its handle in the delegate's graph.
    fn node_end(&mut self, name: &str, debug_handle: Option<u32>);
}

/// An initialized delegate, ready to run.
pub trait DelegateHandle: Send {
    /// Runs the delegate; `args` are the DelegateCall's inputs followed by its outputs.
    fn execute(&mut self, args: &mut KernelArgs<'_>) -> ptero_core::Result<()>;

    /// Like [`DelegateHandle::execute`], telling `nodes` when each node of the delegate's
    /// graph starts and ends (for profilers). The default runs unobserved.
    fn execute_observed(
        &mut self,
        args: &mut KernelArgs<'_>,
        nodes: &mut dyn NodeObserver,
    ) -> ptero_core::Result<()> {
        let _ = nodes;
        self.execute(args)
    }

    /// f32 of scratch each slot of the method's arena must hold for this delegate's
    /// kernels (packing buffers), so that `execute` allocates nothing.
    fn scratch_floats(&self) -> usize {
        0
    }
}

/// A backend that turns processed delegate blobs into runnable handles.
pub trait Backend: Send + Sync {
    /// The id the exporter writes (`BackendDelegate.id`).
    fn name(&self) -> &str;
    fn is_available(&self) -> bool {
        true
    }
    /// Builds a handle from the delegate's processed bytes; errors are reported with the
    /// method and backend name.
    fn init(
        &self,
        ctx: &BackendInitContext<'_>,
        processed: &[u8],
        compile_specs: &[CompileSpec],
    ) -> Result<Box<dyn DelegateHandle>, String>;
}

/// Backends by id.
#[derive(Clone, Default)]
pub struct BackendRegistry {
    backends: BTreeMap<String, Arc<dyn Backend>>,
}

impl BackendRegistry {
    pub fn new() -> BackendRegistry {
        BackendRegistry::default()
    }

    pub fn register(&mut self, backend: Arc<dyn Backend>) {
        self.backends.insert(backend.name().into(), backend);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.backends.get(name).filter(|b| b.is_available())
    }

    pub fn names(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }
}
