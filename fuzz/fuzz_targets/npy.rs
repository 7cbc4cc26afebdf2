#![no_main]
//! Raw bytes as a `.npy` file.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ptero::npy::from_bytes(data);
});
