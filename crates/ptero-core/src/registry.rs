use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::{KernelFn, PrepareFn, ScalarType};

/// A kernel with an optional dtype key: `Some(dtypes)` lists the dtypes of the tensor
/// arguments (in argument order) it is specialised for; `None` is the fallback.
#[derive(Clone)]
pub struct KernelEntry {
    pub dtypes: Option<Vec<ScalarType>>,
    pub kernel: KernelFn,
    /// Run once per instruction at load (see [`PrepareFn`]).
    pub prepare: Option<PrepareFn>,
}

/// Kernels by operator name (`namespace::op.overload`, or `namespace::op` when the
/// overload is empty), like the official runtime's registry.
///
/// ```
/// use ptero_core::{KernelArgs, KernelRegistry, ScalarType};
/// fn noop(_: &mut KernelArgs<'_>) -> ptero_core::Result<()> { Ok(()) }
/// let mut reg = KernelRegistry::new();
/// reg.register("my::noop.out", noop);
/// assert!(reg.lookup("my::noop.out", &[ScalarType::Float]).is_some());
/// assert!(reg.lookup("my::other.out", &[]).is_none());
/// ```
#[derive(Clone, Default)]
pub struct KernelRegistry {
    entries: BTreeMap<String, Vec<KernelEntry>>,
}

impl KernelRegistry {
    pub fn new() -> KernelRegistry {
        KernelRegistry::default()
    }

    /// Registers the fallback kernel for `name`, replacing an earlier one.
    pub fn register(&mut self, name: &str, kernel: KernelFn) {
        self.insert(
            name,
            KernelEntry {
                dtypes: None,
                kernel,
                prepare: None,
            },
        );
    }

    /// Registers the fallback kernel for `name` with a load-time prepare step.
    pub fn register_prepared(&mut self, name: &str, kernel: KernelFn, prepare: PrepareFn) {
        self.insert(
            name,
            KernelEntry {
                dtypes: None,
                kernel,
                prepare: Some(prepare),
            },
        );
    }

    /// Registers a kernel used when the tensor arguments have exactly `dtypes`.
    pub fn register_typed(&mut self, name: &str, dtypes: &[ScalarType], kernel: KernelFn) {
        self.insert(
            name,
            KernelEntry {
                dtypes: Some(dtypes.to_vec()),
                kernel,
                prepare: None,
            },
        );
    }

    fn insert(&mut self, name: &str, e: KernelEntry) {
        let list = self.entries.entry(name.into()).or_default();
        list.retain(|x| x.dtypes != e.dtypes);
        list.push(e);
    }

    /// The kernel for `name` given its tensor arguments' dtypes: an exact dtype match
    /// wins, then the fallback.
    pub fn lookup(&self, name: &str, dtypes: &[ScalarType]) -> Option<KernelFn> {
        self.lookup_entry(name, dtypes).map(|e| e.kernel)
    }

    /// Like [`KernelRegistry::lookup`], with the entry's prepare step.
    pub fn lookup_entry(&self, name: &str, dtypes: &[ScalarType]) -> Option<&KernelEntry> {
        let list = self.entries.get(name)?;
        list.iter()
            .find(|e| e.dtypes.as_deref() == Some(dtypes))
            .or_else(|| list.iter().find(|e| e.dtypes.is_none()))
    }

    /// True when any kernel is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Registered operator names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }

    /// Adds every kernel of `other`, overriding same-keyed ones here.
    pub fn extend(&mut self, other: &KernelRegistry) {
        for (name, list) in &other.entries {
            for e in list {
                self.insert(name, e.clone());
            }
        }
    }
}
