use half::{bf16, f16};

use crate::ScalarType;

/// A Rust type whose values a tensor of [`Element::DTYPE`] stores.
///
/// The conversions go through `f64` / `i64` so generic kernels can apply PyTorch's
/// casting rules (float to int truncates toward zero; NaN to int gives 0 here rather
/// than undefined behaviour).
pub trait Element:
    bytemuck::Pod + Copy + PartialOrd + Send + Sync + 'static + core::fmt::Debug
{
    const DTYPE: ScalarType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn to_i64(self) -> i64;
    fn from_i64(v: i64) -> Self;
    fn zero() -> Self {
        Self::from_i64(0)
    }
    fn one() -> Self {
        Self::from_i64(1)
    }
}

macro_rules! int_element {
    ($t:ty, $dt:ident) => {
        impl Element for $t {
            const DTYPE: ScalarType = ScalarType::$dt;
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                // Wraps like C++'s static_cast through int64 for in-range values.
                (v as i64) as $t
            }
            #[inline]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline]
            fn from_i64(v: i64) -> Self {
                v as $t
            }
        }
    };
}

int_element!(u8, Byte);
int_element!(i8, Char);
int_element!(i16, Short);
int_element!(i32, Int);
int_element!(i64, Long);
int_element!(u16, UInt16);
int_element!(u32, UInt32);
int_element!(u64, UInt64);

impl Element for f32 {
    const DTYPE: ScalarType = ScalarType::Float;
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline]
    fn from_i64(v: i64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    const DTYPE: ScalarType = ScalarType::Double;
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline]
    fn from_i64(v: i64) -> Self {
        v as f64
    }
}

impl Element for f16 {
    const DTYPE: ScalarType = ScalarType::Half;
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self.to_f64() as i64
    }
    #[inline]
    fn from_i64(v: i64) -> Self {
        f16::from_f64(v as f64)
    }
}

impl Element for bf16 {
    const DTYPE: ScalarType = ScalarType::BFloat16;
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self.to_f64() as i64
    }
    #[inline]
    fn from_i64(v: i64) -> Self {
        bf16::from_f64(v as f64)
    }
}
