//! Bundled programs (`.bpte`): a program with test inputs and expected outputs per method.
//!
//! The official `serialize_from_bundled_program_to_flatbuffer` writes a flatbuffer
//! (identifier `BP08`) holding the whole `.pte` file as a byte vector and, per method, a
//! list of test cases. [`BundledProgram::parse`] verifies the flatbuffer and converts every
//! value into an [`EValue`], so that a bad file is reported here, naming the method, case
//! and value, and never while running.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use ptero_core::ScalarType;
use ptero_runtime::{EValue, Tensor};

use crate::bundled_generated::bundled_program_flatbuffer as fb;

/// The file identifier of a bundled program, at bytes 4..8.
pub const BUNDLED_IDENTIFIER: &[u8; 4] = b"BP08";

/// Whether `bytes` look like a bundled program (its identifier, not a full check).
pub fn is_bundled_program(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(&BUNDLED_IDENTIFIER[..])
}

/// Why a bundled program could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundledError {
    /// Not a `BP08` file.
    NotBundled { found: [u8; 4] },
    /// The flatbuffer verifier refused it.
    Flatbuffer(String),
    /// The program bytes are missing.
    NoProgram,
    /// A test value that cannot be used: where, and why.
    Value {
        method: String,
        case: usize,
        what: &'static str,
        index: usize,
        message: String,
    },
}

impl core::fmt::Display for BundledError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BundledError::NotBundled { found } => write!(
                f,
                "not a bundled program: identifier {:?}, expected \"BP08\"",
                String::from_utf8_lossy(found)
            ),
            BundledError::Flatbuffer(e) => write!(f, "bundled program is malformed: {e}"),
            BundledError::NoProgram => write!(f, "bundled program holds no program"),
            BundledError::Value {
                method,
                case,
                what,
                index,
                message,
            } => write!(
                f,
                "method {method:?}, test case {case}, {what} {index}: {message}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for BundledError {}

/// One test case of a method: inputs and the outputs they should produce.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub inputs: Vec<EValue>,
    pub expected_outputs: Vec<EValue>,
}

/// The test cases of one method.
#[derive(Debug, Clone)]
pub struct TestSuite {
    pub method_name: String,
    pub cases: Vec<TestCase>,
}

/// A parsed bundled program; the program bytes are borrowed from the file.
///
/// ```
/// use ptero_devtools::{BundledProgram, BundledError};
/// assert!(matches!(BundledProgram::parse(b"not a bundled program"), Err(BundledError::NotBundled { .. })));
/// ```
#[derive(Debug, Clone)]
pub struct BundledProgram<'a> {
    pub version: u32,
    /// The embedded `.pte` file, as written by the exporter.
    pub program: &'a [u8],
    pub suites: Vec<TestSuite>,
}

impl<'a> BundledProgram<'a> {
    /// Verifies `bytes` and reads every test case.
    pub fn parse(bytes: &'a [u8]) -> Result<BundledProgram<'a>, BundledError> {
        if !is_bundled_program(bytes) {
            let mut found = [0u8; 4];
            if let Some(id) = bytes.get(4..8) {
                found.copy_from_slice(id);
            }
            return Err(BundledError::NotBundled { found });
        }
        let opts = flatbuffers::VerifierOptions {
            max_tables: 1 << 24,
            max_apparent_size: 1 << 40,
            ..Default::default()
        };
        let root = fb::root_as_bundled_program_with_opts(&opts, bytes)
            .map_err(|e| BundledError::Flatbuffer(e.to_string()))?;
        let program = root.program().ok_or(BundledError::NoProgram)?.bytes();
        if program.is_empty() {
            return Err(BundledError::NoProgram);
        }
        let mut suites = Vec::new();
        for suite in root.method_test_suites().iter().flatten() {
            let method_name = suite.method_name().unwrap_or("").to_string();
            let mut cases = Vec::new();
            for (ci, case) in suite.test_cases().iter().flatten().enumerate() {
                let values = |list: Option<
                    flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::Value<'a>>>,
                >,
                              what: &'static str| {
                    list.iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, v)| {
                            value(v).map_err(|message| BundledError::Value {
                                method: method_name.clone(),
                                case: ci,
                                what,
                                index: i,
                                message,
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                cases.push(TestCase {
                    inputs: values(case.inputs(), "input")?,
                    expected_outputs: values(case.expected_outputs(), "expected output")?,
                });
            }
            suites.push(TestSuite { method_name, cases });
        }
        Ok(BundledProgram {
            version: root.version(),
            program,
            suites,
        })
    }

    /// The suite of `method`, if the file has one.
    pub fn suite(&self, method: &str) -> Option<&TestSuite> {
        self.suites.iter().find(|s| s.method_name == method)
    }
}

fn value(v: fb::Value<'_>) -> Result<EValue, String> {
    match v.val_type() {
        fb::ValueUnion::Int => Ok(EValue::Int(v.val_as_int().map_or(0, |i| i.int_val()))),
        fb::ValueUnion::Bool => Ok(EValue::Bool(v.val_as_bool().is_some_and(|b| b.bool_val()))),
        fb::ValueUnion::Double => Ok(EValue::Double(
            v.val_as_double().map_or(0.0, |d| d.double_val()),
        )),
        fb::ValueUnion::Tensor => {
            let t = v.val_as_tensor().ok_or("tensor value without its table")?;
            tensor(t).map(EValue::Tensor)
        }
        other => Err(format!("unsupported value type {}", other.0)),
    }
}

fn tensor(t: fb::Tensor<'_>) -> Result<Tensor, String> {
    let code = t.scalar_type().0;
    let dtype = ScalarType::from_code(i64::from(code))
        .ok_or_else(|| format!("unknown scalar type {code}"))?;
    let sizes = t
        .sizes()
        .iter()
        .flatten()
        .map(|s| usize::try_from(s).map_err(|_| format!("negative size {s}")))
        .collect::<Result<Vec<usize>, _>>()?;
    let data = t.data().map_or(&[][..], |d| d.bytes());
    let numel = sizes
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {sizes:?} overflows"))?;
    let want = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| format!("shape {sizes:?} overflows"))?;
    if data.len() != want {
        return Err(format!(
            "a {dtype} tensor of shape {sizes:?} needs {want} bytes, the file holds {}",
            data.len()
        ));
    }
    let order: Vec<usize> = t
        .dim_order()
        .map(|d| d.bytes().iter().map(|&x| usize::from(x)).collect())
        .unwrap_or_default();
    let contiguous = order.is_empty() || order.iter().enumerate().all(|(i, &d)| i == d);
    if contiguous {
        return Tensor::from_bytes(dtype, &sizes, data).map_err(|e| e.to_string());
    }
    let mut seen = vec![false; sizes.len()];
    if order.len() != sizes.len()
        || order
            .iter()
            .any(|&d| d >= sizes.len() || core::mem::replace(&mut seen[d], true))
    {
        return Err(format!(
            "dim order {order:?} is not a permutation of {} dims",
            sizes.len()
        ));
    }
    let bytes = to_row_major(data, &sizes, &order, dtype.size());
    Tensor::from_bytes(dtype, &sizes, &bytes).map_err(|e| e.to_string())
}

/// `data` laid out with its dims in `order` (outermost first), rewritten row-major.
fn to_row_major(data: &[u8], sizes: &[usize], order: &[usize], elem: usize) -> Vec<u8> {
    let n = sizes.len();
    // Element stride of each logical dim in the stored layout.
    let mut stride = vec![0usize; n];
    let mut s = 1usize;
    for &d in order.iter().rev() {
        stride[d] = s;
        s *= sizes[d];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; n];
    let numel = data.len() / elem.max(1);
    for _ in 0..numel {
        let off: usize = idx.iter().zip(&stride).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&data[off * elem..(off + 1) * elem]);
        for d in (0..n).rev() {
            idx[d] += 1;
            if idx[d] < sizes[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_data_is_rewritten_row_major() {
        // Logical [1, 2, 2, 3] (N, C, H, W) stored as N, H, W, C.
        let sizes = [1usize, 2, 2, 3];
        let mut stored = Vec::new();
        for h in 0..2u8 {
            for w in 0..3u8 {
                for c in 0..2u8 {
                    stored.push(c * 100 + h * 10 + w);
                }
            }
        }
        let out = to_row_major(&stored, &sizes, &[0, 2, 3, 1], 1);
        let want: Vec<u8> = (0..2u8)
            .flat_map(|c| (0..2u8).flat_map(move |h| (0..3u8).map(move |w| c * 100 + h * 10 + w)))
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn a_pte_is_not_a_bundled_program() {
        let e = BundledProgram::parse(b"\0\0\0\0ET12rest").unwrap_err();
        assert_eq!(e, BundledError::NotBundled { found: *b"ET12" });
        assert!(e.to_string().contains("BP08"));
    }
}
