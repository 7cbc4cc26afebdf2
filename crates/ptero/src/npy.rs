//! NumPy `.npy` files: what PyTorch users already have (`np.save`) for inputs, and what
//! `ptero run --output-dir` writes.
//!
//! Reading is strict, because `.npy` files are untrusted input: the header must be the
//! dict NumPy writes (`descr`, `fortran_order`, `shape` and nothing else), the data must
//! be exactly as long as the header says, and nothing may follow it. A file is read in
//! two steps, the header and then exactly the data it announces, so a stream that never
//! ends (a pipe, `/dev/zero`) costs at most the announced size, itself bounded by a
//! memory limit.
//!
//! ```no_run
//! let x = ptero::npy::read("input.npy")?;
//! ptero::npy::write("copy.npy", &x)?;
//! # Ok::<(), ptero::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::path::Path;

use ptero_core::{read_full, ScalarType};
use ptero_runtime::{Error, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Longest header accepted, in bytes: NumPy's own default bound (`max_header_size`).
/// Real headers are under a few hundred bytes.
pub const MAX_HEADER_LEN: usize = 10_000;

/// Most dimensions accepted (NumPy's `NPY_MAXDIMS`).
pub const MAX_DIMS: usize = 64;

/// Why a read failed; the caller adds where.
enum Fail {
    /// The bytes are not a valid `.npy` file.
    Format(String),
    /// The file is valid but too large for the limit or the allocator.
    Memory(String),
    Io(io::Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Io(e)
    }
}

fn bad(msg: impl Into<String>) -> Fail {
    Fail::Format(msg.into())
}

/// Where the header parser stood, for error messages.
fn show(b: Option<u8>) -> String {
    match b {
        None => "the end of the header".into(),
        Some(c) if c.is_ascii_graphic() => format!("'{}'", c as char),
        Some(b' ') => "a space".into(),
        Some(c) => format!("byte 0x{c:02x}"),
    }
}

/// A minimal reader of the Python dict literal NumPy writes as the header.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, context: &str) -> Result<(), Fail> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(bad(format!(
                "header: expected '{}' {context} at byte {}, found {}",
                c as char,
                self.i,
                show(self.peek())
            )))
        }
    }

    /// A quoted string without escapes (NumPy's keys and type codes need none).
    fn string(&mut self, context: &str) -> Result<&'a str, Fail> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            other => {
                return Err(bad(format!(
                    "header: expected a quoted string {context} at byte {}, found {}",
                    self.i,
                    show(other)
                )))
            }
        };
        self.i += 1;
        let start = self.i;
        loop {
            match self.peek() {
                Some(c) if c == quote => break,
                Some(c) if c == b' ' || (c.is_ascii_graphic() && c != b'\\') => self.i += 1,
                other => {
                    return Err(bad(format!(
                        "header: unexpected {} in a string {context} at byte {}",
                        show(other),
                        self.i
                    )))
                }
            }
        }
        let s = &self.s[start..self.i];
        self.i += 1;
        // Only printable ASCII was accepted above, so this cannot fail.
        std::str::from_utf8(s).map_err(|_| bad("header: a string is not ASCII"))
    }

    /// A bare word such as `True`.
    fn word(&mut self) -> &'a [u8] {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A non-negative decimal integer, as Python writes it.
    fn int(&mut self) -> Result<usize, Fail> {
        let start = self.i;
        let digits = self.word();
        let text = String::from_utf8_lossy(digits);
        let valid = !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit)
            && (digits.len() == 1 || digits[0] != b'0');
        if !valid {
            return Err(bad(format!(
                "header: expected a dimension (a non-negative integer) at byte {start}, found {}",
                if digits.is_empty() {
                    show(self.peek())
                } else {
                    format!("'{text}'")
                }
            )));
        }
        text.parse::<usize>()
            .map_err(|_| bad(format!("header: dimension {text} is too large")))
    }

    /// `()`, `(3,)`, `(2, 3)` or `(2, 3,)`.
    fn shape(&mut self) -> Result<Vec<usize>, Fail> {
        self.expect(b'(', "to open the shape tuple")?;
        let mut dims = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.ws();
            if self.peek() == Some(b')') {
                self.i += 1;
                break;
            }
            if dims.len() == MAX_DIMS {
                return Err(bad(format!("shape has more than {MAX_DIMS} dimensions")));
            }
            dims.push(self.int()?);
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    trailing_comma = true;
                }
                Some(b')') => {
                    self.i += 1;
                    trailing_comma = false;
                    break;
                }
                other => {
                    return Err(bad(format!(
                        "header: expected ',' or ')' in the shape at byte {}, found {}",
                        self.i,
                        show(other)
                    )))
                }
            }
        }
        if dims.len() == 1 && !trailing_comma {
            // `(3)` is the integer 3 in Python, not a tuple.
            return Err(bad(format!(
                "shape ({}) is not a tuple; a 1-d shape is written ({},)",
                dims[0], dims[0]
            )));
        }
        Ok(dims)
    }
}

/// The parsed header.
struct Header {
    dtype: ScalarType,
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
    /// Bytes of data the shape and dtype call for.
    nbytes: usize,
}

fn parse_header(text: &[u8]) -> Result<Header, Fail> {
    let mut p = Parser { s: text, i: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.ws();
    p.expect(b'{', "to open the header dict")?;
    loop {
        p.ws();
        if p.peek() == Some(b'}') {
            p.i += 1;
            break;
        }
        let key_at = p.i;
        let key = p.string("as a key")?;
        p.ws();
        p.expect(b':', &format!("after key '{key}'"))?;
        p.ws();
        let duplicate = match key {
            "descr" => {
                if p.peek() == Some(b'[') {
                    return Err(bad(
                        "structured dtypes (a list as 'descr') are not supported",
                    ));
                }
                descr
                    .replace(p.string("as the value of 'descr'")?)
                    .is_some()
            }
            "fortran_order" => {
                let at = p.i;
                let value = match p.word() {
                    b"True" => true,
                    b"False" => false,
                    w => {
                        return Err(bad(format!(
                            "'fortran_order' must be True or False, found {} at byte {at}",
                            if w.is_empty() {
                                show(p.peek())
                            } else {
                                format!("'{}'", String::from_utf8_lossy(w))
                            }
                        )))
                    }
                };
                fortran.replace(value).is_some()
            }
            "shape" => shape.replace(p.shape()?).is_some(),
            other => {
                return Err(bad(format!(
                    "unexpected key '{other}' in the header at byte {key_at} (expected \
                     'descr', 'fortran_order' and 'shape')"
                )))
            }
        };
        if duplicate {
            return Err(bad(format!("key '{key}' appears twice in the header")));
        }
        p.ws();
        match p.peek() {
            Some(b',') => p.i += 1,
            Some(b'}') => {
                p.i += 1;
                break;
            }
            other => {
                return Err(bad(format!(
                    "header: expected ',' or '}}' at byte {}, found {}",
                    p.i,
                    show(other)
                )))
            }
        }
    }
    p.ws();
    if p.i != text.len() {
        return Err(bad(format!(
            "header: unexpected {} at byte {} after the dict (only spaces and a newline may \
             follow it)",
            show(p.peek()),
            p.i
        )));
    }
    let descr = descr.ok_or_else(|| bad("the header has no 'descr' key"))?;
    let fortran = fortran.ok_or_else(|| bad("the header has no 'fortran_order' key"))?;
    let shape = shape.ok_or_else(|| bad("the header has no 'shape' key"))?;
    let (dtype, big_endian) = descr_dtype(descr)?;
    // Zero dims are skipped so that no partial product of the sizes overflows either:
    // code downstream multiplies them without checking, even for an empty array.
    let nbytes = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .map(|b| if shape.contains(&0) { 0 } else { b })
        .ok_or_else(|| {
            bad(format!(
                "shape {shape:?} of {dtype} is too large (its size in bytes overflows)"
            ))
        })?;
    Ok(Header {
        dtype,
        big_endian,
        fortran,
        shape,
        nbytes,
    })
}

/// `(dtype, big_endian)` of a type string such as `<f4`.
fn descr_dtype(descr: &str) -> Result<(ScalarType, bool), Fail> {
    let unsupported = || {
        bad(format!(
            "unsupported dtype '{descr}' (expected a byte order '<', '>' or '|' and one of \
             f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1)"
        ))
    };
    let b = descr.as_bytes();
    let [order, kind, width] = b else {
        return Err(unsupported());
    };
    let t = match (kind, width) {
        (b'f', b'2') => ScalarType::Half,
        (b'f', b'4') => ScalarType::Float,
        (b'f', b'8') => ScalarType::Double,
        (b'i', b'1') => ScalarType::Char,
        (b'i', b'2') => ScalarType::Short,
        (b'i', b'4') => ScalarType::Int,
        (b'i', b'8') => ScalarType::Long,
        (b'u', b'1') => ScalarType::Byte,
        (b'u', b'2') => ScalarType::UInt16,
        (b'u', b'4') => ScalarType::UInt32,
        (b'u', b'8') => ScalarType::UInt64,
        (b'b', b'1') => ScalarType::Bool,
        _ => return Err(unsupported()),
    };
    // '|' means "byte order does not apply", which NumPy only writes for 1-byte types.
    let big = match order {
        b'<' => false,
        b'>' => true,
        b'|' if t.size() == 1 => false,
        _ => return Err(unsupported()),
    };
    Ok((t, big))
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

/// Reads one `.npy` file from `r`: the header, then exactly the data it announces.
/// `total_len` is the source's length when known (a regular file), checked before any
/// data is allocated.
fn read_npy(r: &mut impl Read, total_len: Option<u64>, max_bytes: usize) -> Result<Tensor, Fail> {
    let mut pre = [0u8; 12];
    let got = read_full(r, &mut pre[..8])?;
    if got < MAGIC.len() || pre[..MAGIC.len()] != *MAGIC {
        return Err(bad("it does not start with the \\x93NUMPY magic"));
    }
    if got < 8 {
        return Err(bad(format!(
            "truncated: the file ends after {got} bytes, inside the preamble"
        )));
    }
    let len_bytes = match (pre[6], pre[7]) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        (major, minor) => {
            return Err(bad(format!(
                "unsupported format version {major}.{minor} (expected 1.0, 2.0 or 3.0)"
            )))
        }
    };
    let preamble = 8 + len_bytes;
    if read_full(r, &mut pre[8..preamble])? < len_bytes {
        return Err(bad("truncated: the file ends inside the header length"));
    }
    let hlen = if len_bytes == 2 {
        u16::from_le_bytes([pre[8], pre[9]]) as usize
    } else {
        // A u32 always fits the 64-bit and 32-bit targets Ptero supports; saturate otherwise.
        usize::try_from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]))
            .unwrap_or(usize::MAX)
    };
    if hlen > MAX_HEADER_LEN {
        return Err(bad(format!(
            "the header is {hlen} bytes, over the limit of {MAX_HEADER_LEN}"
        )));
    }
    let mut text = vec![0u8; hlen];
    let got = read_full(r, &mut text)?;
    if got < hlen {
        return Err(bad(format!(
            "truncated: the header should be {hlen} bytes, the file has {got}"
        )));
    }
    let h = parse_header(&text)?;
    let what = || format!("shape {:?} of {}", h.shape, h.dtype);
    if let Some(total) = total_len {
        let have = total.saturating_sub((preamble + hlen) as u64);
        let want = h.nbytes as u64;
        if have < want {
            return Err(bad(format!(
                "truncated: {} needs {want} bytes of data, the file has {have}",
                what()
            )));
        }
        if have > want {
            return Err(bad(format!(
                "{} bytes follow the data: {} needs {want} bytes of data, the file has {have}",
                have - want,
                what()
            )));
        }
    }
    if h.nbytes > max_bytes {
        return Err(Fail::Memory(format!(
            "{} needs {} bytes, over the memory limit of {max_bytes} bytes",
            what(),
            h.nbytes
        )));
    }
    // Fallible and lazily zeroed: pages are only touched as data actually arrives.
    let mut t = Tensor::zeros(h.dtype, &h.shape)
        .map_err(|_| Fail::Memory(format!("cannot allocate {} bytes for {}", h.nbytes, what())))?;
    let got = read_full(r, t.bytes_mut())?;
    if got < h.nbytes {
        return Err(bad(format!(
            "truncated: {} needs {} bytes of data, the file has {got}",
            what(),
            h.nbytes
        )));
    }
    if read_full(r, &mut [0u8; 1])? != 0 {
        return Err(bad(format!(
            "more bytes follow the data: {} needs {} bytes of data",
            what(),
            h.nbytes
        )));
    }
    let es = h.dtype.size();
    if h.big_endian && es > 1 {
        for c in t.bytes_mut().chunks_exact_mut(es) {
            c.reverse();
        }
    }
    if h.dtype == ScalarType::Bool {
        // NumPy reads any non-zero byte as True; kernels expect exactly 0 or 1.
        for b in t.bytes_mut() {
            *b = u8::from(*b != 0);
        }
    }
    if h.fortran && h.shape.len() > 1 {
        t = fortran_to_c(&t).ok_or_else(|| {
            Fail::Memory(format!(
                "cannot allocate {} bytes to reorder {} from Fortran order",
                h.nbytes,
                what()
            ))
        })?;
    }
    Ok(t)
}

/// The same array in C order, from data stored in Fortran order (first index fastest),
/// or `None` when the copy cannot be allocated.
fn fortran_to_c(src: &Tensor) -> Option<Tensor> {
    let shape = src.sizes();
    let es = src.dtype().size();
    let mut out = Tensor::zeros(src.dtype(), shape).ok()?;
    if src.bytes().is_empty() {
        return Some(out);
    }
    let rank = shape.len();
    // Every stride is at most the element count, which fits a usize (checked when the
    // header was parsed), so these products cannot overflow.
    let mut fstrides = vec![1usize; rank];
    for d in 1..rank {
        fstrides[d] = fstrides[d - 1] * shape[d - 1];
    }
    let numel = src.bytes().len() / es.max(1);
    let mut idx = vec![0usize; rank];
    let (from, to) = (src.bytes(), out.bytes_mut());
    for dst in to.chunks_exact_mut(es).take(numel) {
        let f: usize = idx.iter().zip(&fstrides).map(|(i, s)| i * s).sum();
        dst.copy_from_slice(from.get(f * es..(f + 1) * es)?);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}

/// Parses `.npy` bytes.
pub fn from_bytes(data: &[u8]) -> Result<Tensor, Error> {
    let mut r = data;
    read_npy(&mut r, Some(data.len() as u64), usize::MAX).map_err(|e| match e {
        Fail::Format(m) => Error::InvalidArgument(format!("not a valid .npy file: {m}")),
        Fail::Memory(m) => Error::InvalidArgument(m),
        Fail::Io(e) => Error::InvalidArgument(e.to_string()),
    })
}

/// Reads a `.npy` file whose data may take up to [`ptero_runtime::DEFAULT_MAX_MEMORY`]
/// bytes.
pub fn read(path: impl AsRef<Path>) -> Result<Tensor, Error> {
    read_with_limit(path, ptero_runtime::DEFAULT_MAX_MEMORY)
}

/// Reads a `.npy` file whose data may take up to `max_bytes` bytes.
///
/// Only the header and the data it announces are read: a regular file's length is
/// checked against the header before the data is allocated, and a pipe or device is
/// read no further than the data plus one byte (to tell that nothing follows).
pub fn read_with_limit(path: impl AsRef<Path>, max_bytes: usize) -> Result<Tensor, Error> {
    let path = path.as_ref();
    let io = |e: io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(Error::Io {
            path: path.display().to_string(),
            message: "is a directory, not a .npy file".into(),
        });
    }
    let total = meta.is_file().then_some(meta.len());
    read_npy(&mut file, total, max_bytes).map_err(|e| match e {
        Fail::Format(m) => {
            Error::InvalidArgument(format!("{}: not a valid .npy file: {m}", path.display()))
        }
        Fail::Memory(m) => Error::InvalidArgument(format!("{}: {m}", path.display())),
        Fail::Io(e) => io(e),
    })
}

/// The preamble and header of a C-order array, padded so the data starts on a 64-byte
/// boundary as NumPy does.
fn header_bytes(descr: &str, sizes: &[usize]) -> Vec<u8> {
    let shape = match sizes {
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
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1.0 stores the header length in 2 bytes; longer headers need 2.0.
    let (version, len_bytes) = if dict.len() + 64 <= u16::MAX as usize {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    let unpadded = MAGIC.len() + 2 + len_bytes + dict.len() + 1;
    let hlen = dict.len() + (64 - unpadded % 64) % 64 + 1;
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + len_bytes + hlen);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if len_bytes == 2 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + hlen - dict.len() - 1, b' ');
    out.push(b'\n');
    out
}

/// Type string and header of `t`, or an error for dtypes NumPy lacks.
fn layout(t: &Tensor) -> Result<(&'static str, Vec<u8>), Error> {
    let descr = match dtype_descr(t.dtype()) {
        Some(d) => d,
        None if t.dtype() == ScalarType::BFloat16 => "<f4",
        None => {
            return Err(Error::InvalidArgument(format!(
                "{} tensors cannot be saved as .npy",
                t.dtype()
            )))
        }
    };
    Ok((descr, header_bytes(descr, t.sizes())))
}

/// Writes the data of `t` as [`layout`] describes it.
fn write_body(t: &Tensor, w: &mut impl Write) -> io::Result<()> {
    if t.dtype() != ScalarType::BFloat16 {
        return w.write_all(t.bytes());
    }
    for c in t.bytes().chunks_exact(2) {
        let x = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

/// Serializes a tensor as `.npy` (version 1.0, C order). bfloat16, which NumPy lacks, is
/// written as float32.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>, Error> {
    let (_, mut out) = layout(t)?;
    let body = if t.dtype() == ScalarType::BFloat16 {
        t.bytes().len().saturating_mul(2)
    } else {
        t.bytes().len()
    };
    out.try_reserve_exact(body).map_err(|_| {
        Error::InvalidArgument(format!(
            "cannot allocate {body} bytes to serialize a tensor"
        ))
    })?;
    write_body(t, &mut out)
        .map_err(|e| Error::InvalidArgument(format!("cannot serialize a tensor: {e}")))?;
    Ok(out)
}

/// Writes a tensor to a `.npy` file (streamed: no copy of the data is made).
pub fn write(path: impl AsRef<Path>, t: &Tensor) -> Result<(), Error> {
    let path = path.as_ref();
    let (_, header) = layout(t)?;
    let fail =
        |e: io::Error| Error::InvalidArgument(format!("cannot write {}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(fail)?;
    let mut w = io::BufWriter::new(file);
    w.write_all(&header).map_err(fail)?;
    write_body(t, &mut w).map_err(fail)?;
    w.flush().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dict: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b
    }

    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut b = header(dict);
        b.extend_from_slice(data);
        b
    }

    fn err(b: &[u8]) -> String {
        match from_bytes(b) {
            Ok(t) => panic!("accepted as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

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

    #[test]
    fn fortran_3d_matches_numpy() {
        // np.asfortranarray(np.arange(24).reshape(2, 3, 4)).tobytes(order='F')
        let mut f = Vec::new();
        for k in 0..4 {
            for j in 0..3 {
                for i in 0..2 {
                    f.extend_from_slice(&((i * 12 + j * 4 + k) as i16).to_le_bytes());
                }
            }
        }
        let b = npy(
            "{'descr': '<i2', 'fortran_order': True, 'shape': (2, 3, 4), }\n",
            &f,
        );
        let want: Vec<i16> = (0..24).collect();
        assert_eq!(
            from_bytes(&b).unwrap(),
            Tensor::from_slice(&want, &[2, 3, 4]).unwrap()
        );
    }

    #[test]
    fn fortran_order_must_be_a_bool() {
        for v in ["Maybe", "1", "true", "'True'", "Truex", ""] {
            let d = format!("{{'descr': '<i4', 'fortran_order': {v}, 'shape': (1,), }}\n");
            let e = err(&npy(&d, &[0; 4]));
            assert!(
                e.contains("'fortran_order' must be True or False"),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn data_must_be_exactly_the_declared_size() {
        let d = "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }\n";
        assert!(from_bytes(&npy(d, &[0; 8])).is_ok());
        let e = err(&npy(d, &[0; 9]));
        assert!(
            e.contains("1 bytes follow the data") && e.contains("needs 8"),
            "{e}"
        );
        let e = err(&npy(d, &[0; 7]));
        assert!(
            e.contains("truncated") && e.contains("needs 8") && e.contains("has 7"),
            "{e}"
        );
    }

    #[test]
    fn header_syntax_is_checked() {
        let cases = [
            (
                "'descr': '<i4', 'fortran_order': False, 'shape': (1,)",
                "'{'",
            ),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1,)",
                "',' or '}'",
            ),
            (
                "{'descr': '<i4' 'fortran_order': False, 'shape': (1,)}",
                "',' or '}'",
            ),
            (
                "{'descr' '<i4', 'fortran_order': False, 'shape': (1,)}",
                "':'",
            ),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1,)} x",
                "after the dict",
            ),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1)}",
                "not a tuple",
            ),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (-1,)}",
                "dimension",
            ),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (01,)}",
                "'01'",
            ),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': [1]}",
                "'('",
            ),
            ("{'descr': '<i4', 'fortran_order': False}", "no 'shape'"),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                "'x'",
            ),
            (
                "{'descr': '<i4', 'descr': '<i4', 'fortran_order': False, 'shape': (1,)}",
                "twice",
            ),
            (
                "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,)}",
                "structured",
            ),
        ];
        for (dict, want) in cases {
            let e = err(&npy(dict, &[0; 4]));
            assert!(e.contains(want), "{dict}: '{e}' lacks {want}");
        }
    }

    #[test]
    fn hostile_descr_and_shapes_fail_cleanly() {
        let with = |descr: &[u8], shape: &str| {
            let mut d = b"{'descr': '".to_vec();
            d.extend_from_slice(descr);
            d.extend_from_slice(
                format!("', 'fortran_order': False, 'shape': {shape}, }}\n").as_bytes(),
            );
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&[1, 0]);
            b.extend_from_slice(&(d.len() as u16).to_le_bytes());
            b.extend_from_slice(&d);
            b
        };
        // Multi-byte characters where the byte order and type code go.
        for descr in [
            "é4".as_bytes(),
            "<é".as_bytes(),
            "€".as_bytes(),
            b"\xff<f4",
            b"",
        ] {
            assert!(err(&with(descr, "(1,)")).contains("not a valid .npy file"));
        }
        for descr in ["<f16", "|f4", "=f4", "<c8", "<U1", "f4"] {
            let e = err(&with(descr.as_bytes(), "(1,)"));
            assert!(e.contains("unsupported dtype"), "{descr}: {e}");
        }
        assert!(from_bytes(&with(b">f4", "(1,)")).is_err(), "no data");
        let e = err(&with(b"<f8", "(4294967296, 4294967296)"));
        assert!(e.contains("too large"), "{e}");
        let e = err(&with(b"<f8", "(99999999999999999999999,)"));
        assert!(e.contains("too large"), "{e}");
        // Empty, but the product of the other sizes overflows.
        let e = err(&with(b"<f8", "(4294967296, 4294967296, 0)"));
        assert!(e.contains("too large"), "{e}");
        let ok = from_bytes(&with(b"|u1", "(0, 4294967296)")).unwrap();
        assert_eq!(ok.sizes(), &[0, 4294967296]);
        let many = format!("({})", vec!["1"; 65].join(", "));
        assert!(err(&with(b"<f8", &many)).contains("more than 64"));
    }

    #[test]
    fn preamble_is_checked() {
        let good = to_bytes(&Tensor::from_slice(&[1u8], &[1]).unwrap()).unwrap();
        let mut v = good.clone();
        v[7] = 1;
        assert!(err(&v).contains("version 1.1"));
        let mut v = good.clone();
        v[6] = 4;
        assert!(err(&v).contains("version 4.0"));
        // Version 2.0 with a header length of 4 GB.
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[2, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(err(&v).contains("over the limit of 10000"));
    }

    #[test]
    fn big_endian_and_bools() {
        let d = "{'descr': '>i2', 'fortran_order': False, 'shape': (2,), }\n";
        let t = from_bytes(&npy(d, &[0, 1, 1, 0])).unwrap();
        assert_eq!(t.as_slice::<i16>().unwrap(), &[1, 256]);
        let d = "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }\n";
        let t = from_bytes(&npy(d, &[0, 2, 1])).unwrap();
        assert_eq!(t.bytes(), &[0, 1, 1]);
    }

    #[test]
    fn files_are_read_no_further_than_the_data() {
        let dir = std::env::temp_dir().join(format!("ptero-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npy");
        let t = Tensor::from_slice(&[1.5f32; 100], &[10, 10]).unwrap();
        write(&p, &t).unwrap();
        assert_eq!(read(&p).unwrap(), t);
        let e = read_with_limit(&p, 399).unwrap_err().to_string();
        assert!(
            e.contains("x.npy") && e.contains("400 bytes") && e.contains("limit of 399"),
            "{e}"
        );
        // A stream of valid header followed by endless data stops after the data.
        let head = header("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }\n");
        let mut stream = head.as_slice().chain(io::repeat(7));
        let e = match read_npy(&mut stream, None, 1 << 20) {
            Err(Fail::Format(m)) => m,
            _ => panic!("accepted an endless stream"),
        };
        assert!(e.contains("more bytes follow"), "{e}");
        #[cfg(unix)]
        {
            let e = read("/dev/zero").unwrap_err().to_string();
            assert!(e.contains("/dev/zero") && e.contains("magic"), "{e}");
        }
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
