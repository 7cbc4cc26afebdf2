use core::fmt;
use core::ops::{Deref, DerefMut};

/// Most dimensions a tensor may have (ExecuTorch's `kTensorDimensionLimit`).
pub const MAX_DIMS: usize = 16;

/// A shape or stride list held inline, so shape arithmetic never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dims {
    len: u8,
    d: [usize; MAX_DIMS],
}

impl Dims {
    /// The empty (0-d) shape.
    pub const fn new() -> Dims {
        Dims {
            len: 0,
            d: [0; MAX_DIMS],
        }
    }

    /// Copies `s`; `None` if it has more than [`MAX_DIMS`] entries.
    pub fn from_slice(s: &[usize]) -> Option<Dims> {
        if s.len() > MAX_DIMS {
            return None;
        }
        let mut d = Dims::new();
        d.d[..s.len()].copy_from_slice(s);
        d.len = s.len() as u8;
        Some(d)
    }

    /// A shape of `rank` copies of `v`.
    pub fn filled(rank: usize, v: usize) -> Option<Dims> {
        if rank > MAX_DIMS {
            return None;
        }
        Some(Dims {
            len: rank as u8,
            d: [v; MAX_DIMS],
        })
    }

    /// Appends a dimension; `false` when full.
    pub fn push(&mut self, v: usize) -> bool {
        if (self.len as usize) < MAX_DIMS {
            self.d[self.len as usize] = v;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// Inserts `v` at `at` (`at <= len`); `false` when full or out of range.
    pub fn insert(&mut self, at: usize, v: usize) -> bool {
        let n = self.len as usize;
        if n >= MAX_DIMS || at > n {
            return false;
        }
        self.d.copy_within(at..n, at + 1);
        self.d[at] = v;
        self.len += 1;
        true
    }

    /// Removes the entry at `at`, if present.
    pub fn remove(&mut self, at: usize) -> Option<usize> {
        let n = self.len as usize;
        if at >= n {
            return None;
        }
        let v = self.d[at];
        self.d.copy_within(at + 1..n, at);
        self.len -= 1;
        Some(v)
    }

    /// Product of the entries (1 for a 0-d shape); `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x))
    }

    pub fn as_slice(&self) -> &[usize] {
        &self.d[..self.len as usize]
    }
}

impl Default for Dims {
    fn default() -> Self {
        Dims::new()
    }
}

impl Deref for Dims {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.d[..self.len as usize]
    }
}

impl DerefMut for Dims {
    fn deref_mut(&mut self) -> &mut [usize] {
        &mut self.d[..self.len as usize]
    }
}

impl fmt::Debug for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_and_numel() {
        let mut d = Dims::from_slice(&[2, 3]).unwrap();
        assert!(d.insert(1, 5));
        assert_eq!(d.as_slice(), &[2, 5, 3]);
        assert_eq!(d.numel(), Some(30));
        assert_eq!(d.remove(0), Some(2));
        assert_eq!(d.as_slice(), &[5, 3]);
        assert_eq!(Dims::new().numel(), Some(1));
        assert!(Dims::from_slice(&[1; 17]).is_none());
        assert_eq!(Dims::from_slice(&[usize::MAX, 2]).unwrap().numel(), None);
        assert_eq!(format!("{}", Dims::from_slice(&[1, 2]).unwrap()), "[1, 2]");
    }
}
