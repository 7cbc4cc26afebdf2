//! Program files in memory: mapped read-only (zero copy, constants used in place), or
//! read into an aligned buffer when mapping is unsafe (a file that may be truncated while
//! in use: a mapped page that no longer exists kills the process with SIGBUS) or
//! impossible (pipes, character devices).
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::AlignedBuf;

/// Bytes read from a stream per step when its length is unknown: memory then follows
/// the data that actually arrives, whatever the source claims.
const STREAM_CHUNK: usize = 1 << 16;

enum Bytes {
    Map(memmap2::Mmap),
    Owned(AlignedBuf),
}

/// A file's bytes, memory-mapped ([`MappedFile::open`]) or read ([`MappedFile::read`]).
pub struct MappedFile {
    bytes: Bytes,
}

fn too_large(len: u64, max_bytes: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the file is {len} bytes, over the memory limit of {max_bytes} bytes"),
    )
}

fn no_memory(len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!("cannot allocate {len} bytes to read the file"),
    )
}

/// Reads into `buf` until it is full or the source ends; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl MappedFile {
    /// Maps `path`. Like every memory map, the contents change if another process
    /// rewrites the file while it is mapped, and the process is killed (SIGBUS) if the
    /// file is truncated; replace model files by renaming instead, or use
    /// [`MappedFile::read`].
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this process; the only hazard is
        // concurrent modification of the file by others, documented above. Offsets into
        // the map are bounds-checked by every reader.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile {
            bytes: Bytes::Map(map),
        })
    }

    /// Reads the whole of `path` into memory, at most `max_bytes` of it.
    ///
    /// A regular file is read at its length on disk, in one fallible allocation; a file
    /// that changes length while being read is an error. A stream (pipe, character
    /// device) is read until it ends, growing the buffer as data arrives, so an endless
    /// source such as `/dev/zero` fails at `max_bytes` instead of exhausting memory.
    pub fn read(path: &Path, max_bytes: usize) -> io::Result<MappedFile> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory",
            ));
        }
        let buf = if meta.is_file() {
            let len = meta.len();
            let n = usize::try_from(len)
                .ok()
                .filter(|&n| n <= max_bytes)
                .ok_or_else(|| too_large(len, max_bytes))?;
            let mut buf = AlignedBuf::try_zeroed(n).ok_or_else(|| no_memory(n))?;
            let got = read_full(&mut file, buf.as_mut_slice())?;
            if got != n || read_full(&mut file, &mut [0u8; 1])? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file changed length while being read (it was {len} bytes)"),
                ));
            }
            buf
        } else {
            let v = read_stream(&mut file, max_bytes)?;
            let mut buf = AlignedBuf::try_zeroed(v.len()).ok_or_else(|| no_memory(v.len()))?;
            buf.as_mut_slice().copy_from_slice(&v);
            buf
        };
        Ok(MappedFile {
            bytes: Bytes::Owned(buf),
        })
    }

    /// True when the bytes are a memory map of the file (not a copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Map(_))
    }

    /// Tells the system that `part` (bytes of this file) will not be read again soon:
    /// a mapped file's pages holding it leave the process's resident memory, and are
    /// read back from the file if touched later. The pages at either end go too, with
    /// whatever else they hold (small constants share pages): the map is read-only, so
    /// that costs at most a page fault later. Nothing happens for a file read into
    /// memory, or for bytes outside the map.
    pub fn release(&self, part: &[u8]) {
        #[cfg(unix)]
        if let Bytes::Map(m) = &self.bytes {
            const PAGE: usize = 4096;
            let base = m.as_ptr() as usize;
            let start = (part.as_ptr() as usize).wrapping_sub(base);
            let Some(end) = start.checked_add(part.len()).filter(|&e| e <= m.len()) else {
                return;
            };
            let (first, last) = (start / PAGE * PAGE, end.next_multiple_of(PAGE).min(m.len()));
            if first < last {
                // SAFETY: the map is read-only and never written, so dropping its pages
                // loses nothing: the next read of them faults the file's bytes back in,
                // and every slice borrowed from the map stays valid. A failure only
                // means the pages stay resident.
                let _ = unsafe {
                    m.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        last - first,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = part;
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(b) => b.as_slice(),
        }
    }
}

/// Reads `r` to its end, at most `max_bytes`, with fallible allocation.
fn read_stream(r: &mut impl Read, max_bytes: usize) -> io::Result<Vec<u8>> {
    let mut v: Vec<u8> = Vec::new();
    loop {
        // One byte past the limit tells "exactly at the limit" from "over it".
        let room = max_bytes.saturating_add(1).saturating_sub(v.len());
        let want = STREAM_CHUNK.min(room);
        if want == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the stream is longer than the memory limit of {max_bytes} bytes"),
            ));
        }
        let start = v.len();
        v.try_reserve(want)
            .map_err(|_| no_memory(start.saturating_add(want)))?;
        v.resize(start + want, 0);
        let got = read_full(r, &mut v[start..])?;
        v.truncate(start + got);
        if got < want {
            return Ok(v);
        }
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_stop_at_the_limit() {
        let mut endless = io::repeat(0);
        let e = read_stream(&mut endless, 100_000).unwrap_err();
        assert!(e.to_string().contains("100000"), "{e}");
        let mut exact: &[u8] = &[7u8; 70_000];
        assert_eq!(read_stream(&mut exact, 70_000).unwrap().len(), 70_000);
        let mut over: &[u8] = &[7u8; 70_001];
        assert!(read_stream(&mut over, 70_000).is_err());
    }

    #[test]
    fn read_mode_copies_and_bounds_files() {
        let dir = std::env::temp_dir().join(format!("ptero-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.bin");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = MappedFile::read(&p, 10).unwrap();
        assert!(!f.is_mapped());
        assert_eq!(f.bytes(), b"0123456789");
        let e = MappedFile::read(&p, 9).err().unwrap().to_string();
        assert!(e.contains("10 bytes") && e.contains("limit of 9"), "{e}");
        assert!(MappedFile::open(&p).unwrap().is_mapped());
        assert!(MappedFile::read(&dir, 100).is_err());
        #[cfg(unix)]
        {
            let e = MappedFile::read(Path::new("/dev/zero"), 1 << 20)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("limit"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
