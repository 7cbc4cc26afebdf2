//! The processed blob: an optional `XH00` header, the graph flatbuffer, constant data.
//!
//! Layout of the header (little-endian, 30 bytes, the flatbuffer starting after padding):
//! `[0, 4)` unused, `[4, 8)` the magic `XH00`, `[8, 10)` the header's length, `[10, 14)`
//! the flatbuffer's offset, `[14, 18)` its size, `[18, 22)` the constant data's offset,
//! `[22, 30)` its size. A blob without the magic is a bare flatbuffer (older exports).

use alloc::format;

use crate::error::{Result, XnnError};

/// Magic at bytes 4..8 of a blob with a header.
pub const MAGIC: &[u8; 4] = b"XH00";
/// Bytes of the header as the exporter writes it.
pub const HEADER_LEN: usize = 30;

/// A blob split into its parts; both slices lie inside the blob.
#[derive(Debug, Clone, Copy)]
pub struct Blob<'a> {
    pub flatbuffer: &'a [u8],
    /// Constants addressed by `ConstantDataOffset.offset` (empty without a header).
    pub constants: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Blob<'a> {
    /// Splits `bytes`, checking that every region the header names lies inside it.
    ///
    /// ```
    /// use ptero_xnnpack::blob::Blob;
    /// let mut b = vec![0u8; 44];
    /// b[4..8].copy_from_slice(b"XH00");
    /// b[8..10].copy_from_slice(&30u16.to_le_bytes());
    /// b[10..14].copy_from_slice(&32u32.to_le_bytes()); // flatbuffer at 32..40
    /// b[14..18].copy_from_slice(&8u32.to_le_bytes());
    /// b[18..22].copy_from_slice(&40u32.to_le_bytes()); // constants at 40..44
    /// b[22..30].copy_from_slice(&4u64.to_le_bytes());
    /// let blob = Blob::parse(&b).unwrap();
    /// assert_eq!((blob.flatbuffer.len(), blob.constants.len()), (8, 4));
    /// assert!(Blob::parse(&b[..43]).is_err());
    /// ```
    pub fn parse(bytes: &'a [u8]) -> Result<Blob<'a>> {
        if bytes.len() < 8 || &bytes[4..8] != MAGIC {
            return Ok(Blob {
                flatbuffer: bytes,
                constants: &[],
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(XnnError::Header(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        if len < HEADER_LEN {
            return Err(XnnError::Header(format!(
                "header length {len}, expected at least {HEADER_LEN}"
            )));
        }
        let fb_off = u32_at(bytes, 10) as u64;
        let fb_len = u32_at(bytes, 14) as u64;
        let c_off = u32_at(bytes, 18) as u64;
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[22..30]);
        let c_len = u64::from_le_bytes(c);
        let region = |what: &str, off: u64, n: u64| -> Result<&'a [u8]> {
            if n == 0 {
                return Ok(&[]);
            }
            let end = off.checked_add(n).filter(|&e| e <= bytes.len() as u64);
            match end {
                Some(end) if off >= len as u64 => Ok(&bytes[off as usize..end as usize]),
                _ => Err(XnnError::Header(format!(
                    "{what} at {off}..{} lies outside the blob's {} bytes (after its \
                     {len}-byte header)",
                    off.saturating_add(n),
                    bytes.len()
                ))),
            }
        };
        if fb_len < 8 {
            return Err(XnnError::Header(format!(
                "flatbuffer of {fb_len} bytes (a graph has at least 8)"
            )));
        }
        if c_len > 0 && c_off < fb_off.saturating_add(fb_len) {
            return Err(XnnError::Header(format!(
                "constant data at {c_off} overlaps the flatbuffer at {fb_off}..{}",
                fb_off + fb_len
            )));
        }
        Ok(Blob {
            flatbuffer: region("flatbuffer", fb_off, fb_len)?,
            constants: region("constant data", c_off, c_len)?,
        })
    }
}
