//! Strided copies with dtype conversion: the engine behind every "view then copy" kernel
//! (clone, `_to_copy`, permute, slice, cat...).
//!
//! A source is described as a strided view (shape, element strides, element offset) of a
//! byte buffer, so broadcasts (stride 0), permutations, slices and diagonals are all the
//! same copy. Bounds are checked once up front; the loops then cannot go out of range.

use half::{bf16, f16};
use ptero_core::{Dims, Error, KernelArgs, Result, ScalarType, TensorMeta};

use super::{
    contiguous_strides, for_each_offset, for_each_row, load_f64, load_i64, store_f64, store_i64,
};

/// A strided window on tensor bytes: element `idx` lives at `offset + sum(idx * strides)`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub strides: &'a [usize],
    pub offset: usize,
}

impl<'a> Strided<'a> {
    pub fn new(strides: &'a [usize], offset: usize) -> Self {
        Strided { strides, offset }
    }
}

/// Largest element offset a view reaches over `shape` (`None` for an empty shape or on
/// overflow; the caller treats overflow as out of bounds).
fn max_offset(shape: &[usize], v: Strided<'_>) -> Option<usize> {
    let mut m = v.offset;
    for (&s, &st) in shape.iter().zip(v.strides) {
        if s == 0 {
            return None;
        }
        m = m.checked_add((s - 1).checked_mul(st)?)?;
    }
    Some(m)
}

fn check_bounds(shape: &[usize], v: Strided<'_>, len: usize, what: &str) -> Result<()> {
    if shape.contains(&0) {
        return Ok(());
    }
    if v.strides.len() != shape.len() {
        return Err(Error::shape(alloc::format!(
            "{what}: {} strides for a {}-d shape",
            v.strides.len(),
            shape.len()
        )));
    }
    match max_offset(shape, v) {
        Some(m) if m < len => Ok(()),
        _ => Err(Error::OutOfBounds(alloc::format!(
            "{what}: a strided view of shape {shape:?} (strides {:?}, offset {}) reaches past \
             the {len} elements of its storage",
            v.strides,
            v.offset
        ))),
    }
}

/// True when the offsets of `shape`/`strides` are exactly `0..numel` (some dim order of a
/// dense tensor), so the data can be walked flat.
pub fn is_dense(shape: &[usize], strides: &[usize]) -> bool {
    let mut pairs: [(usize, usize); ptero_core::MAX_DIMS] = [(0, 0); ptero_core::MAX_DIMS];
    let mut n = 0;
    for (&s, &st) in shape.iter().zip(strides) {
        if s == 0 {
            return true;
        }
        if s > 1 {
            if n >= pairs.len() {
                return false;
            }
            pairs[n] = (st, s);
            n += 1;
        }
    }
    let pairs = &mut pairs[..n];
    pairs.sort_unstable();
    let mut expect = 1usize;
    for &(st, s) in pairs.iter() {
        if st != expect {
            return false;
        }
        expect = expect.saturating_mul(s);
    }
    true
}

/// Orders dims by the destination's strides (outermost first) and merges dims that are
/// contiguous in both operands, so inner loops are long and writes sequential.
fn simplify(shape: &[usize], dst: &[usize], src: &[usize]) -> (Dims, Dims, Dims) {
    let mut order: [usize; ptero_core::MAX_DIMS] = [0; ptero_core::MAX_DIMS];
    let r = shape.len().min(ptero_core::MAX_DIMS);
    for (i, o) in order.iter_mut().enumerate().take(r) {
        *o = i;
    }
    // Stable: equal strides keep logical order.
    order[..r].sort_by(|&a, &b| dst[b].cmp(&dst[a]));
    let (mut sh, mut ds, mut ss) = (Dims::new(), Dims::new(), Dims::new());
    for &d in &order[..r] {
        if shape[d] == 1 {
            continue;
        }
        let n = sh.len();
        if n > 0 && ds[n - 1] == dst[d] * shape[d] && ss[n - 1] == src[d] * shape[d] {
            sh[n - 1] *= shape[d];
            ds[n - 1] = dst[d];
            ss[n - 1] = src[d];
        } else {
            sh.push(shape[d]);
            ds.push(dst[d]);
            ss.push(src[d]);
        }
    }
    (sh, ds, ss)
}

macro_rules! typed_move {
    ($t:ty, $dst:expr, $src:expr, $sh:expr, $ds:expr, $ss:expr, $doff:expr, $soff:expr) => {{
        match (
            bytemuck::try_cast_slice_mut::<u8, $t>($dst),
            bytemuck::try_cast_slice::<u8, $t>($src),
        ) {
            (Ok(d), Ok(s)) if transposing($sh, $ds, $ss).is_some() => {
                let (a, b) = transposing($sh, $ds, $ss).unwrap_or((0, 0));
                transpose_blocked(d, s, $sh, $ds, $ss, (a, b), ($doff, $soff));
                true
            }
            (Ok(d), Ok(s)) => {
                // Bounds were checked by `check_bounds`; rows make the inner loop tight.
                for_each_row($sh, [$ds, $ss], |[o, i], n, [so, si]| {
                    let (o, i) = (o + $doff, i + $soff);
                    if so == 1 && si == 1 {
                        d[o..o + n].copy_from_slice(&s[i..i + n]);
                    } else {
                        for k in 0..n {
                            d[o + k * so] = s[i + k * si];
                        }
                    }
                });
                true
            }
            _ => false,
        }
    }};
}

/// A transposing copy: the destination's innermost dim `a` is strided in the source while
/// another dim `b` is the source's contiguous one. Walking the destination in order would
/// read a new cache line per element, so both are walked in tiles instead.
fn transposing(shape: &[usize], ds: &[usize], ss: &[usize]) -> Option<(usize, usize)> {
    let r = shape.len();
    if r < 2 {
        return None;
    }
    let a = (0..r).find(|&d| ds[d] == 1 && shape[d] > 1)?;
    if ss[a] == 1 || shape[a] < 8 {
        return None;
    }
    let b = (0..r).find(|&d| d != a && ss[d] == 1 && shape[d] >= 8)?;
    Some((a, b))
}

/// Copies with dims `a` (destination-contiguous) and `b` (source-contiguous) in 32 × 32
/// tiles, the other dims in an outer loop. Offsets were checked by the caller.
fn transpose_blocked<T: Copy>(
    d: &mut [T],
    s: &[T],
    shape: &[usize],
    ds: &[usize],
    ss: &[usize],
    (a, b): (usize, usize),
    (doff, soff): (usize, usize),
) {
    const TILE: usize = 32;
    let (mut rest, mut rds, mut rss) = (Dims::new(), Dims::new(), Dims::new());
    for k in 0..shape.len() {
        if k != a && k != b {
            rest.push(shape[k]);
            rds.push(ds[k]);
            rss.push(ss[k]);
        }
    }
    let (na, nb) = (shape[a], shape[b]);
    let (sa, db) = (ss[a], ds[b]);
    for_each_offset(&rest, [&rds, &rss], |[o, i]| {
        let (o, i) = (o + doff, i + soff);
        for b0 in (0..nb).step_by(TILE) {
            let b1 = (b0 + TILE).min(nb);
            for a0 in (0..na).step_by(TILE) {
                let a1 = (a0 + TILE).min(na);
                for bb in b0..b1 {
                    let drow = o + bb * db;
                    let scol = i + bb;
                    for aa in a0..a1 {
                        d[drow + aa] = s[scol + aa * sa];
                    }
                }
            }
        }
    });
}

/// Copies without conversion: elements are moved as raw bytes.
#[allow(clippy::too_many_arguments)]
fn move_elems(
    dst: &mut [u8],
    src: &[u8],
    es: usize,
    shape: &[usize],
    ds: &[usize],
    ss: &[usize],
    doff: usize,
    soff: usize,
) {
    let done = match es {
        1 => typed_move!(u8, dst, src, shape, ds, ss, doff, soff),
        2 => typed_move!(u16, dst, src, shape, ds, ss, doff, soff),
        4 => typed_move!(u32, dst, src, shape, ds, ss, doff, soff),
        8 => typed_move!(u64, dst, src, shape, ds, ss, doff, soff),
        _ => false,
    };
    if !done {
        // Misaligned buffers: move byte ranges.
        for_each_offset(shape, [ds, ss], |[o, i]| {
            let (o, i) = ((o + doff) * es, (i + soff) * es);
            if let (Some(d), Some(s)) = (dst.get_mut(o..o + es), src.get(i..i + es)) {
                d.copy_from_slice(s);
            }
        });
    }
}

/// How one element is converted between two dtypes, chosen once per copy.
#[derive(Clone, Copy)]
enum Conv {
    /// Integers and bool: exact through i64 (wrapping like C++ casts).
    Int,
    /// An integer into float32: converted directly to avoid rounding twice.
    IntToF32,
    /// Everything else goes through f64 (exact for every float source).
    Float,
}

fn conv_for(dt: ScalarType, st: ScalarType) -> Conv {
    let intish = |t: ScalarType| t.is_integral() || t == ScalarType::Bool;
    if intish(st) && intish(dt) {
        Conv::Int
    } else if intish(st) && dt == ScalarType::Float {
        Conv::IntToF32
    } else {
        Conv::Float
    }
}

#[inline]
fn convert(
    conv: Conv,
    dst: &mut [u8],
    dt: ScalarType,
    o: usize,
    src: &[u8],
    st: ScalarType,
    i: usize,
) {
    match conv {
        Conv::Int => store_i64(dst, dt, o, load_i64(src, st, i)),
        Conv::IntToF32 => {
            let v = load_i64(src, st, i);
            let v = if st == ScalarType::UInt64 {
                v as u64 as f32
            } else {
                v as f32
            };
            if let Some(b) = dst.get_mut(o * 4..o * 4 + 4) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
        Conv::Float => store_f64(dst, dt, o, load_f64(src, st, i)),
    }
}

macro_rules! flat_cast {
    ($dst:expr, $src:expr, $n:expr, $s:ty, $d:ty, $f:expr) => {{
        match (
            bytemuck::try_cast_slice_mut::<u8, $d>($dst),
            bytemuck::try_cast_slice::<u8, $s>($src),
        ) {
            (Ok(d), Ok(s)) if d.len() >= $n && s.len() >= $n => {
                let f = $f;
                d[..$n]
                    .iter_mut()
                    .zip(&s[..$n])
                    .for_each(|(d, s)| *d = f(*s));
                true
            }
            _ => false,
        }
    }};
}

/// Typed conversion loops for the frequent dtype pairs over flat data.
fn flat_cast_fast(dst: &mut [u8], dt: ScalarType, src: &[u8], st: ScalarType, n: usize) -> bool {
    use ScalarType::*;
    match (st, dt) {
        (Float, Half) => flat_cast!(dst, src, n, f32, f16, f16::from_f32),
        (Half, Float) => flat_cast!(dst, src, n, f16, f32, f16::to_f32),
        (Float, BFloat16) => flat_cast!(dst, src, n, f32, bf16, bf16::from_f32),
        (BFloat16, Float) => flat_cast!(dst, src, n, bf16, f32, bf16::to_f32),
        (Float, Double) => flat_cast!(dst, src, n, f32, f64, |v: f32| v as f64),
        (Double, Float) => flat_cast!(dst, src, n, f64, f32, |v: f64| v as f32),
        (Long, Int) => flat_cast!(dst, src, n, i64, i32, |v: i64| v as i32),
        (Int, Long) => flat_cast!(dst, src, n, i32, i64, |v: i32| v as i64),
        (Long, Float) => flat_cast!(dst, src, n, i64, f32, |v: i64| v as f32),
        (Int, Float) => flat_cast!(dst, src, n, i32, f32, |v: i32| v as f32),
        (Byte, Float) => flat_cast!(dst, src, n, u8, f32, |v: u8| v as f32),
        (Float, Long) => flat_cast!(dst, src, n, f32, i64, |v: f32| v as i64),
        (Float, Int) => flat_cast!(dst, src, n, f32, i32, |v: f32| v as i64 as i32),
        _ => false,
    }
}

/// Copies the view `src` of `src_bytes` (dtype `st`) into the view `dst` of `dst_bytes`
/// (dtype `dt`), converting each element like PyTorch's `Tensor.to` (float to int
/// truncates toward zero; anything to bool is `!= 0`). Both views cover `shape`.
#[allow(clippy::too_many_arguments)]
pub fn copy_cast(
    dst_bytes: &mut [u8],
    dt: ScalarType,
    dst: Strided<'_>,
    src_bytes: &[u8],
    st: ScalarType,
    src: Strided<'_>,
    shape: &[usize],
) -> Result<()> {
    copy_cast_par(
        &ptero_simd::Serial,
        dst_bytes,
        dt,
        dst,
        src_bytes,
        st,
        src,
        shape,
    )
}

/// Copies of at least this many bytes without conversion are split over threads.
const PAR_COPY_BYTES: usize = 1 << 18;

/// [`copy_cast`], large moves without conversion split over `par`'s threads (by the
/// destination's outermost dim when it is laid out densely).
#[allow(clippy::too_many_arguments)]
pub fn copy_cast_par(
    par: &dyn ptero_simd::Parallel,
    dst_bytes: &mut [u8],
    dt: ScalarType,
    dst: Strided<'_>,
    src_bytes: &[u8],
    st: ScalarType,
    src: Strided<'_>,
    shape: &[usize],
) -> Result<()> {
    for t in [dt, st] {
        if !t.is_numeric() && dt != st {
            return Err(Error::NotImplemented(alloc::format!(
                "converting {st} to {dt}"
            )));
        }
    }
    let (des, ses) = (dt.size(), st.size());
    check_bounds(shape, dst, dst_bytes.len() / des, "copy destination")?;
    check_bounds(shape, src, src_bytes.len() / ses, "copy source")?;
    let numel = match Dims::from_slice(shape).and_then(|d| d.numel()) {
        Some(0) => return Ok(()),
        Some(n) => n,
        None => return Err(Error::shape("copy shape overflows")),
    };
    // Flat when both views walk the same dense layout.
    if dst.strides == src.strides && is_dense(shape, dst.strides) {
        let (d0, s0) = (dst.offset * des, src.offset * ses);
        let (Some(d), Some(s)) = (
            dst_bytes.get_mut(d0..d0 + numel * des),
            src_bytes.get(s0..s0 + numel * ses),
        ) else {
            return Err(Error::OutOfBounds("flat copy range".into()));
        };
        if dt == st {
            if d.len() >= PAR_COPY_BYTES {
                ptero_simd::for_each_chunk(par, d, &|r, c| c.copy_from_slice(&s[r]));
            } else {
                d.copy_from_slice(s);
            }
            return Ok(());
        }
        if flat_cast_fast(d, dt, s, st, numel) {
            return Ok(());
        }
        let conv = conv_for(dt, st);
        for i in 0..numel {
            convert(conv, d, dt, i, s, st, i);
        }
        return Ok(());
    }
    let (sh, ds, ss) = simplify(shape, dst.strides, src.strides);
    let dense_dst = sh.len() >= 2 && ds.as_slice() == contiguous_strides(&sh).as_slice();
    if dt == st && dense_dst && numel.saturating_mul(des) >= PAR_COPY_BYTES {
        // Whole outer indices per task: each writes its own contiguous bytes.
        let row = ds[0] * des;
        let d0 = dst.offset * des;
        let Some(region) = dst_bytes.get_mut(d0..d0 + numel * des) else {
            return Err(Error::OutOfBounds("copy destination range".into()));
        };
        ptero_simd::for_each_chunk_by(par, region, row, &|r, chunk| {
            let (i0, count) = (r.start / row, r.len() / row);
            let mut sub = sh;
            sub[0] = count;
            move_elems(
                chunk,
                src_bytes,
                des,
                &sub,
                &ds,
                &ss,
                0,
                src.offset + i0 * ss[0],
            );
        });
        return Ok(());
    }
    if dt == st {
        move_elems(
            dst_bytes, src_bytes, des, &sh, &ds, &ss, dst.offset, src.offset,
        );
        return Ok(());
    }
    let conv = conv_for(dt, st);
    let (doff, soff) = (dst.offset, src.offset);
    for_each_offset(&sh, [&ds, &ss], |[o, i]| {
        convert(conv, dst_bytes, dt, o + doff, src_bytes, st, i + soff);
    });
    Ok(())
}

/// Copies single elements between two dtypes (for kernels whose index mapping is not a
/// strided view, like flip or gather). Out-of-range offsets are ignored, never a panic;
/// callers compute offsets from checked indices.
#[derive(Clone, Copy)]
pub struct ElemCopy {
    conv: Option<Conv>,
    dt: ScalarType,
    st: ScalarType,
    es: usize,
}

impl ElemCopy {
    pub fn new(dt: ScalarType, st: ScalarType) -> Result<ElemCopy> {
        if dt != st && !(dt.is_numeric() && st.is_numeric()) {
            return Err(Error::NotImplemented(alloc::format!(
                "converting {st} to {dt}"
            )));
        }
        Ok(ElemCopy {
            conv: if dt == st {
                None
            } else {
                Some(conv_for(dt, st))
            },
            dt,
            st,
            es: dt.size(),
        })
    }

    /// `dst[o] = src[i]` (element offsets).
    #[inline]
    pub fn copy(&self, dst: &mut [u8], o: usize, src: &[u8], i: usize) {
        match self.conv {
            None => {
                let es = self.es;
                let (o, i) = (o * es, i * es);
                if let (Some(d), Some(s)) = (dst.get_mut(o..o + es), src.get(i..i + es)) {
                    d.copy_from_slice(s);
                }
            }
            Some(c) => convert(c, dst, self.dt, o, src, self.st, i),
        }
    }
}

/// Strides of a tensor as an inline list.
pub fn strides_of(m: &TensorMeta) -> Dims {
    m.stride_dims()
}

/// Copies a strided view of tensor argument `src` (covering `shape`, which `out` has
/// already been resized to) into out-argument `out`, converting dtypes.
pub fn copy_view_to_out(
    a: &KernelArgs<'_>,
    src: usize,
    view: Strided<'_>,
    shape: &[usize],
    out: usize,
) -> Result<()> {
    let om = a.meta(out)?;
    if om.sizes() != shape {
        return Err(Error::shape(alloc::format!(
            "out has shape {:?}, expected {shape:?}",
            om.sizes()
        )));
    }
    let s = a.tensor(src)?;
    let o = a.out(out)?;
    let ostr = o.meta.stride_dims();
    copy_cast_par(
        a.parallel(),
        o.bytes,
        o.meta.dtype,
        Strided::new(&ostr, 0),
        s.bytes,
        s.meta.dtype,
        view,
        shape,
    )
}

/// Copies tensor argument `src` into out-argument `out` of the same shape (any dim
/// orders, any dtypes). `out` must already have `src`'s shape.
pub fn copy_tensor(a: &KernelArgs<'_>, src: usize, out: usize) -> Result<()> {
    let sm = a.meta(src)?;
    let st = sm.stride_dims();
    let shape = sm.dims();
    copy_view_to_out(a, src, Strided::new(&st, 0), &shape, out)
}

/// Iterates the storage offsets of a view in row-major logical order.
struct Offsets {
    shape: Dims,
    strides: Dims,
    idx: [usize; ptero_core::MAX_DIMS],
    cur: usize,
    left: usize,
}

impl Offsets {
    fn new(m: &TensorMeta) -> Offsets {
        Offsets {
            shape: m.dims(),
            strides: m.stride_dims(),
            idx: [0; ptero_core::MAX_DIMS],
            cur: 0,
            left: m.numel(),
        }
    }
}

impl Iterator for Offsets {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let v = self.cur;
        let mut d = self.shape.len();
        while d > 0 {
            d -= 1;
            // Wrapping, as in `for_each_offset`: size-1 dims may carry huge strides.
            self.idx[d] += 1;
            self.cur = self.cur.wrapping_add(self.strides[d]);
            if self.idx[d] < self.shape[d] {
                break;
            }
            self.cur = self
                .cur
                .wrapping_sub(self.strides[d].wrapping_mul(self.shape[d]));
            self.idx[d] = 0;
        }
        Some(v)
    }
}

/// Copies the elements of `src` in row-major logical order into `out` (same element
/// count, any shapes and dim orders): the data movement of `view`/`reshape`.
pub fn copy_reshape(a: &KernelArgs<'_>, src: usize, out: usize) -> Result<()> {
    let (sm, om) = (a.meta(src)?, a.meta(out)?);
    if sm.numel() != om.numel() {
        return Err(Error::shape(alloc::format!(
            "cannot reshape {} elements ({:?}) into {:?}",
            sm.numel(),
            sm.sizes(),
            om.sizes()
        )));
    }
    if sm.is_contiguous() {
        let shape = om.dims();
        let st = contiguous_strides(&shape);
        return copy_view_to_out(a, src, Strided::new(&st, 0), &shape, out);
    }
    if om.is_contiguous() {
        // Walk the source's shape; the out's flat order matches the source's logical order.
        let shape = sm.dims();
        let sst = sm.stride_dims();
        let ost = contiguous_strides(&shape);
        let s = a.tensor(src)?;
        let o = a.out(out)?;
        return copy_cast(
            o.bytes,
            om.dtype,
            Strided::new(&ost, 0),
            s.bytes,
            sm.dtype,
            Strided::new(&sst, 0),
            &shape,
        );
    }
    // Moves bytes for equal dtypes (opaque ones included), converts numeric ones, and
    // rejects converting an opaque dtype.
    let ec = ElemCopy::new(om.dtype, sm.dtype)?;
    let s = a.tensor(src)?;
    let o = a.out(out)?;
    for (i, oo) in Offsets::new(sm).zip(Offsets::new(om)) {
        ec.copy(o.bytes, oo, s.bytes, i);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        bytemuck::cast_slice(v).to_vec()
    }

    #[test]
    fn dense_detection() {
        assert!(is_dense(&[2, 3], &[3, 1]));
        assert!(is_dense(&[2, 3], &[1, 2]));
        assert!(is_dense(&[2, 1, 3], &[3, 100, 1]));
        assert!(!is_dense(&[2, 3], &[0, 1]));
        assert!(!is_dense(&[2, 2], &[4, 1]));
    }

    #[test]
    fn permute_and_cast() {
        let src = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        // Transposed read of a [2,3] tensor into a [3,2] contiguous i32 destination.
        let mut dst = vec![0u8; 24];
        copy_cast(
            &mut dst,
            ScalarType::Int,
            Strided::new(&[2, 1], 0),
            &src,
            ScalarType::Float,
            Strided::new(&[1, 3], 0),
            &[3, 2],
        )
        .unwrap();
        let got: &[i32] = bytemuck::cast_slice(&dst);
        assert_eq!(got, &[0, 3, 1, 4, 2, 5]);
        // Same dtype, broadcast source.
        let mut dst = vec![0u8; 24];
        copy_cast(
            &mut dst,
            ScalarType::Float,
            Strided::new(&[3, 1], 0),
            &src,
            ScalarType::Float,
            Strided::new(&[0, 1], 1),
            &[2, 3],
        )
        .unwrap();
        let got: &[f32] = bytemuck::cast_slice(&dst);
        assert_eq!(got, &[1., 2., 3., 1., 2., 3.]);
        // A view reaching past the source is an error, not a panic.
        assert!(copy_cast(
            &mut dst,
            ScalarType::Float,
            Strided::new(&[3, 1], 0),
            &src,
            ScalarType::Float,
            Strided::new(&[3, 1], 1),
            &[2, 3],
        )
        .is_err());
    }

    #[test]
    fn conversions() {
        let src = f32_bytes(&[-2.7, 0.0, f32::NAN, 3.5]);
        let mut dst = vec![0u8; 4];
        copy_cast(
            &mut dst,
            ScalarType::Bool,
            Strided::new(&[1], 0),
            &src,
            ScalarType::Float,
            Strided::new(&[1], 0),
            &[4],
        )
        .unwrap();
        assert_eq!(dst, [1, 0, 1, 1]);
        let mut dst = vec![0u8; 4];
        copy_cast(
            &mut dst,
            ScalarType::Char,
            Strided::new(&[1], 0),
            &src,
            ScalarType::Float,
            Strided::new(&[1], 0),
            &[4],
        )
        .unwrap();
        assert_eq!(dst, [(-2i8) as u8, 0, 0, 3]);
        let big = bytemuck::cast_slice(&[i64::MAX]).to_vec();
        let mut dst = vec![0u8; 4];
        copy_cast(
            &mut dst,
            ScalarType::Float,
            Strided::new(&[], 0),
            &big,
            ScalarType::Long,
            Strided::new(&[], 0),
            &[],
        )
        .unwrap();
        assert_eq!(f32::from_le_bytes(dst.try_into().unwrap()), i64::MAX as f32);
    }
}
