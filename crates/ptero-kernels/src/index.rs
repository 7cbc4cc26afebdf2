//! Indexing: advanced indexing (`index.Tensor`, `index_put`, `index_put_`), `index_select`, `gather`,
//! `scatter`/`scatter_add`, `embedding`, `select_scatter` and `slice_scatter`.
//!
//! Index values come from tensors, so every one is range-checked (negative values wrap
//! once, like PyTorch) and a bad index is an error, never a panic.

use alloc::rc::Rc;
use alloc::vec::Vec;

use ptero_core::{
    normalize_dim, Dims, Error, KernelArgs, KernelRegistry, Result, ScalarType, TensorMeta,
    TensorMut, TensorRef,
};

use crate::shape::slice_bounds;
use crate::util::copy::{copy_cast, ElemCopy, Strided};
use crate::util::inline_vec::InlineVec;
use crate::util::work::Meter;
use crate::util::{
    broadcast_shapes, broadcast_strides, for_each_index, load_f64, load_i64, store_f64, store_i64,
    ComputeKind,
};

fn check_index_dtype(arg: usize, t: ScalarType) -> Result<()> {
    if matches!(t, ScalarType::Long | ScalarType::Int) {
        Ok(())
    } else {
        Err(Error::Dtype {
            arg,
            expected: "int64 or int32 indices".into(),
            found: t,
        })
    }
}

/// Wraps a negative index once (PyTorch style) and checks it against `size`. Computed in
/// i128: `size` may exceed `i64::MAX` on an empty tensor, and `v` may be `i64::MIN`.
#[inline]
fn wrap(v: i64, size: usize, what: &str) -> Result<usize> {
    let n = size as i128;
    let i = if v < 0 { v as i128 + n } else { v as i128 };
    if i < 0 || i >= n {
        return Err(Error::invalid(alloc::format!(
            "{what}: index {v} is out of bounds for dimension of size {size}"
        )));
    }
    Ok(i as usize)
}

/// Calls `f` with every multi-index of `shape` in row-major order, stopping at the first
/// error (`for_each_index` cannot stop, which matters when the space is huge and the
/// caller's deadline passes).
pub(crate) fn try_for_each_index(
    shape: &[usize],
    mut f: impl FnMut(&[usize]) -> Result<()>,
) -> Result<()> {
    if shape.contains(&0) {
        return Ok(());
    }
    let mut idx = [0usize; ptero_core::MAX_DIMS];
    let idx = &mut idx[..shape.len()];
    loop {
        f(idx)?;
        let mut d = shape.len();
        loop {
            if d == 0 {
                return Ok(());
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// `o = s` elementwise (same shape; any dim orders and dtypes). Kernels that start from a
/// copy of `self` use this on their single mutable view of `out` (a second mutable view
/// of the same tensor would be refused as overlapping).
fn copy_whole(o: &mut TensorMut<'_>, s: &TensorRef<'_>) -> Result<()> {
    let (ost, sst) = (o.meta.stride_dims(), s.meta.stride_dims());
    copy_cast(
        o.bytes,
        o.meta.dtype,
        Strided::new(&ost, 0),
        s.bytes,
        s.meta.dtype,
        Strided::new(&sst, 0),
        s.meta.sizes(),
    )
}

/// Storage offset of `idx`. Wrapping: the strides of an empty tensor can be huge (they
/// saturate), and such offsets are never used to access data; in a non-empty tensor every
/// in-range offset is exact.
fn elem_offset(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter()
        .zip(strides)
        .fold(0usize, |acc, (i, s)| acc.wrapping_add(i.wrapping_mul(*s)))
}

// ---------------------------------------------------------------------------------------
// Advanced indexing
// ---------------------------------------------------------------------------------------

/// Where an indexed dim gets its index values.
#[derive(Default)]
enum Source {
    /// Item `k` of the indices list (an int tensor).
    Item(usize),
    /// Not yet set (unused inline slot).
    #[default]
    Unset,
    /// Coordinate `dim` of a bool mask's true elements: `coords` is the mask's nonzero(),
    /// row-major `[count, rank]` (scratch memory, shared by the mask's dims).
    Mask {
        coords: Rc<Vec<i64>>,
        rank: usize,
        dim: usize,
    },
}

#[derive(Default)]
struct Indexed {
    self_dim: usize,
    shape: Dims,
    src: Source,
    /// Strides over the broadcast index shape.
    bstrides: Dims,
}

/// The result layout of `self[indices]`.
struct Plan {
    /// Shape of `self[indices]`.
    shape: Dims,
    /// Position of the broadcast index dims in the result.
    b_start: usize,
    b_rank: usize,
    /// For each dim of self: the result position holding its coordinate, for dims not
    /// indexed (`usize::MAX` for indexed ones).
    pos: [usize; ptero_core::MAX_DIMS],
    indexed: InlineVec<Indexed, { ptero_core::MAX_DIMS }>,
}

fn build_plan(a: &KernelArgs<'_>, self_arg: usize, list_arg: usize) -> Result<Plan> {
    let m = a.meta(self_arg)?;
    let rank = m.dim();
    let list = a.tensor_list(list_arg)?;
    let mut indexed: InlineVec<Indexed, { ptero_core::MAX_DIMS }> = InlineVec::new();
    let mut d = 0usize;
    for k in 0..list.len() {
        let Some(im) = list.opt_meta(k)? else {
            d += 1;
            continue;
        };
        match im.dtype {
            ScalarType::Bool | ScalarType::Byte => {
                let md = im.dim().max(1);
                if d + im.dim() > rank || m.sizes()[d..d + im.dim()] != *im.sizes() {
                    return Err(Error::shape(alloc::format!(
                        "index: mask of shape {:?} does not match the indexed dims of {:?} at dim {d}",
                        im.sizes(),
                        m.sizes()
                    )));
                }
                if im.dim() == 0 {
                    // A 0-d mask adds a dim of size 0 or 1 without consuming one.
                    return Err(Error::NotImplemented("index with a 0-d bool mask".into()));
                }
                // nonzero() of the mask: count, then fill fallible scratch.
                let t = list.get(k)?;
                let ist = im.stride_dims();
                let mut count = 0usize;
                for_each_index(im.sizes(), |idx| {
                    count += (load_i64(t.bytes, im.dtype, elem_offset(idx, &ist)) != 0) as usize;
                });
                let rank = im.dim();
                let len = count
                    .checked_mul(rank)
                    .ok_or_else(|| Error::shape("index: mask has too many true elements"))?;
                let mut coords = a.scratch::<i64>(len)?;
                let mut row = 0usize;
                for_each_index(im.sizes(), |idx| {
                    if load_i64(t.bytes, im.dtype, elem_offset(idx, &ist)) != 0 {
                        if let Some(c) = coords.get_mut(row * rank..(row + 1) * rank) {
                            for (c, &i) in c.iter_mut().zip(idx) {
                                *c = i as i64;
                            }
                        }
                        row += 1;
                    }
                });
                let coords = Rc::new(coords);
                for j in 0..rank {
                    indexed.push(Indexed {
                        self_dim: d + j,
                        shape: Dims::from_slice(&[count]).unwrap_or_default(),
                        src: Source::Mask {
                            coords: coords.clone(),
                            rank,
                            dim: j,
                        },
                        bstrides: Dims::new(),
                    })?;
                }
                d += md;
            }
            t => {
                check_index_dtype(list_arg, t)?;
                if d >= rank {
                    return Err(Error::invalid(alloc::format!(
                        "index: too many indices for a {rank}-d tensor"
                    )));
                }
                indexed.push(Indexed {
                    self_dim: d,
                    shape: im.dims(),
                    src: Source::Item(k),
                    bstrides: Dims::new(),
                })?;
                d += 1;
            }
        }
    }
    if d > rank {
        return Err(Error::invalid(alloc::format!(
            "index: too many indices for a {rank}-d tensor"
        )));
    }
    let mut b = Dims::new();
    for ix in indexed.iter() {
        b = broadcast_shapes(&b, &ix.shape)?;
    }
    for ix in indexed.iter_mut() {
        // Broadcast strides of a contiguous index of shape `ix.shape` (masks are 1-d lists;
        // tensors are read through their own strides at lookup time).
        let cst = crate::util::contiguous_strides(&ix.shape);
        let lead = b.len() - ix.shape.len();
        let mut st = Dims::filled(b.len(), 0).unwrap_or_default();
        for (i, (&s, &c)) in ix.shape.iter().zip(cst.iter()).enumerate() {
            st[lead + i] = if s == b[lead + i] { c } else { 0 };
        }
        ix.bstrides = st;
    }
    let mut is_indexed = [false; ptero_core::MAX_DIMS];
    for ix in indexed.iter() {
        is_indexed[ix.self_dim] = true;
    }
    let first = indexed.iter().map(|i| i.self_dim).min().unwrap_or(0);
    let last = indexed.iter().map(|i| i.self_dim).max().unwrap_or(0);
    let adjacent = (first..=last).all(|d| is_indexed[d]);
    let mut shape = Dims::new();
    let mut pos = [usize::MAX; ptero_core::MAX_DIMS];
    let push = |shape: &mut Dims, v: usize| -> Result<()> {
        if shape.push(v) {
            Ok(())
        } else {
            Err(Error::shape("index: result has too many dims"))
        }
    };
    let b_start;
    if indexed.is_empty() {
        b_start = 0;
        for (d, &s) in m.sizes().iter().enumerate() {
            pos[d] = shape.len();
            push(&mut shape, s)?;
        }
    } else if adjacent {
        for (p, &s) in pos.iter_mut().zip(m.sizes()).take(first) {
            *p = shape.len();
            push(&mut shape, s)?;
        }
        b_start = shape.len();
        for &s in b.iter() {
            push(&mut shape, s)?;
        }
        for (p, &s) in pos.iter_mut().zip(m.sizes()).skip(last + 1) {
            *p = shape.len();
            push(&mut shape, s)?;
        }
    } else {
        b_start = 0;
        for &s in b.iter() {
            push(&mut shape, s)?;
        }
        for d in 0..rank {
            if !is_indexed[d] {
                pos[d] = shape.len();
                push(&mut shape, m.sizes()[d])?;
            }
        }
    }
    Ok(Plan {
        shape,
        b_start,
        b_rank: b.len(),
        pos,
        indexed,
    })
}

/// Calls `f(result_index, self_offset)` for every element of `self[indices]`.
fn walk_plan(
    a: &KernelArgs<'_>,
    plan: &Plan,
    self_meta: &TensorMeta,
    list_arg: usize,
    charge: bool,
    mut f: impl FnMut(&[usize], usize),
) -> Result<()> {
    let list = a.tensor_list(list_arg)?;
    // Per indexed dim: (bytes, dtype, strides of the index tensor over its own shape).
    let mut views: [Option<(&[u8], ScalarType, Dims)>; ptero_core::MAX_DIMS] =
        [None; ptero_core::MAX_DIMS];
    for (view, ix) in views.iter_mut().zip(plan.indexed.iter()) {
        *view = match ix.src {
            Source::Item(k) => {
                let t = list.get(k)?;
                Some((t.bytes, t.meta.dtype, t.meta.stride_dims()))
            }
            Source::Mask { .. } | Source::Unset => None,
        };
    }
    let sst = self_meta.stride_dims();
    let sizes = self_meta.sizes();
    // index_put's index space is the broadcast of the index tensors, which can be far
    // larger than any operand: charge it and stop when the caller's deadline passes.
    let mut meter = if charge {
        Meter::charging(a)
    } else {
        Meter::new(a)
    };
    try_for_each_index(&plan.shape, |ridx| {
        meter.add(1)?;
        let bidx = &ridx[plan.b_start..plan.b_start + plan.b_rank];
        // Wrapping: until every index is checked, `self` may be empty with huge strides;
        // once all are in range the offset is exact.
        let mut off = 0usize;
        for (d, &p) in plan.pos.iter().enumerate().take(sizes.len()) {
            if p != usize::MAX {
                off = off.wrapping_add(ridx[p].wrapping_mul(sst[d]));
            }
        }
        for (ix, v) in plan.indexed.iter().zip(&views) {
            // The flat (contiguous) position of this element in the index tensor.
            let flat = elem_offset(bidx, &ix.bstrides);
            let raw = match (&ix.src, v) {
                (Source::Mask { coords, rank, dim }, _) => coords
                    .get(flat.wrapping_mul(*rank).wrapping_add(*dim))
                    .copied()
                    .unwrap_or(0),
                (Source::Item(_), Some((bytes, dt, st))) => {
                    // Convert the flat position to the index tensor's storage offset.
                    let mut rem = flat;
                    let mut o = 0usize;
                    for (j, &s) in ix.shape.iter().enumerate().rev() {
                        if s > 0 {
                            o += (rem % s) * st[j];
                            rem /= s;
                        }
                    }
                    load_i64(bytes, *dt, o)
                }
                _ => 0,
            };
            let i = wrap(raw, sizes[ix.self_dim], "index")?;
            off = off.wrapping_add(i.wrapping_mul(sst[ix.self_dim]));
        }
        f(ridx, off);
        Ok(())
    })
}

/// `self, indices: Tensor?[], *, out`
fn index_tensor_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let plan = build_plan(a, 0, 1)?;
    a.resize(2, &plan.shape)?;
    let sm = *a.meta(0)?;
    let s = a.tensor(0)?;
    let o = a.out(2)?;
    let ost = o.meta.stride_dims();
    let ec = ElemCopy::new(o.meta.dtype, sm.dtype)?;
    let ob = o.bytes;
    walk_plan(a, &plan, &sm, 1, false, |ridx, so| {
        ec.copy(ob, elem_offset(ridx, &ost), s.bytes, so);
    })
}

/// `self, indices: Tensor?[], values, accumulate=False, *, out`
fn index_put_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let accumulate = a.bool(3)?;
    let plan = build_plan(a, 0, 1)?;
    let shape = a.meta(0)?.dims();
    a.resize(4, &shape)?;
    put_values(a, &plan, 4, accumulate, true)
}

/// `index_put_(self, indices: Tensor?[], values, accumulate=False) -> self`: in place.
fn index_put_inplace(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let accumulate = a.bool(3)?;
    let plan = build_plan(a, 0, 1)?;
    put_values(a, &plan, 0, accumulate, false)?;
    // The return slot, when it is a separate tensor value, refers to `self`.
    if a.len() > 4
        && matches!(a.value(4)?, ptero_core::Value::Tensor(_))
        && a.value_index(4)? != a.value_index(0)?
    {
        let shape = a.meta(0)?.dims();
        a.alias(4, 0)?;
        a.resize(4, &shape)?;
    }
    Ok(())
}

/// Writes (or adds) `values` (arg 2) at `self[indices]` of tensor `target`, which has
/// `self`'s shape; `copy_self` first fills `target` with `self`.
fn put_values(
    a: &KernelArgs<'_>,
    plan: &Plan,
    target: usize,
    accumulate: bool,
    copy_self: bool,
) -> Result<()> {
    let vm = *a.meta(2)?;
    // The indexed shape (the index tensors broadcast together, plus self's other dims) can
    // be far larger than any operand, and this loop walks all of it. PyTorch materializes
    // the broadcast indices and values; refuse what that would not fit in our limit.
    let n = plan.shape.numel().unwrap_or(usize::MAX);
    let per_elem = 8 * plan.indexed.len() + vm.dtype.size();
    let need = n.saturating_mul(per_elem);
    if need > a.scratch_limit() {
        return Err(Error::OutOfMemory {
            bytes: need,
            limit: a.scratch_limit(),
        });
    }
    let vst = broadcast_strides(&vm, &plan.shape).map_err(|_| {
        Error::shape(alloc::format!(
            "index_put: values of shape {:?} cannot be broadcast to the indexed shape {}",
            vm.sizes(),
            plan.shape
        ))
    })?;
    // Writes go to `target`, whose offsets follow its own dim order: walk with its meta.
    let om = *a.meta(target)?;
    let v = a.tensor(2)?;
    let mut o = a.out(target)?;
    if copy_self {
        copy_whole(&mut o, &a.tensor(0)?)?;
    }
    let od = om.dtype;
    let ob = o.bytes;
    if accumulate {
        let kind = ComputeKind::of(od)?;
        walk_plan(a, plan, &om, 1, true, |ridx, oo| {
            let vo = elem_offset(ridx, &vst);
            match kind {
                ComputeKind::Float => {
                    let x = load_f64(ob, od, oo) + load_f64(v.bytes, vm.dtype, vo);
                    store_f64(ob, od, oo, x);
                }
                _ => {
                    let x = load_i64(ob, od, oo).wrapping_add(load_i64(v.bytes, vm.dtype, vo));
                    store_i64(ob, od, oo, x);
                }
            }
        })
    } else {
        let ec = ElemCopy::new(od, vm.dtype)?;
        walk_plan(a, plan, &om, 1, true, |ridx, oo| {
            ec.copy(ob, oo, v.bytes, elem_offset(ridx, &vst));
        })
    }
}

// ---------------------------------------------------------------------------------------
// index_select, gather, scatter
// ---------------------------------------------------------------------------------------

/// `self, dim, index, *, out`
fn index_select_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let sm = *a.meta(0)?;
    let im = *a.meta(2)?;
    check_index_dtype(2, im.dtype)?;
    if im.dim() > 1 {
        return Err(Error::invalid("index_select: index must be 0-d or 1-d"));
    }
    let dim = normalize_dim(a.int(1)?, sm.dim())?;
    let n = im.numel();
    let mut shape = sm.dims();
    let (size, sst) = if sm.dim() == 0 {
        (1, Dims::new())
    } else {
        let s = shape[dim];
        shape[dim] = n;
        (s, sm.stride_dims())
    };
    a.resize(3, &shape)?;
    let idx = a.tensor(2)?;
    let ist = im.stride_dims();
    let istep = ist.first().copied().unwrap_or(0);
    let s = a.tensor(0)?;
    let o = a.out(3)?;
    let ost = o.meta.stride_dims();
    let od = o.meta.dtype;
    // One strided copy of the selected slice per index.
    let (mut slice_shape, mut s_sl, mut o_sl) = (shape, sst, ost);
    let (sstep, ostep) = if sm.dim() == 0 {
        (0, 0)
    } else {
        slice_shape.remove(dim);
        (s_sl.remove(dim).unwrap_or(0), o_sl.remove(dim).unwrap_or(0))
    };
    // With an empty slice there is nothing to copy (and the strides of an empty tensor
    // may be huge), but the indices are still checked.
    let empty = slice_shape.contains(&0);
    for k in 0..n {
        let i = wrap(
            load_i64(idx.bytes, im.dtype, k * istep),
            size,
            "index_select",
        )?;
        if empty {
            continue;
        }
        copy_cast(
            o.bytes,
            od,
            Strided::new(&o_sl, k * ostep),
            s.bytes,
            sm.dtype,
            Strided::new(&s_sl, i * sstep),
            &slice_shape,
        )?;
    }
    Ok(())
}

/// Checks gather/scatter shapes: same rank; `index.size(d) <= self.size(d)` for
/// `d != dim` (and `<= src.size(d)` for every d when given).
fn check_gather_shapes(
    sm: &TensorMeta,
    im: &TensorMeta,
    src: Option<&TensorMeta>,
    dim: usize,
) -> Result<()> {
    if im.numel() == 0 {
        return Ok(());
    }
    if im.dim().max(1) != sm.dim().max(1) {
        return Err(Error::shape(alloc::format!(
            "index has {} dims, self has {}",
            im.dim(),
            sm.dim()
        )));
    }
    for d in 0..im.dim() {
        let is = im.sizes()[d];
        if d != dim && sm.dim() > 0 && is > sm.sizes()[d] {
            return Err(Error::shape(alloc::format!(
                "index {:?} is larger than self {:?} in dim {d}",
                im.sizes(),
                sm.sizes()
            )));
        }
        if let Some(s) = src {
            if s.dim() > 0 && s.dim() == im.dim() && is > s.sizes()[d] {
                return Err(Error::shape(alloc::format!(
                    "index {:?} is larger than src {:?} in dim {d}",
                    im.sizes(),
                    s.sizes()
                )));
            }
        }
    }
    if let Some(s) = src {
        if s.dim().max(1) != im.dim().max(1) {
            return Err(Error::shape("src must have as many dims as index"));
        }
    }
    Ok(())
}

/// `self, dim, index, *, sparse_grad=False, out`
fn gather_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let sm = *a.meta(0)?;
    let im = *a.meta(2)?;
    check_index_dtype(2, im.dtype)?;
    let dim = normalize_dim(a.int(1)?, sm.dim())?;
    check_gather_shapes(&sm, &im, None, dim)?;
    let shape = im.dims();
    a.resize(4, &shape)?;
    let (sst, ist) = (sm.stride_dims(), im.stride_dims());
    let size = if sm.dim() == 0 { 1 } else { sm.sizes()[dim] };
    let s = a.tensor(0)?;
    let idx = a.tensor(2)?;
    let o = a.out(4)?;
    let ost = o.meta.stride_dims();
    let ec = ElemCopy::new(o.meta.dtype, sm.dtype)?;
    let ob = o.bytes;
    let mut err = None;
    for_each_index(&shape, |p| {
        if err.is_some() {
            return;
        }
        match wrap(
            load_i64(idx.bytes, im.dtype, elem_offset(p, &ist)),
            size,
            "gather",
        ) {
            Ok(i) => {
                let mut so = 0;
                for (d, (&x, &st)) in p.iter().zip(sst.iter()).enumerate() {
                    so += if d == dim { i } else { x } * st;
                }
                ec.copy(ob, elem_offset(p, &ost), s.bytes, so);
            }
            Err(e) => err = Some(e),
        }
    });
    err.map_or(Ok(()), Err)
}

#[derive(Clone, Copy)]
enum ScatterSrc {
    Tensor(usize),
    Value(ptero_core::Scalar),
}

/// `out = self; out[index along dim] (=|+=) src`.
fn scatter_impl(a: &mut KernelArgs<'_>, src: ScatterSrc, add: bool, out: usize) -> Result<()> {
    let sm = *a.meta(0)?;
    let im = *a.meta(2)?;
    check_index_dtype(2, im.dtype)?;
    let dim = normalize_dim(a.int(1)?, sm.dim())?;
    let src_meta = match src {
        ScatterSrc::Tensor(i) => Some(*a.meta(i)?),
        ScatterSrc::Value(_) => None,
    };
    check_gather_shapes(&sm, &im, src_meta.as_ref(), dim)?;
    let shape = sm.dims();
    a.resize(out, &shape)?;
    let om = *a.meta(out)?;
    let (ost, ist) = (om.stride_dims(), im.stride_dims());
    let srcst = src_meta
        .as_ref()
        .map(|m| m.stride_dims())
        .unwrap_or_default();
    let size = if sm.dim() == 0 { 1 } else { sm.sizes()[dim] };
    let idx = a.tensor(2)?;
    let src_view = match src {
        ScatterSrc::Tensor(i) => Some(a.tensor(i)?),
        ScatterSrc::Value(_) => None,
    };
    let mut o = a.out(out)?;
    copy_whole(&mut o, &a.tensor(0)?)?;
    let od = om.dtype;
    let kind = ComputeKind::of(od)?;
    let ob = o.bytes;
    let mut err = None;
    for_each_index(im.sizes(), |p| {
        if err.is_some() {
            return;
        }
        let i = match wrap(
            load_i64(idx.bytes, im.dtype, elem_offset(p, &ist)),
            size,
            "scatter",
        ) {
            Ok(i) => i,
            Err(e) => {
                err = Some(e);
                return;
            }
        };
        let mut oo = 0;
        for (d, (&x, &st)) in p.iter().zip(ost.iter()).enumerate() {
            oo += if d == dim { i } else { x } * st;
        }
        let (fv, iv) = match (src_view, src) {
            (Some(t), _) => {
                let so = elem_offset(p, &srcst);
                (
                    load_f64(t.bytes, t.meta.dtype, so),
                    load_i64(t.bytes, t.meta.dtype, so),
                )
            }
            (None, ScatterSrc::Value(v)) => (v.to_f64(), v.to_i64()),
            _ => (0.0, 0),
        };
        match (kind, add) {
            (ComputeKind::Float, true) => {
                store_f64(ob, od, oo, load_f64(ob, od, oo) + fv);
            }
            (_, true) => store_i64(ob, od, oo, load_i64(ob, od, oo).wrapping_add(iv)),
            (ComputeKind::Float, false) => store_f64(ob, od, oo, fv),
            (_, false) => {
                if src_meta.is_some_and(|m| m.dtype.is_float()) {
                    store_f64(ob, od, oo, fv)
                } else {
                    store_i64(ob, od, oo, iv)
                }
            }
        }
    });
    err.map_or(Ok(()), Err)
}

/// `self, dim, index, src, *, out`
fn scatter_src_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    scatter_impl(a, ScatterSrc::Tensor(3), false, 4)
}

/// `self, dim, index, value, *, out`
fn scatter_value_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let v = a.scalar(3)?;
    scatter_impl(a, ScatterSrc::Value(v), false, 4)
}

/// `self, dim, index, src, *, out`
fn scatter_add_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    scatter_impl(a, ScatterSrc::Tensor(3), true, 4)
}

// ---------------------------------------------------------------------------------------
// embedding and *_scatter
// ---------------------------------------------------------------------------------------

/// `weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False, *, out`
fn embedding_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    let wm = *a.meta(0)?;
    let im = *a.meta(1)?;
    check_index_dtype(1, im.dtype)?;
    if wm.dim() != 2 {
        return Err(Error::invalid(alloc::format!(
            "embedding: weight must be 2-d, got {}-d",
            wm.dim()
        )));
    }
    let (rows, width) = (wm.sizes()[0], wm.sizes()[1]);
    let mut shape = im.dims();
    if !shape.push(width) {
        return Err(Error::shape("embedding: result has too many dims"));
    }
    a.resize(5, &shape)?;
    let w = a.tensor(0)?;
    let idx = a.tensor(1)?;
    let o = a.out(5)?;
    let ost = o.meta.stride_dims();
    let od = o.meta.dtype;
    let ist = im.stride_dims();
    let wst = wm.strides();
    let (w_row, w_col) = (wst[0], wst[1]);
    let o_col = ost.last().copied().unwrap_or(1);
    let row_shape = [width];
    try_for_each_index(im.sizes(), |p| {
        // Token ids are not wrapped: PyTorch's embedding rejects negative ids.
        let id = load_i64(idx.bytes, im.dtype, elem_offset(p, &ist));
        let r = usize::try_from(id)
            .ok()
            .filter(|&r| r < rows)
            .ok_or_else(|| {
                Error::invalid(alloc::format!(
                    "embedding: token id {id} is out of range for {rows} embedding rows"
                ))
            })?;
        if width == 0 {
            return Ok(());
        }
        copy_cast(
            o.bytes,
            od,
            Strided::new(&[o_col], elem_offset(p, &ost)),
            w.bytes,
            wm.dtype,
            Strided::new(&[w_col], r * w_row),
            &row_shape,
        )
    })
}

/// Copies `self` to `out`, then `src` into the view (`shape`, out strides `view_st`,
/// offset `view_off`) of `out`.
fn scatter_view(
    a: &mut KernelArgs<'_>,
    src: usize,
    out: usize,
    view: impl FnOnce(&TensorMeta) -> Result<(Dims, Dims, usize)>,
) -> Result<()> {
    let shape = a.meta(0)?.dims();
    a.resize(out, &shape)?;
    let om = *a.meta(out)?;
    let (vshape, vst, voff) = view(&om)?;
    let sm = *a.meta(src)?;
    if sm.sizes() != vshape.as_slice() {
        return Err(Error::shape(alloc::format!(
            "src has shape {:?}, the destination slice has shape {vshape}",
            sm.sizes()
        )));
    }
    let s = a.tensor(src)?;
    let mut o = a.out(out)?;
    copy_whole(&mut o, &a.tensor(0)?)?;
    let sst = sm.stride_dims();
    copy_cast(
        o.bytes,
        om.dtype,
        Strided::new(&vst, voff),
        s.bytes,
        sm.dtype,
        Strided::new(&sst, 0),
        &vshape,
    )
}

/// `self, src, dim, index, *, out`
fn select_scatter_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let rank = a.meta(0)?.dim();
    if rank == 0 {
        return Err(Error::invalid(
            "select_scatter cannot be applied to a 0-d tensor",
        ));
    }
    let dim = normalize_dim(a.int(2)?, rank)?;
    let index = a.int(3)?;
    scatter_view(a, 1, 4, |om| {
        let i = wrap(index, om.sizes()[dim], "select_scatter")?;
        let (mut shape, mut st) = (om.dims(), om.stride_dims());
        // Saturating: an empty out can have huge strides (and then nothing is copied).
        let off = i.saturating_mul(st[dim]);
        shape.remove(dim);
        st.remove(dim);
        Ok((shape, st, off))
    })
}

/// `self, src, dim=0, start=None, end=None, step=1, *, out`
fn slice_scatter_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(7)?;
    let rank = a.meta(0)?.dim();
    if rank == 0 {
        return Err(Error::invalid(
            "slice_scatter cannot be applied to a 0-d tensor",
        ));
    }
    let dim = normalize_dim(a.int(2)?, rank)?;
    let (start, end, step) = (a.opt_int(3)?, a.opt_int(4)?, a.int(5)?);
    scatter_view(a, 1, 6, |om| {
        let (s, len, step) = slice_bounds(om.sizes()[dim], start, end, step)?;
        let (mut shape, mut st) = (om.dims(), om.stride_dims());
        // Saturating: an empty out can have huge strides, and a step past the end leaves
        // one element whose stride is unused.
        let off = s.saturating_mul(st[dim]);
        shape[dim] = len;
        st[dim] = st[dim].saturating_mul(step);
        Ok((shape, st, off))
    })
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::index.Tensor_out", index_tensor_out);
    reg.register("aten::index_put.out", index_put_out);
    reg.register("aten::index_put_", index_put_inplace);
    reg.register("aten::index_select.out", index_select_out);
    reg.register("aten::gather.out", gather_out);
    reg.register("aten::scatter.src_out", scatter_src_out);
    reg.register("aten::scatter.value_out", scatter_value_out);
    reg.register("aten::scatter_add.out", scatter_add_out);
    reg.register("aten::embedding.out", embedding_out);
    reg.register("aten::select_scatter.out", select_scatter_out);
    reg.register("aten::slice_scatter.out", slice_scatter_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    fn iota(shape: &[usize]) -> OwnedTensor {
        let n: usize = shape.iter().product();
        OwnedTensor::from_f64(Float, shape, &(0..n).map(|x| x as f64).collect::<Vec<_>>())
    }
    fn long(shape: &[usize], v: &[f64]) -> OwnedTensor {
        OwnedTensor::from_f64(Long, shape, v)
    }
    fn t(x: OwnedTensor) -> Arg {
        Arg::T(x)
    }
    fn out(shape: &[usize]) -> Arg {
        Arg::Out(Float, shape.to_vec())
    }

    type Case = (&'static str, Vec<Arg>, Vec<usize>, Vec<f64>);

    #[test]
    fn table() {
        let x = iota(&[3, 4]);
        let x3 = iota(&[2, 3, 4]);
        let cases: Vec<Case> = vec![
            // x[[2, 0]] -> rows.
            (
                "aten::index.Tensor_out",
                vec![
                    t(x.clone()),
                    Arg::OptTensors(vec![Some(long(&[2], &[2., 0.]))]),
                    out(&[2, 4]),
                ],
                vec![2, 4],
                vec![8., 9., 10., 11., 0., 1., 2., 3.],
            ),
            // x[:, [-1, 1]] on a transposed layout.
            (
                "aten::index.Tensor_out",
                vec![
                    t(x.with_dim_order(&[1, 0])),
                    Arg::OptTensors(vec![None, Some(long(&[2], &[-1., 1.]))]),
                    out(&[3, 2]),
                ],
                vec![3, 2],
                vec![3., 1., 7., 5., 11., 9.],
            ),
            // x[[0, 2], [1, 3]] -> pointwise pairs; broadcasting [2,1] with [2].
            (
                "aten::index.Tensor_out",
                vec![
                    t(x.clone()),
                    Arg::OptTensors(vec![
                        Some(long(&[2, 1], &[0., 2.])),
                        Some(long(&[2], &[1., 3.])),
                    ]),
                    out(&[2, 2]),
                ],
                vec![2, 2],
                vec![1., 3., 9., 11.],
            ),
            // Non-adjacent: x3[[1, 0], :, [0, 3]] -> shape [2, 3].
            (
                "aten::index.Tensor_out",
                vec![
                    t(x3.clone()),
                    Arg::OptTensors(vec![
                        Some(long(&[2], &[1., 0.])),
                        None,
                        Some(long(&[2], &[0., 3.])),
                    ]),
                    out(&[2, 3]),
                ],
                vec![2, 3],
                vec![12., 16., 20., 3., 7., 11.],
            ),
            // Adjacent in the middle: x3[:, [2], [1]] -> shape [2, 1].
            (
                "aten::index.Tensor_out",
                vec![
                    t(x3.clone()),
                    Arg::OptTensors(vec![
                        None,
                        Some(long(&[1], &[2.])),
                        Some(OwnedTensor::from_f64(Int, &[1], &[1.])),
                    ]),
                    out(&[2, 1]),
                ],
                vec![2, 1],
                vec![9., 21.],
            ),
            // Bool mask over the first dim.
            (
                "aten::index.Tensor_out",
                vec![
                    t(x.clone()),
                    Arg::OptTensors(vec![Some(OwnedTensor::bools(&[3], &[true, false, true]))]),
                    out(&[2, 4]),
                ],
                vec![2, 4],
                vec![0., 1., 2., 3., 8., 9., 10., 11.],
            ),
            (
                "aten::index_put.out",
                vec![
                    t(iota(&[4])),
                    Arg::OptTensors(vec![Some(long(&[3], &[1., 1., 3.]))]),
                    t(OwnedTensor::from_f64(Float, &[], &[10.])),
                    Arg::Bool(true),
                    out(&[4]),
                ],
                vec![4],
                vec![0., 21., 2., 13.],
            ),
            (
                "aten::index_put.out",
                vec![
                    t(x.clone()),
                    Arg::OptTensors(vec![None, Some(long(&[1], &[0.]))]),
                    t(OwnedTensor::from_f64(Float, &[3, 1], &[-1., -2., -3.])),
                    Arg::Bool(false),
                    out(&[3, 4]),
                ],
                vec![3, 4],
                vec![-1., 1., 2., 3., -2., 5., 6., 7., -3., 9., 10., 11.],
            ),
            (
                "aten::index_select.out",
                vec![
                    t(x.with_dim_order(&[1, 0])),
                    Arg::Int(1),
                    t(long(&[3], &[3., 0., 3.])),
                    out(&[3, 3]),
                ],
                vec![3, 3],
                vec![3., 0., 3., 7., 4., 7., 11., 8., 11.],
            ),
            (
                "aten::index_select.out",
                vec![t(x.clone()), Arg::Int(0), t(long(&[0], &[])), out(&[0, 4])],
                vec![0, 4],
                vec![],
            ),
            (
                "aten::gather.out",
                vec![
                    t(x.clone()),
                    Arg::Int(1),
                    t(long(&[2, 2], &[3., 0., 1., -1.])),
                    Arg::Bool(false),
                    out(&[2, 2]),
                ],
                vec![2, 2],
                vec![3., 0., 5., 7.],
            ),
            (
                "aten::scatter.src_out",
                vec![
                    t(OwnedTensor::from_f64(Float, &[2, 3], &[0.; 6])),
                    Arg::Int(1),
                    t(long(&[2, 1], &[2., 0.])),
                    t(iota(&[2, 2])),
                    out(&[2, 3]),
                ],
                vec![2, 3],
                vec![0., 0., 0., 2., 0., 0.],
            ),
            (
                "aten::scatter.value_out",
                vec![
                    t(iota(&[3])),
                    Arg::Int(0),
                    t(long(&[2], &[0., 2.])),
                    Arg::Double(-1.),
                    out(&[3]),
                ],
                vec![3],
                vec![-1., 1., -1.],
            ),
            (
                "aten::scatter_add.out",
                vec![
                    t(OwnedTensor::from_f64(Long, &[3], &[1., 1., 1.])),
                    Arg::Int(0),
                    t(long(&[3], &[0., 0., 2.])),
                    t(long(&[3], &[5., 6., 7.])),
                    Arg::Out(Long, vec![3]),
                ],
                vec![3],
                vec![12., 1., 8.],
            ),
            (
                "aten::embedding.out",
                vec![
                    t(x.clone()),
                    t(long(&[2, 2], &[2., 0., 1., 2.])),
                    Arg::Int(-1),
                    Arg::Bool(false),
                    Arg::Bool(false),
                    out(&[2, 2, 4]),
                ],
                vec![2, 2, 4],
                vec![
                    8., 9., 10., 11., 0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11.,
                ],
            ),
            (
                "aten::select_scatter.out",
                vec![
                    t(x.clone()),
                    t(OwnedTensor::from_f64(Float, &[3], &[-1., -2., -3.])),
                    Arg::Int(1),
                    Arg::Int(-1),
                    out(&[3, 4]),
                ],
                vec![3, 4],
                vec![0., 1., 2., -1., 4., 5., 6., -2., 8., 9., 10., -3.],
            ),
            (
                "aten::slice_scatter.out",
                vec![
                    t(iota(&[5])),
                    t(OwnedTensor::from_f64(Float, &[2], &[-1., -2.])),
                    Arg::Int(0),
                    Arg::Int(1),
                    Arg::None,
                    Arg::Int(3),
                    out(&[5]),
                ],
                vec![5],
                vec![0., -1., 2., 3., -2.],
            ),
        ];
        for (op, args, shape, want) in cases {
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(out.tensors[0].sizes, shape, "{op}");
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
    }

    #[test]
    fn embedding_f16_channels() {
        let w = OwnedTensor::from_f64(Half, &[3, 2], &[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
        let out = run_op(
            "aten::embedding.out",
            vec![
                t(w.with_dim_order(&[1, 0])),
                t(OwnedTensor::from_f64(Int, &[], &[1.])),
                Arg::Int(-1),
                Arg::Bool(false),
                Arg::Bool(false),
                Arg::Out(Half, vec![2]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &[2.5, 3.5], 0.0, 0.0);
    }

    #[test]
    fn errors() {
        let x = iota(&[3, 4]);
        let bad: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::index.Tensor_out",
                vec![
                    t(x.clone()),
                    Arg::OptTensors(vec![Some(long(&[1], &[3.]))]),
                    out(&[1, 4]),
                ],
            ),
            (
                "aten::index.Tensor_out",
                vec![
                    t(x.clone()),
                    Arg::OptTensors(vec![
                        Some(long(&[1], &[0.])),
                        Some(long(&[1], &[0.])),
                        Some(long(&[1], &[0.])),
                    ]),
                    out(&[1]),
                ],
            ),
            (
                "aten::index.Tensor_out",
                vec![
                    t(x.clone()),
                    Arg::OptTensors(vec![Some(iota(&[1]))]),
                    out(&[1, 4]),
                ],
            ),
            (
                "aten::gather.out",
                vec![
                    t(x.clone()),
                    Arg::Int(0),
                    t(long(&[1, 1], &[-4.])),
                    Arg::Bool(false),
                    out(&[1, 1]),
                ],
            ),
            (
                "aten::embedding.out",
                vec![
                    t(x.clone()),
                    t(long(&[1], &[3.])),
                    Arg::Int(-1),
                    Arg::Bool(false),
                    Arg::Bool(false),
                    out(&[1, 4]),
                ],
            ),
            (
                "aten::index_select.out",
                vec![
                    t(x.clone()),
                    Arg::Int(0),
                    t(long(&[1], &[5.])),
                    out(&[1, 4]),
                ],
            ),
            (
                "aten::scatter.src_out",
                vec![
                    t(x.clone()),
                    Arg::Int(0),
                    t(long(&[1, 1], &[9.])),
                    t(x.clone()),
                    out(&[3, 4]),
                ],
            ),
            (
                "aten::select_scatter.out",
                vec![
                    t(x.clone()),
                    t(iota(&[4])),
                    Arg::Int(1),
                    Arg::Int(0),
                    out(&[3, 4]),
                ],
            ),
        ];
        for (op, args) in bad {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }

    /// A negative or too large token id is an error naming it (PyTorch does not wrap
    /// embedding ids); negative ids used to wrap to rows from the end.
    #[test]
    fn embedding_rejects_bad_ids() {
        let emb = |ids: &[i64]| {
            run_op(
                "aten::embedding.out",
                vec![
                    t(iota(&[3, 2])),
                    t(OwnedTensor::new::<i64>(&[ids.len()], ids)),
                    Arg::Int(-1),
                    Arg::Bool(false),
                    Arg::Bool(false),
                    out(&[ids.len(), 2]),
                ],
            )
        };
        for id in [-1, -3, i64::MIN, 3, i64::MAX] {
            let e = emb(&[0, id]).expect_err("bad token id").to_string();
            assert!(e.contains(&alloc::format!("{id}")), "{e}");
        }
        assert_close(
            &emb(&[2, 0]).unwrap().tensors[0].to_f64(),
            &[4., 5., 0., 1.],
            0.,
            0.,
        );
    }

    /// `i64::MIN` wraps once against a dim larger than `i64::MAX` (an empty tensor's);
    /// `v + size` overflowed in i64.
    #[test]
    fn index_wraps_in_i128() {
        let huge = (1usize << 63) + 5;
        let r = run_op(
            "aten::index_select.out",
            vec![
                t(OwnedTensor::zeros(Float, &[0, huge])),
                Arg::Int(1),
                t(OwnedTensor::new::<i64>(&[1], &[i64::MIN])),
                out(&[0, 1]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].sizes, [0, 1]);
    }

    /// select/slice_scatter into an empty tensor with huge strides, and a slice step past
    /// the end: offsets and strides times step overflowed.
    #[test]
    fn scatter_views_huge_strides_and_steps() {
        // (Dim 2 of [0, 2^40, 2^40] in dim order [0, 2, 1] has stride 2^40.)
        let big = 1usize << 40;
        let empty = OwnedTensor::zeros(Float, &[0, big, big]).with_dim_order(&[0, 2, 1]);
        let r = run_op(
            "aten::select_scatter.out",
            vec![
                t(empty.clone()),
                t(OwnedTensor::zeros(Float, &[0, big])),
                Arg::Int(2),
                Arg::Int(-1),
                Arg::OutLike(empty.clone()),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].sizes, [0, big, big]);
        let r = run_op(
            "aten::slice_scatter.out",
            vec![
                t(empty.clone()),
                t(OwnedTensor::zeros(Float, &[0, big, 1])),
                Arg::Int(2),
                Arg::Int(big as i64 - 1),
                Arg::None,
                Arg::Int(i64::MAX),
                Arg::OutLike(empty),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].sizes, [0, big, big]);
        // A step past the end on a real tensor: one row, whose stride times the step
        // overflowed.
        let r = run_op(
            "aten::slice_scatter.out",
            vec![
                t(iota(&[3, 2])),
                t(OwnedTensor::from_f64(Float, &[1, 2], &[-1., -2.])),
                Arg::Int(0),
                Arg::Int(2),
                Arg::None,
                Arg::Int(i64::MAX),
                out(&[3, 2]),
            ],
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &[0., 1., 2., 3., -1., -2.], 0., 0.);
    }

    /// index_put walks the broadcast of its index tensors, which can be far larger than
    /// any operand: charged, and stopped by the caller's deadline.
    #[test]
    fn index_put_charges_the_broadcast_and_stops_when_interrupted() {
        let n = 1024;
        let args = vec![
            t(iota(&[4, 4])),
            Arg::OptTensors(vec![
                Some(OwnedTensor::zeros(Long, &[n, 1])),
                Some(OwnedTensor::zeros(Long, &[1, n])),
            ]),
            t(OwnedTensor::from_f64(Float, &[], &[1.])),
            Arg::Bool(true),
            out(&[4, 4]),
        ];
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        let (r, charged) = run_op_with("aten::index_put.out", args.clone(), ctx).unwrap();
        assert_eq!(r.tensors[0].to_f64()[0], (n * n) as f64);
        assert_eq!(charged, (n * n) as u64);
        assert_eq!(
            run_op_interrupted("aten::index_put.out", args.clone()).unwrap_err(),
            ptero_core::Error::Interrupted
        );
        // Without a deadline, the walk is bounded by what materializing the broadcast
        // indices and values would take (n*n * (2 * 8 + 4) bytes here).
        let small = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: 1 << 20,
            ..Default::default()
        };
        let e = run_op_with("aten::index_put.out", args, small).unwrap_err();
        assert_eq!(
            e,
            ptero_core::Error::OutOfMemory {
                bytes: n * n * 20,
                limit: 1 << 20
            }
        );
    }

    #[test]
    fn bool_mask_index_put() {
        let r = run_op(
            "aten::index_put.out",
            vec![
                t(iota(&[2, 2])),
                Arg::OptTensors(vec![Some(OwnedTensor::bools(
                    &[2, 2],
                    &[true, false, false, true],
                ))]),
                t(OwnedTensor::from_f64(Float, &[], &[9.])),
                Arg::Bool(false),
                out(&[2, 2]),
            ],
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &[9., 1., 2., 9.], 0., 0.);
    }

    #[test]
    fn index_put_in_place() {
        // self is the writable Out arg (zeros [2, 3]): x[[1, 0], [2, -1]] = [5, 7].
        let idx0 = long(&[2], &[1., 0.]);
        let idx1 = long(&[2], &[2., -1.]);
        for (acc, want) in [
            (false, [0., 0., 7., 0., 0., 5.]),
            (true, [0., 0., 7., 0., 0., 5.]),
        ] {
            let out = run_op(
                "aten::index_put_",
                vec![
                    Arg::Out(Float, vec![2, 3]),
                    Arg::OptTensors(vec![Some(idx0.clone()), Some(idx1.clone())]),
                    t(OwnedTensor::from_f64(Float, &[2], &[5., 7.])),
                    Arg::Bool(acc),
                ],
            )
            .unwrap();
            assert_eq!(out.tensors[0].to_f64(), want);
        }
        // Accumulate with repeated indices adds each.
        let out = run_op(
            "aten::index_put_",
            vec![
                Arg::Out(Long, vec![3]),
                Arg::OptTensors(vec![Some(long(&[3], &[1., 1., 2.]))]),
                t(long(&[], &[4.])),
                Arg::Bool(true),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [0., 8., 4.]);
        // Channels-last self, empty index, out-of-range index.
        let out = run_op(
            "aten::index_put_",
            vec![
                Arg::OutLike(
                    OwnedTensor::zeros(Float, &[1, 2, 1, 2]).with_dim_order(&[0, 2, 3, 1]),
                ),
                Arg::OptTensors(vec![None, Some(long(&[1], &[1.]))]),
                t(OwnedTensor::from_f64(Float, &[1], &[3.])),
                Arg::Bool(false),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [0., 0., 3., 3.]);
        let out = run_op(
            "aten::index_put_",
            vec![
                Arg::Out(Float, vec![3]),
                Arg::OptTensors(vec![Some(long(&[0], &[]))]),
                t(OwnedTensor::from_f64(Float, &[1], &[3.])),
                Arg::Bool(false),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [0., 0., 0.]);
        assert!(run_op(
            "aten::index_put_",
            vec![
                Arg::Out(Float, vec![3]),
                Arg::OptTensors(vec![Some(long(&[1], &[3.]))]),
                t(OwnedTensor::from_f64(Float, &[1], &[3.])),
                Arg::Bool(false),
            ],
        )
        .is_err());
    }
}
