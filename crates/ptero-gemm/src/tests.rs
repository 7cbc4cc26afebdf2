//! Every product checked against an f64 reference, at every level, serial and threaded.

use alloc::vec::Vec;
use std::sync::Mutex;

use ptero_simd::pool::ThreadPool;
use ptero_simd::{set_level, Level, Parallel, Serial, SlotArena};

use crate::{gemm, Activation, Bias, Epilogue, Lhs, MatMut, MatRef, PackedA, PackedB, Rhs};

pub(crate) static LEVEL_LOCK: Mutex<()> = Mutex::new(());

pub(crate) fn levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|l| l.is_supported())
        .collect()
}

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0)
        .collect()
}

struct Case {
    m: usize,
    k: usize,
    n: usize,
    /// A stored transposed (column-major).
    at: bool,
    /// B stored transposed.
    bt: bool,
    /// Output column stride > 1 (written transposed).
    ct: bool,
}

#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f32],
    (ars, acs): (usize, usize),
    b: &[f32],
    (brs, bcs): (usize, usize),
    m: usize,
    k: usize,
    n: usize,
    epi: &Epilogue<'_>,
) -> Vec<f64> {
    let mut out = alloc::vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a[i * ars + p * acs] as f64 * b[p * brs + j * bcs] as f64;
            }
            let mut v = epi.alpha as f64 * acc;
            if epi.beta != 0.0 {
                v += epi.beta as f64
                    * match epi.bias {
                        Bias::None => 0.0,
                        Bias::PerCol(x) => x[j] as f64,
                        Bias::PerRow(x) => x[i] as f64,
                        Bias::Mat(x) => x.at(i, j) as f64,
                    };
            }
            v = match epi.act {
                Activation::None => v,
                Activation::Relu => v.max(0.0),
                Activation::Clamp(lo, hi) => v.max(lo as f64).min(hi as f64),
                Activation::Silu => v / (1.0 + (-v).exp()),
            };
            out[i * n + j] = v;
        }
    }
    out
}

fn run_case(par: &dyn Parallel, arena: Option<&SlotArena>, c: &Case, packed: (bool, bool)) {
    let (m, k, n) = (c.m, c.k, c.n);
    let a = data(m * k, 1);
    let b = data(k * n, 2);
    let (ars, acs) = if c.at { (1, m) } else { (k, 1) };
    let (brs, bcs) = if c.bt { (1, k) } else { (n, 1) };
    let am = MatRef::new(&a, m, k, ars, acs).unwrap();
    let bm = MatRef::new(&b, k, n, brs, bcs).unwrap();
    let colb = data(n, 3);
    let rowb = data(m, 4);
    let matb = data(m * n, 5);
    let epis = [
        Epilogue::default(),
        Epilogue {
            alpha: 0.5,
            beta: 2.0,
            bias: Bias::PerCol(&colb),
            act: Activation::Relu,
        },
        Epilogue {
            bias: Bias::PerRow(&rowb),
            act: Activation::Clamp(-0.25, 0.5),
            ..Epilogue::default()
        },
        Epilogue {
            beta: -1.0,
            bias: Bias::Mat(MatRef::row_major(&matb, m, n).unwrap()),
            ..Epilogue::default()
        },
        Epilogue {
            bias: Bias::PerCol(&colb),
            act: Activation::Silu,
            ..Epilogue::default()
        },
    ];
    let pa = packed.0.then(|| PackedA::new(am).unwrap());
    let pb = packed.1.then(|| PackedB::new(bm).unwrap());
    for epi in &epis {
        let want = reference(&a, (ars, acs), &b, (brs, bcs), m, k, n, epi);
        let mut out = alloc::vec![f32::NAN; m * n];
        let (crs, ccs) = if c.ct { (1, m) } else { (n, 1) };
        let lhs = match &pa {
            Some(p) => Lhs::Packed(p),
            None => Lhs::Mat(am),
        };
        let rhs = match &pb {
            Some(p) => Rhs::Packed(p.view()),
            None => Rhs::Mat(bm),
        };
        gemm(
            par,
            arena,
            lhs,
            rhs,
            MatMut::new(&mut out, m, n, crs, ccs).unwrap(),
            epi,
        )
        .unwrap();
        for i in 0..m {
            for j in 0..n {
                let got = out[i * crs + j * ccs] as f64;
                let w = want[i * n + j];
                assert!(
                    (got - w).abs() <= 1e-5 * (1.0 + k as f64).sqrt() * (1.0 + w.abs()),
                    "level {} m{m} k{k} n{n} at{} bt{} ct{} packed {packed:?} ({i},{j}): {got} vs {w}",
                    ptero_simd::level(),
                    c.at,
                    c.bt,
                    c.ct
                );
            }
        }
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let shapes = [
        (1, 1, 1),
        (1, 7, 5),
        (1, 300, 70),
        (2, 3, 4),
        (5, 17, 33),
        (13, 1, 40),
        (12, 32, 32),
        (37, 300, 65),
        (70, 600, 9),
        (64, 40, 1),
        (3, 0, 4),
        (145, 260, 129),
        // 7-row strips, and tasks split by rows and columns to share out evenly.
        (49, 40, 160),
        (98, 70, 100),
    ];
    for (m, k, n) in shapes {
        for (at, bt, ct) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            v.push(Case {
                m,
                k,
                n,
                at,
                bt,
                ct,
            });
        }
    }
    v
}

#[test]
fn products_at_every_level() {
    let _g = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = ptero_simd::level();
    let pool = ThreadPool::new(3);
    let arena = SlotArena::new(3, crate::scratch_floats()).unwrap();
    for l in levels() {
        set_level(l).unwrap();
        for c in cases() {
            for packed in [(false, false), (false, true), (true, false), (true, true)] {
                run_case(&Serial, None, &c, packed);
                run_case(&pool, Some(&arena), &c, packed);
            }
        }
    }
    set_level(before).unwrap();
}

#[test]
fn errors_instead_of_panics() {
    let a = [0.0f32; 6];
    assert!(MatRef::new(&a, 3, 3, 3, 1).is_err());
    assert!(MatRef::new(&a, 2, 3, usize::MAX, 1).is_err());
    let mut c = [0.0f32; 4];
    assert!(MatMut::new(&mut c, 2, 2, 1, 1).is_err(), "aliasing strides");
    let am = MatRef::row_major(&a, 2, 3).unwrap();
    let bm = MatRef::row_major(&a, 2, 3).unwrap();
    let r = gemm(
        &Serial,
        None,
        Lhs::Mat(am),
        Rhs::Mat(bm),
        MatMut::row_major(&mut c, 2, 2).unwrap(),
        &Epilogue::default(),
    );
    assert!(r.is_err());
    let short = [1.0f32];
    let r = gemm(
        &Serial,
        None,
        Lhs::Mat(am),
        Rhs::Mat(MatRef::row_major(&a, 3, 2).unwrap()),
        MatMut::row_major(&mut c, 2, 2).unwrap(),
        &Epilogue {
            bias: Bias::PerCol(&short),
            ..Epilogue::default()
        },
    );
    assert!(r.is_err());
}

mod conv {
    use super::*;
    use crate::{conv2d, Conv2d, ConvWeights, Image, ImageMut, PackedConv};

    fn reference(g: &Conv2d, x: &[f32], w: &[f32], b: Option<&[f32]>, act: Activation) -> Vec<f64> {
        let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
        let mut out = vec![0.0f64; g.n * g.cout * g.oh * g.ow];
        for n in 0..g.n {
            for oc in 0..g.cout {
                let grp = oc / cout_g;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = b.map_or(0.0, |b| b[oc] as f64);
                        for icl in 0..cin_g {
                            let ic = grp * cin_g + icl;
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                        - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                        - g.pad[1] as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.ih as isize
                                        || ix >= g.iw as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * g.cin + ic) * g.ih + iy as usize) * g.iw
                                        + ix as usize];
                                    let wv = w[((oc * cin_g + icl) * g.kh + ky) * g.kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        acc = match act {
                            Activation::None => acc,
                            Activation::Relu => acc.max(0.0),
                            Activation::Clamp(lo, hi) => acc.max(lo as f64).min(hi as f64),
                            Activation::Silu => acc / (1.0 + (-acc).exp()),
                        };
                        out[((n * g.cout + oc) * g.oh + oy) * g.ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn geo(
        n: usize,
        cin: usize,
        cout: usize,
        groups: usize,
        (ih, iw): (usize, usize),
        (kh, kw): (usize, usize),
        s: usize,
        p: usize,
        d: usize,
    ) -> Conv2d {
        let o = |i: usize, k: usize| (i + 2 * p - d * (k - 1) - 1) / s + 1;
        Conv2d {
            n,
            cin,
            cout,
            groups,
            ih,
            iw,
            oh: o(ih, kh),
            ow: o(iw, kw),
            kh,
            kw,
            stride: [s, s],
            pad: [p, p],
            dilation: [d, d],
        }
    }

    /// `x` (an NCHW input of `g`) copied channels-last, with its strides.
    fn channels_last_copy(g: &Conv2d, x: &[f32]) -> (Vec<f32>, [usize; 4]) {
        let st = [g.cin * g.ih * g.iw, 1, g.iw * g.cin, g.cin];
        let mut t = vec![0.0f32; x.len()];
        for n in 0..g.n {
            for c in 0..g.cin {
                for h in 0..g.ih {
                    for w in 0..g.iw {
                        t[n * st[0] + c * st[1] + h * st[2] + w * st[3]] =
                            x[((n * g.cin + c) * g.ih + h) * g.iw + w];
                    }
                }
            }
        }
        (t, st)
    }

    /// Every output of `out` (strides `os`) within 1e-4 relative of `want` (NCHW).
    fn assert_matches(g: &Conv2d, out: &[f32], os: [usize; 4], want: &[f64], what: &str) {
        for n in 0..g.n {
            for c in 0..g.cout {
                for y in 0..g.oh {
                    for xx in 0..g.ow {
                        let got = out[n * os[0] + c * os[1] + y * os[2] + xx * os[3]];
                        let wv = want[((n * g.cout + c) * g.oh + y) * g.ow + xx];
                        assert!(
                            (got as f64 - wv).abs() <= 1e-4 * (1.0 + wv.abs()),
                            "{what}: ({n},{c},{y},{xx}) {got} vs {wv}"
                        );
                    }
                }
            }
        }
    }

    /// Runs [`conv2d`] with weights `pc` (packed from `w`, `[cout, cin, kh, kw]`) against the
    /// direct reference: channels-first and channels-last images, one thread and a pool, with
    /// and without an arena, with and without bias and activation.
    fn check_packed_conv(
        l: Level,
        g: &Conv2d,
        pc: &PackedConv,
        w: &[f32],
        pool: &ThreadPool,
        arena: &SlotArena,
    ) {
        let x = data(g.n * g.cin * g.ih * g.iw, 7);
        let b = data(g.cout, 9);
        let cst = |c: usize, h: usize, ww: usize| [c * h * ww, h * ww, ww, 1];
        let nhwc = |c: usize, h: usize, ww: usize| [c * h * ww, 1, ww * c, c];
        for (act, bias) in [
            (Activation::None, None),
            (Activation::Clamp(-0.5, 0.5), Some(&b[..])),
        ] {
            let want = reference(g, &x, w, bias, act);
            for (layout, par, with_arena) in [
                ("nchw", &Serial as &dyn Parallel, true),
                ("nchw", pool as &dyn Parallel, true),
                ("nchw", pool as &dyn Parallel, false),
                ("nhwc", pool as &dyn Parallel, true),
            ] {
                let (xd, xs, os) = if layout == "nhwc" {
                    let (t, st) = channels_last_copy(g, &x);
                    (t, st, nhwc(g.cout, g.oh, g.ow))
                } else {
                    (x.clone(), cst(g.cin, g.ih, g.iw), cst(g.cout, g.oh, g.ow))
                };
                let mut out = vec![f32::NAN; g.n * g.cout * g.oh * g.ow];
                conv2d(
                    par,
                    with_arena.then_some(arena),
                    g,
                    Image {
                        data: &xd,
                        strides: xs,
                    },
                    ConvWeights::Packed(pc),
                    bias,
                    ImageMut {
                        data: &mut out,
                        strides: os,
                    },
                    act,
                )
                .unwrap();
                assert_matches(
                    g,
                    &out,
                    os,
                    &want,
                    &format!("{l} {g:?} {layout} arena {with_arena} act {act:?}"),
                );
            }
        }
    }

    #[test]
    fn convolutions_at_every_level() {
        let _g = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let before = ptero_simd::level();
        let pool = ThreadPool::new(3);
        let arena = SlotArena::new(4, crate::conv_scratch_floats()).unwrap();
        let geos = [
            geo(1, 3, 8, 1, (9, 11), (3, 3), 1, 1, 1),
            // First layers (the direct stem kernel): 1-3 vectors of outputs, interior
            // runs of 6-8 pixels with ragged ends.
            geo(1, 3, 16, 1, (19, 37), (3, 3), 2, 1, 1),
            geo(1, 3, 32, 1, (23, 29), (3, 3), 2, 1, 1),
            geo(1, 3, 48, 1, (17, 40), (3, 3), 1, 1, 1),
            geo(2, 4, 6, 2, (7, 7), (3, 3), 2, 1, 1),
            geo(1, 16, 16, 16, (10, 9), (3, 3), 1, 1, 1),
            geo(1, 8, 8, 8, (11, 11), (3, 3), 2, 1, 1),
            geo(1, 6, 6, 6, (8, 8), (5, 5), 1, 2, 2),
            geo(1, 24, 40, 1, (6, 6), (1, 1), 1, 0, 1),
            geo(2, 8, 12, 4, (5, 6), (1, 1), 1, 0, 1),
            geo(1, 4, 8, 1, (1, 50), (1, 5), 1, 2, 1),
            geo(1, 4, 8, 4, (1, 50), (1, 3), 1, 1, 1),
            geo(1, 3, 5, 1, (30, 30), (7, 7), 2, 3, 1),
            geo(1, 4, 8, 4, (6, 6), (3, 3), 1, 1, 1),
            geo(1, 1, 4, 1, (4, 4), (2, 2), 1, 0, 1),
            // Depthwise planes narrower than a vector, channels not a multiple of one,
            // over images and task boundaries (channels in the lanes).
            geo(2, 37, 37, 37, (7, 7), (3, 3), 1, 1, 1),
            geo(1, 21, 21, 21, (14, 13), (5, 5), 2, 2, 1),
            geo(2, 19, 19, 19, (9, 9), (3, 3), 2, 2, 2),
            geo(1, 19, 19, 19, (8, 8), (3, 3), 2, 1, 1),
            // Rows long enough for runs of eight pixels sliding along them (3 x 3 and
            // 5 x 5, stride 1 and 2), channels a vector and a part.
            geo(1, 24, 24, 24, (12, 21), (3, 3), 1, 1, 1),
            geo(1, 32, 32, 32, (9, 37), (3, 3), 2, 1, 1),
            geo(2, 20, 20, 20, (11, 30), (5, 5), 1, 2, 1),
            geo(1, 16, 16, 16, (13, 40), (5, 5), 2, 2, 1),
            // Depthwise planes taller than one scratch band.
            geo(1, 2, 2, 2, (200, 180), (3, 3), 1, 1, 1),
            geo(1, 2, 2, 2, (150, 181), (5, 5), 2, 2, 1),
            // Stems: few input channels, whole vectors of output channels.
            geo(2, 3, 32, 1, (17, 15), (3, 3), 2, 1, 1),
            geo(1, 3, 48, 1, (20, 19), (7, 7), 2, 3, 1),
            geo(1, 4, 64, 1, (9, 9), (3, 3), 1, 2, 2),
            // Few pixels, many output channels: channel blocks split over threads.
            geo(1, 40, 80, 1, (3, 3), (3, 3), 1, 1, 1),
            geo(2, 24, 70, 1, (5, 4), (1, 1), 2, 0, 1),
            geo(1, 48, 48, 48, (5, 5), (3, 3), 2, 1, 1),
        ];
        for l in levels() {
            set_level(l).unwrap();
            for g in &geos {
                let cin_g = g.cin / g.groups;
                let x = data(g.n * g.cin * g.ih * g.iw, 7);
                let w = data(g.cout * cin_g * g.kh * g.kw, 8);
                let b = data(g.cout, 9);
                let cst = |c: usize, h: usize, ww: usize| [c * h * ww, h * ww, ww, 1];
                // Channels-last strides too: [n, c, h, w] at n*HWC + h*WC + w*C + c.
                let nhwc = |c: usize, h: usize, ww: usize| [c * h * ww, 1, ww * c, c];
                for (act, bias) in [
                    (Activation::None, None),
                    (Activation::Relu, Some(&b[..])),
                    (Activation::Silu, Some(&b[..])),
                    (Activation::Clamp(-0.5, 0.5), Some(&b[..])),
                ] {
                    let want = reference(g, &x, &w, bias, act);
                    for (layout, packed, par) in [
                        ("nchw", false, &Serial as &dyn Parallel),
                        ("nchw", true, &pool),
                        ("nhwc-out", false, &pool),
                        ("nhwc-in", true, &Serial),
                        ("nhwc", false, &pool),
                        ("nhwc", true, &Serial),
                        ("nhwc-out", true, &pool),
                        ("no-arena", false, &pool),
                        ("nhwc-no-arena", false, &pool),
                    ] {
                        let in_cl = layout == "nhwc-in"
                            || layout.starts_with("nhwc-no")
                            || layout == "nhwc";
                        let out_cl = layout.starts_with("nhwc") && layout != "nhwc-in";
                        let (xd, xs) = if in_cl {
                            channels_last_copy(g, &x)
                        } else {
                            (x.clone(), cst(g.cin, g.ih, g.iw))
                        };
                        let os = if out_cl {
                            nhwc(g.cout, g.oh, g.ow)
                        } else {
                            cst(g.cout, g.oh, g.ow)
                        };
                        let wi = Image {
                            data: &w,
                            strides: cst(cin_g, g.kh, g.kw),
                        };
                        // Packed for the output's layout ("nhwc-in": channels-first packing
                        // of a channels-last input; "nhwc-out": the reverse).
                        let pc = if out_cl
                            || (layout == "nhwc-in"
                                && g.groups == g.cin
                                && g.cout == g.cin
                                && g.groups > 1)
                        {
                            PackedConv::channels_last(g, wi).unwrap()
                        } else {
                            PackedConv::new(g, wi).unwrap()
                        };
                        // Depthwise filters are packed for channels-last images only; the
                        // "nhwc-in" case runs them through the planar kernel.
                        let weights = if packed
                            && (out_cl
                                || layout == "nhwc-in"
                                || !(g.groups == g.cin && g.cout == g.cin))
                        {
                            ConvWeights::Packed(&pc)
                        } else {
                            ConvWeights::Image(wi)
                        };
                        let mut out = vec![f32::NAN; g.n * g.cout * g.oh * g.ow];
                        conv2d(
                            par,
                            (!layout.ends_with("no-arena")).then_some(&arena),
                            g,
                            Image {
                                data: &xd,
                                strides: xs,
                            },
                            weights,
                            bias,
                            ImageMut {
                                data: &mut out,
                                strides: os,
                            },
                            act,
                        )
                        .unwrap();
                        assert_matches(
                            g,
                            &out,
                            os,
                            &want,
                            &format!("{l} {g:?} {layout} packed {packed} act {act:?}"),
                        );
                    }
                }
            }
        }
        set_level(before).unwrap();
    }

    /// Output pixels as the GEMM's rows: strips across image rows and past the last pixel,
    /// panels of output channels with a tail, strides, dilation, padding, 1-wide images,
    /// more threads than panels.
    #[test]
    fn pixel_row_convolutions_at_every_level() {
        let _g = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let before = ptero_simd::level();
        let pool = ThreadPool::new(3);
        let arena = SlotArena::new(4, crate::conv_scratch_floats()).unwrap();
        let geos = [
            geo(1, 16, 64, 1, (7, 7), (3, 3), 1, 1, 1),
            geo(1, 8, 40, 1, (14, 14), (3, 3), 2, 1, 1),
            geo(2, 5, 7, 1, (9, 11), (3, 3), 1, 1, 1),
            geo(1, 3, 33, 1, (5, 4), (3, 3), 1, 0, 1),
            geo(1, 6, 20, 1, (8, 9), (5, 5), 1, 2, 2),
            geo(1, 4, 16, 1, (1, 9), (1, 3), 1, 1, 1),
            geo(1, 10, 9, 1, (12, 12), (3, 3), 2, 0, 1),
            geo(1, 70, 100, 1, (3, 3), (3, 3), 1, 1, 1),
            geo(1, 4, 4, 1, (1, 1), (3, 3), 1, 1, 1),
        ];
        for l in levels() {
            set_level(l).unwrap();
            for g in &geos {
                let w = data(g.cout * g.cin * g.kh * g.kw, 8);
                let taps = g.kh * g.kw;
                let pc = PackedConv::pixel_rows(
                    g,
                    Image {
                        data: &w,
                        strides: [g.cin * taps, taps, g.kw, 1],
                    },
                )
                .unwrap();
                check_packed_conv(l, g, &pc, &w, &pool, &arena);
                // Filters stored `[cin, cout, kh, kw]`: packed through a copy.
                let mut wt = vec![0.0f32; w.len()];
                for oc in 0..g.cout {
                    for ic in 0..g.cin {
                        for t in 0..taps {
                            wt[(ic * g.cout + oc) * taps + t] = w[(oc * g.cin + ic) * taps + t];
                        }
                    }
                }
                let pt = PackedConv::pixel_rows(
                    g,
                    Image {
                        data: &wt,
                        strides: [taps, g.cout * taps, g.kw, 1],
                    },
                )
                .unwrap();
                check_packed_conv(l, g, &pt, &w, &pool, &arena);
            }
        }
        set_level(before).unwrap();
        // No input channels: refused (the kernel's reach is computed from the last one).
        let none = geo(1, 0, 4, 1, (5, 5), (3, 3), 1, 1, 1);
        let wi = Image {
            data: &[],
            strides: [0, 9, 3, 1],
        };
        assert!(PackedConv::pixel_rows(&none, wi).is_err());
    }

    /// Winograd's F(2×2, 3×3) against the direct convolution: odd and even sizes, tile
    /// blocks across panels and rows, channel blocks, K blocks, both layouts.
    #[test]
    fn winograd_convolutions_at_every_level() {
        let _g = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let before = ptero_simd::level();
        let pool = ThreadPool::new(3);
        let arena = SlotArena::new(4, crate::conv_scratch_floats()).unwrap();
        let geos = [
            geo(1, 16, 16, 1, (8, 8), (3, 3), 1, 1, 1),
            geo(2, 5, 7, 1, (9, 11), (3, 3), 1, 1, 1),
            geo(1, 3, 13, 1, (3, 3), (3, 3), 1, 0, 1),
            geo(1, 8, 30, 1, (20, 37), (3, 3), 1, 2, 1),
            geo(1, 24, 200, 1, (7, 7), (3, 3), 1, 1, 1),
            geo(1, 300, 20, 1, (6, 5), (3, 3), 1, 1, 1),
            geo(1, 4, 4, 1, (1, 1), (3, 3), 1, 1, 1),
            geo(1, 12, 24, 1, (66, 40), (3, 3), 1, 1, 1),
        ];
        // ResNet's 56², 28² and 14² layers pay; its 7² ones (16 tiles, weights 16/9 as
        // large to read) and strided or 1×1 ones do not.
        assert!(PackedConv::winograd_pays(&geo(
            1,
            64,
            64,
            1,
            (56, 56),
            (3, 3),
            1,
            1,
            1
        )));
        assert!(PackedConv::winograd_pays(&geo(
            1,
            128,
            128,
            1,
            (28, 28),
            (3, 3),
            1,
            1,
            1
        )));
        assert!(PackedConv::winograd_pays(&geo(
            1,
            256,
            256,
            1,
            (14, 14),
            (3, 3),
            1,
            1,
            1
        )));
        assert!(!PackedConv::winograd_pays(&geo(
            1,
            512,
            512,
            1,
            (7, 7),
            (3, 3),
            1,
            1,
            1
        )));
        assert!(!PackedConv::winograd_pays(&geo(
            1,
            64,
            128,
            1,
            (56, 56),
            (3, 3),
            2,
            1,
            1
        )));
        assert!(!PackedConv::winograd_pays(&geo(
            1,
            64,
            64,
            1,
            (56, 56),
            (1, 1),
            1,
            0,
            1
        )));
        // Hostile sizes answer false, not an overflow.
        let mut huge = geo(1, 64, 64, 1, (56, 56), (3, 3), 1, 1, 1);
        (huge.ih, huge.iw, huge.oh, huge.ow) = (usize::MAX, usize::MAX, usize::MAX, usize::MAX);
        huge.pad = [usize::MAX / 2, usize::MAX / 2];
        assert!(!PackedConv::winograd_pays(&huge));
        for l in levels() {
            set_level(l).unwrap();
            for g in &geos {
                let w = data(g.cout * g.cin * 9, 8);
                let pc = PackedConv::winograd_columns(
                    g,
                    Image {
                        data: &w,
                        strides: [g.cin * 9, 9, 3, 1],
                    },
                )
                .unwrap();
                assert!(pc.is_winograd());
                check_packed_conv(l, g, &pc, &w, &pool, &arena);
                let pr = PackedConv::winograd_rows(
                    g,
                    Image {
                        data: &w,
                        strides: [g.cin * 9, 9, 3, 1],
                    },
                )
                .unwrap();
                assert!(pr.is_winograd());
                check_packed_conv(l, g, &pr, &w, &pool, &arena);
            }
            // Weights packed for Winograd refuse another stride.
            let g = geo(1, 4, 4, 1, (6, 6), (3, 3), 1, 1, 1);
            let w = data(4 * 4 * 9, 3);
            let wi = Image {
                data: &w,
                strides: [36, 9, 3, 1],
            };
            let pc = PackedConv::winograd(&g, wi).unwrap();
            let g2 = geo(1, 4, 4, 1, (6, 6), (3, 3), 2, 1, 1);
            let x = data(4 * 36, 1);
            let mut out = vec![0.0f32; 4 * g2.oh * g2.ow];
            let r = conv2d(
                &Serial,
                None,
                &g2,
                Image {
                    data: &x,
                    strides: [144, 36, 6, 1],
                },
                ConvWeights::Packed(&pc),
                None,
                ImageMut {
                    data: &mut out,
                    strides: [4 * g2.oh * g2.ow, g2.oh * g2.ow, g2.ow, 1],
                },
                Activation::None,
            );
            assert!(r.is_err());
            assert!(PackedConv::winograd(&g2, wi).is_err());
        }
        set_level(before).unwrap();
    }

    /// The fused pointwise → depthwise path against the two convolutions run apart.
    #[test]
    fn pointwise_then_depthwise_fused() {
        use crate::{pointwise_depthwise, DepthwiseStage, PointwiseStage};
        let _g = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let before = ptero_simd::level();
        let pool = ThreadPool::new(2);
        let arena = SlotArena::new(3, crate::conv_scratch_floats()).unwrap();
        // (n, cin, cmid, (h, w), k, stride, pad, dilation)
        let cases = [
            (1, 8, 64, (64, 64), 3, 1, 1, 1),
            (2, 5, 40, (81, 83), 3, 2, 1, 1),
            (1, 6, 48, (75, 77), 5, 2, 2, 1),
            (1, 4, 70, (70, 61), 3, 1, 2, 2),
            // Padding wider than the filter reaches: bands of padding only.
            (1, 3, 64, (64, 64), 3, 1, 3, 1),
        ];
        for l in levels() {
            set_level(l).unwrap();
            for &(n, cin, cmid, hw, k, st, pad, dil) in &cases {
                let g1 = geo(n, cin, cmid, 1, hw, (1, 1), 1, 0, 1);
                let g2 = geo(n, cmid, cmid, cmid, hw, (k, k), st, pad, dil);
                let x = data(n * cin * hw.0 * hw.1, 3);
                let w1 = data(cmid * cin, 4);
                let w2 = data(cmid * k * k, 5);
                let (b1, b2) = (data(cmid, 6), data(cmid, 7));
                let cst = |c: usize, h: usize, ww: usize| [c * h * ww, h * ww, ww, 1];
                let xi = Image {
                    data: &x,
                    strides: cst(cin, hw.0, hw.1),
                };
                let w1i = Image {
                    data: &w1,
                    strides: cst(cin, 1, 1),
                };
                let w2i = Image {
                    data: &w2,
                    strides: cst(1, k, k),
                };
                let p1 = PackedConv::new(&g1, w1i).unwrap();
                let (a1, a2) = (Activation::Clamp(0.0, 6.0), Activation::Silu);
                let mut mid = vec![0.0f32; n * cmid * hw.0 * hw.1];
                conv2d(
                    &pool,
                    Some(&arena),
                    &g1,
                    xi,
                    ConvWeights::Packed(&p1),
                    Some(&b1),
                    ImageMut {
                        data: &mut mid,
                        strides: cst(cmid, hw.0, hw.1),
                    },
                    a1,
                )
                .unwrap();
                let os = cst(cmid, g2.oh, g2.ow);
                let mut want = vec![0.0f32; n * cmid * g2.oh * g2.ow];
                conv2d(
                    &pool,
                    Some(&arena),
                    &g2,
                    Image {
                        data: &mid,
                        strides: cst(cmid, hw.0, hw.1),
                    },
                    ConvWeights::Image(w2i),
                    Some(&b2),
                    ImageMut {
                        data: &mut want,
                        strides: os,
                    },
                    a2,
                )
                .unwrap();
                for par in [&pool as &dyn Parallel, &Serial] {
                    let mut got = vec![f32::NAN; want.len()];
                    let fused = pointwise_depthwise(
                        par,
                        Some(&arena),
                        &g1,
                        PointwiseStage {
                            w: &p1,
                            bias: Some(&b1),
                            act: a1,
                        },
                        DepthwiseStage {
                            geo: g2,
                            packed: None,
                            w: w2i,
                            bias: Some(&b2),
                            act: a2,
                        },
                        xi,
                        ImageMut {
                            data: &mut got,
                            strides: os,
                        },
                    )
                    .unwrap();
                    assert!(fused, "{l} {g2:?}: the fused path did not run");
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{l} {g2:?} at {i}: {g} vs {w}"
                        );
                    }
                }
                // Without an arena it declines.
                let mut got = vec![0.0f32; want.len()];
                let r = pointwise_depthwise(
                    &pool,
                    None,
                    &g1,
                    PointwiseStage {
                        w: &p1,
                        bias: None,
                        act: a1,
                    },
                    DepthwiseStage {
                        geo: g2,
                        packed: None,
                        w: w2i,
                        bias: None,
                        act: a2,
                    },
                    xi,
                    ImageMut {
                        data: &mut got,
                        strides: os,
                    },
                );
                assert!(!r.unwrap());
            }
        }
        set_level(before).unwrap();
    }
}
