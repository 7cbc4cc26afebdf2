//! Selection by a mask: `where(condition, self, other)` and `masked_fill(self, mask, value)`,
//! broadcasting every operand.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result, ScalarType};

use crate::util::elementwise::{result_type, Operand};
use crate::util::unary::{check_can_cast, round_to, store_scalar};
use crate::util::{
    broadcast_shapes, broadcast_strides, for_each_offset, load_bool, load_f64, load_i64,
    same_layout, store_bool, store_f64, store_i64, ComputeKind,
};

/// Copies element `src_i` of `src` to element `dst_i` of `dst` (both of `es` bytes).
#[inline]
fn copy_elem(dst: &mut [u8], dst_i: usize, src: &[u8], src_i: usize, es: usize) {
    let (d, s) = (dst_i * es, src_i * es);
    if let (Some(d), Some(s)) = (dst.get_mut(d..d + es), src.get(s..s + es)) {
        d.copy_from_slice(s);
    }
}

/// One operand along a row: its elements (unit stride) or one value (stride 0).
#[derive(Clone, Copy)]
enum Src<'a, T> {
    Row(&'a [T]),
    Splat(T),
}

impl<'a, T: Copy> Src<'a, T> {
    /// The `n` elements from `off`, `stride` (0 or 1) apart; `None` past the slice.
    fn of(s: &'a [T], off: usize, stride: usize, n: usize) -> Option<Self> {
        if stride == 0 {
            s.get(off).map(|v| Src::Splat(*v))
        } else {
            s.get(off..off.checked_add(n)?).map(Src::Row)
        }
    }
}

/// `o[i] = c[i] != 0 ? x[i] : y[i]`, each operand a row or one value: monomorphised per
/// combination so the loop is a vector blend.
fn select_row(o: &mut [f32], c: Src<'_, u8>, x: Src<'_, f32>, y: Src<'_, f32>) {
    #[inline(always)]
    fn run(
        o: &mut [f32],
        c: impl Fn(usize) -> u8,
        x: impl Fn(usize) -> f32,
        y: impl Fn(usize) -> f32,
    ) {
        for (i, d) in o.iter_mut().enumerate() {
            *d = if c(i) != 0 { x(i) } else { y(i) };
        }
    }
    let n = o.len();
    match (c, x, y) {
        (Src::Row(c), Src::Row(x), Src::Row(y)) => {
            let (c, x, y) = (&c[..n], &x[..n], &y[..n]);
            run(o, |i| c[i], |i| x[i], |i| y[i])
        }
        (Src::Row(c), Src::Row(x), Src::Splat(y)) => {
            let (c, x) = (&c[..n], &x[..n]);
            run(o, |i| c[i], |i| x[i], |_| y)
        }
        (Src::Row(c), Src::Splat(x), Src::Row(y)) => {
            let (c, y) = (&c[..n], &y[..n]);
            run(o, |i| c[i], |_| x, |i| y[i])
        }
        (Src::Row(c), Src::Splat(x), Src::Splat(y)) => {
            let c = &c[..n];
            run(o, |i| c[i], |_| x, |_| y)
        }
        (Src::Splat(c), x, y) => {
            let pick = if c != 0 { x } else { y };
            match pick {
                Src::Row(v) => o.copy_from_slice(&v[..n]),
                Src::Splat(v) => o.fill(v),
            }
        }
    }
}

fn where_self_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let cd = a.meta(0)?.dtype;
    if !matches!(cd, ScalarType::Bool | ScalarType::Byte) {
        return Err(Error::Dtype {
            arg: 0,
            expected: "bool (condition)".into(),
            found: cd,
        });
    }
    let c = result_type(a, Operand::Tensor(1), Operand::Tensor(2))?;
    let shape = broadcast_shapes(a.meta(0)?.sizes(), a.meta(1)?.sizes())?;
    let shape = broadcast_shapes(&shape, a.meta(2)?.sizes())?;
    a.resize(3, &shape)?;
    let (xd, yd, od) = (a.meta(1)?.dtype, a.meta(2)?.dtype, a.meta(3)?.dtype);
    check_can_cast(3, c, od)?;
    let kind = ComputeKind::of(c)?;
    if shape.contains(&0) {
        return Ok(());
    }

    if xd == ScalarType::Float
        && yd == ScalarType::Float
        && od == ScalarType::Float
        && same_layout(&shape, &[a.meta(0)?, a.meta(1)?, a.meta(2)?, a.meta(3)?])
    {
        let (cv, xv, yv) = (a.tensor(0)?, a.tensor(1)?, a.tensor(2)?);
        let (x, y) = (xv.data::<f32>()?, yv.data::<f32>()?);
        let mut ov = a.out(3)?;
        let o = ov.data::<f32>()?;
        let n = o.len();
        match (cv.bytes.get(..n), x.get(..n), y.get(..n)) {
            (Some(c), Some(x), Some(y)) => select_row(o, Src::Row(c), Src::Row(x), Src::Row(y)),
            _ => return Err(Error::OutOfBounds("where: view exceeds its tensor".into())),
        }
        return Ok(());
    }

    let cs = broadcast_strides(a.meta(0)?, &shape)?;
    let xs = broadcast_strides(a.meta(1)?, &shape)?;
    let ys = broadcast_strides(a.meta(2)?, &shape)?;
    let os = a.meta(3)?.stride_dims();
    let (cv, xv, yv) = (a.tensor(0)?, a.tensor(1)?, a.tensor(2)?);
    let (cb, xb, yb) = (cv.bytes, xv.bytes, yv.bytes);
    let ov = a.out(3)?;
    let ob = &mut *ov.bytes;
    let cond = |o: usize| cb.get(o).is_some_and(|b| *b != 0);
    if xd == ScalarType::Float && yd == ScalarType::Float && od == ScalarType::Float {
        // Typed rows: broadcasting masks (attention) without a per-element byte copy.
        let (Ok(x), Ok(y)) = (xv.data::<f32>(), yv.data::<f32>()) else {
            return Err(Error::OutOfBounds("where: misaligned operand".into()));
        };
        let o: &mut [f32] = bytemuck::try_cast_slice_mut(ob)
            .map_err(|_| Error::OutOfBounds("where: misaligned output".into()))?;
        let mut ok = true;
        crate::util::for_each_row(
            &shape,
            [&os, &cs, &xs, &ys],
            |[oo, co, xo, yo], n, [so, sc, sx, sy]| {
                if so == 1 && sc <= 1 && sx <= 1 && sy <= 1 {
                    if let Some(o) = o.get_mut(oo..oo + n) {
                        let c = Src::of(cb, co, sc, n);
                        let xs = Src::of(x, xo, sx, n);
                        let ys = Src::of(y, yo, sy, n);
                        match (c, xs, ys) {
                            (Some(c), Some(xs), Some(ys)) => {
                                select_row(o, c, xs, ys);
                                return;
                            }
                            _ => ok = false,
                        }
                        return;
                    }
                }
                for k in 0..n {
                    let pick = cb.get(co + k * sc).is_some_and(|b| *b != 0);
                    let v = if pick {
                        x.get(xo + k * sx)
                    } else {
                        y.get(yo + k * sy)
                    };
                    match (v, o.get_mut(oo + k * so)) {
                        (Some(v), Some(d)) => *d = *v,
                        _ => ok = false,
                    }
                }
            },
        );
        if !ok {
            return Err(Error::OutOfBounds("where: view exceeds its tensor".into()));
        }
        return Ok(());
    }
    if xd == od && yd == od {
        // No conversion: move the element bytes.
        let es = od.size();
        for_each_offset(&shape, [&os, &cs, &xs, &ys], |[oo, co, xo, yo]| {
            if cond(co) {
                copy_elem(ob, oo, xb, xo, es);
            } else {
                copy_elem(ob, oo, yb, yo, es);
            }
        });
        return Ok(());
    }
    for_each_offset(&shape, [&os, &cs, &xs, &ys], |[oo, co, xo, yo]| {
        let (b, t, off) = if cond(co) { (xb, xd, xo) } else { (yb, yd, yo) };
        match kind {
            ComputeKind::Float => store_f64(ob, od, oo, round_to(c, load_f64(b, t, off))),
            ComputeKind::Int => store_i64(ob, od, oo, load_i64(b, t, off)),
            ComputeKind::Bool => store_bool(ob, od, oo, load_bool(b, t, off)),
        }
    });
    Ok(())
}

fn masked_fill_scalar_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let md = a.meta(1)?.dtype;
    if md != ScalarType::Bool {
        return Err(Error::Dtype {
            arg: 1,
            expected: "bool (mask)".into(),
            found: md,
        });
    }
    let xd = a.meta(0)?.dtype;
    if !xd.is_numeric() {
        // The fill value has no representation in an opaque dtype (float8, bits16...).
        return Err(Error::Dtype {
            arg: 0,
            expected: "a numeric dtype".into(),
            found: xd,
        });
    }
    let value = a.scalar(2)?;
    let shape = broadcast_shapes(a.meta(0)?.sizes(), a.meta(1)?.sizes())?;
    a.resize(3, &shape)?;
    let od = a.meta(3)?.dtype;
    if od != xd {
        return Err(Error::Dtype {
            arg: 3,
            expected: alloc::format!("{xd} (the dtype of self)"),
            found: od,
        });
    }
    if shape.contains(&0) {
        return Ok(());
    }
    let es = od.size();
    let mut fill = [0u8; 8];
    store_scalar(&mut fill, od, 0, value);
    let xs = broadcast_strides(a.meta(0)?, &shape)?;
    let ms = broadcast_strides(a.meta(1)?, &shape)?;
    let os = a.meta(3)?.stride_dims();
    let (xv, mv) = (a.tensor(0)?, a.tensor(1)?);
    let (xb, mb) = (xv.bytes, mv.bytes);
    let ov = a.out(3)?;
    let ob = &mut *ov.bytes;
    for_each_offset(&shape, [&os, &xs, &ms], |[oo, xo, mo]| {
        if mb.get(mo).is_some_and(|b| *b != 0) {
            copy_elem(ob, oo, &fill, 0, es);
        } else {
            copy_elem(ob, oo, xb, xo, es);
        }
    });
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::where.self_out", where_self_out);
    reg.register("aten::masked_fill.Scalar_out", masked_fill_scalar_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    fn t(dt: ScalarType, s: &[usize], v: &[f64]) -> Arg {
        Arg::T(OwnedTensor::from_f64(dt, s, v))
    }
    fn b(s: &[usize], v: &[bool]) -> Arg {
        Arg::T(OwnedTensor::bools(s, v))
    }

    #[test]
    fn table() {
        type Case = (&'static str, Vec<Arg>, Vec<usize>, ScalarType, Vec<f64>);
        let cases: Vec<Case> = vec![
            (
                "aten::where.self_out",
                vec![
                    b(&[3], &[true, false, true]),
                    t(Float, &[3], &[1., 2., 3.]),
                    t(Float, &[3], &[-1., -2., -3.]),
                    Arg::Out(Float, vec![3]),
                ],
                vec![3],
                Float,
                vec![1., -2., 3.],
            ),
            // Three-way broadcast.
            (
                "aten::where.self_out",
                vec![
                    b(&[2, 1], &[true, false]),
                    t(Float, &[3], &[1., 2., 3.]),
                    t(Float, &[], &[0.]),
                    Arg::Out(Float, vec![2, 3]),
                ],
                vec![2, 3],
                Float,
                vec![1., 2., 3., 0., 0., 0.],
            ),
            // Mixed dtypes promote: int32 and float64 give float64.
            (
                "aten::where.self_out",
                vec![
                    b(&[2], &[true, false]),
                    t(Int, &[2], &[7., 8.]),
                    t(Double, &[2], &[0.5, 1.5]),
                    Arg::Out(Double, vec![2]),
                ],
                vec![2],
                Double,
                vec![7., 1.5],
            ),
            (
                "aten::where.self_out",
                vec![
                    t(Byte, &[2], &[0., 3.]),
                    t(Long, &[2], &[7., 8.]),
                    t(Long, &[2], &[1., 2.]),
                    Arg::Out(Long, vec![2]),
                ],
                vec![2],
                Long,
                vec![1., 8.],
            ),
            (
                "aten::where.self_out",
                vec![
                    b(&[], &[false]),
                    t(Half, &[], &[1.]),
                    t(Half, &[], &[2.]),
                    Arg::Out(Half, vec![]),
                ],
                vec![],
                Half,
                vec![2.],
            ),
            (
                "aten::where.self_out",
                vec![
                    b(&[0], &[]),
                    t(Float, &[1], &[1.]),
                    t(Float, &[1], &[2.]),
                    Arg::Out(Float, vec![0]),
                ],
                vec![0],
                Float,
                vec![],
            ),
            (
                "aten::masked_fill.Scalar_out",
                vec![
                    t(Float, &[2, 2], &[1., 2., 3., 4.]),
                    b(&[2], &[false, true]),
                    Arg::Double(-1.5),
                    Arg::Out(Float, vec![2, 2]),
                ],
                vec![2, 2],
                Float,
                vec![1., -1.5, 3., -1.5],
            ),
            (
                "aten::masked_fill.Scalar_out",
                vec![
                    t(Long, &[3], &[1., 2., 3.]),
                    b(&[3], &[true, false, true]),
                    Arg::Int(-9),
                    Arg::Out(Long, vec![3]),
                ],
                vec![3],
                Long,
                vec![-9., 2., -9.],
            ),
            (
                "aten::masked_fill.Scalar_out",
                vec![
                    t(Bool, &[2], &[0., 0.]),
                    b(&[2], &[true, false]),
                    Arg::Bool(true),
                    Arg::Out(Bool, vec![2]),
                ],
                vec![2],
                Bool,
                vec![1., 0.],
            ),
            // A mask of higher rank broadcasts self.
            (
                "aten::masked_fill.Scalar_out",
                vec![
                    t(Float, &[2], &[1., 2.]),
                    b(&[2, 1], &[true, false]),
                    Arg::Int(0),
                    Arg::Out(Float, vec![2, 2]),
                ],
                vec![2, 2],
                Float,
                vec![0., 0., 1., 2.],
            ),
        ];
        for (op, args, shape, dt, want) in cases {
            let out = run_op(op, args).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(out.tensors[0].sizes, shape, "{op}");
            assert_eq!(out.tensors[0].dtype, dt, "{op}");
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
    }

    #[test]
    fn channels_last() {
        let vals: Vec<f64> = (0..12).map(|x| x as f64).collect();
        let x = OwnedTensor::from_f64(Float, &[1, 3, 2, 2], &vals);
        let mask: Vec<bool> = (0..12).map(|i| i % 3 == 0).collect();
        let m = OwnedTensor::bools(&[1, 3, 2, 2], &mask);
        let want: Vec<f64> = vals
            .iter()
            .zip(&mask)
            .map(|(v, m)| if *m { *v } else { -v })
            .collect();
        let neg: Vec<f64> = vals.iter().map(|v| -v).collect();
        let y = OwnedTensor::from_f64(Float, &[1, 3, 2, 2], &neg);
        for order in [[0u8, 1, 2, 3], [0, 2, 3, 1]] {
            let out = run_op(
                "aten::where.self_out",
                vec![
                    Arg::T(m.with_dim_order(&order)),
                    Arg::T(x.with_dim_order(&order)),
                    Arg::T(y.clone()),
                    Arg::Out(Float, vec![1, 3, 2, 2]),
                ],
            )
            .unwrap();
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
            let out = run_op(
                "aten::masked_fill.Scalar_out",
                vec![
                    Arg::T(x.with_dim_order(&order)),
                    Arg::T(m.with_dim_order(&order)),
                    Arg::Int(100),
                    Arg::Out(Float, vec![1, 3, 2, 2]),
                ],
            )
            .unwrap();
            let want: Vec<f64> = vals
                .iter()
                .zip(&mask)
                .map(|(v, m)| if *m { 100.0 } else { *v })
                .collect();
            assert_close(&out.tensors[0].to_f64(), &want, 0.0, 0.0);
        }
    }

    #[test]
    fn errors() {
        let f = || t(Float, &[2], &[1., 2.]);
        let cases: Vec<(&str, Vec<Arg>)> = vec![
            (
                "aten::where.self_out",
                vec![f(), f(), f(), Arg::Out(Float, vec![2])],
            ),
            (
                "aten::where.self_out",
                vec![
                    b(&[3], &[true, true, false]),
                    f(),
                    f(),
                    Arg::Out(Float, vec![2]),
                ],
            ),
            (
                "aten::where.self_out",
                vec![b(&[2], &[true, false]), f(), f(), Arg::Out(Long, vec![2])],
            ),
            (
                "aten::masked_fill.Scalar_out",
                vec![f(), f(), Arg::Int(0), Arg::Out(Float, vec![2])],
            ),
            (
                "aten::masked_fill.Scalar_out",
                vec![
                    f(),
                    b(&[2], &[true, false]),
                    Arg::Int(0),
                    Arg::Out(Double, vec![2]),
                ],
            ),
        ];
        for (op, args) in cases {
            assert!(run_op(op, args).is_err(), "{op} should fail");
        }
    }

    #[test]
    fn opaque_dtypes() {
        let f8 = |v: &[u8]| OwnedTensor {
            dtype: Float8E5M2,
            sizes: vec![v.len()],
            dim_order: vec![0],
            bytes: v.to_vec(),
        };
        // masked_fill cannot store its value in float8: a dtype error, not zeros.
        assert!(run_op(
            "aten::masked_fill.Scalar_out",
            vec![
                Arg::T(f8(&[1, 2])),
                b(&[2], &[true, false]),
                Arg::Double(1.0),
                Arg::Out(Float8E5M2, vec![2]),
            ]
        )
        .is_err());
        // where has no arithmetic for float8 either.
        assert!(run_op(
            "aten::where.self_out",
            vec![
                b(&[2], &[true, false]),
                Arg::T(f8(&[1, 2])),
                Arg::T(f8(&[3, 4])),
                Arg::Out(Float8E5M2, vec![2]),
            ]
        )
        .is_err());
    }
}
