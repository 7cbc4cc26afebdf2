//! Matrix views with element strides, checked once so the kernels can use raw pointers.

use crate::GemmError;

/// Largest element offset of an `rows × cols` matrix with strides `rs`, `cs`, plus one;
/// `None` on overflow. An empty matrix needs nothing.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

/// A read-only `rows × cols` f32 matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view, or an error when `data` is too short for the shape and strides.
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<MatRef<'a>, GemmError> {
        let need = extent(rows, cols, rs, cs).ok_or(GemmError::Overflow)?;
        if need > data.len() {
            return Err(GemmError::OutOfBounds {
                operand: "input",
                needed: need,
                len: data.len(),
            });
        }
        Ok(MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A contiguous row-major view.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<MatRef<'a>, GemmError> {
        MatRef::new(data, rows, cols, cols, 1)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The transpose (no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// A writable `rows × cols` f32 matrix. Distinct elements must be distinct memory, so
/// the strides are checked not to alias.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> MatMut<'a> {
    /// A view, or an error when `data` is too short or two elements would share memory.
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<MatMut<'a>, GemmError> {
        let need = extent(rows, cols, rs, cs).ok_or(GemmError::Overflow)?;
        if need > data.len() {
            return Err(GemmError::OutOfBounds {
                operand: "output",
                needed: need,
                len: data.len(),
            });
        }
        // Distinct (i, j) map to distinct offsets when one stride steps over the whole
        // extent of the other dimension.
        let distinct = rows <= 1 && (cols <= 1 || cs >= 1)
            || cols <= 1 && rs >= 1
            || cs >= 1 && rs >= cs.saturating_mul(cols)
            || rs >= 1 && cs >= rs.saturating_mul(rows);
        if !distinct {
            return Err(GemmError::Aliasing);
        }
        Ok(MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A contiguous row-major view.
    pub fn row_major(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
    ) -> Result<MatMut<'a>, GemmError> {
        MatMut::new(data, rows, cols, cols, 1)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
}
