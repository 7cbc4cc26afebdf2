//! ExecuTorch's LLM custom ops (`extension/llm/custom_ops`, namespace `llama::`): KV-cache
//! updates and the attention kernels that read a `[B, max_ctx, H, D]` cache directly.
//!
//! Attention is computed one query row at a time with an online softmax (running max and
//! sum), so no score row is materialized and the decode path allocates nothing.

use alloc::format;
use half::{bf16, f16};
use ptero_core::{
    Error, KernelArgs, KernelRegistry, Result, ScalarType, TensorMeta, TensorMut, TensorRef,
};

use crate::util::store_f64;
use crate::util::work::{sat_product, Meter};

fn usize_of(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::invalid(format!("{what} must be >= 0, got {v}")))
}

fn check_rank(arg: usize, m: &TensorMeta, rank: usize, what: &str) -> Result<()> {
    if m.dim() != rank {
        return Err(Error::shape(format!(
            "argument {arg} ({what}) must be a {rank}-D tensor, got shape {:?}",
            m.sizes()
        )));
    }
    Ok(())
}

fn check_contiguous(arg: usize, m: &TensorMeta, what: &str) -> Result<()> {
    if !m.is_contiguous() {
        return Err(Error::invalid(format!(
            "argument {arg} ({what}) must be in contiguous dim order, got {:?}",
            m.dim_order()
        )));
    }
    Ok(())
}

/// Checks shared by `update_cache` and the cache update of `sdpa_with_kv_cache`: same
/// batch, heads, head dim and element size, both contiguous.
fn check_cache_pair(vi: usize, value: &TensorMeta, ci: usize, cache: &TensorMeta) -> Result<()> {
    check_rank(ci, cache, 4, "cache")?;
    check_rank(vi, value, 4, "value")?;
    check_contiguous(ci, cache, "cache")?;
    check_contiguous(vi, value, "value")?;
    let (v, c) = (value.sizes(), cache.sizes());
    if v[0] != c[0] || v[2] != c[2] || v[3] != c[3] {
        return Err(Error::shape(format!(
            "value {v:?} must match cache {c:?} in batch, heads and head dim"
        )));
    }
    if value.dtype.size() != cache.dtype.size() {
        return Err(Error::Dtype {
            arg: vi,
            expected: format!(
                "an element size of {} bytes (cache dtype)",
                cache.dtype.size()
            ),
            found: value.dtype,
        });
    }
    Ok(())
}

/// Copies each token of `value` (row `s` of batch `b`) to cache row `pos(b, s)`, bytewise
/// as ExecuTorch's memcpy does (only the element sizes have to agree).
fn copy_tokens(
    value: &TensorMeta,
    vbytes: &[u8],
    cache: &TensorMeta,
    cbytes: &mut [u8],
    mut pos: impl FnMut(usize, usize) -> Result<usize>,
) -> Result<()> {
    // An empty value copies nothing, however large its other dims (which may not even
    // multiply without overflow).
    if value.numel() == 0 {
        return Ok(());
    }
    let es = cache.dtype.size();
    let (b, s) = (value.sizes()[0], value.sizes()[1]);
    let token = value.sizes()[2] * value.sizes()[3] * es;
    let cst = cache.strides();
    for bi in 0..b {
        for si in 0..s {
            let p = pos(bi, si)?;
            let src = (bi * s + si) * token;
            let dst = (bi * cst[0] + p * cst[1]) * es;
            let from = vbytes
                .get(src..src + token)
                .ok_or_else(|| Error::invalid("update_cache: value smaller than its shape"))?;
            cbytes
                .get_mut(dst..dst + token)
                .ok_or_else(|| Error::invalid("update_cache: cache smaller than its shape"))?
                .copy_from_slice(from);
        }
    }
    Ok(())
}

fn check_window(start_pos: i64, seq_len: i64, max: usize, what: &str) -> Result<usize> {
    let sp = usize_of(start_pos, "start_pos")?;
    let sl = usize_of(seq_len, "seq_len")?;
    if sp >= max || sp + sl > max {
        return Err(Error::invalid(format!(
            "{what}: start_pos {sp} + seq_len {sl} must fit the cache length {max} \
             (and start_pos must be < {max})"
        )));
    }
    Ok(sp)
}

/// `update_cache.out(value, cache(a!), start_pos, *, out)`: writes `value` into the cache
/// rows `start_pos..start_pos+S`. ExecuTorch leaves `out` untouched (a placeholder), so
/// this does too.
fn update_cache_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(5)?;
    let value = *a.meta(0)?;
    let cache = *a.meta(1)?;
    check_rank(1, &cache, 4, "cache")?;
    check_rank(0, &value, 4, "value")?;
    let sp = check_window(
        a.int(2)?,
        value.sizes()[1] as i64,
        cache.sizes()[1],
        "update_cache",
    )?;
    check_cache_pair(0, &value, 1, &cache)?;
    let v = a.tensor(0)?;
    let c = a.out(1)?;
    copy_tokens(&value, v.bytes, &cache, c.bytes, |_, s| Ok(sp + s))
}

/// `update_cache_with_indices.out(value, cache(a!), start_pos, indices, *, out)`: token
/// `(b, s)` goes to cache row `indices[b, s]`; `start_pos` is unused.
fn update_cache_with_indices_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    let value = *a.meta(0)?;
    let cache = *a.meta(1)?;
    let im = *a.meta(3)?;
    check_rank(1, &cache, 4, "cache")?;
    check_rank(0, &value, 4, "value")?;
    check_rank(3, &im, 2, "indices")?;
    if im.sizes()[0] != value.sizes()[0] || im.sizes()[1] != value.sizes()[1] {
        return Err(Error::shape(format!(
            "indices {:?} must be [batch, seq_len] of value {:?}",
            im.sizes(),
            value.sizes()
        )));
    }
    if im.dtype != ScalarType::Long {
        return Err(Error::Dtype {
            arg: 3,
            expected: "Long".into(),
            found: im.dtype,
        });
    }
    check_contiguous(3, &im, "indices")?;
    check_cache_pair(0, &value, 1, &cache)?;
    let max = cache.sizes()[1];
    let s = value.sizes()[1];
    let it = a.tensor(3)?;
    let idx = it.data::<i64>()?;
    let v = a.tensor(0)?;
    let c = a.out(1)?;
    copy_tokens(&value, v.bytes, &cache, c.bytes, |b, si| {
        let p = idx.get(b * s + si).copied().unwrap_or(-1);
        usize::try_from(p)
            .ok()
            .filter(|&p| p < max)
            .ok_or_else(|| Error::invalid(format!("update_cache: index {p} not in [0, {max})")))
    })
}

// ---------------------------------------------------------------------------------------
// Attention

/// Per-token int8 quantization parameters of a quantized q/k/v operand.
#[derive(Clone, Copy)]
struct QParams<'a> {
    zp: &'a [i8],
    scale: &'a [f32],
    /// Strides of the (batch, head, seq) position in the parameter tensors.
    st: [usize; 3],
}

#[derive(Clone, Copy)]
enum Data<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    I8(&'a [i8], QParams<'a>),
}

/// A q, k or v operand: data plus the element strides of (batch, head, seq); the head dim
/// is contiguous (ExecuTorch requires contiguous dim order).
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: Data<'a>,
    st: [usize; 3],
    d: usize,
}

fn row_err() -> Error {
    Error::invalid("attention: tensor smaller than its shape")
}

impl Operand<'_> {
    #[inline]
    fn off(&self, b: usize, h: usize, s: usize) -> usize {
        b * self.st[0] + h * self.st[1] + s * self.st[2]
    }

    /// The zero point and scale of row (b, h, s) of a quantized operand.
    #[inline]
    fn qp(p: &QParams<'_>, b: usize, h: usize, s: usize) -> Result<(f32, f32)> {
        let o = b * p.st[0] + h * p.st[1] + s * p.st[2];
        match (p.zp.get(o), p.scale.get(o)) {
            (Some(&z), Some(&sc)) => Ok((z as f32, sc)),
            _ => Err(row_err()),
        }
    }

    /// Loads row (b, h, s) as f32 into `buf`; for int8 data the values are `q - zp` and the
    /// returned factor is the scale (so integer products stay exact), else 1.
    fn load(&self, b: usize, h: usize, s: usize, buf: &mut [f32]) -> Result<f32> {
        let o = self.off(b, h, s);
        let d = self.d;
        match self.data {
            Data::F32(x) => {
                buf.copy_from_slice(x.get(o..o + d).ok_or_else(row_err)?);
                Ok(1.0)
            }
            Data::F16(x) => {
                for (dst, v) in buf.iter_mut().zip(x.get(o..o + d).ok_or_else(row_err)?) {
                    *dst = v.to_f32();
                }
                Ok(1.0)
            }
            Data::BF16(x) => {
                for (dst, v) in buf.iter_mut().zip(x.get(o..o + d).ok_or_else(row_err)?) {
                    *dst = v.to_f32();
                }
                Ok(1.0)
            }
            Data::I8(x, p) => {
                let (z, sc) = Self::qp(&p, b, h, s)?;
                for (dst, &v) in buf.iter_mut().zip(x.get(o..o + d).ok_or_else(row_err)?) {
                    *dst = v as f32 - z;
                }
                Ok(sc)
            }
        }
    }

    /// `q . row(b, h, s)`, with the row's dequantization scale applied.
    #[inline]
    fn dot(&self, b: usize, h: usize, s: usize, q: &[f32]) -> Result<f32> {
        let o = self.off(b, h, s);
        let d = self.d;
        Ok(match self.data {
            Data::F32(x) => ptero_simd::ops::dot(q, x.get(o..o + d).ok_or_else(row_err)?),
            Data::F16(x) => {
                let r = x.get(o..o + d).ok_or_else(row_err)?;
                q.iter().zip(r).map(|(a, b)| a * b.to_f32()).sum()
            }
            Data::BF16(x) => {
                let r = x.get(o..o + d).ok_or_else(row_err)?;
                q.iter().zip(r).map(|(a, b)| a * b.to_f32()).sum()
            }
            Data::I8(x, p) => {
                let (z, sc) = Self::qp(&p, b, h, s)?;
                let r = x.get(o..o + d).ok_or_else(row_err)?;
                let acc: f32 = q.iter().zip(r).map(|(a, &b)| a * (b as f32 - z)).sum();
                acc * sc
            }
        })
    }

    /// `acc += p * row(b, h, s)` (dequantized). Reduced-precision values multiply weights
    /// rounded to their dtype, as ExecuTorch casts the softmax weights before `@ v`.
    #[inline]
    fn axpy(&self, b: usize, h: usize, s: usize, p: f32, acc: &mut [f32]) -> Result<()> {
        let o = self.off(b, h, s);
        let d = self.d;
        match self.data {
            Data::F32(x) => ptero_simd::ops::axpy(p, x.get(o..o + d).ok_or_else(row_err)?, acc),
            Data::F16(x) => {
                let p = f16::from_f32(p).to_f32();
                let r = x.get(o..o + d).ok_or_else(row_err)?;
                for (a, v) in acc.iter_mut().zip(r) {
                    *a += p * v.to_f32();
                }
            }
            Data::BF16(x) => {
                let p = bf16::from_f32(p).to_f32();
                let r = x.get(o..o + d).ok_or_else(row_err)?;
                for (a, v) in acc.iter_mut().zip(r) {
                    *a += p * v.to_f32();
                }
            }
            Data::I8(x, qp) => {
                let (z, sc) = Self::qp(&qp, b, h, s)?;
                let r = x.get(o..o + d).ok_or_else(row_err)?;
                for (a, &v) in acc.iter_mut().zip(r) {
                    *a += p * ((v as f32 - z) * sc);
                }
            }
        }
        Ok(())
    }
}

struct Attention<'a> {
    q: Operand<'a>,
    k: Operand<'a>,
    v: Operand<'a>,
    /// Float mask rows (row stride) added to the scaled scores.
    mask: Option<(&'a [f32], usize)>,
    batch: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    kv_len: usize,
    start_pos: usize,
    causal: bool,
    scale: f32,
    /// Threads the kernel may use (decides the official kernel's rounding of a few
    /// outputs, see `sdpa_order`).
    threads: usize,
}

use crate::sdpa_order::Rows;

/// Stack scratch up to this head dim; larger heads fall back to a heap buffer.
const STACK_D: usize = 512;
/// Most keys a row's scores are kept for (two-pass f32 path); longer rows run online.
const SCORES: usize = 2048;

impl Attention<'_> {
    /// Runs attention, handing each finished output row (b, h, s) to `emit`. The work
    /// (a dot product and an axpy per attended key) is charged to `a`, whose deadline is
    /// checked once per output row.
    fn run(
        &self,
        a: &KernelArgs<'_>,
        mut emit: impl FnMut(usize, usize, usize, &[f32]),
    ) -> Result<()> {
        let d = self.q.d;
        let mut qs = [0f32; STACK_D];
        let mut accs = [0f32; STACK_D];
        // Scratch for head dims above STACK_D (never hit by LLM head sizes), fallible.
        let mut heap = if d <= STACK_D {
            alloc::vec::Vec::new()
        } else {
            a.scratch::<f32>(d.saturating_mul(2))?
        };
        let (qbuf, acc) = if d <= STACK_D {
            (&mut qs[..d], &mut accs[..d])
        } else {
            heap.split_at_mut(d)
        };
        let mut meter = Meter::charging(a);
        for b in 0..self.batch {
            for h in 0..self.hq {
                for r in 0..self.sq {
                    meter.add(sat_product(&[self.keys(r), d, 2]) as u64)?;
                    self.row(b, h, r, qbuf, acc)?;
                    emit(b, h, r, acc);
                }
            }
        }
        Ok(())
    }

    /// Keys query row `r` attends to.
    fn keys(&self, r: usize) -> usize {
        if self.causal {
            (self.start_pos + r + 1).min(self.kv_len)
        } else {
            self.kv_len
        }
    }

    /// Output row (b, h, r) into `acc`, with `qbuf` as scratch (both the head size).
    fn row(&self, b: usize, h: usize, r: usize, qbuf: &mut [f32], acc: &mut [f32]) -> Result<()> {
        use ptero_simd::ops::{binary_inplace, Binary, Rhs};
        let hk = h / (self.hq / self.hkv);
        let qscale = self.q.load(b, h, r, qbuf)? * self.scale;
        let nk = self.keys(r);
        let mrow = match self.mask {
            Some((m, st)) => Some(
                m.get(r * st..r * st + self.kv_len)
                    .ok_or_else(|| Error::invalid("attention: mask smaller than its shape"))?,
            ),
            None => None,
        };
        if let (Data::F32(q), Data::F32(k), Data::F32(v)) = (self.q.data, self.k.data, self.v.data)
        {
            if nk <= SCORES && nk > 0 {
                return self.row_f32([q, k, v], [b, h, hk, r], nk, mrow, acc);
            }
        }
        acc.fill(0.0);
        let mut mx = f32::NEG_INFINITY;
        let mut sum = 0f32;
        for n in 0..nk {
            let mut s = self.k.dot(b, hk, n, qbuf)? * qscale;
            if let Some(m) = mrow {
                s += m[n];
            }
            if s == f32::NEG_INFINITY {
                continue;
            }
            if s > mx {
                let c = libm::expf(mx - s);
                sum *= c;
                binary_inplace(Binary::Mul, acc, Rhs::Scalar(c));
                mx = s;
            }
            let p = libm::expf(s - mx);
            sum += p;
            self.v.axpy(b, hk, n, p, acc)?;
        }
        // A fully masked row gives 0 / 0 = NaN, as in ExecuTorch.
        binary_inplace(Binary::Mul, acc, Rhs::Scalar(1.0 / sum));
        Ok(())
    }

    /// [`Self::row`] for f32 operands, in two passes: all scores against the key cache,
    /// a softmax, then the weighted value rows (each pass one vector dispatch).
    fn row_f32(
        &self,
        [q, k, v]: [&[f32]; 3],
        [b, h, hk, r]: [usize; 4],
        nk: usize,
        mrow: Option<&[f32]>,
        acc: &mut [f32],
    ) -> Result<()> {
        let d = self.q.d;
        let rows = |x: &'_ [f32], op: &Operand<'_>| -> Result<()> {
            let need = op.off(b, hk, nk - 1).checked_add(d).ok_or_else(row_err)?;
            if need > x.len() {
                return Err(row_err());
            }
            Ok(())
        };
        rows(k, &self.k)?;
        rows(v, &self.v)?;
        let qo = self.q.off(b, h, r);
        let qrow = q.get(qo..qo + d).ok_or_else(row_err)?;
        let mut buf = [0f32; SCORES];
        let sc = &mut buf[..nk];
        let (ko, vo) = (self.k.off(b, hk, 0), self.v.off(b, hk, 0));
        if self.sq == 1 && mrow.is_none() && nk <= 512 && d.is_multiple_of(4) && d >= 4 {
            // The worker index ExecuTorch's split over (batch, head) gives this head.
            let tasks = self.batch * self.hq;
            let t = (b * self.hq + h) / tasks.div_ceil(self.threads.max(1));
            let keys = Rows {
                data: &k[ko..],
                stride: self.k.st[2],
            };
            let values = Rows {
                data: &v[vo..],
                stride: self.v.st[2],
            };
            crate::sdpa_order::decode_row(qrow, keys, values, nk, self.scale, t, sc, acc);
            return Ok(());
        }
        ptero_simd::ops::dot_rows(qrow, &k[ko..], self.k.st[2], self.scale, sc);
        if let Some(m) = mrow {
            for (s, m) in sc.iter_mut().zip(m) {
                *s += m;
            }
        }
        // A fully masked row gives 0 / 0 = NaN, as in ExecuTorch.
        ptero_simd::ops::softmax_inplace(sc);
        acc.fill(0.0);
        ptero_simd::ops::axpy_rows(sc, &v[vo..], self.v.st[2], acc);
        Ok(())
    }

    /// Every row into a contiguous f32 `out` laid out `[B, S, H, D]` (`seq_at_2` false)
    /// or `[B, H, S, D]`, split over threads by its outer rows. The work is charged up
    /// front.
    fn run_contiguous(&self, a: &KernelArgs<'_>, out: &mut [f32], seq_at_2: bool) -> Result<()> {
        let d = self.q.d;
        if d > STACK_D || d == 0 {
            return Err(Error::invalid(
                "attention: head size outside the threaded path's",
            ));
        }
        let (outer, inner) = if seq_at_2 {
            (self.hq, self.sq)
        } else {
            (self.sq, self.hq)
        };
        let unit = inner * d;
        let total = sat_product(&[self.batch, outer, unit]);
        let out = out
            .get_mut(..total)
            .ok_or_else(|| Error::invalid("sdpa: out smaller than its shape"))?;
        let work: u64 = (0..self.sq)
            .map(|r| sat_product(&[self.batch, self.hq, self.keys(r), d, 2]) as u64)
            .fold(0u64, u64::saturating_add);
        Meter::charging(a).add(work)?;
        if unit == 0 {
            return Ok(());
        }
        let failed = core::sync::atomic::AtomicBool::new(false);
        ptero_simd::for_each_chunk_by(a.parallel(), out, unit, &|range, chunk| {
            let (mut qs, mut acc) = ([0f32; STACK_D], [0f32; STACK_D]);
            let first = range.start / unit;
            for (k, dst_unit) in chunk.chunks_exact_mut(unit).enumerate() {
                let (b, o) = ((first + k) / outer, (first + k) % outer);
                for (i, dst) in dst_unit.chunks_exact_mut(d).enumerate() {
                    let (h, r) = if seq_at_2 { (o, i) } else { (i, o) };
                    if self.row(b, h, r, &mut qs[..d], &mut acc[..d]).is_err() {
                        failed.store(true, core::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    dst.copy_from_slice(&acc[..d]);
                }
            }
        });
        if failed.into_inner() {
            return Err(row_err());
        }
        Ok(())
    }
}

fn data_of<'a>(t: &TensorRef<'a>, qp: Option<QParams<'a>>, arg: usize) -> Result<Data<'a>> {
    Ok(match t.dtype() {
        ScalarType::Float => Data::F32(t.data::<f32>()?),
        ScalarType::Half => Data::F16(t.data::<f16>()?),
        ScalarType::BFloat16 => Data::BF16(t.data::<bf16>()?),
        ScalarType::Char => match qp {
            Some(p) => Data::I8(t.data::<i8>()?, p),
            None => {
                return Err(Error::invalid(format!(
                    "argument {arg}: int8 attention operand needs zero points and scales"
                )))
            }
        },
        dt => {
            return Err(Error::Dtype {
                arg,
                expected: "Float, Half, BFloat16 or Char".into(),
                found: dt,
            })
        }
    })
}

/// (batch, head, seq) strides of a 4-D tensor whose seq dim is 1 (`[B, S, H, D]`) or 2.
fn bhs(m: &TensorMeta, seq_at_2: bool) -> [usize; 3] {
    let st = m.strides();
    if seq_at_2 {
        [st[0], st[1], st[2]]
    } else {
        [st[0], st[2], st[1]]
    }
}

/// An attention operand from tensor `t` (argument `arg`), with its quantization
/// parameters read from the (zero point, scale) arguments `qargs`.
fn operand<'t>(
    a: &'t KernelArgs<'_>,
    t: TensorRef<'t>,
    qargs: Option<(usize, usize)>,
    arg: usize,
    seq_at_2: bool,
    d: usize,
) -> Result<Operand<'t>> {
    let qp = match qargs {
        Some((zi, si)) => {
            let zt = a.tensor(zi)?;
            let stt = a.tensor(si)?;
            let st = bhs(zt.meta, seq_at_2);
            if bhs(stt.meta, seq_at_2) != st {
                return Err(Error::invalid(
                    "quantized sdpa: zero points and scales must have the same strides",
                ));
            }
            Some(QParams {
                zp: zt.data::<i8>()?,
                scale: stt.data::<f32>()?,
                st,
            })
        }
        None => None,
    };
    Ok(Operand {
        data: data_of(&t, qp, arg)?,
        st: bhs(t.meta, seq_at_2),
        d,
    })
}

/// Argument positions of the optional quantization parameters: (zp, scale) for q, k, v.
type QArgs = [(usize, usize); 3];

struct SdpaArgs {
    q: usize,
    k: usize,
    v: usize,
    start_pos: i64,
    mask: usize,
    causal: bool,
    scale: Option<f64>,
    quant: Option<QArgs>,
    seq_at_2: bool,
    out: usize,
}

fn check_qparams(a: &KernelArgs<'_>, t: usize, zp: usize, sc: usize) -> Result<()> {
    let tm = a.meta(t)?;
    let (zm, sm) = match (a.opt_meta(zp)?, a.opt_meta(sc)?) {
        (Some(z), Some(s)) => (z, s),
        _ => {
            return Err(Error::invalid(
                "quantized sdpa: q, k and v all need zero points and scales",
            ))
        }
    };
    if zm.dim() != tm.dim() || sm.dim() != tm.dim() {
        return Err(Error::shape(
            "quantized sdpa: zero points and scales must have the rank of their tensor",
        ));
    }
    if tm.dtype != ScalarType::Char {
        return Err(Error::Dtype {
            arg: t,
            expected: "Char".into(),
            found: tm.dtype,
        });
    }
    if sm.dtype != ScalarType::Float {
        return Err(Error::Dtype {
            arg: sc,
            expected: "Float".into(),
            found: sm.dtype,
        });
    }
    if zm.dtype != ScalarType::Char {
        return Err(Error::Dtype {
            arg: zp,
            expected: "Char".into(),
            found: zm.dtype,
        });
    }
    let r = tm.dim();
    if tm.sizes()[..r - 1] != sm.sizes()[..r - 1] || tm.sizes()[..r - 1] != zm.sizes()[..r - 1] {
        return Err(Error::shape(format!(
            "quantized sdpa: scales {:?} / zero points {:?} must match tensor {:?} except in \
             the last dim",
            sm.sizes(),
            zm.sizes(),
            tm.sizes()
        )));
    }
    Ok(())
}

/// ExecuTorch's `custom_sdpa_out_impl`: attention of `q` over the first `start_pos + S`
/// rows of the k/v caches (all rows when a mask is given).
#[derive(Clone, Copy)]
/// What `sdpa_plan` works out from the arguments for `sdpa_run`.
struct Plan {
    quantized: bool,
    bsz: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    d: usize,
    kv_len: usize,
    start_pos: usize,
    mask_rows: Option<usize>,
    scale: f32,
}

fn sdpa(a: &mut KernelArgs<'_>, p: &SdpaArgs) -> Result<()> {
    let plan = sdpa_plan(a, p)?;
    let (kt, vt) = (a.tensor(p.k)?, a.tensor(p.v)?);
    sdpa_run(a, p, &plan, kt, vt)
}

/// Validates the arguments as ExecuTorch does and resizes `out` to the query's shape.
fn sdpa_plan(a: &mut KernelArgs<'_>, p: &SdpaArgs) -> Result<Plan> {
    let (qm, km, vm) = (*a.meta(p.q)?, *a.meta(p.k)?, *a.meta(p.v)?);
    let mask_meta = a.opt_meta(p.mask)?.copied();
    if mask_meta.is_some() && p.causal {
        return Err(Error::invalid(
            "sdpa: attn_mask and is_causal cannot be set at the same time",
        ));
    }
    check_rank(p.q, &qm, 4, "query")?;
    check_rank(p.k, &km, 4, "key")?;
    check_rank(p.v, &vm, 4, "value")?;
    let d = qm.sizes()[3];
    if vm.sizes()[3] != d || km.sizes()[3] != d {
        return Err(Error::shape(format!(
            "sdpa: q {:?}, k {:?} and v {:?} must have the same head size",
            qm.sizes(),
            km.sizes(),
            vm.sizes()
        )));
    }
    let dt = qm.dtype;
    if !matches!(
        dt,
        ScalarType::Float | ScalarType::Half | ScalarType::BFloat16 | ScalarType::Char
    ) {
        return Err(Error::Dtype {
            arg: p.q,
            expected: "Float, Half, BFloat16 or Char".into(),
            found: dt,
        });
    }
    if km.dtype != dt || vm.dtype != dt {
        return Err(Error::Dtype {
            arg: if km.dtype != dt { p.k } else { p.v },
            expected: dt.name().into(),
            found: if km.dtype != dt { km.dtype } else { vm.dtype },
        });
    }
    if let Some(mm) = &mask_meta {
        check_rank(p.mask, mm, 2, "attn_mask")?;
        if mm.dtype != ScalarType::Float {
            return Err(Error::Dtype {
                arg: p.mask,
                expected: "Float".into(),
                found: mm.dtype,
            });
        }
        check_contiguous(p.mask, mm, "attn_mask")?;
    }
    check_contiguous(p.q, &qm, "query")?;
    check_contiguous(p.k, &km, "key")?;
    check_contiguous(p.v, &vm, "value")?;
    let quantized = dt == ScalarType::Char;
    let seq_at_2 = p.seq_at_2;
    // ExecuTorch reads the query length from dim 2 only for int8 queries.
    let seq_len = if quantized && seq_at_2 {
        qm.sizes()[2]
    } else {
        qm.sizes()[1]
    };
    if quantized {
        let qa = p.quant.ok_or_else(|| {
            Error::invalid("sdpa: int8 query needs custom_quantized_sdpa's parameters")
        })?;
        for (t, (zp, sc)) in [p.q, p.k, p.v].into_iter().zip(qa) {
            check_qparams(a, t, zp, sc)?;
        }
    }
    let od = a.meta(p.out)?.dtype;
    let want_out = if quantized { ScalarType::Float } else { dt };
    if od != want_out {
        return Err(Error::Dtype {
            arg: p.out,
            expected: want_out.name().into(),
            found: od,
        });
    }
    let (hq, sq) = if seq_at_2 {
        (qm.sizes()[1], qm.sizes()[2])
    } else {
        (qm.sizes()[2], qm.sizes()[1])
    };
    let (hkv, kv_full) = if seq_at_2 {
        (km.sizes()[1], vm.sizes()[2])
    } else {
        (km.sizes()[2], vm.sizes()[1])
    };
    let start_pos = usize_of(p.start_pos, "start_pos")?;
    let kv_len = if mask_meta.is_some() {
        kv_full
    } else {
        let n = start_pos.saturating_add(seq_len);
        if n > kv_full {
            return Err(Error::invalid(format!(
                "sdpa: start_pos {start_pos} + seq_len {seq_len} exceeds the {kv_full} cached \
                 positions"
            )));
        }
        n
    };
    if hkv == 0 || hkv > hq || hq % hkv != 0 {
        return Err(Error::shape(format!(
            "sdpa: query heads ({hq}) must be a multiple of kv heads ({hkv})"
        )));
    }
    let bsz = qm.sizes()[0];
    if km.sizes()[0] < bsz || vm.sizes()[0] < bsz || vm.sizes()[1..3] != km.sizes()[1..3] {
        return Err(Error::shape(format!(
            "sdpa: key {:?} / value {:?} do not match query {:?}",
            km.sizes(),
            vm.sizes(),
            qm.sizes()
        )));
    }
    let mut mask_rows = None;
    if let Some(mm) = &mask_meta {
        if mm.numel() > 0 && (mm.sizes()[0] != sq || mm.sizes()[1] != kv_len) {
            return Err(Error::shape(format!(
                "sdpa: attn_mask {:?} must be [{sq}, {kv_len}]",
                mm.sizes()
            )));
        }
        if mm.numel() > 0 {
            mask_rows = Some(mm.strides()[0]);
        }
    }
    let scale = p.scale.unwrap_or_else(|| 1.0 / libm::sqrt(d as f64)) as f32;
    a.resize(p.out, qm.sizes())?;
    Ok(Plan {
        quantized,
        bsz,
        hq,
        hkv,
        sq,
        d,
        kv_len,
        start_pos,
        mask_rows,
        scale,
    })
}

/// Runs the planned attention with key/value views `kt`/`vt` (which may be caches the
/// kernel has just written).
fn sdpa_run(
    a: &KernelArgs<'_>,
    p: &SdpaArgs,
    plan: &Plan,
    kt: TensorRef<'_>,
    vt: TensorRef<'_>,
) -> Result<()> {
    let Plan {
        quantized,
        bsz,
        hq,
        hkv,
        sq,
        d,
        kv_len,
        start_pos,
        mask_rows,
        scale,
    } = *plan;
    let seq_at_2 = p.seq_at_2;
    let om = *a.meta(p.out)?;
    // An empty out (e.g. head size 0) needs no attention, however many rows and keys
    // the other dims describe.
    if om.numel() == 0 {
        return Ok(());
    }
    let od = om.dtype;
    let ost = bhs(&om, seq_at_2);
    let od_stride = om.strides()[3];
    let quant = p.quant.filter(|_| quantized);
    let qt = a.tensor(p.q)?;
    let mask_t = match mask_rows {
        Some(st) => Some((a.tensor(p.mask)?.data::<f32>()?, st)),
        None => None,
    };
    let attn = Attention {
        q: operand(a, qt, quant.map(|q| q[0]), p.q, seq_at_2, d)?,
        k: operand(a, kt, quant.map(|q| q[1]), p.k, seq_at_2, d)?,
        v: operand(a, vt, quant.map(|q| q[2]), p.v, seq_at_2, d)?,
        mask: mask_t,
        batch: bsz,
        hq,
        hkv,
        sq,
        kv_len,
        start_pos,
        causal: p.causal,
        scale,
        threads: a.parallel().threads(),
    };
    let contiguous = om.dim() == 4 && {
        let sz = om.sizes();
        om.strides() == [sz[1] * sz[2] * sz[3], sz[2] * sz[3], sz[3], 1]
    };
    let mut ot = a.out(p.out)?;
    if od == ScalarType::Float && contiguous && d <= STACK_D {
        return attn.run_contiguous(a, ot.data::<f32>()?, seq_at_2);
    }
    if od == ScalarType::Float && od_stride == 1 {
        let o = ot.data::<f32>()?;
        let mut bad = false;
        attn.run(a, |b, h, s, row| {
            let base = b * ost[0] + h * ost[1] + s * ost[2];
            match o.get_mut(base..base + row.len()) {
                Some(dst) => dst.copy_from_slice(row),
                None => bad = true,
            }
        })?;
        if bad {
            return Err(Error::invalid("sdpa: out smaller than its shape"));
        }
    } else {
        let ob = &mut *ot.bytes;
        let n = om.numel();
        attn.run(a, |b, h, s, row| {
            let base = b * ost[0] + h * ost[1] + s * ost[2];
            for (i, &x) in row.iter().enumerate() {
                let at = base + i * od_stride;
                if at < n {
                    store_f64(ob, od, at, x as f64);
                }
            }
        })?;
    }
    Ok(())
}

/// `custom_sdpa.out(query, key, value, start_pos, attn_mask?, dropout_p, is_causal,
/// scale?, *, out)` with `[B, S, H, D]` tensors; dropout is ignored as in ExecuTorch.
fn custom_sdpa_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(10)?;
    let p = SdpaArgs {
        q: 0,
        k: 1,
        v: 2,
        start_pos: a.int(3)?,
        mask: 4,
        causal: a.bool(6)?,
        scale: a.opt_double(7)?,
        quant: None,
        seq_at_2: false,
        out: 8,
    };
    sdpa(a, &p)
}

/// `custom_quantized_sdpa.out(query, key, value, start_pos, attn_mask?, dropout_p,
/// is_causal, scale?, q_zero_points?, q_scales?, k_zero_points?, k_scales?,
/// v_zero_points?, v_scales?, is_seq_at_dim_2, *, out)`.
fn custom_quantized_sdpa_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(17)?;
    let p = SdpaArgs {
        q: 0,
        k: 1,
        v: 2,
        start_pos: a.int(3)?,
        mask: 4,
        causal: a.bool(6)?,
        scale: a.opt_double(7)?,
        quant: Some([(8, 9), (10, 11), (12, 13)]),
        seq_at_2: a.bool(14)?,
        out: 15,
    };
    sdpa(a, &p)
}

/// `sdpa_with_kv_cache.out(query, key, value, key_cache(a!), value_cache(b!), start_pos,
/// seq_len, attn_mask?, dropout_p, is_causal, scale?, *, out)`: writes key/value into the
/// caches at `start_pos`, then runs `custom_sdpa` against the caches.
fn sdpa_with_kv_cache_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(13)?;
    let start_pos = a.int(5)?;
    let seq_len = a.int(6)?;
    let (km, vm) = (*a.meta(1)?, *a.meta(2)?);
    let (kc, vc) = (*a.meta(3)?, *a.meta(4)?);
    check_rank(3, &kc, 4, "key_cache")?;
    check_rank(4, &vc, 4, "value_cache")?;
    check_window(start_pos, seq_len, kc.sizes()[1], "sdpa_with_kv_cache")?;
    check_window(start_pos, seq_len, vc.sizes()[1], "sdpa_with_kv_cache")?;
    check_contiguous(3, &kc, "key_cache")?;
    check_contiguous(4, &vc, "value_cache")?;
    check_rank(0, a.meta(0)?, 4, "query")?;
    check_cache_pair(1, &km, 3, &kc)?;
    check_cache_pair(2, &vm, 4, &vc)?;
    // ExecuTorch copies the whole of key/value, whatever `seq_len` says.
    let sp = check_window(start_pos, km.sizes()[1] as i64, kc.sizes()[1], "key")?;
    check_window(start_pos, vm.sizes()[1] as i64, vc.sizes()[1], "value")?;
    let p = SdpaArgs {
        q: 0,
        k: 3,
        v: 4,
        start_pos,
        mask: 7,
        causal: a.bool(9)?,
        scale: a.opt_double(10)?,
        quant: None,
        seq_at_2: false,
        out: 11,
    };
    let plan = sdpa_plan(a, &p)?;
    let (k, v) = (a.tensor(1)?, a.tensor(2)?);
    // One mutable view per cache: written first, then read by the attention.
    let TensorMut {
        meta: kmeta,
        bytes: kbytes,
    } = a.out(3)?;
    let TensorMut {
        meta: vmeta,
        bytes: vbytes,
    } = a.out(4)?;
    copy_tokens(&km, k.bytes, &kc, kbytes, |_, s| Ok(sp + s))?;
    copy_tokens(&vm, v.bytes, &vc, vbytes, |_, s| Ok(sp + s))?;
    let kt = TensorRef {
        meta: kmeta,
        bytes: kbytes,
    };
    let vt = TensorRef {
        meta: vmeta,
        bytes: vbytes,
    };
    sdpa_run(a, &p, &plan, kt, vt)
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("llama::update_cache.out", update_cache_out);
    reg.register(
        "llama::update_cache_with_indices.out",
        update_cache_with_indices_out,
    );
    reg.register("llama::custom_sdpa.out", custom_sdpa_out);
    reg.register(
        "llama::custom_quantized_sdpa.out",
        custom_quantized_sdpa_out,
    );
    reg.register("llama::sdpa_with_kv_cache.out", sdpa_with_kv_cache_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, run_op_interrupted, run_op_with, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    fn rand_vals(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 2000) as f64 / 1000.0 - 1.0
            })
            .collect()
    }

    fn t(shape: &[usize], v: &[f64]) -> OwnedTensor {
        OwnedTensor::from_f64(Float, shape, v)
    }

    /// Attention by the definition: q [B,S,Hq,D], caches [B,L,Hkv,D], mask [S,L].
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        (b, s, hq, hkv, d, l): (usize, usize, usize, usize, usize, usize),
        start_pos: usize,
        causal: bool,
        mask: Option<&[f64]>,
        scale: f64,
    ) -> Vec<f64> {
        let kv = if mask.is_some() { l } else { start_pos + s };
        let mut out = vec![0.0; b * s * hq * d];
        for bi in 0..b {
            for si in 0..s {
                for h in 0..hq {
                    let hk = h / (hq / hkv);
                    let qo = ((bi * s + si) * hq + h) * d;
                    let mut sc = vec![f64::NEG_INFINITY; kv];
                    for n in 0..kv {
                        if causal && n > start_pos + si {
                            continue;
                        }
                        let ko = ((bi * l + n) * hkv + hk) * d;
                        let dot: f64 = (0..d).map(|i| q[qo + i] * k[ko + i]).sum();
                        sc[n] = dot * scale + mask.map_or(0.0, |m| m[si * l + n]);
                    }
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for (n, wn) in w.iter().enumerate() {
                        let vo = ((bi * l + n) * hkv + hk) * d;
                        for i in 0..d {
                            out[qo + i] += wn / sum * v[vo + i];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn update_cache_writes_window_and_leaves_out() {
        let val = t(&[1, 2, 2, 1], &[1., 2., 3., 4.]);
        let cache = t(&[1, 4, 2, 1], &[9.; 8]);
        let r = run_op(
            "llama::update_cache.out",
            vec![
                Arg::T(val.clone()),
                Arg::OutLike(cache.clone()),
                Arg::Int(1),
                Arg::Out(Float, vec![1]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [9., 9., 1., 2., 3., 4., 9., 9.]);
        assert_eq!(r.tensors[1].to_f64(), [0.]);
        // Windows past the cache, and negative positions, are errors.
        for sp in [3, 4, -1] {
            assert!(run_op(
                "llama::update_cache.out",
                vec![
                    Arg::T(val.clone()),
                    Arg::OutLike(cache.clone()),
                    Arg::Int(sp),
                    Arg::Out(Float, vec![1]),
                ],
            )
            .is_err());
        }
        // Head mismatch.
        let bad = t(&[1, 1, 1, 1], &[1.]);
        assert!(run_op(
            "llama::update_cache.out",
            vec![
                Arg::T(bad),
                Arg::OutLike(cache.clone()),
                Arg::Int(0),
                Arg::Out(Float, vec![1]),
            ],
        )
        .is_err());
    }

    #[test]
    fn update_cache_with_indices_scatters_tokens() {
        let val = t(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
        let cache = t(&[1, 3, 1, 2], &[0.; 6]);
        let idx = OwnedTensor::new::<i64>(&[1, 2], &[2, 0]);
        let r = run_op(
            "llama::update_cache_with_indices.out",
            vec![
                Arg::T(val.clone()),
                Arg::OutLike(cache.clone()),
                Arg::Int(0),
                Arg::T(idx),
                Arg::Out(Float, vec![1]),
            ],
        )
        .unwrap();
        assert_eq!(r.tensors[0].to_f64(), [3., 4., 0., 0., 1., 2.]);
        let oob = OwnedTensor::new::<i64>(&[1, 2], &[3, 0]);
        assert!(run_op(
            "llama::update_cache_with_indices.out",
            vec![
                Arg::T(val),
                Arg::OutLike(cache),
                Arg::Int(0),
                Arg::T(oob),
                Arg::Out(Float, vec![1]),
            ],
        )
        .is_err());
    }

    fn z(s: &[usize]) -> OwnedTensor {
        OwnedTensor::zeros(Float, s)
    }

    /// Attention charges a dot product and an axpy per attended key and head element,
    /// and stops with `Interrupted` once the caller's deadline has passed.
    #[test]
    fn sdpa_charges_work_and_stops_when_interrupted() {
        let ctx = ptero_core::ExecContext {
            interrupt: None,
            scratch_limit: ptero_core::DEFAULT_SCRATCH_LIMIT,
            ..Default::default()
        };
        let x = z(&[1, 64, 4, 64]);
        let args = sdpa_args(
            &x,
            &x,
            &x,
            0,
            None,
            false,
            Arg::Out(Float, vec![1, 64, 4, 64]),
        );
        let (_, charged) = run_op_with("llama::custom_sdpa.out", args.clone(), ctx).unwrap();
        // 4 heads x 64 query rows x 64 keys x 64 head elements x 2.
        assert_eq!(charged, 4 * 64 * 64 * 64 * 2);
        assert_eq!(
            run_op_interrupted("llama::custom_sdpa.out", args).unwrap_err(),
            ptero_core::Error::Interrupted
        );
    }

    /// Empty values whose other dims are huge: nothing to copy, where the token size
    /// overflowed and the batch loop spun.
    #[test]
    fn update_cache_of_empty_value_is_a_no_op() {
        let big = 1usize << 40;
        for (value, cache) in [
            // heads x head dim x element size overflows.
            (z(&[0, 1, big, big]), z(&[0, 4, big, big])),
            // 2^62 batches of zero tokens.
            (z(&[1 << 62, 0, 0, 1]), z(&[1 << 62, 1, 0, 1])),
        ] {
            run_op(
                "llama::update_cache.out",
                vec![
                    Arg::T(value),
                    Arg::OutLike(cache),
                    Arg::Int(0),
                    Arg::Out(Float, vec![1]),
                ],
            )
            .unwrap();
        }
    }

    /// start_pos + seq_len overflowed.
    #[test]
    fn sdpa_window_overflow_is_an_error() {
        let kv = z(&[1, 4, 1, 1]);
        let r = run_op(
            "llama::custom_sdpa.out",
            sdpa_args(
                &z(&[0, usize::MAX, 1, 1]),
                &kv,
                &kv,
                1,
                None,
                false,
                Arg::Out(Float, vec![0, 1, 1, 1]),
            ),
        );
        assert!(r.is_err());
    }

    /// Head size 0: the loop ran over 2^20 query rows x 2^10 heads x 2^21 keys of nothing.
    #[test]
    fn sdpa_with_empty_out_is_immediate() {
        let kv = z(&[1, 1 << 21, 1 << 10, 0]);
        let r = run_op(
            "llama::custom_sdpa.out",
            sdpa_args(
                &z(&[1, 1 << 20, 1 << 10, 0]),
                &kv,
                &kv,
                0,
                None,
                true,
                Arg::Out(Float, vec![1, 1 << 20, 1 << 10, 0]),
            ),
        )
        .unwrap();
        assert_eq!(r.tensors[0].sizes, [1, 1 << 20, 1 << 10, 0]);
    }

    fn sdpa_args(
        q: &OwnedTensor,
        k: &OwnedTensor,
        v: &OwnedTensor,
        sp: i64,
        mask: Option<OwnedTensor>,
        causal: bool,
        out: Arg,
    ) -> Vec<Arg> {
        vec![
            Arg::T(q.clone()),
            Arg::T(k.clone()),
            Arg::T(v.clone()),
            Arg::Int(sp),
            mask.map_or(Arg::None, Arg::T),
            Arg::Double(0.0),
            Arg::Bool(causal),
            Arg::None,
            out,
        ]
    }

    #[test]
    fn custom_sdpa_matches_reference() {
        // GQA (4 query heads over 2 kv heads), prefill chunk of 3 at start_pos 2.
        let (b, s, hq, hkv, d, l) = (2, 3, 4, 2, 5, 8);
        let qv = rand_vals(b * s * hq * d, 1);
        let kv = rand_vals(b * l * hkv * d, 2);
        let vv = rand_vals(b * l * hkv * d, 3);
        let q = t(&[b, s, hq, d], &qv);
        let k = t(&[b, l, hkv, d], &kv);
        let v = t(&[b, l, hkv, d], &vv);
        let scale = 1.0 / (d as f64).sqrt();
        let dims = (b, s, hq, hkv, d, l);
        for (sp, causal) in [(2, true), (2, false), (0, true), (5, true)] {
            let want = naive(&qv, &kv, &vv, dims, sp as usize, causal, None, scale);
            let r = run_op(
                "llama::custom_sdpa.out",
                sdpa_args(
                    &q,
                    &k,
                    &v,
                    sp,
                    None,
                    causal,
                    Arg::Out(Float, vec![b, s, hq, d]),
                ),
            )
            .unwrap();
            assert_eq!(r.tensors[0].sizes, [b, s, hq, d]);
            assert_close(&r.tensors[0].to_f64(), &want, 1e-5, 1e-5);
            // Output in another dim order.
            let o = OwnedTensor::zeros(Float, &[b, s, hq, d]).with_dim_order(&[0, 2, 1, 3]);
            let r = run_op(
                "llama::custom_sdpa.out",
                sdpa_args(&q, &k, &v, sp, None, causal, Arg::OutLike(o)),
            )
            .unwrap();
            assert_close(&r.tensors[0].to_f64(), &want, 1e-5, 1e-5);
        }
        // A float mask spans the whole cache.
        let mv: Vec<f64> = rand_vals(s * l, 4).iter().map(|x| x * 3.0).collect();
        let want = naive(&qv, &kv, &vv, dims, 2, false, Some(&mv), scale);
        let r = run_op(
            "llama::custom_sdpa.out",
            sdpa_args(
                &q,
                &k,
                &v,
                2,
                Some(t(&[s, l], &mv)),
                false,
                Arg::Out(Float, vec![b, s, hq, d]),
            ),
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &want, 1e-5, 1e-5);
        // Errors: mask with is_causal, window past the cache, heads not a multiple.
        assert!(run_op(
            "llama::custom_sdpa.out",
            sdpa_args(
                &q,
                &k,
                &v,
                2,
                Some(t(&[s, l], &mv)),
                true,
                Arg::Out(Float, vec![b, s, hq, d])
            ),
        )
        .is_err());
        assert!(run_op(
            "llama::custom_sdpa.out",
            sdpa_args(
                &q,
                &k,
                &v,
                6,
                None,
                true,
                Arg::Out(Float, vec![b, s, hq, d])
            ),
        )
        .is_err());
        let k3 = t(&[b, l, 3, d], &rand_vals(b * l * 3 * d, 5));
        assert!(run_op(
            "llama::custom_sdpa.out",
            sdpa_args(
                &q,
                &k3,
                &k3,
                0,
                None,
                true,
                Arg::Out(Float, vec![b, s, hq, d])
            ),
        )
        .is_err());
    }

    #[test]
    fn custom_sdpa_half_and_empty() {
        let (b, s, hq, hkv, d, l) = (1, 2, 2, 1, 4, 4);
        let qv = rand_vals(b * s * hq * d, 7);
        let kv = rand_vals(b * l * hkv * d, 8);
        let vv = rand_vals(b * l * hkv * d, 9);
        let h = |sh: &[usize], x: &[f64]| OwnedTensor::from_f64(Half, sh, x);
        let (q, k, v) = (
            h(&[b, s, hq, d], &qv),
            h(&[b, l, hkv, d], &kv),
            h(&[b, l, hkv, d], &vv),
        );
        // Reference on the half-rounded inputs.
        let (qr, kr, vr) = (q.to_f64(), k.to_f64(), v.to_f64());
        let want = naive(&qr, &kr, &vr, (b, s, hq, hkv, d, l), 1, true, None, 0.5);
        let r = run_op(
            "llama::custom_sdpa.out",
            sdpa_args(&q, &k, &v, 1, None, true, Arg::Out(Half, vec![b, s, hq, d])),
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &want, 3e-3, 3e-3);
        // An empty batch gives an empty output.
        let e = t(&[0, 1, 2, 4], &[]);
        let ek = t(&[0, 4, 1, 4], &[]);
        let r = run_op(
            "llama::custom_sdpa.out",
            sdpa_args(
                &e,
                &ek,
                &ek,
                0,
                None,
                true,
                Arg::Out(Float, vec![0, 1, 2, 4]),
            ),
        )
        .unwrap();
        assert_eq!(r.tensors[0].sizes, [0, 1, 2, 4]);
    }

    #[test]
    fn sdpa_with_kv_cache_updates_then_attends() {
        let (b, s, hq, hkv, d, l) = (1, 2, 4, 2, 3, 6);
        let qv = rand_vals(b * s * hq * d, 11);
        let kn = rand_vals(b * s * hkv * d, 12);
        let vn = rand_vals(b * s * hkv * d, 13);
        let kc = rand_vals(b * l * hkv * d, 14);
        let vc = rand_vals(b * l * hkv * d, 15);
        let sp = 3;
        let mut kc2 = kc.clone();
        let mut vc2 = vc.clone();
        let row = hkv * d;
        kc2[sp * row..(sp + s) * row].copy_from_slice(&kn);
        vc2[sp * row..(sp + s) * row].copy_from_slice(&vn);
        let want = naive(&qv, &kc2, &vc2, (b, s, hq, hkv, d, l), sp, true, None, 0.25);
        let args = |sp: i64| {
            vec![
                Arg::T(t(&[b, s, hq, d], &qv)),
                Arg::T(t(&[b, s, hkv, d], &kn)),
                Arg::T(t(&[b, s, hkv, d], &vn)),
                Arg::OutLike(t(&[b, l, hkv, d], &kc)),
                Arg::OutLike(t(&[b, l, hkv, d], &vc)),
                Arg::Int(sp),
                Arg::Int(s as i64),
                Arg::None,
                Arg::Double(0.0),
                Arg::Bool(true),
                Arg::Double(0.25),
                Arg::Out(Float, vec![b, s, hq, d]),
            ]
        };
        let r = run_op("llama::sdpa_with_kv_cache.out", args(sp as i64)).unwrap();
        assert_close(&r.tensors[0].to_f64(), &kc2, 1e-7, 0.0);
        assert_close(&r.tensors[1].to_f64(), &vc2, 1e-7, 0.0);
        assert_close(&r.tensors[2].to_f64(), &want, 1e-5, 1e-5);
        assert!(run_op("llama::sdpa_with_kv_cache.out", args(5)).is_err());
    }

    /// Per-token int8 quantization of `x` with rows of `d`: (q, zero points, scales).
    fn quant_rows(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut q, mut z, mut sc) = (vec![], vec![], vec![]);
        for (i, r) in x.chunks(d).enumerate() {
            let s = 0.01 + 0.002 * (i % 5) as f64;
            let zp = (i % 7) as f64 - 3.0;
            for &v in r {
                q.push(((v / s).round() + zp).clamp(-128.0, 127.0));
            }
            z.push(zp);
            sc.push(s);
        }
        (q, z, sc)
    }

    fn dequant(q: &[f64], z: &[f64], s: &[f64], d: usize) -> Vec<f64> {
        q.iter()
            .enumerate()
            .map(|(i, &v)| (v - z[i / d]) * (s[i / d] as f32 as f64))
            .collect()
    }

    #[test]
    fn custom_quantized_sdpa_dequantizes() {
        let (b, s, hq, hkv, d, l) = (1, 2, 4, 2, 4, 5);
        let (qq, qz, qs) = quant_rows(&rand_vals(b * s * hq * d, 21), d);
        let (kq, kz, ks) = quant_rows(&rand_vals(b * l * hkv * d, 22), d);
        let (vq, vz, vs) = quant_rows(&rand_vals(b * l * hkv * d, 23), d);
        let want = naive(
            &dequant(&qq, &qz, &qs, d),
            &dequant(&kq, &kz, &ks, d),
            &dequant(&vq, &vz, &vs, d),
            (b, s, hq, hkv, d, l),
            1,
            true,
            None,
            0.5,
        );
        let i8t = |sh: &[usize], x: &[f64]| OwnedTensor::from_f64(Char, sh, x);
        let r = run_op(
            "llama::custom_quantized_sdpa.out",
            vec![
                Arg::T(i8t(&[b, s, hq, d], &qq)),
                Arg::T(i8t(&[b, l, hkv, d], &kq)),
                Arg::T(i8t(&[b, l, hkv, d], &vq)),
                Arg::Int(1),
                Arg::None,
                Arg::Double(0.0),
                Arg::Bool(true),
                Arg::None,
                Arg::T(i8t(&[b, s, hq, 1], &qz)),
                Arg::T(t(&[b, s, hq, 1], &qs)),
                Arg::T(i8t(&[b, l, hkv, 1], &kz)),
                Arg::T(t(&[b, l, hkv, 1], &ks)),
                Arg::T(i8t(&[b, l, hkv, 1], &vz)),
                Arg::T(t(&[b, l, hkv, 1], &vs)),
                Arg::Bool(false),
                Arg::Out(Float, vec![b, s, hq, d]),
            ],
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &want, 1e-4, 1e-4);
        // Missing value parameters are an error.
        assert!(run_op(
            "llama::custom_quantized_sdpa.out",
            vec![
                Arg::T(i8t(&[b, s, hq, d], &qq)),
                Arg::T(i8t(&[b, l, hkv, d], &kq)),
                Arg::T(i8t(&[b, l, hkv, d], &vq)),
                Arg::Int(1),
                Arg::None,
                Arg::Double(0.0),
                Arg::Bool(true),
                Arg::None,
                Arg::T(i8t(&[b, s, hq, 1], &qz)),
                Arg::T(t(&[b, s, hq, 1], &qs)),
                Arg::T(i8t(&[b, l, hkv, 1], &kz)),
                Arg::T(t(&[b, l, hkv, 1], &ks)),
                Arg::None,
                Arg::None,
                Arg::Bool(false),
                Arg::Out(Float, vec![b, s, hq, d]),
            ],
        )
        .is_err());
    }

    #[test]
    fn custom_quantized_sdpa_seq_at_dim_2() {
        // [B, H, S, D] layout: transpose the reference's [B, S, H, D] data.
        let (b, s, hq, hkv, d, l) = (1, 2, 2, 1, 4, 4);
        let (qq, qz, qs) = quant_rows(&rand_vals(b * s * hq * d, 31), d);
        let (kq, kz, ks) = quant_rows(&rand_vals(b * l * hkv * d, 32), d);
        let (vq, vz, vs) = quant_rows(&rand_vals(b * l * hkv * d, 33), d);
        let want = naive(
            &dequant(&qq, &qz, &qs, d),
            &dequant(&kq, &kz, &ks, d),
            &dequant(&vq, &vz, &vs, d),
            (b, s, hq, hkv, d, l),
            2,
            true,
            None,
            0.5,
        );
        // Transposes rows (s, h) -> (h, s) with row length `w`.
        let tr = |x: &[f64], s: usize, h: usize, w: usize| {
            let mut o = vec![0.0; x.len()];
            for si in 0..s {
                for hi in 0..h {
                    for i in 0..w {
                        o[(hi * s + si) * w + i] = x[(si * h + hi) * w + i];
                    }
                }
            }
            o
        };
        let i8t = |sh: &[usize], x: &[f64]| OwnedTensor::from_f64(Char, sh, x);
        let r = run_op(
            "llama::custom_quantized_sdpa.out",
            vec![
                Arg::T(i8t(&[b, hq, s, d], &tr(&qq, s, hq, d))),
                Arg::T(i8t(&[b, hkv, l, d], &tr(&kq, l, hkv, d))),
                Arg::T(i8t(&[b, hkv, l, d], &tr(&vq, l, hkv, d))),
                Arg::Int(2),
                Arg::None,
                Arg::Double(0.0),
                Arg::Bool(true),
                Arg::Double(0.5),
                Arg::T(i8t(&[b, hq, s, 1], &tr(&qz, s, hq, 1))),
                Arg::T(t(&[b, hq, s, 1], &tr(&qs, s, hq, 1))),
                Arg::T(i8t(&[b, hkv, l, 1], &tr(&kz, l, hkv, 1))),
                Arg::T(t(&[b, hkv, l, 1], &tr(&ks, l, hkv, 1))),
                Arg::T(i8t(&[b, hkv, l, 1], &tr(&vz, l, hkv, 1))),
                Arg::T(t(&[b, hkv, l, 1], &tr(&vs, l, hkv, 1))),
                Arg::Bool(true),
                Arg::Out(Float, vec![b, s, hq, d]),
            ],
        )
        .unwrap();
        assert_close(&r.tensors[0].to_f64(), &tr(&want, s, hq, d), 1e-4, 1e-4);
    }
}
