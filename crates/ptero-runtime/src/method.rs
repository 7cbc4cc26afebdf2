use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use ptero_core::{
    AlignedBuf, BorrowSet, KernelArgs, KernelFn, KernelRegistry, Memory, ScalarType, Storage,
    TensorMeta, Value,
};
use ptero_format::fb;

use crate::backend::{BackendInitContext, CompileSpec, DelegateHandle};
use crate::evalue::{EValue, Tensor};
use crate::method_meta::MethodMeta;
use crate::parse::{invalid, io_indices, operator_name, parse_values, planned_sizes};
use crate::{BackendRegistry, Error, Program, MAX_INSTRUCTIONS};

#[derive(Debug, Clone, Copy)]
enum Instr {
    Kernel { op: u32, start: u32, len: u32 },
    Delegate { index: u32, start: u32, len: u32 },
    Move { from: u32, to: u32 },
    JumpFalse { cond: u32, dest: u32 },
    Free { value: u32 },
}

/// A method ready to run: values, planned memory, resolved kernels and delegates.
///
/// Loading allocates everything the method needs; [`Method::execute`] then runs the
/// instructions without allocating. Mutable buffers (e.g. a KV cache) keep their contents
/// across calls.
pub struct Method {
    meta: MethodMeta,
    values: Vec<Value>,
    memory: Memory,
    chains: Vec<Vec<Instr>>,
    arg_pool: Vec<u32>,
    kernels: Vec<Option<KernelFn>>,
    operators: Vec<String>,
    delegates: Vec<Box<dyn DelegateHandle>>,
    delegate_names: Vec<String>,
    inputs: Vec<u32>,
    outputs: Vec<u32>,
    /// Primitive inputs' traced values, which callers must pass unchanged.
    input_set: Vec<bool>,
    borrows: BorrowSet,
    executions: u64,
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
    ) -> Result<Method, Error> {
        let meta = program.method_meta(name)?.clone();
        let pte = program.pte()?;
        let plan = pte.method(name).ok_or_else(|| Error::MethodNotFound {
            name: name.to_string(),
            available: program
                .method_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })?;
        let planned = planned_sizes(&plan, name)?;
        let parsed = parse_values(&pte, &plan, name, &planned)?;
        let mut values = parsed.values;
        let n = values.len();

        let mut memory = Memory::new(program.shared());
        for &size in &planned {
            let buf = AlignedBuf::try_zeroed(size).ok_or(Error::OutOfMemory {
                method: name.into(),
                bytes: size,
            })?;
            memory.add_buffer(buf);
        }
        for (idx, range) in &parsed.inits {
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

        let inputs = io_indices(plan.inputs(), n, name, "an input")?;
        let outputs = io_indices(plan.outputs(), n, name, "an output")?;
        // Unplanned input and output tensors get buffers of their own, sized to their bound.
        for &i in inputs.iter().chain(&outputs) {
            if let Some(Value::Tensor(t)) = values.get_mut(i as usize) {
                if t.storage == Storage::None {
                    let cap = t.capacity();
                    let buf = AlignedBuf::try_zeroed(cap).ok_or(Error::OutOfMemory {
                        method: name.into(),
                        bytes: cap,
                    })?;
                    let id = memory.add_buffer(buf);
                    t.set_storage(Storage::Buffer { id, offset: 0 }, cap);
                }
            }
        }

        let operators: Vec<String> = plan
            .operators()
            .into_iter()
            .flatten()
            .map(|op| operator_name(op.name().unwrap_or(""), op.overload().unwrap_or("")))
            .collect();
        let num_delegates = plan.delegates().map_or(0, |d| d.len());

        let mut chains = Vec::new();
        let mut arg_pool: Vec<u32> = Vec::new();
        let mut kernel_for_op: Vec<Option<KernelFn>> = alloc::vec![None; operators.len()];
        let mut missing: Vec<String> = Vec::new();
        let mut max_views = 8usize;
        let check = |i: i32, what: &str| -> Result<u32, Error> {
            if i < 0 || i as usize >= n {
                return Err(invalid(
                    name,
                    format!("{what} refers to value {i}, but the method has {n} values"),
                ));
            }
            Ok(i as u32)
        };
        for chain in plan.chains().into_iter().flatten() {
            let mut instrs = Vec::new();
            let count = chain.instructions().map_or(0, |v| v.len());
            for (pc, ins) in chain.instructions().into_iter().flatten().enumerate() {
                use fb::InstructionArguments as IA;
                let at = |m: &str| format!("instruction {pc}: {m}");
                let instr = match ins.instr_args_type() {
                    IA::KernelCall => {
                        let k = ins
                            .instr_args_as_kernel_call()
                            .ok_or_else(|| invalid(name, at("empty kernel call")))?;
                        let op = k.op_index();
                        if op < 0 || op as usize >= operators.len() {
                            return Err(invalid(
                                name,
                                at(&format!(
                                    "operator index {op} out of range ({} operators)",
                                    operators.len()
                                )),
                            ));
                        }
                        let start = arg_pool.len() as u32;
                        let mut views = 0;
                        for a in k.args().into_iter().flatten() {
                            let v = check(a, &at("an argument"))?;
                            views += match &values[v as usize] {
                                Value::TensorList(l) | Value::OptionalTensorList(l) => l.len(),
                                _ => 1,
                            };
                            arg_pool.push(v);
                        }
                        max_views = max_views.max(views);
                        let len = arg_pool.len() as u32 - start;
                        let opname = &operators[op as usize];
                        if kernel_for_op[op as usize].is_none() {
                            let dtypes = tensor_dtypes(&values, &arg_pool[start as usize..]);
                            match kernels.lookup(opname, &dtypes) {
                                Some(f) => kernel_for_op[op as usize] = Some(f),
                                None => {
                                    if !missing.contains(opname) {
                                        missing.push(opname.clone());
                                    }
                                }
                            }
                        }
                        Instr::Kernel {
                            op: op as u32,
                            start,
                            len,
                        }
                    }
                    IA::DelegateCall => {
                        let d = ins
                            .instr_args_as_delegate_call()
                            .ok_or_else(|| invalid(name, at("empty delegate call")))?;
                        let di = d.delegate_index();
                        if di < 0 || di as usize >= num_delegates {
                            return Err(invalid(
                                name,
                                at(&format!(
                                    "delegate index {di} out of range ({num_delegates} delegates)"
                                )),
                            ));
                        }
                        let start = arg_pool.len() as u32;
                        for a in d.args().into_iter().flatten() {
                            arg_pool.push(check(a, &at("a delegate argument"))?);
                        }
                        let len = arg_pool.len() as u32 - start;
                        max_views = max_views.max(len as usize);
                        Instr::Delegate {
                            index: di as u32,
                            start,
                            len,
                        }
                    }
                    IA::MoveCall => {
                        let m = ins
                            .instr_args_as_move_call()
                            .ok_or_else(|| invalid(name, at("empty move")))?;
                        Instr::Move {
                            from: check(m.move_from(), &at("move source"))?,
                            to: check(m.move_to(), &at("move target"))?,
                        }
                    }
                    IA::JumpFalseCall => {
                        let j = ins
                            .instr_args_as_jump_false_call()
                            .ok_or_else(|| invalid(name, at("empty jump")))?;
                        let dest = j.destination_instruction();
                        if dest < 0 || dest as usize > count {
                            return Err(invalid(
                                name,
                                at(&format!(
                                    "jump destination {dest} out of range ({count} instructions)"
                                )),
                            ));
                        }
                        Instr::JumpFalse {
                            cond: check(j.cond_value_index(), &at("jump condition"))?,
                            dest: dest as u32,
                        }
                    }
                    IA::FreeCall => {
                        let f = ins
                            .instr_args_as_free_call()
                            .ok_or_else(|| invalid(name, at("empty free")))?;
                        Instr::Free {
                            value: check(f.value_index(), &at("free"))?,
                        }
                    }
                    other => {
                        return Err(invalid(
                            name,
                            at(&format!("unknown instruction kind {}", other.0)),
                        ))
                    }
                };
                instrs.push(instr);
            }
            chains.push(instrs);
        }
        if !missing.is_empty() {
            return Err(Error::MissingOperators {
                method: name.into(),
                operators: missing,
            });
        }

        let mut delegates: Vec<Box<dyn DelegateHandle>> = Vec::new();
        let mut delegate_names = Vec::new();
        let named = |key: &str| pte.named_data(key);
        for d in plan.delegates().into_iter().flatten() {
            let id = d.id().unwrap_or("").to_string();
            let backend = backends.get(&id).ok_or_else(|| Error::UnknownBackend {
                method: name.into(),
                backend: id.clone(),
                available: backends.names(),
            })?;
            let processed = pte
                .delegate_data(&d)
                .map_err(|e| invalid(name, format!("delegate '{id}': {e}")))?;
            let specs: Vec<CompileSpec> = d
                .compile_specs()
                .into_iter()
                .flatten()
                .map(|s| CompileSpec {
                    key: s.key().unwrap_or("").to_string(),
                    value: s.value().map(|v| v.bytes().to_vec()).unwrap_or_default(),
                })
                .collect();
            let ctx = BackendInitContext {
                method_name: name,
                named_data: &named,
            };
            let handle =
                backend
                    .init(&ctx, processed, &specs)
                    .map_err(|message| Error::BackendInit {
                        method: name.into(),
                        backend: id.clone(),
                        message,
                    })?;
            delegates.push(handle);
            delegate_names.push(id);
        }

        let input_set = inputs
            .iter()
            .map(|&i| !matches!(values[i as usize], Value::Tensor(_)))
            .collect();
        Ok(Method {
            meta,
            values,
            memory,
            chains,
            arg_pool,
            kernels: kernel_for_op,
            operators,
            delegates,
            delegate_names,
            inputs,
            outputs,
            input_set,
            borrows: BorrowSet::with_capacity(max_views * 2),
            executions: 0,
        })
    }

    /// The method's metadata.
    pub fn meta(&self) -> &MethodMeta {
        &self.meta
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }

    pub fn num_outputs(&self) -> usize {
        self.outputs.len()
    }

    /// Bytes of memory the method owns (planned arenas plus I/O buffers).
    pub fn memory_bytes(&self) -> usize {
        self.memory.total_bytes()
    }

    /// How many times `execute` has completed.
    pub fn executions(&self) -> u64 {
        self.executions
    }

    fn input_value(&self, index: usize) -> Result<usize, Error> {
        self.inputs
            .get(index)
            .map(|&i| i as usize)
            .ok_or_else(|| Error::Input {
                index,
                message: format!("the method has {} inputs", self.inputs.len()),
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
        if values.len() != self.inputs.len() {
            return Err(Error::Input {
                index: values.len().min(self.inputs.len()),
                message: format!(
                    "method '{}' takes {} inputs, got {}",
                    self.meta.name,
                    self.inputs.len(),
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
    pub fn execute(&mut self) -> Result<(), Error> {
        if let Some(i) = self.input_set.iter().position(|s| !s) {
            return Err(Error::Input {
                index: i,
                message: "not set".into(),
            });
        }
        let mut budget = MAX_INSTRUCTIONS;
        for c in 0..self.chains.len() {
            let n = self.chains[c].len();
            let mut pc = 0usize;
            while pc < n {
                if budget == 0 {
                    return Err(Error::InstructionBudget {
                        method: self.meta.name.clone(),
                        limit: MAX_INSTRUCTIONS,
                    });
                }
                budget -= 1;
                let instr = self.chains[c][pc];
                pc += 1;
                match instr {
                    Instr::Kernel { op, start, len } => {
                        let Some(kernel) = self.kernels[op as usize] else {
                            return Err(self.exec_err(
                                pc - 1,
                                op,
                                ptero_core::Error::NotImplemented("kernel".into()),
                            ));
                        };
                        let args = &self.arg_pool[start as usize..(start + len) as usize];
                        let mut ka = KernelArgs::new(
                            &mut self.values,
                            args,
                            &mut self.memory,
                            &mut self.borrows,
                        );
                        if let Err(e) = kernel(&mut ka) {
                            return Err(self.exec_err(pc - 1, op, e));
                        }
                    }
                    Instr::Delegate { index, start, len } => {
                        let args = &self.arg_pool[start as usize..(start + len) as usize];
                        let mut ka = KernelArgs::new(
                            &mut self.values,
                            args,
                            &mut self.memory,
                            &mut self.borrows,
                        );
                        if let Err(source) = self.delegates[index as usize].execute(&mut ka) {
                            return Err(Error::Execution {
                                method: self.meta.name.clone(),
                                instruction: pc - 1,
                                operator: format!(
                                    "delegate {}",
                                    self.delegate_names[index as usize]
                                ),
                                source,
                            });
                        }
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
                            pc = dest as usize;
                        }
                    }
                    Instr::Free { value } => {
                        if let Value::Tensor(t) = &mut self.values[value as usize] {
                            t.set_storage(Storage::None, 0);
                        }
                    }
                }
            }
        }
        self.executions += 1;
        Ok(())
    }

    fn exec_err(&self, instruction: usize, op: u32, source: ptero_core::Error) -> Error {
        Error::Execution {
            method: self.meta.name.clone(),
            instruction,
            operator: self.operators.get(op as usize).cloned().unwrap_or_default(),
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
        self.outputs
            .get(index)
            .map(|&i| &self.values[i as usize])
            .ok_or_else(|| Error::Output {
                index,
                message: format!("the method has {} outputs", self.outputs.len()),
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
        (0..self.outputs.len()).map(|i| self.output(i)).collect()
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
