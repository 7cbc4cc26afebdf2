//! Load-time fusion: rewrites of the instruction list that keep every value the program
//! can observe, applied only where an intermediate value has no other reader.
//!
//! - `permute_copy(W, [1, 0])` of a constant weight feeding `addmm(bias, x, Wᵀ)` (with
//!   alpha = beta = 1) or `mm(x, Wᵀ)` becomes `linear(x, W, bias)`: the transposed copy
//!   is never made, and `linear`'s prepare step packs `W` once.
//! - `convolution` → `_native_batch_norm_legit_no_training` (→ `relu` | `hardtanh` |
//!   `silu` | `sigmoid`·`mul`) with constant f32 weights becomes one `ptero::conv_bn_act.out`, whose prepare
//!   step folds the normalization into the packed weights and bias; so does a
//!   convolution followed by an activation alone (a model whose norms were folded before
//!   export), with the normalization's arguments None.
//!
//! - A pointwise `conv_bn_act` whose result only feeds a depthwise `conv_bn_act` (an
//!   inverted-residual block's expansion) becomes one `ptero::conv_dw.out`, which never
//!   writes the wide intermediate out.
//! - `add` → `relu` becomes `ptero::add_relu` (f32).
//! - `max_pool2d_with_indices` whose indices nothing reads becomes `ptero::max_pool2d`,
//!   which writes the values only.
//! - `sigmoid(x)` → `mul(x, ·)` becomes `silu(x)`; after a batch norm it is the fused
//!   convolution's activation.
//!
//! A rule only fires when the kernels it rewrites into are registered.

use alloc::string::String;
use alloc::vec::Vec;

use ptero_core::{KernelRegistry, ScalarType, Storage, Value};

use crate::plan::{Instr, MethodPlan};

/// What happens to one instruction.
#[derive(Debug, Clone)]
pub(crate) enum Rewrite {
    Keep,
    /// Its result is computed by a fused instruction instead.
    Skip,
    /// Run `op` with `args` (value indices) instead.
    Replace {
        op: String,
        args: Vec<u32>,
    },
}

pub(crate) const CONV_BN_ACT: &str = "ptero::conv_bn_act.out";
pub(crate) const CONV_DW: &str = "ptero::conv_dw.out";
pub(crate) const MAX_POOL_VALUES: &str = "ptero::max_pool2d.out";

/// Activation codes of [`CONV_BN_ACT`]'s `act` argument.
pub(crate) const ACT_NONE: i64 = 0;
pub(crate) const ACT_CLAMP: i64 = 1;
pub(crate) const ACT_SILU: i64 = 2;

struct Graph<'p> {
    plan: &'p MethodPlan,
    /// Distinct instructions (or method inputs/outputs) that mention each value.
    uses: Vec<u32>,
}

impl<'p> Graph<'p> {
    fn new(plan: &'p MethodPlan, nvalues: usize) -> Graph<'p> {
        let mut uses = alloc::vec![0u32; nvalues];
        let mut seen: Vec<u32> = Vec::new();
        let bump = |uses: &mut Vec<u32>, v: u32, seen: &mut Vec<u32>| {
            if !seen.contains(&v) {
                seen.push(v);
                if let Some(u) = uses.get_mut(v as usize) {
                    *u = u.saturating_add(1);
                }
            }
        };
        for chain in &plan.chains {
            for instr in chain {
                seen.clear();
                for v in mentions(plan, instr) {
                    bump(&mut uses, v, &mut seen);
                }
            }
        }
        for &v in plan.inputs.iter().chain(&plan.outputs) {
            if let Some(u) = uses.get_mut(v as usize) {
                // Inputs and outputs are observed from outside: never fuse them away.
                *u = u.saturating_add(2);
            }
        }
        Graph { plan, uses }
    }

    fn args(&self, instr: &Instr) -> Option<(&'p str, &'p [u32])> {
        match *instr {
            Instr::Kernel { op, start, len } => Some((
                self.plan.operators.get(op as usize)?.as_str(),
                self.plan
                    .arg_pool
                    .get(start as usize..(start + len) as usize)?,
            )),
            _ => None,
        }
    }

    /// Instructions (and method inputs/outputs, twice each) that mention `v`.
    fn uses(&self, v: u32) -> u32 {
        self.uses.get(v as usize).copied().unwrap_or(u32::MAX)
    }

    /// `x * sigmoid(x)` as the two instructions at `pc` and `pc + 1`: `sigmoid(x) -> s`
    /// and `mul(x, s) | mul(s, x) -> y`, `s` read by the `mul` only. Returns `(x, y)`.
    fn silu_at(&self, chain: &[Instr], pc: usize) -> Option<(u32, u32)> {
        let (op, a) = self.args(chain.get(pc)?)?;
        if op != "aten::sigmoid.out" || a.len() < 2 || !self.single_use(a[1]) {
            return None;
        }
        let (x, s) = (a[0], a[1]);
        let (mop, m) = self.args(chain.get(pc + 1)?)?;
        let pair = m.len() >= 3 && ((m[0] == x && m[1] == s) || (m[0] == s && m[1] == x));
        (mop == "aten::mul.out" && pair).then(|| (x, m[2]))
    }

    /// True when `v` is mentioned by exactly two instructions (its producer and one
    /// consumer) and nothing else.
    fn single_use(&self, v: u32) -> bool {
        self.uses.get(v as usize) == Some(&2)
    }
}

fn tensor(values: &[Value], v: u32) -> Option<&ptero_core::TensorMeta> {
    match values.get(v as usize) {
        Some(Value::Tensor(t)) => Some(t),
        _ => None,
    }
}

fn is_const_f32(values: &[Value], v: u32) -> bool {
    tensor(values, v).is_some_and(|t| {
        t.dtype == ScalarType::Float && matches!(t.storage, Storage::Constant { .. })
    })
}

fn is_one(values: &[Value], v: u32) -> bool {
    match values.get(v as usize) {
        Some(Value::Int(1)) => true,
        Some(Value::Double(d)) => *d == 1.0,
        _ => false,
    }
}

pub(crate) fn int_list(values: &[Value], v: u32) -> Option<Vec<i64>> {
    match values.get(v as usize)? {
        Value::IntList(items) => items
            .iter()
            .map(|&i| match values.get(i as usize) {
                Some(Value::Int(x)) => Some(*x),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// True when tensors `a` and `b` may share bytes of planned memory.
fn overlaps(values: &[Value], a: u32, b: u32) -> bool {
    let (Some(x), Some(y)) = (tensor(values, a), tensor(values, b)) else {
        return true;
    };
    match (x.storage, y.storage) {
        (Storage::Buffer { id: i, offset: o }, Storage::Buffer { id: j, offset: p }) => {
            i == j
                && o < p.saturating_add(y.capacity().max(1))
                && p < o.saturating_add(x.capacity().max(1))
        }
        (Storage::Constant { .. }, _) | (_, Storage::Constant { .. }) => false,
        // Unplanned storage is given at run time: assume the worst.
        _ => true,
    }
}

/// Values an instruction mentions, list items included.
pub(crate) fn mentions(plan: &MethodPlan, instr: &Instr) -> Vec<u32> {
    let mut out = Vec::new();
    match *instr {
        Instr::Kernel { start, len, .. } | Instr::Delegate { start, len, .. } => {
            for &v in plan
                .arg_pool
                .get(start as usize..(start + len) as usize)
                .unwrap_or(&[])
            {
                out.push(v);
                if let Some(Value::TensorList(items) | Value::OptionalTensorList(items)) =
                    plan.values.get(v as usize)
                {
                    out.extend_from_slice(items);
                }
            }
        }
        Instr::Move { from, to } => out.extend_from_slice(&[from, to]),
        Instr::JumpFalse { cond, .. } => out.push(cond),
        Instr::Free { value } => out.push(value),
    }
    out
}

/// Gives `dst` the planned memory of `home` (a result nothing reads any more) when
/// that memory stays untouched from instruction `after` of chain `c` to `dst`'s last
/// reader: the memory planner had placed `dst` over a value the fused instruction still
/// reads. Returns whether it moved.
///
/// Anything overlapping `home` that is live in that span is mentioned by an instruction
/// in it: it was dead when the program wrote `home` (before `after`), so it is written
/// again before it is read.
fn relocate(
    g: &Graph<'_>,
    c: usize,
    values: &mut [Value],
    dst: u32,
    home: u32,
    after: usize,
) -> bool {
    let plan = g.plan;
    if plan.inputs.contains(&dst) || plan.outputs.contains(&dst) {
        return false;
    }
    let (Some(d), Some(h)) = (tensor(values, dst), tensor(values, home)) else {
        return false;
    };
    let fits = matches!(d.storage, Storage::Buffer { .. })
        && matches!(h.storage, Storage::Buffer { .. })
        && d.capacity() <= h.capacity();
    if !fits {
        return false;
    }
    let chain = &plan.chains[c];
    let elsewhere = plan
        .chains
        .iter()
        .enumerate()
        .any(|(k, ch)| k != c && ch.iter().any(|i| mentions(plan, i).contains(&dst)));
    let Some(last) = chain.iter().rposition(|i| mentions(plan, i).contains(&dst)) else {
        return false;
    };
    if elsewhere || last <= after {
        return false;
    }
    for instr in &chain[after + 1..=last] {
        // Moves and delegates alias or hand memory on in ways this does not follow.
        if !matches!(instr, Instr::Kernel { .. }) {
            return false;
        }
        let clash = mentions(plan, instr)
            .into_iter()
            .any(|w| w != dst && tensor(values, w).is_some() && overlaps(values, w, home));
        if clash {
            return false;
        }
    }
    let storage = h.storage;
    if let Some(Value::Tensor(t)) = values.get_mut(dst as usize) {
        t.storage = storage;
    }
    true
}

/// Plans the rewrites of every chain; may append values (constants the fused
/// instructions take) to `values`.
pub(crate) fn plan(
    plan: &MethodPlan,
    values: &mut Vec<Value>,
    kernels: &KernelRegistry,
) -> Vec<Vec<Rewrite>> {
    let mut out: Vec<Vec<Rewrite>> = plan
        .chains
        .iter()
        .map(|c| alloc::vec![Rewrite::Keep; c.len()])
        .collect();
    let g = Graph::new(plan, values.len());
    let has_linear = kernels.contains("aten::linear.out");
    let has_cba = kernels.contains(CONV_BN_ACT);
    let has_clone = kernels.contains("aten::clone.out");
    let has_silu = kernels.contains("aten::silu.out");
    let has_add_relu = kernels.contains("ptero::add_relu.out");
    let has_max_values = kernels.contains(MAX_POOL_VALUES);
    let mut none_value: Option<u32> = None;
    let push = |values: &mut Vec<Value>, v: Value| -> u32 {
        values.push(v);
        (values.len() - 1) as u32
    };
    for (c, chain) in plan.chains.iter().enumerate() {
        // Producer of each value within this chain (straight-line code only: a jump
        // target between producer and consumer would break the pairing).
        let has_jumps = chain.iter().any(|i| matches!(i, Instr::JumpFalse { .. }));
        if has_jumps {
            continue;
        }
        for pc in 0..chain.len() {
            if !matches!(out[c][pc], Rewrite::Keep) {
                continue;
            }
            let Some((op, args)) = g.args(&chain[pc]) else {
                continue;
            };
            // add(x, y) -> relu  ==>  add_relu, where the add ran (adjacent, f32, and the
            // result apart from both operands: it is written while they are read).
            if has_add_relu && op == "aten::add.out" && args.len() >= 4 && pc + 1 < chain.len() {
                let s = args[3];
                if let Some(("aten::relu.out", r)) = g.args(&chain[pc + 1]) {
                    // Static f32 tensors of one shape and layout (the fused kernel does not
                    // broadcast), alpha 1.
                    let fixed = |v: u32| {
                        tensor(values, v).filter(|m| {
                            m.dtype == ScalarType::Float
                                && m.dynamism == ptero_core::Dynamism::Static
                        })
                    };
                    let same = match (
                        fixed(args[0]),
                        fixed(args[1]),
                        fixed(r.get(1).copied().unwrap_or(u32::MAX)),
                    ) {
                        (Some(x), Some(y), Some(o)) => {
                            x.sizes() == y.sizes()
                                && x.sizes() == o.sizes()
                                && x.dim_order() == y.dim_order()
                                && x.dim_order() == o.dim_order()
                        }
                        _ => false,
                    };
                    let ok = r.len() >= 2
                        && r[0] == s
                        && same
                        && is_one(values, args[2])
                        && g.single_use(s)
                        && matches!(out[c][pc + 1], Rewrite::Keep)
                        && !overlaps(values, args[0], r[1])
                        && !overlaps(values, args[1], r[1]);
                    if ok {
                        out[c][pc] = Rewrite::Replace {
                            op: "ptero::add_relu.out".into(),
                            args: alloc::vec![args[0], args[1], args[2], r[1], r[1]],
                        };
                        out[c][pc + 1] = Rewrite::Skip;
                    }
                }
                continue;
            }
            // sigmoid(x) -> mul(x, .)  ==>  silu(x), where the mul ran.
            if has_silu && op == "aten::sigmoid.out" {
                if let Some((x, y)) = g.silu_at(chain, pc) {
                    if tensor(values, x).is_some_and(|m| m.dtype == ScalarType::Float)
                        && matches!(out[c][pc + 1], Rewrite::Keep)
                    {
                        out[c][pc] = Rewrite::Skip;
                        out[c][pc + 1] = Rewrite::Replace {
                            op: "aten::silu.out".into(),
                            args: alloc::vec![x, y, y],
                        };
                    }
                }
                continue;
            }
            // max_pool2d_with_indices whose indices nothing reads  ==>  values only.
            if has_max_values
                && op == "aten::max_pool2d_with_indices.out"
                && args.len() >= 8
                && g.uses(args[7]) == 1
            {
                out[c][pc] = Rewrite::Replace {
                    op: MAX_POOL_VALUES.into(),
                    args: alloc::vec![
                        args[0], args[1], args[2], args[3], args[4], args[5], args[6], args[6]
                    ],
                };
                continue;
            }
            // permute_copy(W, [1, 0]) -> addmm / mm  ==>  linear.
            if has_linear && op == "aten::permute_copy.out" && args.len() >= 3 {
                let (w, t) = (args[0], args[2]);
                let ok = is_const_f32(values, w)
                    && tensor(values, w).is_some_and(|m| m.dim() == 2)
                    && int_list(values, args[1]).as_deref() == Some(&[1, 0])
                    && g.single_use(t);
                if !ok {
                    continue;
                }
                let Some(next) = (pc + 1..chain.len())
                    .find(|&q| g.args(&chain[q]).is_some_and(|(_, a)| a.contains(&t)))
                else {
                    continue;
                };
                let Some((nop, nargs)) = g.args(&chain[next]) else {
                    continue;
                };
                let wn = tensor(values, w).map_or(0, |m| m.sizes()[0]);
                let replaced = match nop {
                    "aten::addmm.out" if nargs.len() >= 6 && nargs[2] == t => {
                        let bias_ok = tensor(values, nargs[0])
                            .is_some_and(|b| b.dim() == 1 && b.sizes()[0] == wn);
                        let x2 = tensor(values, nargs[1]).is_some_and(|x| x.dim() == 2);
                        (bias_ok && x2 && is_one(values, nargs[3]) && is_one(values, nargs[4]))
                            .then(|| alloc::vec![nargs[1], w, nargs[0], nargs[5], nargs[5]])
                    }
                    "aten::mm.out" if nargs.len() >= 3 && nargs[1] == t => {
                        let none = *none_value.get_or_insert_with(|| push(values, Value::None));
                        Some(alloc::vec![nargs[0], w, none, nargs[2], nargs[2]])
                    }
                    _ => None,
                };
                if let Some(args) = replaced {
                    out[c][pc] = Rewrite::Skip;
                    out[c][next] = Rewrite::Replace {
                        op: "aten::linear.out".into(),
                        args,
                    };
                }
                continue;
            }
            // convolution -> batch norm (-> relu | hardtanh)  ==>  conv_bn_act.
            if has_cba && op == "aten::convolution.out" && args.len() >= 10 {
                let v1 = args[9];
                let weights_const = is_const_f32(values, args[1])
                    && (matches!(values.get(args[2] as usize), Some(Value::None))
                        || is_const_f32(values, args[2]));
                if !weights_const
                    || !matches!(values.get(args[6] as usize), Some(Value::Bool(false)))
                {
                    continue;
                }
                // The fused instruction runs where the convolution ran and writes the last
                // result early: only adjacent instructions, so no other value's lifetime
                // falls in between.
                let next = |q: usize| g.args(chain.get(q).unwrap_or(&Instr::Free { value: 0 }));
                // A batch norm right after, if any: its parameters and result.
                let bn = match next(pc + 1) {
                    Some(("aten::_native_batch_norm_legit_no_training.out", bargs))
                        if bargs.len() >= 10
                            && bargs[0] == v1
                            && g.single_use(v1)
                            && [1usize, 2, 3, 4].iter().all(|&i| is_const_f32(values, bargs[i]))
                            // The saved statistics must not be read: only the BN mentions
                            // them.
                            && g.uses.get(bargs[8] as usize) == Some(&1)
                            && g.uses.get(bargs[9] as usize) == Some(&1) =>
                    {
                        Some(([bargs[1], bargs[2], bargs[3], bargs[4], bargs[6]], bargs[7]))
                    }
                    _ => None,
                };
                let (v2, apc) = match bn {
                    Some((_, v2)) => (v2, pc + 2),
                    None => (v1, pc + 1),
                };
                // An activation right after, if v2 has no other reader: (code, bounds,
                // result, the instructions it replaces).
                let mut act = (ACT_NONE, None::<(u32, u32)>, v2, [None::<usize>; 2]);
                match next(apc) {
                    Some(("aten::relu.out", a))
                        if g.single_use(v2) && a.len() >= 2 && a[0] == v2 =>
                    {
                        let zero = push(values, Value::Double(0.0));
                        let inf = push(values, Value::Double(f64::INFINITY));
                        act = (ACT_CLAMP, Some((zero, inf)), a[1], [Some(apc), None]);
                    }
                    Some(("aten::hardtanh.out", a))
                        if g.single_use(v2) && a.len() >= 4 && a[0] == v2 =>
                    {
                        act = (ACT_CLAMP, Some((a[1], a[2])), a[3], [Some(apc), None]);
                    }
                    Some(("aten::silu.out", a))
                        if g.single_use(v2) && a.len() >= 2 && a[0] == v2 =>
                    {
                        act = (ACT_SILU, None, a[1], [Some(apc), None]);
                    }
                    Some(("aten::sigmoid.out", _)) if g.uses(v2) == 3 => {
                        if let Some((x, y)) = g.silu_at(chain, apc) {
                            if x == v2 {
                                act = (ACT_SILU, None, y, [Some(apc), Some(apc + 1)]);
                            }
                        }
                    }
                    _ => {}
                }
                // A convolution alone is already packed by its own prepare step; fusing
                // pays when a normalization or an activation goes away.
                if bn.is_none() && act.0 == ACT_NONE {
                    continue;
                }
                let (code, bounds, dst, act_pcs) = act;
                // The input is read while the result is written: they must not share
                // memory. The planner may have given the result the input's buffer (the
                // input was dead by the time the last instruction ran); then the fused
                // instruction writes the convolution's own result and the last instruction
                // becomes a copy, still one pass fewer.
                //
                // Better still, when the convolution's or the norm's own buffer stays free for
                // as long as the result is read, the result moves there and no copy is made.
                let last_replaced = act_pcs.iter().flatten().last().copied().unwrap_or(pc + 1);
                // The convolution's and the norm's results are written by nothing now.
                let homes = [Some(v1), bn.map(|b| b.1)];
                let direct = !overlaps(values, args[0], dst)
                    || homes.into_iter().flatten().any(|home| {
                        !overlaps(values, args[0], home)
                            && relocate(&g, c, values, dst, home, last_replaced)
                    });
                let (target, copy) = if direct {
                    (dst, false)
                } else if has_clone && !overlaps(values, args[0], v1) && !overlaps(values, v1, dst)
                {
                    (v1, true)
                } else {
                    continue;
                };
                let code_v = push(values, Value::Int(code));
                let (lo, hi) = match bounds {
                    Some(b) => b,
                    None => {
                        let z = push(values, Value::Double(0.0));
                        (z, z)
                    }
                };
                // Without a batch norm its four parameters are None (no normalization).
                let norm = match bn {
                    Some((p, _)) => p,
                    None => {
                        let none = *none_value.get_or_insert_with(|| push(values, Value::None));
                        let eps = push(values, Value::Double(0.0));
                        [none, none, none, none, eps]
                    }
                };
                let mut fused: Vec<u32> = args[..9].to_vec();
                fused.extend_from_slice(&norm);
                fused.extend_from_slice(&[code_v, lo, hi, target, target]);
                out[c][pc] = Rewrite::Replace {
                    op: CONV_BN_ACT.into(),
                    args: fused,
                };
                if bn.is_some() {
                    out[c][pc + 1] = Rewrite::Skip;
                }
                for a in act_pcs.iter().flatten() {
                    out[c][*a] = Rewrite::Skip;
                }
                if copy {
                    let none = *none_value.get_or_insert_with(|| push(values, Value::None));
                    out[c][last_replaced] = Rewrite::Replace {
                        op: "aten::clone.out".into(),
                        args: alloc::vec![v1, none, dst, dst],
                    };
                }
            }
        }
    }
    if kernels.contains(CONV_DW) {
        for (c, chain) in plan.chains.iter().enumerate() {
            fuse_pointwise_depthwise(&g, values, &mut out[c], chain.len());
        }
    }
    out
}

/// `conv_bn_act` (1 × 1, one group) → `conv_bn_act` (depthwise) ==> `conv_dw`, where the
/// first's result has no other reader and only skipped instructions lie between them.
fn fuse_pointwise_depthwise(g: &Graph<'_>, values: &[Value], out: &mut [Rewrite], len: usize) {
    let cba = |r: &Rewrite| match r {
        Rewrite::Replace { op, args } if op == CONV_BN_ACT && args.len() >= 19 => {
            Some(args.clone())
        }
        _ => None,
    };
    let int = |v: u32| match values.get(v as usize) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    };
    for pc2 in 1..len {
        let Some(a2) = cba(&out[pc2]) else {
            continue;
        };
        let mut pc1 = pc2 - 1;
        while pc1 > 0 && matches!(out[pc1], Rewrite::Skip) {
            pc1 -= 1;
        }
        let Some(a1) = cba(&out[pc1]) else {
            continue;
        };
        let (x, mid, dst) = (a1[0], a1[17], a2[17]);
        let sizes = |v: u32| tensor(values, v).map(|t| t.sizes().to_vec());
        let (Some(w1), Some(w2), Some(m)) = (sizes(a1[1]), sizes(a2[1]), sizes(mid)) else {
            continue;
        };
        let pointwise = w1.len() == 4
            && w1[2] == 1
            && w1[3] == 1
            && int(a1[8]) == Some(1)
            && int_list(values, a1[3]).is_some_and(|s| s.iter().all(|&v| v == 1))
            && int_list(values, a1[4]).is_some_and(|p| p.iter().all(|&v| v == 0));
        let depthwise = w2.len() == 4
            && m.len() == 4
            && w2[1] == 1
            && int(a2[8]).is_some_and(|gr| gr > 1 && gr as usize == m[1] && w2[0] == m[1]);
        if pointwise && depthwise && a2[0] == mid && g.single_use(mid) && !overlaps(values, x, dst)
        {
            let mut args: Vec<u32> = a1[..17].to_vec();
            args.extend_from_slice(&a2[..17]);
            args.extend_from_slice(&[dst, dst]);
            out[pc1] = Rewrite::Skip;
            out[pc2] = Rewrite::Replace {
                op: CONV_DW.into(),
                args,
            };
        }
    }
}
