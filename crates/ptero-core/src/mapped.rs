//! Read-only memory maps of program files, so constants are used in place (zero copy).
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

/// A file mapped read-only into memory.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path`. Like every memory map, the contents change if another process
    /// rewrites the file while it is mapped; replace model files by renaming instead.
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this process; the only hazard is
        // concurrent modification of the file by others, documented above. Offsets into
        // the map are bounds-checked by every reader.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile { map })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}
