//! Reader for ExecuTorch external data files (`.ptd`, FlatTensor): the weights a program
//! keeps outside itself, addressed by key.
//!
//! Layout: a flatbuffer (root `flat_tensor_flatbuffer.FlatTensor`, identifier `FT01`) with
//! a 40-byte `FH01` header spliced in after byte 8 (flatbuffer offset and size, segment
//! base offset and size), followed by the data segments.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;

use crate::error::FormatError;
use crate::flat_tensor_generated::flat_tensor_flatbuffer as ft;

/// The header's magic, at byte 8.
pub const FLAT_TENSOR_MAGIC: &[u8; 4] = b"FH01";
/// The flatbuffer's file identifier, at byte 4.
pub const FLAT_TENSOR_IDENTIFIER: &[u8; 4] = b"FT01";

/// One keyed blob of a data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    pub key: String,
    /// Byte range in the file.
    pub range: Range<usize>,
}

/// A checked `.ptd` file: every entry's bytes lie inside it.
///
/// ```
/// use ptero_format::FlatTensorFile;
/// assert!(FlatTensorFile::parse(b"not a data file").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct FlatTensorFile {
    entries: Vec<DataEntry>,
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

impl FlatTensorFile {
    /// Validates `data` as a `.ptd` file and lists its entries.
    pub fn parse(data: &[u8]) -> Result<FlatTensorFile, FormatError> {
        let bad = |what: String| FormatError::BadHeader(format!(".ptd data file: {what}"));
        if data.len() < 48 {
            return Err(FormatError::TooShort {
                len: data.len(),
                needed: 48,
            });
        }
        if &data[4..8] != FLAT_TENSOR_IDENTIFIER || &data[8..12] != FLAT_TENSOR_MAGIC {
            return Err(bad(format!(
                "expected identifier \"FT01\" at byte 4 and header \"FH01\" at byte 8, found {:?} and {:?}",
                String::from_utf8_lossy(&data[4..8]),
                String::from_utf8_lossy(&data[8..12])
            )));
        }
        let len = u32_at(data, 12).unwrap_or(0);
        if len < 40 {
            return Err(bad(format!("header length {len}, at least 40 expected")));
        }
        let (fb_off, fb_size, seg_base, seg_size) = (
            u64_at(data, 16).unwrap_or(0),
            u64_at(data, 24).unwrap_or(0),
            u64_at(data, 32).unwrap_or(0),
            u64_at(data, 40).unwrap_or(0),
        );
        let fb_end = fb_off.checked_add(fb_size);
        let seg_end = seg_base.checked_add(seg_size);
        match (fb_end, seg_end) {
            (Some(f), Some(s)) if f <= data.len() as u64 && s <= data.len() as u64 => {}
            _ => {
                return Err(FormatError::Truncated {
                    needed: fb_off
                        .saturating_add(fb_size)
                        .max(seg_base.saturating_add(seg_size)),
                    len: data.len(),
                })
            }
        }
        let fb_bytes = &data[..fb_end.unwrap_or(0) as usize];
        let opts = flatbuffers::VerifierOptions {
            max_depth: 64,
            max_tables: 1 << 24,
            max_apparent_size: 1 << 31,
            ..Default::default()
        };
        let root = flatbuffers::root_with_opts::<ft::FlatTensor>(&opts, fb_bytes)
            .map_err(|e| FormatError::InvalidFlatbuffer(format!(".ptd data file: {e}")))?;
        let segments: Vec<(u64, u64)> = root
            .segments()
            .into_iter()
            .flatten()
            .map(|s| (s.offset(), s.size_()))
            .collect();
        let mut entries = Vec::new();
        for (i, d) in root.named_data().into_iter().flatten().enumerate() {
            let key = d.key().ok_or_else(|| FormatError::OutOfRange {
                what: format!(".ptd entry {i} has no key"),
            })?;
            let &(off, size) = segments.get(d.segment_index() as usize).ok_or_else(|| {
                FormatError::OutOfRange {
                    what: format!(
                        ".ptd entry '{key}': segment {} of {}",
                        d.segment_index(),
                        segments.len()
                    ),
                }
            })?;
            let start = seg_base.checked_add(off);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(s), Some(e)) if e <= seg_base.saturating_add(seg_size) => {
                    entries.push(DataEntry {
                        key: key.to_string(),
                        range: s as usize..e as usize,
                    })
                }
                _ => {
                    return Err(FormatError::OutOfRange {
                        what: format!(
                            ".ptd entry '{key}': {size} bytes at segment offset {off} lie outside the file's segment data"
                        ),
                    })
                }
            }
        }
        Ok(FlatTensorFile { entries })
    }

    /// The keyed blobs, in file order.
    pub fn entries(&self) -> &[DataEntry] {
        &self.entries
    }
}
