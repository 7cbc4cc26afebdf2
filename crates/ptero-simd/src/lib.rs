//! SIMD for Ptero's kernels, written once and run at the best level the CPU has.
//!
//! A kernel implements [`SimdOp`] generically over [`Simd`]; [`dispatch`] runs it with
//! the token of the selected [`Level`] inside a function compiled for that level's
//! target features. The level is detected once; `PTERO_ISA=avx2|scalar|...` or
//! [`set_level`] force a lower one, so a single machine tests every level.
//!
//! ```
//! use ptero_simd::{dispatch, Simd, SimdOp};
//!
//! struct Sum<'a>(&'a [f32]);
//! impl SimdOp for Sum<'_> {
//!     type Output = f32;
//!     #[inline(always)]
//!     fn eval<S: Simd>(self, s: S) -> f32 {
//!         let mut acc = s.zero();
//!         let mut chunks = self.0.chunks_exact(S::LANES);
//!         for c in &mut chunks {
//!             acc = s.add(acc, s.load(c));
//!         }
//!         acc = s.add(acc, s.load_part(chunks.remainder()));
//!         s.reduce_add(acc)
//!     }
//! }
//! assert_eq!(dispatch(Sum(&[1.0; 37])), 37.0);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
mod arena;
mod level;
pub mod math;
pub mod ops;
mod parallel;
pub mod phase;
#[cfg(feature = "std")]
pub mod pool;
mod vector;

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests;

pub use arch::scalar::Scalar;
#[cfg(target_arch = "x86_64")]
pub use arch::x86::{Avx2, Avx512};
pub use arena::{zeroed, SlotArena};
pub use level::{detected, features, level, set_level, Features, Level, Unsupported};
pub use parallel::{
    for_each_chunk, for_each_chunk_by, for_each_chunk_pair, for_each_chunk_work, split_count,
    split_range, Parallel, Serial, PAR_MIN_ELEMS,
};
pub use vector::{Simd, SimdOp};

/// Runs `op` at the selected level ([`level`]).
#[inline]
pub fn dispatch<Op: SimdOp>(op: Op) -> Op::Output {
    dispatch_at(level(), op)
}

/// Runs `op` at level `l`, or at the best supported level below it.
#[inline]
pub fn dispatch_at<Op: SimdOp>(l: Level, op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if l >= Level::Avx512 && Level::Avx512.is_supported() {
            // SAFETY: the CPU supports AVX-512 F/BW/VL/DQ, AVX2 and FMA (checked above).
            return unsafe { run_avx512(op) };
        }
        if l >= Level::Avx2 && Level::Avx2.is_supported() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { run_avx2(op) };
        }
    }
    let _ = l;
    op.eval(Scalar)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn run_avx512<Op: SimdOp>(op: Op) -> Op::Output {
    // SAFETY: this function is only called once the features were detected.
    op.eval(unsafe { Avx512::new_unchecked() })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<Op: SimdOp>(op: Op) -> Op::Output {
    // SAFETY: this function is only called once the features were detected.
    op.eval(unsafe { Avx2::new_unchecked() })
}
