//! Keeping long kernels accountable: a work meter that reports superlinear work to the
//! interpreter ([`KernelArgs::charge`]) and polls the caller's interrupt at coarse chunk
//! boundaries ([`KernelArgs::check_interrupt`]), plus overflow-safe size arithmetic.

use ptero_core::{Error, KernelArgs, Result};

/// Units of work between two interrupt checks: coarse enough that polling costs nothing,
/// fine enough that a deadline is noticed within milliseconds.
pub const CHUNK: u64 = 1 << 18;

/// Counts work done by a kernel: every [`CHUNK`] units it checks the caller's interrupt and,
/// for a charging meter, reports the units with [`KernelArgs::charge`]. Units still pending
/// are charged when the meter is dropped.
pub struct Meter<'k, 'a> {
    args: &'k KernelArgs<'a>,
    pending: u64,
    charging: bool,
}

impl<'k, 'a> Meter<'k, 'a> {
    /// A meter that only polls the interrupt (for work linear in the operands, which the
    /// interpreter already counts).
    pub fn new(args: &'k KernelArgs<'a>) -> Self {
        Meter {
            args,
            pending: 0,
            charging: false,
        }
    }

    /// A meter that also charges its units (work beyond touching each operand once:
    /// pooling windows, interpolation taps, multiply-adds).
    pub fn charging(args: &'k KernelArgs<'a>) -> Self {
        Meter {
            args,
            pending: 0,
            charging: true,
        }
    }

    /// Records `units` of work; fails with [`Error::Interrupted`] once the caller's
    /// deadline passed (checked when a chunk is complete).
    #[inline]
    pub fn add(&mut self, units: u64) -> Result<()> {
        self.pending = self.pending.saturating_add(units);
        if self.pending >= CHUNK {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Charges the pending units and checks the interrupt now.
    pub fn flush(&mut self) -> Result<()> {
        if self.charging {
            self.args.charge(self.pending);
        }
        self.pending = 0;
        self.args.check_interrupt()
    }
}

impl Drop for Meter<'_, '_> {
    fn drop(&mut self) {
        if self.charging {
            self.args.charge(self.pending);
        }
    }
}

/// Product of `sizes`, saturating at `usize::MAX`: partial products of a shape (the dims
/// of a lane, the tokens of a tensor) can overflow when another dim is 0, and then nothing
/// is iterated anyway.
pub fn sat_product(sizes: &[usize]) -> usize {
    sizes.iter().fold(1usize, |acc, &s| acc.saturating_mul(s))
}

/// `a * b` as a size, or a shape error naming `what` when it overflows.
pub fn checked_size(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::shape(alloc::format!("{what}: {a} x {b} overflows the size range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products() {
        assert_eq!(sat_product(&[]), 1);
        assert_eq!(sat_product(&[2, 3]), 6);
        assert_eq!(sat_product(&[1 << 40, 1 << 40, 0]), 0);
        assert_eq!(sat_product(&[1 << 40, 1 << 40]), usize::MAX);
        assert!(checked_size(usize::MAX, 2, "x").is_err());
        assert_eq!(checked_size(3, 4, "x").unwrap(), 12);
    }
}
