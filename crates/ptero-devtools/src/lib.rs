//! ExecuTorch's devtools for Ptero: bundled programs, and what the event tracer records
//! written as an ETDump (read by the official Inspector) or as a Chrome trace.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code, warnings, clippy::all)]
#[rustfmt::skip]
mod bundled_generated;
#[allow(unsafe_code, warnings, clippy::all, dead_code)]
#[rustfmt::skip]
mod etdump_generated;

mod bundled;
pub mod etdump;
pub mod recorder;
pub mod trace;
mod verify;

pub use bundled::{
    is_bundled_program, BundledError, BundledProgram, TestCase, TestSuite, BUNDLED_IDENTIFIER,
};
pub use etdump::{write_etdump, EtdumpOptions, ETDUMP_IDENTIFIER};
pub use recorder::{
    DebugEvent, DebugValue, EventKind, OperatorStats, ProfileEvent, Recorder, RecorderOptions, Run,
    ValueFilter,
};
pub use trace::chrome_trace;
pub use verify::{compare_values, OutputCheck, Tolerance};
