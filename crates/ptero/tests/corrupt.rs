//! Truncated and corrupted programs must give errors, never panics or hangs.
//!
//! Every prefix of each small fixture is loaded, and seeded random byte flips are loaded
//! and, when they still load, executed with deterministic inputs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use ptero::{EValue, Program, Tag, Tensor};

const FIXTURES: &[&str] = &[
    "mlp",
    "cnn",
    "two_methods",
    "mutable_buffer",
    "dynamic_seq",
    "lstm",
    "ops_shape",
];

fn load(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
            .join("model.pte"),
    )
    .unwrap()
}

/// Loads every method and runs it once on zeros; any error is fine, a panic is not.
fn exercise(bytes: &[u8]) -> Result<(), String> {
    let program = Program::from_bytes(bytes).map_err(|e| e.to_string())?;
    let kernels = ptero::default_kernels();
    let backends = ptero::default_backends();
    for name in program.method_names() {
        let meta = program
            .method_meta(name)
            .map_err(|e| e.to_string())?
            .clone();
        let mut m = match program.load_method(name, &kernels, &backends) {
            Ok(m) => m,
            Err(e) => {
                // Error messages must be printable.
                let _ = e.to_string();
                continue;
            }
        };
        for (i, io) in meta.inputs.iter().enumerate() {
            let v = match (&io.tag, &io.tensor) {
                (Tag::Tensor, Some(t)) if t.nbytes <= 1 << 24 => {
                    match Tensor::zeros(t.dtype, &t.sizes) {
                        Ok(t) => EValue::Tensor(t),
                        Err(_) => continue,
                    }
                }
                (Tag::Int, _) => EValue::Int(
                    io.value
                        .as_deref()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                ),
                _ => continue,
            };
            let _ = m.set_input(i, &v);
        }
        if let Err(e) = m.execute() {
            let _ = e.to_string();
        }
    }
    Ok(())
}

#[test]
fn every_truncation_is_an_error() {
    for name in FIXTURES {
        let bytes = load(name);
        for cut in 0..bytes.len() {
            let r = catch_unwind(AssertUnwindSafe(|| {
                Program::from_bytes(&bytes[..cut]).map(|_| ())
            }));
            match r {
                Ok(Ok(())) => {
                    // A prefix can only be valid if nothing after it is needed: make sure it runs.
                    let r = catch_unwind(AssertUnwindSafe(|| exercise(&bytes[..cut])));
                    assert!(r.is_ok(), "{name}: panic running the {cut}-byte prefix");
                }
                Ok(Err(e)) => assert!(!e.to_string().is_empty()),
                Err(_) => panic!("{name}: panic loading the {cut}-byte prefix"),
            }
        }
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let per_fixture = if cfg!(debug_assertions) { 300 } else { 2000 };
    for name in FIXTURES {
        let bytes = load(name);
        for round in 0..per_fixture {
            let mut b = bytes.clone();
            let flips = 1 + (next() % 4) as usize;
            for _ in 0..flips {
                let at = (next() % b.len() as u64) as usize;
                b[at] ^= 1 << (next() % 8);
            }
            let start = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| exercise(&b)));
            assert!(r.is_ok(), "{name}: panic on corruption round {round}");
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name}: round {round} took too long"
            );
        }
    }
}

#[test]
fn clear_errors_for_bad_files() {
    let dir = std::env::temp_dir().join(format!("ptero-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pte", vec![], "too short"),
        (
            "text.pte",
            b"hello world, not a program".to_vec(),
            "not an ExecuTorch .pte program",
        ),
        (
            "version.pte",
            {
                let mut b = load("mlp");
                b[4..8].copy_from_slice(b"ET99");
                b
            },
            "unsupported .pte format version",
        ),
        (
            "truncated.pte",
            {
                let b = load("mlp");
                b[..b.len() / 2].to_vec()
            },
            "truncated",
        ),
    ];
    for (file, bytes, want) in cases {
        let p = dir.join(file);
        std::fs::write(&p, &bytes).unwrap();
        let e = Program::from_file(&p).unwrap_err().to_string();
        assert!(e.contains(want), "{file}: '{e}' does not mention '{want}'");
    }
    let e = Program::from_file(dir.join("missing.pte"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pte"), "{e}");
}
