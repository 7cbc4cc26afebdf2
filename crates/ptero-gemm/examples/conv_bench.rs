//! Convolution throughput: `cargo run --release -p ptero-gemm --example conv_bench`.
//!
//! ResNet/MobileNet-like layers, NCHW, weights packed once; GFLOP/s at 1 thread and at
//! `PTERO_THREADS` (default: all CPUs). An argument filters layers by name.

use std::time::Instant;

use ptero_gemm::{conv2d, Activation, Conv2d, ConvWeights, Image, ImageMut, PackedConv};
use ptero_simd::pool::ThreadPool;
use ptero_simd::SlotArena;

#[allow(clippy::too_many_arguments)]
fn geo(cin: usize, cout: usize, groups: usize, hw: usize, k: usize, s: usize, p: usize) -> Conv2d {
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

fn main() {
    let threads: usize = std::env::var("PTERO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(ptero_simd::pool::default_threads);
    let layers = [
        ("resnet conv1 7x7/2", geo(3, 64, 1, 224, 7, 2, 3)),
        ("resnet 3x3 64", geo(64, 64, 1, 56, 3, 1, 1)),
        ("resnet 3x3 128/2", geo(64, 128, 1, 56, 3, 2, 1)),
        ("resnet 3x3 256", geo(256, 256, 1, 14, 3, 1, 1)),
        ("resnet 3x3 512", geo(512, 512, 1, 7, 3, 1, 1)),
        ("pointwise 32->192 112", geo(32, 192, 1, 112, 1, 1, 0)),
        ("pointwise 96->24 56", geo(96, 24, 1, 56, 1, 1, 0)),
        ("depthwise 3x3 144 56", geo(144, 144, 144, 56, 3, 1, 1)),
        ("depthwise 3x3/2 96 112", geo(96, 96, 96, 112, 3, 2, 1)),
    ];
    // An argument keeps only the layers whose name contains it.
    let only = std::env::args().nth(1).unwrap_or_default();
    println!("level: {}", ptero_simd::level());
    for (name, g) in layers
        .into_iter()
        .filter(|(n, _)| n.contains(only.as_str()))
    {
        let cin_g = g.cin / g.groups;
        let x = vec![0.5f32; g.n * g.cin * g.ih * g.iw];
        let w = vec![0.01f32; g.cout * cin_g * g.kh * g.kw];
        let b = vec![0.1f32; g.cout];
        let mut out = vec![0.0f32; g.n * g.cout * g.oh * g.ow];
        let wst = [cin_g * g.kh * g.kw, g.kh * g.kw, g.kw, 1];
        let xi = Image {
            data: &x,
            strides: [g.cin * g.ih * g.iw, g.ih * g.iw, g.iw, 1],
        };
        let wi = Image {
            data: &w,
            strides: wst,
        };
        let packed = PackedConv::new(&g, wi).unwrap();
        let depthwise = g.groups == g.cin && g.cout == g.cin && g.groups > 1;
        let flops = 2.0 * (g.cout * g.oh * g.ow * cin_g * g.kh * g.kw) as f64;
        let mut line = format!("{name:<26}");
        for t in [1, threads] {
            let pool = ThreadPool::new(t);
            let arena = SlotArena::new(t, ptero_gemm::conv_scratch_floats()).unwrap();
            let os = [g.cout * g.oh * g.ow, g.oh * g.ow, g.ow, 1];
            let mut run = || {
                conv2d(
                    &pool,
                    Some(&arena),
                    &g,
                    xi,
                    if depthwise {
                        ConvWeights::Image(wi)
                    } else {
                        ConvWeights::Packed(&packed)
                    },
                    Some(&b),
                    ImageMut {
                        data: &mut out,
                        strides: os,
                    },
                    Activation::Relu,
                )
                .unwrap()
            };
            run();
            let mut best = f64::MAX;
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < 0.5 {
                let t0 = Instant::now();
                run();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            line += &format!(
                "  {t}T {:>8.3} ms {:>6.1} GFLOP/s",
                best * 1e3,
                flops / best / 1e9
            );
        }
        println!("{line}");
    }
}
