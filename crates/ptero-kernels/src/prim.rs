//! Symbolic-size and scalar ops emitted for dynamic shapes (`aten::sym_size.int`,
//! `executorch_prim::*`), and the view/copy helpers of the memory planner
//! (`et_view`, `et_copy_index`). These work on `Int`/`Double`/`Bool` values, not tensors.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, Scalar};

fn num(a: &KernelArgs<'_>, i: usize) -> Result<Scalar> {
    a.scalar(i)
}

fn set_scalar(a: &mut KernelArgs<'_>, i: usize, s: Scalar) -> Result<()> {
    match s {
        Scalar::Int(v) => a.set_int(i, v),
        Scalar::Double(v) => a.set_double(i, v),
        Scalar::Bool(v) => a.set_bool(i, v),
    }
}

/// Applies an int form when both operands are ints (bools count as ints), else a double form.
fn arith(
    a: &mut KernelArgs<'_>,
    fi: fn(i64, i64) -> Result<i64>,
    fd: fn(f64, f64) -> f64,
) -> Result<()> {
    a.expect_len(3)?;
    let (x, y) = (num(a, 0)?, num(a, 1)?);
    let r = match (x, y) {
        (Scalar::Double(_), _) | (_, Scalar::Double(_)) => {
            Scalar::Double(fd(x.to_f64(), y.to_f64()))
        }
        _ => Scalar::Int(fi(x.to_i64(), y.to_i64())?),
    };
    set_scalar(a, 2, r)
}

fn compare(
    a: &mut KernelArgs<'_>,
    f: fn(f64, f64) -> bool,
    fi: fn(i64, i64) -> bool,
) -> Result<()> {
    a.expect_len(3)?;
    let (x, y) = (num(a, 0)?, num(a, 1)?);
    let r = match (x, y) {
        (Scalar::Double(_), _) | (_, Scalar::Double(_)) => f(x.to_f64(), y.to_f64()),
        _ => fi(x.to_i64(), y.to_i64()),
    };
    a.set_bool(2, r)
}

fn floordiv_i(x: i64, y: i64) -> Result<i64> {
    if y == 0 {
        return Err(Error::invalid(
            "integer division by zero in a size expression",
        ));
    }
    // Wrapping: floordiv(i64::MIN, -1) is i64::MIN, as in PyTorch (`%` would panic).
    let q = x.wrapping_div(y);
    Ok(if x.wrapping_rem(y) != 0 && ((x < 0) != (y < 0)) {
        q - 1
    } else {
        q
    })
}

fn floordiv_f(x: f64, y: f64) -> f64 {
    if y == 0.0 {
        return if x.is_sign_negative() {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    let m = libm::fmod(x, y);
    let div = (x - m) / y;
    if m != 0.0 && (y < 0.0) != (m < 0.0) {
        div - 1.0
    } else {
        div
    }
}

fn mod_i(x: i64, y: i64) -> Result<i64> {
    if y == 0 {
        return Err(Error::invalid(
            "integer modulo by zero in a size expression",
        ));
    }
    let m = x.wrapping_rem(y);
    Ok(if m != 0 && ((y < 0) != (m < 0)) {
        m + y
    } else {
        m
    })
}

fn mod_f(x: f64, y: f64) -> f64 {
    let m = libm::fmod(x, y);
    if m != 0.0 && ((y < 0.0) != (m < 0.0)) {
        m + y
    } else {
        m
    }
}

fn add(a: &mut KernelArgs<'_>) -> Result<()> {
    arith(a, |x, y| Ok(x.wrapping_add(y)), |x, y| x + y)
}
fn sub(a: &mut KernelArgs<'_>) -> Result<()> {
    arith(a, |x, y| Ok(x.wrapping_sub(y)), |x, y| x - y)
}
fn mul(a: &mut KernelArgs<'_>) -> Result<()> {
    arith(a, |x, y| Ok(x.wrapping_mul(y)), |x, y| x * y)
}
fn floordiv(a: &mut KernelArgs<'_>) -> Result<()> {
    arith(a, floordiv_i, floordiv_f)
}
fn modulo(a: &mut KernelArgs<'_>) -> Result<()> {
    arith(a, mod_i, mod_f)
}
fn truediv(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let (x, y) = (num(a, 0)?.to_f64(), num(a, 1)?.to_f64());
    a.set_double(2, x / y)
}
fn sym_max(a: &mut KernelArgs<'_>) -> Result<()> {
    arith(a, |x, y| Ok(x.max(y)), f64::max)
}
fn sym_min(a: &mut KernelArgs<'_>) -> Result<()> {
    arith(a, |x, y| Ok(x.min(y)), f64::min)
}
fn eq(a: &mut KernelArgs<'_>) -> Result<()> {
    compare(a, |x, y| x == y, |x, y| x == y)
}
fn ne(a: &mut KernelArgs<'_>) -> Result<()> {
    compare(a, |x, y| x != y, |x, y| x != y)
}
fn gt(a: &mut KernelArgs<'_>) -> Result<()> {
    compare(a, |x, y| x > y, |x, y| x > y)
}
fn lt(a: &mut KernelArgs<'_>) -> Result<()> {
    compare(a, |x, y| x < y, |x, y| x < y)
}
fn ge(a: &mut KernelArgs<'_>) -> Result<()> {
    compare(a, |x, y| x >= y, |x, y| x >= y)
}
fn le(a: &mut KernelArgs<'_>) -> Result<()> {
    compare(a, |x, y| x <= y, |x, y| x <= y)
}

/// One-operand scalar ops: `[x, out]`.
fn unary(a: &mut KernelArgs<'_>, fi: fn(i64) -> Scalar, fd: fn(f64) -> Scalar) -> Result<()> {
    a.expect_len(2)?;
    let r = match num(a, 0)? {
        Scalar::Double(d) => fd(d),
        s => fi(s.to_i64()),
    };
    set_scalar(a, 1, r)
}
fn neg(a: &mut KernelArgs<'_>) -> Result<()> {
    unary(a, |x| Scalar::Int(x.wrapping_neg()), |x| Scalar::Double(-x))
}
fn ceil(a: &mut KernelArgs<'_>) -> Result<()> {
    unary(a, Scalar::Int, |x| Scalar::Int(libm::ceil(x) as i64))
}
fn floor(a: &mut KernelArgs<'_>) -> Result<()> {
    unary(a, Scalar::Int, |x| Scalar::Int(libm::floor(x) as i64))
}
fn round(a: &mut KernelArgs<'_>) -> Result<()> {
    // Python's round(): half to even.
    unary(a, Scalar::Int, |x| Scalar::Int(libm::rint(x) as i64))
}
fn trunc(a: &mut KernelArgs<'_>) -> Result<()> {
    unary(a, Scalar::Int, |x| Scalar::Int(libm::trunc(x) as i64))
}
fn sym_float(a: &mut KernelArgs<'_>) -> Result<()> {
    unary(a, |x| Scalar::Double(x as f64), Scalar::Double)
}

fn sym_size(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let size = a.meta(0)?.size(a.int(1)?)?;
    a.set_int(2, size_int(size)?)
}

fn sym_numel(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let n = a.meta(0)?.numel();
    a.set_int(1, size_int(n)?)
}

fn sym_stride(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let m = a.meta(0)?;
    let d = ptero_core::normalize_dim(a.int(1)?, m.dim())?;
    // A 0-d tensor accepts dims 0 and -1 when wrapping, but has no stride to return.
    let s = m.strides().get(d).copied().ok_or_else(|| {
        Error::invalid(alloc::format!(
            "sym_stride: dimension {d} is out of range for a 0-d tensor"
        ))
    })?;
    a.set_int(2, size_int(s)?)
}

/// A size or stride as a program `Int`.
fn size_int(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(alloc::format!("size {v} exceeds the Int range")))
}

fn local_scalar_dense(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(2)?;
    let t = a.tensor(0)?;
    if t.numel() == 0 {
        return Err(Error::invalid("_local_scalar_dense of an empty tensor"));
    }
    let d = t.dtype();
    let s = if d == ptero_core::ScalarType::Bool {
        Scalar::Bool(crate::util::load_bool(t.bytes, d, 0))
    } else if d.is_float() {
        Scalar::Double(crate::util::load_f64(t.bytes, d, 0))
    } else if d.is_integral() {
        Scalar::Int(crate::util::load_i64(t.bytes, d, 0))
    } else {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a numeric dtype".into(),
            found: d,
        });
    };
    set_scalar(a, 1, s)
}

/// `et_view(self, size) -> out`: `out` becomes a view of `self`'s storage, no copy.
fn et_view(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let src = *a.meta(0)?;
    let list = a.int_list(1)?;
    let mut shape = ptero_core::Dims::new();
    let mut infer = None;
    let mut known = 1usize;
    for k in 0..list.len() {
        let v = list.get(k)?;
        if v == -1 && infer.is_none() {
            infer = Some(k);
            if !shape.push(1) {
                return Err(Error::invalid("et_view: too many dimensions"));
            }
        } else if v < 0 {
            return Err(Error::invalid(alloc::format!("et_view: invalid size {v}")));
        } else {
            known = known
                .checked_mul(v as usize)
                .ok_or_else(|| Error::invalid("et_view: size overflow"))?;
            if !shape.push(v as usize) {
                return Err(Error::invalid("et_view: too many dimensions"));
            }
        }
    }
    if let Some(k) = infer {
        if known == 0 || src.numel() % known != 0 {
            return Err(Error::shape(alloc::format!(
                "et_view: cannot view {} elements as {:?}",
                src.numel(),
                shape
            )));
        }
        shape[k] = src.numel() / known;
    }
    if shape.numel() != Some(src.numel()) {
        return Err(Error::shape(alloc::format!(
            "et_view: shape {shape} has a different number of elements than the input {:?}",
            src.sizes()
        )));
    }
    if !src.is_contiguous() {
        return Err(Error::invalid("et_view of a non-contiguous dim order"));
    }
    if a.meta(2)?.dtype != src.dtype {
        return Err(Error::Dtype {
            arg: 2,
            expected: src.dtype.name().into(),
            found: a.meta(2)?.dtype,
        });
    }
    a.alias(2, 0)?;
    a.resize(2, &shape)
}

/// `et_copy_index(copy_to, copy_from, index)`: writes `copy_from` as row `index` of
/// `copy_to`, growing `copy_to`'s first dimension to `index + 1` (loop outputs).
fn et_copy_index(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let index = a.int(2)?;
    let from = *a.meta(1)?;
    let to = *a.meta(0)?;
    if index < 0 {
        return Err(Error::invalid(alloc::format!(
            "et_copy_index: negative index {index}"
        )));
    }
    if from.dtype != to.dtype {
        return Err(Error::Dtype {
            arg: 1,
            expected: to.dtype.name().into(),
            found: from.dtype,
        });
    }
    if to.dim() != from.dim() + 1 || to.sizes()[1..] != *from.sizes() {
        return Err(Error::shape(alloc::format!(
            "et_copy_index: cannot copy a {:?} tensor into a row of {:?}",
            from.sizes(),
            to.sizes()
        )));
    }
    let mut shape = to.dims();
    let rows = (index as usize)
        .checked_add(1)
        .ok_or_else(|| Error::invalid("index overflow"))?;
    if shape[0] < rows {
        shape[0] = rows;
        a.resize(0, &shape)?;
    }
    let row = from.nbytes();
    let src = a.tensor(1)?;
    let dst = a.out(0)?;
    let start = (index as usize)
        .checked_mul(row)
        .ok_or_else(|| Error::invalid("index overflow"))?;
    let end = start
        .checked_add(row)
        .ok_or_else(|| Error::invalid("index overflow"))?;
    let d = dst
        .bytes
        .get_mut(start..end)
        .ok_or_else(|| Error::invalid("et_copy_index: index out of range"))?;
    d.copy_from_slice(src.bytes);
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::sym_size.int", sym_size);
    reg.register("aten::sym_numel", sym_numel);
    reg.register("aten::sym_stride.int", sym_stride);
    reg.register("aten::_local_scalar_dense", local_scalar_dense);
    for (name, f) in [
        ("add.Scalar", add as ptero_core::KernelFn),
        ("sub.Scalar", sub),
        ("mul.Scalar", mul),
        ("floordiv.Scalar", floordiv),
        ("floordiv.int", floordiv),
        ("truediv.Scalar", truediv),
        ("mod.Scalar", modulo),
        ("mod.int", modulo),
        ("eq.Scalar", eq),
        ("ne.Scalar", ne),
        ("gt.Scalar", gt),
        ("lt.Scalar", lt),
        ("ge.Scalar", ge),
        ("le.Scalar", le),
        ("neg.Scalar", neg),
        ("ceil.Scalar", ceil),
        ("floor.Scalar", floor),
        ("round.Scalar", round),
        ("trunc.Scalar", trunc),
        ("sym_float.Scalar", sym_float),
        ("sym_max.Scalar", sym_max),
        ("sym_min.Scalar", sym_min),
        ("et_view.default", et_view),
        ("et_copy_index.tensor", et_copy_index),
    ] {
        reg.register(&alloc::format!("executorch_prim::{name}"), f);
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_op, Arg, OwnedTensor};
    use alloc::vec;
    use ptero_core::{ScalarType, Value};

    #[test]
    fn scalar_ops() {
        let cases = [
            (
                "executorch_prim::add.Scalar",
                Arg::Int(2),
                Arg::Int(3),
                Value::Int(5),
            ),
            (
                "executorch_prim::floordiv.Scalar",
                Arg::Int(-7),
                Arg::Int(2),
                Value::Int(-4),
            ),
            (
                "executorch_prim::mod.Scalar",
                Arg::Int(-7),
                Arg::Int(3),
                Value::Int(2),
            ),
            (
                "executorch_prim::truediv.Scalar",
                Arg::Int(7),
                Arg::Int(2),
                Value::Double(3.5),
            ),
            (
                "executorch_prim::mul.Scalar",
                Arg::Int(2),
                Arg::Double(1.5),
                Value::Double(3.0),
            ),
            (
                "executorch_prim::lt.Scalar",
                Arg::Int(2),
                Arg::Int(3),
                Value::Bool(true),
            ),
        ];
        for (op, x, y, want) in cases {
            let out = run_op(op, vec![x, y, Arg::None]).unwrap();
            assert_eq!(out.values[2], want, "{op}");
        }
        assert!(run_op(
            "executorch_prim::floordiv.Scalar",
            vec![Arg::Int(1), Arg::Int(0), Arg::None]
        )
        .is_err());
    }

    #[test]
    fn hostile_scalars_and_shapes() {
        // PyTorch: floordiv(MIN, -1) wraps to MIN, mod(MIN, -1) is 0 (`%` used to panic).
        let min = i64::MIN;
        let cases = [
            ("executorch_prim::floordiv.Scalar", min, -1, min),
            ("executorch_prim::floordiv.int", min, -1, min),
            ("executorch_prim::mod.Scalar", min, -1, 0),
            ("executorch_prim::mod.int", min, -1, 0),
            ("executorch_prim::floordiv.int", min, 2, min / 2),
            ("executorch_prim::mod.int", min, 3, 1),
            ("executorch_prim::floordiv.int", -1, min, 0),
        ];
        for (op, x, y, want) in cases {
            let out = run_op(op, vec![Arg::Int(x), Arg::Int(y), Arg::None]).unwrap();
            assert_eq!(out.values[2], Value::Int(want), "{op}({x}, {y})");
        }
        // A 0-d tensor has no size or stride to return, whatever dim wraps to.
        let scalar = OwnedTensor::from_f64(ScalarType::Float, &[], &[1.0]);
        for op in ["aten::sym_size.int", "aten::sym_stride.int"] {
            for d in [0, -1, 1, i64::MIN] {
                assert!(
                    run_op(op, vec![Arg::T(scalar.clone()), Arg::Int(d), Arg::None]).is_err(),
                    "{op} dim {d}"
                );
            }
        }
        let out = run_op("aten::sym_numel", vec![Arg::T(scalar.clone()), Arg::None]).unwrap();
        assert_eq!(out.values[1], Value::Int(1));
        // More dims than a tensor can have, the inferred one last (it used to index past
        // the shape).
        let mut sizes = vec![1i64; ptero_core::MAX_DIMS];
        sizes.push(-1);
        assert!(run_op(
            "executorch_prim::et_view.default",
            vec![
                Arg::T(scalar.clone()),
                Arg::Ints(sizes),
                Arg::Out(ScalarType::Float, vec![])
            ]
        )
        .is_err());
        // An index whose byte offset overflows.
        let row = OwnedTensor::from_f64(ScalarType::Float, &[2], &[1., 2.]);
        for index in [i64::MAX, i64::MAX / 8, -1] {
            assert!(run_op(
                "executorch_prim::et_copy_index.tensor",
                vec![
                    Arg::Out(ScalarType::Float, vec![1, 2]),
                    Arg::T(row.clone()),
                    Arg::Int(index)
                ]
            )
            .is_err());
        }
    }

    #[test]
    fn sizes_and_views() {
        let t = OwnedTensor::from_f64(ScalarType::Float, &[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let out = run_op(
            "aten::sym_size.int",
            vec![Arg::T(t.clone()), Arg::Int(-1), Arg::None],
        )
        .unwrap();
        assert_eq!(out.values[2], Value::Int(3));
        assert!(run_op(
            "aten::sym_size.int",
            vec![Arg::T(t.clone()), Arg::Int(2), Arg::None]
        )
        .is_err());
        let out = run_op("aten::sym_numel", vec![Arg::T(t.clone()), Arg::None]).unwrap();
        assert_eq!(out.values[1], Value::Int(6));
        let out = run_op(
            "executorch_prim::et_view.default",
            vec![
                Arg::T(t.clone()),
                Arg::Ints(vec![3, -1]),
                Arg::Out(ScalarType::Float, vec![3, 2]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [3, 2]);
        assert_eq!(out.tensors[0].to_f64(), [1., 2., 3., 4., 5., 6.]);
        assert!(run_op(
            "executorch_prim::et_view.default",
            vec![
                Arg::T(t),
                Arg::Ints(vec![4, -1]),
                Arg::Out(ScalarType::Float, vec![3, 2])
            ]
        )
        .is_err());
    }
}
