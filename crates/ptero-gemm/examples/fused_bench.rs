//! Pointwise → depthwise pairs of MobileNetV2's first stages, fused and apart:
//! `cargo run --release -p ptero-gemm --example fused_bench`. Best time at 1 thread and at
//! `PTERO_THREADS` (default: all CPUs).

use std::time::Instant;

use ptero_gemm::{
    conv2d, pointwise_depthwise, Activation, Conv2d, ConvWeights, DepthwiseStage, Image, ImageMut,
    PackedConv, PointwiseStage,
};
use ptero_simd::pool::ThreadPool;
use ptero_simd::{Parallel, SlotArena};

fn geo(cin: usize, cout: usize, groups: usize, hw: usize, k: usize, s: usize) -> Conv2d {
    let p = k / 2;
    let o = (hw + 2 * p - k) / s + 1;
    Conv2d {
        n: 1,
        cin,
        cout,
        groups,
        ih: hw,
        iw: hw,
        oh: o,
        ow: o,
        kh: k,
        kw: k,
        stride: [s, s],
        pad: [p, p],
        dilation: [1, 1],
    }
}

fn best(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 0.3 {
        let t0 = Instant::now();
        f();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    best * 1e3
}

fn main() {
    let threads: usize = std::env::var("PTERO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(ptero_simd::pool::default_threads);
    // (cin, cmid, hw, k, stride)
    let pairs = [
        (16, 96, 112, 3, 2),
        (24, 144, 56, 3, 1),
        (24, 144, 56, 3, 2),
        (24, 144, 56, 5, 2),
    ];
    for t in [1, threads] {
        let pool = ThreadPool::new(t);
        let arena = SlotArena::new(t + 1, ptero_gemm::conv_scratch_floats()).unwrap();
        for &(cin, cmid, hw, k, s) in &pairs {
            let g1 = geo(cin, cmid, 1, hw, 1, 1);
            let g2 = geo(cmid, cmid, cmid, hw, k, s);
            let x = vec![0.5f32; cin * hw * hw];
            let w1 = vec![0.01f32; cmid * cin];
            let w2 = vec![0.02f32; cmid * k * k];
            let b = vec![0.1f32; cmid];
            let mut mid = vec![0.0f32; cmid * hw * hw];
            let mut out = vec![0.0f32; cmid * g2.oh * g2.ow];
            let cst = |c: usize, h: usize, w: usize| [c * h * w, h * w, w, 1];
            let xi = Image {
                data: &x,
                strides: cst(cin, hw, hw),
            };
            let p1 = PackedConv::new(
                &g1,
                Image {
                    data: &w1,
                    strides: cst(cin, 1, 1),
                },
            )
            .unwrap();
            let w2i = Image {
                data: &w2,
                strides: cst(1, k, k),
            };
            let act = Activation::Clamp(0.0, 6.0);
            let par: &dyn Parallel = &pool;
            let apart = best(|| {
                conv2d(
                    par,
                    Some(&arena),
                    &g1,
                    xi,
                    ConvWeights::Packed(&p1),
                    Some(&b),
                    ImageMut {
                        data: &mut mid,
                        strides: cst(cmid, hw, hw),
                    },
                    act,
                )
                .unwrap();
                conv2d(
                    par,
                    Some(&arena),
                    &g2,
                    Image {
                        data: &mid,
                        strides: cst(cmid, hw, hw),
                    },
                    ConvWeights::Image(w2i),
                    Some(&b),
                    ImageMut {
                        data: &mut out,
                        strides: cst(cmid, g2.oh, g2.ow),
                    },
                    act,
                )
                .unwrap();
            });
            let fused = best(|| {
                let done = pointwise_depthwise(
                    par,
                    Some(&arena),
                    &g1,
                    PointwiseStage {
                        w: &p1,
                        bias: Some(&b),
                        act,
                    },
                    DepthwiseStage {
                        geo: g2,
                        w: w2i,
                        bias: Some(&b),
                        act,
                    },
                    xi,
                    ImageMut {
                        data: &mut out,
                        strides: cst(cmid, g2.oh, g2.ow),
                    },
                )
                .unwrap();
                assert!(done);
            });
            println!(
                "{t}T {cin}->{cmid} {hw}x{hw} dw{k}/{s}: apart {apart:.3} ms, fused {fused:.3} ms"
            );
        }
    }
}
