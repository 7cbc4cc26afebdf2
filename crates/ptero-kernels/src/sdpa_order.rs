//! One decode row of `llama::custom_sdpa` in the order of ExecuTorch's CPU build, so that
//! a quantized language model's next layers requantize the same values.
//!
//! An 8da4w model quantizes every attention output per token; a difference in the last
//! bit of one element can move it across a rounding step, and after a few layers the
//! greedy ids part. The official kernel (`cpu_flash_attention`, one query row, one key
//! block up to 512 keys) computes:
//! - each score as BLAS `sgemv` does on x86-64 (MKL's SSE path, no fused multiply-add):
//!   the first 4 products summed in order, then 4 interleaved partial sums (8 for the last
//!   rows of an odd count), combined as `(a0 + a2) + (a1 + a3)`; then `· scale`;
//! - `exp(s − max)` with `expf`, summed in 16 interleaved lanes then in order; keys past
//!   the last 16 with the double `exp`, summed in double;
//! - the unnormalised weights times the values, summed key by key in order (a few leading
//!   outputs, chosen by the alignment of the worker's scratch, in blocks of 8);
//! - the sum's reciprocal times each output.
//!
//! Matching it is best effort: BLAS builds differ between machines, but on the ones
//! measured this is the official runtime's exact result.

/// Rows `0..n` of a matrix: row `i` starts at `i · stride` of `data`.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
}

impl Rows<'_> {
    #[inline(always)]
    fn row(&self, i: usize, d: usize) -> &[f32] {
        &self.data[i * self.stride..i * self.stride + d]
    }
}

/// How a score row sums its products: [`dot`].
#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    /// Rows in whole groups of 4.
    Quad,
    /// A last row read with two 4-wide accumulators per 8 products.
    Pair,
    /// A last row read with one 4-wide accumulator per 8 products.
    Single,
}

/// `q · k` in `pattern`'s order (`d >= 4`).
#[inline(always)]
fn dot(q: &[f32], k: &[f32], pattern: Pattern) -> f32 {
    let d = q.len();
    let t = |i: usize| k[i] * q[i];
    let head = ((t(0) + t(1)) + t(2)) + t(3);
    let mut a = [head, 0.0, 0.0, 0.0];
    let mut b = [0.0f32; 4];
    let tail_from = match pattern {
        Pattern::Quad => {
            let chunks = (d - 4) / 4;
            for c in 0..chunks {
                for (j, aj) in a.iter_mut().enumerate() {
                    *aj += t(4 + 4 * c + j);
                }
            }
            4 + 4 * chunks
        }
        Pattern::Pair | Pattern::Single => {
            let blocks = (d - 4) / 8;
            for c in 0..blocks {
                for j in 0..4 {
                    a[j] += t(4 + 8 * c + j);
                    if pattern == Pattern::Pair {
                        b[j] += t(4 + 8 * c + 4 + j);
                    } else {
                        a[j] += t(4 + 8 * c + 4 + j);
                    }
                }
            }
            if pattern == Pattern::Pair {
                for j in 0..4 {
                    a[j] += b[j];
                }
            }
            4 + 8 * blocks
        }
    };
    let mut r = (a[0] + a[2]) + (a[1] + a[3]);
    for i in tail_from..d {
        r += t(i);
    }
    r
}

/// Output row of one query `q` over keys and values `0..n` (`n <= scores.len()`,
/// `q.len()` a multiple of 4): written to `out` (`q.len()`). `worker` is the index of
/// the official kernel's thread for this (batch, head).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_row(
    q: &[f32],
    keys: Rows<'_>,
    values: Rows<'_>,
    n: usize,
    scale: f32,
    worker: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let whole = n / 4 * 4;
    for (l, s) in scores[..n].iter_mut().enumerate() {
        let pattern = match l.checked_sub(whole) {
            None => Pattern::Quad,
            Some(1) => Pattern::Single,
            Some(_) => Pattern::Pair,
        };
        *s = dot(q, keys.row(l, d), pattern) * scale;
    }
    let m = scores[..n]
        .iter()
        .fold(f32::NEG_INFINITY, |m, &s| if s > m { s } else { m });
    let lanes_end = n / 16 * 16;
    let mut lanes = [0f32; 16];
    for (i, s) in scores[..lanes_end].iter_mut().enumerate() {
        let e = libm::expf(*s - m);
        *s = e;
        lanes[i % 16] += e;
    }
    let mut sum = lanes.iter().fold(0f32, |a, &l| a + l);
    for s in &mut scores[lanes_end..n] {
        let e = libm::exp(f64::from(*s - m));
        *s = e as f32;
        sum = (f64::from(sum) + e) as f32;
    }
    out.fill(0.0);
    for (l, &p) in scores[..n].iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(values.row(l, d)) {
            *o += v * p;
        }
    }
    // Where the worker's output scratch is not 16-byte aligned, BLAS peels the leading
    // outputs and sums them in blocks of 8 keys.
    let scratch = worker * (n + 2 + d) + n + 2;
    let peel = (4 - scratch % 4) % 4;
    if n >= 8 {
        for (c, o) in out.iter_mut().enumerate().take(peel.min(d)) {
            let u = |l: usize| values.row(l, d)[c] * scores[l];
            let mut acc = 0f32;
            let mut l = 0;
            while l + 8 <= n {
                for i in 0..4 {
                    acc += u(l + i);
                }
                acc += ((u(l + 4) + u(l + 5)) + u(l + 6)) + u(l + 7);
                l += 8;
            }
            for i in l..n {
                acc += u(i);
            }
            *o = acc;
        }
    }
    let r = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Softmax attention in f64, the definition `decode_row` must agree with up to
    /// float rounding whatever order it sums in.
    fn reference(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32) -> Vec<f64> {
        let d = q.len();
        let s: Vec<f64> = (0..n)
            .map(|l| {
                (0..d)
                    .map(|i| f64::from(q[i]) * f64::from(k[l * d + i]))
                    .sum::<f64>()
                    * f64::from(scale)
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..d)
            .map(|c| (0..n).map(|l| e[l] * f64::from(v[l * d + c])).sum::<f64>() / z)
            .collect()
    }

    #[test]
    fn decode_row_is_softmax_attention_for_every_pattern_and_worker() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for &(n, d) in &[
            (1, 4),
            (3, 8),
            (5, 12),
            (8, 16),
            (13, 64),
            (16, 32),
            (17, 64),
            (33, 20),
            (70, 64),
        ] {
            let q: Vec<f32> = (0..d).map(|_| next()).collect();
            let k: Vec<f32> = (0..n * d).map(|_| next()).collect();
            let v: Vec<f32> = (0..n * d).map(|_| next()).collect();
            let want = reference(&q, &k, &v, n, 0.3);
            for worker in 0..3 {
                let mut scores = [0f32; 80];
                let mut out = vec![0f32; d];
                let keys = Rows {
                    data: &k,
                    stride: d,
                };
                let values = Rows {
                    data: &v,
                    stride: d,
                };
                decode_row(&q, keys, values, n, 0.3, worker, &mut scores, &mut out);
                for (c, (&o, &w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(o) - w).abs() < 1e-5,
                        "n {n} d {d} worker {worker} c {c}: {o} vs {w}"
                    );
                }
            }
        }
    }
}
