//! Packed operand layouts.
//!
//! B is packed in panels of `nr` columns: panel `q` holds `K × nr` values, row `p` of
//! the panel at `q * K * nr + p * nr` (columns past `n` are zero). A is packed in strips
//! of `mr` rows: strip `s` holds `K × mr` values, column `p` at `s * K * mr + p * mr`.
//! The microkernel then reads both sequentially.

use alloc::vec::Vec;

use ptero_simd::Level;

use crate::kernel::geometry;
use crate::{GemmError, MatRef};

/// Checks that every element a packing loop reads is inside `m.data`: the loops below
/// then index without bounds checks (they run once per element of every activation).
fn check_block(m: &MatRef<'_>, r0: usize, rows: usize, c0: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (r0 + rows - 1) * m.rs + (c0 + cols - 1) * m.cs;
    assert!(
        r0 + rows <= m.rows && c0 + cols <= m.cols && last < m.data.len(),
        "packing block outside its matrix"
    );
}

/// Packs `kc × nr` of `b` (rows `k0..`, columns `j0..j0 + n_eff`) into `dst`.
pub(crate) fn pack_b_panel(
    b: &MatRef<'_>,
    k0: usize,
    kc: usize,
    j0: usize,
    n_eff: usize,
    nr: usize,
    dst: &mut [f32],
) {
    let dst = &mut dst[..kc * nr];
    check_block(b, k0, kc, j0, n_eff);
    let src = b.data.as_ptr();
    let d = dst.as_mut_ptr();
    if b.cs == 1 {
        for p in 0..kc {
            // SAFETY: `check_block` proved row k0 + p, columns j0..j0 + n_eff are inside
            // `b.data`; `dst` holds kc * nr values and n_eff <= nr.
            unsafe {
                let s = src.add((k0 + p) * b.rs + j0);
                core::ptr::copy_nonoverlapping(s, d.add(p * nr), n_eff);
                core::ptr::write_bytes(d.add(p * nr + n_eff), 0, nr - n_eff);
            }
        }
    } else {
        if n_eff < nr {
            dst.fill(0.0);
        }
        let d = dst.as_mut_ptr();
        // Four columns at a time: four sequential read streams, writes close together.
        let mut jj = 0;
        while jj < n_eff {
            let w = (n_eff - jj).min(4);
            for c in 0..w {
                let col = (j0 + jj + c) * b.cs + k0 * b.rs;
                for p in 0..kc {
                    // SAFETY: element (k0 + p, j0 + jj + c) is inside the checked block;
                    // p * nr + jj + c < kc * nr.
                    unsafe { *d.add(p * nr + jj + c) = *src.add(col + p * b.rs) };
                }
            }
            jj += w;
        }
    }
}

/// Packs `mr × kc` of `a` (rows `i0..i0 + m_eff`, columns `k0..`) into `dst`: a strip of
/// A's rows is a panel of Aᵀ's columns.
pub(crate) fn pack_a_strip(
    a: &MatRef<'_>,
    i0: usize,
    m_eff: usize,
    k0: usize,
    kc: usize,
    mr: usize,
    dst: &mut [f32],
) {
    pack_b_panel(&a.t(), k0, kc, i0, m_eff, mr, dst)
}

/// The whole of `b` (`K × N`) in panels of `width` columns.
fn pack_panels(b: &MatRef<'_>, width: usize) -> Result<Vec<f32>, GemmError> {
    let (k, n) = (b.rows, b.cols);
    let panels = n.div_ceil(width);
    let len = panels
        .checked_mul(width)
        .and_then(|x| x.checked_mul(k))
        .ok_or(GemmError::Overflow)?;
    let mut data = alloc_zeroed(len)?;
    for q in 0..panels {
        let j0 = q * width;
        pack_b_panel(
            b,
            0,
            k,
            j0,
            width.min(n - j0),
            width,
            &mut data[q * k * width..],
        );
    }
    Ok(data)
}

fn alloc_zeroed(len: usize) -> Result<Vec<f32>, GemmError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| GemmError::OutOfMemory {
            bytes: len.saturating_mul(4),
        })?;
    v.resize(len, 0.0);
    Ok(v)
}

/// The right-hand operand (`K × N`, typically constant weights) packed once for the
/// microkernel of one instruction-set level.
///
/// ```
/// use ptero_gemm::{MatRef, PackedB};
/// let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 × 3
/// let p = PackedB::new(MatRef::row_major(&w, 2, 3).unwrap()).unwrap();
/// assert_eq!((p.k(), p.n()), (2, 3));
/// ```
#[derive(Clone, Debug)]
pub struct PackedB {
    pub(crate) data: Vec<f32>,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) nr: usize,
    pub(crate) level: Level,
}

impl PackedB {
    /// Packs `b` for the current level ([`ptero_simd::level`]).
    pub fn new(b: MatRef<'_>) -> Result<PackedB, GemmError> {
        PackedB::new_at(ptero_simd::level(), b)
    }

    /// Packs `b` for level `level`.
    pub fn new_at(level: Level, b: MatRef<'_>) -> Result<PackedB, GemmError> {
        let (_, nr) = geometry(level);
        let (k, n) = (b.rows, b.cols);
        let data = pack_panels(&b, nr)?;
        Ok(PackedB {
            data,
            k,
            n,
            nr,
            level,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
    /// The level it was packed for.
    pub fn level(&self) -> Level {
        self.level
    }

    /// A borrowed view, for [`Rhs::Packed`](crate::Rhs::Packed).
    pub fn view(&self) -> PackedBRef<'_> {
        PackedBRef {
            data: &self.data,
            k: self.k,
            n: self.n,
            nr: self.nr,
            level: self.level,
        }
    }
}

/// A right operand in [`PackedB`]'s layout, borrowed: from a [`PackedB`], or written by
/// the caller straight into a buffer (a convolution's patches, gathered in packed order).
#[derive(Clone, Copy, Debug)]
pub struct PackedBRef<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) nr: usize,
    pub(crate) level: Level,
}

impl<'a> PackedBRef<'a> {
    /// Columns per panel of the layout for `level`.
    pub fn panel_width(level: Level) -> usize {
        geometry(level).1
    }

    /// A view of `data` holding a `k × n` operand packed for `level`: panels of
    /// [`PackedBRef::panel_width`] columns, each `k` rows, columns past `n` zero.
    pub fn new(level: Level, data: &'a [f32], k: usize, n: usize) -> Result<Self, GemmError> {
        let nr = geometry(level).1;
        let need = n
            .div_ceil(nr)
            .checked_mul(nr)
            .and_then(|x| x.checked_mul(k))
            .ok_or(GemmError::Overflow)?;
        if data.len() < need {
            return Err(GemmError::OutOfBounds {
                operand: "packed right operand",
                needed: need,
                len: data.len(),
            });
        }
        Ok(PackedBRef {
            data,
            k,
            n,
            nr,
            level,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
}

/// The left-hand operand (`M × K`, e.g. convolution weights) packed once.
#[derive(Clone, Debug)]
pub struct PackedA {
    pub(crate) data: Vec<f32>,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) mr: usize,
    pub(crate) level: Level,
}

impl PackedA {
    /// Packs `a` for the current level.
    pub fn new(a: MatRef<'_>) -> Result<PackedA, GemmError> {
        PackedA::new_at(ptero_simd::level(), a)
    }

    /// Packs `a` for level `level`.
    pub fn new_at(level: Level, a: MatRef<'_>) -> Result<PackedA, GemmError> {
        let (mr, _) = geometry(level);
        let (m, k) = (a.rows, a.cols);
        // Strips of A's rows are panels of Aᵀ's columns.
        let data = pack_panels(&a.t(), mr)?;
        Ok(PackedA {
            data,
            m,
            k,
            mr,
            level,
        })
    }

    pub fn m(&self) -> usize {
        self.m
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
    pub fn level(&self) -> Level {
        self.level
    }
}
