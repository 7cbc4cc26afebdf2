//! Graphs of programs lowered by the official exporter, read and summarized; damaged
//! blobs answer with errors, never panics.

use std::path::PathBuf;

use ptero_runtime::Program;
use ptero_xnnpack::blob::Blob;
use ptero_xnnpack::graph::{Graph, Op};
use ptero_xnnpack::Summary;

fn fixture(name: &str) -> Program {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .join("model.pte");
    Program::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (fixture, delegates, node type -> count in the first delegate)
type GraphCase = (&'static str, usize, &'static [(&'static str, usize)]);

#[test]
fn exported_graphs_are_read() {
    let cases: &[GraphCase] = &[
        (
            "xnn_mobilenet_v2",
            1,
            &[
                ("XNNConv2d", 35),
                ("XNNDepthwiseConv2d", 17),
                ("XNNAdd", 11),
                ("XNNFullyConnected", 1),
                ("XNNGlobalAvgPooling2d", 1),
            ],
        ),
        ("xnn_mlp", 1, &[("XNNFullyConnected", 4), ("XNNGelu", 1)]),
    ];
    for &(name, ndelegates, types) in cases {
        let program = fixture(name);
        let named = |k: &str| program.named_data(k);
        let blobs = program.delegate_blobs("forward").unwrap();
        assert_eq!(blobs.len(), ndelegates, "{name}");
        assert!(blobs.iter().all(|(id, _)| *id == "XnnpackBackend"));
        let s = Summary::of(blobs[0].1, &named).unwrap();
        for &(t, n) in types {
            assert_eq!(
                s.node_types.get(t).copied(),
                Some(n),
                "{name}: {t} in {s:?}"
            );
        }
        assert_eq!(s.datatypes.keys().collect::<Vec<_>>(), ["fp32"], "{name}");
        assert!(s.constant_bytes > 0 && s.named_constants > 0, "{name}");
        // Every node's values exist and constants resolve to named data of their size.
        let g = Graph::parse(&Blob::parse(blobs[0].1).unwrap()).unwrap();
        for n in &g.nodes {
            let (ins, outs) = n.op.value_ids();
            assert!(ins.iter().chain(&outs).all(|id| g.value(*id).is_some()));
        }
        assert!(g
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::FullyConnected { .. })));
    }
}

#[test]
fn damaged_blobs_are_errors_not_panics() {
    let program = fixture("xnn_cnn");
    let named = |k: &str| program.named_data(k);
    let blob = program.delegate_blobs("forward").unwrap()[0].1.to_vec();
    assert!(Summary::of(&blob, &named).is_ok());
    // Every truncation.
    for len in 0..blob.len() {
        let _ = Summary::of(&blob[..len], &named);
    }
    // Flipped bytes, all over the header and spread over the rest.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..4000 {
        let mut b = blob.clone();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = if i < 64 * 8 {
            i / 8
        } else {
            (rng as usize) % b.len()
        };
        b[at] ^= 1 << (i % 8);
        let _ = Summary::of(&b, &named);
    }
    // Named data the program lacks.
    let none = |_: &str| None;
    let e = Summary::of(&blob, &none).unwrap_err().to_string();
    assert!(e.contains("named data"), "{e}");
}

#[test]
fn headers_are_checked() {
    let header = |fb_off: u32, fb_len: u32, c_off: u32, c_len: u64, total: usize| {
        let mut b = vec![0u8; total];
        b[4..8].copy_from_slice(b"XH00");
        b[8..10].copy_from_slice(&30u16.to_le_bytes());
        b[10..14].copy_from_slice(&fb_off.to_le_bytes());
        b[14..18].copy_from_slice(&fb_len.to_le_bytes());
        b[18..22].copy_from_slice(&c_off.to_le_bytes());
        b[22..30].copy_from_slice(&c_len.to_le_bytes());
        b
    };
    // (flatbuffer offset, size, constants offset, size, blob length, accepted)
    for (case, ok) in [
        ((32, 16, 48, 16, 64), true),
        ((32, 16, 48, 0, 48), true),
        ((32, 16, 48, 17, 64), false),       // constants past the end
        ((32, 40, 48, 8, 80), false),        // overlap
        ((32, 4, 48, 0, 48), false),         // flatbuffer too short
        ((8, 16, 48, 0, 48), false),         // inside the header
        ((u32::MAX, 16, 48, 0, 48), false),  // offset overflow
        ((32, 16, 48, u64::MAX, 64), false), // size overflow
    ] {
        let (a, b, c, d, n) = case;
        assert_eq!(Blob::parse(&header(a, b, c, d, n)).is_ok(), ok, "{case:?}");
    }
    assert!(Blob::parse(&header(32, 16, 48, 0, 48)[..29]).is_err());
}

#[test]
fn an_output_range_turned_over_is_refused_at_load() {
    // xnn_cnn's convolutions carry their ReLU as output_min_max (0, +inf); the table
    // omits the default 0 and stores +inf. Making that max -1 gives min > max, which
    // XNNPACK refuses too.
    let program = fixture("xnn_cnn");
    let mut blob = program.delegate_blobs("forward").unwrap()[0].1.to_vec();
    let inf = f32::INFINITY.to_le_bytes();
    let mut turned = 0;
    for at in 0..blob.len().saturating_sub(3) {
        if blob[at..at + 4] == inf {
            blob[at..at + 4].copy_from_slice(&(-1.0f32).to_le_bytes());
            turned += 1;
        }
    }
    assert!(turned > 0, "no +inf output bound in xnn_cnn");
    let err = match Graph::parse(&Blob::parse(&blob).unwrap()) {
        Ok(_) => panic!("a turned-over output range must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("output_min_max"), "{err}");
}
