use core::fmt;

/// Every scalar type an ExecuTorch program can name (`scalar_type.fbs`), with the same
/// numeric codes. Quantized, packed and float8 types are carried as opaque data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ScalarType {
    Byte = 0,
    Char = 1,
    Short = 2,
    Int = 3,
    Long = 4,
    Half = 5,
    Float = 6,
    Double = 7,
    Bool = 11,
    QInt8 = 12,
    QUInt8 = 13,
    QInt32 = 14,
    BFloat16 = 15,
    QUInt4x2 = 16,
    QUInt2x4 = 17,
    Bits16 = 22,
    Float8E5M2 = 23,
    Float8E4M3FN = 24,
    Float8E5M2FNUZ = 25,
    Float8E4M3FNUZ = 26,
    UInt16 = 27,
    UInt32 = 28,
    UInt64 = 29,
}

impl ScalarType {
    /// All types, in code order.
    pub const ALL: [ScalarType; 23] = [
        ScalarType::Byte,
        ScalarType::Char,
        ScalarType::Short,
        ScalarType::Int,
        ScalarType::Long,
        ScalarType::Half,
        ScalarType::Float,
        ScalarType::Double,
        ScalarType::Bool,
        ScalarType::QInt8,
        ScalarType::QUInt8,
        ScalarType::QInt32,
        ScalarType::BFloat16,
        ScalarType::QUInt4x2,
        ScalarType::QUInt2x4,
        ScalarType::Bits16,
        ScalarType::Float8E5M2,
        ScalarType::Float8E4M3FN,
        ScalarType::Float8E5M2FNUZ,
        ScalarType::Float8E4M3FNUZ,
        ScalarType::UInt16,
        ScalarType::UInt32,
        ScalarType::UInt64,
    ];

    /// The type with ExecuTorch code `code`, if any.
    pub fn from_code(code: i64) -> Option<ScalarType> {
        ScalarType::ALL.iter().copied().find(|t| *t as i64 == code)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        use ScalarType::*;
        match self {
            Byte | Char | Bool | QInt8 | QUInt8 | QUInt4x2 | QUInt2x4 | Float8E5M2
            | Float8E4M3FN | Float8E5M2FNUZ | Float8E4M3FNUZ => 1,
            Short | Half | BFloat16 | Bits16 | UInt16 => 2,
            Int | Float | QInt32 | UInt32 => 4,
            Long | Double | UInt64 => 8,
        }
    }

    /// PyTorch's name for the type (`torch.float32` without the prefix).
    pub fn name(self) -> &'static str {
        use ScalarType::*;
        match self {
            Byte => "uint8",
            Char => "int8",
            Short => "int16",
            Int => "int32",
            Long => "int64",
            Half => "float16",
            Float => "float32",
            Double => "float64",
            Bool => "bool",
            QInt8 => "qint8",
            QUInt8 => "quint8",
            QInt32 => "qint32",
            BFloat16 => "bfloat16",
            QUInt4x2 => "quint4x2",
            QUInt2x4 => "quint2x4",
            Bits16 => "bits16",
            Float8E5M2 => "float8_e5m2",
            Float8E4M3FN => "float8_e4m3fn",
            Float8E5M2FNUZ => "float8_e5m2fnuz",
            Float8E4M3FNUZ => "float8_e4m3fnuz",
            UInt16 => "uint16",
            UInt32 => "uint32",
            UInt64 => "uint64",
        }
    }

    /// Floating point types that kernels compute with.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            ScalarType::Half | ScalarType::Float | ScalarType::Double | ScalarType::BFloat16
        )
    }

    /// Signed or unsigned integer types (not bool, not quantized).
    pub fn is_integral(self) -> bool {
        use ScalarType::*;
        matches!(
            self,
            Byte | Char | Short | Int | Long | UInt16 | UInt32 | UInt64
        )
    }

    /// Types kernels do arithmetic on (the rest are opaque data).
    pub fn is_numeric(self) -> bool {
        self.is_float() || self.is_integral() || self == ScalarType::Bool
    }

    /// Rank in PyTorch's promotion lattice within a category: bool < ints < floats.
    fn category(self) -> u8 {
        if self == ScalarType::Bool {
            0
        } else if self.is_integral() {
            1
        } else {
            2
        }
    }

    /// `torch.promote_types(self, other)` for the numeric types.
    ///
    /// Returns `None` for pairs PyTorch rejects or that involve opaque data types.
    pub fn promote(self, other: ScalarType) -> Option<ScalarType> {
        use ScalarType::*;
        if !self.is_numeric() || !other.is_numeric() {
            return if self == other { Some(self) } else { None };
        }
        if self == other {
            return Some(self);
        }
        let (ca, cb) = (self.category(), other.category());
        if ca != cb {
            return Some(if ca > cb { self } else { other });
        }
        if ca == 2 {
            // Half and BFloat16 promote to Float together.
            return Some(match (self, other) {
                (Double, _) | (_, Double) => Double,
                (Float, _) | (_, Float) => Float,
                _ => Float,
            });
        }
        // Integers: follow PyTorch's table, including uint8 with signed types.
        let signed = |t: ScalarType| matches!(t, Char | Short | Int | Long);
        let bits = |t: ScalarType| t.size() * 8;
        match (signed(self), signed(other)) {
            (true, true) | (false, false) => Some(if bits(self) >= bits(other) {
                self
            } else {
                other
            }),
            _ => {
                let (s, u) = if signed(self) {
                    (self, other)
                } else {
                    (other, self)
                };
                if u == Byte {
                    // uint8 with a signed type: the smallest signed type holding both.
                    Some(if s == Char { Short } else { s })
                } else if bits(s) > bits(u) {
                    Some(s)
                } else {
                    // PyTorch has no promotion for larger unsigned types with signed ones.
                    None
                }
            }
        }
    }
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::ScalarType::*;
    use super::*;

    #[test]
    fn promotion_table() {
        let cases = [
            (Float, Double, Some(Double)),
            (Half, BFloat16, Some(Float)),
            (Half, Half, Some(Half)),
            (Long, Float, Some(Float)),
            (Bool, Int, Some(Int)),
            (Byte, Char, Some(Short)),
            (Byte, Long, Some(Long)),
            (Int, Long, Some(Long)),
            (Bool, Bool, Some(Bool)),
            (Half, Int, Some(Half)),
            (QInt8, Float, None),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.promote(b), want, "{a} + {b}");
            assert_eq!(b.promote(a), want, "{b} + {a}");
        }
    }

    #[test]
    fn codes_roundtrip() {
        for t in ScalarType::ALL {
            assert_eq!(ScalarType::from_code(t as i64), Some(t));
        }
        assert_eq!(ScalarType::from_code(8), None);
    }
}
