use crate::{Dims, Element, Error, Result, ScalarType, MAX_DIMS};

/// How a tensor's shape may change at run time (`TensorShapeDynamism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dynamism {
    /// The shape is fixed.
    Static,
    /// Any shape with at most the planned number of elements.
    DynamicBound,
    /// Unbounded in the format; Ptero, like the official runtime, cannot grow storage,
    /// so this behaves as `DynamicBound`.
    DynamicUnbound,
}

/// Where a tensor's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// No data yet (unset input, freed value, placeholder).
    None,
    /// Read-only program constant, at this byte offset of the program data.
    Constant { offset: usize },
    /// A method-owned buffer (planned arena or a buffer allocated at load).
    Buffer { id: u32, offset: usize },
}

/// Shape, layout and location of a tensor value.
///
/// `sizes` are in logical (NCHW...) order; `dim_order` says how the data is laid out
/// (`[0, 2, 3, 1]` is channels-last) and `strides` follow from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorMeta {
    pub dtype: ScalarType,
    pub dynamism: Dynamism,
    sizes: Dims,
    dim_order: [u8; MAX_DIMS],
    strides: Dims,
    numel: usize,
    /// Bytes of storage available to this tensor (its shape upper bound).
    capacity: usize,
    pub storage: Storage,
}

fn strides_for(sizes: &Dims, dim_order: &[u8]) -> Dims {
    let mut strides = Dims::filled(sizes.len(), 0).unwrap_or_default();
    let mut acc = 1usize;
    for &d in dim_order.iter().rev() {
        let d = d as usize;
        strides[d] = acc;
        acc = acc.saturating_mul(sizes[d]);
    }
    strides
}

impl TensorMeta {
    /// Builds metadata for a tensor whose storage holds `capacity` bytes.
    ///
    /// `dim_order` must be a permutation of `0..sizes.len()` (empty means contiguous).
    pub fn new(
        dtype: ScalarType,
        sizes: &[usize],
        dim_order: &[u8],
        dynamism: Dynamism,
        storage: Storage,
    ) -> Result<TensorMeta> {
        let sizes = Dims::from_slice(sizes).ok_or_else(|| {
            Error::shape(alloc::format!(
                "{} dimensions exceed the limit of {MAX_DIMS}",
                sizes.len()
            ))
        })?;
        let mut order = [0u8; MAX_DIMS];
        if dim_order.is_empty() {
            for (i, o) in order.iter_mut().enumerate().take(sizes.len()) {
                *o = i as u8;
            }
        } else {
            if dim_order.len() != sizes.len() {
                return Err(Error::shape(alloc::format!(
                    "dim_order has {} entries for a {}-d tensor",
                    dim_order.len(),
                    sizes.len()
                )));
            }
            let mut seen = [false; MAX_DIMS];
            for &d in dim_order {
                let d = d as usize;
                if d >= sizes.len() || seen[d] {
                    return Err(Error::shape(alloc::format!(
                        "dim_order {dim_order:?} is not a permutation"
                    )));
                }
                seen[d] = true;
            }
            order[..dim_order.len()].copy_from_slice(dim_order);
        }
        let numel = sizes
            .numel()
            .ok_or_else(|| Error::shape(alloc::format!("shape {sizes} has too many elements")))?;
        let capacity = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::shape(alloc::format!("shape {sizes} has too many bytes")))?;
        let strides = strides_for(&sizes, &order[..sizes.len()]);
        Ok(TensorMeta {
            dtype,
            dynamism,
            sizes,
            dim_order: order,
            strides,
            numel,
            capacity,
            storage,
        })
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    pub fn dims(&self) -> Dims {
        self.sizes
    }

    pub fn dim(&self) -> usize {
        self.sizes.len()
    }

    /// Size of dimension `d`, which may be negative (counted from the end).
    pub fn size(&self, d: i64) -> Result<usize> {
        let d = crate::kernel::normalize_dim(d, self.dim())?;
        // A 0-d tensor accepts dims 0 and -1 when wrapping, but has no size to return.
        self.sizes.get(d).copied().ok_or_else(|| {
            crate::Error::invalid(alloc::format!(
                "dimension {d} is out of range for a 0-d tensor"
            ))
        })
    }

    pub fn dim_order(&self) -> &[u8] {
        &self.dim_order[..self.sizes.len()]
    }

    /// Element strides in logical dimension order.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// The strides as an inline list (for iterators that take `Dims`).
    pub fn stride_dims(&self) -> Dims {
        self.strides
    }

    pub fn numel(&self) -> usize {
        self.numel
    }

    pub fn nbytes(&self) -> usize {
        self.numel * self.dtype.size()
    }

    /// Bytes of storage reserved for the tensor (its bound).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// True when the dim order is `0..rank` (row-major).
    pub fn is_contiguous(&self) -> bool {
        self.dim_order()
            .iter()
            .enumerate()
            .all(|(i, &d)| i == d as usize)
    }

    /// Changes the shape, within the rules of the official runtime: same rank, a static
    /// tensor keeps its shape, and the new shape must fit in the reserved storage.
    pub fn resize(&mut self, sizes: &[usize]) -> Result<()> {
        if sizes == self.sizes.as_slice() {
            return Ok(());
        }
        let err = |why| Error::Resize {
            requested: sizes.to_vec(),
            current: self.sizes.to_vec(),
            why,
        };
        let requested = Dims::from_slice(sizes).ok_or_else(|| err("too many dimensions"))?;
        if sizes.len() != self.sizes.len() {
            return Err(err("the rank cannot change"));
        }
        if self.dynamism == Dynamism::Static {
            return Err(err("the tensor is static"));
        }
        let numel = requested.numel().filter(|n| {
            n.checked_mul(self.dtype.size())
                .is_some_and(|b| b <= self.capacity)
        });
        let Some(numel) = numel else {
            return Err(err("the shape exceeds the tensor's planned upper bound"));
        };
        self.sizes = requested;
        self.numel = numel;
        self.strides = strides_for(&self.sizes, &self.dim_order[..self.sizes.len()]);
        Ok(())
    }

    /// Lays the tensor out in another dim order (same sizes and capacity): done at load,
    /// before anything reads or writes it. `order` must be a permutation of `0..rank`.
    pub fn set_dim_order(&mut self, order: &[u8]) -> Result<()> {
        let t = TensorMeta::new(self.dtype, &self.sizes, order, self.dynamism, self.storage)?;
        self.dim_order = t.dim_order;
        self.strides = t.strides;
        Ok(())
    }

    /// Points the tensor at other storage with `capacity` bytes (used by views).
    pub fn set_storage(&mut self, storage: Storage, capacity: usize) {
        self.storage = storage;
        self.capacity = capacity;
    }

    /// Sets the reserved storage size (done once at load).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }
}

/// A read-only tensor view: metadata and bytes.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub meta: &'a TensorMeta,
    pub bytes: &'a [u8],
}

/// A writable tensor view.
pub struct TensorMut<'a> {
    pub meta: &'a TensorMeta,
    pub bytes: &'a mut [u8],
}

fn cast_err(dtype: ScalarType, want: ScalarType) -> Error {
    Error::Dtype {
        arg: usize::MAX,
        expected: alloc::string::ToString::to_string(want.name()),
        found: dtype,
    }
}

impl<'a> TensorRef<'a> {
    pub fn dtype(&self) -> ScalarType {
        self.meta.dtype
    }
    pub fn sizes(&self) -> &'a [usize] {
        self.meta.sizes()
    }
    pub fn numel(&self) -> usize {
        self.meta.numel()
    }
    /// The elements as `T`, in storage (dim-order) order.
    pub fn data<T: Element>(&self) -> Result<&'a [T]> {
        if self.meta.dtype != T::DTYPE {
            return Err(cast_err(self.meta.dtype, T::DTYPE));
        }
        if self.bytes.is_empty() {
            return Ok(&[]);
        }
        bytemuck::try_cast_slice(self.bytes).map_err(|e| {
            Error::OutOfBounds(alloc::format!(
                "tensor data is misaligned for {}: {e:?}",
                T::DTYPE
            ))
        })
    }
    /// Bool tensor data, one byte per element (0 or 1).
    pub fn bools(&self) -> Result<&'a [u8]> {
        if self.meta.dtype != ScalarType::Bool {
            return Err(cast_err(self.meta.dtype, ScalarType::Bool));
        }
        Ok(self.bytes)
    }
}

impl<'a> TensorMut<'a> {
    pub fn dtype(&self) -> ScalarType {
        self.meta.dtype
    }
    pub fn sizes(&self) -> &'a [usize] {
        self.meta.sizes()
    }
    pub fn numel(&self) -> usize {
        self.meta.numel()
    }
    /// The elements as `T`, in storage (dim-order) order.
    pub fn data<T: Element>(&mut self) -> Result<&mut [T]> {
        if self.meta.dtype != T::DTYPE {
            return Err(cast_err(self.meta.dtype, T::DTYPE));
        }
        if self.bytes.is_empty() {
            return Ok(&mut []);
        }
        bytemuck::try_cast_slice_mut(self.bytes).map_err(|e| {
            Error::OutOfBounds(alloc::format!(
                "tensor data is misaligned for {}: {e:?}",
                T::DTYPE
            ))
        })
    }
    /// Consumes the view, returning the elements with the view's lifetime.
    pub fn into_data<T: Element>(self) -> Result<&'a mut [T]> {
        if self.meta.dtype != T::DTYPE {
            return Err(cast_err(self.meta.dtype, T::DTYPE));
        }
        if self.bytes.is_empty() {
            return Ok(&mut []);
        }
        bytemuck::try_cast_slice_mut(self.bytes).map_err(|e| {
            Error::OutOfBounds(alloc::format!(
                "tensor data is misaligned for {}: {e:?}",
                T::DTYPE
            ))
        })
    }
    /// Bool tensor data, one byte per element.
    pub fn bools(&mut self) -> Result<&mut [u8]> {
        if self.meta.dtype != ScalarType::Bool {
            return Err(cast_err(self.meta.dtype, ScalarType::Bool));
        }
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_follow_dim_order() {
        let cases: [(&[usize], &[u8], &[usize]); 3] = [
            (&[2, 3, 4, 5], &[0, 1, 2, 3], &[60, 20, 5, 1]),
            (&[2, 3, 4, 5], &[0, 2, 3, 1], &[60, 1, 15, 3]),
            (&[], &[], &[]),
        ];
        for (sizes, order, want) in cases {
            let m = TensorMeta::new(
                ScalarType::Float,
                sizes,
                order,
                Dynamism::Static,
                Storage::None,
            )
            .unwrap();
            assert_eq!(m.strides(), want);
        }
        assert!(TensorMeta::new(
            ScalarType::Float,
            &[2, 3],
            &[0, 0],
            Dynamism::Static,
            Storage::None
        )
        .is_err());
    }

    #[test]
    fn resize_rules() {
        let mut m = TensorMeta::new(
            ScalarType::Float,
            &[4, 8],
            &[],
            Dynamism::DynamicBound,
            Storage::None,
        )
        .unwrap();
        assert!(m.resize(&[2, 8]).is_ok());
        assert_eq!(m.numel(), 16);
        assert!(m.resize(&[4, 8]).is_ok());
        assert!(m.resize(&[5, 8]).is_err());
        assert!(m.resize(&[32]).is_err());
        assert!(m.resize(&[0, 8]).is_ok());
        let mut s = TensorMeta::new(
            ScalarType::Float,
            &[4],
            &[],
            Dynamism::Static,
            Storage::None,
        )
        .unwrap();
        assert!(s.resize(&[2]).is_err());
        assert!(s.resize(&[4]).is_ok());
    }
}
