//! Every product checked against an f64 reference, at every level, serial and threaded.

use alloc::vec::Vec;
use std::sync::Mutex;

use ptero_simd::pool::ThreadPool;
use ptero_simd::{set_level, Level, Parallel, Serial, SlotArena};

use crate::{gemm, Activation, Bias, Epilogue, Lhs, MatMut, MatRef, PackedA, PackedB, Rhs};

static LEVEL_LOCK: Mutex<()> = Mutex::new(());

fn levels() -> Vec<Level> {
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
            Some(p) => Rhs::Packed(p),
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
