//! The engine behind elementwise kernels: broadcasting, any dim order, any dtype.
//!
//! Operands are loaded into one of three compute kinds (bool, i64, f64) and the result
//! cast to the out dtype. f64 compute gives the same results as f32 arithmetic for
//! `+ - * /` (double rounding is exact there) and correctly rounded results for the
//! transcendental functions. A flat f32 fast path covers the common case.

use ptero_core::{Error, KernelArgs, Result, Scalar, ScalarType, TensorMeta};

use super::{
    broadcast_shapes, broadcast_strides, for_each_offset, load_bool, load_f64, load_i64,
    same_layout,
};
use super::{store_bool, store_f64, store_i64, ComputeKind};

/// The three forms of an elementwise binary function.
#[derive(Clone, Copy)]
pub struct BinaryFns {
    pub name: &'static str,
    pub float: fn(f64, f64) -> f64,
    /// `None`: integer inputs are computed in floating point.
    pub int: Option<fn(i64, i64) -> Result<i64>>,
    /// `None`: bool inputs are computed as integers.
    pub boolean: Option<fn(bool, bool) -> bool>,
    /// A faster f32 form for the flat path (must match `float`).
    pub f32: Option<fn(f32, f32) -> f32>,
    /// The vectorised f32 form, when `ptero-simd` has one (must match `f32` exactly).
    pub simd: Option<ptero_simd::ops::Binary>,
}

/// A binary operand: a tensor argument or a scalar.
#[derive(Clone, Copy)]
pub enum Operand {
    Tensor(usize),
    Scalar(Scalar),
}

fn operand_dtype(args: &KernelArgs<'_>, o: Operand) -> Result<ScalarType> {
    match o {
        Operand::Tensor(i) => Ok(args.meta(i)?.dtype),
        Operand::Scalar(s) => Ok(s.dtype()),
    }
}

/// The dtype PyTorch computes `a op b` in (tensor dtypes win over scalars of the same
/// category: int tensor + int scalar stays int32, float tensor * 2.0 stays float).
pub fn result_type(args: &KernelArgs<'_>, a: Operand, b: Operand) -> Result<ScalarType> {
    let ta = operand_dtype(args, a)?;
    let tb = operand_dtype(args, b)?;
    let cat = |t: ScalarType| {
        if t == ScalarType::Bool {
            0
        } else if t.is_integral() {
            1
        } else {
            2
        }
    };
    let dim0 = |o: Operand| -> Result<bool> {
        Ok(match o {
            Operand::Scalar(_) => true,
            Operand::Tensor(i) => args.meta(i)?.dim() == 0,
        })
    };
    let (sa, sb) = (
        matches!(a, Operand::Scalar(_)),
        matches!(b, Operand::Scalar(_)),
    );
    let pick = |t_tensor: ScalarType, t_scalar: ScalarType| -> ScalarType {
        if cat(t_scalar) > cat(t_tensor) {
            // A float scalar with an int tensor gives the default float dtype.
            if cat(t_scalar) == 2 {
                ScalarType::Float
            } else {
                ScalarType::Long.min(t_scalar)
            }
        } else {
            t_tensor
        }
    };
    if sb && !sa {
        return Ok(pick(ta, tb));
    }
    if sa && !sb {
        return Ok(pick(tb, ta));
    }
    // Zero-dim tensors take part only when they are of a higher category.
    let (za, zb) = (dim0(a)?, dim0(b)?);
    if za != zb {
        let (full, zero) = if zb { (ta, tb) } else { (tb, ta) };
        if cat(zero) <= cat(full) {
            return Ok(full);
        }
        return full
            .promote(zero)
            .ok_or_else(|| Error::invalid(alloc::format!("cannot promote {ta} and {tb}")));
    }
    ta.promote(tb)
        .ok_or_else(|| Error::invalid(alloc::format!("cannot promote {ta} and {tb}")))
}

/// Computes `out = f(a, b)` elementwise, broadcasting, computing in `kind`.
///
/// `out` is resized to the broadcast shape. For comparison ops pass the compute kind of
/// the inputs' promoted type; for arithmetic ops the out dtype's kind.
pub fn binary(
    args: &mut KernelArgs<'_>,
    a: Operand,
    b: Operand,
    out: usize,
    kind: ComputeKind,
    fns: &BinaryFns,
) -> Result<()> {
    let shape_of = |o: Operand| -> Result<ptero_core::Dims> {
        match o {
            Operand::Tensor(i) => Ok(args.meta(i)?.dims()),
            Operand::Scalar(_) => Ok(ptero_core::Dims::new()),
        }
    };
    let shape = broadcast_shapes(&shape_of(a)?, &shape_of(b)?)?;
    args.resize(out, &shape)?;
    let out_dtype = args.meta(out)?.dtype;
    if !out_dtype.is_numeric() {
        return Err(Error::Dtype {
            arg: out,
            expected: "a numeric dtype".into(),
            found: out_dtype,
        });
    }
    for o in [a, b] {
        if let Operand::Tensor(i) = o {
            let t = args.meta(i)?.dtype;
            if !t.is_numeric() {
                return Err(Error::Dtype {
                    arg: i,
                    expected: "a numeric dtype".into(),
                    found: t,
                });
            }
        }
    }

    // Flat f32 fast path: same shape and layout everywhere, or tensor-scalar.
    if let (Some(f), ComputeKind::Float, ScalarType::Float) = (fns.f32, kind, out_dtype) {
        let metas: [Option<&TensorMeta>; 2] = [tensor_meta(args, a)?, tensor_meta(args, b)?];
        let all_f32 = metas.iter().flatten().all(|m| m.dtype == ScalarType::Float);
        let om = args.meta(out)?;
        let mut layout = [om; 3];
        let mut n = 1;
        for m in metas.iter().flatten() {
            layout[n] = m;
            n += 1;
        }
        if all_f32 && same_layout(&shape, &layout[..n]) {
            let par = args.parallel();
            let av = load_f32_operand(args, a)?;
            let bv = load_f32_operand(args, b)?;
            let mut ov = args.out(out)?;
            let o = ov.data::<f32>()?;
            if let Some(op) = fns.simd {
                use ptero_simd::ops::{Lhs, Rhs};
                ptero_simd::for_each_chunk(par, o, &|r, o| {
                    let lhs = match av {
                        F32::Slice(x) => Lhs::Slice(&x[r.clone()]),
                        F32::Scalar(v) => Lhs::Scalar(v),
                    };
                    let rhs = match bv {
                        F32::Slice(y) => Rhs::Slice(&y[r.clone()]),
                        F32::Scalar(v) => Rhs::Scalar(v),
                    };
                    ptero_simd::ops::binary(op, lhs, rhs, 1.0, o);
                });
                return Ok(());
            }
            match (av, bv) {
                (F32::Slice(x), F32::Slice(y)) => o
                    .iter_mut()
                    .zip(x.iter().zip(y))
                    .for_each(|(o, (x, y))| *o = f(*x, *y)),
                (F32::Slice(x), F32::Scalar(y)) => {
                    o.iter_mut().zip(x).for_each(|(o, x)| *o = f(*x, y))
                }
                (F32::Scalar(x), F32::Slice(y)) => {
                    o.iter_mut().zip(y).for_each(|(o, y)| *o = f(x, *y))
                }
                (F32::Scalar(x), F32::Scalar(y)) => o.iter_mut().for_each(|o| *o = f(x, y)),
            }
            return Ok(());
        }
    }

    if let (Some(op), ComputeKind::Float, ScalarType::Float) = (fns.simd, kind, out_dtype) {
        if per_channel_f32(args, a, b, out, op)? {
            return Ok(());
        }
    }
    let a_st = operand_strides(args, a, &shape)?;
    let b_st = operand_strides(args, b, &shape)?;
    let o_st = args.meta(out)?.stride_dims();
    if let (Some(f), ComputeKind::Float, ScalarType::Float) = (fns.f32, kind, out_dtype) {
        let f32_operand = |o: Operand| match o {
            Operand::Tensor(i) => args
                .meta(i)
                .map(|m| m.dtype == ScalarType::Float)
                .unwrap_or(false),
            Operand::Scalar(_) => true,
        };
        if f32_operand(a) && f32_operand(b) {
            return binary_rows_f32(
                args,
                a,
                b,
                out,
                &shape,
                [&o_st, &a_st, &b_st],
                (f, fns.simd),
            );
        }
    }
    let (ab, at) = operand_bytes(args, a)?;
    let (bb, bt) = operand_bytes(args, b)?;
    let (sa, sb) = (scalar_of(a), scalar_of(b));
    let ov = args.out(out)?;
    let ob = &mut *ov.bytes;
    let mut err = None;
    match kind {
        ComputeKind::Float => {
            let f = fns.float;
            for_each_offset(&shape, [&o_st, &a_st, &b_st], |[oo, ao, bo]| {
                let x = sa.map_or_else(|| load_f64(ab, at, ao), |s| s.to_f64());
                let y = sb.map_or_else(|| load_f64(bb, bt, bo), |s| s.to_f64());
                store_f64(ob, out_dtype, oo, f(x, y));
            });
        }
        ComputeKind::Int => match fns.int {
            Some(f) => {
                for_each_offset(&shape, [&o_st, &a_st, &b_st], |[oo, ao, bo]| {
                    let x = sa.map_or_else(|| load_i64(ab, at, ao), |s| s.to_i64());
                    let y = sb.map_or_else(|| load_i64(bb, bt, bo), |s| s.to_i64());
                    match f(x, y) {
                        Ok(v) => store_i64(ob, out_dtype, oo, v),
                        Err(e) => err = Some(e),
                    }
                });
            }
            None => {
                let f = fns.float;
                for_each_offset(&shape, [&o_st, &a_st, &b_st], |[oo, ao, bo]| {
                    let x = sa.map_or_else(|| load_f64(ab, at, ao), |s| s.to_f64());
                    let y = sb.map_or_else(|| load_f64(bb, bt, bo), |s| s.to_f64());
                    store_f64(ob, out_dtype, oo, f(x, y));
                });
            }
        },
        ComputeKind::Bool => match (fns.boolean, fns.int) {
            (Some(f), _) => {
                for_each_offset(&shape, [&o_st, &a_st, &b_st], |[oo, ao, bo]| {
                    let x = sa.map_or_else(|| load_bool(ab, at, ao), |s| s.to_f64() != 0.0);
                    let y = sb.map_or_else(|| load_bool(bb, bt, bo), |s| s.to_f64() != 0.0);
                    store_bool(ob, out_dtype, oo, f(x, y));
                });
            }
            (None, _) => {
                return Err(Error::Dtype {
                    arg: out,
                    expected: alloc::format!("non-bool for {}", fns.name),
                    found: ScalarType::Bool,
                })
            }
        },
    }
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn scalar_of(o: Operand) -> Option<Scalar> {
    match o {
        Operand::Scalar(s) => Some(s),
        Operand::Tensor(_) => None,
    }
}

/// A channels-last f32 image against one value per channel (`[N or 1, C, 1, 1]`, a
/// squeeze-excitation scale): each pixel's row of channels against the image's channel
/// row, where the generic broadcast would walk element by element. False, having done
/// nothing, for any other case.
fn per_channel_f32(
    args: &mut KernelArgs<'_>,
    a: Operand,
    b: Operand,
    out: usize,
    op: ptero_simd::ops::Binary,
) -> Result<bool> {
    let (Operand::Tensor(ia), Operand::Tensor(ib)) = (a, b) else {
        return Ok(false);
    };
    let om = *args.meta(out)?;
    let (am, bm) = (*args.meta(ia)?, *args.meta(ib)?);
    let image = |m: &TensorMeta| {
        m.dtype == ScalarType::Float && m.sizes() == om.sizes() && m.dim_order() == om.dim_order()
    };
    let per_channel = |m: &TensorMeta| {
        let s = m.sizes();
        m.dtype == ScalarType::Float
            && m.dim() == 4
            && (s[0] == 1 || s[0] == om.sizes()[0])
            && s[1] == om.sizes()[1]
            && s[2] == 1
            && s[3] == 1
            && (s[1] <= 1 || m.strides()[1] == 1)
    };
    if om.dim() != 4 || om.dtype != ScalarType::Float || om.dim_order() != [0, 2, 3, 1] {
        return Ok(false);
    }
    // (image operand, channel operand, whether the image is the left one)
    let (img, ch, left) = if image(&am) && per_channel(&bm) {
        (ia, ib, true)
    } else if image(&bm) && per_channel(&am) {
        (ib, ia, false)
    } else {
        return Ok(false);
    };
    let [n, c, h, w] = [om.sizes()[0], om.sizes()[1], om.sizes()[2], om.sizes()[3]];
    let (cn, cst) = (args.meta(ch)?.sizes()[0], args.meta(ch)?.strides()[0]);
    if n == 0 || c == 0 || h * w == 0 {
        return Ok(true);
    }
    let par = args.parallel();
    let x = args.tensor(img)?;
    let sc = args.tensor(ch)?;
    let mut ov = args.out(out)?;
    let (x, sc, o): (&[f32], &[f32], &mut [f32]) = (x.data()?, sc.data()?, ov.data()?);
    let (x, o) = match (x.get(..n * c * h * w), o.get_mut(..n * c * h * w)) {
        (Some(x), Some(o)) => (x, o),
        _ => return Err(Error::OutOfBounds("per-channel operand".into())),
    };
    let last = if cn == 1 { 0 } else { (n - 1) * cst };
    if sc.len() < last + c {
        return Err(Error::OutOfBounds("per-channel operand".into()));
    }
    let pixels = h * w;
    ptero_simd::for_each_chunk_by(par, o, c, &|r, o| {
        // The chunk's pixels, split where the image (and so the channel row) changes.
        let mut p = r.start / c;
        let mut o = o;
        while !o.is_empty() {
            let img = p / pixels;
            let count = ((img + 1) * pixels - p).min(o.len() / c);
            let (seg, rest) = o.split_at_mut(count * c);
            let srow = &sc[if cn == 1 { 0 } else { img * cst }..][..c];
            ptero_simd::ops::binary_rows(op, &x[p * c..(p + count) * c], srow, !left, seg);
            o = rest;
            p += count;
        }
    });
    Ok(true)
}

fn tensor_meta<'s>(args: &'s KernelArgs<'_>, o: Operand) -> Result<Option<&'s TensorMeta>> {
    match o {
        Operand::Tensor(i) => Ok(Some(args.meta(i)?)),
        Operand::Scalar(_) => Ok(None),
    }
}

fn operand_strides(args: &KernelArgs<'_>, o: Operand, shape: &[usize]) -> Result<ptero_core::Dims> {
    match o {
        Operand::Tensor(i) => broadcast_strides(args.meta(i)?, shape),
        Operand::Scalar(_) => Ok(ptero_core::Dims::filled(shape.len(), 0).unwrap_or_default()),
    }
}

fn operand_bytes<'s>(args: &'s KernelArgs<'_>, o: Operand) -> Result<(&'s [u8], ScalarType)> {
    match o {
        Operand::Tensor(i) => {
            let t = args.tensor(i)?;
            Ok((t.bytes, t.dtype()))
        }
        Operand::Scalar(s) => Ok((&[], s.dtype())),
    }
}

enum F32<'s> {
    Slice(&'s [f32]),
    Scalar(f32),
}

fn load_f32_operand<'s>(args: &'s KernelArgs<'_>, o: Operand) -> Result<F32<'s>> {
    match o {
        Operand::Tensor(i) => {
            let t = args.tensor(i)?;
            if t.meta.dim() == 0 {
                Ok(F32::Scalar(
                    t.data::<f32>()?.first().copied().unwrap_or(0.0),
                ))
            } else {
                Ok(F32::Slice(t.data::<f32>()?))
            }
        }
        Operand::Scalar(s) => Ok(F32::Scalar(s.to_f64() as f32)),
    }
}

/// Computes `out = f(x)` elementwise for any dtype, in the compute kind of `out`'s dtype
/// (or of the input when `out` is bool, for predicates like `isnan`).
pub fn unary_float(
    args: &mut KernelArgs<'_>,
    x: usize,
    out: usize,
    f: fn(f64) -> f64,
    f32_fast: Option<fn(f32) -> f32>,
) -> Result<()> {
    let shape = args.meta(x)?.dims();
    args.resize(out, &shape)?;
    let (xm, om) = (args.meta(x)?, args.meta(out)?);
    for (arg, t) in [(x, xm.dtype), (out, om.dtype)] {
        if !t.is_numeric() {
            return Err(Error::Dtype {
                arg,
                expected: "a numeric dtype".into(),
                found: t,
            });
        }
    }
    if let (Some(g), ScalarType::Float, ScalarType::Float) = (f32_fast, xm.dtype, om.dtype) {
        if same_layout(&shape, &[xm, om]) {
            let xv = args.tensor(x)?;
            let xs = xv.data::<f32>()?;
            let mut ov = args.out(out)?;
            for (o, v) in ov.data::<f32>()?.iter_mut().zip(xs) {
                *o = g(*v);
            }
            return Ok(());
        }
    }
    let (xs, os) = (xm.stride_dims(), om.stride_dims());
    let od = om.dtype;
    let xv = args.tensor(x)?;
    let ov = args.out(out)?;
    let ob = &mut *ov.bytes;
    for_each_offset(&shape, [&os, &xs], |[oo, xo]| {
        store_f64(ob, od, oo, f(load_f64(xv.bytes, xv.dtype(), xo)));
    });
    Ok(())
}

/// Broadcasting f32 path: walks innermost rows so the common cases (both operands
/// contiguous along the row, or one of them constant along it, as with a bias) run as
/// tight loops over slices.
fn binary_rows_f32(
    args: &KernelArgs<'_>,
    a: Operand,
    b: Operand,
    out: usize,
    shape: &[usize],
    strides: [&[usize]; 3],
    (f, simd): (fn(f32, f32) -> f32, Option<ptero_simd::ops::Binary>),
) -> Result<()> {
    let scalar_buf = |o: Operand| -> [f32; 1] {
        match o {
            Operand::Scalar(s) => [s.to_f64() as f32],
            Operand::Tensor(_) => [0.0],
        }
    };
    let (abuf, bbuf) = (scalar_buf(a), scalar_buf(b));
    let at;
    let bt;
    let x: &[f32] = match a {
        Operand::Tensor(i) => {
            at = args.tensor(i)?;
            at.data::<f32>()?
        }
        Operand::Scalar(_) => &abuf,
    };
    let y: &[f32] = match b {
        Operand::Tensor(i) => {
            bt = args.tensor(i)?;
            bt.data::<f32>()?
        }
        Operand::Scalar(_) => &bbuf,
    };
    let par = args.parallel();
    let ov = args.out(out)?;
    let o = ov.into_data::<f32>()?;
    let ok = core::sync::atomic::AtomicBool::new(true);
    let fail = || ok.store(false, core::sync::atomic::Ordering::Relaxed);
    let numel: usize = shape.iter().product();
    let [ost, ast, bst] = strides;
    // A contiguous output splits over threads along its outermost non-unit dim.
    let d0 = shape.iter().position(|&s| s > 1);
    let contiguous = ost == super::contiguous_strides(shape).as_slice();
    match d0 {
        Some(d0) if contiguous && numel == o.len() && numel >= ptero_simd::PAR_MIN_ELEMS => {
            let step = ost[d0];
            let rank = shape.len();
            ptero_simd::for_each_chunk_by(par, o, step, &|r, o| {
                let i0 = r.start / step;
                let mut dims = [0usize; ptero_core::MAX_DIMS];
                dims[..rank].copy_from_slice(shape);
                dims[d0] = r.len() / step;
                let sub = &dims[..rank];
                let (a0, b0) = (i0 * ast[d0], i0 * bst[d0]);
                super::for_each_row(sub, strides, |[oo, ao, bo], n, st| {
                    if !row_f32(o, x, y, [oo, ao + a0, bo + b0], n, st, (f, simd)) {
                        fail();
                    }
                });
            });
        }
        _ => super::for_each_row(shape, strides, |offs, n, st| {
            if !row_f32(o, x, y, offs, n, st, (f, simd)) {
                fail();
            }
        }),
    }
    if ok.into_inner() {
        Ok(())
    } else {
        Err(Error::OutOfBounds(
            "elementwise operand smaller than its shape".into(),
        ))
    }
}

/// One row of [`binary_rows_f32`]; false when an operand is too short for it.
#[allow(clippy::type_complexity)]
fn row_f32(
    o: &mut [f32],
    x: &[f32],
    y: &[f32],
    [oo, ao, bo]: [usize; 3],
    n: usize,
    [so, sa, sb]: [usize; 3],
    (f, simd): (fn(f32, f32) -> f32, Option<ptero_simd::ops::Binary>),
) -> bool {
    use ptero_simd::ops::{binary as vbin, Lhs, Rhs};
    let span = |start: usize, stride: usize| start.checked_add(n.saturating_sub(1) * stride + 1);
    let (Some(oe), Some(ae), Some(be)) = (span(oo, so), span(ao, sa), span(bo, sb)) else {
        return false;
    };
    if oe > o.len() || ae > x.len() || be > y.len() {
        return false;
    }
    match (so, sa, sb, simd) {
        (1, 1, 1, Some(op)) => vbin(
            op,
            Lhs::Slice(&x[ao..ae]),
            Rhs::Slice(&y[bo..be]),
            1.0,
            &mut o[oo..oe],
        ),
        (1, 1, 0, Some(op)) => vbin(
            op,
            Lhs::Slice(&x[ao..ae]),
            Rhs::Scalar(y[bo]),
            1.0,
            &mut o[oo..oe],
        ),
        (1, 0, 1, Some(op)) => vbin(
            op,
            Lhs::Scalar(x[ao]),
            Rhs::Slice(&y[bo..be]),
            1.0,
            &mut o[oo..oe],
        ),
        (1, 1, 1, None) => {
            for ((d, p), q) in o[oo..oe].iter_mut().zip(&x[ao..ae]).zip(&y[bo..be]) {
                *d = f(*p, *q);
            }
        }
        (1, 1, 0, None) => {
            let q = y[bo];
            for (d, p) in o[oo..oe].iter_mut().zip(&x[ao..ae]) {
                *d = f(*p, q);
            }
        }
        (1, 0, 1, None) => {
            let p = x[ao];
            for (d, q) in o[oo..oe].iter_mut().zip(&y[bo..be]) {
                *d = f(p, *q);
            }
        }
        _ => {
            for i in 0..n {
                o[oo + i * so] = f(x[ao + i * sa], y[bo + i * sb]);
            }
        }
    }
    true
}
