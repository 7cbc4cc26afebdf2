//! A harness that runs one kernel on owned tensors, for kernel unit tests (here and in
//! other crates). Not part of the stable API.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use ptero_core::{
    AlignedBuf, BorrowSet, Dynamism, Element, Error, ExecContext, KernelArgs, KernelFn, Memory,
    Result, ScalarType, Storage, TensorMeta, Value, DEFAULT_SCRATCH_LIMIT,
};

use crate::util::{for_each_index, load_f64, store_f64};

/// A tensor owning its bytes (in storage order).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    pub dtype: ScalarType,
    pub sizes: Vec<usize>,
    pub dim_order: Vec<u8>,
    pub bytes: Vec<u8>,
}

impl OwnedTensor {
    /// A contiguous tensor from row-major values.
    pub fn new<T: Element>(sizes: &[usize], data: &[T]) -> OwnedTensor {
        assert_eq!(
            sizes.iter().product::<usize>(),
            data.len(),
            "test tensor shape/data mismatch"
        );
        OwnedTensor {
            dtype: T::DTYPE,
            sizes: sizes.to_vec(),
            dim_order: (0..sizes.len() as u8).collect(),
            bytes: bytemuck::cast_slice(data).to_vec(),
        }
    }

    /// A contiguous tensor of `dtype` from row-major f64 values (cast like PyTorch).
    pub fn from_f64(dtype: ScalarType, sizes: &[usize], data: &[f64]) -> OwnedTensor {
        assert_eq!(sizes.iter().product::<usize>(), data.len());
        let mut bytes = vec![0u8; data.len() * dtype.size()];
        for (i, &v) in data.iter().enumerate() {
            store_f64(&mut bytes, dtype, i, v);
        }
        OwnedTensor {
            dtype,
            sizes: sizes.to_vec(),
            dim_order: (0..sizes.len() as u8).collect(),
            bytes,
        }
    }

    /// A bool tensor.
    pub fn bools(sizes: &[usize], data: &[bool]) -> OwnedTensor {
        OwnedTensor {
            dtype: ScalarType::Bool,
            sizes: sizes.to_vec(),
            dim_order: (0..sizes.len() as u8).collect(),
            bytes: data.iter().map(|&b| b as u8).collect(),
        }
    }

    /// Zero-filled output placeholder with room for `sizes`.
    pub fn zeros(dtype: ScalarType, sizes: &[usize]) -> OwnedTensor {
        OwnedTensor {
            dtype,
            sizes: sizes.to_vec(),
            dim_order: (0..sizes.len() as u8).collect(),
            bytes: vec![0; sizes.iter().product::<usize>() * dtype.size()],
        }
    }

    fn meta(&self, storage: Storage) -> TensorMeta {
        TensorMeta::new(
            self.dtype,
            &self.sizes,
            &self.dim_order,
            Dynamism::DynamicBound,
            storage,
        )
        .expect("valid test tensor")
    }

    /// The same values stored in another dim order (e.g. `[0, 2, 3, 1]`, channels last).
    pub fn with_dim_order(&self, order: &[u8]) -> OwnedTensor {
        let src = self.meta(Storage::None);
        let dst = TensorMeta::new(
            self.dtype,
            &self.sizes,
            order,
            Dynamism::Static,
            Storage::None,
        )
        .expect("order");
        let mut bytes = vec![0u8; self.bytes.len()];
        let es = self.dtype.size();
        for_each_index(&self.sizes, |idx| {
            let so: usize = idx.iter().zip(src.strides()).map(|(i, s)| i * s).sum();
            let d: usize = idx.iter().zip(dst.strides()).map(|(i, s)| i * s).sum();
            bytes[d * es..(d + 1) * es].copy_from_slice(&self.bytes[so * es..(so + 1) * es]);
        });
        OwnedTensor {
            dtype: self.dtype,
            sizes: self.sizes.clone(),
            dim_order: order.to_vec(),
            bytes,
        }
    }

    /// Values in row-major logical order, as f64 (whatever the dim order).
    pub fn to_f64(&self) -> Vec<f64> {
        let m = self.meta(Storage::None);
        let mut out = Vec::new();
        for_each_index(&self.sizes, |idx| {
            let o: usize = idx.iter().zip(m.strides()).map(|(i, s)| i * s).sum();
            out.push(load_f64(&self.bytes, self.dtype, o));
        });
        out
    }
}

/// A kernel argument for [`run`].
#[derive(Debug, Clone)]
pub enum Arg {
    /// An input tensor.
    T(OwnedTensor),
    /// An output tensor of this dtype whose shape the kernel sets, with room for `bound`
    /// elements (`DynamicBound`), initial shape `sizes`.
    Out(ScalarType, Vec<usize>),
    None,
    Int(i64),
    Double(f64),
    Bool(bool),
    Str(String),
    Ints(Vec<i64>),
    Doubles(Vec<f64>),
    Bools(Vec<bool>),
    Tensors(Vec<OwnedTensor>),
    OptTensors(Vec<Option<OwnedTensor>>),
    /// A list of outputs (e.g. `split_copy`): dtype and initial shapes.
    OutList(ScalarType, Vec<Vec<usize>>),
    /// An output with the dtype, initial shape and dim order of the given tensor (e.g. a
    /// channels-last out).
    OutLike(OwnedTensor),
    /// An input tensor stored in the program's constant data (weights), which a kernel's
    /// prepare step may read at load.
    Const(OwnedTensor),
}

/// Output of [`run`]: out tensors (and list items) in argument order, plus scalar results.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub tensors: Vec<OwnedTensor>,
    /// Final value of every argument, for ops that write `Int`s (`sym_size`).
    pub values: Vec<Value>,
}

/// Runs `kernel` once. Output tensors get storage sized for 4x their initial shape, so
/// kernels that resize can grow within that bound.
pub fn run(kernel: KernelFn, args: Vec<Arg>) -> Result<Outputs> {
    let ctx = ExecContext {
        scratch_limit: DEFAULT_SCRATCH_LIMIT,
        ..ExecContext::default()
    };
    run_with(kernel, args, ctx).map(|(o, _)| o)
}

/// Like [`run`], with the interpreter's context (interrupt, scratch limit); also returns
/// the work the kernel charged.
pub fn run_with(kernel: KernelFn, args: Vec<Arg>, ctx: ExecContext<'_>) -> Result<(Outputs, u64)> {
    run_prepared(kernel, None, args, ctx)
}

/// Like [`run_with`], running `prepare` first (as the interpreter does at load) and
/// handing its state to the kernel; scratch buffers are reserved as it asks.
pub fn run_prepared(
    kernel: KernelFn,
    prepare: Option<ptero_core::PrepareFn>,
    args: Vec<Arg>,
    ctx: ExecContext<'_>,
) -> Result<(Outputs, u64)> {
    // Constant tensors go into one shared buffer, each at a 64-byte aligned offset.
    let mut constants: Vec<u8> = Vec::new();
    let mut const_offsets: Vec<usize> = Vec::new();
    for a in &args {
        if let Arg::Const(t) = a {
            let off = constants.len().div_ceil(64) * 64;
            constants.resize(off, 0);
            constants.extend_from_slice(&t.bytes);
            const_offsets.push(off);
        }
    }
    let mut const_offsets = const_offsets.into_iter();
    let mut memory = Memory::new(Arc::new(constants));
    let mut values: Vec<Value> = Vec::new();
    let mut arg_idx: Vec<u32> = Vec::new();
    let mut outs: Vec<u32> = Vec::new();
    let add_tensor =
        |values: &mut Vec<Value>, memory: &mut Memory, t: &OwnedTensor, out: bool| -> u32 {
            let cap = if out {
                (t.bytes.len() * 4).max(64)
            } else {
                t.bytes.len()
            };
            let mut buf = AlignedBuf::zeroed(cap);
            buf.as_mut_slice()[..t.bytes.len()].copy_from_slice(&t.bytes);
            let id = memory.add_buffer(buf);
            let mut m = t.meta(Storage::Buffer { id, offset: 0 });
            m.set_capacity(cap);
            values.push(Value::Tensor(Box::new(m)));
            (values.len() - 1) as u32
        };
    for a in &args {
        let idx = match a {
            Arg::T(t) => add_tensor(&mut values, &mut memory, t, false),
            Arg::Const(t) => {
                let offset = const_offsets.next().unwrap_or(0);
                let m = t.meta(Storage::Constant { offset });
                push(&mut values, Value::Tensor(Box::new(m)))
            }
            Arg::Out(dtype, sizes) => {
                let i = add_tensor(
                    &mut values,
                    &mut memory,
                    &OwnedTensor::zeros(*dtype, sizes),
                    true,
                );
                outs.push(i);
                i
            }
            Arg::OutLike(t) => {
                let i = add_tensor(&mut values, &mut memory, t, true);
                outs.push(i);
                i
            }
            Arg::None => push(&mut values, Value::None),
            Arg::Int(v) => push(&mut values, Value::Int(*v)),
            Arg::Double(v) => push(&mut values, Value::Double(*v)),
            Arg::Bool(v) => push(&mut values, Value::Bool(*v)),
            Arg::Str(s) => push(&mut values, Value::String(s.clone().into_boxed_str())),
            Arg::Ints(items) => {
                let ids: Vec<u32> = items
                    .iter()
                    .map(|&v| push(&mut values, Value::Int(v)))
                    .collect();
                push(&mut values, Value::IntList(ids))
            }
            Arg::Doubles(items) => push(&mut values, Value::DoubleList(items.clone())),
            Arg::Bools(items) => push(&mut values, Value::BoolList(items.clone())),
            Arg::Tensors(ts) => {
                let ids: Vec<u32> = ts
                    .iter()
                    .map(|t| add_tensor(&mut values, &mut memory, t, false))
                    .collect();
                push(&mut values, Value::TensorList(ids))
            }
            Arg::OptTensors(ts) => {
                let ids: Vec<u32> = ts
                    .iter()
                    .map(|t| match t {
                        Some(t) => add_tensor(&mut values, &mut memory, t, false),
                        None => push(&mut values, Value::None),
                    })
                    .collect();
                push(&mut values, Value::OptionalTensorList(ids))
            }
            Arg::OutList(dtype, shapes) => {
                let ids: Vec<u32> = shapes
                    .iter()
                    .map(|s| {
                        add_tensor(
                            &mut values,
                            &mut memory,
                            &OwnedTensor::zeros(*dtype, s),
                            true,
                        )
                    })
                    .collect();
                outs.extend(&ids);
                push(&mut values, Value::TensorList(ids))
            }
        };
        arg_idx.push(idx);
    }
    // The trailing return slot the official format appends.
    arg_idx.push(push(&mut values, Value::None));
    let mut borrows = BorrowSet::with_capacity(arg_idx.len() * 2);
    let prepared = match prepare {
        Some(p) => {
            let ka =
                KernelArgs::new(&mut values, &arg_idx, &mut memory, &mut borrows).with_context(ctx);
            p(&ka)?
        }
        None => ptero_core::Prepared::default(),
    };
    let arena = ptero_core::SlotArena::new(
        ctx.parallel.map_or(1, |p| p.threads()),
        prepared.scratch_floats,
    )
    .ok_or(Error::OutOfMemory {
        bytes: prepared.scratch_floats * 4,
        limit: DEFAULT_SCRATCH_LIMIT,
    })?;
    let ctx = ExecContext {
        arena: if prepared.scratch_floats > 0 {
            Some(&arena)
        } else {
            ctx.arena
        },
        ..ctx
    };
    let charged = {
        let mut ka = KernelArgs::new(&mut values, &arg_idx, &mut memory, &mut borrows)
            .with_context(ctx)
            .with_state(prepared.state.as_deref());
        kernel(&mut ka)?;
        ka.charged()
    };
    let mut tensors = Vec::new();
    for o in outs {
        let Value::Tensor(m) = &values[o as usize] else {
            return Err(Error::invalid("out value changed kind"));
        };
        let bytes = memory.bytes(m.storage, m.nbytes())?.to_vec();
        tensors.push(OwnedTensor {
            dtype: m.dtype,
            sizes: m.sizes().to_vec(),
            dim_order: m.dim_order().to_vec(),
            bytes,
        });
    }
    let values = arg_idx
        .iter()
        .map(|&i| values[i as usize].clone())
        .collect();
    Ok((Outputs { tensors, values }, charged))
}

fn push(values: &mut Vec<Value>, v: Value) -> u32 {
    values.push(v);
    (values.len() - 1) as u32
}

/// Dtypes of the tensor arguments, as the interpreter keys kernels.
fn arg_dtypes(args: &[Arg]) -> Vec<ScalarType> {
    let mut v = Vec::new();
    for a in args {
        match a {
            Arg::T(t) | Arg::Const(t) | Arg::OutLike(t) => v.push(t.dtype),
            Arg::Out(d, _) => v.push(*d),
            Arg::Tensors(ts) => v.extend(ts.iter().map(|t| t.dtype)),
            Arg::OutList(d, shapes) => v.extend(shapes.iter().map(|_| *d)),
            _ => {}
        }
    }
    v
}

/// A two-thread pool shared by kernel tests, so every test also runs the threaded paths.
#[cfg(feature = "std")]
pub fn test_pool() -> &'static ptero_simd::pool::ThreadPool {
    static POOL: std::sync::OnceLock<ptero_simd::pool::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| ptero_simd::pool::ThreadPool::new(2))
}

/// Runs the portable kernel registered as `name` for these arguments' dtypes, with its
/// prepare step, on the shared test pool.
pub fn run_op(name: &str, args: Vec<Arg>) -> Result<Outputs> {
    let ctx = ExecContext {
        scratch_limit: DEFAULT_SCRATCH_LIMIT,
        ..ExecContext::default()
    };
    run_op_with(name, args, ctx).map(|(o, _)| o)
}

/// Runs the portable kernel registered as `name` with the interpreter's context; returns
/// the outputs and the work the kernel charged.
pub fn run_op_with(name: &str, args: Vec<Arg>, ctx: ExecContext<'_>) -> Result<(Outputs, u64)> {
    let reg = crate::portable();
    let e = reg
        .lookup_entry(name, &arg_dtypes(&args))
        .ok_or_else(|| Error::NotImplemented(alloc::format!("no kernel {name}")))?;
    #[cfg(feature = "std")]
    let ctx = ExecContext {
        parallel: ctx.parallel.or(Some(test_pool())),
        ..ctx
    };
    run_prepared(e.kernel, e.prepare, args, ctx)
}

/// An interrupt that has always fired (a deadline already passed).
pub struct Fired;

impl ptero_core::Interrupt for Fired {
    fn is_interrupted(&self) -> bool {
        true
    }
}

/// Runs `name` as if the caller's deadline had already passed.
pub fn run_op_interrupted(name: &str, args: Vec<Arg>) -> Result<Outputs> {
    let ctx = ExecContext {
        interrupt: Some(&Fired),
        scratch_limit: DEFAULT_SCRATCH_LIMIT,
        ..ExecContext::default()
    };
    run_op_with(name, args, ctx).map(|(o, _)| o)
}

/// Asserts `got` is within `atol + rtol * |want|` of `want`, elementwise, NaN matching NaN.
#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "length mismatch: got {got:?}, want {want:?}"
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= atol + rtol * w.abs();
        assert!(
            ok,
            "element {i}: got {g}, want {w}\n got: {got:?}\nwant: {want:?}"
        );
    }
}
