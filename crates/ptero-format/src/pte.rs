use alloc::format;
use alloc::string::ToString;
use core::ops::Range;

use crate::fb;
use crate::header::{check_identifier, ExtendedHeader, Identifier, PROGRAM_IDENTIFIER};
use crate::FormatError;

/// A verified view of a `.pte` file held in memory.
///
/// Parsing checks the identifier, the extended header, the flatbuffer (with the
/// flatbuffers verifier) and the bounds of every data segment. Accessors that hand out
/// byte ranges re-check the per-tensor offsets, which depend on sizes stored elsewhere.
#[derive(Clone, Copy)]
pub struct PteFile<'a> {
    data: &'a [u8],
    header: Option<ExtendedHeader>,
    program: fb::Program<'a>,
    /// Length of the flatbuffer part (the whole file when there is no header).
    program_len: usize,
}

impl core::fmt::Debug for PteFile<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PteFile")
            .field("len", &self.data.len())
            .field("header", &self.header)
            .finish()
    }
}

fn range_in(base: u64, offset: u64, size: u64, len: usize) -> Option<Range<usize>> {
    let start = base.checked_add(offset)?;
    let end = start.checked_add(size)?;
    if end > len as u64 {
        return None;
    }
    Some(start as usize..end as usize)
}

impl<'a> PteFile<'a> {
    /// Validates `data` as a `.pte` program.
    pub fn parse(data: &'a [u8]) -> Result<PteFile<'a>, FormatError> {
        match check_identifier(data)? {
            Identifier::Compatible => {}
            Identifier::Incompatible(found) => {
                return Err(FormatError::IncompatibleVersion {
                    found: core::str::from_utf8(&found).unwrap_or("?").to_string(),
                    supported: "ET12",
                })
            }
            Identifier::NotPresent(found) => return Err(FormatError::NotAProgram { found }),
        }
        let header = ExtendedHeader::parse(data)?;
        let program_len = match &header {
            Some(h) => {
                let seg_end = h.segment_base_offset.saturating_add(h.segment_data_size);
                let needed = h.program_size.max(seg_end);
                if needed > data.len() as u64 {
                    return Err(FormatError::Truncated {
                        needed,
                        len: data.len(),
                    });
                }
                h.program_size as usize
            }
            None => data.len(),
        };
        let fb_bytes = &data[..program_len];
        let root_offset = u32::from_le_bytes([fb_bytes[0], fb_bytes[1], fb_bytes[2], fb_bytes[3]]);
        if root_offset as usize >= program_len {
            return Err(FormatError::OutOfRange {
                what: format!(
                    "root table offset {root_offset} is past the program's {program_len} bytes"
                ),
            });
        }
        let opts = flatbuffers::VerifierOptions {
            max_depth: 64,
            max_tables: 1 << 26,
            max_apparent_size: 1 << 31,
            ..Default::default()
        };
        let program = flatbuffers::root_with_opts::<fb::Program>(&opts, fb_bytes)
            .map_err(|e| FormatError::InvalidFlatbuffer(e.to_string()))?;
        let file = PteFile {
            data,
            header,
            program,
            program_len,
        };
        file.check_segments()?;
        Ok(file)
    }

    fn check_segments(&self) -> Result<(), FormatError> {
        let segments = self.program.segments();
        let n = segments.map_or(0, |s| s.len());
        let nonempty = segments.into_iter().flatten().any(|s| s.size_() > 0);
        if nonempty && self.header.is_none() {
            return Err(FormatError::OutOfRange {
                what: format!("program lists {n} data segments but has no extended header"),
            });
        }
        for i in 0..n {
            self.segment_range(i)?;
        }
        let check_index = |idx: u32, what: &str| {
            if idx as usize >= n {
                Err(FormatError::OutOfRange {
                    what: format!("{what} refers to segment {idx}, but the program has {n}"),
                })
            } else {
                Ok(())
            }
        };
        if let Some(cs) = self.program.constant_segment() {
            let has_data = cs.offsets().is_some_and(|o| o.len() > 1);
            if has_data {
                check_index(cs.segment_index(), "the constant segment")?;
            }
        }
        if let Some(ms) = self.program.mutable_data_segments() {
            for m in ms.iter() {
                if m.offsets().is_some_and(|o| o.len() > 1) {
                    check_index(m.segment_index(), "a mutable data segment")?;
                }
            }
        }
        if let Some(nd) = self.program.named_data() {
            for d in nd.iter() {
                check_index(d.segment_index(), "a named data entry")?;
            }
        }
        Ok(())
    }

    /// The whole file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The extended header, when the program has segments.
    pub fn header(&self) -> Option<&ExtendedHeader> {
        self.header.as_ref()
    }

    /// The root flatbuffer table.
    pub fn program(&self) -> fb::Program<'a> {
        self.program
    }

    /// Bytes of the flatbuffer part of the file (headers included).
    pub fn program_len(&self) -> usize {
        self.program_len
    }

    /// Names of the methods (execution plans), in file order.
    pub fn method_names(&self) -> impl Iterator<Item = &'a str> {
        self.program
            .execution_plan()
            .into_iter()
            .flatten()
            .map(|p| p.name().unwrap_or(""))
    }

    /// Looks up a method's execution plan by name.
    pub fn method(&self, name: &str) -> Option<fb::ExecutionPlan<'a>> {
        self.program
            .execution_plan()?
            .iter()
            .find(|p| p.name() == Some(name))
    }

    /// Number of data segments.
    pub fn num_segments(&self) -> usize {
        self.program.segments().map_or(0, |s| s.len())
    }

    /// Absolute byte range of segment `index` in the file.
    pub fn segment_range(&self, index: usize) -> Result<Range<usize>, FormatError> {
        let segments = self
            .program
            .segments()
            .filter(|s| index < s.len())
            .ok_or_else(|| FormatError::OutOfRange {
                what: format!(
                    "segment {index} does not exist ({} segments)",
                    self.num_segments()
                ),
            })?;
        let seg = segments.get(index);
        let base = self.header.map_or(0, |h| h.segment_base_offset);
        range_in(base, seg.offset(), seg.size_(), self.data.len()).ok_or_else(|| {
            FormatError::OutOfRange {
                what: format!(
                    "segment {index} (offset {} + {} bytes from base {base}) extends past the end of the {}-byte file",
                    seg.offset(),
                    seg.size_(),
                    self.data.len()
                ),
            }
        })
    }

    /// Bytes of segment `index`.
    pub fn segment(&self, index: usize) -> Result<&'a [u8], FormatError> {
        Ok(&self.data[self.segment_range(index)?])
    }

    fn subsegment_range(
        &self,
        sub: fb::SubsegmentOffsets<'a>,
        buffer_idx: usize,
        nbytes: usize,
        what: &str,
    ) -> Result<Range<usize>, FormatError> {
        let offsets = sub
            .offsets()
            .filter(|o| buffer_idx < o.len())
            .ok_or_else(|| FormatError::OutOfRange {
                what: format!(
                    "{what} buffer {buffer_idx} does not exist ({} entries)",
                    sub.offsets().map_or(0, |o| o.len())
                ),
            })?;
        let seg = self.segment_range(sub.segment_index() as usize)?;
        let off = offsets.get(buffer_idx);
        range_in(seg.start as u64, off, nbytes as u64, seg.end).ok_or_else(|| {
            FormatError::OutOfRange {
                what: format!(
                    "{what} buffer {buffer_idx} ({nbytes} bytes at offset {off}) extends past its {}-byte segment",
                    seg.len()
                ),
            }
        })
    }

    /// Absolute byte range of constant buffer `buffer_idx` holding `nbytes` bytes.
    ///
    /// Reads the constant segment, or the deprecated inline `constant_buffer` table for
    /// programs written before constants moved to a segment.
    pub fn constant_range(
        &self,
        buffer_idx: usize,
        nbytes: usize,
    ) -> Result<Range<usize>, FormatError> {
        if let Some(cs) = self.program.constant_segment() {
            if cs.offsets().is_some_and(|o| o.len() > 1) {
                return self.subsegment_range(cs, buffer_idx, nbytes, "constant");
            }
        }
        let bufs = self
            .program
            .constant_buffer()
            .filter(|b| buffer_idx < b.len())
            .ok_or_else(|| FormatError::OutOfRange {
                what: format!("constant buffer {buffer_idx} does not exist"),
            })?;
        let storage = bufs
            .get(buffer_idx)
            .storage()
            .map(|s| s.bytes())
            .unwrap_or(&[]);
        if storage.len() < nbytes {
            return Err(FormatError::OutOfRange {
                what: format!(
                    "constant buffer {buffer_idx} holds {} bytes, the tensor needs {nbytes}",
                    storage.len()
                ),
            });
        }
        let start = storage.as_ptr() as usize - self.data.as_ptr() as usize;
        Ok(start..start + nbytes)
    }

    /// Absolute byte range of the initial value of a mutable tensor (`data_buffer_idx`
    /// together with an allocation), stored in the first mutable-data segment.
    pub fn mutable_init_range(
        &self,
        buffer_idx: usize,
        nbytes: usize,
    ) -> Result<Range<usize>, FormatError> {
        let sub = self
            .program
            .mutable_data_segments()
            .filter(|m| !m.is_empty())
            .map(|m| m.get(0))
            .ok_or_else(|| FormatError::OutOfRange {
                what: format!("mutable tensor refers to buffer {buffer_idx}, but the program has no mutable data segment"),
            })?;
        self.subsegment_range(sub, buffer_idx, nbytes, "mutable data")
    }

    /// Processed bytes of a delegate (inline, or in a segment).
    pub fn delegate_data(
        &self,
        delegate: &fb::BackendDelegate<'a>,
    ) -> Result<&'a [u8], FormatError> {
        let r = delegate
            .processed()
            .ok_or_else(|| FormatError::OutOfRange {
                what: "delegate has no processed data reference".to_string(),
            })?;
        let idx = r.index() as usize;
        match r.location() {
            fb::DataLocation::SEGMENT => self.segment(idx),
            _ => {
                let inline = self
                    .program
                    .backend_delegate_data()
                    .filter(|d| idx < d.len())
                    .ok_or_else(|| FormatError::OutOfRange {
                        what: format!("inline delegate data {idx} does not exist"),
                    })?;
                Ok(inline.get(idx).data().map(|d| d.bytes()).unwrap_or(&[]))
            }
        }
    }

    /// Bytes stored under `key` in the program's named data.
    pub fn named_data(&self, key: &str) -> Option<&'a [u8]> {
        let nd = self.program.named_data()?;
        let entry = nd.iter().find(|d| d.key() == Some(key))?;
        self.segment(entry.segment_index() as usize).ok()
    }

    /// True when `data` starts like a program this reader supports (`ET12`).
    pub fn is_program(data: &[u8]) -> bool {
        data.get(4..8) == Some(PROGRAM_IDENTIFIER.as_slice())
    }
}
