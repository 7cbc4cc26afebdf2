//! Per-thread scratch buffers reserved once (at method load) and lent to kernel tasks.

extern crate alloc;

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

struct Slot {
    busy: AtomicBool,
    buf: UnsafeCell<Vec<f32>>,
}

/// `slots` buffers of `floats` f32 each. A task borrows a free one with
/// [`SlotArena::with`]; with at least as many slots as threads running tasks, a free slot
/// always exists, so nothing is allocated while executing.
///
/// ```
/// use ptero_simd::SlotArena;
/// let arena = SlotArena::new(2, 1024).unwrap();
/// let s = arena.with(100, |buf| { buf[..100].fill(1.0); buf[..100].iter().sum::<f32>() });
/// assert_eq!(s, Some(100.0));
/// assert_eq!(arena.with(5000, |_| ()), None); // larger than a slot
/// ```
pub struct SlotArena {
    slots: Vec<Slot>,
    floats: usize,
}

// SAFETY: a slot's buffer is only reached by the thread that flipped its `busy` flag from
// false to true (acquire) and is released with a release store, so accesses never overlap.
unsafe impl Sync for SlotArena {}

impl core::fmt::Debug for SlotArena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotArena")
            .field("slots", &self.slots.len())
            .field("floats", &self.floats)
            .finish()
    }
}

impl SlotArena {
    /// Reserves `slots × floats` f32 (zeroed); `None` if the allocator refuses.
    pub fn new(slots: usize, floats: usize) -> Option<SlotArena> {
        let mut v = Vec::new();
        v.try_reserve_exact(slots).ok()?;
        for _ in 0..slots {
            let b = zeroed(floats)?;
            v.push(Slot {
                busy: AtomicBool::new(false),
                buf: UnsafeCell::new(b),
            });
        }
        Some(SlotArena { slots: v, floats })
    }

    /// f32 per slot.
    pub fn slot_len(&self) -> usize {
        self.floats
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Runs `f` with a free slot's buffer (at least `len` floats, contents unspecified), or
    /// returns `None` when `len` exceeds a slot, the arena has no slots, or every slot
    /// stays lent out for a while (more concurrent tasks than slots, or a task asking for
    /// a second slot): callers then fall back to memory of their own, never wait forever.
    pub fn with<R>(&self, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> Option<R> {
        if len > self.floats || self.slots.is_empty() {
            return None;
        }
        let mut tries = 0u32;
        loop {
            for slot in &self.slots {
                if slot
                    .busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // Released even if `f` panics, so the arena stays usable.
                    struct Release<'a>(&'a AtomicBool);
                    impl Drop for Release<'_> {
                        fn drop(&mut self) {
                            self.0.store(false, Ordering::Release);
                        }
                    }
                    let _r = Release(&slot.busy);
                    // SAFETY: the busy flag was acquired above, so no other thread touches
                    // this buffer until `_r` releases it.
                    let buf = unsafe { &mut *slot.buf.get() };
                    return Some(f(&mut buf[..]));
                }
            }
            tries += 1;
            if tries > 3000 {
                return None;
            }
            if tries < 1000 {
                core::hint::spin_loop();
            } else {
                #[cfg(feature = "std")]
                std::thread::yield_now();
            }
        }
    }
}

/// `floats` zeros, or `None` when the allocation fails. Zeroed by the allocator, so the
/// pages are only made resident as a slot's buffer is used (a slot sized for the largest
/// kernel costs little where smaller ones run), where `vec.resize(n, 0.0)` writes, and so
/// keeps, every page.
///
/// ```
/// let v = ptero_simd::zeroed(1 << 20).unwrap();
/// assert!(v.len() == 1 << 20 && v.iter().all(|&x| x == 0.0));
/// ```
pub fn zeroed(floats: usize) -> Option<Vec<f32>> {
    if floats == 0 {
        return Some(Vec::new());
    }
    let layout = core::alloc::Layout::array::<f32>(floats).ok()?;
    // SAFETY: the layout has a non-zero size. On success the block holds `floats` f32
    // whose bits are all 0 (that is 0.0), and it was allocated by the global allocator
    // with exactly the layout `Vec<f32>` uses for that capacity, so the Vec may own it.
    unsafe {
        let p = alloc::alloc::alloc_zeroed(layout) as *mut f32;
        if p.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(p, floats, floats))
    }
}
