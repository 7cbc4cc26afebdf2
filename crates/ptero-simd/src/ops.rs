//! Slice-level kernels on f32, dispatched at the selected level: what the portable
//! operators call for their contiguous inner loops.
//!
//! ```
//! use ptero_simd::ops::{self, Unary};
//! let x = [0.0f32, 1.0, -1.0];
//! let mut y = [0.0f32; 3];
//! ops::unary(Unary::Sigmoid, &x, &mut y);
//! assert!((y[1] - 0.731_058_6).abs() < 1e-6);
//! assert_eq!(ops::sum(&[1.0; 100]), 100.0);
//! ```

use crate::{dispatch, math, Simd, SimdOp};

/// Element-wise functions with a vector implementation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Silu,
    Erf,
    /// Exact GELU.
    Gelu,
    /// GELU, tanh approximation.
    GeluTanh,
    /// `max(x, 0)`, NaN kept.
    Relu,
    /// `min(max(x, lo), hi)`, NaN kept (relu6 and hardtanh).
    Clamp(f32, f32),
    /// `x * relu6(x + 3) / 6`.
    Hardswish,
    /// `relu6(x + 3) / 6`.
    Hardsigmoid,
    /// `x >= 0 ? x : slope * x`.
    LeakyRelu(f32),
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    Abs,
    Neg,
    /// `a * x + b`.
    Affine(f32, f32),
}

impl Unary {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, x: S::F) -> S::F {
        match self {
            Unary::Exp => math::exp(s, x),
            Unary::Log => math::log(s, x),
            Unary::Tanh => math::tanh(s, x),
            Unary::Sigmoid => math::sigmoid(s, x),
            Unary::Silu => math::silu(s, x),
            Unary::Erf => math::erf(s, x),
            Unary::Gelu => math::gelu(s, x),
            Unary::GeluTanh => math::gelu_tanh(s, x),
            Unary::Relu => s.max(s.zero(), x),
            Unary::Clamp(lo, hi) => clamp(s, x, lo, hi),
            Unary::Hardswish => {
                let r = s.min(s.max(s.add(x, s.splat(3.0)), s.zero()), s.splat(6.0));
                s.mul(x, s.mul(r, s.splat(1.0 / 6.0)))
            }
            Unary::Hardsigmoid => {
                let r = clamp(s, s.add(x, s.splat(3.0)), 0.0, 6.0);
                s.div(r, s.splat(6.0))
            }
            Unary::LeakyRelu(a) => {
                let neg = s.lt(x, s.zero());
                s.select(neg, s.mul(x, s.splat(a)), x)
            }
            Unary::Sqrt => s.sqrt(x),
            Unary::Rsqrt => s.div(s.splat(1.0), s.sqrt(x)),
            Unary::Abs => s.abs(x),
            Unary::Neg => s.neg(x),
            Unary::Affine(a, b) => s.mul_add(x, s.splat(a), s.splat(b)),
        }
    }
}

/// `min(max(x, lo), hi)` keeping NaN (the operand order makes a NaN `x` pass through).
#[inline(always)]
pub fn clamp<S: Simd>(s: S, x: S::F, lo: f32, hi: f32) -> S::F {
    let y = s.max(s.splat(lo), x);
    s.min(s.splat(hi), y)
}

struct UnaryOp<'a> {
    f: Unary,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl SimdOp for UnaryOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let n = self.x.len().min(self.y.len());
        let (x, y) = (&self.x[..n], &mut self.y[..n]);
        let mut xs = x.chunks_exact(S::LANES);
        let mut ys = y.chunks_exact_mut(S::LANES);
        for (xc, yc) in (&mut xs).zip(&mut ys) {
            s.store(yc, self.f.apply(s, s.load(xc)));
        }
        let (xr, yr) = (xs.remainder(), ys.into_remainder());
        if !xr.is_empty() {
            s.store_part(yr, self.f.apply(s, s.load_part(xr)));
        }
    }
}

/// `y[i] = f(x[i])` over the common length.
pub fn unary(f: Unary, x: &[f32], y: &mut [f32]) {
    dispatch(UnaryOp { f, x, y })
}

struct UnaryInPlace<'a> {
    f: Unary,
    y: &'a mut [f32],
}

impl SimdOp for UnaryInPlace<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let mut ys = self.y.chunks_exact_mut(S::LANES);
        for yc in &mut ys {
            let v = s.load(yc);
            s.store(yc, self.f.apply(s, v));
        }
        let yr = ys.into_remainder();
        if !yr.is_empty() {
            let v = s.load_part(yr);
            s.store_part(yr, self.f.apply(s, v));
        }
    }
}

/// `y[i] = f(y[i])`.
pub fn unary_inplace(f: Unary, y: &mut [f32]) {
    dispatch(UnaryInPlace { f, y })
}

/// Element-wise binary functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    /// `a > b ? a : b`, NaN propagating from either side (`torch.maximum`).
    Maximum,
    /// NaN propagating minimum (`torch.minimum`).
    Minimum,
}

impl Binary {
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, a: S::F, b: S::F) -> S::F {
        match self {
            Binary::Add => s.add(a, b),
            Binary::Sub => s.sub(a, b),
            Binary::Mul => s.mul(a, b),
            Binary::Div => s.div(a, b),
            Binary::Maximum => {
                let m = s.max(a, b);
                let nan = s.or_mask(s.is_nan(a), s.is_nan(b));
                s.select(nan, s.add(a, b), m)
            }
            Binary::Minimum => {
                let m = s.min(a, b);
                let nan = s.or_mask(s.is_nan(a), s.is_nan(b));
                s.select(nan, s.add(a, b), m)
            }
        }
    }
}

/// How the second operand of [`binary`] is read.
#[derive(Clone, Copy, Debug)]
pub enum Rhs<'a> {
    Slice(&'a [f32]),
    Scalar(f32),
}

/// How the first operand of [`binary`] is read.
#[derive(Clone, Copy, Debug)]
pub enum Lhs<'a> {
    Slice(&'a [f32]),
    Scalar(f32),
}

struct BinaryOp<'a> {
    f: Binary,
    a: Lhs<'a>,
    b: Rhs<'a>,
    alpha: f32,
    y: &'a mut [f32],
}

impl SimdOp for BinaryOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let n = self.y.len();
        let a = match self.a {
            Lhs::Slice(x) => Operand::Slice(x),
            Lhs::Scalar(v) => Operand::Splat(v),
        };
        let b = match self.b {
            Rhs::Slice(x) => Operand::Slice(x),
            Rhs::Scalar(v) => Operand::Splat(v * self.alpha),
        };
        let alpha = (self.alpha != 1.0 && matches!(b, Operand::Slice(_))).then_some(self.alpha);
        let mut i = 0;
        while i + S::LANES <= n {
            let v = binary_step(
                s,
                self.f,
                a.get(s, i, n, false),
                b.get(s, i, n, false),
                alpha,
            );
            s.store(&mut self.y[i..], v);
            i += S::LANES;
        }
        if i < n {
            let v = binary_step(s, self.f, a.get(s, i, n, true), b.get(s, i, n, true), alpha);
            s.store_part(&mut self.y[i..n], v);
        }
    }
}

/// One operand of an elementwise kernel: a slice read lane by lane, or a value splat.
#[derive(Clone, Copy)]
enum Operand<'a> {
    Slice(&'a [f32]),
    Splat(f32),
}

impl Operand<'_> {
    /// The vector at `i` (the tail up to `n` when `part`).
    #[inline(always)]
    fn get<S: Simd>(self, s: S, i: usize, n: usize, part: bool) -> S::F {
        match self {
            Operand::Slice(x) if part => s.load_part(&x[i..n]),
            Operand::Slice(x) => s.load(&x[i..]),
            Operand::Splat(v) => s.splat(v),
        }
    }
}

// Closures inside `eval` are compiled as separate functions without the caller's target
// features (their intrinsics then become calls): kernels use `#[inline(always)]` helpers.
#[inline(always)]
fn binary_step<S: Simd>(s: S, f: Binary, a: S::F, b: S::F, alpha: Option<f32>) -> S::F {
    let b = match alpha {
        Some(al) => s.mul(b, s.splat(al)),
        None => b,
    };
    f.apply(s, a, b)
}

/// `y = f(a, alpha * b)` over `y.len()` items.
///
/// # Panics
/// If a slice operand is shorter than `y`.
pub fn binary(f: Binary, a: Lhs<'_>, b: Rhs<'_>, alpha: f32, y: &mut [f32]) {
    for s in [
        match a {
            Lhs::Slice(x) => x.len(),
            Lhs::Scalar(_) => usize::MAX,
        },
        match b {
            Rhs::Slice(x) => x.len(),
            Rhs::Scalar(_) => usize::MAX,
        },
    ] {
        assert!(s >= y.len(), "binary: operand shorter than output");
    }
    dispatch(BinaryOp { f, a, b, alpha, y })
}

struct BinaryRows<'a> {
    f: Binary,
    x: &'a [f32],
    row: &'a [f32],
    row_left: bool,
    y: &'a mut [f32],
}

impl SimdOp for BinaryRows<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let c = self.row.len();
        for (xr, yr) in self.x.chunks_exact(c).zip(self.y.chunks_exact_mut(c)) {
            let mut i = 0;
            while i < c {
                let part = i + S::LANES > c;
                let (a, b) = (
                    Operand::Slice(xr).get(s, i, c, part),
                    Operand::Slice(self.row).get(s, i, c, part),
                );
                let v = if self.row_left {
                    self.f.apply(s, b, a)
                } else {
                    self.f.apply(s, a, b)
                };
                if part {
                    s.store_part(&mut yr[i..c], v);
                } else {
                    s.store(&mut yr[i..], v);
                }
                i += S::LANES;
            }
        }
    }
}

/// `y = f(x, row)` with `row` repeated along `x` (rows of `row.len()` items: a
/// channels-last image against one value per channel), or `f(row, x)` with `row_left`.
/// One dispatch for every row, where [`binary`] per row would cost a call each.
///
/// # Panics
/// If `row` is empty, `y` is not whole rows, or `x` is shorter than `y`.
pub fn binary_rows(f: Binary, x: &[f32], row: &[f32], row_left: bool, y: &mut [f32]) {
    assert!(
        !row.is_empty() && y.len().is_multiple_of(row.len()) && x.len() >= y.len(),
        "binary_rows: operands do not form whole rows"
    );
    dispatch(BinaryRows {
        f,
        x,
        row,
        row_left,
        y,
    })
}

/// Where one output of [`pool_windows`] reads: `rows × cols` taps of `c` values, tap
/// `(u, v)` at `base + u · steps.0 + v · steps.1` in the input.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub base: usize,
    pub rows: usize,
    pub cols: usize,
}

struct PoolWindows<'a> {
    max: bool,
    x: &'a [f32],
    c: usize,
    steps: (usize, usize),
    win: &'a (dyn Fn(usize) -> Window + Sync),
    y: &'a mut [f32],
}

impl SimdOp for PoolWindows<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let c = self.c;
        let (s0, s1) = self.steps;
        for (j, out) in self.y.chunks_exact_mut(c).enumerate() {
            let w = (self.win)(j);
            let taps = w.rows * w.cols;
            let inv = if taps == 0 { 0.0 } else { 1.0 / taps as f32 };
            let mut ch = 0;
            while ch < c {
                let n = (c - ch).min(S::LANES);
                let mut acc = if self.max {
                    s.splat(f32::NEG_INFINITY)
                } else {
                    s.zero()
                };
                // Max: NaN wins, as `Binary::Maximum` (torch.maximum) has it.
                let mut nan = s.is_nan(s.zero());
                for u in 0..w.rows {
                    for v in 0..w.cols {
                        let at = w.base + u * s0 + v * s1 + ch;
                        let t = if n == S::LANES {
                            s.load(&self.x[at..at + n])
                        } else {
                            s.load_part(&self.x[at..at + n])
                        };
                        if self.max {
                            nan = s.or_mask(nan, s.is_nan(t));
                            acc = s.max(t, acc);
                        } else {
                            acc = s.add(acc, t);
                        }
                    }
                }
                let r = if self.max {
                    s.select(nan, s.splat(f32::NAN), acc)
                } else {
                    s.mul(acc, s.splat(inv))
                };
                if n == S::LANES {
                    s.store(&mut out[ch..ch + n], r);
                } else {
                    s.store_part(&mut out[ch..ch + n], r);
                }
                ch += n;
            }
        }
    }
}

/// Max (`max`) or average pooling of channels-last pixels: output `j` (the `c` values
/// at `y[j · c..]`) is the maximum, or the mean, of the input taps `win(j)` names.
/// Averages divide by the taps in the window (padding is left out by the caller's
/// windows); an empty window gives 0 (average) or -inf (max). NaN propagates through
/// max as through [`Binary::Maximum`].
///
/// # Panics
/// When a window reaches past `x`.
pub fn pool_windows(
    max: bool,
    x: &[f32],
    c: usize,
    steps: (usize, usize),
    win: &(dyn Fn(usize) -> Window + Sync),
    y: &mut [f32],
) {
    if c == 0 {
        return;
    }
    dispatch(PoolWindows {
        max,
        x,
        c,
        steps,
        win,
        y,
    })
}

struct AddRows<'a> {
    x: &'a [f32],
    /// Distance between rows (at least `acc.len()`).
    stride: usize,
    acc: &'a mut [f32],
}

impl SimdOp for AddRows<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let (c, st) = (self.acc.len(), self.stride);
        let rows = if self.x.len() < c {
            0
        } else {
            (self.x.len() - c) / st + 1
        };
        let mut r = 0;
        while r < rows {
            // Eight rows per pass over the accumulators.
            let take = (rows - r).min(8);
            let mut j = 0;
            while j < c {
                let part = j + S::LANES > c;
                let mut v = Operand::Slice(self.acc).get(s, j, c, part);
                for k in r..r + take {
                    let row = &self.x[k * st..k * st + c];
                    v = s.add(v, Operand::Slice(row).get(s, j, c, part));
                }
                if part {
                    s.store_part(&mut self.acc[j..c], v);
                } else {
                    s.store(&mut self.acc[j..], v);
                }
                j += S::LANES;
            }
            r += take;
        }
    }
}

/// `acc[j] += x[r · stride + j]` over every row `r` whose `acc.len()` values lie inside
/// `x`: a channels-last image's pixels summed per channel, for a range of its channels.
///
/// # Panics
/// If `acc` is empty or `stride < acc.len()`.
pub fn add_rows_strided(x: &[f32], stride: usize, acc: &mut [f32]) {
    assert!(
        !acc.is_empty() && stride >= acc.len(),
        "add_rows_strided: empty rows or overlapping stride"
    );
    dispatch(AddRows { x, stride, acc })
}

/// `acc[j] += x[r · n + j]` over every whole row `r` of `x` (`n = acc.len()`): the sum
/// of a channels-last image's pixels, per channel.
///
/// # Panics
/// If `acc` is empty.
pub fn add_rows(x: &[f32], acc: &mut [f32]) {
    assert!(!acc.is_empty(), "add_rows: empty rows");
    let stride = acc.len();
    dispatch(AddRows { x, stride, acc })
}

struct BinaryInPlace<'a> {
    f: Binary,
    b: Rhs<'a>,
    y: &'a mut [f32],
}

impl SimdOp for BinaryInPlace<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let n = self.y.len();
        let mut i = 0;
        while i + S::LANES <= n {
            let b = match self.b {
                Rhs::Slice(x) => s.load(&x[i..]),
                Rhs::Scalar(v) => s.splat(v),
            };
            let a = s.load(&self.y[i..]);
            s.store(&mut self.y[i..], self.f.apply(s, a, b));
            i += S::LANES;
        }
        if i < n {
            let b = match self.b {
                Rhs::Slice(x) => s.load_part(&x[i..n]),
                Rhs::Scalar(v) => s.splat(v),
            };
            let a = s.load_part(&self.y[i..n]);
            s.store_part(&mut self.y[i..n], self.f.apply(s, a, b));
        }
    }
}

/// `y = f(y, b)`.
///
/// # Panics
/// If `b` is a slice shorter than `y`.
pub fn binary_inplace(f: Binary, y: &mut [f32], b: Rhs<'_>) {
    if let Rhs::Slice(x) = b {
        assert!(
            x.len() >= y.len(),
            "binary_inplace: operand shorter than output"
        );
    }
    dispatch(BinaryInPlace { f, b, y })
}

/// Sums with several vector accumulators (a little more accurate than one, and faster).
struct SumOp<'a>(&'a [f32]);

impl SimdOp for SumOp<'_> {
    type Output = f32;
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) -> f32 {
        let x = self.0;
        let mut acc = [s.zero(); 4];
        let mut blocks = x.chunks_exact(4 * S::LANES);
        for b in &mut blocks {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = s.add(*a, s.load(&b[k * S::LANES..]));
            }
        }
        let mut rest = blocks.remainder().chunks_exact(S::LANES);
        for c in &mut rest {
            acc[0] = s.add(acc[0], s.load(c));
        }
        acc[1] = s.add(acc[1], s.load_part(rest.remainder()));
        let t = s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]));
        s.reduce_add(t)
    }
}

/// Sum of `x`.
pub fn sum(x: &[f32]) -> f32 {
    dispatch(SumOp(x))
}

struct MaxOp<'a>(&'a [f32]);

impl SimdOp for MaxOp<'_> {
    type Output = f32;
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) -> f32 {
        let x = self.0;
        let mut acc = s.splat(f32::NEG_INFINITY);
        let mut nan = s.lt(acc, acc);
        let mut cs = x.chunks_exact(S::LANES);
        for c in &mut cs {
            let v = s.load(c);
            nan = s.or_mask(nan, s.is_nan(v));
            acc = s.max(acc, v);
        }
        let r = cs.remainder();
        let mut m = s.reduce_max(acc);
        let mut any_nan = s.reduce_max(s.select(nan, s.splat(1.0), s.zero())) > 0.0;
        for &v in r {
            any_nan |= v.is_nan();
            if v > m {
                m = v;
            }
        }
        if any_nan {
            f32::NAN
        } else {
            m
        }
    }
}

/// Maximum of `x`, NaN if any item is NaN, -inf when empty.
pub fn max(x: &[f32]) -> f32 {
    dispatch(MaxOp(x))
}

struct DotOp<'a>(&'a [f32], &'a [f32]);

impl SimdOp for DotOp<'_> {
    type Output = f32;
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) -> f32 {
        let n = self.0.len().min(self.1.len());
        let (a, b) = (&self.0[..n], &self.1[..n]);
        let mut acc = [s.zero(); 4];
        let mut i = 0;
        while i + 4 * S::LANES <= n {
            for (k, c) in acc.iter_mut().enumerate() {
                let o = i + k * S::LANES;
                *c = s.mul_add(s.load(&a[o..]), s.load(&b[o..]), *c);
            }
            i += 4 * S::LANES;
        }
        while i + S::LANES <= n {
            acc[0] = s.mul_add(s.load(&a[i..]), s.load(&b[i..]), acc[0]);
            i += S::LANES;
        }
        acc[1] = s.mul_add(s.load_part(&a[i..]), s.load_part(&b[i..]), acc[1]);
        let t = s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]));
        s.reduce_add(t)
    }
}

/// Dot product over the common length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch(DotOp(a, b))
}

struct DotRows<'a> {
    x: &'a [f32],
    m: &'a [f32],
    stride: usize,
    scale: f32,
    y: &'a mut [f32],
}

impl SimdOp for DotRows<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let d = self.x.len();
        for (i, y) in self.y.iter_mut().enumerate() {
            *y = DotOp(self.x, &self.m[i * self.stride..][..d]).eval(s) * self.scale;
        }
    }
}

/// `y[i] = scale · (x · m[i·stride .. i·stride + x.len()])`: a vector against rows of a
/// strided matrix (attention scores against a key cache), in one dispatch.
///
/// # Panics
/// If a row runs past `m`.
pub fn dot_rows(x: &[f32], m: &[f32], stride: usize, scale: f32, y: &mut [f32]) {
    if let Some(last) = y.len().checked_sub(1) {
        assert!(
            last * stride + x.len() <= m.len(),
            "dot_rows: rows past the matrix"
        );
    }
    dispatch(DotRows {
        x,
        m,
        stride,
        scale,
        y,
    })
}

struct AxpyRows<'a> {
    p: &'a [f32],
    m: &'a [f32],
    stride: usize,
    y: &'a mut [f32],
}

impl SimdOp for AxpyRows<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let d = self.y.len();
        for (i, &p) in self.p.iter().enumerate() {
            if p != 0.0 {
                AxpyOp {
                    a: p,
                    x: &self.m[i * self.stride..][..d],
                    y: &mut *self.y,
                }
                .eval(s);
            }
        }
    }
}

/// `y += Σ p[i] · m[i·stride .. i·stride + y.len()]`: weighted rows of a strided matrix
/// (attention weights against a value cache), in one dispatch. Rows with weight 0 are
/// skipped.
///
/// # Panics
/// If a row runs past `m`.
pub fn axpy_rows(p: &[f32], m: &[f32], stride: usize, y: &mut [f32]) {
    if let Some(last) = p.len().checked_sub(1) {
        assert!(
            last * stride + y.len() <= m.len(),
            "axpy_rows: rows past the matrix"
        );
    }
    dispatch(AxpyRows { p, m, stride, y })
}

struct AxpyOp<'a> {
    a: f32,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl SimdOp for AxpyOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let n = self.x.len().min(self.y.len());
        let av = s.splat(self.a);
        let mut i = 0;
        while i + S::LANES <= n {
            let v = s.mul_add(s.load(&self.x[i..]), av, s.load(&self.y[i..]));
            s.store(&mut self.y[i..], v);
            i += S::LANES;
        }
        if i < n {
            let v = s.mul_add(s.load_part(&self.x[i..n]), av, s.load_part(&self.y[i..n]));
            s.store_part(&mut self.y[i..n], v);
        }
    }
}

/// `y += a * x` over the common length.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    dispatch(AxpyOp { a, x, y })
}

struct SoftmaxOp<'a> {
    /// `None`: in place, from `y` (every value is read before it is written).
    x: Option<&'a [f32]>,
    y: &'a mut [f32],
    log: bool,
}

impl SimdOp for SoftmaxOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let n = self.x.map_or(self.y.len(), |x| x.len().min(self.y.len()));
        let (x, y) = (self.x.map(|x| &x[..n]), &mut self.y[..n]);
        let m = match x {
            Some(x) => MaxOp(x).eval(s),
            None => MaxOp(y).eval(s),
        };
        if m.is_nan() {
            y.fill(f32::NAN);
            return;
        }
        // All -inf: PyTorch gives NaN (0/0) for softmax and log_softmax alike.
        let shift = if m == f32::NEG_INFINITY { 0.0 } else { m };
        let mv = s.splat(shift);
        let mut acc = s.zero();
        let mut i = 0;
        while i + S::LANES <= n {
            let v = s.load(&x.unwrap_or(y)[i..]);
            let e = math::exp(s, s.sub(v, mv));
            acc = s.add(acc, e);
            if !self.log {
                s.store(&mut y[i..], e);
            }
            i += S::LANES;
        }
        if i < n {
            let v = s.load_part(&x.unwrap_or(y)[i..n]);
            let e = math::exp(s, s.sub(v, mv));
            // Lanes past `n` loaded 0; exclude them from the sum.
            let mut part = [0.0f32; 16];
            s.store_part(&mut part[..n - i], e);
            acc = s.add(acc, s.load_part(&part[..n - i]));
            if !self.log {
                s.store_part(&mut y[i..n], e);
            }
        }
        let total = s.reduce_add(acc);
        // log: y = x - lse (x is still intact in place: the loop above did not store);
        // else y = e / total.
        let (k, b) = if self.log {
            (1.0, -(shift + libm_log(total)))
        } else {
            (1.0 / total, 0.0)
        };
        let (kv, bv) = (s.splat(k), s.splat(b));
        let mut i = 0;
        while i + S::LANES <= n {
            let v = s.mul_add(s.load(&x.filter(|_| self.log).unwrap_or(y)[i..]), kv, bv);
            s.store(&mut y[i..], v);
            i += S::LANES;
        }
        if i < n {
            let v = s.mul_add(
                s.load_part(&x.filter(|_| self.log).unwrap_or(y)[i..n]),
                kv,
                bv,
            );
            s.store_part(&mut y[i..n], v);
        }
    }
}

fn libm_log(x: f32) -> f32 {
    // One scalar log per row: reuse the vector routine at the portable level.
    let v = math::log(crate::Scalar, [x; 4]);
    v[0]
}

/// Softmax of `x` into `y` (max-shifted, so large inputs do not overflow).
pub fn softmax(x: &[f32], y: &mut [f32]) {
    dispatch(SoftmaxOp {
        x: Some(x),
        y,
        log: false,
    })
}

/// Log-softmax of `x` into `y`.
pub fn log_softmax(x: &[f32], y: &mut [f32]) {
    dispatch(SoftmaxOp {
        x: Some(x),
        y,
        log: true,
    })
}

/// [`softmax`] in place.
pub fn softmax_inplace(y: &mut [f32]) {
    dispatch(SoftmaxOp {
        x: None,
        y,
        log: false,
    })
}

struct MeanVarOp<'a>(&'a [f32]);

impl SimdOp for MeanVarOp<'_> {
    type Output = (f32, f32);
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) -> (f32, f32) {
        let x = self.0;
        if x.is_empty() {
            return (f32::NAN, f32::NAN);
        }
        let mean = SumOp(x).eval(s) / x.len() as f32;
        // Two passes: the variance of values far from 0 stays accurate.
        let mv = s.splat(mean);
        let mut acc = [s.zero(); 2];
        let mut cs = x.chunks_exact(S::LANES);
        for (k, c) in (&mut cs).enumerate() {
            let d = s.sub(s.load(c), mv);
            acc[k & 1] = s.mul_add(d, d, acc[k & 1]);
        }
        let mut var = s.reduce_add(s.add(acc[0], acc[1]));
        for &v in cs.remainder() {
            let d = v - mean;
            var += d * d;
        }
        (mean, var / x.len() as f32)
    }
}

/// Mean and biased variance of `x`.
pub fn mean_var(x: &[f32]) -> (f32, f32) {
    dispatch(MeanVarOp(x))
}

struct NormOp<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    scale: f32,
    shift: f32,
    gamma: Option<&'a [f32]>,
    beta: Option<&'a [f32]>,
}

impl SimdOp for NormOp<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let n = self.x.len().min(self.y.len());
        let (sc, sh) = (s.splat(self.scale), s.splat(self.shift));
        let x = Operand::Slice(self.x);
        let mut i = 0;
        while i + S::LANES <= n {
            let v = self.step(s, x.get(s, i, n, false), i, n, false, sc, sh);
            s.store(&mut self.y[i..], v);
            i += S::LANES;
        }
        if i < n {
            let v = self.step(s, x.get(s, i, n, true), i, n, true, sc, sh);
            s.store_part(&mut self.y[i..n], v);
        }
    }
}

impl NormOp<'_> {
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn step<S: Simd>(
        &self,
        s: S,
        x: S::F,
        i: usize,
        n: usize,
        part: bool,
        sc: S::F,
        sh: S::F,
    ) -> S::F {
        let mut v = s.mul_add(x, sc, sh);
        if let Some(g) = self.gamma {
            v = s.mul(v, Operand::Slice(g).get(s, i, n, part));
        }
        if let Some(b) = self.beta {
            v = s.add(v, Operand::Slice(b).get(s, i, n, part));
        }
        v
    }
}

/// `y = (x * scale + shift) * gamma + beta`, the last step of layer, RMS and group norm.
///
/// # Panics
/// If `gamma` or `beta` is shorter than `x`.
pub fn normalize(
    x: &[f32],
    y: &mut [f32],
    scale: f32,
    shift: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) {
    let n = x.len().min(y.len());
    assert!(gamma.is_none_or(|g| g.len() >= n) && beta.is_none_or(|b| b.len() >= n));
    dispatch(NormOp {
        x,
        y,
        scale,
        shift,
        gamma,
        beta,
    })
}
