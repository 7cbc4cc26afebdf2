//! Shape and layout ops that materialise a view: view/permute/transpose/expand/squeeze/
//! unsqueeze/slice/select/narrow/unfold/as_strided/diagonal, concatenation (cat, stack),
//! splitting (split, split_with_sizes, unbind) and data rearrangements (repeat,
//! repeat_interleave, flip,
//! roll, tril, pixel_shuffle/unshuffle).
//!
//! Most are "describe the view as strides, then one strided copy" through
//! [`crate::util::copy`], which also converts dtypes when out's dtype differs.

use ptero_core::{normalize_dim, Dims, Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::copy::{copy_cast, copy_reshape, copy_view_to_out, ElemCopy, Strided};
use crate::util::work::checked_size;
use crate::util::{for_each_index, for_each_offset, load_i64, store_i64};

fn to_usize(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::invalid(alloc::format!("{what} must be >= 0, got {v}")))
}

fn dims_err() -> Error {
    Error::shape(alloc::format!(
        "more than {} dimensions",
        ptero_core::MAX_DIMS
    ))
}

/// Resizes `out` to `shape` and copies the view (`strides`, `offset`) of `src` into it.
fn view_into(
    a: &mut KernelArgs<'_>,
    src: usize,
    shape: &[usize],
    strides: &[usize],
    offset: usize,
    out: usize,
) -> Result<()> {
    a.resize(out, shape)?;
    copy_view_to_out(a, src, Strided::new(strides, offset), shape, out)
}

/// Resizes `out` to `shape` and copies `src`'s elements in logical order.
fn reshape_into(a: &mut KernelArgs<'_>, src: usize, shape: &[usize], out: usize) -> Result<()> {
    a.resize(out, shape)?;
    copy_reshape(a, src, out)
}

/// Whether a value of dtype `from` may be written to `to` (PyTorch's `canCast`).
pub(crate) fn can_cast(from: ScalarType, to: ScalarType) -> bool {
    if from.is_float() && (to.is_integral() || to == ScalarType::Bool) {
        return false;
    }
    !(from != ScalarType::Bool && to == ScalarType::Bool)
}

// ---------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------

/// `self, size[], *, out`
fn view_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let numel = a.meta(0)?.numel();
    let list = a.int_list(1)?;
    let mut shape = Dims::new();
    let mut infer = None;
    let mut known = 1usize;
    for k in 0..list.len() {
        let v = list.get(k)?;
        if v == -1 {
            if infer.is_some() {
                return Err(Error::invalid("view: only one dimension can be -1"));
            }
            infer = Some(k);
            if !shape.push(1) {
                return Err(dims_err());
            }
            continue;
        }
        let v = to_usize(v, "view size")?;
        known = known
            .checked_mul(v)
            .ok_or_else(|| Error::shape("view: size overflows"))?;
        if !shape.push(v) {
            return Err(dims_err());
        }
    }
    if let Some(k) = infer {
        if known == 0 || numel % known != 0 {
            return Err(Error::shape(alloc::format!(
                "view: cannot infer -1 in shape for {numel} elements"
            )));
        }
        shape[k] = numel / known;
    } else if known != numel {
        return Err(Error::shape(alloc::format!(
            "view: shape {shape} is invalid for {numel} elements"
        )));
    }
    reshape_into(a, 0, &shape, 2)
}

/// `self, dims[], *, out`
fn permute_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    let rank = m.dim();
    let list = a.int_list(1)?;
    if list.len() != rank {
        return Err(Error::invalid(alloc::format!(
            "permute: {} dims given for a {rank}-d tensor",
            list.len()
        )));
    }
    let (mut shape, mut st, mut seen) = (Dims::new(), Dims::new(), [false; ptero_core::MAX_DIMS]);
    for k in 0..rank {
        let d = normalize_dim(list.get(k)?, rank)?;
        if seen[d] {
            return Err(Error::invalid("permute: repeated dim"));
        }
        seen[d] = true;
        shape.push(m.sizes()[d]);
        st.push(m.strides()[d]);
    }
    view_into(a, 0, &shape, &st, 0, 2)
}

fn transpose_view(a: &KernelArgs<'_>, d0: i64, d1: i64) -> Result<(Dims, Dims)> {
    let m = a.meta(0)?;
    let (mut shape, mut st) = (m.dims(), m.stride_dims());
    let rank = m.dim();
    let (d0, d1) = (normalize_dim(d0, rank)?, normalize_dim(d1, rank)?);
    if rank > 0 {
        shape.swap(d0, d1);
        st.swap(d0, d1);
    }
    Ok((shape, st))
}

/// `self, dim0, dim1, *, out`
fn transpose_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let (shape, st) = transpose_view(a, a.int(1)?, a.int(2)?)?;
    view_into(a, 0, &shape, &st, 0, 3)
}

/// `self, *, out`: transpose of a tensor with at most 2 dims.
fn t_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let rank = a.meta(0)?.dim();
    if rank > 2 {
        return Err(Error::invalid(alloc::format!(
            "t() expects a tensor with <= 2 dims, got {rank}"
        )));
    }
    let (shape, st) = transpose_view(a, 0, if rank == 2 { 1 } else { 0 })?;
    view_into(a, 0, &shape, &st, 0, 1)
}

/// `self, size[], *, implicit=False, out`
fn expand_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let m = a.meta(0)?;
    let list = a.int_list(1)?;
    let rank = m.dim();
    let n = list.len();
    if n < rank {
        return Err(Error::shape(alloc::format!(
            "expand: {n} sizes given for a {rank}-d tensor"
        )));
    }
    let lead = n - rank;
    let (mut shape, mut st) = (Dims::new(), Dims::new());
    for k in 0..n {
        let v = list.get(k)?;
        let (size, stride) = if k < lead {
            (to_usize(v, "expand size of a new leading dim")?, 0)
        } else {
            let (s, t) = (m.sizes()[k - lead], m.strides()[k - lead]);
            if v == -1 || v as usize == s && v >= 0 {
                (s, t)
            } else if s == 1 {
                (to_usize(v, "expand size")?, 0)
            } else {
                return Err(Error::shape(alloc::format!(
                    "expand: size {v} does not match the existing size {s} at dim {k}"
                )));
            }
        };
        if !shape.push(size) || !st.push(stride) {
            return Err(dims_err());
        }
    }
    view_into(a, 0, &shape, &st, 0, 3)
}

/// `self, dim, *, out`
fn squeeze_dim_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    let mut shape = m.dims();
    if m.dim() > 0 {
        let d = normalize_dim(a.int(1)?, m.dim())?;
        if shape[d] == 1 {
            shape.remove(d);
        }
    } else {
        normalize_dim(a.int(1)?, 0)?;
    }
    reshape_into(a, 0, &shape, 2)
}

/// `self, dims[], *, out`
fn squeeze_dims_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    let rank = m.dim();
    let list = a.int_list(1)?;
    let mut drop = [false; ptero_core::MAX_DIMS];
    for k in 0..list.len() {
        let d = normalize_dim(list.get(k)?, rank)?;
        if rank > 0 && m.sizes()[d] == 1 {
            drop[d] = true;
        }
    }
    let mut shape = Dims::new();
    for (d, &s) in m.sizes().iter().enumerate() {
        if !drop[d] {
            shape.push(s);
        }
    }
    reshape_into(a, 0, &shape, 2)
}

/// `self, dim, *, out`
fn unsqueeze_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    let mut shape = m.dims();
    let d = normalize_dim(a.int(1)?, m.dim() + 1)?;
    if !shape.insert(d, 1) {
        return Err(dims_err());
    }
    reshape_into(a, 0, &shape, 2)
}

/// Python slice bounds for a dim of `size`: (start, len, step).
pub(crate) fn slice_bounds(
    size: usize,
    start: Option<i64>,
    end: Option<i64>,
    step: i64,
) -> Result<(usize, usize, usize)> {
    if step <= 0 {
        return Err(Error::invalid(alloc::format!(
            "slice step must be positive, got {step}"
        )));
    }
    // Sizes past i64::MAX exist only on empty tensors; a plain cast would go negative
    // and make the clamp below panic.
    let n = i64::try_from(size).unwrap_or(i64::MAX);
    let clamp = |v: i64| -> i64 {
        let v = if v < 0 { v.saturating_add(n) } else { v };
        v.clamp(0, n)
    };
    let s = clamp(start.unwrap_or(0));
    let e = clamp(end.unwrap_or(n)).max(s);
    // `e - s + step - 1` would overflow for a huge step.
    let len = if e == s { 0 } else { (e - s - 1) / step + 1 };
    Ok((s as usize, len as usize, step as usize))
}

/// `self, dim=0, start=None, end=None, step=1, *, out`
fn slice_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    let m = a.meta(0)?;
    if m.dim() == 0 {
        return Err(Error::invalid(
            "slice() cannot be applied to a 0-dim tensor",
        ));
    }
    let d = normalize_dim(a.int(1)?, m.dim())?;
    let (s, len, step) = slice_bounds(m.sizes()[d], a.opt_int(2)?, a.opt_int(3)?, a.int(4)?)?;
    let (mut shape, mut st) = (m.dims(), m.stride_dims());
    // Saturating: an offset or stride can only be that large when the view is empty or
    // has one element along `d`, and then it is never used to address memory.
    let off = s.saturating_mul(st[d]);
    shape[d] = len;
    st[d] = st[d].saturating_mul(step);
    view_into(a, 0, &shape, &st, off, 5)
}

fn check_index(index: i64, size: usize, what: &str) -> Result<usize> {
    let n = size as i64;
    let i = if index < 0 { index + n } else { index };
    if i < 0 || i >= n {
        return Err(Error::invalid(alloc::format!(
            "{what}: index {index} is out of range for size {size}"
        )));
    }
    Ok(i as usize)
}

/// `self, dim, index, *, out`
fn select_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let m = a.meta(0)?;
    if m.dim() == 0 {
        return Err(Error::invalid(
            "select() cannot be applied to a 0-dim tensor",
        ));
    }
    let d = normalize_dim(a.int(1)?, m.dim())?;
    let i = check_index(a.int(2)?, m.sizes()[d], "select")?;
    let (mut shape, mut st) = (m.dims(), m.stride_dims());
    // Saturating: strides of an empty tensor can be huge; the copy of an empty view
    // addresses nothing.
    let off = i.saturating_mul(st[d]);
    shape.remove(d);
    st.remove(d);
    view_into(a, 0, &shape, &st, off, 3)
}

/// `self, dim, start, length, *, out`
fn narrow_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let m = a.meta(0)?;
    if m.dim() == 0 {
        return Err(Error::invalid(
            "narrow() cannot be applied to a 0-dim tensor",
        ));
    }
    let d = normalize_dim(a.int(1)?, m.dim())?;
    let size = m.sizes()[d];
    let start = a.int(2)?;
    let start = if start < 0 {
        start + size as i64
    } else {
        start
    };
    let len = a.int(3)?;
    if start < 0 || len < 0 || start as i128 + len as i128 > size as i128 {
        return Err(Error::invalid(alloc::format!(
            "narrow: start {start} + length {len} exceeds dimension size {size}"
        )));
    }
    let (mut shape, st) = (m.dims(), m.stride_dims());
    let off = (start as usize).saturating_mul(st[d]);
    shape[d] = len as usize;
    view_into(a, 0, &shape, &st, off, 4)
}

/// `self, dimension, size, step, *, out`
fn unfold_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let m = a.meta(0)?;
    let rank = m.dim();
    let d = normalize_dim(a.int(1)?, rank)?;
    let size = to_usize(a.int(2)?, "unfold size")?;
    let step = a.int(3)?;
    if step <= 0 {
        return Err(Error::invalid(alloc::format!(
            "unfold step must be positive, got {step}"
        )));
    }
    let step = step as usize;
    let (mut shape, mut st) = (m.dims(), m.stride_dims());
    let (dsize, dstride) = if rank == 0 { (1, 0) } else { (shape[d], st[d]) };
    if size > dsize {
        return Err(Error::invalid(alloc::format!(
            "unfold: size {size} exceeds dimension size {dsize}"
        )));
    }
    if rank > 0 {
        shape[d] = (dsize - size) / step + 1;
        // Only used when there are two windows or more, and then `step < dsize`.
        st[d] = dstride.saturating_mul(step);
    }
    if !shape.push(size) || !st.push(dstride) {
        return Err(dims_err());
    }
    view_into(a, 0, &shape, &st, 0, 4)
}

/// `self, size[], stride[], storage_offset=None, *, out`
fn as_strided_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let shape = a.int_list(1)?.to_dims()?;
    let sl = a.int_list(2)?;
    if sl.len() != shape.len() {
        return Err(Error::invalid(alloc::format!(
            "as_strided: {} strides for {} sizes",
            sl.len(),
            shape.len()
        )));
    }
    let mut st = Dims::new();
    for k in 0..sl.len() {
        st.push(to_usize(sl.get(k)?, "as_strided stride")?);
    }
    let off = to_usize(a.opt_int(3)?.unwrap_or(0), "as_strided storage_offset")?;
    if !a.meta(0)?.is_contiguous() {
        // Strides index the storage, which PyTorch sees in its own layout; only the
        // row-major case has an unambiguous meaning here.
        return Err(Error::NotImplemented(
            "as_strided_copy of a tensor that is not in row-major dim order".into(),
        ));
    }
    view_into(a, 0, &shape, &st, off, 4)
}

/// `self, offset=0, dim1=0, dim2=1, *, out`
fn diagonal_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let m = a.meta(0)?;
    let rank = m.dim();
    if rank < 2 {
        return Err(Error::invalid(
            "diagonal needs a tensor with at least 2 dims",
        ));
    }
    let offset = a.int(1)?;
    let (d1, d2) = (
        normalize_dim(a.int(2)?, rank)?,
        normalize_dim(a.int(3)?, rank)?,
    );
    if d1 == d2 {
        return Err(Error::invalid("diagonal dimensions cannot be identical"));
    }
    let (s1, s2) = (m.sizes()[d1] as i64, m.sizes()[d2] as i64);
    let (t1, t2) = (m.strides()[d1], m.strides()[d2]);
    let len = if offset >= 0 {
        s1.min(s2 - offset).max(0)
    } else {
        (s1 + offset).min(s2).max(0)
    } as usize;
    let base = if len == 0 {
        0
    } else if offset >= 0 {
        (offset as usize).saturating_mul(t2)
    } else {
        (offset.unsigned_abs() as usize).saturating_mul(t1)
    };
    let (mut shape, mut st) = (Dims::new(), Dims::new());
    for d in 0..rank {
        if d != d1 && d != d2 {
            shape.push(m.sizes()[d]);
            st.push(m.strides()[d]);
        }
    }
    shape.push(len);
    st.push(t1.saturating_add(t2));
    view_into(a, 0, &shape, &st, base, 4)
}

// ---------------------------------------------------------------------------------------
// Concatenation and splitting
// ---------------------------------------------------------------------------------------

/// Checks inputs' promoted dtype can be written to `out`'s.
fn check_list_cast(a: &KernelArgs<'_>, list_arg: usize, out: usize) -> Result<()> {
    let list = a.tensor_list(list_arg)?;
    let od = a.meta(out)?.dtype;
    let mut common: Option<ScalarType> = None;
    for k in 0..list.len() {
        let t = list.meta(k)?.dtype;
        common = Some(match common {
            None => t,
            Some(c) => c
                .promote(t)
                .ok_or_else(|| Error::invalid(alloc::format!("cannot promote {c} and {t}")))?,
        });
    }
    if let Some(c) = common {
        if !can_cast(c, od) {
            return Err(Error::Dtype {
                arg: out,
                expected: alloc::format!("a dtype {c} can be cast to"),
                found: od,
            });
        }
    }
    Ok(())
}

/// `tensors[], dim=0, *, out`
fn cat_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    check_list_cast(a, 0, 2)?;
    let list = a.tensor_list(0)?;
    // Legacy rule: 1-d empty tensors are skipped whatever the other shapes.
    let skip = |m: &ptero_core::TensorMeta| m.dim() == 1 && m.numel() == 0;
    let mut reference: Option<Dims> = None;
    let mut total = 0usize;
    let mut dim = 0usize;
    for k in 0..list.len() {
        let m = list.meta(k)?;
        if skip(m) {
            continue;
        }
        match reference {
            None => {
                if m.dim() == 0 {
                    return Err(Error::invalid(
                        "cat: zero-dimensional tensors cannot be concatenated",
                    ));
                }
                dim = normalize_dim(a.int(1)?, m.dim())?;
                reference = Some(m.dims());
            }
            Some(r) => {
                let ok = m.dim() == r.len()
                    && m.sizes()
                        .iter()
                        .zip(r.iter())
                        .enumerate()
                        .all(|(d, (x, y))| d == dim || x == y);
                if !ok {
                    return Err(Error::shape(alloc::format!(
                        "cat: tensor {k} has shape {:?}, expected {r} except in dim {dim}",
                        m.sizes()
                    )));
                }
            }
        }
        total = total
            .checked_add(m.sizes()[dim])
            .ok_or_else(|| Error::shape("cat: size overflows"))?;
    }
    let Some(mut shape) = reference else {
        // Every input was skipped: the result is an empty 1-d tensor.
        return a.resize(2, &[0]);
    };
    shape[dim] = total;
    a.resize(2, &shape)?;
    let list = a.tensor_list(0)?;
    let o = a.out(2)?;
    let ost = o.meta.stride_dims();
    let od = o.meta.dtype;
    let obytes = o.bytes;
    let mut at = 0usize;
    for k in 0..list.len() {
        let m = list.meta(k)?;
        if skip(m) {
            continue;
        }
        let t = list.get(k)?;
        let sst = m.stride_dims();
        copy_cast(
            obytes,
            od,
            Strided::new(&ost, at.saturating_mul(ost[dim])),
            t.bytes,
            m.dtype,
            Strided::new(&sst, 0),
            m.sizes(),
        )?;
        at += m.sizes()[dim];
    }
    Ok(())
}

/// `tensors[], dim=0, *, out`
fn stack_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    check_list_cast(a, 0, 2)?;
    let list = a.tensor_list(0)?;
    if list.is_empty() {
        return Err(Error::invalid("stack expects a non-empty list of tensors"));
    }
    let first = list.meta(0)?.dims();
    for k in 1..list.len() {
        if list.meta(k)?.sizes() != first.as_slice() {
            return Err(Error::shape(alloc::format!(
                "stack: tensor {k} has shape {:?}, expected {first}",
                list.meta(k)?.sizes()
            )));
        }
    }
    let dim = normalize_dim(a.int(1)?, first.len() + 1)?;
    let mut shape = first;
    if !shape.insert(dim, list.len()) {
        return Err(dims_err());
    }
    a.resize(2, &shape)?;
    let list = a.tensor_list(0)?;
    let o = a.out(2)?;
    let mut ost = o.meta.stride_dims();
    let step = ost.remove(dim).unwrap_or(0);
    let od = o.meta.dtype;
    let obytes = o.bytes;
    for k in 0..list.len() {
        let t = list.get(k)?;
        let sst = t.meta.stride_dims();
        copy_cast(
            obytes,
            od,
            Strided::new(&ost, k.saturating_mul(step)),
            t.bytes,
            t.meta.dtype,
            Strided::new(&sst, 0),
            &first,
        )?;
    }
    Ok(())
}

/// Copies consecutive chunks of `self` along `dim` into the items of out-list `out`;
/// `keep_dim = false` removes the dim (unbind, chunks of size 1).
/// The chunk lengths of a split, computed on the fly so splitting never allocates.
#[derive(Clone, Copy)]
enum Chunks {
    /// `count` chunks of `split`, the last one shorter to end at `size`.
    Even {
        split: usize,
        size: usize,
        count: usize,
    },
    /// Lengths from int-list argument `arg`.
    List { arg: usize, count: usize },
    /// `count` chunks of length 1.
    Ones { count: usize },
}

impl Chunks {
    fn count(self) -> usize {
        match self {
            Chunks::Even { count, .. } | Chunks::List { count, .. } | Chunks::Ones { count } => {
                count
            }
        }
    }

    fn len(self, a: &KernelArgs<'_>, k: usize) -> Result<usize> {
        Ok(match self {
            Chunks::Even { split, size, .. } => split.min(size - (k * split).min(size)),
            Chunks::List { arg, .. } => to_usize(a.int_list(arg)?.get(k)?, "split size")?,
            Chunks::Ones { .. } => 1,
        })
    }
}

fn split_into(
    a: &mut KernelArgs<'_>,
    dim: usize,
    chunks: Chunks,
    out: usize,
    keep_dim: bool,
) -> Result<()> {
    let m = *a.meta(0)?;
    let n = a.tensor_list(out)?.len();
    if n != chunks.count() {
        return Err(Error::invalid(alloc::format!(
            "expected an out list of {} tensors, got {n}",
            chunks.count()
        )));
    }
    let sst_full = m.stride_dims();
    let mut at = 0usize;
    for k in 0..n {
        let len = chunks.len(a, k)?;
        let (mut shape, mut sst) = (m.dims(), sst_full);
        shape[dim] = len;
        if !keep_dim {
            shape.remove(dim);
            sst.remove(dim);
        }
        a.resize_list_item(out, k, &shape)?;
        let list = a.tensor_list(out)?;
        let o = list.get_mut(k)?;
        let s = a.tensor(0)?;
        let ost = o.meta.stride_dims();
        copy_cast(
            o.bytes,
            o.meta.dtype,
            Strided::new(&ost, 0),
            s.bytes,
            m.dtype,
            Strided::new(&sst, at.saturating_mul(sst_full[dim])),
            &shape,
        )?;
        at += len;
    }
    Ok(())
}

/// `self, split_size, dim=0, *, out[]`
fn split_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let m = a.meta(0)?;
    if m.dim() == 0 {
        return Err(Error::invalid(
            "split expects at least a 1-dimensional tensor",
        ));
    }
    let dim = normalize_dim(a.int(2)?, m.dim())?;
    let size = m.sizes()[dim];
    let split = to_usize(a.int(1)?, "split_size")?;
    if split == 0 && size != 0 {
        return Err(Error::invalid(
            "split_size can only be 0 if the dimension size is 0",
        ));
    }
    let chunks = if split == 0 {
        1
    } else {
        size.div_ceil(split).max(1)
    };
    split_into(
        a,
        dim,
        Chunks::Even {
            split,
            size,
            count: chunks,
        },
        3,
        true,
    )
}

/// `self, split_sizes[], dim=0, *, out[]`
fn split_with_sizes_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let m = a.meta(0)?;
    if m.dim() == 0 {
        return Err(Error::invalid(
            "split expects at least a 1-dimensional tensor",
        ));
    }
    let dim = normalize_dim(a.int(2)?, m.dim())?;
    let list = a.int_list(1)?;
    let mut sum = 0usize;
    for k in 0..list.len() {
        sum = sum.saturating_add(to_usize(list.get(k)?, "split size")?);
    }
    let count = list.len();
    if sum != m.sizes()[dim] {
        return Err(Error::invalid(alloc::format!(
            "split sizes add up to {sum}, dimension {dim} has size {}",
            m.sizes()[dim]
        )));
    }
    split_into(a, dim, Chunks::List { arg: 1, count }, 3, true)
}

/// `self, dim=0, *, out[]`
fn unbind_copy_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    if m.dim() == 0 {
        return Err(Error::invalid(
            "unbind expects at least a 1-dimensional tensor",
        ));
    }
    let dim = normalize_dim(a.int(1)?, m.dim())?;
    let count = m.sizes()[dim];
    split_into(a, dim, Chunks::Ones { count }, 2, false)
}

// ---------------------------------------------------------------------------------------
// Rearrangements
// ---------------------------------------------------------------------------------------

/// `self, repeats[], *, out`
fn repeat_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = *a.meta(0)?;
    let reps = a.int_list(1)?.to_dims()?;
    let rank = m.dim();
    if reps.len() < rank {
        return Err(Error::invalid(alloc::format!(
            "repeat: {} repeats for a {rank}-d tensor",
            reps.len()
        )));
    }
    let lead = reps.len() - rank;
    // The source padded with leading size-1 dims (stride 0).
    let (mut src_shape, mut sst) = (Dims::new(), Dims::new());
    for _ in 0..lead {
        src_shape.push(1);
        sst.push(0);
    }
    for d in 0..rank {
        src_shape.push(m.sizes()[d]);
        sst.push(m.strides()[d]);
    }
    let mut shape = Dims::new();
    for (s, r) in src_shape.iter().zip(reps.iter()) {
        shape.push(
            s.checked_mul(*r)
                .ok_or_else(|| Error::shape("repeat: size overflows"))?,
        );
    }
    a.resize(2, &shape)?;
    if shape.contains(&0) {
        // Nothing to write, however many tiles the repeats ask for (an empty input
        // repeated by enormous factors used to visit every tile).
        return Ok(());
    }
    let s = a.tensor(0)?;
    let o = a.out(2)?;
    let ost = o.meta.stride_dims();
    let od = o.meta.dtype;
    let ob = o.bytes;
    let mut res = Ok(());
    // One strided copy of the whole source per tile.
    for_each_index(&reps, |tile| {
        if res.is_err() {
            return;
        }
        let off: usize = tile
            .iter()
            .enumerate()
            .map(|(d, t)| t * src_shape[d] * ost[d])
            .sum();
        res = copy_cast(
            ob,
            od,
            Strided::new(&ost, off),
            s.bytes,
            m.dtype,
            Strided::new(&sst, 0),
            &src_shape,
        );
    });
    res
}

/// `repeat_interleave.Tensor(repeats, *, output_size=None, out)`: `i` repeated
/// `repeats[i]` times, for a 1-d int32/int64 `repeats`; out has `repeats`' dtype.
fn repeat_interleave_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = *a.meta(0)?;
    if !matches!(m.dtype, ScalarType::Int | ScalarType::Long) {
        return Err(Error::Dtype {
            arg: 0,
            expected: "int32 or int64 repeats".into(),
            found: m.dtype,
        });
    }
    if m.dim() != 1 {
        return Err(Error::shape(alloc::format!(
            "repeat_interleave: repeats must be 1-d, found shape {:?}",
            m.sizes()
        )));
    }
    if a.meta(2)?.dtype != m.dtype {
        return Err(Error::Dtype {
            arg: 2,
            expected: m.dtype.name().into(),
            found: a.meta(2)?.dtype,
        });
    }
    let mut total = 0usize;
    {
        let r = a.tensor(0)?;
        let mut bad = None;
        for_each_offset(m.sizes(), [m.strides()], |[o]| {
            let v = load_i64(r.bytes, m.dtype, o);
            if v < 0 {
                bad = Some(v);
            } else {
                total = total.saturating_add(v as usize);
            }
        });
        if let Some(v) = bad {
            return Err(Error::invalid(alloc::format!(
                "repeat_interleave: repeats must be non-negative, found {v}"
            )));
        }
    }
    if let Some(n) = a.opt_int(1)? {
        if n != total as i64 {
            return Err(Error::invalid(alloc::format!(
                "repeat_interleave: output_size {n} does not match the sum of repeats {total}"
            )));
        }
    }
    a.resize(2, &[total])?;
    let ost = a.meta(2)?.strides().first().copied().unwrap_or(1);
    let r = a.tensor(0)?;
    let o = a.out(2)?;
    let ob = &mut *o.bytes;
    let mut k = 0usize;
    let mut i = 0i64;
    for_each_offset(m.sizes(), [m.strides()], |[off]| {
        let n = load_i64(r.bytes, m.dtype, off).max(0) as usize;
        for _ in 0..n {
            store_i64(ob, m.dtype, k * ost, i);
            k += 1;
        }
        i += 1;
    });
    Ok(())
}

/// Copies element by element with a per-index source mapping (`map(out_index, src_index)`
/// fills the source's logical index).
fn gather_map(
    a: &mut KernelArgs<'_>,
    out: usize,
    shape: &[usize],
    map: impl Fn(&[usize], &mut [usize]),
) -> Result<()> {
    a.resize(out, shape)?;
    let s = a.tensor(0)?;
    let o = a.out(out)?;
    let (sst, ost) = (s.meta.stride_dims(), o.meta.stride_dims());
    let ec = ElemCopy::new(o.meta.dtype, s.meta.dtype)?;
    let mut sidx = [0usize; ptero_core::MAX_DIMS];
    let rank = s.meta.dim();
    let ob = o.bytes;
    for_each_index(shape, |idx| {
        map(idx, &mut sidx[..rank]);
        let so: usize = sidx[..rank]
            .iter()
            .zip(sst.iter())
            .map(|(i, s)| i * s)
            .sum();
        let oo: usize = idx.iter().zip(ost.iter()).map(|(i, s)| i * s).sum();
        ec.copy(ob, oo, s.bytes, so);
    });
    Ok(())
}

/// `self, dims[], *, out`
fn flip_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    let rank = m.dim();
    let list = a.int_list(1)?;
    let mut flip = [false; ptero_core::MAX_DIMS];
    for k in 0..list.len() {
        let d = normalize_dim(list.get(k)?, rank)?;
        if flip[d] {
            return Err(Error::invalid("flip: dim appears multiple times"));
        }
        flip[d] = true;
    }
    let shape = m.dims();
    gather_map(a, 2, &shape, |idx, src| {
        for (d, (s, &i)) in src.iter_mut().zip(idx).enumerate() {
            *s = if flip[d] { shape[d] - 1 - i } else { i };
        }
    })
}

/// `self, shifts[], dims[]=[], *, out`
fn roll_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let m = a.meta(0)?;
    let rank = m.dim();
    let shape = m.dims();
    let shifts = a.int_list(1)?;
    let dims = a.int_list(2)?;
    if dims.is_empty() {
        // Roll the flattened tensor, then restore the shape.
        if shifts.len() != 1 {
            return Err(Error::invalid(
                "roll: without dims, shifts must have one entry",
            ));
        }
        let n = m.numel();
        let sh = if n == 0 {
            0
        } else {
            shifts.get(0)?.rem_euclid(n as i64) as usize
        };
        return gather_map(a, 3, &shape, |idx, src| {
            let mut flat = 0usize;
            for (i, s) in idx.iter().zip(shape.iter()) {
                flat = flat * s + i;
            }
            let mut f = (flat + n - sh) % n.max(1);
            for d in (0..src.len()).rev() {
                src[d] = f % shape[d];
                f /= shape[d];
            }
        });
    }
    if shifts.len() != dims.len() {
        return Err(Error::invalid(alloc::format!(
            "roll: {} shifts for {} dims",
            shifts.len(),
            dims.len()
        )));
    }
    let mut sh = [0usize; ptero_core::MAX_DIMS];
    for k in 0..dims.len() {
        if rank == 0 {
            return Err(Error::invalid("roll: dims given for a 0-d tensor"));
        }
        let d = normalize_dim(dims.get(k)?, rank)?;
        if shape[d] > 0 {
            let s = shifts.get(k)?.rem_euclid(shape[d] as i64) as usize;
            sh[d] = (sh[d] + s) % shape[d];
        }
    }
    gather_map(a, 3, &shape, |idx, src| {
        for (d, (s, &i)) in src.iter_mut().zip(idx).enumerate() {
            *s = (i + shape[d] - sh[d]) % shape[d];
        }
    })
}

/// `self, diagonal=0, *, out`
fn tril_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    let rank = m.dim();
    if rank < 2 {
        return Err(Error::invalid("tril expects a tensor with at least 2 dims"));
    }
    let diag = a.int(1)?;
    let shape = m.dims();
    a.resize(2, &shape)?;
    let s = a.tensor(0)?;
    let o = a.out(2)?;
    let (sst, ost) = (s.meta.stride_dims(), o.meta.stride_dims());
    let od = o.meta.dtype;
    let ec = ElemCopy::new(od, s.meta.dtype)?;
    let ob = o.bytes;
    // Zero is all-zero bytes in every dtype, opaque ones included (the numeric store
    // helpers do not know float8 or bits16).
    let zero = [0u8; 8];
    let zc = ElemCopy::new(od, od)?;
    let diag = diag as i128;
    for_each_index(&shape, |idx| {
        let so: usize = idx.iter().zip(sst.iter()).map(|(i, s)| i * s).sum();
        let oo: usize = idx.iter().zip(ost.iter()).map(|(i, s)| i * s).sum();
        let (r, c) = (idx[rank - 2] as i128, idx[rank - 1] as i128);
        if c - r <= diag {
            ec.copy(ob, oo, s.bytes, so);
        } else {
            zc.copy(ob, oo, &zero, 0);
        }
    });
    Ok(())
}

/// Shared shape checks for pixel_(un)shuffle: returns (batch dims, C, H, W) of the input.
fn pixel_dims(m: &ptero_core::TensorMeta) -> Result<usize> {
    if m.dim() < 3 {
        return Err(Error::invalid(
            "pixel_shuffle expects a tensor with at least 3 dims",
        ));
    }
    let batch = m.dim() - 3;
    if batch + 6 > ptero_core::MAX_DIMS {
        return Err(dims_err());
    }
    Ok(batch)
}

/// `self, upscale_factor, *, out`: (*, C*r*r, H, W) -> (*, C, H*r, W*r).
fn pixel_shuffle_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = *a.meta(0)?;
    let batch = pixel_dims(&m)?;
    let r = a.int(1)?;
    if r <= 0 {
        return Err(Error::invalid(alloc::format!(
            "upscale_factor must be positive, got {r}"
        )));
    }
    let r = usize::try_from(r).map_err(|_| Error::invalid("upscale_factor is too large"))?;
    let (c, h, w) = (m.sizes()[batch], m.sizes()[batch + 1], m.sizes()[batch + 2]);
    // `r * r` used to wrap (to 0 for r = 2^32, then divide by it).
    let rr = checked_size(r, r, "pixel_shuffle: upscale_factor^2")?;
    if c % rr != 0 {
        return Err(Error::invalid(alloc::format!(
            "pixel_shuffle: channels {c} are not divisible by upscale_factor^2 = {rr}"
        )));
    }
    let oc = c / rr;
    let mut oshape = Dims::from_slice(&m.sizes()[..batch]).unwrap_or_default();
    for v in [
        oc,
        checked_size(h, r, "pixel_shuffle: height")?,
        checked_size(w, r, "pixel_shuffle: width")?,
    ] {
        oshape.push(v);
    }
    a.resize(2, &oshape)?;
    let om = a.meta(2)?;
    let (ss, os) = (m.strides(), om.strides());
    let (mut shape, mut sst, mut ost) = (Dims::new(), Dims::new(), Dims::new());
    for d in 0..batch {
        shape.push(m.sizes()[d]);
        sst.push(ss[d]);
        ost.push(os[d]);
    }
    let (sc, sh, sw) = (ss[batch], ss[batch + 1], ss[batch + 2]);
    let (tc, th, tw) = (os[batch], os[batch + 1], os[batch + 2]);
    // Iterate (C, H, i, W, j): in[c*r*r + i*r + j, h, w] -> out[c, h*r + i, w*r + j].
    // Strides saturate: they overflow only when the output is empty, and then no
    // element is addressed.
    for (n, s, o) in [
        (oc, sc.saturating_mul(rr), tc),
        (h, sh, th.saturating_mul(r)),
        (r, sc.saturating_mul(r), th),
        (w, sw, tw.saturating_mul(r)),
        (r, sc, tw),
    ] {
        shape.push(n);
        sst.push(s);
        ost.push(o);
    }
    strided_to_out(a, &shape, &sst, &ost, 2)
}

/// `self, downscale_factor, *, out`: (*, C, H*r, W*r) -> (*, C*r*r, H, W).
fn pixel_unshuffle_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = *a.meta(0)?;
    let batch = pixel_dims(&m)?;
    let r = a.int(1)?;
    if r <= 0 {
        return Err(Error::invalid(alloc::format!(
            "downscale_factor must be positive, got {r}"
        )));
    }
    let r = usize::try_from(r).map_err(|_| Error::invalid("downscale_factor is too large"))?;
    let (c, h, w) = (m.sizes()[batch], m.sizes()[batch + 1], m.sizes()[batch + 2]);
    if h % r != 0 || w % r != 0 {
        return Err(Error::invalid(alloc::format!(
            "pixel_unshuffle: height {h} and width {w} must be divisible by {r}"
        )));
    }
    let (oh, ow) = (h / r, w / r);
    let rr = checked_size(r, r, "pixel_unshuffle: downscale_factor^2")?;
    let mut oshape = Dims::from_slice(&m.sizes()[..batch]).unwrap_or_default();
    for v in [checked_size(c, rr, "pixel_unshuffle: channels")?, oh, ow] {
        oshape.push(v);
    }
    a.resize(2, &oshape)?;
    let om = a.meta(2)?;
    let (ss, os) = (m.strides(), om.strides());
    let (mut shape, mut sst, mut ost) = (Dims::new(), Dims::new(), Dims::new());
    for d in 0..batch {
        shape.push(m.sizes()[d]);
        sst.push(ss[d]);
        ost.push(os[d]);
    }
    let (sc, sh, sw) = (ss[batch], ss[batch + 1], ss[batch + 2]);
    let (tc, th, tw) = (os[batch], os[batch + 1], os[batch + 2]);
    // Iterate (C, i, j, H, W): in[c, h*r + i, w*r + j] -> out[c*r*r + i*r + j, h, w].
    // Strides saturate: they overflow only when the output is empty.
    for (n, s, o) in [
        (c, sc, tc.saturating_mul(rr)),
        (r, sh, tc.saturating_mul(r)),
        (r, sw, tc),
        (oh, sh.saturating_mul(r), th),
        (ow, sw.saturating_mul(r), tw),
    ] {
        shape.push(n);
        sst.push(s);
        ost.push(o);
    }
    strided_to_out(a, &shape, &sst, &ost, 2)
}

/// Copies with explicit source and destination strides over an iteration shape.
fn strided_to_out(
    a: &KernelArgs<'_>,
    shape: &[usize],
    sst: &[usize],
    ost: &[usize],
    out: usize,
) -> Result<()> {
    let s = a.tensor(0)?;
    let o = a.out(out)?;
    copy_cast(
        o.bytes,
        o.meta.dtype,
        Strided::new(ost, 0),
        s.bytes,
        s.meta.dtype,
        Strided::new(sst, 0),
        shape,
    )
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::view_copy.out", view_copy_out);
    reg.register("aten::permute_copy.out", permute_copy_out);
    reg.register("aten::transpose_copy.int_out", transpose_copy_out);
    reg.register("aten::t_copy.out", t_copy_out);
    reg.register("aten::expand_copy.out", expand_copy_out);
    reg.register("aten::squeeze_copy.dim_out", squeeze_dim_out);
    reg.register("aten::squeeze_copy.dims_out", squeeze_dims_out);
    reg.register("aten::unsqueeze_copy.out", unsqueeze_copy_out);
    reg.register("aten::slice_copy.Tensor_out", slice_copy_out);
    reg.register("aten::select_copy.int_out", select_copy_out);
    reg.register("aten::narrow_copy.out", narrow_copy_out);
    reg.register("aten::unfold_copy.out", unfold_copy_out);
    reg.register("aten::as_strided_copy.out", as_strided_copy_out);
    reg.register("aten::diagonal_copy.out", diagonal_copy_out);
    reg.register("aten::cat.out", cat_out);
    reg.register("aten::stack.out", stack_out);
    reg.register("aten::split_copy.Tensor_out", split_copy_out);
    reg.register("aten::split_with_sizes_copy.out", split_with_sizes_copy_out);
    reg.register("aten::unbind_copy.int_out", unbind_copy_out);
    reg.register("aten::repeat.out", repeat_out);
    reg.register("aten::repeat_interleave.Tensor_out", repeat_interleave_out);
    reg.register("aten::flip.out", flip_out);
    reg.register("aten::roll.out", roll_out);
    reg.register("aten::tril.out", tril_out);
    reg.register("aten::pixel_shuffle.out", pixel_shuffle_out);
    reg.register("aten::pixel_unshuffle.out", pixel_unshuffle_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    #[test]
    fn slice_bounds_of_sizes_past_i64_max() {
        // `size as i64` went negative and `clamp(0, n)` panicked.
        let huge = (1usize << 63) + 5;
        assert_eq!(
            super::slice_bounds(huge, Some(0), Some(2), 1).unwrap(),
            (0, 2, 1)
        );
        assert!(super::slice_bounds(huge, None, None, i64::MAX).is_ok());
    }

    fn iota(shape: &[usize]) -> OwnedTensor {
        let n: usize = shape.iter().product();
        OwnedTensor::from_f64(Float, shape, &(0..n).map(|x| x as f64).collect::<Vec<_>>())
    }
    fn t(x: OwnedTensor) -> Arg {
        Arg::T(x)
    }
    fn out(shape: &[usize]) -> Arg {
        Arg::Out(Float, shape.to_vec())
    }
    fn ints(v: &[i64]) -> Arg {
        Arg::Ints(v.to_vec())
    }

    type Case = (&'static str, Vec<Arg>, Vec<usize>, Vec<f64>);

    /// Copies big enough to be split over threads, against index arithmetic.
    #[test]
    fn large_copies_split_over_threads() {
        let shape = [24usize, 40, 72];
        let strides = [40 * 72, 72, 1];
        let at = |i: [usize; 3]| (i[0] * strides[0] + i[1] * strides[1] + i[2]) as f64;
        for perm in [[0usize, 1, 2], [1, 0, 2], [2, 0, 1], [0, 2, 1], [2, 1, 0]] {
            let oshape: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
            let got = run_op(
                "aten::permute_copy.out",
                vec![t(iota(&shape)), ints(&perm.map(|d| d as i64)), out(&oshape)],
            )
            .unwrap();
            let mut want = Vec::new();
            for a in 0..oshape[0] {
                for b in 0..oshape[1] {
                    for c in 0..oshape[2] {
                        let mut i = [0usize; 3];
                        i[perm[0]] = a;
                        i[perm[1]] = b;
                        i[perm[2]] = c;
                        want.push(at(i));
                    }
                }
            }
            assert_eq!(got.tensors[0].to_f64(), want, "permute {perm:?}");
        }
        // A broadcast along the outer dim: [1, 40, 72] -> [24, 40, 72].
        let got = run_op(
            "aten::expand_copy.out",
            vec![
                t(iota(&[1, 40, 72])),
                ints(&[24, 40, 72]),
                Arg::Bool(false),
                out(&[24, 40, 72]),
            ],
        )
        .unwrap();
        let want: Vec<f64> = (0..24 * 40 * 72).map(|i| (i % (40 * 72)) as f64).collect();
        assert_eq!(got.tensors[0].to_f64(), want, "expand");
    }

    #[test]
    fn table() {
        // [2, 3, 2] iota stored channels-last-ish (dim order [0, 2, 1]).
        let nc = iota(&[2, 3, 2]).with_dim_order(&[0, 2, 1]);
        let cases: Vec<Case> = vec![
            (
                "aten::view_copy.out",
                vec![t(iota(&[2, 3])), ints(&[3, -1]), out(&[3, 2])],
                vec![3, 2],
                vec![0., 1., 2., 3., 4., 5.],
            ),
            (
                "aten::view_copy.out",
                vec![t(nc.clone()), ints(&[12]), out(&[12])],
                vec![12],
                (0..12).map(|x| x as f64).collect(),
            ),
            (
                "aten::view_copy.out",
                vec![
                    t(OwnedTensor::from_f64(Float, &[], &[7.])),
                    ints(&[1]),
                    out(&[1]),
                ],
                vec![1],
                vec![7.],
            ),
            (
                "aten::permute_copy.out",
                vec![t(nc.clone()), ints(&[2, 0, -2]), out(&[2, 2, 3])],
                vec![2, 2, 3],
                vec![0., 2., 4., 6., 8., 10., 1., 3., 5., 7., 9., 11.],
            ),
            (
                "aten::transpose_copy.int_out",
                vec![t(iota(&[2, 3])), Arg::Int(0), Arg::Int(-1), out(&[3, 2])],
                vec![3, 2],
                vec![0., 3., 1., 4., 2., 5.],
            ),
            (
                "aten::t_copy.out",
                vec![t(iota(&[3])), out(&[3])],
                vec![3],
                vec![0., 1., 2.],
            ),
            (
                "aten::expand_copy.out",
                vec![
                    t(iota(&[2, 1])),
                    ints(&[2, -1, 3]),
                    Arg::Bool(false),
                    out(&[2, 2, 3]),
                ],
                vec![2, 2, 3],
                vec![0., 0., 0., 1., 1., 1., 0., 0., 0., 1., 1., 1.],
            ),
            (
                "aten::squeeze_copy.dim_out",
                vec![t(iota(&[2, 1, 2])), Arg::Int(1), out(&[2, 2])],
                vec![2, 2],
                vec![0., 1., 2., 3.],
            ),
            (
                "aten::squeeze_copy.dims_out",
                vec![t(iota(&[1, 2, 1])), ints(&[0, 1, -1]), out(&[2])],
                vec![2],
                vec![0., 1.],
            ),
            (
                "aten::unsqueeze_copy.out",
                vec![t(iota(&[2])), Arg::Int(-1), out(&[2, 1])],
                vec![2, 1],
                vec![0., 1.],
            ),
            (
                "aten::slice_copy.Tensor_out",
                vec![
                    t(iota(&[7])),
                    Arg::Int(0),
                    Arg::Int(-6),
                    Arg::None,
                    Arg::Int(2),
                    out(&[3]),
                ],
                vec![3],
                vec![1., 3., 5.],
            ),
            (
                "aten::slice_copy.Tensor_out",
                vec![
                    t(nc.clone()),
                    Arg::Int(1),
                    Arg::Int(1),
                    Arg::Int(100),
                    Arg::Int(1),
                    out(&[2, 2, 2]),
                ],
                vec![2, 2, 2],
                vec![2., 3., 4., 5., 8., 9., 10., 11.],
            ),
            (
                "aten::slice_copy.Tensor_out",
                vec![
                    t(iota(&[0, 3])),
                    Arg::Int(1),
                    Arg::Int(5),
                    Arg::Int(2),
                    Arg::Int(1),
                    out(&[0, 0]),
                ],
                vec![0, 0],
                vec![],
            ),
            (
                "aten::select_copy.int_out",
                vec![t(nc.clone()), Arg::Int(1), Arg::Int(-1), out(&[2, 2])],
                vec![2, 2],
                vec![4., 5., 10., 11.],
            ),
            (
                "aten::narrow_copy.out",
                vec![
                    t(iota(&[2, 3])),
                    Arg::Int(1),
                    Arg::Int(1),
                    Arg::Int(2),
                    out(&[2, 2]),
                ],
                vec![2, 2],
                vec![1., 2., 4., 5.],
            ),
            (
                "aten::unfold_copy.out",
                vec![
                    t(iota(&[5])),
                    Arg::Int(0),
                    Arg::Int(2),
                    Arg::Int(2),
                    out(&[2, 2]),
                ],
                vec![2, 2],
                vec![0., 1., 2., 3.],
            ),
            (
                "aten::as_strided_copy.out",
                vec![
                    t(iota(&[6])),
                    ints(&[2, 2]),
                    ints(&[1, 2]),
                    Arg::Int(1),
                    out(&[2, 2]),
                ],
                vec![2, 2],
                vec![1., 3., 2., 4.],
            ),
            (
                "aten::diagonal_copy.out",
                vec![
                    t(iota(&[3, 4])),
                    Arg::Int(1),
                    Arg::Int(0),
                    Arg::Int(1),
                    out(&[3]),
                ],
                vec![3],
                vec![1., 6., 11.],
            ),
            (
                "aten::diagonal_copy.out",
                vec![
                    t(iota(&[3, 4])),
                    Arg::Int(-1),
                    Arg::Int(-1),
                    Arg::Int(0),
                    out(&[3]),
                ],
                vec![3],
                vec![1., 6., 11.],
            ),
            (
                "aten::cat.out",
                vec![
                    Arg::Tensors(vec![
                        iota(&[2, 1]),
                        OwnedTensor::from_f64(Float, &[0], &[]),
                        OwnedTensor::from_f64(Long, &[2, 2], &[5., 6., 7., 8.]),
                    ]),
                    Arg::Int(-1),
                    out(&[2, 3]),
                ],
                vec![2, 3],
                vec![0., 5., 6., 1., 7., 8.],
            ),
            (
                "aten::cat.out",
                vec![
                    Arg::Tensors(vec![iota(&[1, 2]), nc.clone().with_dim_order(&[0, 1, 2])]),
                    Arg::Int(0),
                    out(&[1, 2]),
                ],
                vec![1, 2],
                vec![],
            ),
            (
                "aten::stack.out",
                vec![
                    Arg::Tensors(vec![iota(&[2]), iota(&[2])]),
                    Arg::Int(-1),
                    out(&[2, 2]),
                ],
                vec![2, 2],
                vec![0., 0., 1., 1.],
            ),
            (
                "aten::repeat.out",
                vec![t(iota(&[2])), ints(&[2, 2]), out(&[2, 4])],
                vec![2, 4],
                vec![0., 1., 0., 1., 0., 1., 0., 1.],
            ),
            (
                "aten::flip.out",
                vec![t(nc.clone()), ints(&[0, -1]), out(&[2, 3, 2])],
                vec![2, 3, 2],
                vec![7., 6., 9., 8., 11., 10., 1., 0., 3., 2., 5., 4.],
            ),
            (
                "aten::roll.out",
                vec![t(iota(&[2, 3])), ints(&[1]), ints(&[]), out(&[2, 3])],
                vec![2, 3],
                vec![5., 0., 1., 2., 3., 4.],
            ),
            (
                "aten::roll.out",
                vec![
                    t(iota(&[2, 3])),
                    ints(&[-1, 1]),
                    ints(&[1, 0]),
                    out(&[2, 3]),
                ],
                vec![2, 3],
                vec![4., 5., 3., 1., 2., 0.],
            ),
            (
                "aten::tril.out",
                vec![t(iota(&[3, 3])), Arg::Int(-1), out(&[3, 3])],
                vec![3, 3],
                vec![0., 0., 0., 3., 0., 0., 6., 7., 0.],
            ),
            (
                "aten::pixel_shuffle.out",
                vec![t(iota(&[1, 4, 1, 2])), Arg::Int(2), out(&[1, 1, 2, 4])],
                vec![1, 1, 2, 4],
                vec![0., 2., 1., 3., 4., 6., 5., 7.],
            ),
        ];
        for (op, args, shape, want) in cases {
            let res = run_op(op, args);
            if want.is_empty() && shape == [1, 2] {
                // The mismatched-rank cat case must fail.
                assert!(res.is_err(), "{op} should fail");
                continue;
            }
            let out = res.unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(out.tensors[0].sizes, shape, "{op}");
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
    }

    /// Large permutes take the tiled transpose path; every element must land right.
    #[test]
    fn permutes_of_large_tensors() {
        let shape = [3usize, 37, 70];
        let x = iota(&shape);
        for dims in [[2i64, 0, 1], [0, 2, 1], [1, 2, 0], [2, 1, 0]] {
            let os: Vec<usize> = dims.iter().map(|&d| shape[d as usize]).collect();
            let o = run_op(
                "aten::permute_copy.out",
                vec![t(x.clone()), ints(&dims), out(&os)],
            )
            .unwrap();
            let got = o.tensors[0].to_f64();
            for (k, g) in got.iter().enumerate() {
                // Position k in the output -> index in the input.
                let mut rem = k;
                let mut idx = [0usize; 3];
                for q in (0..3).rev() {
                    idx[dims[q] as usize] = rem % os[q];
                    rem /= os[q];
                }
                let want = (idx[0] * shape[1] + idx[1]) * shape[2] + idx[2];
                assert_eq!(*g, want as f64, "dims {dims:?} at {k}");
            }
        }
    }

    #[test]
    fn pixel_roundtrip_channels_last() {
        let x = iota(&[2, 8, 2, 3]).with_dim_order(&[0, 2, 3, 1]);
        let up = run_op(
            "aten::pixel_shuffle.out",
            vec![t(x.clone()), Arg::Int(2), out(&[2, 2, 4, 6])],
        )
        .unwrap();
        let cl = up.tensors[0].with_dim_order(&[0, 2, 3, 1]);
        let down = run_op(
            "aten::pixel_unshuffle.out",
            vec![t(cl), Arg::Int(2), out(&[2, 8, 2, 3])],
        )
        .unwrap();
        assert_close(&down.tensors[0].to_f64(), &x.to_f64(), 0.0, 0.0);
    }

    #[test]
    fn list_outputs() {
        let x = iota(&[5, 2]);
        let o = run_op(
            "aten::split_copy.Tensor_out",
            vec![
                t(x.clone()),
                Arg::Int(2),
                Arg::Int(0),
                Arg::OutList(Float, vec![vec![2, 2]; 3]),
            ],
        )
        .unwrap();
        let shapes: Vec<_> = o.tensors.iter().map(|t| t.sizes.clone()).collect();
        assert_eq!(shapes, [vec![2, 2], vec![2, 2], vec![1, 2]]);
        assert_close(&o.tensors[2].to_f64(), &[8., 9.], 0.0, 0.0);
        let o = run_op(
            "aten::split_with_sizes_copy.out",
            vec![
                t(x.with_dim_order(&[1, 0])),
                ints(&[1, 1]),
                Arg::Int(-1),
                Arg::OutList(Long, vec![vec![5, 1]; 2]),
            ],
        )
        .unwrap();
        assert_close(&o.tensors[1].to_f64(), &[1., 3., 5., 7., 9.], 0.0, 0.0);
        let o = run_op(
            "aten::unbind_copy.int_out",
            vec![
                t(x.clone()),
                Arg::Int(1),
                Arg::OutList(Float, vec![vec![5]; 2]),
            ],
        )
        .unwrap();
        assert_close(&o.tensors[0].to_f64(), &[0., 2., 4., 6., 8.], 0.0, 0.0);
        // Wrong sizes or list lengths are errors.
        assert!(run_op(
            "aten::split_with_sizes_copy.out",
            vec![
                t(x.clone()),
                ints(&[2, 2]),
                Arg::Int(0),
                Arg::OutList(Float, vec![vec![2, 2]; 2])
            ],
        )
        .is_err());
        assert!(run_op(
            "aten::split_copy.Tensor_out",
            vec![
                t(x),
                Arg::Int(2),
                Arg::Int(0),
                Arg::OutList(Float, vec![vec![2, 2]; 2])
            ],
        )
        .is_err());
    }

    #[test]
    fn errors() {
        let x = iota(&[2, 3]);
        let bad: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::view_copy.out",
                vec![t(x.clone()), ints(&[4, -1]), out(&[4, 2])],
            ),
            (
                "aten::view_copy.out",
                vec![t(x.clone()), ints(&[-1, -1]), out(&[6, 1])],
            ),
            (
                "aten::permute_copy.out",
                vec![t(x.clone()), ints(&[0, 0]), out(&[2, 3])],
            ),
            (
                "aten::select_copy.int_out",
                vec![t(x.clone()), Arg::Int(0), Arg::Int(2), out(&[3])],
            ),
            (
                "aten::expand_copy.out",
                vec![t(x.clone()), ints(&[4, 3]), Arg::Bool(false), out(&[4, 3])],
            ),
            (
                "aten::narrow_copy.out",
                vec![
                    t(x.clone()),
                    Arg::Int(1),
                    Arg::Int(2),
                    Arg::Int(2),
                    out(&[2, 2]),
                ],
            ),
            (
                "aten::slice_copy.Tensor_out",
                vec![
                    t(x.clone()),
                    Arg::Int(0),
                    Arg::None,
                    Arg::None,
                    Arg::Int(0),
                    out(&[2, 3]),
                ],
            ),
            (
                "aten::as_strided_copy.out",
                vec![
                    t(x.clone()),
                    ints(&[2, 2]),
                    ints(&[3, 3]),
                    Arg::None,
                    out(&[2, 2]),
                ],
            ),
            (
                "aten::transpose_copy.int_out",
                vec![t(x.clone()), Arg::Int(0), Arg::Int(2), out(&[3, 2])],
            ),
            (
                "aten::cat.out",
                vec![
                    Arg::Tensors(vec![x.clone()]),
                    Arg::Int(0),
                    Arg::Out(Long, vec![2, 3]),
                ],
            ),
            (
                "aten::pixel_shuffle.out",
                vec![t(iota(&[1, 3, 1, 1])), Arg::Int(2), out(&[1, 1, 2, 2])],
            ),
        ];
        for (op, args) in bad {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }

    #[test]
    fn repeat_interleave() {
        let name = "aten::repeat_interleave.Tensor_out";
        let r = OwnedTensor::from_f64(Long, &[3], &[2., 0., 3.]);
        for size in [Arg::None, Arg::Int(5)] {
            let out = run_op(name, vec![Arg::T(r.clone()), size, Arg::Out(Long, vec![5])]).unwrap();
            assert_eq!(out.tensors[0].to_f64(), [0., 0., 2., 2., 2.]);
        }
        let r32 = OwnedTensor::from_f64(Int, &[2], &[1., 1.]);
        let out = run_op(name, vec![Arg::T(r32), Arg::None, Arg::Out(Int, vec![2])]).unwrap();
        assert_eq!(out.tensors[0].to_f64(), [0., 1.]);
        let e = OwnedTensor::from_f64(Long, &[0], &[]);
        let out = run_op(name, vec![Arg::T(e), Arg::None, Arg::Out(Long, vec![1])]).unwrap();
        assert_eq!(out.tensors[0].sizes, [0]);
        for (rep, size) in [
            (OwnedTensor::from_f64(Long, &[2], &[1., -1.]), Arg::None),
            (OwnedTensor::from_f64(Long, &[2], &[1., 1.]), Arg::Int(3)),
            (OwnedTensor::from_f64(Float, &[2], &[1., 1.]), Arg::None),
            (OwnedTensor::from_f64(Long, &[1, 2], &[1., 1.]), Arg::None),
        ] {
            assert!(run_op(name, vec![Arg::T(rep), size, Arg::Out(Long, vec![4])]).is_err());
        }
    }

    #[test]
    fn hostile_arguments() {
        let (min, max) = (i64::MIN, i64::MAX);
        let big = 1usize << 31;
        // Sizes [0, 2^31, 2^31, 2^31]: no elements, but strides past 2^64.
        let empty_wide = OwnedTensor::zeros(Float, &[0, big, big, big]);
        // (op, args, Some((shape, values)) or None for an error). Each used to overflow
        // (a panic in debug builds), divide by a wrapped zero, index past a shape or loop
        // over an enormous empty space.
        let cases: Vec<(&str, Vec<Arg>, Option<(Vec<usize>, Vec<f64>)>)> = vec![
            (
                "aten::slice_copy.Tensor_out",
                vec![
                    t(iota(&[4])),
                    Arg::Int(0),
                    Arg::Int(1),
                    Arg::None,
                    Arg::Int(max),
                    out(&[4]),
                ],
                Some((vec![1], vec![1.])),
            ),
            (
                "aten::slice_copy.Tensor_out",
                vec![
                    t(iota(&[2, 3])),
                    Arg::Int(0),
                    Arg::Int(min),
                    Arg::Int(max),
                    Arg::Int(max),
                    out(&[2, 3]),
                ],
                Some((vec![1, 3], vec![0., 1., 2.])),
            ),
            (
                "aten::narrow_copy.out",
                vec![
                    t(iota(&[4])),
                    Arg::Int(0),
                    Arg::Int(1),
                    Arg::Int(max),
                    out(&[4]),
                ],
                None,
            ),
            (
                "aten::unfold_copy.out",
                vec![
                    t(iota(&[2, 3])),
                    Arg::Int(0),
                    Arg::Int(1),
                    Arg::Int(max),
                    out(&[1, 3, 1]),
                ],
                Some((vec![1, 3, 1], vec![0., 1., 2.])),
            ),
            (
                "aten::select_copy.int_out",
                vec![
                    t(empty_wide.clone()),
                    Arg::Int(1),
                    Arg::Int(big as i64 - 1),
                    out(&[0, 1, 1]),
                ],
                Some((vec![0, big, big], vec![])),
            ),
            (
                "aten::diagonal_copy.out",
                vec![
                    t(empty_wide.clone()),
                    Arg::Int(-(big as i64) + 1),
                    Arg::Int(1),
                    Arg::Int(2),
                    out(&[0, 1, 1]),
                ],
                Some((vec![0, big, 1], vec![])),
            ),
            (
                "aten::view_copy.out",
                vec![
                    t(iota(&[1])),
                    ints(&[1; 16].iter().copied().chain([-1]).collect::<Vec<_>>()),
                    out(&[1]),
                ],
                None,
            ),
            // The output is empty: no tile is visited, however many the repeats ask for.
            (
                "aten::repeat.out",
                vec![t(iota(&[0])), ints(&[1 << 40, 1 << 20]), out(&[0, 0])],
                Some((vec![1 << 40, 0], vec![])),
            ),
            (
                "aten::pixel_shuffle.out",
                vec![t(iota(&[0, 1, 1])), Arg::Int(1 << 32), out(&[0, 1, 1])],
                None,
            ),
            (
                "aten::pixel_shuffle.out",
                vec![t(iota(&[4, 1, 1])), Arg::Int(1 << 32), out(&[1, 2, 2])],
                None,
            ),
            (
                "aten::pixel_unshuffle.out",
                vec![t(iota(&[1, 0, 0])), Arg::Int(1 << 32), out(&[1, 0, 0])],
                None,
            ),
        ];
        for (op, args, want) in cases {
            let got = run_op(op, args);
            match want {
                Some((shape, values)) => {
                    let got = got.unwrap_or_else(|e| panic!("{op}: {e}"));
                    assert_eq!(got.tensors[0].sizes, shape, "{op}");
                    if !values.is_empty() {
                        assert_eq!(got.tensors[0].to_f64(), values, "{op}");
                    }
                }
                None => assert!(got.is_err(), "{op} should fail"),
            }
        }
    }

    #[test]
    fn opaque_dtypes_move_bytes() {
        let f8 = |sizes: &[usize], bytes: &[u8]| OwnedTensor {
            dtype: Float8E4M3FN,
            sizes: sizes.to_vec(),
            dim_order: (0..sizes.len() as u8).collect(),
            bytes: bytes.to_vec(),
        };
        // tril zeroes the upper triangle by bytes (the store helpers skip float8, which
        // left the out's old bytes there).
        let out = run_op(
            "aten::tril.out",
            vec![
                t(f8(&[2, 2], &[1, 2, 3, 4])),
                Arg::Int(0),
                Arg::OutLike(f8(&[2, 2], &[0xff; 4])),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].bytes, [1, 0, 3, 4]);
        // A view between two non-row-major layouts moves the bytes in logical order (it
        // used to read float8 as 0 and store nothing).
        let src = f8(&[2, 3], &[1, 2, 3, 4, 5, 6]).with_dim_order(&[1, 0]);
        let dst = OwnedTensor {
            dim_order: vec![1, 0],
            ..f8(&[3, 2], &[0xff; 6])
        };
        let out = run_op(
            "aten::view_copy.out",
            vec![t(src.clone()), ints(&[3, 2]), Arg::OutLike(dst)],
        )
        .unwrap();
        assert_eq!(
            out.tensors[0].with_dim_order(&[0, 1]).bytes,
            [1, 2, 3, 4, 5, 6]
        );
        // Converting float8 to a numeric dtype is not implemented: an error.
        let dst = OwnedTensor {
            dim_order: vec![1, 0],
            ..OwnedTensor::zeros(Float, &[3, 2])
        };
        assert!(run_op(
            "aten::view_copy.out",
            vec![t(src), ints(&[3, 2]), Arg::OutLike(dst)],
        )
        .is_err());
    }
}
