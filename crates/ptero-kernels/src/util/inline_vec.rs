//! A fixed-capacity vector on the stack, for per-dimension bookkeeping in kernels that
//! must not allocate while a method executes.

use core::ops::{Deref, DerefMut};

use ptero_core::{Error, Result};

/// Up to `N` items held inline; the unused slots keep `T::default()`.
pub struct InlineVec<T: Default, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Default, const N: usize> InlineVec<T, N> {
    pub fn new() -> Self {
        InlineVec {
            items: core::array::from_fn(|_| T::default()),
            len: 0,
        }
    }

    /// Appends `v`, or fails when all `N` slots are used.
    pub fn push(&mut self, v: T) -> Result<()> {
        let slot = self
            .items
            .get_mut(self.len)
            .ok_or_else(|| Error::invalid(alloc::format!("more than {N} entries")))?;
        *slot = v;
        self.len += 1;
        Ok(())
    }
}

impl<T: Default, const N: usize> Default for InlineVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Default, const N: usize> Deref for InlineVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T: Default, const N: usize> DerefMut for InlineVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_until_full() {
        let mut v: InlineVec<u8, 2> = InlineVec::new();
        assert!(v.is_empty());
        v.push(1).unwrap();
        v.push(2).unwrap();
        assert!(v.push(3).is_err());
        assert_eq!(&*v, &[1, 2]);
        v[0] = 5;
        assert_eq!(v.iter().copied().max(), Some(5));
    }
}
