//! Comparing a method's outputs with a bundled test case's expected outputs.
//!
//! The rule is the official runtime's `verify_method_outputs`: a float element passes when
//! `|expected − actual| <= atol + |rtol · actual|`, NaN matches NaN and an infinity matches
//! the same infinity; every other dtype must be equal. Ptero also compares bf16 within the
//! tolerance (the official runtime compares its bytes).

use alloc::format;
use alloc::string::String;

use ptero_core::ScalarType;
use ptero_runtime::{EValue, Tensor};

/// Tolerances of a comparison. The default is the official example runner's
/// (`rtol` 1e-3, `atol` 1e-5); its API's own default (1e-5, 1e-8) leaves no room for a
/// different summation order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            rtol: 1e-3,
            atol: 1e-5,
        }
    }
}

/// How one output compared.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputCheck {
    /// Largest `|expected − actual|` over the elements (0 for exact dtypes that match).
    pub max_abs_error: f64,
    /// Where the worst element sits (flat index), if any element was compared.
    pub worst_index: Option<usize>,
    /// Elements outside the tolerance.
    pub mismatches: usize,
    /// Why the output could not be compared element by element (dtype, shape, kind).
    pub structural: Option<String>,
}

impl OutputCheck {
    pub fn passed(&self) -> bool {
        self.structural.is_none() && self.mismatches == 0
    }
}

/// Compares `actual` with `expected` under `tol`.
///
/// ```
/// use ptero_devtools::{compare_values, Tolerance};
/// use ptero_runtime::{EValue, Tensor};
/// let want = EValue::Tensor(Tensor::from_slice(&[1.0f32, 2.0], &[2]).unwrap());
/// let got = EValue::Tensor(Tensor::from_slice(&[1.0f32, 2.0001], &[2]).unwrap());
/// let check = compare_values(&want, &got, Tolerance::default());
/// assert!(check.passed());
/// assert!((check.max_abs_error - 1e-4).abs() < 1e-6);
/// ```
pub fn compare_values(expected: &EValue, actual: &EValue, tol: Tolerance) -> OutputCheck {
    let structural = |msg: String| OutputCheck {
        max_abs_error: f64::INFINITY,
        worst_index: None,
        mismatches: 0,
        structural: Some(msg),
    };
    match (expected, actual) {
        (EValue::Tensor(e), EValue::Tensor(a)) => compare_tensors(e, a, tol),
        (EValue::Int(e), EValue::Int(a)) => exact(e == a, (*e as f64 - *a as f64).abs()),
        (EValue::Bool(e), EValue::Bool(a)) => exact(e == a, f64::from(u8::from(e != a))),
        (EValue::Double(e), EValue::Double(a)) => {
            let (bad, err) = element(*e, *a, tol);
            OutputCheck {
                max_abs_error: err,
                worst_index: Some(0),
                mismatches: usize::from(bad),
                structural: None,
            }
        }
        (e, a) => structural(format!("expected a {}, got a {}", e.kind(), a.kind())),
    }
}

fn exact(equal: bool, err: f64) -> OutputCheck {
    OutputCheck {
        max_abs_error: err,
        worst_index: Some(0),
        mismatches: usize::from(!equal),
        structural: None,
    }
}

/// Whether `actual` misses `expected`, and by how much.
fn element(expected: f64, actual: f64, tol: Tolerance) -> (bool, f64) {
    if expected.is_nan() && actual.is_nan() {
        return (false, 0.0);
    }
    if expected.is_infinite() && expected == actual {
        return (false, 0.0);
    }
    let diff = (expected - actual).abs();
    if !diff.is_finite() {
        return (true, f64::INFINITY);
    }
    let bad = if tol.rtol == 0.0 && tol.atol == 0.0 {
        expected != actual
    } else {
        diff > tol.atol + (tol.rtol * actual).abs()
    };
    (bad, diff)
}

fn compare_tensors(e: &Tensor, a: &Tensor, tol: Tolerance) -> OutputCheck {
    let structural = |msg: String| OutputCheck {
        max_abs_error: f64::INFINITY,
        worst_index: None,
        mismatches: 0,
        structural: Some(msg),
    };
    if e.dtype() != a.dtype() {
        return structural(format!("expected {}, got {}", e.dtype(), a.dtype()));
    }
    if e.sizes() != a.sizes() {
        return structural(format!(
            "expected shape {:?}, got {:?}",
            e.sizes(),
            a.sizes()
        ));
    }
    let mut check = OutputCheck {
        max_abs_error: 0.0,
        worst_index: None,
        mismatches: 0,
        structural: None,
    };
    let mut visit = |i: usize, x: f64, y: f64, approx: bool| {
        let (bad, diff) = if approx {
            element(x, y, tol)
        } else {
            (x != y, (x - y).abs())
        };
        if bad {
            check.mismatches += 1;
        }
        if check.worst_index.is_none() || diff > check.max_abs_error || diff.is_nan() {
            check.max_abs_error = diff;
            check.worst_index = Some(i);
        }
    };
    let (eb, ab) = (e.bytes(), a.bytes());
    macro_rules! each {
        ($t:ty, $approx:expr, $conv:expr) => {{
            let n = core::mem::size_of::<$t>();
            for (i, (x, y)) in eb.chunks_exact(n).zip(ab.chunks_exact(n)).enumerate() {
                let x: $t = bytemuck::pod_read_unaligned(x);
                let y: $t = bytemuck::pod_read_unaligned(y);
                visit(i, $conv(x), $conv(y), $approx);
            }
        }};
    }
    match e.dtype() {
        ScalarType::Float => each!(f32, true, f64::from),
        ScalarType::Double => each!(f64, true, |v| v),
        ScalarType::Half => each!(u16, true, |v| half::f16::from_bits(v).to_f64()),
        ScalarType::BFloat16 => each!(u16, true, |v| half::bf16::from_bits(v).to_f64()),
        ScalarType::Long => each!(i64, false, |v| v as f64),
        ScalarType::Int => each!(i32, false, f64::from),
        ScalarType::Short => each!(i16, false, f64::from),
        ScalarType::Char => each!(i8, false, f64::from),
        ScalarType::Byte | ScalarType::Bool => each!(u8, false, f64::from),
        _ => {
            // Bytes for the rest (quantized, unsigned wide): equal or not.
            for (i, (x, y)) in eb.iter().zip(ab).enumerate() {
                visit(i, f64::from(*x), f64::from(*y), false);
            }
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> EValue {
        EValue::Tensor(Tensor::from_slice(v, &[v.len()]).unwrap())
    }

    #[test]
    fn the_official_rule_case_by_case() {
        let tol = Tolerance {
            rtol: 1e-5,
            atol: 1e-8,
        };
        let cases: &[(&[f32], &[f32], usize)] = &[
            (&[1.0, 2.0], &[1.0, 2.0], 0),
            (&[f32::NAN, 1.0], &[f32::NAN, 1.0], 0),
            (&[f32::INFINITY], &[f32::INFINITY], 0),
            (&[f32::INFINITY], &[f32::NEG_INFINITY], 1),
            (&[1.0], &[f32::NAN], 1),
            (&[100.0], &[100.0005], 0),
            (&[100.0], &[100.01], 1),
            (&[0.0, 0.0], &[1e-9, 1e-7], 1),
        ];
        for (i, (e, a, bad)) in cases.iter().enumerate() {
            let c = compare_values(&t(e), &t(a), tol);
            assert_eq!(c.mismatches, *bad, "case {i}: {c:?}");
        }
    }

    #[test]
    fn dtype_shape_and_kind_differences_are_structural() {
        let tol = Tolerance::default();
        let i = EValue::Tensor(Tensor::from_slice(&[1i32], &[1]).unwrap());
        assert!(compare_values(&t(&[1.0]), &i, tol).structural.is_some());
        assert!(compare_values(&t(&[1.0, 2.0]), &t(&[1.0]), tol)
            .structural
            .is_some());
        assert!(compare_values(&t(&[1.0]), &EValue::Int(1), tol)
            .structural
            .is_some());
        let j = EValue::Tensor(Tensor::from_slice(&[3i64, 4], &[2]).unwrap());
        let k = EValue::Tensor(Tensor::from_slice(&[3i64, 5], &[2]).unwrap());
        let c = compare_values(&j, &k, tol);
        assert_eq!(
            (c.mismatches, c.worst_index, c.max_abs_error),
            (1, Some(1), 1.0)
        );
    }
}
