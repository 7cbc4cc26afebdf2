//! Learns each kernel's argument kinds by asking it: a kernel given the wrong kind says
//! which argument and what it expected (`ArgKind`), too few arguments says how many
//! (`ArgCount`), a wrong dtype names the argument (`Dtype`). A few dozen benign calls per
//! kernel recover a usable signature, so hostile values then reach the kernel's body
//! instead of bouncing off its argument checks. Deterministic: the supervisor and its
//! workers learn the same signatures.

use ptero_core::Error as KError;
use ptero_format::fb;
use ptero_runtime::Error;

use crate::gen::{kernel_program, Kind};
use crate::rng::Rng;

/// A learned signature: argument kinds (without the trailing return slot) and the index
/// of the first out-argument.
#[derive(Debug, Clone)]
pub struct Signature {
    pub op: String,
    pub kinds: Vec<Kind>,
    pub first_out: usize,
    /// Why learning stopped: the last call's outcome.
    pub stopped: String,
}

fn kind_named(expected: &str, old: Kind) -> Kind {
    let dt = match old {
        Kind::Tensor(d) | Kind::OptTensor(d) | Kind::TensorList(d) => d,
        _ => fb::ScalarType::FLOAT,
    };
    match expected {
        "Int" | "Int list item" => Kind::Int,
        "Double" => Kind::Double,
        "Bool" => Kind::Bool,
        "Scalar" => Kind::Scalar,
        "String" => Kind::Str,
        "IntList" => Kind::IntList,
        "DoubleList" => Kind::DoubleList,
        "BoolList" => Kind::BoolList,
        "TensorList" | "Tensor list item" => Kind::TensorList(dt),
        "Tensor or None" => Kind::OptTensor(dt),
        "Bool or bool Tensor" => Kind::Bool,
        _ => Kind::Tensor(dt),
    }
}

fn dtype_named(expected: &str, tried: usize) -> fb::ScalarType {
    let e = expected.to_ascii_lowercase();
    let pick = |list: &[fb::ScalarType]| list[tried % list.len()];
    if e.contains("bool") {
        pick(&[fb::ScalarType::BOOL, fb::ScalarType::BYTE])
    } else if e.contains("int64") || e.contains("long") || e.contains("integer") {
        pick(&[fb::ScalarType::LONG, fb::ScalarType::INT])
    } else if e.contains("char") {
        fb::ScalarType::CHAR
    } else if e.contains("int32") {
        fb::ScalarType::INT
    } else if e.contains("uint8") || e.contains("byte") {
        fb::ScalarType::BYTE
    } else {
        pick(&[
            fb::ScalarType::FLOAT,
            fb::ScalarType::LONG,
            fb::ScalarType::BOOL,
            fb::ScalarType::CHAR,
            fb::ScalarType::BYTE,
            fb::ScalarType::DOUBLE,
        ])
    }
}

fn set_dtype(k: Kind, dt: fb::ScalarType) -> Kind {
    match k {
        Kind::OptTensor(_) => Kind::OptTensor(dt),
        Kind::TensorList(_) => Kind::TensorList(dt),
        _ => Kind::Tensor(dt),
    }
}

fn first_out(kinds: &[Kind]) -> usize {
    let mut i = kinds.len();
    while i > 0 && matches!(kinds[i - 1], Kind::Tensor(_) | Kind::TensorList(_)) {
        i -= 1;
    }
    // All tensors (unary and binary ops): the last one is the out.
    if i == 0 {
        kinds.len().saturating_sub(1)
    } else {
        i
    }
}

/// Learns the signature of `op` by running benign single-kernel programs.
pub fn learn(op: &str, run: &dyn Fn(&[u8]) -> Result<(), Error>) -> Signature {
    let mut kinds: Vec<Kind> = Vec::new();
    let mut dtype_tries = vec![0usize; 64];
    let mut rng = Rng::new(0);
    let mut stopped = String::new();
    // Shapes to try when a kernel rejects the current one (pooling wants 4-d, etc.).
    const BASES: [&[i32]; 4] = [&[2, 3], &[1, 2, 4, 4], &[2, 4, 3], &[2, 2, 3, 4, 2]];
    let mut base = 0;
    for _ in 0..64 {
        let fo = first_out(&kinds);
        let bytes = kernel_program(&mut rng, op, &kinds, fo, Some(BASES[base]));
        let r = run(&bytes);
        stopped = match &r {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        };
        let source = match r {
            Err(Error::Execution { source, .. }) => source,
            _ if base + 1 < BASES.len() && r.is_err() => {
                base += 1;
                continue;
            }
            _ => break,
        };
        match source {
            KError::ArgCount { expected, .. } if expected > kinds.len() + 1 => {
                kinds.resize(expected - 1, Kind::Tensor(fb::ScalarType::FLOAT));
            }
            KError::ArgCount { expected, .. } if expected == kinds.len() + 1 => {
                kinds.push(Kind::Tensor(fb::ScalarType::FLOAT));
            }
            KError::ArgKind { arg, expected, .. } if arg < 64 => {
                if arg >= kinds.len() {
                    kinds.resize(arg + 1, Kind::Tensor(fb::ScalarType::FLOAT));
                    kinds[arg] = kind_named(expected, kinds[arg]);
                    continue;
                }
                let k = kind_named(expected, kinds[arg]);
                if k == kinds[arg] {
                    break;
                }
                kinds[arg] = k;
            }
            KError::BadValueIndex { .. } => {
                kinds.push(Kind::Tensor(fb::ScalarType::FLOAT));
            }
            KError::Dtype { arg, expected, .. } if arg < kinds.len() => {
                dtype_tries[arg] += 1;
                if dtype_tries[arg] > 6 {
                    break;
                }
                kinds[arg] = set_dtype(kinds[arg], dtype_named(&expected, dtype_tries[arg]));
            }
            KError::Shape(_) | KError::InvalidArgument(_) | KError::Resize { .. }
                if base + 1 < BASES.len() =>
            {
                base += 1;
            }
            _ => break,
        }
        if kinds.len() > 24 {
            break;
        }
    }
    Signature {
        op: op.to_string(),
        first_out: first_out(&kinds),
        kinds,
        stopped,
    }
}
