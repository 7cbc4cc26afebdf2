use alloc::format;
use alloc::string::String;

use crate::FormatError;

/// Magic of the optional extended header at byte 8.
pub const HEADER_MAGIC: &[u8; 4] = b"eh00";
/// The official runtime insists on this many leading bytes before looking at a file.
pub const MIN_HEAD_BYTES: usize = 16;
/// Smallest header length a reader accepts (`segment_data_size` absent).
const MIN_HEADER_LEN: u32 = 24;
/// Header length written by the current exporter.
pub(crate) const HEADER_LEN: u32 = 32;

/// The identifier this reader understands.
pub const PROGRAM_IDENTIFIER: &[u8; 4] = b"ET12";

/// What the 4 bytes at offset 4 say about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identifier {
    /// `ET12`: a program this reader supports.
    Compatible,
    /// `ETnn` with other digits: an ExecuTorch program of another format version.
    Incompatible([u8; 4]),
    /// Not an ExecuTorch program.
    NotPresent([u8; 4]),
}

/// Classifies the file identifier, like the official `Program::check_header`.
pub fn check_identifier(data: &[u8]) -> Result<Identifier, FormatError> {
    let id: [u8; 4] = match data.get(4..8).and_then(|s| s.try_into().ok()) {
        Some(id) => id,
        None => {
            return Err(FormatError::TooShort {
                len: data.len(),
                needed: 8,
            })
        }
    };
    Ok(if &id == PROGRAM_IDENTIFIER {
        Identifier::Compatible
    } else if id[0] == b'E' && id[1] == b'T' && id[2].is_ascii_digit() && id[3].is_ascii_digit() {
        Identifier::Incompatible(id)
    } else {
        Identifier::NotPresent(id)
    })
}

pub(crate) fn show_magic(m: &[u8; 4]) -> String {
    if m.iter().all(|b| b.is_ascii_graphic()) {
        format!("\"{}\"", core::str::from_utf8(m).unwrap_or("?"))
    } else {
        format!("bytes {:02x} {:02x} {:02x} {:02x}", m[0], m[1], m[2], m[3])
    }
}

/// The `eh00` extended header, present when the program has data segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtendedHeader {
    /// Bytes of the flatbuffer, headers included, from offset 0.
    pub program_size: u64,
    /// Where segment data starts; segment offsets are relative to it.
    pub segment_base_offset: u64,
    /// Total bytes of segment data (0 in files older than ExecuTorch 1.0).
    pub segment_data_size: u64,
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

impl ExtendedHeader {
    /// Reads the header if the file has one. `Ok(None)` means no `eh00` magic.
    pub fn parse(data: &[u8]) -> Result<Option<ExtendedHeader>, FormatError> {
        if data.get(8..12) != Some(HEADER_MAGIC.as_slice()) {
            return Ok(None);
        }
        let len = read_u32(data, 12).ok_or(FormatError::TooShort {
            len: data.len(),
            needed: 16,
        })?;
        if len < MIN_HEADER_LEN {
            return Err(FormatError::BadHeader(format!(
                "header length {len} is below the minimum of {MIN_HEADER_LEN}"
            )));
        }
        let end = 8usize + len as usize;
        if data.len() < end {
            return Err(FormatError::TooShort {
                len: data.len(),
                needed: end,
            });
        }
        let program_size = read_u64(data, 16).unwrap_or(0);
        let segment_base_offset = read_u64(data, 24).unwrap_or(0);
        let segment_data_size = if len >= HEADER_LEN {
            read_u64(data, 32).unwrap_or(0)
        } else {
            0
        };
        if program_size < end as u64 {
            return Err(FormatError::BadHeader(format!(
                "program_size {program_size} is smaller than the header itself ({end} bytes)"
            )));
        }
        if segment_base_offset != 0 && segment_base_offset < program_size {
            return Err(FormatError::BadHeader(format!(
                "segment_base_offset {segment_base_offset} lies inside the program ({program_size} bytes)"
            )));
        }
        Ok(Some(ExtendedHeader {
            program_size,
            segment_base_offset,
            segment_data_size,
        }))
    }

    /// Serializes the header (magic, length and fields) as it appears at byte 8.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[0..4].copy_from_slice(HEADER_MAGIC);
        out[4..8].copy_from_slice(&HEADER_LEN.to_le_bytes());
        out[8..16].copy_from_slice(&self.program_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_base_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_data_size.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        let cases: [(&[u8], Identifier); 3] = [
            (b"\0\0\0\0ET12", Identifier::Compatible),
            (b"\0\0\0\0ET13", Identifier::Incompatible(*b"ET13")),
            (
                b"\0\0\0\0PK\x03\x04",
                Identifier::NotPresent(*b"PK\x03\x04"),
            ),
        ];
        for (data, want) in cases {
            assert_eq!(check_identifier(data).unwrap(), want);
        }
        assert!(check_identifier(b"ET1").is_err());
    }

    #[test]
    fn header_roundtrip_and_rejects() {
        let h = ExtendedHeader {
            program_size: 200,
            segment_base_offset: 256,
            segment_data_size: 64,
        };
        let mut data = alloc::vec![0u8; 8];
        data.extend_from_slice(&h.to_bytes());
        assert_eq!(ExtendedHeader::parse(&data).unwrap(), Some(h));
        // Length below the minimum.
        let mut bad = data.clone();
        bad[12..16].copy_from_slice(&8u32.to_le_bytes());
        assert!(ExtendedHeader::parse(&bad).is_err());
        // Segments starting inside the program.
        let mut bad = data.clone();
        bad[24..32].copy_from_slice(&100u64.to_le_bytes());
        assert!(ExtendedHeader::parse(&bad).is_err());
        // Truncated header.
        assert!(ExtendedHeader::parse(&data[..20]).is_err());
        // No magic.
        assert_eq!(ExtendedHeader::parse(&[0u8; 40]).unwrap(), None);
    }
}
