//! Owned memory of a loaded method: planned arenas, buffers for unplanned inputs and
//! outputs, and a shared handle on the program's constant data.
//!
//! This is one of the few places with `unsafe`: kernels need a mutable view of their
//! output while holding shared views of inputs that live in the same arena. The views
//! are handed out through raw base pointers taken once when each buffer is created, and
//! [`crate::KernelArgs`] checks that a mutable view never overlaps another view.
#![allow(unsafe_code)]

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::{Error, Result, Storage};

/// Alignment of every buffer: a cache line, and enough for any SIMD load.
pub const BUFFER_ALIGN: usize = 64;

/// A zero-filled byte buffer aligned to [`BUFFER_ALIGN`] bytes.
///
/// Allocation is fallible (a corrupt program asking for terabytes gets an error, not an
/// abort) and lazily zeroed by the allocator, so untouched planned memory costs nothing.
pub struct AlignedBuf {
    /// Start of the allocation (what `dealloc` takes).
    base: core::ptr::NonNull<u8>,
    /// `base` rounded up to `BUFFER_ALIGN`.
    ptr: core::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// The allocator only zeroes lazily (calloc, fresh pages) for small alignments, so
    /// allocate with 16 and over-allocate to round the start up to `BUFFER_ALIGN` ourselves.
    fn layout(len: usize) -> Option<core::alloc::Layout> {
        core::alloc::Layout::from_size_align(len.checked_add(BUFFER_ALIGN)?, 16).ok()
    }

    /// `len` zero bytes, or `None` when the allocation fails.
    pub fn try_zeroed(len: usize) -> Option<AlignedBuf> {
        let layout = Self::layout(len)?;
        // SAFETY: `layout` has a non-zero size.
        let base = core::ptr::NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
        let pad = (BUFFER_ALIGN - base.as_ptr() as usize % BUFFER_ALIGN) % BUFFER_ALIGN;
        // SAFETY: `pad < BUFFER_ALIGN` and the allocation holds `len + BUFFER_ALIGN` bytes,
        // so `base + pad .. base + pad + len` is inside it.
        let ptr = unsafe { base.add(pad) };
        Some(AlignedBuf { base, ptr, len })
    }

    /// `len` zero bytes. Aborts on allocation failure, like `Vec`; use
    /// [`AlignedBuf::try_zeroed`] for sizes that come from untrusted input.
    pub fn zeroed(len: usize) -> AlignedBuf {
        match Self::try_zeroed(len) {
            Some(b) => b,
            None => alloc::alloc::handle_alloc_error(
                Self::layout(len).unwrap_or(core::alloc::Layout::new::<u8>()),
            ),
        }
    }

    /// A copy of `bytes`, aligned.
    pub fn from_bytes(bytes: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to an allocation of at least `len` initialized (zeroed) bytes
        // owned by `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` gives exclusive access.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: `base` was allocated in `try_zeroed` with this same layout.
            unsafe { alloc::alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        AlignedBuf::from_bytes(self.as_slice())
    }
}

impl core::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Read-only bytes shared between a program and its methods.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The memory a loaded method owns.
pub struct Memory {
    /// Owns the buffers; never touched after creation except through `bases`, so the
    /// raw pointers below stay valid and unaliased by references derived from `buffers`.
    buffers: Vec<AlignedBuf>,
    bases: Vec<(*mut u8, usize)>,
    constants: SharedBytes,
}

// SAFETY: `bases` point into heap allocations owned by `buffers`, which moves with the
// `Memory`; nothing else holds these pointers once `Memory` is sent to another thread.
unsafe impl Send for Memory {}
// SAFETY: shared access (`&Memory`) only ever creates shared slices (`bytes`), and
// mutable slices require `&mut Memory` or go through `KernelArgs`, which holds `&mut`.
unsafe impl Sync for Memory {}

impl Memory {
    /// Memory with no buffers, reading constants from `constants`.
    pub fn new(constants: SharedBytes) -> Memory {
        Memory {
            buffers: Vec::new(),
            bases: Vec::new(),
            constants,
        }
    }

    /// Adds a buffer and returns its id.
    pub fn add_buffer(&mut self, mut buf: AlignedBuf) -> u32 {
        let base = buf.as_mut_slice().as_mut_ptr();
        self.bases.push((base, buf.len()));
        self.buffers.push(buf);
        (self.buffers.len() - 1) as u32
    }

    pub fn num_buffers(&self) -> usize {
        self.bases.len()
    }

    /// Size of buffer `id` in bytes.
    pub fn buffer_len(&self, id: u32) -> Option<usize> {
        self.bases.get(id as usize).map(|b| b.1)
    }

    /// Sum of all owned buffer sizes.
    pub fn total_bytes(&self) -> usize {
        self.bases.iter().map(|b| b.1).sum()
    }

    /// The program's constant data.
    pub fn constants(&self) -> &[u8] {
        (*self.constants).as_ref()
    }

    /// Base pointer and the checked range `[offset, offset + nbytes)` of a storage.
    pub(crate) fn locate(&self, storage: Storage, nbytes: usize) -> Result<Located> {
        match storage {
            Storage::None => Err(Error::NoData { arg: usize::MAX }),
            Storage::Constant { offset } => {
                let c = self.constants();
                let end = offset
                    .checked_add(nbytes)
                    .filter(|&e| e <= c.len())
                    .ok_or_else(|| {
                        Error::OutOfBounds(alloc::format!(
                        "constant of {nbytes} bytes at offset {offset} exceeds the {}-byte program",
                        c.len()
                    ))
                    })?;
                Ok(Located {
                    buffer: None,
                    ptr: c[offset..end].as_ptr() as *mut u8,
                    start: offset,
                    end,
                })
            }
            Storage::Buffer { id, offset } => {
                let &(base, len) = self.bases.get(id as usize).ok_or_else(|| {
                    Error::OutOfBounds(alloc::format!("buffer {id} does not exist"))
                })?;
                let end = offset
                    .checked_add(nbytes)
                    .filter(|&e| e <= len)
                    .ok_or_else(|| {
                        Error::OutOfBounds(alloc::format!(
                            "{nbytes} bytes at offset {offset} exceed buffer {id} of {len} bytes"
                        ))
                    })?;
                // SAFETY: `offset <= end <= len`, the size of the allocation `base` points to.
                let ptr = unsafe { base.add(offset) };
                Ok(Located {
                    buffer: Some(id),
                    ptr,
                    start: offset,
                    end,
                })
            }
        }
    }

    /// Shared view of `nbytes` bytes of a storage.
    pub fn bytes(&self, storage: Storage, nbytes: usize) -> Result<&[u8]> {
        let l = self.locate(storage, nbytes)?;
        // SAFETY: `locate` checked the range lies inside a live allocation; `&self` rules
        // out mutable views for the lifetime of the result (see `Memory`'s invariants).
        Ok(unsafe { core::slice::from_raw_parts(l.ptr, l.end - l.start) })
    }

    /// Mutable view of `nbytes` bytes of a buffer storage (constants are read-only).
    pub fn bytes_mut(&mut self, storage: Storage, nbytes: usize) -> Result<&mut [u8]> {
        let l = self.locate(storage, nbytes)?;
        if l.buffer.is_none() {
            return Err(Error::invalid("program constants are read-only"));
        }
        // SAFETY: the range is inside a buffer we own, and `&mut self` guarantees no other
        // view of any buffer exists while the result lives.
        Ok(unsafe { core::slice::from_raw_parts_mut(l.ptr, l.end - l.start) })
    }

    /// Copies `len` bytes within or between buffers (regions may overlap).
    pub fn copy_within(&mut self, from: Storage, to: Storage, len: usize) -> Result<()> {
        let src = self.locate(from, len)?;
        let dst = self.locate(to, len)?;
        if dst.buffer.is_none() {
            return Err(Error::invalid("program constants are read-only"));
        }
        // SAFETY: both ranges were bounds-checked; `copy` permits overlap; `&mut self`
        // excludes any other live view.
        unsafe { core::ptr::copy(src.ptr, dst.ptr, len) };
        Ok(())
    }
}

/// A bounds-checked region of memory.
#[derive(Clone, Copy)]
pub(crate) struct Located {
    /// `None` for program constants.
    pub buffer: Option<u32>,
    pub ptr: *mut u8,
    pub start: usize,
    pub end: usize,
}

impl Located {
    /// # Safety
    /// The caller must ensure no mutable view overlaps this region while the result lives.
    pub(crate) unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        // SAFETY: bounds were checked by `Memory::locate`; aliasing is the caller's contract.
        unsafe { core::slice::from_raw_parts(self.ptr, self.end - self.start) }
    }

    /// # Safety
    /// The caller must ensure no other view overlaps this region while the result lives.
    pub(crate) unsafe fn as_mut_slice<'a>(&self) -> &'a mut [u8] {
        // SAFETY: as above, plus exclusivity guaranteed by the caller.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.end - self.start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let mut m = Memory::new(Arc::new(alloc::vec![1u8, 2, 3, 4]));
        let id = m.add_buffer(AlignedBuf::zeroed(16));
        assert_eq!(
            m.bytes(Storage::Constant { offset: 1 }, 3).unwrap(),
            &[2, 3, 4]
        );
        assert!(m.bytes(Storage::Constant { offset: 2 }, 3).is_err());
        assert!(m
            .bytes(Storage::Constant { offset: usize::MAX }, 3)
            .is_err());
        m.bytes_mut(Storage::Buffer { id, offset: 8 }, 8).unwrap()[0] = 7;
        assert_eq!(m.bytes(Storage::Buffer { id, offset: 8 }, 1).unwrap(), &[7]);
        assert!(m.bytes(Storage::Buffer { id, offset: 9 }, 8).is_err());
        assert!(m.bytes(Storage::Buffer { id: 5, offset: 0 }, 1).is_err());
        assert!(m.bytes_mut(Storage::Constant { offset: 0 }, 1).is_err());
        assert_eq!(
            m.bytes(Storage::Buffer { id, offset: 0 }, 16)
                .unwrap()
                .as_ptr() as usize
                % BUFFER_ALIGN,
            0
        );
    }
}
