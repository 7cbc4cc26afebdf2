//! Dtype-generic element loads and stores, used by the general (slow) paths of kernels.
//! Fast paths work on typed slices directly.

use half::{bf16, f16};
use ptero_core::{Error, Result, ScalarType};

/// Which arithmetic a kernel should compute in for a given result dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeKind {
    Bool,
    Int,
    Float,
}

impl ComputeKind {
    pub fn of(t: ScalarType) -> Result<ComputeKind> {
        if t == ScalarType::Bool {
            Ok(ComputeKind::Bool)
        } else if t.is_integral() {
            Ok(ComputeKind::Int)
        } else if t.is_float() {
            Ok(ComputeKind::Float)
        } else {
            Err(Error::NotImplemented(alloc::format!(
                "arithmetic on {t} tensors"
            )))
        }
    }
}

macro_rules! rd {
    ($bytes:expr, $i:expr, $t:ty) => {{
        const N: usize = core::mem::size_of::<$t>();
        match $i
            .checked_mul(N)
            .and_then(|s| $bytes.get(s..s.checked_add(N)?))
        {
            Some(b) => <$t>::from_le_bytes(b.try_into().unwrap_or([0; N])),
            None => {
                // Views are exactly their tensor's extent and kernels validate their index
                // space against it first: a miss here is a kernel bug (tests and the fuzzer,
                // built with debug assertions, catch it); a release build reads 0.
                debug_assert!(false, "element {} past a {}-byte tensor", $i, $bytes.len());
                <$t>::default()
            }
        }
    }};
}

/// Element `i` (in storage order) of `bytes` holding `dtype`, as f64.
/// Callers compute indices from checked shapes; a read past the end (a bug) gives 0.
#[inline]
pub fn load_f64(bytes: &[u8], dtype: ScalarType, i: usize) -> f64 {
    use ScalarType::*;
    match dtype {
        Float => rd!(bytes, i, f32) as f64,
        Double => rd!(bytes, i, f64),
        Half => f16::from_bits(rd!(bytes, i, u16)).to_f64(),
        BFloat16 => bf16::from_bits(rd!(bytes, i, u16)).to_f64(),
        Byte | QUInt8 => rd!(bytes, i, u8) as f64,
        Char | QInt8 => rd!(bytes, i, i8) as f64,
        Short => rd!(bytes, i, i16) as f64,
        Int | QInt32 => rd!(bytes, i, i32) as f64,
        Long => rd!(bytes, i, i64) as f64,
        UInt16 => rd!(bytes, i, u16) as f64,
        UInt32 => rd!(bytes, i, u32) as f64,
        UInt64 => rd!(bytes, i, u64) as f64,
        Bool => (rd!(bytes, i, u8) != 0) as u8 as f64,
        _ => 0.0,
    }
}

/// Element `i` as i64 (floats truncate toward zero, as C++ casts do).
#[inline]
pub fn load_i64(bytes: &[u8], dtype: ScalarType, i: usize) -> i64 {
    use ScalarType::*;
    match dtype {
        Byte | QUInt8 => rd!(bytes, i, u8) as i64,
        Char | QInt8 => rd!(bytes, i, i8) as i64,
        Short => rd!(bytes, i, i16) as i64,
        Int | QInt32 => rd!(bytes, i, i32) as i64,
        Long => rd!(bytes, i, i64),
        UInt16 => rd!(bytes, i, u16) as i64,
        UInt32 => rd!(bytes, i, u32) as i64,
        UInt64 => rd!(bytes, i, u64) as i64,
        Bool => (rd!(bytes, i, u8) != 0) as i64,
        // `load_f64` never calls back here.
        _ => load_f64(bytes, dtype, i) as i64,
    }
}

/// Element `i` as bool (non-zero is true).
#[inline]
pub fn load_bool(bytes: &[u8], dtype: ScalarType, i: usize) -> bool {
    if dtype.is_float() {
        load_f64(bytes, dtype, i) != 0.0
    } else {
        load_i64(bytes, dtype, i) != 0
    }
}

macro_rules! wr {
    ($bytes:expr, $i:expr, $v:expr, $t:ty) => {{
        const N: usize = core::mem::size_of::<$t>();
        let range = $i.checked_mul(N).and_then(|s| Some(s..s.checked_add(N)?));
        let len = $bytes.len();
        match range.and_then(|r| $bytes.get_mut(r)) {
            Some(b) => b.copy_from_slice(&(<$t>::to_le_bytes($v))),
            // As in `rd!`: a kernel bug, caught in tests; dropped in a release build.
            None => debug_assert!(false, "element {} past a {}-byte tensor", $i, len),
        }
    }};
}

/// Stores `v` as element `i` of `dtype` storage, casting like PyTorch.
#[inline]
pub fn store_f64(bytes: &mut [u8], dtype: ScalarType, i: usize, v: f64) {
    use ScalarType::*;
    match dtype {
        Float => wr!(bytes, i, v as f32, f32),
        Double => wr!(bytes, i, v, f64),
        Half => wr!(bytes, i, f16::from_f64(v).to_bits(), u16),
        BFloat16 => wr!(bytes, i, bf16::from_f64(v).to_bits(), u16),
        Bool => wr!(bytes, i, (v != 0.0) as u8, u8),
        // Only types `store_i64` handles itself go there: the two must never call each
        // other in a cycle (opaque dtypes such as Float8 or QUInt4x2 are left untouched;
        // kernels reject them before computing).
        Byte | QUInt8 | Char | QInt8 | Short | Int | QInt32 | Long | UInt16 | UInt32 | UInt64 => {
            store_i64(bytes, dtype, i, v as i64)
        }
        _ => {}
    }
}

/// Stores `v` as element `i` of `dtype` storage (integers wrap).
#[inline]
pub fn store_i64(bytes: &mut [u8], dtype: ScalarType, i: usize, v: i64) {
    use ScalarType::*;
    match dtype {
        Byte | QUInt8 => wr!(bytes, i, v as u8, u8),
        Char | QInt8 => wr!(bytes, i, v as i8, i8),
        Short => wr!(bytes, i, v as i16, i16),
        Int | QInt32 => wr!(bytes, i, v as i32, i32),
        Long => wr!(bytes, i, v, i64),
        UInt16 => wr!(bytes, i, v as u16, u16),
        UInt32 => wr!(bytes, i, v as u32, u32),
        UInt64 => wr!(bytes, i, v as u64, u64),
        Bool => wr!(bytes, i, (v != 0) as u8, u8),
        Float | Double | Half | BFloat16 => store_f64(bytes, dtype, i, v as f64),
        _ => {}
    }
}

/// Stores a bool as element `i`.
#[inline]
pub fn store_bool(bytes: &mut [u8], dtype: ScalarType, i: usize, v: bool) {
    store_i64(bytes, dtype, i, v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_dtypes_terminate() {
        // These used to call each other for ever (store_f64 -> store_i64 -> store_f64).
        for t in ScalarType::ALL {
            let mut buf = [0u8; 32];
            store_f64(&mut buf, t, 1, 3.0);
            store_i64(&mut buf, t, 1, 3);
            store_bool(&mut buf, t, 1, true);
            let _ = (
                load_f64(&buf, t, 1),
                load_i64(&buf, t, 1),
                load_bool(&buf, t, 1),
            );
        }
    }

    #[test]
    fn roundtrip_every_numeric_dtype() {
        for t in ScalarType::ALL.iter().copied().filter(|t| t.is_numeric()) {
            let mut buf = [0u8; 32];
            store_f64(&mut buf, t, 1, 3.0);
            assert_eq!(
                load_f64(&buf, t, 1),
                if t == ScalarType::Bool { 1.0 } else { 3.0 },
                "{t}"
            );
            store_i64(&mut buf, t, 2, 5);
            assert_eq!(
                load_i64(&buf, t, 2),
                if t == ScalarType::Bool { 1 } else { 5 },
                "{t}"
            );
        }
        // Casts truncate toward zero.
        let mut buf = [0u8; 8];
        store_f64(&mut buf, ScalarType::Int, 0, -2.7);
        assert_eq!(load_i64(&buf, ScalarType::Int, 0), -2);
        // A read past the end is a kernel bug: debug builds stop there, release builds
        // read 0 (never past the slice).
        if !cfg!(debug_assertions) {
            assert_eq!(load_f64(&buf, ScalarType::Double, 5), 0.0);
        }
    }
}
