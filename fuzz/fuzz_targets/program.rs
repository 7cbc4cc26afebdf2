#![no_main]
//! Raw bytes as a `.pte` program: load, run every method with default inputs.

use libfuzzer_sys::fuzz_target;
use ptero_runtime::Limits;

fuzz_target!(|data: &[u8]| {
    let kernels = ptero_kernels::portable();
    let limits = Limits {
        max_memory: 256 << 20,
        ..Limits::default()
    };
    let _ = ptero_fuzz::run_program(data, &kernels, limits);
});
