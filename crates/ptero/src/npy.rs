//! NumPy `.npy` files: what PyTorch users already have (`np.save`) for inputs, and what
//! `ptero run --output-dir` writes.

use std::path::Path;

use ptero_core::ScalarType;
use ptero_runtime::{Error, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("not a valid .npy file: {}", msg.into()))
}

fn descr_dtype(descr: &str) -> Option<(ScalarType, bool)> {
    // (dtype, big_endian)
    let (order, code) = descr.split_at(1.min(descr.len()));
    let big = order == ">";
    let t = match code {
        "f4" => ScalarType::Float,
        "f8" => ScalarType::Double,
        "f2" => ScalarType::Half,
        "i1" => ScalarType::Char,
        "i2" => ScalarType::Short,
        "i4" => ScalarType::Int,
        "i8" => ScalarType::Long,
        "u1" => ScalarType::Byte,
        "u2" => ScalarType::UInt16,
        "u4" => ScalarType::UInt32,
        "u8" => ScalarType::UInt64,
        "b1" => ScalarType::Bool,
        _ => return None,
    };
    Some((t, big))
}

fn dtype_descr(t: ScalarType) -> Option<&'static str> {
    Some(match t {
        ScalarType::Float => "<f4",
        ScalarType::Double => "<f8",
        ScalarType::Half => "<f2",
        ScalarType::Char => "|i1",
        ScalarType::Short => "<i2",
        ScalarType::Int => "<i4",
        ScalarType::Long => "<i8",
        ScalarType::Byte => "|u1",
        ScalarType::UInt16 => "<u2",
        ScalarType::UInt32 => "<u4",
        ScalarType::UInt64 => "<u8",
        ScalarType::Bool => "|b1",
        _ => return None,
    })
}

/// Value of `'key':` in the header dict, up to the next top-level comma or brace.
fn field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let pat = format!("'{key}':");
    let start = header.find(&pat)? + pat.len();
    let rest = header[start..].trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        Some(&rest[..=end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

/// Parses `.npy` bytes.
pub fn from_bytes(data: &[u8]) -> Result<Tensor, Error> {
    if data.len() < 10 || &data[..6] != MAGIC {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let major = data[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([data[8], data[9]]) as usize, 10),
        2 | 3 => {
            if data.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let header = data
        .get(hstart..hstart + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let descr = field(header, "descr")
        .ok_or_else(|| bad("no 'descr'"))?
        .trim_matches(|c| c == '\'' || c == '"');
    let (dtype, big) =
        descr_dtype(descr).ok_or_else(|| bad(format!("unsupported dtype '{descr}'")))?;
    let fortran =
        field(header, "fortran_order").ok_or_else(|| bad("no 'fortran_order'"))? == "True";
    let shape_s = field(header, "shape").ok_or_else(|| bad("no 'shape'"))?;
    let mut shape = Vec::new();
    for part in shape_s.trim_matches(|c| c == '(' || c == ')').split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        shape.push(
            p.parse::<usize>()
                .map_err(|_| bad(format!("bad shape {shape_s}")))?,
        );
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape too large"))?;
    let nbytes = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| bad("shape too large"))?;
    let body = data
        .get(hstart + hlen..hstart + hlen + nbytes)
        .ok_or_else(|| {
            bad(format!(
                "data is truncated: shape {shape:?} needs {nbytes} bytes, the file has {}",
                data.len() - hstart - hlen
            ))
        })?;
    let mut bytes = body.to_vec();
    if big && dtype.size() > 1 {
        for c in bytes.chunks_mut(dtype.size()) {
            c.reverse();
        }
    }
    if fortran && shape.len() > 1 {
        bytes = fortran_to_c(&bytes, &shape, dtype.size());
    }
    Tensor::from_bytes(dtype, &shape, &bytes)
}

fn fortran_to_c(src: &[u8], shape: &[usize], es: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    let rank = shape.len();
    // Fortran strides: first dim fastest.
    let mut fstrides = vec![1usize; rank];
    for d in 1..rank {
        fstrides[d] = fstrides[d - 1] * shape[d - 1];
    }
    let mut idx = vec![0usize; rank];
    let numel: usize = shape.iter().product();
    for linear in 0..numel {
        let f: usize = idx.iter().zip(&fstrides).map(|(i, s)| i * s).sum();
        out[linear * es..(linear + 1) * es].copy_from_slice(&src[f * es..(f + 1) * es]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Reads a `.npy` file.
pub fn read(path: impl AsRef<Path>) -> Result<Tensor, Error> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    from_bytes(&data).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", path.display())),
        e => e,
    })
}

/// Serializes a tensor as `.npy` (version 1.0, C order). bfloat16, which NumPy lacks, is
/// written as float32.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>, Error> {
    let (descr, body): (&str, Vec<u8>) = match dtype_descr(t.dtype()) {
        Some(d) => (d, t.bytes().to_vec()),
        None if t.dtype() == ScalarType::BFloat16 => {
            let v: Vec<f32> = t
                .bytes()
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        None => {
            return Err(Error::InvalidArgument(format!(
                "{} tensors cannot be saved as .npy",
                t.dtype()
            )))
        }
    };
    let shape = match t.sizes() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes a tensor to a `.npy` file.
pub fn write(path: impl AsRef<Path>, t: &Tensor) -> Result<(), Error> {
    let path = path.as_ref();
    std::fs::write(path, to_bytes(t)?).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let cases = [
            Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap(),
            Tensor::from_slice(&[7i64], &[]).unwrap(),
            Tensor::from_bools(&[true, false], &[2]).unwrap(),
            Tensor::from_slice::<f64>(&[], &[0, 3]).unwrap(),
        ];
        for t in cases {
            let b = to_bytes(&t).unwrap();
            assert_eq!((b.len() - t.bytes().len()) % 64, 0);
            assert_eq!(from_bytes(&b).unwrap(), t);
        }
    }

    #[test]
    fn fortran_and_errors() {
        let t = Tensor::from_slice(&[1i32, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
        let mut b = to_bytes(&t).unwrap();
        let s = String::from_utf8_lossy(&b[10..])
            .replace("'fortran_order': False", "'fortran_order': True ");
        b.truncate(10);
        b.extend_from_slice(&s.as_bytes()[..s.len() - 24]);
        b.extend_from_slice(&[
            1, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 6, 0, 0, 0,
        ]);
        assert_eq!(from_bytes(&b).unwrap(), t);
        assert!(from_bytes(b"nope").is_err());
        let full = to_bytes(&t).unwrap();
        for cut in 0..full.len() {
            assert!(from_bytes(&full[..cut]).is_err());
        }
    }
}
