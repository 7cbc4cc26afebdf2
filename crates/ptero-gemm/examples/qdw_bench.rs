//! Int8 depthwise convolution throughput on one thread (MobileNetV2's 3x3 layers):
//! `cargo run --release -p ptero-gemm --example qdw_bench`. `PTERO_ISA` caps the level.

use std::time::Instant;

use ptero_gemm::{q8_depthwise_packed, QDepthwise, QDwWeights};
use ptero_simd::Serial;

fn main() {
    // (size, channels, stride)
    for (hw, c, s) in [
        (112, 32, 1),
        (112, 96, 2),
        (56, 144, 1),
        (28, 192, 1),
        (14, 576, 1),
        (7, 960, 1),
    ] {
        let o = (hw + 2 - 3) / s + 1;
        let g = QDepthwise {
            n: 1,
            ih: hw,
            iw: hw,
            oh: o,
            ow: o,
            c,
            kh: 3,
            kw: 3,
            stride: [s, s],
            pad: [1, 1],
            dilation: [1, 1],
        };
        let x: Vec<i8> = (0..hw * hw * c).map(|i| ((i * 31) % 251) as i8).collect();
        let w: Vec<i8> = (0..9 * c).map(|i| ((i * 7) % 200) as i8 - 100).collect();
        let bias = vec![5i32; c];
        let scale = vec![1e-3f32; c];
        let mut y = vec![0i8; o * o * c];
        let p = QDwWeights::new(9, c, &w, &bias, &scale, 3).expect("3x3 weights");
        let mut run = || q8_depthwise_packed(&Serial, &g, &x, &p, 3, -2, (-128, 127), &mut y);
        run();
        let t = Instant::now();
        let mut best = f64::MAX;
        while t.elapsed().as_secs_f64() < 0.3 {
            let t0 = Instant::now();
            run();
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let macs = (o * o * c * 9) as f64;
        println!(
            "{hw:>4}x{hw:<4} c{c:<4} s{s}: {:8.1} us {:6.1} GMAC/s",
            best * 1e6,
            macs / best / 1e9
        );
    }
}
