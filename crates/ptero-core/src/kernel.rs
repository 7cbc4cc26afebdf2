//! What a kernel receives: [`KernelArgs`], a typed window on the instruction's operands.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicBool, Ordering};

use ptero_simd::{Parallel, Serial, SlotArena};

use crate::memory::Located;
use crate::{Error, Memory, Result, ScalarType, Storage, TensorMeta, TensorMut, TensorRef, Value};

/// A kernel: reads its arguments and writes its outputs through [`KernelArgs`].
///
/// Arguments follow the operator's schema order, out-arguments included; the official
/// format appends one extra slot for the return value, which kernels ignore.
pub type KernelFn = fn(&mut KernelArgs<'_>) -> Result<()>;

/// A kernel's load-time step, run once per instruction with that instruction's operands:
/// constant tensors can be read (to pack weights, say), other tensors only described. What
/// it returns is handed back to every call of the instruction ([`KernelArgs::state`]).
pub type PrepareFn = fn(&KernelArgs<'_>) -> Result<Prepared>;

/// What a [`PrepareFn`] keeps for its instruction.
#[derive(Default)]
pub struct Prepared {
    /// Per-instruction state, e.g. packed weights.
    pub state: Option<Box<dyn Any + Send + Sync>>,
    /// f32 of scratch each thread needs while the instruction runs; the method reserves
    /// the largest such need once ([`KernelArgs::arena`]).
    pub scratch_floats: usize,
}

impl core::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Prepared")
            .field("state", &self.state.is_some())
            .field("scratch_floats", &self.scratch_floats)
            .finish()
    }
}

/// Item of an `OptionalTensorList` that is `None` (the format writes -1).
pub const NONE_INDEX: u32 = u32::MAX;

/// A number argument (`Scalar` in the ATen schema).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Scalar {
    pub fn to_f64(self) -> f64 {
        match self {
            Scalar::Int(i) => i as f64,
            Scalar::Double(d) => d,
            Scalar::Bool(b) => b as i64 as f64,
        }
    }
    pub fn to_i64(self) -> i64 {
        match self {
            Scalar::Int(i) => i,
            Scalar::Double(d) => d as i64,
            Scalar::Bool(b) => b as i64,
        }
    }
    /// The dtype PyTorch gives a wrapped number of this kind (`int64`, `float64`, `bool`).
    pub fn dtype(self) -> ScalarType {
        match self {
            Scalar::Int(_) => ScalarType::Long,
            Scalar::Double(_) => ScalarType::Double,
            Scalar::Bool(_) => ScalarType::Bool,
        }
    }
}

/// Scratch budget of a kernel call when the interpreter gives none (tests, direct calls).
pub const DEFAULT_SCRATCH_LIMIT: usize = 1 << 32;

/// A zero-filled vector of `len` items, or [`Error::OutOfMemory`] when it would be over
/// `limit` bytes or the allocator refuses.
pub fn scratch_vec<T: Clone + Default>(len: usize, limit: usize) -> Result<Vec<T>> {
    let bytes = len
        .checked_mul(core::mem::size_of::<T>())
        .ok_or(Error::OutOfMemory {
            bytes: usize::MAX,
            limit,
        })?;
    if bytes > limit {
        return Err(Error::OutOfMemory { bytes, limit });
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory { bytes, limit })?;
    v.resize(len, T::default());
    Ok(v)
}

/// Wraps a possibly negative dimension index, PyTorch style (a 0-d tensor accepts -1 and 0).
pub fn normalize_dim(dim: i64, rank: usize) -> Result<usize> {
    let r = rank.max(1) as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r {
        return Err(Error::invalid(format!(
            "dimension {dim} is out of range for a {rank}-d tensor"
        )));
    }
    Ok(d as usize)
}

/// Asks a running method to stop: checked between instructions and at chunk boundaries
/// inside long kernels, so [`KernelArgs::check_interrupt`] fails soon after it answers
/// `true`. Implementations must be cheap (a relaxed atomic load, a clock read).
pub trait Interrupt: Send + Sync {
    fn is_interrupted(&self) -> bool;
}

/// A cancellation flag shared between the caller and a running method.
///
/// ```
/// use std::sync::Arc;
/// use ptero_core::{CancelToken, Interrupt};
/// let token = Arc::new(CancelToken::new());
/// let for_method: Arc<dyn Interrupt> = token.clone();
/// token.cancel();
/// assert!(for_method.is_interrupted());
/// ```
#[derive(Debug, Default)]
pub struct CancelToken(AtomicBool);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken(AtomicBool::new(false))
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Clears the flag so the method can run again.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Interrupt for CancelToken {
    fn is_interrupted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the interpreter lends a kernel besides its operands: the caller's interrupt, the
/// scratch-memory budget, the threads and scratch buffers to compute with, and the state
/// the kernel's prepare step made for this instruction.
#[derive(Clone, Copy, Default)]
pub struct ExecContext<'a> {
    pub interrupt: Option<&'a dyn Interrupt>,
    /// Bytes of scratch memory one kernel call may allocate.
    pub scratch_limit: usize,
    /// Threads to split work over (serial when `None`).
    pub parallel: Option<&'a dyn Parallel>,
    /// Scratch buffers reserved at load, one per thread.
    pub arena: Option<&'a SlotArena>,
    /// What the instruction's [`PrepareFn`] returned.
    pub state: Option<&'a (dyn Any + Send + Sync)>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    buffer: u32,
    start: usize,
    end: usize,
    mutable: bool,
}

/// The operands of one instruction.
///
/// Shared tensor views ([`KernelArgs::tensor`]) and mutable ones ([`KernelArgs::out`]) can
/// be held at the same time; requesting a view that overlaps a mutable one (or a
/// mutable view overlapping any other) is an [`Error::Overlap`], never undefined
/// behaviour. Shapes are changed with [`KernelArgs::resize`] before taking views.
pub struct KernelArgs<'a> {
    values: &'a mut [Value],
    args: &'a [u32],
    memory: &'a mut Memory,
    borrows: RefCell<&'a mut Vec<Region>>,
    ctx: ExecContext<'a>,
    work: Cell<u64>,
}

/// Reusable storage for [`KernelArgs`]' borrow tracking, allocated once per method.
pub struct BorrowSet(Vec<Region>);

impl BorrowSet {
    /// Room for `n` simultaneous views without allocating.
    pub fn with_capacity(n: usize) -> BorrowSet {
        BorrowSet(Vec::with_capacity(n.max(8)))
    }
}

impl<'a> KernelArgs<'a> {
    pub fn new(
        values: &'a mut [Value],
        args: &'a [u32],
        memory: &'a mut Memory,
        borrows: &'a mut BorrowSet,
    ) -> Self {
        borrows.0.clear();
        KernelArgs {
            values,
            args,
            memory,
            borrows: RefCell::new(&mut borrows.0),
            ctx: ExecContext {
                scratch_limit: DEFAULT_SCRATCH_LIMIT,
                ..ExecContext::default()
            },
            work: Cell::new(0),
        }
    }

    /// Attaches the interpreter's interrupt and limits.
    pub fn with_context(mut self, ctx: ExecContext<'a>) -> Self {
        self.ctx = ctx;
        self
    }

    /// Sets the state of this instruction (the interpreter does, from its prepare step).
    pub fn with_state(mut self, state: Option<&'a (dyn Any + Send + Sync)>) -> Self {
        self.ctx.state = state;
        self
    }

    /// The state this instruction's prepare step made, if it is a `T`.
    pub fn state<T: Any>(&self) -> Option<&'a T> {
        self.ctx.state.and_then(|s| s.downcast_ref::<T>())
    }

    /// Threads to split work over ([`Serial`] when the method has none).
    pub fn parallel(&self) -> &'a dyn Parallel {
        match self.ctx.parallel {
            Some(p) => p,
            None => &Serial,
        }
    }

    /// Per-thread scratch buffers reserved at load, if any.
    pub fn arena(&self) -> Option<&'a SlotArena> {
        self.ctx.arena
    }

    /// Fails with [`Error::Interrupted`] once the caller's deadline passed or its token was
    /// cancelled. Long kernels call this between chunks of work.
    pub fn check_interrupt(&self) -> Result<()> {
        match self.ctx.interrupt {
            Some(i) if i.is_interrupted() => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }

    /// Records `units` of work done beyond reading the operands once (multiply-adds of a
    /// matrix product, window elements of a pooling): the interpreter bounds the total
    /// work of a looping program with it.
    pub fn charge(&self, units: u64) {
        self.work.set(self.work.get().saturating_add(units));
    }

    /// Work charged by [`KernelArgs::charge`] during this call.
    pub fn charged(&self) -> u64 {
        self.work.get()
    }

    /// Bytes of scratch memory one call may use: kernels whose work would otherwise be
    /// unbounded by their operands bound it by what materializing it would cost.
    pub fn scratch_limit(&self) -> usize {
        self.ctx.scratch_limit
    }

    /// A zero-filled scratch vector of `len` items, allocated fallibly and within the
    /// method's memory limit: scratch sizes come from tensors and arguments, so a hostile
    /// program must get an error, not an abort.
    pub fn scratch<T: Clone + Default>(&self, len: usize) -> Result<Vec<T>> {
        scratch_vec(len, self.ctx.scratch_limit)
    }

    /// Number of arguments (including out-arguments and the trailing return slot).
    pub fn len(&self) -> usize {
        self.args.len()
    }

    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// Fails unless there are at least `n` arguments.
    pub fn expect_len(&self, n: usize) -> Result<()> {
        if self.args.len() < n {
            return Err(Error::ArgCount {
                expected: n,
                found: self.args.len(),
            });
        }
        Ok(())
    }

    /// Value-table index of argument `i`.
    pub fn value_index(&self, i: usize) -> Result<usize> {
        let idx = *self.args.get(i).ok_or_else(|| Error::ArgCount {
            expected: i + 1,
            found: self.args.len(),
        })? as usize;
        if idx >= self.values.len() {
            return Err(Error::BadValueIndex {
                index: idx,
                len: self.values.len(),
            });
        }
        Ok(idx)
    }

    /// Argument `i` as a raw value.
    pub fn value(&self, i: usize) -> Result<&Value> {
        Ok(&self.values[self.value_index(i)?])
    }

    fn item(&self, idx: u32) -> Result<&Value> {
        self.values.get(idx as usize).ok_or(Error::BadValueIndex {
            index: idx as usize,
            len: self.values.len(),
        })
    }

    fn kind_err(&self, i: usize, expected: &'static str) -> Error {
        let found = self.value(i).map(|v| v.kind()).unwrap_or("nothing");
        Error::ArgKind {
            arg: i,
            expected,
            found,
        }
    }

    pub fn is_none(&self, i: usize) -> Result<bool> {
        Ok(matches!(self.value(i)?, Value::None))
    }

    pub fn int(&self, i: usize) -> Result<i64> {
        match self.value(i)? {
            Value::Int(v) => Ok(*v),
            Value::Bool(b) => Ok(*b as i64),
            _ => Err(self.kind_err(i, "Int")),
        }
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        if self.is_none(i)? {
            Ok(None)
        } else {
            self.int(i).map(Some)
        }
    }

    pub fn double(&self, i: usize) -> Result<f64> {
        match self.value(i)? {
            Value::Double(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            _ => Err(self.kind_err(i, "Double")),
        }
    }

    pub fn opt_double(&self, i: usize) -> Result<Option<f64>> {
        if self.is_none(i)? {
            Ok(None)
        } else {
            self.double(i).map(Some)
        }
    }

    pub fn bool(&self, i: usize) -> Result<bool> {
        match self.value(i)? {
            Value::Bool(v) => Ok(*v),
            _ => Err(self.kind_err(i, "Bool")),
        }
    }

    pub fn opt_bool(&self, i: usize) -> Result<Option<bool>> {
        if self.is_none(i)? {
            Ok(None)
        } else {
            self.bool(i).map(Some)
        }
    }

    pub fn scalar(&self, i: usize) -> Result<Scalar> {
        match self.value(i)? {
            Value::Int(v) => Ok(Scalar::Int(*v)),
            Value::Double(v) => Ok(Scalar::Double(*v)),
            Value::Bool(v) => Ok(Scalar::Bool(*v)),
            _ => Err(self.kind_err(i, "Scalar")),
        }
    }

    pub fn opt_scalar(&self, i: usize) -> Result<Option<Scalar>> {
        if self.is_none(i)? {
            Ok(None)
        } else {
            self.scalar(i).map(Some)
        }
    }

    pub fn string(&self, i: usize) -> Result<&str> {
        match self.value(i)? {
            Value::String(s) => Ok(s),
            _ => Err(self.kind_err(i, "String")),
        }
    }

    pub fn opt_string(&self, i: usize) -> Result<Option<&str>> {
        if self.is_none(i)? {
            Ok(None)
        } else {
            self.string(i).map(Some)
        }
    }

    pub fn int_list(&self, i: usize) -> Result<IntListRef<'_>> {
        match self.value(i)? {
            Value::IntList(items) => Ok(IntListRef {
                items,
                values: self.values,
                arg: i,
            }),
            _ => Err(self.kind_err(i, "IntList")),
        }
    }

    pub fn opt_int_list(&self, i: usize) -> Result<Option<IntListRef<'_>>> {
        if self.is_none(i)? {
            Ok(None)
        } else {
            self.int_list(i).map(Some)
        }
    }

    pub fn double_list(&self, i: usize) -> Result<&[f64]> {
        match self.value(i)? {
            Value::DoubleList(items) => Ok(items),
            _ => Err(self.kind_err(i, "DoubleList")),
        }
    }

    pub fn bool_list(&self, i: usize) -> Result<&[bool]> {
        match self.value(i)? {
            Value::BoolList(items) => Ok(items),
            _ => Err(self.kind_err(i, "BoolList")),
        }
    }

    /// Metadata of tensor argument `i` (no data access, so no borrow is recorded).
    pub fn meta(&self, i: usize) -> Result<&TensorMeta> {
        match self.value(i)? {
            Value::Tensor(t) => Ok(t),
            _ => Err(self.kind_err(i, "Tensor")),
        }
    }

    pub fn opt_meta(&self, i: usize) -> Result<Option<&TensorMeta>> {
        match self.value(i)? {
            Value::None => Ok(None),
            Value::Tensor(t) => Ok(Some(t)),
            _ => Err(self.kind_err(i, "Tensor or None")),
        }
    }

    fn track(&self, l: &Located, mutable: bool, arg: usize) -> Result<()> {
        let Some(buffer) = l.buffer else {
            return if mutable {
                Err(Error::invalid(format!(
                    "argument {arg} is a read-only constant"
                )))
            } else {
                Ok(())
            };
        };
        if l.start == l.end {
            return Ok(());
        }
        let mut borrows = self.borrows.borrow_mut();
        for r in borrows.iter() {
            let overlaps = r.buffer == buffer && r.start < l.end && l.start < r.end;
            if overlaps && (mutable || r.mutable) {
                return Err(Error::Overlap { arg });
            }
        }
        // The capacity is sized from the program at load, so this normally never grows.
        borrows.push(Region {
            buffer,
            start: l.start,
            end: l.end,
            mutable,
        });
        Ok(())
    }

    fn view(&self, meta: &TensorMeta, arg: usize) -> Result<&[u8]> {
        let nbytes = meta.nbytes();
        if nbytes == 0 {
            return Ok(&[]);
        }
        let l = self
            .memory
            .locate(meta.storage, nbytes)
            .map_err(|e| match e {
                Error::NoData { .. } => Error::NoData { arg },
                e => e,
            })?;
        self.track(&l, false, arg)?;
        // SAFETY: `track` verified that no mutable view overlaps this region, and it stays
        // recorded until `self` is dropped, which outlives the returned borrow of `self`.
        Ok(unsafe { l.as_slice() })
    }

    // Views are handed out from `&self` on purpose: the borrow set makes them exclusive at
    // run time, the way `RefCell` does, so inputs and outputs can be held together.
    #[allow(clippy::mut_from_ref)]
    fn view_mut(&self, meta: &TensorMeta, arg: usize) -> Result<&mut [u8]> {
        let nbytes = meta.nbytes();
        if nbytes == 0 {
            return Ok(&mut []);
        }
        let l = self
            .memory
            .locate(meta.storage, nbytes)
            .map_err(|e| match e {
                Error::NoData { .. } => Error::NoData { arg },
                e => e,
            })?;
        self.track(&l, true, arg)?;
        // SAFETY: `track` verified that no other view overlaps this region and recorded it
        // as mutable, so later overlapping requests fail until `self` is dropped.
        Ok(unsafe { l.as_mut_slice() })
    }

    /// Forgets every view handed out so far, so a kernel that runs two steps (a fused
    /// pair falling back to running its halves) can view the same tensors again. Taking
    /// `&mut self` proves no view is still alive.
    pub fn release_views(&mut self) {
        self.borrows.get_mut().clear();
    }

    /// Read-only view of tensor argument `i`.
    pub fn tensor(&self, i: usize) -> Result<TensorRef<'_>> {
        let meta = self.meta(i)?;
        Ok(TensorRef {
            meta,
            bytes: self.view(meta, i)?,
        })
    }

    pub fn opt_tensor(&self, i: usize) -> Result<Option<TensorRef<'_>>> {
        match self.opt_meta(i)? {
            None => Ok(None),
            Some(meta) => Ok(Some(TensorRef {
                meta,
                bytes: self.view(meta, i)?,
            })),
        }
    }

    /// Writable view of tensor argument `i` (an out-argument, or a tensor mutated in place).
    pub fn out(&self, i: usize) -> Result<TensorMut<'_>> {
        let meta = self.meta(i)?;
        Ok(TensorMut {
            meta,
            bytes: self.view_mut(meta, i)?,
        })
    }

    /// Resizes tensor argument `i` (the out-argument of a kernel, typically).
    pub fn resize(&mut self, i: usize, sizes: &[usize]) -> Result<()> {
        let idx = self.value_index(i)?;
        match &mut self.values[idx] {
            Value::Tensor(t) => t.resize(sizes),
            v => Err(Error::ArgKind {
                arg: i,
                expected: "Tensor",
                found: v.kind(),
            }),
        }
    }

    /// Tensor list argument `i`.
    pub fn tensor_list(&self, i: usize) -> Result<TensorListRef<'_, 'a>> {
        match self.value(i)? {
            Value::TensorList(items) | Value::OptionalTensorList(items) => Ok(TensorListRef {
                args: self,
                items,
                arg: i,
            }),
            _ => Err(self.kind_err(i, "TensorList")),
        }
    }

    /// Resizes item `k` of tensor-list argument `i` (for ops whose out is a list).
    pub fn resize_list_item(&mut self, i: usize, k: usize, sizes: &[usize]) -> Result<()> {
        let item = match self.value(i)? {
            Value::TensorList(items) => *items.get(k).ok_or_else(|| {
                Error::invalid(format!(
                    "argument {i}: list item {k} out of range ({} items)",
                    items.len()
                ))
            })?,
            _ => return Err(self.kind_err(i, "TensorList")),
        };
        let len = self.values.len();
        match self.values.get_mut(item as usize) {
            Some(Value::Tensor(t)) => t.resize(sizes),
            Some(v) => Err(Error::ArgKind {
                arg: i,
                expected: "Tensor",
                found: v.kind(),
            }),
            None => Err(Error::BadValueIndex {
                index: item as usize,
                len,
            }),
        }
    }

    /// Writes an `Int` result into argument `i` (symbolic-size ops).
    pub fn set_int(&mut self, i: usize, v: i64) -> Result<()> {
        let idx = self.value_index(i)?;
        self.values[idx] = Value::Int(v);
        Ok(())
    }

    pub fn set_double(&mut self, i: usize, v: f64) -> Result<()> {
        let idx = self.value_index(i)?;
        self.values[idx] = Value::Double(v);
        Ok(())
    }

    pub fn set_bool(&mut self, i: usize, v: bool) -> Result<()> {
        let idx = self.value_index(i)?;
        self.values[idx] = Value::Bool(v);
        Ok(())
    }

    /// Makes tensor `out` share the storage of tensor `src` (a view, no copy).
    pub fn alias(&mut self, out: usize, src: usize) -> Result<()> {
        let src_meta = *self.meta(src)?;
        let oi = self.value_index(out)?;
        match &mut self.values[oi] {
            Value::Tensor(t) => {
                t.set_storage(src_meta.storage, src_meta.capacity());
                Ok(())
            }
            v => Err(Error::ArgKind {
                arg: out,
                expected: "Tensor",
                found: v.kind(),
            }),
        }
    }

    /// Copies `len` bytes from tensor `src`'s storage to tensor `dst`'s (may overlap).
    pub fn copy_storage(&mut self, src: usize, dst: usize, len: usize) -> Result<()> {
        let (s, d) = (self.meta(src)?.storage, self.meta(dst)?.storage);
        if len == 0 {
            return Ok(());
        }
        if matches!(d, Storage::Constant { .. }) {
            return Err(Error::invalid(format!(
                "argument {dst} is a read-only constant"
            )));
        }
        self.memory.copy_within(s, d, len)
    }
}

/// An `IntList` argument; items are resolved through the value table when read.
#[derive(Clone, Copy)]
pub struct IntListRef<'v> {
    items: &'v [u32],
    values: &'v [Value],
    arg: usize,
}

impl<'v> IntListRef<'v> {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Item `k`.
    pub fn get(&self, k: usize) -> Result<i64> {
        let idx = *self.items.get(k).ok_or_else(|| {
            Error::invalid(format!(
                "argument {}: list index {k} out of range ({} items)",
                self.arg,
                self.items.len()
            ))
        })? as usize;
        match self.values.get(idx) {
            Some(Value::Int(v)) => Ok(*v),
            Some(v) => Err(Error::ArgKind {
                arg: self.arg,
                expected: "Int list item",
                found: v.kind(),
            }),
            None => Err(Error::BadValueIndex {
                index: idx,
                len: self.values.len(),
            }),
        }
    }
    /// Items in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<i64>> + '_ {
        (0..self.items.len()).map(|k| self.get(k))
    }
    /// The list as a shape: every item must be a non-negative size.
    pub fn to_dims(&self) -> Result<crate::Dims> {
        let mut d = crate::Dims::new();
        for k in 0..self.len() {
            let v = self.get(k)?;
            if v < 0 {
                return Err(Error::invalid(format!(
                    "argument {}: negative size {v}",
                    self.arg
                )));
            }
            if !d.push(v as usize) {
                return Err(Error::invalid(format!(
                    "argument {}: more than {} dims",
                    self.arg,
                    crate::MAX_DIMS
                )));
            }
        }
        Ok(d)
    }
}

/// A `TensorList` or `OptionalTensorList` argument.
pub struct TensorListRef<'s, 'a> {
    args: &'s KernelArgs<'a>,
    items: &'s [u32],
    arg: usize,
}

impl<'s, 'a> TensorListRef<'s, 'a> {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    fn value(&self, k: usize) -> Result<&'s Value> {
        let idx = *self.items.get(k).ok_or_else(|| {
            Error::invalid(format!(
                "argument {}: list index {k} out of range ({} items)",
                self.arg,
                self.items.len()
            ))
        })?;
        if idx == NONE_INDEX {
            return Ok(&Value::None);
        }
        self.args.item(idx)
    }
    /// Metadata of item `k`, `None` for a `None` item of an optional list.
    pub fn opt_meta(&self, k: usize) -> Result<Option<&'s TensorMeta>> {
        match self.value(k)? {
            Value::Tensor(t) => Ok(Some(t)),
            Value::None => Ok(None),
            v => Err(Error::ArgKind {
                arg: self.arg,
                expected: "Tensor list item",
                found: v.kind(),
            }),
        }
    }
    pub fn meta(&self, k: usize) -> Result<&'s TensorMeta> {
        self.opt_meta(k)?.ok_or(Error::ArgKind {
            arg: self.arg,
            expected: "Tensor list item",
            found: "None",
        })
    }
    /// Read-only view of item `k`.
    pub fn get(&self, k: usize) -> Result<TensorRef<'s>> {
        let meta = self.meta(k)?;
        Ok(TensorRef {
            meta,
            bytes: self.args.view(meta, self.arg)?,
        })
    }
    pub fn get_opt(&self, k: usize) -> Result<Option<TensorRef<'s>>> {
        match self.opt_meta(k)? {
            None => Ok(None),
            Some(meta) => Ok(Some(TensorRef {
                meta,
                bytes: self.args.view(meta, self.arg)?,
            })),
        }
    }
    /// Writable view of item `k` (lists used as out-arguments).
    pub fn get_mut(&self, k: usize) -> Result<TensorMut<'s>> {
        let meta = self.meta(k)?;
        Ok(TensorMut {
            meta,
            bytes: self.args.view_mut(meta, self.arg)?,
        })
    }
}
