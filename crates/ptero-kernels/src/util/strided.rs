use ptero_core::{Dims, Error, Result, TensorMeta};

/// PyTorch broadcasting of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Dims> {
    let n = a.len().max(b.len());
    let mut out = Dims::filled(n, 1).ok_or_else(|| Error::shape("too many dimensions"))?;
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(alloc::format!(
                "shapes {a:?} and {b:?} cannot be broadcast together"
            )));
        };
    }
    Ok(out)
}

/// Strides of `t` viewed with shape `out` (broadcast dims get stride 0).
pub fn broadcast_strides(t: &TensorMeta, out: &[usize]) -> Result<Dims> {
    let (sizes, strides) = (t.sizes(), t.strides());
    if sizes.len() > out.len() {
        return Err(Error::shape(alloc::format!(
            "cannot broadcast shape {sizes:?} to {out:?}"
        )));
    }
    let lead = out.len() - sizes.len();
    let mut st = Dims::filled(out.len(), 0).ok_or_else(|| Error::shape("too many dimensions"))?;
    for (i, (&s, &stride)) in sizes.iter().zip(strides).enumerate() {
        let o = out[lead + i];
        st[lead + i] = if s == o {
            stride
        } else if s == 1 {
            0
        } else {
            return Err(Error::shape(alloc::format!(
                "cannot broadcast shape {sizes:?} to {out:?}"
            )));
        };
    }
    Ok(st)
}

/// Row-major strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Dims {
    let mut st = Dims::filled(shape.len(), 1).unwrap_or_default();
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        st[i] = acc;
        acc = acc.saturating_mul(shape[i]);
    }
    st
}

/// True when all tensors have the given shape and the same dim order, so their storage
/// can be walked as flat arrays in step.
pub fn same_layout(shape: &[usize], metas: &[&TensorMeta]) -> bool {
    let Some(first) = metas.first() else {
        return true;
    };
    metas
        .iter()
        .all(|m| m.sizes() == shape && m.dim_order() == first.dim_order())
}

/// Calls `f` with the storage offsets of `N` operands for every index of `shape`, in
/// row-major logical order. `strides[k]` are operand k's element strides over `shape`.
pub fn for_each_offset<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
    mut f: impl FnMut([usize; N]),
) {
    if shape.contains(&0) {
        return;
    }
    let rank = shape.len();
    if rank == 0 {
        f([0; N]);
        return;
    }
    let inner = shape[rank - 1];
    let inner_st: [usize; N] = core::array::from_fn(|k| strides[k][rank - 1]);
    let mut idx = [0usize; ptero_core::MAX_DIMS];
    let mut base = [0usize; N];
    // Offsets step with wrapping arithmetic: a size-1 dim may carry a huge (saturated)
    // stride that is added after its only position and taken back at once; it never
    // addresses memory, and must not trip overflow checks.
    loop {
        let mut off = base;
        for _ in 0..inner {
            f(off);
            for k in 0..N {
                off[k] = off[k].wrapping_add(inner_st[k]);
            }
        }
        // Advance the outer index (all dims but the last), updating base offsets.
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            for k in 0..N {
                base[k] = base[k].wrapping_add(strides[k][d]);
            }
            if idx[d] < shape[d] {
                break;
            }
            for k in 0..N {
                base[k] = base[k].wrapping_sub(strides[k][d].wrapping_mul(shape[d]));
            }
            idx[d] = 0;
        }
    }
}

/// Like [`for_each_offset`], but calls `f` once per innermost row with the offsets at the
/// row's start, the row length and the operands' strides along the row, so callers can
/// run tight loops (and vectorize) over rows.
pub fn for_each_row<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
    mut f: impl FnMut([usize; N], usize, [usize; N]),
) {
    let rank = shape.len();
    if rank == 0 {
        f([0; N], 1, [0; N]);
        return;
    }
    // An empty shape has no rows; walking its outer dims would be work without output
    // (`[2^62, 0]` would never finish).
    if shape.contains(&0) {
        return;
    }
    // Unit dims dropped and dims merged where every operand steps through them as one
    // (`[1, C, H, W]` times `[1, C, 1, 1]` has rows of `H·W`, not of `W`).
    let mut sh = [1usize; ptero_core::MAX_DIMS];
    let mut st = [[0usize; ptero_core::MAX_DIMS]; N];
    let mut r = 0;
    for d in 0..rank.min(ptero_core::MAX_DIMS) {
        if shape[d] == 1 {
            continue;
        }
        let merges = r > 0
            && (0..N).all(|k| strides[k][d].checked_mul(shape[d]) == Some(st[k][r - 1]))
            && sh[r - 1].checked_mul(shape[d]).is_some();
        if merges {
            sh[r - 1] *= shape[d];
            for k in 0..N {
                st[k][r - 1] = strides[k][d];
            }
        } else {
            sh[r] = shape[d];
            for k in 0..N {
                st[k][r] = strides[k][d];
            }
            r += 1;
        }
    }
    let rank = r.max(1);
    let (shape, st) = (&sh[..rank], &st);
    let inner = shape[rank - 1];
    let inner_st: [usize; N] = core::array::from_fn(|k| st[k][rank - 1]);
    for_each_offset(
        &shape[..rank - 1],
        core::array::from_fn(|k| &st[k][..rank - 1]),
        |base| {
            if inner > 0 {
                f(base, inner, inner_st)
            }
        },
    );
}

/// Calls `f` with every multi-index of `shape` in row-major order.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let rank = shape.len();
    let mut idx = [0usize; ptero_core::MAX_DIMS];
    loop {
        f(&idx[..rank]);
        let mut d = rank;
        loop {
            if d == 0 {
                return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_merge_dims_walked_as_one() {
        // (shape, output strides, operand strides, rows as (offsets, length, strides))
        type Row = ([usize; 2], usize, [usize; 2]);
        let cases: [(&[usize], &[usize], &[usize], &[Row]); 4] = [
            // A per-channel scale: rows of H*W.
            (
                &[1, 2, 3, 4],
                &[24, 12, 4, 1],
                &[0, 1, 0, 0],
                &[([0, 0], 12, [1, 0]), ([12, 1], 12, [1, 0])],
            ),
            // Both contiguous: one row.
            (&[2, 3], &[3, 1], &[3, 1], &[([0, 0], 6, [1, 1])]),
            // A transposed operand does not merge.
            (
                &[2, 3],
                &[3, 1],
                &[1, 2],
                &[([0, 0], 3, [1, 2]), ([3, 1], 3, [1, 2])],
            ),
            // All unit dims: one element.
            (&[1, 1], &[1, 1], &[0, 0], &[([0, 0], 1, [0, 0])]),
        ];
        for (shape, os, xs, want) in cases {
            let mut got = Vec::new();
            for_each_row(shape, [os, xs], |o, n, st| got.push((o, n, st)));
            assert_eq!(got, want, "{shape:?} {os:?} {xs:?}");
        }
    }

    #[test]
    fn empty_shapes_with_huge_outer_dims_have_no_rows() {
        // Used to walk 2^62 outer indices for a shape with no elements.
        let mut rows = 0;
        for_each_row(&[1 << 62, 0], [&[0, 1]], |_, _, _| rows += 1);
        for_each_row(&[0, 1 << 62, 3], [&[0, 3, 1]], |_, _, _| rows += 1);
        assert_eq!(rows, 0);
    }
    use alloc::vec::Vec;

    #[test]
    fn broadcasting() {
        let cases: [(&[usize], &[usize], Option<&[usize]>); 5] = [
            (&[2, 3], &[3], Some(&[2, 3])),
            (&[2, 1], &[1, 4], Some(&[2, 4])),
            (&[], &[5], Some(&[5])),
            (&[0, 1], &[3], Some(&[0, 3])),
            (&[2], &[3], None),
        ];
        for (a, b, want) in cases {
            assert_eq!(broadcast_shapes(a, b).ok().as_deref(), want);
        }
    }

    #[test]
    fn rows_cover_every_element_once() {
        let mut seen = Vec::new();
        for_each_row(&[2, 3], [&[3, 1], &[0, 1]], |[o, b], n, [so, sb]| {
            seen.push((o, b, n, so, sb))
        });
        assert_eq!(seen, [(0, 0, 3, 1, 1), (3, 0, 3, 1, 1)]);
        let mut n0 = 0;
        for_each_row(&[], [&[]], |_, n, _| n0 += n);
        assert_eq!(n0, 1);
        for_each_row(&[2, 0], [&[0, 1]], |_, n, _| n0 += n);
        assert_eq!(n0, 1);
    }

    #[test]
    fn offsets_cover_row_major_order() {
        let mut seen = Vec::new();
        // Size-1 dims with saturated strides (an empty tensor's, or a one-element slice
        // with a huge step) step and step back without overflow.
        for_each_offset(&[2, 1, 1], [&[1, usize::MAX, usize::MAX]], |[a]| {
            seen.push(a)
        });
        assert_eq!(seen, [0, 1]);
        let mut seen = Vec::new();
        for_each_offset(&[2, 3], [&[3, 1], &[1, 2]], |[a, b]| seen.push((a, b)));
        assert_eq!(seen, [(0, 0), (1, 2), (2, 4), (3, 1), (4, 3), (5, 5)]);
        let mut n = 0;
        for_each_offset(&[], [&[]], |_| n += 1);
        assert_eq!(n, 1);
        for_each_offset(&[3, 0], [&[0, 0]], |_| n += 1);
        assert_eq!(n, 1);
    }
}
