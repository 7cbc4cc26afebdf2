//! Load-time layout pass: image values flowing between convolutions are laid out
//! channels-last (`dim_order` `[0, 2, 3, 1]`), where a pointwise convolution is a plain
//! product with pixels as rows and a depthwise one runs over channel vectors (see
//! `docs/layout-pass.md`).
//!
//! Only the layout of planned intermediate values changes: sizes, capacity and memory
//! plan stay as exported, and every kernel honours any dim order through strides, so a
//! value laid out here costs at worst speed, never correctness. Values read or written
//! by anything outside a short list of operators keep the exported order.

use alloc::vec::Vec;

use ptero_core::{ScalarType, Storage, Value};

use crate::fuse::Rewrite;
use crate::plan::{Instr, MethodPlan};

const CHANNELS_LAST: [u8; 4] = [0, 2, 3, 1];

/// Rounds of the border rule at most (real networks settle in two or three).
const MAX_BORDER_ROUNDS: usize = 32;

/// Input channels up to which a first layer reads either layout at full speed (the
/// convolution kernels' direct path for an image's colour planes).
const FEW_CHANNELS: usize = 4;

/// How an operator treats its 4-d operands.
enum Role {
    /// A convolution: its input and output may each take either layout, independently
    /// (argument positions; the transposed flag's position). Only those that run faster
    /// channels-last ([`prefers_channels_last`]) make a group switch.
    Conv {
        io: &'static [usize],
        transposed: usize,
    },
    /// Elementwise: its operands of the output's shape must share one layout; operands
    /// with unit height and width are the same bytes in either layout and are left alone.
    Agree,
    /// Reads its first operand in any layout (a mean over the image).
    Reads,
}

fn role(op: &str) -> Option<Role> {
    Some(match op {
        "aten::convolution.out" => Role::Conv {
            io: &[0, 9],
            transposed: 6,
        },
        crate::fuse::CONV_BN_ACT => Role::Conv {
            io: &[0, 17],
            transposed: 6,
        },
        crate::fuse::CONV_DW => Role::Conv {
            io: &[0, 17, 34],
            transposed: 6,
        },
        "aten::add.out"
        | "aten::sub.out"
        | "aten::mul.out"
        | "aten::div.out"
        | "ptero::add_relu.out"
        | "aten::relu.out"
        | "aten::hardtanh.out"
        | "aten::clamp.out"
        | "aten::silu.out"
        | "aten::sigmoid.out"
        | "aten::hardswish.out"
        | "aten::hardsigmoid.out"
        | "aten::gelu.out"
        | "aten::leaky_relu.out"
        | "aten::clone.out" => Role::Agree,
        "aten::mean.out" | "aten::mean.dim_out" => Role::Reads,
        _ => return None,
    })
}

/// True for the convolutions channels-last images speed up: pointwise ones with unit
/// stride (a product with pixels as rows, read in place) and depthwise ones (channel
/// vectors). Other kernels run as fast channels-first, or faster: a network of them
/// alone (ResNet) keeps its layout. `args` start with the input, weight, bias, stride,
/// padding, dilation, transposed, output padding and groups.
fn prefers_channels_last(values: &[Value], args: &[u32]) -> bool {
    let (Some(&x), Some(&w), Some(&st), Some(&gr)) =
        (args.first(), args.get(1), args.get(3), args.get(8))
    else {
        return false;
    };
    let (Some(Value::Tensor(x)), Some(Value::Tensor(w)), Some(Value::Int(groups))) = (
        values.get(x as usize),
        values.get(w as usize),
        values.get(gr as usize),
    ) else {
        return false;
    };
    if x.dim() != 4 || w.dim() != 4 {
        return false;
    }
    let (cin, ws) = (x.sizes()[1], w.sizes());
    let unit_stride = crate::fuse::int_list(values, st).is_some_and(|s| s.iter().all(|&v| v == 1));
    let pointwise = ws[2] == 1 && ws[3] == 1 && unit_stride;
    let depthwise = *groups > 1 && *groups as usize == cin && ws[0] == cin;
    pointwise || depthwise
}

fn find(parent: &mut [u32], mut v: u32) -> u32 {
    while parent[v as usize] != v {
        let p = parent[parent[v as usize] as usize];
        parent[v as usize] = p;
        v = p;
    }
    v
}

/// Picks the values to lay out channels-last and sets their dim order. `rewrites` are
/// fusion's, per chain and instruction.
pub(crate) fn plan(plan: &MethodPlan, values: &mut [Value], rewrites: &[Vec<Rewrite>]) {
    let n = values.len();
    let Ok(n32) = u32::try_from(n) else {
        return;
    };
    // A candidate is a contiguous 4-d f32 image in planned memory; anything else found in
    // a group pins it.
    let candidate = |v: &Value| match v {
        Value::Tensor(t) => {
            t.dim() == 4
                && t.dtype == ScalarType::Float
                && t.is_contiguous()
                && matches!(t.storage, Storage::Buffer { .. })
        }
        _ => false,
    };
    let image = |v: u32| -> Option<&ptero_core::TensorMeta> {
        match values.get(v as usize) {
            Some(Value::Tensor(t)) if t.dim() == 4 => Some(t),
            _ => None,
        }
    };
    let mut parent: Vec<u32> = (0..n32).collect();
    let mut pinned = alloc::vec![false; n];
    let mut conv = alloc::vec![false; n];
    // Each convolution's image operands (input first) and whether its input has a few
    // channels only.
    let mut convs: Vec<(Vec<u32>, bool)> = Vec::new();
    let pin_all = |vs: &[u32], pinned: &mut [bool]| {
        for &v in vs {
            if let Some(p) = pinned.get_mut(v as usize) {
                *p = true;
            }
        }
    };
    for &v in plan.inputs.iter().chain(&plan.outputs) {
        pin_all(&[v], &mut pinned);
    }
    for (c, chain) in plan.chains.iter().enumerate() {
        // A program that jumps may run instructions in any order: keep it as exported.
        let jumps = chain.iter().any(|i| matches!(i, Instr::JumpFalse { .. }));
        for (pc, instr) in chain.iter().enumerate() {
            let rw = rewrites.get(c).and_then(|r| r.get(pc));
            let (op, args): (&str, &[u32]) = match (instr, rw) {
                (_, Some(Rewrite::Skip)) => continue,
                (Instr::Kernel { .. }, Some(Rewrite::Replace { op, args })) => (op, args),
                (Instr::Kernel { op, start, len }, _) => {
                    match (
                        plan.operators.get(*op as usize),
                        plan.arg_pool.get(*start as usize..(*start + *len) as usize),
                    ) {
                        (Some(o), Some(a)) => (o.as_str(), a),
                        _ => {
                            pin_all(&crate::fuse::mentions(plan, instr), &mut pinned);
                            continue;
                        }
                    }
                }
                _ => {
                    pin_all(&crate::fuse::mentions(plan, instr), &mut pinned);
                    continue;
                }
            };
            let role = if jumps { None } else { role(op) };
            match role {
                Some(Role::Conv { io, transposed }) => {
                    let forward = matches!(
                        args.get(transposed).and_then(|&v| values.get(v as usize)),
                        Some(Value::Bool(false))
                    );
                    if !forward {
                        pin_all(args, &mut pinned);
                        continue;
                    }
                    let io_values: Vec<u32> =
                        io.iter().filter_map(|&i| args.get(i).copied()).collect();
                    let few = image(io_values.first().copied().unwrap_or(u32::MAX))
                        .is_some_and(|t| t.sizes()[1] <= FEW_CHANNELS);
                    convs.push((io_values, few));
                    let is_io = |v: u32| io.iter().any(|&i| args.get(i) == Some(&v));
                    let prefers = op == crate::fuse::CONV_DW || prefers_channels_last(values, args);
                    for &v in args {
                        if is_io(v) {
                            if let (Some(c), true) = (conv.get_mut(v as usize), prefers) {
                                *c = true;
                            }
                        } else {
                            // Weights, norms and scalars: constants or not images.
                            pin_all(&[v], &mut pinned);
                        }
                    }
                }
                Some(Role::Agree) => {
                    let out = args.last().copied();
                    let shape = out.and_then(image).map(|t| t.dims());
                    let mut first: Option<u32> = None;
                    for &v in args {
                        let Some(t) = image(v) else {
                            // Scalars and tensors of other ranks: not images.
                            continue;
                        };
                        let s = t.sizes();
                        if Some(t.dims()) == shape {
                            match first {
                                None => first = Some(v),
                                Some(f) => {
                                    let (a, b) = (find(&mut parent, f), find(&mut parent, v));
                                    parent[b as usize] = a;
                                }
                            }
                        } else if !(s[2] == 1 && s[3] == 1) {
                            // A broadcast over the image in one layout but not the other.
                            pin_all(args, &mut pinned);
                        }
                    }
                }
                Some(Role::Reads) => {
                    pin_all(args.get(1..).unwrap_or(&[]), &mut pinned);
                }
                None => pin_all(&crate::fuse::mentions(plan, instr), &mut pinned),
            }
        }
    }
    // A group turns channels-last when every member is a candidate, none is pinned, and
    // a convolution reads or writes one of them.
    let mut ok = alloc::vec![true; n];
    let mut touched = alloc::vec![false; n];
    for v in 0..n32 {
        let r = find(&mut parent, v) as usize;
        let vi = v as usize;
        let is_member = image(v).is_some();
        if !is_member {
            continue;
        }
        if pinned[vi] || !candidate(&values[vi]) {
            ok[r] = false;
        }
        if conv[vi] {
            touched[r] = true;
        }
    }
    let mut on: Vec<bool> = (0..n).map(|r| ok[r] && touched[r]).collect();
    // A convolution between layouts runs its slowest kernels (channels gathered one value
    // at a time, or tiles stored transposed). A group that borders more such convolutions
    // than it feeds convolutions within one layout goes back to the exported layout (an
    // isolated block between channels-first values gains nothing); then again with the
    // new borders, until nothing changes. A first layer reading a few channels is no
    // border (its direct kernel reads any layout). Each round turns at least one group
    // off, so this ends; a hostile program could make that one group per round over
    // every convolution, so past a bound everything keeps the exported layout.
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > MAX_BORDER_ROUNDS {
            on.iter_mut().for_each(|o| *o = false);
            break;
        }
        let mut border = alloc::vec![0u32; n];
        let mut within = alloc::vec![0u32; n];
        for (all, few) in &convs {
            // Images of one pixel are the same bytes in either layout.
            let io: Vec<u32> = all
                .iter()
                .copied()
                .filter(|&v| image(v).is_some_and(|t| t.sizes()[2] * t.sizes()[3] != 1))
                .collect();
            let roots: Vec<usize> = io.iter().map(|&v| find(&mut parent, v) as usize).collect();
            let cl: Vec<bool> = roots.iter().map(|&r| on[r]).collect();
            if !cl.iter().any(|&c| c) {
                continue;
            }
            let mixed = cl.iter().any(|&c| !c);
            let stem = *few && io.first() == all.first() && !cl[0] && cl[1..].iter().all(|&c| c);
            for &r in &roots {
                if !on[r] {
                    continue;
                }
                if mixed && !stem {
                    border[r] += 1;
                } else {
                    within[r] += 1;
                }
            }
        }
        let mut changed = false;
        for r in 0..n {
            if on[r] && within[r] < border[r] {
                on[r] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let chosen: Vec<u32> = (0..n32)
        .filter(|&v| image(v).is_some() && on[find(&mut parent, v) as usize])
        .collect();
    for v in chosen {
        if let Some(Value::Tensor(t)) = values.get_mut(v as usize) {
            // Cannot fail: a permutation of a 4-d tensor's dims.
            let _ = t.set_dim_order(&CHANNELS_LAST);
        }
    }
}
