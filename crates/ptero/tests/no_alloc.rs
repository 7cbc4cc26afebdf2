//! Once a method is loaded and its inputs are set, `execute` must not allocate, on any
//! thread: the counter is global, so allocations by the pool's workers count too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ptero::{npy, EValue, Program};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only adds a thread-local counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during_execute(fixture: &str, threads: usize) -> usize {
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
    if threads > 1 {
        m.set_parallel(Some(Arc::new(ptero::ThreadPool::new(threads))))
            .unwrap();
    }
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
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = m.execute();
    COUNTING.store(false, Ordering::SeqCst);
    r.unwrap();
    ALLOCATIONS.load(Ordering::SeqCst)
}

#[test]
fn execute_does_not_allocate() {
    for fixture in [
        "mlp",
        "cnn",
        "resnet_block",
        "lstm",
        "transformer_encoder",
        "tiny_llama",
        "mobilenet_v2",
        "xnn_mobilenet_v2",
        "xnn_transformer_encoder",
        "xnn_lstm",
        "xnn_cnn",
        "xnn_resnet_block",
        "xnn_inverted_residual",
        "xnn_qs8_cnn",
        "xnn_dq8_mlp",
        "xnn_8da4w_g32",
        "xnn_fp16_cnn",
    ] {
        for threads in [1, 2, 3] {
            assert_eq!(
                allocations_during_execute(fixture, threads),
                0,
                "{fixture}, {threads} threads: execute allocated"
            );
        }
    }
}
