//! Load-time fusions of adjacent steps: SiLU into a convolution's epilogue, a 1 x 1
//! convolution with the depthwise one it feeds.

use alloc::vec;
use alloc::vec::Vec;

use ptero_gemm::Activation;
use ptero_simd::ops::{Binary, Unary};

use crate::graph::Graph;
use crate::plan::{ConvStep, Slot, Step};

/// Steps, the node of each, and the further nodes a fused step holds.
type Fused = (Vec<Step>, Vec<(usize, &'static str)>, Vec<Vec<usize>>);

/// How many nodes read each value.
pub(crate) fn readers(g: &Graph) -> Vec<usize> {
    let mut readers = vec![0usize; g.values.len()];
    for n in &g.nodes {
        for id in n.op.value_ids().0 {
            readers[g.by_id[&id]] += 1;
        }
    }
    readers
}

/// Folds `y = c · sigmoid(c)` after a convolution without an activation (SiLU, as the
/// exporter lowers it: Sigmoid then Multiply) into the convolution's epilogue, when the
/// convolution's result and the sigmoid have no other readers.
pub(crate) fn fuse_silu(
    steps: Vec<Step>,
    nodes: Vec<(usize, &'static str)>,
    extra: Vec<Vec<usize>>,
    slots: &[Slot],
    readers: &[usize],
) -> Fused {
    let mut out: Fused = (Vec::new(), Vec::new(), Vec::new());
    let mut it = steps.into_iter().zip(nodes).zip(extra).peekable();
    while let Some(((step, at), mut ex)) = it.next() {
        let mut step = step;
        if let Step::Conv(c) = &mut step {
            let internal = |v: usize| matches!(slots[v], Slot::Unused);
            let sig = match it.peek() {
                Some((
                    (
                        Step::Unary {
                            op: Unary::Sigmoid,
                            x,
                            out: s,
                            clamp: None,
                        },
                        _,
                    ),
                    _,
                )) if *x == c.out && c.act == Activation::None => Some(*s),
                _ => None,
            };
            if let Some(s) = sig {
                let sig_step = it.next();
                let mul = match it.peek() {
                    Some((
                        (
                            Step::Binary {
                                op: Binary::Mul,
                                a,
                                b,
                                out: m,
                                clamp: None,
                            },
                            _,
                        ),
                        _,
                    )) if ((*a == c.out && *b == s) || (*a == s && *b == c.out))
                        && readers[c.out] == 2
                        && readers[s] == 1
                        && internal(c.out)
                        && internal(s) =>
                    {
                        Some(*m)
                    }
                    _ => None,
                };
                match (mul, sig_step) {
                    (Some(m), Some(((_, sig_at), _))) => {
                        if let Some(((_, mul_at), _)) = it.next() {
                            c.act = Activation::Silu;
                            c.out = m;
                            ex.push(sig_at.0);
                            ex.push(mul_at.0);
                        }
                    }
                    (None, Some(sig_step)) => {
                        out.0.push(step);
                        out.1.push(at);
                        out.2.push(ex);
                        let ((s2, a2), e2) = sig_step;
                        out.0.push(s2);
                        out.1.push(a2);
                        out.2.push(e2);
                        continue;
                    }
                    _ => {}
                }
            }
        }
        out.0.push(step);
        out.1.push(at);
        out.2.push(ex);
    }
    out
}

/// Folds each plain 1 x 1 convolution whose result is read by the depthwise convolution
/// right after it, and by nothing else, into one [`Step::PwDw`].
pub(crate) fn fuse_pairs(
    steps: Vec<Step>,
    step_node: Vec<(usize, &'static str)>,
    extra: Vec<Vec<usize>>,
    slots: &[Slot],
    readers: &[usize],
) -> Fused {
    let mut out: Fused = (Vec::new(), Vec::new(), Vec::new());
    let mut it = steps.into_iter().zip(step_node).zip(extra).peekable();
    while let Some(((step, at), mut ex)) = it.next() {
        let fusable = |pw: &ConvStep, dw: &ConvStep| {
            let g1 = &pw.geo;
            g1.kh == 1
                && g1.kw == 1
                && g1.stride == [1, 1]
                && g1.pad == [0, 0]
                && g1.groups == 1
                && dw.geo.groups == dw.geo.cin
                && dw.geo.cin == g1.cout
                && dw.geo.cout == dw.geo.cin
                && dw.x == pw.out
                && readers[pw.out] == 1
                && matches!(slots[pw.out], Slot::Unused)
        };
        let pair = match (&step, it.peek()) {
            (Step::Conv(pw), Some(((Step::Conv(dw), _), _))) => fusable(pw, dw),
            _ => false,
        };
        if pair {
            if let (Step::Conv(pw), Some(((Step::Conv(dw), at2), ex2))) = (step, it.next()) {
                ex.push(at2.0);
                ex.extend(ex2);
                out.0.push(Step::PwDw { pw, dw });
                out.1.push(at);
                out.2.push(ex);
            }
            continue;
        }
        out.0.push(step);
        out.1.push(at);
        out.2.push(ex);
    }
    out
}

/// Folds an int8 Clamp into the int8 convolution, product or elementwise step right
/// before it when that step's result feeds only the clamp: the clamp's bounds narrow the
/// step's output range (the same integers, since a clamp keeps its quantization).
pub(crate) fn fuse_q8_clamp(
    steps: Vec<Step>,
    step_node: Vec<(usize, &'static str)>,
    extra: Vec<Vec<usize>>,
    slots: &[Slot],
    readers: &[usize],
) -> Fused {
    use crate::quant::QStep;
    let mut out: Fused = (Vec::new(), Vec::new(), Vec::new());
    let mut it = steps.into_iter().zip(step_node).zip(extra).peekable();
    while let Some(((mut step, at), mut ex)) = it.next() {
        let clamp = match it.peek() {
            Some(((Step::Q(q), _), _)) => match **q {
                QStep::Clamp { x, out, lo, hi } => Some((x, out, lo, hi)),
                _ => None,
            },
            _ => None,
        };
        if let (Step::Q(q), Some((x, cout, lo, hi))) = (&mut step, clamp) {
            let internal = readers[x] == 1 && matches!(slots[x], Slot::Unused);
            let target = match &mut **q {
                QStep::Conv(c) if c.out == x => Some((&mut c.range, &mut c.out)),
                QStep::Qs8Fc { out, range, .. } | QStep::Binary { out, range, .. } if *out == x => {
                    Some((range, out))
                }
                _ => None,
            };
            if let (Some((range, o)), true) = (target, internal) {
                range.0 = range.0.max(i32::from(lo));
                range.1 = range.1.min(i32::from(hi));
                *o = cout;
                if let Some(((_, at2), ex2)) = it.next() {
                    ex.push(at2.0);
                    ex.extend(ex2);
                }
            }
        }
        out.0.push(step);
        out.1.push(at);
        out.2.push(ex);
    }
    out
}
