//! Convolution throughput: `cargo run --release -p ptero-gemm --example conv_bench [FILTER]`.
//!
//! NCHW layers, weights packed once; best time and GFLOP/s at 1 thread and at
//! `PTERO_THREADS` (default: all CPUs). Without a filter it runs a few typical layers;
//! `resnet18`, `mobilenet_v2` or `efficientnet_b0` runs every convolution of that model
//! (224×224 input) and prints the sum; any other text keeps the layers whose name
//! contains it; `mobilenet_v2:dw` keeps that model's layers whose name contains `dw`.
//! `fused` times MobileNetV2-like pointwise → depthwise pairs run apart and fused
//! ([`pointwise_depthwise`]). `PTERO_NHWC=1` runs the layers channels-last;
//! `PTERO_WINO=1` packs the layers [`PackedConv::winograd_pays`] accepts for Winograd;
//! `PTERO_PIX=1` packs the others of one group with output pixels as rows. `FLUSH=MB`
//! writes that many MiB between runs, so each starts with cold caches as in a model.

use std::time::Instant;

use ptero_gemm::{
    conv2d, pointwise_depthwise, Activation, Conv2d, ConvWeights, DepthwiseStage, Image, ImageMut,
    PackedConv, PointwiseStage,
};
use ptero_simd::pool::ThreadPool;
use ptero_simd::Parallel;
use ptero_simd::SlotArena;

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

fn typical() -> Vec<(String, Conv2d)> {
    [
        ("resnet conv1 7x7/2", geo(3, 64, 1, 224, 7, 2)),
        ("resnet 3x3 64", geo(64, 64, 1, 56, 3, 1)),
        ("resnet 3x3 128/2", geo(64, 128, 1, 56, 3, 2)),
        ("resnet 3x3 256", geo(256, 256, 1, 14, 3, 1)),
        ("resnet 3x3 512", geo(512, 512, 1, 7, 3, 1)),
        ("pointwise 32->192 112", geo(32, 192, 1, 112, 1, 1)),
        ("pointwise 96->24 56", geo(96, 24, 1, 56, 1, 1)),
        ("depthwise 3x3 144 56", geo(144, 144, 144, 56, 3, 1)),
        ("depthwise 3x3/2 96 112", geo(96, 96, 96, 112, 3, 2)),
    ]
    .into_iter()
    .map(|(n, g)| (n.to_string(), g))
    .collect()
}

fn resnet18() -> Vec<(String, Conv2d)> {
    let mut v = vec![("conv1".to_string(), geo(3, 64, 1, 224, 7, 2))];
    let mut hw = 56;
    let mut cin = 64;
    for (stage, c) in [64, 128, 256, 512].into_iter().enumerate() {
        for b in 0..2 {
            let s = if stage > 0 && b == 0 { 2 } else { 1 };
            v.push((format!("l{stage}.{b} a"), geo(cin, c, 1, hw, 3, s)));
            if s == 2 {
                v.push((format!("l{stage}.{b} down"), geo(cin, c, 1, hw, 1, 2)));
                hw /= 2;
            }
            v.push((format!("l{stage}.{b} b"), geo(c, c, 1, hw, 3, 1)));
            cin = c;
        }
    }
    v
}

/// Inverted-residual networks: (expansion, kernel, stride, channels, repeats) per stage.
fn mbconv(
    stem: usize,
    stages: &[(usize, usize, usize, usize, usize)],
    head: usize,
) -> Vec<(String, Conv2d)> {
    let mut v = vec![("stem".to_string(), geo(3, stem, 1, 224, 3, 2))];
    let (mut hw, mut cin) = (112, stem);
    for (i, &(t, k, s, c, n)) in stages.iter().enumerate() {
        for r in 0..n {
            let s = if r == 0 { s } else { 1 };
            let mid = cin * t;
            if t != 1 {
                v.push((format!("s{i}.{r} expand"), geo(cin, mid, 1, hw, 1, 1)));
            }
            v.push((format!("s{i}.{r} dw{k}/{s}"), geo(mid, mid, mid, hw, k, s)));
            hw = (hw + 2 * (k / 2) - k) / s + 1;
            v.push((format!("s{i}.{r} project"), geo(mid, c, 1, hw, 1, 1)));
            cin = c;
        }
    }
    v.push(("head".to_string(), geo(cin, head, 1, hw, 1, 1)));
    v
}

fn best(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    let start = Instant::now();
    let flush = std::env::var("FLUSH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let mut junk = vec![0u8; flush.unwrap_or(0) << 20];
    while start.elapsed().as_secs_f64() < 0.3 {
        if flush.is_some() {
            for (i, b) in junk.iter_mut().enumerate().step_by(64) {
                *b = b.wrapping_add(i as u8);
            }
        }
        let t0 = Instant::now();
        f();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    best * 1e3
}

/// Pointwise → depthwise pairs, apart and fused: best times at 1 and `threads` threads.
fn fused(threads: usize) {
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
            let nhwc = std::env::var("PTERO_NHWC").is_ok_and(|v| v == "1");
            let lay = |c: usize, h: usize, w: usize| {
                if nhwc {
                    [c * h * w, 1, w * c, c]
                } else {
                    cst(c, h, w)
                }
            };
            let xi = Image {
                data: &x,
                strides: lay(cin, hw, hw),
            };
            let w1i = Image {
                data: &w1,
                strides: cst(cin, 1, 1),
            };
            let p1 = if nhwc {
                PackedConv::channels_last(&g1, w1i)
            } else {
                PackedConv::new(&g1, w1i)
            }
            .unwrap();
            let w2i = Image {
                data: &w2,
                strides: cst(1, k, k),
            };
            let p2 = PackedConv::channels_last(&g2, w2i).unwrap();
            let w2 = if nhwc {
                ConvWeights::Packed(&p2)
            } else {
                ConvWeights::Image(w2i)
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
                        strides: lay(cmid, hw, hw),
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
                        strides: lay(cmid, hw, hw),
                    },
                    w2,
                    Some(&b),
                    ImageMut {
                        data: &mut out,
                        strides: lay(cmid, g2.oh, g2.ow),
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
                        packed: nhwc.then_some(&p2),
                        w: w2i,
                        bias: Some(&b),
                        act,
                    },
                    xi,
                    ImageMut {
                        data: &mut out,
                        strides: lay(cmid, g2.oh, g2.ow),
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

fn main() {
    let threads: usize = std::env::var("PTERO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(ptero_simd::pool::default_threads);
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg == "fused" {
        fused(threads);
        return;
    }
    // `model:text` keeps that model's layers whose name contains `text`.
    let (filter, within) = arg.split_once(':').unwrap_or((arg.as_str(), ""));
    let layers = match filter {
        "resnet18" => resnet18(),
        "mobilenet_v2" => mbconv(
            32,
            &[
                (1, 3, 1, 16, 1),
                (6, 3, 2, 24, 2),
                (6, 3, 2, 32, 3),
                (6, 3, 2, 64, 4),
                (6, 3, 1, 96, 3),
                (6, 3, 2, 160, 3),
                (6, 3, 1, 320, 1),
            ],
            1280,
        ),
        "efficientnet_b0" => mbconv(
            32,
            &[
                (1, 3, 1, 16, 1),
                (6, 3, 2, 24, 2),
                (6, 5, 2, 40, 2),
                (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4),
                (6, 3, 1, 320, 1),
            ],
            1280,
        ),
        f => typical()
            .into_iter()
            .filter(|(n, _)| n.contains(f))
            .collect(),
    };
    let layers: Vec<_> = layers
        .into_iter()
        .filter(|(n, _)| n.contains(within))
        .collect();
    println!("level: {}", ptero_simd::level());
    let counts = [1, threads];
    let pools: Vec<ThreadPool> = counts.iter().map(|&t| ThreadPool::new(t)).collect();
    let arenas: Vec<SlotArena> = counts
        .iter()
        .map(|&t| SlotArena::new(t + 1, ptero_gemm::conv_scratch_floats()).unwrap())
        .collect();
    let mut total = [0.0f64; 2];
    // PTERO_COLD=1: caches evicted before each timed call.
    let mut flush = if std::env::var("PTERO_COLD").is_ok_and(|v| v == "1") {
        vec![0.0f32; 64 << 20]
    } else {
        Vec::new()
    };
    let mut total_flops = 0.0;
    // PTERO_NHWC=1: channels-last input and output, weights packed for them.
    let nhwc = std::env::var("PTERO_NHWC").is_ok_and(|v| v == "1");
    // PTERO_WINO=1: 3×3 stride-1 layers packed for Winograd where it pays.
    let wino = std::env::var("PTERO_WINO").is_ok_and(|v| v == "1");
    // PTERO_PIX=1: one-group layers (not 1×1) packed with output pixels as rows.
    let pix = std::env::var("PTERO_PIX").is_ok_and(|v| v == "1");
    // PTERO_WROWS=1: 3×3 stride-1 layers packed for Winograd with tiles as rows.
    let wrows = std::env::var("PTERO_WROWS").is_ok_and(|v| v == "1");
    for (name, g) in &layers {
        let cin_g = g.cin / g.groups;
        let x = vec![0.5f32; g.n * g.cin * g.ih * g.iw];
        let w = vec![0.01f32; g.cout * cin_g * g.kh * g.kw];
        let b = vec![0.1f32; g.cout];
        let mut out = vec![0.0f32; g.n * g.cout * g.oh * g.ow];
        let wst = [cin_g * g.kh * g.kw, g.kh * g.kw, g.kw, 1];
        let xi = Image {
            data: &x,
            strides: if nhwc {
                [g.cin * g.ih * g.iw, 1, g.iw * g.cin, g.cin]
            } else {
                [g.cin * g.ih * g.iw, g.ih * g.iw, g.iw, 1]
            },
        };
        let wi = Image {
            data: &w,
            strides: wst,
        };
        let packed = if nhwc {
            PackedConv::channels_last(g, wi).unwrap()
        } else if wrows && g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.groups == 1 {
            PackedConv::winograd_rows(g, wi).unwrap()
        } else if wino && PackedConv::winograd_pays(g) {
            PackedConv::winograd(g, wi).unwrap()
        } else if pix && g.groups == 1 && g.kh * g.kw > 1 {
            PackedConv::pixel_rows(g, wi).unwrap()
        } else {
            PackedConv::new(g, wi).unwrap()
        };
        let depthwise = g.groups == g.cin && g.cout == g.cin && g.groups > 1;
        let flops = 2.0 * (g.cout * g.oh * g.ow * cin_g * g.kh * g.kw) as f64;
        total_flops += flops;
        let mut line = format!("{name:<26}");
        for (i, t) in counts.into_iter().enumerate() {
            let os = if nhwc {
                [g.cout * g.oh * g.ow, 1, g.ow * g.cout, g.cout]
            } else {
                [g.cout * g.oh * g.ow, g.oh * g.ow, g.ow, 1]
            };
            let mut run = || {
                conv2d(
                    &pools[i],
                    Some(&arenas[i]),
                    g,
                    xi,
                    if depthwise && !nhwc {
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
            while start.elapsed().as_secs_f64() < 0.2 {
                if !flush.is_empty() {
                    // Evict caches, as the other layers of a model do between calls.
                    for v in flush.iter_mut().step_by(16) {
                        *v += 1.0;
                    }
                }
                let t0 = Instant::now();
                run();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            total[i] += best;
            line += &format!(
                "  {t}T {:>8.3} ms {:>6.1} GFLOP/s",
                best * 1e3,
                flops / best / 1e9
            );
        }
        println!("{line}");
    }
    if layers.len() > 1 {
        println!(
            "{:<26}  1T {:>8.3} ms {:>6.1} GFLOP/s  {}T {:>8.3} ms {:>6.1} GFLOP/s",
            "total",
            total[0] * 1e3,
            total_flops / total[0] / 1e9,
            threads,
            total[1] * 1e3,
            total_flops / total[1] / 1e9
        );
    }
}
