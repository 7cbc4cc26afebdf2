//! Int8 GEMM throughput on one thread, as convolutions call it (`q_rows` on a patch of
//! `M` pixels): `cargo run --release -p ptero-gemm --example qgemm_bench [M K N]...`.
//!
//! Prints GMAC/s for static int8 (`QOut::I8`) and dynamically quantized rows
//! (`QOut::F32`), and for the same product as a convolution (`q_conv`: 1 × 1, or 3 × 3
//! with `PTERO_3X3=1`). `PTERO_ISA` caps the level.

use std::time::Instant;

use ptero_gemm::{q_conv, q_rows, QConv, QConvOut, QOut, QPacked};
use ptero_simd::Serial;

fn best(mut f: impl FnMut(), budget_s: f64) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut runs = 0;
    while runs < 5 || (start.elapsed().as_secs_f64() < budget_s && runs < 20000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shapes: Vec<(usize, usize, usize)> = if args.len() >= 3 {
        args.chunks_exact(3).map(|c| (c[0], c[1], c[2])).collect()
    } else {
        // ResNet-18's convolutions at the pixel counts a 64 KiB patch holds.
        vec![
            (64, 147, 64),
            (64, 576, 64),
            (56, 1152, 128),
            (28, 2304, 256),
            (14, 4608, 512),
            (64, 64, 128),
        ]
    };
    println!(
        "{:>5} {:>5} {:>5} {:>10} {:>10} {:>10}",
        "M", "K", "N", "qs8 GMAC/s", "qd8 GMAC/s", "1x1 GMAC/s"
    );
    for (m, k, n) in shapes {
        let w = QPacked::new(
            n,
            k,
            8,
            k,
            |r, c| ((r * 7 + c * 13) % 255) as i8,
            |r, _| 1e-4 * (1 + r % 5) as f32,
        )
        .expect("pack");
        let x: Vec<i8> = (0..m * k).map(|i| ((i * 31) % 251) as i8).collect();
        let b = vec![3i32; n];
        let mut yq = vec![0i8; m * n];
        let mut yf = vec![0f32; m * n];
        let params: Vec<f32> = (0..m).flat_map(|_| [0.01f32, 3.0]).collect();
        let macs = (m * k * n) as f64;
        let tq = best(
            || {
                q_rows(
                    &x,
                    m,
                    &w,
                    QOut::I8 {
                        y: &mut yq,
                        b: &b,
                        zp: -3,
                        range: (-128, 127),
                    },
                )
            },
            0.3,
        );
        let tf = best(
            || {
                q_rows(
                    &x,
                    m,
                    &w,
                    QOut::F32 {
                        y: &mut yf,
                        params: &params,
                        bias: None,
                        clamp: (f32::NEG_INFINITY, f32::INFINITY),
                    },
                )
            },
            0.3,
        );
        // The same product as a 1 × 1 convolution over an M-pixel image (`q_conv`'s
        // direct path, as models run pointwise layers).
        // `PTERO_3X3=1`: a 3 × 3 convolution (padding 1) over a square image of M
        // pixels and K / 9 channels instead, read through the run table.
        let three = std::env::var("PTERO_3X3").is_ok_and(|v| v == "1") && k % 9 == 0;
        let side = (m as f64).sqrt() as usize;
        let g = if three {
            QConv {
                n: 1,
                ih: side,
                iw: side,
                oh: side,
                ow: side,
                cin: k / 9,
                kh: 3,
                kw: 3,
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
            }
        } else {
            QConv {
                n: 1,
                ih: m,
                iw: 1,
                oh: m,
                ow: 1,
                cin: k,
                kh: 1,
                kw: 1,
                stride: [1, 1],
                pad: [0, 0],
                dilation: [1, 1],
            }
        };
        let tc = best(
            || {
                q_conv(
                    &Serial,
                    &g,
                    &x,
                    &w,
                    QConvOut::I8 {
                        y: &mut yq,
                        b: &b,
                        zx: 0,
                        zp: -3,
                        range: (-128, 127),
                    },
                )
            },
            0.3,
        );
        println!(
            "{m:>5} {k:>5} {n:>5} {:>10.1} {:>10.1} {:>10.1}",
            macs / tq / 1e9,
            macs / tf / 1e9,
            macs / tc / 1e9
        );
    }
}
