use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use core::any::Any;

use ptero_core::{
    AlignedBuf, BorrowSet, ExecContext, Interrupt, KernelArgs, KernelFn, KernelRegistry, Memory,
    Parallel, ScalarType, SlotArena, Storage, TensorMeta, Value,
};

use alloc::sync::Arc;

use crate::backend::{BackendInitContext, DelegateHandle};
use crate::evalue::{EValue, Tensor};
use crate::method_meta::MethodMeta;
use crate::parse::invalid;
use crate::plan::{Instr, MethodPlan};
use crate::{BackendRegistry, Error, Limits, Program};

/// A method ready to run: values, planned memory, resolved kernels and delegates.
///
/// Loading allocates everything the method needs; [`Method::execute`] then runs the
/// instructions without allocating. Mutable buffers (e.g. a KV cache) keep their contents
/// across calls.
pub struct Method {
    meta: MethodMeta,
    values: Vec<Value>,
    memory: Memory,
    /// Instructions, argument lists and I/O indices, shared with the program.
    plan: Arc<MethodPlan>,
    /// The plan's argument lists, plus those of fused instructions.
    arg_pool: Vec<u32>,
    /// The kernel of every instruction (by chain, then index), resolved with that
    /// instruction's dtypes, with what its prepare step kept.
    kernels: Vec<Vec<Option<InstrKernel>>>,
    /// Threads kernels split their work over (serial when `None`).
    parallel: Option<Arc<dyn Parallel + Send + Sync>>,
    /// Per-thread scratch, as large as the largest need a prepare step declared.
    arena: SlotArena,
    scratch_floats: usize,
    delegates: Vec<Box<dyn DelegateHandle>>,
    /// Which inputs have been given (primitive inputs count as set).
    input_set: Vec<bool>,
    borrows: BorrowSet,
    executions: u64,
    limits: Limits,
    interrupt: Option<Arc<dyn Interrupt>>,
}

/// Told when each kernel or delegate call of [`Method::execute_observed`] starts and ends,
/// and, if it asks, shown what they computed: the event tracer's interface.
///
/// Only `begin` and `end` are required; the rest default to doing nothing, so a plain
/// timer stays a few lines. Nothing is called when a method runs unobserved
/// ([`Method::execute`]), so tracing costs nothing while it is off.
pub trait Observer {
    /// Method `method` starts running.
    fn run_begin(&mut self, _method: &str) {}
    /// It finished (also after an error).
    fn run_end(&mut self, _method: &str) {}
    /// Instruction `pc` of chain `chain` is about to run.
    fn begin(&mut self, chain: usize, pc: usize);
    /// It finished; `name` is its operator (`aten::add.out`) or delegate id.
    fn end(&mut self, chain: usize, pc: usize, name: &str);
    /// Instruction `pc` is a delegate call about to run (then `end` as for kernels). By
    /// default the same as [`Observer::begin`].
    fn delegate_begin(&mut self, chain: usize, pc: usize) {
        self.begin(chain, pc);
    }
    /// A node inside the delegate that instruction `pc` calls is about to run.
    fn node_begin(&mut self, _chain: usize, _pc: usize) {}
    /// That node finished: `name` says what it ran (e.g. `Conv2d`), `debug_handle` is the
    /// node's handle in the delegate's graph when it has one.
    fn node_end(&mut self, _chain: usize, _pc: usize, _name: &str, _debug_handle: Option<u32>) {}
    /// Whether to be shown the values instruction `pc` (operator or delegate `name`) wrote
    /// ([`Observer::value`]); answering `true` costs a copy of each.
    fn wants_values(&mut self, _chain: usize, _pc: usize, _name: &str) -> bool {
        false
    }
    /// A value of instruction `pc`, in the logical (contiguous) layout: a kernel's
    /// outputs, or a delegate call's arguments (inputs, then outputs) as ExecuTorch logs
    /// them. Called after [`Observer::end`] of that instruction.
    fn value(&mut self, _chain: usize, _pc: usize, _value: &EValue) {}
    /// The method's outputs, once it has run.
    fn method_output(&mut self, _index: usize, _value: &EValue) {}
    /// Whether [`Observer::method_output`] is wanted.
    fn wants_method_outputs(&mut self) -> bool {
        false
    }
}

/// What a delegate sees of the observer: node events, tied to its instruction.
struct NodeScope<'o> {
    observer: &'o mut dyn Observer,
    chain: usize,
    pc: usize,
}

impl crate::backend::NodeObserver for NodeScope<'_> {
    fn node_begin(&mut self) {
        self.observer.node_begin(self.chain, self.pc);
    }
    fn node_end(&mut self, name: &str, debug_handle: Option<u32>) {
        self.observer
            .node_end(self.chain, self.pc, name, debug_handle);
    }
}

struct InstrKernel {
    /// `None`: fused into another instruction, nothing to run.
    f: Option<KernelFn>,
    state: Option<Box<dyn Any + Send + Sync>>,
    /// Argument range in the method's argument pool.
    start: u32,
    len: u32,
    /// The operator it runs when load-time fusion replaced the program's.
    fused: Option<String>,
}

impl core::fmt::Debug for Method {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.meta.name)
            .finish()
    }
}

fn tensor_dtypes(values: &[Value], args: &[u32]) -> Vec<ScalarType> {
    let mut out = Vec::new();
    for &a in args {
        match values.get(a as usize) {
            Some(Value::Tensor(t)) => out.push(t.dtype),
            Some(Value::TensorList(items)) => {
                for &i in items {
                    if let Some(Value::Tensor(t)) = values.get(i as usize) {
                        out.push(t.dtype);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

impl Method {
    pub(crate) fn load(
        program: &Program,
        name: &str,
        kernels: &KernelRegistry,
        backends: &BackendRegistry,
        options: &crate::LoadOptions,
    ) -> Result<Method, Error> {
        let limits = options.limits;
        let (meta, plan) = program.plan(name)?;
        let meta = meta.clone();
        let mut values = plan.values.clone();

        // Everything this method will own, checked against the limit before any of it is
        // allocated: the sizes come from the file.
        let mut total: u64 = plan
            .planned
            .iter()
            .fold(0u64, |a, &s| a.saturating_add(s as u64));
        let mut counted: Vec<u32> = Vec::new();
        for &i in plan.inputs.iter().chain(&plan.outputs) {
            if counted.contains(&i) {
                continue;
            }
            counted.push(i);
            if let Some(Value::Tensor(t)) = values.get(i as usize) {
                if t.storage == Storage::None {
                    total = total.saturating_add(t.capacity() as u64);
                }
            }
        }
        if total > limits.max_memory as u64 {
            return Err(Error::MemoryLimit {
                method: name.into(),
                what: "planned and input/output memory",
                bytes: total,
                limit: limits.max_memory,
            });
        }

        let mut memory = Memory::new(program.shared());
        for &size in &plan.planned {
            let buf = AlignedBuf::try_zeroed(size).ok_or(Error::OutOfMemory {
                method: name.into(),
                what: "planned memory",
                bytes: size,
            })?;
            memory.add_buffer(buf);
        }
        for (idx, range) in &plan.inits {
            let Some(Value::Tensor(t)) = values.get(*idx) else {
                continue;
            };
            let src = program
                .bytes()
                .get(range.clone())
                .ok_or_else(|| invalid(name, "mutable data out of range"))?;
            let dst = memory
                .bytes_mut(t.storage, src.len())
                .map_err(|e| invalid(name, format!("value {idx}: {e}")))?;
            dst.copy_from_slice(src);
        }
        // Tensors kept in `.ptd` files: constants get a buffer of their own, mutable ones
        // start from the file's contents.
        for (idx, key, mutable) in &plan.externals {
            let Some(Value::Tensor(t)) = values.get_mut(*idx) else {
                continue;
            };
            let src = program.named_data(key).ok_or_else(|| {
                invalid(
                    name,
                    format!(
                        "value {idx}: tensor '{key}' is kept in an external data file (.ptd) \
                         that was not given (--data FILE.ptd)"
                    ),
                )
            })?;
            let nbytes = t.nbytes();
            let src = src.get(..nbytes).ok_or_else(|| {
                invalid(
                    name,
                    format!(
                        "value {idx}: tensor '{key}' needs {nbytes} bytes, the data file holds {}",
                        src.len()
                    ),
                )
            })?;
            if !*mutable {
                let buf = AlignedBuf::try_zeroed(nbytes).ok_or(Error::OutOfMemory {
                    method: name.into(),
                    what: "a tensor from an external data file",
                    bytes: nbytes,
                })?;
                let id = memory.add_buffer(buf);
                t.set_storage(Storage::Buffer { id, offset: 0 }, nbytes);
            }
            memory
                .bytes_mut(t.storage, nbytes)
                .map_err(|e| invalid(name, format!("value {idx}: {e}")))?
                .copy_from_slice(src);
        }
        // Unplanned input and output tensors get buffers of their own, sized to their bound.
        for &i in plan.inputs.iter().chain(&plan.outputs) {
            if let Some(Value::Tensor(t)) = values.get_mut(i as usize) {
                if t.storage == Storage::None {
                    let cap = t.capacity();
                    let buf = AlignedBuf::try_zeroed(cap).ok_or(Error::OutOfMemory {
                        method: name.into(),
                        what: "memory for an unplanned input or output",
                        bytes: cap,
                    })?;
                    let id = memory.add_buffer(buf);
                    t.set_storage(Storage::Buffer { id, offset: 0 }, cap);
                }
            }
        }

        // Load-time fusion, then each instruction's kernel resolved with its own dtypes and
        // its prepare step run (constant weights are packed here, once).
        let rewrites = if options.fuse {
            crate::fuse::plan(plan, &mut values, kernels)
        } else {
            plan.chains
                .iter()
                .map(|c| c.iter().map(|_| crate::fuse::Rewrite::Keep).collect())
                .collect()
        };
        if options.channels_last {
            crate::layout::plan(plan, &mut values, &rewrites);
        }
        let mut arg_pool = plan.arg_pool.clone();
        let mut instr_kernels: Vec<Vec<Option<InstrKernel>>> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        let mut scratch_floats = 0usize;
        let mut max_views = plan.max_views;
        for rw in rewrites.iter().flatten() {
            if let crate::fuse::Rewrite::Replace { args, .. } = rw {
                max_views = max_views.max(args.len());
            }
        }
        let mut borrows = BorrowSet::with_capacity(max_views * 2);
        for (c, chain) in plan.chains.iter().enumerate() {
            let mut ks = Vec::with_capacity(chain.len());
            for (pc, instr) in chain.iter().enumerate() {
                let Instr::Kernel { op, start, len } = *instr else {
                    ks.push(None);
                    continue;
                };
                let (opname, start, len, fused) = match &rewrites[c][pc] {
                    crate::fuse::Rewrite::Keep => {
                        (plan.operators[op as usize].clone(), start, len, None)
                    }
                    crate::fuse::Rewrite::Skip => {
                        ks.push(Some(InstrKernel {
                            f: None,
                            state: None,
                            start,
                            len,
                            fused: None,
                        }));
                        continue;
                    }
                    crate::fuse::Rewrite::Replace { op, args } => {
                        let s = arg_pool.len() as u32;
                        arg_pool.extend_from_slice(args);
                        (op.clone(), s, args.len() as u32, Some(op.clone()))
                    }
                };
                let args = &arg_pool[start as usize..(start + len) as usize];
                let dtypes = tensor_dtypes(&values, args);
                let Some(entry) = kernels.lookup_entry(&opname, &dtypes) else {
                    if !missing.contains(&opname) {
                        missing.push(opname);
                    }
                    ks.push(None);
                    continue;
                };
                let mut state = None;
                if let Some(prepare) = entry.prepare {
                    let ka = KernelArgs::new(&mut values, args, &mut memory, &mut borrows)
                        .with_context(ExecContext {
                            scratch_limit: limits.max_memory,
                            ..ExecContext::default()
                        });
                    let p = prepare(&ka).map_err(|source| Error::Execution {
                        method: name.into(),
                        instruction: pc,
                        operator: opname.clone(),
                        source,
                    })?;
                    scratch_floats = scratch_floats.max(p.scratch_floats);
                    state = p.state;
                }
                ks.push(Some(InstrKernel {
                    f: Some(entry.kernel),
                    state,
                    start,
                    len,
                    fused,
                }));
            }
            instr_kernels.push(ks);
        }
        if !missing.is_empty() {
            return Err(Error::MissingOperators {
                method: name.into(),
                operators: missing,
            });
        }
        let mut delegates: Vec<Box<dyn DelegateHandle>> = Vec::new();
        let named = |key: &str| program.named_data(key);
        let release = |part: &[u8]| program.release(part);
        for d in &plan.delegates {
            let backend = backends.get(&d.id).ok_or_else(|| Error::UnknownBackend {
                method: name.into(),
                backend: d.id.clone(),
                available: backends.names(),
            })?;
            let processed = program
                .bytes()
                .get(d.processed.clone())
                .ok_or_else(|| invalid(name, format!("delegate '{}': data out of range", d.id)))?;
            let ctx = BackendInitContext {
                method_name: name,
                named_data: &named,
                release: &release,
                max_memory: limits
                    .max_memory
                    .saturating_sub(usize::try_from(total).unwrap_or(usize::MAX)),
            };
            let handle = backend
                .init(&ctx, processed, &d.compile_specs)
                .map_err(|message| Error::BackendInit {
                    method: name.into(),
                    backend: d.id.clone(),
                    message,
                })?;
            scratch_floats = scratch_floats.max(handle.scratch_floats());
            delegates.push(handle);
        }

        // One slot per thread, plus one: a kernel may hold a slot for its own operands
        // (converted or padded copies) while the GEMM it calls lends the others to its
        // tasks. Slots are zeroed lazily, so an unused one costs address space only.
        let arena = SlotArena::new(2, scratch_floats).ok_or(Error::OutOfMemory {
            method: name.into(),
            what: "kernel scratch",
            bytes: scratch_floats.saturating_mul(4),
        })?;

        let input_set = plan
            .inputs
            .iter()
            .map(|&i| !matches!(values[i as usize], Value::Tensor(_)))
            .collect();
        Ok(Method {
            meta,
            values,
            memory,
            plan: plan.clone(),
            arg_pool,
            kernels: instr_kernels,
            parallel: None,
            arena,
            scratch_floats,
            delegates,
            input_set,
            borrows,
            executions: 0,
            limits,
            interrupt: None,
        })
    }

    /// The limits the method was loaded with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sets what `execute` polls to stop early: a deadline, a cancellation token
    /// ([`ptero_core::CancelToken`]); `None` runs to completion.
    pub fn set_interrupt(&mut self, interrupt: Option<Arc<dyn Interrupt>>) {
        self.interrupt = interrupt;
    }

    /// The method's metadata.
    /// Splits kernels' work over `parallel` from now on (`None`: one thread). Reserves one
    /// scratch buffer per thread, so this allocates; `execute` then does not.
    pub fn set_parallel(
        &mut self,
        parallel: Option<Arc<dyn Parallel + Send + Sync>>,
    ) -> Result<(), Error> {
        let threads = parallel.as_ref().map_or(1, |p| p.threads().max(1));
        if threads + 1 != self.arena.slots() {
            self.arena =
                SlotArena::new(threads + 1, self.scratch_floats).ok_or(Error::OutOfMemory {
                    method: self.meta.name.clone(),
                    what: "kernel scratch",
                    bytes: self
                        .scratch_floats
                        .saturating_mul(4)
                        .saturating_mul(threads + 1),
                })?;
        }
        self.parallel = parallel;
        Ok(())
    }

    /// Threads kernels run on.
    pub fn threads(&self) -> usize {
        self.parallel.as_ref().map_or(1, |p| p.threads())
    }

    pub fn meta(&self) -> &MethodMeta {
        &self.meta
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn num_inputs(&self) -> usize {
        self.plan.inputs.len()
    }

    pub fn num_outputs(&self) -> usize {
        self.plan.outputs.len()
    }

    /// Sizes in bytes of the planned memory buffers, by memory id (the exporter's
    /// `non_const_buffer_sizes`, the unused id 0 left out).
    pub fn planned_buffers(&self) -> &[usize] {
        &self.plan.planned
    }

    /// Bytes of memory the method owns (planned arenas plus I/O buffers).
    pub fn memory_bytes(&self) -> usize {
        self.memory.total_bytes()
    }

    /// Tensor values laid out channels-last (`dim_order` `[0, 2, 3, 1]`): the program's
    /// own plus those the load-time layout pass chose ([`crate::LoadOptions`]).
    pub fn channels_last_tensors(&self) -> usize {
        self.values
            .iter()
            .filter(
                |v| matches!(v, Value::Tensor(t) if t.dim() == 4 && t.dim_order() == [0, 2, 3, 1]),
            )
            .count()
    }

    /// How many times `execute` has completed.
    pub fn executions(&self) -> u64 {
        self.executions
    }

    fn input_value(&self, index: usize) -> Result<usize, Error> {
        self.plan
            .inputs
            .get(index)
            .map(|&i| i as usize)
            .ok_or_else(|| Error::Input {
                index,
                message: format!("the method has {} inputs", self.plan.inputs.len()),
            })
    }

    /// Sets input `index`. Tensors are copied into the method's memory (converted to the
    /// program's dim order); dtype and rank must match, and the shape must fit the
    /// program's bound. Primitive inputs must equal the value the program was traced with.
    pub fn set_input(&mut self, index: usize, value: &EValue) -> Result<(), Error> {
        let vi = self.input_value(index)?;
        let err = |message: String| Error::Input { index, message };
        match (&mut self.values[vi], value) {
            (Value::Tensor(meta), EValue::Tensor(t)) => {
                if t.dtype() != meta.dtype {
                    return Err(err(format!(
                        "expected a {} tensor, got {}",
                        meta.dtype,
                        t.dtype()
                    )));
                }
                if t.sizes().len() != meta.dim() {
                    return Err(err(format!(
                        "expected a {}-d tensor (shape {:?}), got shape {:?}",
                        meta.dim(),
                        meta.sizes(),
                        t.sizes()
                    )));
                }
                let traced: &[usize] = self
                    .meta
                    .inputs
                    .get(index)
                    .and_then(|m| m.tensor.as_ref())
                    .map_or(&[], |ti| &ti.sizes);
                // A bounded input must fit its bound dim by dim, not just in total: the rest
                // of the plan (views, intermediate buffers) was sized for those bounds.
                if meta.dynamism == ptero_core::Dynamism::DynamicBound
                    && traced.len() == t.sizes().len()
                {
                    if let Some(d) = (0..traced.len()).find(|&d| t.sizes()[d] > traced[d]) {
                        return Err(err(format!(
                            "shape {:?} does not fit the program's bound {traced:?}: dimension {d} is {}, at most {} allowed",
                            t.sizes(),
                            t.sizes()[d],
                            traced[d]
                        )));
                    }
                }
                meta.resize(t.sizes()).map_err(|e| match meta.dynamism {
                    ptero_core::Dynamism::Static => err(format!(
                        "expected shape {traced:?} (static), got {:?}",
                        t.sizes()
                    )),
                    _ => err(format!(
                        "shape {:?} does not fit the program's bound {traced:?}: {e}",
                        t.sizes()
                    )),
                })?;
                let meta: TensorMeta = **meta;
                write_logical(&mut self.memory, &meta, t.bytes())
                    .map_err(|e| err(e.to_string()))?;
                self.input_set[index] = true;
                Ok(())
            }
            (Value::Tensor(meta), other) => Err(err(format!(
                "expected a {} tensor, got {}",
                meta.dtype,
                other.kind()
            ))),
            (slot, v) => {
                let ok = match (&*slot, v) {
                    (Value::Int(a), EValue::Int(b)) => a == b,
                    (Value::Bool(a), EValue::Bool(b)) => a == b,
                    (Value::Double(a), EValue::Double(b)) => (a - b).abs() <= 1e-4 + 1e-5 * b.abs(),
                    (Value::String(a), EValue::String(b)) => **a == **b,
                    (Value::None, EValue::None) => true,
                    _ => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(err(format!(
                        "this {} input was fixed when the program was exported ({:?}); pass that value, got {:?}",
                        slot.kind(),
                        slot,
                        v
                    )))
                }
            }
        }
    }

    /// Sets all inputs in order.
    pub fn set_inputs(&mut self, values: &[EValue]) -> Result<(), Error> {
        if values.len() != self.plan.inputs.len() {
            return Err(Error::Input {
                index: values.len().min(self.plan.inputs.len()),
                message: format!(
                    "method '{}' takes {} inputs, got {}",
                    self.meta.name,
                    self.plan.inputs.len(),
                    values.len()
                ),
            });
        }
        for (i, v) in values.iter().enumerate() {
            self.set_input(i, v)?;
        }
        Ok(())
    }

    /// Runs the method once.
    ///
    /// Stops with an error when the instruction limit is reached, when a loop does more work
    /// than [`Limits`] allow, or when the interrupt set by [`Method::set_interrupt`] fires.
    pub fn execute(&mut self) -> Result<(), Error> {
        self.run(None)
    }

    /// Like [`Method::execute`], telling `observer` when each kernel or delegate call
    /// starts and ends (for profilers; moves, jumps and frees are not reported).
    pub fn execute_observed(&mut self, observer: &mut dyn Observer) -> Result<(), Error> {
        self.run(Some(observer))
    }

    fn run(&mut self, observer: Option<&mut dyn Observer>) -> Result<(), Error> {
        let Some(o) = observer else {
            return self.run_instructions(None);
        };
        o.run_begin(&self.meta.name);
        let result = self.run_instructions(Some(&mut *o));
        o.run_end(&self.meta.name);
        if result.is_ok() && o.wants_method_outputs() {
            for (i, &v) in self.plan.outputs.iter().enumerate() {
                if let Ok(e) = self.to_evalue(&self.values[v as usize]) {
                    o.method_output(i, &e);
                }
            }
        }
        result
    }

    fn run_instructions(&mut self, mut observer: Option<&mut dyn Observer>) -> Result<(), Error> {
        if let Some(i) = self.input_set.iter().position(|s| !s) {
            return Err(Error::Input {
                index: i,
                message: "not set".into(),
            });
        }
        let interrupt: Option<&dyn Interrupt> = self.interrupt.as_deref();
        let parallel: Option<&dyn Parallel> = match &self.parallel {
            Some(p) => Some(&**p),
            None => None,
        };
        let ctx = ExecContext {
            interrupt,
            scratch_limit: self.limits.max_memory,
            parallel,
            arena: Some(&self.arena),
            state: None,
        };
        let mut budget = self.limits.max_instructions;
        // Work before the first backward jump, and work since.
        let mut straight_work: u64 = 0;
        let mut loop_work: Option<u64> = None;
        for c in 0..self.plan.chains.len() {
            let n = self.plan.chains[c].len();
            let mut pc = 0usize;
            while pc < n {
                if budget == 0 {
                    return Err(Error::InstructionBudget {
                        method: self.meta.name.clone(),
                        limit: self.limits.max_instructions,
                    });
                }
                budget -= 1;
                if interrupt.is_some_and(|i| i.is_interrupted()) {
                    return Err(Error::Interrupted {
                        method: self.meta.name.clone(),
                        instruction: pc,
                    });
                }
                let instr = self.plan.chains[c][pc];
                let at = pc;
                pc += 1;
                // Every instruction costs a little even on empty operands, so a loop of moves and
                // jumps is bounded by work as well as by the instruction count.
                let mut work = INSTRUCTION_WORK;
                match instr {
                    Instr::Kernel { op, .. } => {
                        let Some(k) = self.kernels[c].get(at).and_then(|k| k.as_ref()) else {
                            return Err(self.exec_err(
                                pc - 1,
                                op,
                                ptero_core::Error::NotImplemented("kernel".into()),
                            ));
                        };
                        let Some(f) = k.f else {
                            // Computed by a fused instruction.
                            continue;
                        };
                        let args = &self.arg_pool[k.start as usize..(k.start + k.len) as usize];
                        let mut ka = KernelArgs::new(
                            &mut self.values,
                            args,
                            &mut self.memory,
                            &mut self.borrows,
                        )
                        .with_context(ctx)
                        .with_state(k.state.as_deref());
                        if let Some(o) = observer.as_deref_mut() {
                            o.begin(c, at);
                        }
                        let result = f(&mut ka);
                        let charged = ka.charged();
                        if let Some(o) = observer.as_deref_mut() {
                            let name = k
                                .fused
                                .as_deref()
                                .unwrap_or(&self.plan.operators[op as usize]);
                            o.end(c, at, name);
                            // The exporter ends every kernel's arguments with what it
                            // returns: the out tensor, or a list of them for operators
                            // with several (ExecuTorch logs that one value too).
                            if result.is_ok() && o.wants_values(c, at, name) {
                                let last = args.len().saturating_sub(1);
                                self.show_values(o, c, at, &args[last..]);
                            }
                        }
                        work = work.saturating_add(charged);
                        if let Err(e) = result {
                            return Err(self.exec_err(pc - 1, op, e));
                        }
                        work = work.saturating_add(operand_elements(&self.values, args));
                    }
                    Instr::Delegate { index, start, len } => {
                        let args = &self.plan.arg_pool[start as usize..(start + len) as usize];
                        let mut ka = KernelArgs::new(
                            &mut self.values,
                            args,
                            &mut self.memory,
                            &mut self.borrows,
                        )
                        .with_context(ctx);
                        let result = match observer.as_deref_mut() {
                            Some(o) => {
                                o.delegate_begin(c, at);
                                let r = self.delegates[index as usize].execute_observed(
                                    &mut ka,
                                    &mut NodeScope {
                                        observer: o,
                                        chain: c,
                                        pc: at,
                                    },
                                );
                                o.end(c, at, &self.plan.delegates[index as usize].id);
                                r
                            }
                            None => self.delegates[index as usize].execute(&mut ka),
                        };
                        let charged = ka.charged();
                        if let Some(o) = observer.as_deref_mut() {
                            let id = &self.plan.delegates[index as usize].id;
                            if result.is_ok() && o.wants_values(c, at, id) {
                                self.show_values(o, c, at, args);
                            }
                        }
                        work = work.saturating_add(charged);
                        if let Err(source) = result {
                            return Err(Error::Execution {
                                method: self.meta.name.clone(),
                                instruction: pc - 1,
                                operator: format!(
                                    "delegate {}",
                                    self.plan.delegates[index as usize].id
                                ),
                                source,
                            });
                        }
                        work = work.saturating_add(operand_elements(&self.values, args));
                    }
                    Instr::Move { from, to } => {
                        move_value(&mut self.values, from as usize, to as usize)
                    }
                    Instr::JumpFalse { cond, dest } => {
                        let truth = self.truth(cond as usize).map_err(|e| Error::Execution {
                            method: self.meta.name.clone(),
                            instruction: pc - 1,
                            operator: "jump_false".into(),
                            source: e,
                        })?;
                        if !truth {
                            if (dest as usize) < pc && loop_work.is_none() {
                                loop_work = Some(0);
                            }
                            pc = dest as usize;
                        }
                    }
                    Instr::Free { value } => {
                        if let Value::Tensor(t) = &mut self.values[value as usize] {
                            t.set_storage(Storage::None, 0);
                        }
                    }
                }
                match &mut loop_work {
                    None => straight_work = straight_work.saturating_add(work),
                    Some(done) => {
                        *done = done.saturating_add(work);
                        let limit = straight_work
                            .saturating_mul(self.limits.loop_work_factor)
                            .saturating_add(self.limits.loop_work_allowance);
                        if *done > limit {
                            return Err(Error::WorkBudget {
                                method: self.meta.name.clone(),
                                instruction: at,
                                work: *done,
                                limit,
                            });
                        }
                    }
                }
            }
        }
        self.executions += 1;
        Ok(())
    }

    /// Shows `observer` the values `args` name (copied to the logical layout).
    fn show_values(&self, observer: &mut dyn Observer, chain: usize, pc: usize, args: &[u32]) {
        for &a in args {
            if let Some(v) = self.values.get(a as usize) {
                if let Ok(e) = self.to_evalue(v) {
                    observer.value(chain, pc, &e);
                }
            }
        }
    }

    fn exec_err(&self, instruction: usize, op: u32, source: ptero_core::Error) -> Error {
        Error::Execution {
            method: self.meta.name.clone(),
            instruction,
            operator: self
                .plan
                .operators
                .get(op as usize)
                .cloned()
                .unwrap_or_default(),
            source,
        }
    }

    fn truth(&self, v: usize) -> Result<bool, ptero_core::Error> {
        match &self.values[v] {
            Value::Bool(b) => Ok(*b),
            Value::Tensor(t) if t.dtype == ScalarType::Bool => Ok(self
                .memory
                .bytes(t.storage, t.nbytes())?
                .iter()
                .all(|&b| b != 0)),
            other => Err(ptero_core::Error::ArgKind {
                arg: 0,
                expected: "Bool or bool Tensor",
                found: other.kind(),
            }),
        }
    }

    fn output_value(&self, index: usize) -> Result<&Value, Error> {
        self.plan
            .outputs
            .get(index)
            .map(|&i| &self.values[i as usize])
            .ok_or_else(|| Error::Output {
                index,
                message: format!("the method has {} outputs", self.plan.outputs.len()),
            })
    }

    /// Metadata of tensor output `index` (its current shape).
    pub fn output_meta(&self, index: usize) -> Result<&TensorMeta, Error> {
        match self.output_value(index)? {
            Value::Tensor(t) => Ok(t),
            v => Err(Error::Output {
                index,
                message: format!("is a {}, not a tensor", v.kind()),
            }),
        }
    }

    /// The data of tensor output `index` in place, without a copy (row-major tensors only).
    pub fn output_data<T: ptero_core::Element>(&self, index: usize) -> Result<&[T], Error> {
        let t = self.output_meta(index)?;
        let err = |message: String| Error::Output { index, message };
        if t.dtype != T::DTYPE {
            return Err(err(format!("is a {} tensor, not {}", t.dtype, T::DTYPE)));
        }
        if !t.is_contiguous() {
            return Err(err("is not row-major; use `output`".into()));
        }
        let bytes = self
            .memory
            .bytes(t.storage, t.nbytes())
            .map_err(|e| err(e.to_string()))?;
        if bytes.is_empty() {
            return Ok(&[]);
        }
        bytemuck::try_cast_slice(bytes).map_err(|e| err(format!("{e:?}")))
    }

    /// Output `index` of the last run, copied out (tensors row-major).
    pub fn output(&self, index: usize) -> Result<EValue, Error> {
        let v = self.output_value(index)?;
        self.to_evalue(v).map_err(|e| Error::Output {
            index,
            message: e.to_string(),
        })
    }

    /// All outputs of the last run.
    pub fn outputs(&self) -> Result<Vec<EValue>, Error> {
        (0..self.plan.outputs.len())
            .map(|i| self.output(i))
            .collect()
    }

    fn to_evalue(&self, v: &Value) -> Result<EValue, ptero_core::Error> {
        Ok(match v {
            Value::None => EValue::None,
            Value::Int(i) => EValue::Int(*i),
            Value::Bool(b) => EValue::Bool(*b),
            Value::Double(d) => EValue::Double(*d),
            Value::String(s) => EValue::String(s.to_string()),
            Value::Tensor(t) => EValue::Tensor(self.read_tensor(t)?),
            Value::IntList(items) => EValue::IntList(
                items
                    .iter()
                    .map(|&i| {
                        if let Value::Int(x) = self.values[i as usize] {
                            x
                        } else {
                            0
                        }
                    })
                    .collect(),
            ),
            Value::DoubleList(d) => EValue::DoubleList(d.clone()),
            Value::BoolList(b) => EValue::BoolList(b.clone()),
            Value::TensorList(items) | Value::OptionalTensorList(items) => {
                let mut ts = Vec::new();
                for &i in items {
                    if let Some(Value::Tensor(t)) = self.values.get(i as usize) {
                        ts.push(self.read_tensor(t)?);
                    }
                }
                EValue::TensorList(ts)
            }
        })
    }

    fn read_tensor(&self, t: &TensorMeta) -> Result<Tensor, ptero_core::Error> {
        let bytes = self.memory.bytes(t.storage, t.nbytes())?;
        let mut out = Tensor::zeros(t.dtype, t.sizes())
            .map_err(|e| ptero_core::Error::invalid(e.to_string()))?;
        if t.is_contiguous() {
            out.bytes_mut().copy_from_slice(bytes);
        } else {
            permute_bytes(t, bytes, out.bytes_mut(), false);
        }
        Ok(out)
    }
}

/// Copies row-major `src` into the tensor's storage, converting to its dim order.
fn write_logical(
    memory: &mut Memory,
    meta: &TensorMeta,
    src: &[u8],
) -> Result<(), ptero_core::Error> {
    if src.len() != meta.nbytes() {
        return Err(ptero_core::Error::invalid(format!(
            "expected {} bytes, got {}",
            meta.nbytes(),
            src.len()
        )));
    }
    let dst = memory.bytes_mut(meta.storage, meta.nbytes())?;
    if meta.is_contiguous() {
        dst.copy_from_slice(src);
    } else {
        permute_bytes(meta, src, dst, true);
    }
    Ok(())
}

/// Converts between row-major and the tensor's dim order: `to_storage` reads row-major
/// `a` into storage-ordered `b`, otherwise reads storage-ordered `a` into row-major `b`.
fn permute_bytes(meta: &TensorMeta, a: &[u8], b: &mut [u8], to_storage: bool) {
    let es = meta.dtype.size();
    let sizes = meta.sizes();
    let strides = meta.strides();
    let rank = sizes.len();
    if sizes.contains(&0) {
        return;
    }
    let mut idx = [0usize; ptero_core::MAX_DIMS];
    let mut linear = 0usize;
    loop {
        let off: usize = (0..rank).map(|d| idx[d] * strides[d]).sum();
        let (s, d) = if to_storage {
            (linear, off)
        } else {
            (off, linear)
        };
        if let (Some(src), Some(dst)) =
            (a.get(s * es..(s + 1) * es), b.get_mut(d * es..(d + 1) * es))
        {
            dst.copy_from_slice(src);
        }
        linear += 1;
        let mut k = rank;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < sizes[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// Work charged for dispatching one instruction, in element operations.
const INSTRUCTION_WORK: u64 = 16;

/// Elements of the tensor operands of an instruction: the work a kernel does reading its
/// inputs and writing its outputs once.
fn operand_elements(values: &[Value], args: &[u32]) -> u64 {
    let numel = |i: u32| match values.get(i as usize) {
        Some(Value::Tensor(t)) => t.numel() as u64,
        _ => 0,
    };
    let mut total = 0u64;
    for &a in args {
        match values.get(a as usize) {
            Some(Value::Tensor(t)) => total = total.saturating_add(t.numel() as u64),
            Some(Value::TensorList(items)) | Some(Value::OptionalTensorList(items)) => {
                for &i in items {
                    total = total.saturating_add(numel(i));
                }
            }
            _ => {}
        }
    }
    total
}

/// `values[to] = values[from]`, reusing the target's allocation for tensors.
fn move_value(values: &mut [Value], from: usize, to: usize) {
    if from == to {
        return;
    }
    if let (Value::Tensor(src), Value::Tensor(_)) = (&values[from], &values[to]) {
        let src: TensorMeta = **src;
        if let Value::Tensor(dst) = &mut values[to] {
            **dst = src;
        }
        return;
    }
    values[to] = values[from].clone();
}
