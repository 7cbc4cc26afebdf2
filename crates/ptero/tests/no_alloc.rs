//! Once a method is loaded and its inputs are set, `execute` must not allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use ptero::{npy, EValue, Program};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only adds a thread-local counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during_execute(fixture: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(fixture);
    let program = Program::from_file(dir.join("model.pte")).unwrap();
    let mut m = program
        .load_method(
            "forward",
            &ptero::default_kernels(),
            &ptero::default_backends(),
        )
        .unwrap();
    let mut inputs = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("run0_in{i}.npy"));
        if !p.exists() {
            break;
        }
        inputs.push(EValue::Tensor(npy::read(p).unwrap()));
    }
    m.set_inputs(&inputs).unwrap();
    m.execute().unwrap();
    // Planned memory may reuse input buffers for activations: set the inputs again.
    m.set_inputs(&inputs).unwrap();
    COUNTING.with(|c| c.set(true));
    ALLOCATIONS.with(|a| a.set(0));
    let r = m.execute();
    COUNTING.with(|c| c.set(false));
    r.unwrap();
    ALLOCATIONS.with(|a| a.get())
}

#[test]
fn execute_does_not_allocate() {
    for fixture in [
        "mlp",
        "cnn",
        "lstm",
        "transformer_encoder",
        "tiny_llama",
        "mobilenet_v2",
    ] {
        assert_eq!(
            allocations_during_execute(fixture),
            0,
            "{fixture}: execute allocated"
        );
    }
}
