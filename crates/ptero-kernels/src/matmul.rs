//! Matrix products: mm, bmm, addmm and linear.
//!
//! Every op is lowered to one batched plan `C[b] = alpha * A[b] @ B[b] + beta * bias[b]`
//! over arbitrary element strides, so transposed or channels-last operands need no copy.
//! f32 has register-blocked kernels for the two layouts that matter (B rows contiguous,
//! and A/B both contiguous along k, as in `x @ W^T`); other layouts and dtypes use a
//! strided scalar path. Half and bfloat16 accumulate in f32, integers in wrapping i64.

use ptero_core::{Dims, Error, KernelArgs, KernelRegistry, Result, ScalarType, TensorMeta};

use ptero_core::Prepared;
use ptero_gemm::{gemm_batched, Batch, Bias, Epilogue, Lhs, Rhs};

use crate::util::gemm::{err, is_const_f32, mat, mat_mut, prepared, PackedWeight};
use crate::util::work::{sat_product, Meter};
use crate::util::{broadcast_strides, for_each_offset, load_f64, load_i64, store_f64, store_i64};

/// One matrix inside a batch: element offset and row/column strides.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct View {
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    #[inline]
    fn idx(&self, i: usize, j: usize) -> usize {
        self.off + i * self.rs + j * self.cs
    }
}

/// A batched product over tensor arguments.
struct Plan {
    batch: Dims,
    /// Batch strides of A, B, C and the bias (0 where shared / broadcast).
    bst: [Dims; 4],
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: View,
    bias: View,
}

impl Plan {
    /// Folds trailing batch dims into `m` where A, C and bias step uniformly and B is
    /// shared, so `linear` on `[B, T, in]` runs as one `[B*T, in]` product.
    fn merge_batch(&mut self) {
        while let Some(d) = self.batch.len().checked_sub(1) {
            let [sa, sb, sc, sbias] = [
                self.bst[0][d],
                self.bst[1][d],
                self.bst[2][d],
                self.bst[3][d],
            ];
            let size = self.batch[d];
            // An empty out (n == 0) can have sizes whose product overflows: keep the batch.
            let Some(merged) = self.m.checked_mul(size) else {
                return;
            };
            let ok = sb == 0
                && (self.m == 1 || sa == self.a.rs * self.m)
                && (self.m == 1 || sc == self.c.rs * self.m)
                && (self.m == 1 || sbias == self.bias.rs * self.m);
            if !ok || size == 0 {
                return;
            }
            if self.m == 1 {
                self.a.rs = sa;
                self.c.rs = sc;
                self.bias.rs = sbias;
            }
            self.m = merged;
            self.batch.remove(d);
            for s in self.bst.iter_mut() {
                s.remove(d);
            }
        }
    }
}

/// Scales applied after accumulation: `alpha * acc + beta * bias` (bias ignored when
/// `beta == 0`, as PyTorch does, so NaNs in it do not propagate).
#[derive(Clone, Copy)]
struct Scales {
    alpha: f64,
    beta: f64,
    alpha_i: i64,
    beta_i: i64,
}

const ONE: Scales = Scales {
    alpha: 1.0,
    beta: 1.0,
    alpha_i: 1,
    beta_i: 1,
};

fn dims_of(s: &[usize]) -> Dims {
    Dims::from_slice(s).unwrap_or_default()
}

fn check_same(a: &KernelArgs<'_>, args: &[usize], dtype: ScalarType) -> Result<()> {
    for &i in args {
        let t = a.meta(i)?.dtype;
        if t != dtype {
            return Err(Error::Dtype {
                arg: i,
                expected: alloc::format!("{dtype} (the same dtype as the other operands)"),
                found: t,
            });
        }
    }
    Ok(())
}

fn check_numeric(arg: usize, t: ScalarType) -> Result<()> {
    if t == ScalarType::Bool || !t.is_numeric() {
        return Err(Error::Dtype {
            arg,
            expected: "a real numeric dtype (not bool)".into(),
            found: t,
        });
    }
    Ok(())
}

fn rank_err(arg: usize, what: &str, m: &TensorMeta) -> Error {
    Error::shape(alloc::format!(
        "argument {arg}: expected {what}, found shape {:?}",
        m.sizes()
    ))
}

/// Bias view over the result shape `out` (broadcast), split into batch and matrix parts.
fn bias_strides(bias: Option<&TensorMeta>, out: &[usize]) -> Result<(Dims, View)> {
    let r = out.len();
    let st = match bias {
        Some(m) => broadcast_strides(m, out)?,
        None => Dims::filled(r, 0).unwrap_or_default(),
    };
    let (rs, cs) = match r {
        0 => (0, 0),
        1 => (0, st[0]),
        _ => (st[r - 2], st[r - 1]),
    };
    Ok((dims_of(&st[..r.saturating_sub(2)]), View { off: 0, rs, cs }))
}

/// Runs `plan` with tensors at args `ai`, `bi`, optional bias `biasi`, out `oi`.
fn execute(
    a: &KernelArgs<'_>,
    plan: &Plan,
    (ai, bi, biasi, oi): (usize, usize, Option<usize>, usize),
    sc: Scales,
) -> Result<()> {
    let dtype = a.meta(oi)?.dtype;
    let at = a.tensor(ai)?;
    let bt = a.tensor(bi)?;
    let biast = match biasi {
        Some(i) if sc.beta != 0.0 || dtype.is_integral() && sc.beta_i != 0 => Some(a.tensor(i)?),
        _ => None,
    };
    let mut ot = a.out(oi)?;
    if plan.m == 0 || plan.n == 0 || plan.batch.contains(&0) {
        return Ok(());
    }
    let bst: [&[usize]; 4] = [&plan.bst[0], &plan.bst[1], &plan.bst[2], &plan.bst[3]];
    // Multiply-adds are charged as each row block is done; the caller's deadline is polled
    // between blocks.
    let mut meter = Meter::charging(a);
    let mut res = Ok(());
    if dtype == ScalarType::Float {
        let av: &[f32] = at.data()?;
        let bv: &[f32] = bt.data()?;
        let biasv: Option<&[f32]> = match &biast {
            Some(t) => Some(t.data()?),
            None => None,
        };
        let ov: &mut [f32] = ot.data()?;
        return execute_f32(a, plan, (av, bv, biasv, ov), sc, &mut meter);
    }
    let (ab, bb, ob) = (at.bytes, bt.bytes, &mut *ot.bytes);
    let biasb = biast.map(|t| t.bytes);
    if matches!(dtype, ScalarType::Half | ScalarType::BFloat16) {
        let ops = (ab, bb, biasb, &mut *ob);
        if let Some(r) = execute_half(a, plan, dtype, ops, sc, &mut meter) {
            return r;
        }
    }
    let (m, n, k) = (plan.m, plan.n, plan.k);
    let row_work = sat_product(&[n, k]) as u64;
    for_each_offset(&plan.batch, bst, |[ao, bo, co, biaso]| {
        if res.is_err() {
            return;
        }
        let av = View {
            off: plan.a.off + ao,
            ..plan.a
        };
        let bv = View {
            off: plan.b.off + bo,
            ..plan.b
        };
        let cv = View {
            off: plan.c.off + co,
            ..plan.c
        };
        let biasv = View {
            off: plan.bias.off + biaso,
            ..plan.bias
        };
        for i in 0..m {
            if let Err(e) = meter.add(row_work) {
                res = Err(e);
                return;
            }
            for j in 0..n {
                let ci = cv.idx(i, j);
                match dtype {
                    ScalarType::Double => {
                        let mut acc = 0.0f64;
                        for p in 0..k {
                            acc += load_f64(ab, dtype, av.idx(i, p))
                                * load_f64(bb, dtype, bv.idx(p, j));
                        }
                        let mut v = sc.alpha * acc;
                        if let Some(bb) = biasb {
                            v += sc.beta * load_f64(bb, dtype, biasv.idx(i, j));
                        }
                        store_f64(ob, dtype, ci, v);
                    }
                    ScalarType::Half | ScalarType::BFloat16 => {
                        let mut acc = 0.0f32;
                        for p in 0..k {
                            acc += load_f64(ab, dtype, av.idx(i, p)) as f32
                                * load_f64(bb, dtype, bv.idx(p, j)) as f32;
                        }
                        let mut v = sc.alpha as f32 * acc;
                        if let Some(bb) = biasb {
                            v += sc.beta as f32 * load_f64(bb, dtype, biasv.idx(i, j)) as f32;
                        }
                        store_f64(ob, dtype, ci, v as f64);
                    }
                    _ => {
                        let mut acc = 0i64;
                        for p in 0..k {
                            acc = acc.wrapping_add(
                                load_i64(ab, dtype, av.idx(i, p)).wrapping_mul(load_i64(
                                    bb,
                                    dtype,
                                    bv.idx(p, j),
                                )),
                            );
                        }
                        let mut v = sc.alpha_i.wrapping_mul(acc);
                        if let Some(bb) = biasb {
                            v = v.wrapping_add(sc.beta_i.wrapping_mul(load_i64(
                                bb,
                                dtype,
                                biasv.idx(i, j),
                            )));
                        }
                        store_i64(ob, dtype, ci, v);
                    }
                }
            }
        }
    });
    res
}

/// A, B, the optional bias and C as raw bytes of one 16-bit float dtype.
type HalfOperands<'s> = (&'s [u8], &'s [u8], Option<&'s [u8]>, &'s mut [u8]);

/// Half and bfloat16 through the f32 GEMM: the operands are widened into one slot of the
/// arena with their layouts unchanged, multiplied in f32 (the constant weight was widened
/// and packed at load), and the result is rounded back. `None` when no slot holds them
/// (the scalar path runs instead).
fn execute_half(
    a: &KernelArgs<'_>,
    plan: &Plan,
    dtype: ScalarType,
    (ab, bb, biasb, ob): HalfOperands<'_>,
    sc: Scales,
    meter: &mut Meter<'_, '_>,
) -> Option<Result<()>> {
    let arena = a.arena()?;
    // The same test as `execute_f32`'s: only then is B not read.
    let packed = matches!(a.state::<PackedWeight>(), Some(PackedWeight::B(p))
        if p.k() == plan.k && p.n() == plan.n && plan.bst[1].iter().all(|&s| s == 0));
    let na = ab.len() / 2;
    let nb = if packed { 0 } else { bb.len() / 2 };
    let nbias = biasb.map_or(0, |b| b.len() / 2);
    let nc = ob.len() / 2;
    let need = na.checked_add(nb)?.checked_add(nbias)?.checked_add(nc)?;
    arena.with(need, |buf| {
        let (a32, rest) = buf[..need].split_at_mut(na);
        let (b32, rest) = rest.split_at_mut(nb);
        let (bias32, c32) = rest.split_at_mut(nbias);
        widen(ab, dtype, a32);
        widen(bb, dtype, b32);
        if let Some(b) = biasb {
            widen(b, dtype, bias32);
        }
        let bias32: Option<&[f32]> = biasb.map(|_| &*bias32);
        let r = execute_f32(a, plan, (a32, b32, bias32, &mut *c32), sc, meter);
        narrow(c32, dtype, ob);
        r
    })
}

/// 16-bit floats (little-endian bytes of `dtype`) to f32, as many as both hold.
fn widen(src: &[u8], dtype: ScalarType, dst: &mut [f32]) {
    let half = dtype == ScalarType::Half;
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        let bits = u16::from_le_bytes([b[0], b[1]]);
        *d = if half {
            half::f16::from_bits(bits).to_f32()
        } else {
            half::bf16::from_bits(bits).to_f32()
        };
    }
}

/// f32 to 16-bit floats of `dtype`, rounding to nearest even.
fn narrow(src: &[f32], dtype: ScalarType, dst: &mut [u8]) {
    let half = dtype == ScalarType::Half;
    for (v, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
        let bits = if half {
            half::f16::from_f32(*v).to_bits()
        } else {
            half::bf16::from_f32(*v).to_bits()
        };
        d.copy_from_slice(&bits.to_le_bytes());
    }
}

/// A, B, the optional bias and C.
type F32Operands<'s> = (&'s [f32], &'s [f32], Option<&'s [f32]>, &'s mut [f32]);

/// The f32 product on the shared GEMM ([`ptero_gemm::gemm_batched`]), with the
/// instruction's packed weight when its prepare step made one.
fn execute_f32(
    a: &KernelArgs<'_>,
    plan: &Plan,
    ops: F32Operands<'_>,
    sc: Scales,
    meter: &mut Meter<'_, '_>,
) -> Result<()> {
    let (av, bv, biasv, ov) = ops;
    let (m, n, k) = (plan.m, plan.n, plan.k);
    let entries = sat_product(&plan.batch) as u64;
    meter.add(entries.saturating_mul(sat_product(&[m, n, k]) as u64))?;
    let packed = match a.state::<PackedWeight>() {
        Some(PackedWeight::B(p))
            if p.k() == k && p.n() == n && plan.bst[1].iter().all(|&s| s == 0) =>
        {
            Some(p)
        }
        _ => None,
    };
    let lhs = Lhs::Mat(mat(av, plan.a.off, m, k, plan.a.rs, plan.a.cs)?);
    let rhs = match packed {
        Some(p) => Rhs::Packed(p.view()),
        None => Rhs::Mat(mat(bv, plan.b.off, k, n, plan.b.rs, plan.b.cs)?),
    };
    let bias = match biasv {
        Some(b)
            if plan.bias.rs == 0 && plan.bias.cs == 1 && plan.bst[3].iter().all(|&s| s == 0) =>
        {
            let start = plan.bias.off;
            Bias::PerCol(
                b.get(start..start + n)
                    .ok_or_else(|| Error::OutOfBounds("bias view exceeds its tensor".into()))?,
            )
        }
        Some(b) => Bias::Mat(mat(b, plan.bias.off, m, n, plan.bias.rs, plan.bias.cs)?),
        None => Bias::None,
    };
    let epi = Epilogue {
        alpha: sc.alpha as f32,
        beta: if biasv.is_some() { sc.beta as f32 } else { 0.0 },
        bias,
        act: ptero_gemm::Activation::None,
    };
    let out = mat_mut(ov, plan.c.off, m, n, plan.c.rs, plan.c.cs)?;
    let batch = Batch {
        sizes: &plan.batch,
        a: &plan.bst[0],
        b: &plan.bst[1],
        c: &plan.bst[2],
        bias: &plan.bst[3],
    };
    gemm_batched(a.parallel(), a.arena(), batch, lhs, rhs, out, &epi).map_err(err)
}

/// Packs a constant right operand at load: `mm`'s and `addmm`'s second matrix, or
/// `linear`'s weight (transposed view of `[out, in]`).
fn prepare_rhs(a: &KernelArgs<'_>, arg: usize, transposed: bool) -> Result<Prepared> {
    let mut p = prepare_f32_rhs(a, arg, transposed)?;
    p.scratch_floats = p.scratch_floats.saturating_add(half_scratch(a));
    Ok(p)
}

/// f32 the widened copies of an instruction's half or bfloat16 operands take (their
/// planned upper bounds), 0 for other dtypes.
fn half_scratch(a: &KernelArgs<'_>) -> usize {
    (0..a.len())
        .filter_map(|i| a.opt_meta(i).ok().flatten())
        .filter(|m| matches!(m.dtype, ScalarType::Half | ScalarType::BFloat16))
        .map(|m| m.capacity().max(m.nbytes()) / 2)
        .fold(0usize, usize::saturating_add)
}

fn prepare_f32_rhs(a: &KernelArgs<'_>, arg: usize, transposed: bool) -> Result<Prepared> {
    let half_const = matches!(a.opt_meta(arg), Ok(Some(m))
        if matches!(m.dtype, ScalarType::Half | ScalarType::BFloat16)
            && matches!(m.storage, ptero_core::Storage::Constant { .. }));
    if !is_const_f32(a, arg) && !half_const {
        return Ok(prepared(None));
    }
    let w = a.tensor(arg)?;
    let meta = w.meta;
    if meta.dim() != 2 {
        return Ok(prepared(None));
    }
    // Half and bfloat16 weights are widened once here (load time), then packed.
    let widened;
    let data: &[f32] = if half_const {
        let mut v = alloc::vec::Vec::new();
        v.try_reserve_exact(meta.numel())
            .map_err(|_| Error::invalid("matmul: out of memory widening a weight"))?;
        v.resize(meta.numel(), 0.0);
        widen(w.bytes, meta.dtype, &mut v);
        widened = v;
        &widened
    } else {
        w.data()?
    };
    let st = meta.strides();
    let (r, c) = (meta.sizes()[0], meta.sizes()[1]);
    let b = if transposed {
        mat(data, 0, c, r, st[1], st[0])?
    } else {
        mat(data, 0, r, c, st[0], st[1])?
    };
    let p = ptero_gemm::PackedB::new(b).map_err(err)?;
    Ok(prepared(Some(PackedWeight::B(p))))
}

fn prepare_linear(a: &KernelArgs<'_>) -> Result<Prepared> {
    prepare_rhs(a, 1, true)
}

fn prepare_mm(a: &KernelArgs<'_>) -> Result<Prepared> {
    prepare_rhs(a, 1, false)
}

fn prepare_addmm(a: &KernelArgs<'_>) -> Result<Prepared> {
    prepare_rhs(a, 2, false)
}

fn prepare_bmm(a: &KernelArgs<'_>) -> Result<Prepared> {
    let mut p = prepared(None);
    p.scratch_floats = p.scratch_floats.saturating_add(half_scratch(a));
    Ok(p)
}

fn view2(m: &TensorMeta) -> View {
    let st = m.strides();
    let r = st.len();
    View {
        off: 0,
        rs: st[r - 2],
        cs: st[r - 1],
    }
}

fn mm_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let (x, y) = (a.meta(0)?, a.meta(1)?);
    if x.dim() != 2 {
        return Err(rank_err(0, "a 2-d matrix", x));
    }
    if y.dim() != 2 {
        return Err(rank_err(1, "a 2-d matrix", y));
    }
    let (m, k, n) = (x.sizes()[0], x.sizes()[1], y.sizes()[1]);
    if y.sizes()[0] != k {
        return Err(Error::shape(alloc::format!(
            "mm: cannot multiply {:?} by {:?}",
            x.sizes(),
            y.sizes()
        )));
    }
    let dtype = x.dtype;
    check_numeric(0, dtype)?;
    check_same(a, &[1, 2], dtype)?;
    a.resize(2, &[m, n])?;
    let plan = Plan {
        batch: Dims::new(),
        bst: [Dims::new(); 4],
        m,
        n,
        k,
        a: view2(a.meta(0)?),
        b: view2(a.meta(1)?),
        c: view2(a.meta(2)?),
        bias: View::default(),
    };
    execute(a, &plan, (0, 1, None, 2), ONE)
}

fn bmm_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(3)?;
    let (x, y) = (a.meta(0)?, a.meta(1)?);
    if x.dim() != 3 {
        return Err(rank_err(0, "a 3-d batch of matrices", x));
    }
    if y.dim() != 3 {
        return Err(rank_err(1, "a 3-d batch of matrices", y));
    }
    let (bs, m, k) = (x.sizes()[0], x.sizes()[1], x.sizes()[2]);
    let n = y.sizes()[2];
    if y.sizes()[0] != bs || y.sizes()[1] != k {
        return Err(Error::shape(alloc::format!(
            "bmm: cannot multiply {:?} by {:?}",
            x.sizes(),
            y.sizes()
        )));
    }
    let dtype = x.dtype;
    check_numeric(0, dtype)?;
    check_same(a, &[1, 2], dtype)?;
    a.resize(2, &[bs, m, n])?;
    let st = |i: usize| -> Result<Dims> { Ok(dims_of(&a.meta(i)?.strides()[..1])) };
    let plan = Plan {
        batch: dims_of(&[bs]),
        bst: [st(0)?, st(1)?, st(2)?, dims_of(&[0])],
        m,
        n,
        k,
        a: view2(a.meta(0)?),
        b: view2(a.meta(1)?),
        c: view2(a.meta(2)?),
        bias: View::default(),
    };
    execute(a, &plan, (0, 1, None, 2), ONE)
}

fn addmm_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    let (x, y) = (a.meta(1)?, a.meta(2)?);
    if x.dim() != 2 {
        return Err(rank_err(1, "a 2-d matrix", x));
    }
    if y.dim() != 2 {
        return Err(rank_err(2, "a 2-d matrix", y));
    }
    let (m, k, n) = (x.sizes()[0], x.sizes()[1], y.sizes()[1]);
    if y.sizes()[0] != k {
        return Err(Error::shape(alloc::format!(
            "addmm: cannot multiply {:?} by {:?}",
            x.sizes(),
            y.sizes()
        )));
    }
    let dtype = a.meta(0)?.dtype;
    check_numeric(0, dtype)?;
    check_same(a, &[1, 2, 5], dtype)?;
    let (beta, alpha) = (a.scalar(3)?, a.scalar(4)?);
    if dtype.is_integral()
        && (matches!(beta, ptero_core::Scalar::Double(_))
            || matches!(alpha, ptero_core::Scalar::Double(_)))
    {
        return Err(Error::invalid(
            "addmm: alpha and beta must be integers for integral tensors",
        ));
    }
    a.resize(5, &[m, n])?;
    let (_, bias) = bias_strides(Some(a.meta(0)?), &[m, n])?;
    let plan = Plan {
        batch: Dims::new(),
        bst: [Dims::new(); 4],
        m,
        n,
        k,
        a: view2(a.meta(1)?),
        b: view2(a.meta(2)?),
        c: view2(a.meta(5)?),
        bias,
    };
    let sc = Scales {
        alpha: alpha.to_f64(),
        beta: beta.to_f64(),
        alpha_i: alpha.to_i64(),
        beta_i: beta.to_i64(),
    };
    execute(a, &plan, (1, 2, Some(0), 5), sc)
}

fn linear_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(4)?;
    let (x, w) = (a.meta(0)?, a.meta(1)?);
    if w.dim() != 2 && w.dim() != 1 {
        return Err(rank_err(
            1,
            "a 2-d weight [out_features, in_features] or a 1-d weight [in_features]",
            w,
        ));
    }
    if x.dim() == 0 {
        return Err(rank_err(0, "an input of at least 1 dimension", x));
    }
    // A 1-d weight is a dot product over the last dim: computed as a [1, in] weight whose
    // size-1 output dim is dropped from out.
    let vec_w = w.dim() == 1;
    let (outf, inf) = if vec_w {
        (1, w.sizes()[0])
    } else {
        (w.sizes()[0], w.sizes()[1])
    };
    let r = x.dim();
    if x.sizes()[r - 1] != inf {
        return Err(Error::shape(alloc::format!(
            "linear: input {:?} does not end in in_features {inf} of weight {:?}",
            x.sizes(),
            w.sizes()
        )));
    }
    let dtype = x.dtype;
    check_numeric(0, dtype)?;
    let has_bias = a.opt_meta(2)?.is_some();
    check_same(a, &[1, 3], dtype)?;
    if has_bias {
        check_same(a, &[2], dtype)?;
    }
    let mut shape = x.dims();
    shape[r - 1] = outf;
    let mut out_shape = shape;
    if vec_w {
        out_shape.remove(r - 1);
    }
    a.resize(3, &out_shape)?;
    let xm = a.meta(0)?;
    let om = a.meta(3)?;
    let xs = xm.strides();
    // Out strides over `shape` (the dropped size-1 dim gets stride 0).
    let mut os = om.stride_dims();
    if vec_w {
        os.push(0);
    }
    let wm = a.meta(1)?;
    // y = x W^T: B[k][n] = W[n][k].
    let b = if vec_w {
        View {
            off: 0,
            rs: wm.strides()[0],
            cs: 0,
        }
    } else {
        View {
            off: 0,
            rs: wm.strides()[1],
            cs: wm.strides()[0],
        }
    };
    let (bias_b, bias) = if vec_w {
        // The bias broadcasts against the real out shape; extend with the size-1 dim.
        let mut st = match a.opt_meta(2)? {
            Some(m) => broadcast_strides(m, &out_shape)?,
            None => Dims::filled(out_shape.len(), 0).unwrap_or_default(),
        };
        st.push(0);
        let (rs, cs) = if r == 1 {
            (0, 0)
        } else {
            (st[r - 2], st[r - 1])
        };
        (dims_of(&st[..r.saturating_sub(2)]), View { off: 0, rs, cs })
    } else {
        bias_strides(a.opt_meta(2)?, &shape)?
    };
    let (batch, m, av, cv, bst) = if r == 1 {
        (
            Dims::new(),
            1,
            View {
                off: 0,
                rs: 0,
                cs: xs[0],
            },
            View {
                off: 0,
                rs: 0,
                cs: os[0],
            },
            [Dims::new(); 4],
        )
    } else {
        let nb = r - 2;
        (
            dims_of(&shape[..nb]),
            shape[r - 2],
            View {
                off: 0,
                rs: xs[r - 2],
                cs: xs[r - 1],
            },
            View {
                off: 0,
                rs: os[r - 2],
                cs: os[r - 1],
            },
            [
                dims_of(&xs[..nb]),
                Dims::filled(nb, 0).unwrap_or_default(),
                dims_of(&os[..nb]),
                bias_b,
            ],
        )
    };
    let mut plan = Plan {
        batch,
        bst,
        m,
        n: outf,
        k: inf,
        a: av,
        b,
        c: cv,
        bias,
    };
    plan.merge_batch();
    let bias_arg = if has_bias { Some(2) } else { None };
    execute(a, &plan, (0, 1, bias_arg, 3), ONE)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register_prepared("aten::mm.out", mm_out, prepare_mm);
    reg.register_prepared("aten::bmm.out", bmm_out, prepare_bmm);
    reg.register_prepared("aten::addmm.out", addmm_out, prepare_addmm);
    reg.register_prepared("aten::linear.out", linear_out, prepare_linear);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::{self, *};

    fn seq(n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7 + 3) % 11) as f64 * scale - 2.0)
            .collect()
    }

    /// Reference: row-major a [m,k] @ b [k,n].
    fn mm_ref(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn t(dtype: ScalarType, s: &[usize], v: &[f64]) -> OwnedTensor {
        OwnedTensor::from_f64(dtype, s, v)
    }

    fn transpose(v: &[f64], r: usize, c: usize) -> Vec<f64> {
        let mut o = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                o[j * r + i] = v[i * c + j];
            }
        }
        o
    }

    #[test]
    fn mm_sizes_and_dtypes() {
        // Sizes straddle the 4x8 tile and the 8-lane dot kernels.
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 2),
            (5, 9, 17),
            (9, 16, 8),
            (4, 8, 8),
            (2, 0, 3),
        ] {
            let av = seq(m * k, 0.5);
            let bv = seq(k * n, 0.25);
            let want = mm_ref(&av, &bv, m, k, n);
            for dtype in [Float, Double, Long, Half, BFloat16, Int] {
                let (av, bv, want) = if dtype.is_integral() {
                    let r = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
                    let (a2, b2) = (r(&av), r(&bv));
                    let w = mm_ref(&a2, &b2, m, k, n);
                    (a2, b2, w)
                } else {
                    (av.clone(), bv.clone(), want.clone())
                };
                let out = run_op(
                    "aten::mm.out",
                    vec![
                        Arg::T(t(dtype, &[m, k], &av)),
                        Arg::T(t(dtype, &[k, n], &bv)),
                        Arg::Out(dtype, vec![m, n]),
                    ],
                )
                .unwrap();
                assert_eq!(out.tensors[0].sizes, [m, n]);
                let tol = if matches!(dtype, Half | BFloat16) {
                    0.1
                } else {
                    1e-5
                };
                assert_close(&out.tensors[0].to_f64(), &want, tol, tol);
            }
            // Transposed B (dim order [1, 0]) takes the dot kernel.
            let bt = t(Float, &[k, n], &bv).with_dim_order(&[1, 0]);
            let out = run_op(
                "aten::mm.out",
                vec![
                    Arg::T(t(Float, &[m, k], &av)),
                    Arg::T(bt),
                    Arg::Out(Float, vec![m, n]),
                ],
            )
            .unwrap();
            assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);
        }
    }

    #[test]
    fn bmm_and_addmm() {
        let (bs, m, k, n) = (2, 3, 4, 9);
        let av = seq(bs * m * k, 0.3);
        let bv = seq(bs * k * n, 0.2);
        let mut want = Vec::new();
        for b in 0..bs {
            want.extend(mm_ref(
                &av[b * m * k..][..m * k],
                &bv[b * k * n..][..k * n],
                m,
                k,
                n,
            ));
        }
        let out = run_op(
            "aten::bmm.out",
            vec![
                Arg::T(t(Float, &[bs, m, k], &av)),
                Arg::T(t(Float, &[bs, k, n], &bv).with_dim_order(&[0, 2, 1])),
                Arg::Out(Float, vec![bs, m, n]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);

        // addmm: bias [n] broadcast, beta 0.5, alpha 2.
        let (a2, b2) = (&av[..m * k], &bv[..k * n]);
        let bias: Vec<f64> = (0..n).map(|j| j as f64).collect();
        let p = mm_ref(a2, b2, m, k, n);
        let want: Vec<f64> = (0..m * n).map(|i| 2.0 * p[i] + 0.5 * bias[i % n]).collect();
        for (dtype, konst) in [(Float, false), (Double, false), (Float, true)] {
            let b2t = t(dtype, &[k, n], b2);
            let out = run_op(
                "aten::addmm.out",
                vec![
                    Arg::T(t(dtype, &[n], &bias)),
                    Arg::T(t(dtype, &[m, k], a2)),
                    if konst { Arg::Const(b2t) } else { Arg::T(b2t) },
                    Arg::Double(0.5),
                    Arg::Double(2.0),
                    Arg::Out(dtype, vec![m, n]),
                ],
            )
            .unwrap();
            assert_close(&out.tensors[0].to_f64(), &want, 1e-5, 1e-5);
        }
        // beta = 0 ignores NaN in self.
        let out = run_op(
            "aten::addmm.out",
            vec![
                Arg::T(t(Float, &[], &[f64::NAN])),
                Arg::T(t(Float, &[1, 1], &[2.0])),
                Arg::T(t(Float, &[1, 1], &[3.0])),
                Arg::Int(0),
                Arg::Int(1),
                Arg::Out(Float, vec![1, 1]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &[6.0], 0.0, 0.0);
        // Integer addmm.
        let out = run_op(
            "aten::addmm.out",
            vec![
                Arg::T(t(Long, &[2, 1], &[1.0, 2.0])),
                Arg::T(t(Long, &[2, 2], &[1.0, 2.0, 3.0, 4.0])),
                Arg::T(t(Long, &[2, 2], &[1.0, 0.0, 0.0, 1.0])),
                Arg::Int(3),
                Arg::Int(2),
                Arg::Out(Long, vec![2, 2]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &[5.0, 7.0, 12.0, 14.0], 0.0, 0.0);
    }

    #[test]
    fn linear_shapes_layouts() {
        let (inf, outf) = (19, 10);
        let w = seq(outf * inf, 0.1);
        let bias = seq(outf, 0.3);
        let wt = transpose(&w, outf, inf);
        for lead in [vec![], vec![3], vec![2, 3], vec![0, 3]] {
            let rows: usize = lead.iter().product();
            let x = seq(rows * inf, 0.2);
            let mut want = mm_ref(&x, &wt, rows, inf, outf);
            for (i, v) in want.iter_mut().enumerate() {
                *v += bias[i % outf];
            }
            let mut xs = lead.clone();
            xs.push(inf);
            let mut os = lead.clone();
            os.push(outf);
            // Half and bfloat16 run the f32 GEMM on widened copies (a constant weight is
            // widened and packed at load): within their precision of the f64 reference.
            for (dt, rtol) in [(Float, 1e-4), (Half, 4e-3), (BFloat16, 3e-2)] {
                for (worder, konst) in [
                    ([0u8, 1], false),
                    ([1, 0], false),
                    ([0, 1], true),
                    ([1, 0], true),
                ] {
                    let wt_arg = t(dt, &[outf, inf], &w).with_dim_order(&worder);
                    let out = run_op(
                        "aten::linear.out",
                        vec![
                            Arg::T(t(dt, &xs, &x)),
                            // A constant weight is packed by the prepare step.
                            if konst {
                                Arg::Const(wt_arg)
                            } else {
                                Arg::T(wt_arg)
                            },
                            Arg::T(t(dt, &[outf], &bias)),
                            Arg::Out(dt, os.clone()),
                        ],
                    )
                    .unwrap();
                    assert_eq!(out.tensors[0].sizes, os);
                    assert_close(&out.tensors[0].to_f64(), &want, rtol, rtol);
                }
            }
        }
        // No bias, channels-last-like 3-d input (dim order [1, 0, 2]).
        let x = seq(2 * 3 * inf, 0.2);
        let want = mm_ref(&x, &wt, 6, inf, outf);
        let out = run_op(
            "aten::linear.out",
            vec![
                Arg::T(t(Float, &[2, 3, inf], &x).with_dim_order(&[1, 0, 2])),
                Arg::T(t(Float, &[outf, inf], &w)),
                Arg::None,
                Arg::Out(Float, vec![2, 3, outf]),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-4, 1e-5);
    }

    #[test]
    fn errors() {
        let a = t(Float, &[2, 3], &[0.0; 6]);
        let b = t(Float, &[2, 3], &[0.0; 6]);
        assert!(run_op(
            "aten::mm.out",
            vec![Arg::T(a.clone()), Arg::T(b), Arg::Out(Float, vec![2, 3])]
        )
        .is_err());
        let d = t(Double, &[3, 2], &[0.0; 6]);
        assert!(run_op(
            "aten::mm.out",
            vec![Arg::T(a.clone()), Arg::T(d), Arg::Out(Float, vec![2, 2])]
        )
        .is_err());
        assert!(run_op(
            "aten::bmm.out",
            vec![
                Arg::T(a.clone()),
                Arg::T(a.clone()),
                Arg::Out(Float, vec![2, 2])
            ]
        )
        .is_err());
        assert!(run_op(
            "aten::linear.out",
            vec![
                Arg::T(a.clone()),
                Arg::T(t(Float, &[4, 2], &[0.0; 8])),
                Arg::None,
                Arg::Out(Float, vec![2, 4])
            ]
        )
        .is_err());
        let bo = OwnedTensor::bools(&[1, 1], &[true]);
        assert!(run_op(
            "aten::mm.out",
            vec![Arg::T(bo.clone()), Arg::T(bo), Arg::Out(Bool, vec![1, 1])]
        )
        .is_err());
    }

    /// Every product charges its multiply-adds (m * n * k per batch entry) and stops with
    /// `Interrupted` once the caller's deadline has passed (checked between row blocks).
    #[test]
    fn products_charge_work_and_stop_when_interrupted() {
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        let z = |dt: ScalarType, s: &[usize]| Arg::T(OwnedTensor::zeros(dt, s));
        // (op, args, multiply-adds); the big ones (>= 2^19) must notice the deadline.
        let cases: Vec<(&str, Vec<Arg>, u64)> = vec![
            (
                "aten::mm.out",
                vec![
                    z(Float, &[8, 16]),
                    z(Float, &[16, 32]),
                    Arg::Out(Float, vec![8, 32]),
                ],
                8 * 16 * 32,
            ),
            (
                "aten::mm.out",
                vec![
                    z(Long, &[8, 16]),
                    z(Long, &[16, 32]),
                    Arg::Out(Long, vec![8, 32]),
                ],
                8 * 16 * 32,
            ),
            (
                "aten::bmm.out",
                vec![
                    z(Double, &[3, 4, 5]),
                    z(Double, &[3, 5, 6]),
                    Arg::Out(Double, vec![3, 4, 6]),
                ],
                3 * 4 * 5 * 6,
            ),
            (
                "aten::addmm.out",
                vec![
                    z(Float, &[7]),
                    z(Float, &[5, 9]),
                    z(Float, &[9, 7]),
                    Arg::Int(1),
                    Arg::Int(1),
                    Arg::Out(Float, vec![5, 7]),
                ],
                5 * 9 * 7,
            ),
            (
                "aten::linear.out",
                vec![
                    z(Float, &[2, 3, 16]),
                    z(Float, &[8, 16]),
                    Arg::None,
                    Arg::Out(Float, vec![2, 3, 8]),
                ],
                2 * 3 * 8 * 16,
            ),
            (
                "aten::mm.out",
                vec![
                    z(Float, &[128, 64]),
                    z(Float, &[64, 64]),
                    Arg::Out(Float, vec![128, 64]),
                ],
                1 << 19,
            ),
            (
                "aten::linear.out",
                vec![
                    z(Float, &[128, 64]),
                    z(Float, &[64, 64]),
                    Arg::None,
                    Arg::Out(Float, vec![128, 64]),
                ],
                1 << 19,
            ),
            (
                "aten::bmm.out",
                vec![
                    z(Half, &[2, 64, 64]),
                    z(Half, &[2, 64, 64]),
                    Arg::Out(Half, vec![2, 64, 64]),
                ],
                1 << 19,
            ),
        ];
        for (op, args, work) in cases {
            let (_, charged) = run_op_with(op, args.clone(), ctx).unwrap();
            assert_eq!(charged, work, "{op}");
            if work >= 1 << 19 {
                assert_eq!(
                    run_op_interrupted(op, args).unwrap_err(),
                    ptero_core::Error::Interrupted,
                    "{op}"
                );
            }
        }
    }

    /// An empty input whose batch dims multiply past `usize`: folding them into the row
    /// count overflowed.
    #[test]
    fn linear_empty_batch_does_not_overflow() {
        let big = 1usize << 40;
        let out = run_op(
            "aten::linear.out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[0, big, big, 1])),
                Arg::T(t(Float, &[1, 1], &[2.0])),
                Arg::None,
                Arg::Out(Float, vec![0, big, big, 1]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0, big, big, 1]);
    }

    #[test]
    fn linear_vector_weight() {
        let x = OwnedTensor::from_f64(Float, &[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let w = OwnedTensor::from_f64(Float, &[3], &[1., 0., -1.]);
        let b = OwnedTensor::from_f64(Float, &[], &[10.]);
        let out = run_op(
            "aten::linear.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(w.clone()),
                Arg::None,
                Arg::Out(Float, vec![2]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [2]);
        assert_eq!(out.tensors[0].to_f64(), [-2., -2.]);
        let out = run_op(
            "aten::linear.out",
            vec![
                Arg::T(x.with_dim_order(&[1, 0])),
                Arg::T(w.clone()),
                Arg::T(b.clone()),
                Arg::Out(Float, vec![2]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [8., 8.]);
        // 1-d input gives a 0-d result; batched 3-d input; int dtype.
        let x1 = OwnedTensor::from_f64(Float, &[3], &[1., 2., 4.]);
        let out = run_op(
            "aten::linear.out",
            vec![
                Arg::T(x1),
                Arg::T(w.clone()),
                Arg::T(b),
                Arg::Out(Float, vec![]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, Vec::<usize>::new());
        assert_eq!(out.tensors[0].to_f64(), [7.]);
        let x3 = OwnedTensor::from_f64(Long, &[2, 1, 2], &[1., 2., 3., 4.]);
        let w2 = OwnedTensor::from_f64(Long, &[2], &[2., 1.]);
        let out = run_op(
            "aten::linear.out",
            vec![
                Arg::T(x3),
                Arg::T(w2),
                Arg::None,
                Arg::Out(Long, vec![2, 1]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].to_f64(), [4., 10.]);
        // Empty input rows and a mismatched length.
        let e = OwnedTensor::zeros(Float, &[0, 3]);
        let out = run_op(
            "aten::linear.out",
            vec![
                Arg::T(e),
                Arg::T(w.clone()),
                Arg::None,
                Arg::Out(Float, vec![0]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [0]);
        let w4 = OwnedTensor::from_f64(Float, &[4], &[1.; 4]);
        assert!(run_op(
            "aten::linear.out",
            vec![Arg::T(x), Arg::T(w4), Arg::None, Arg::Out(Float, vec![2])]
        )
        .is_err());
    }
}
