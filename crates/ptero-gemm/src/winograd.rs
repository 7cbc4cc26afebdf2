//! 3×3 convolutions of stride 1 by Winograd's F(2×2, 3×3) (Lavin & Gray, 2015).
//!
//! Each 2×2 block of output pixels (a tile) comes from a 4×4 patch of input: with
//! `U = G g Gᵀ` per filter, `V = Bᵀ d B` per patch and `Y = Aᵀ (U ⊙ V) A`, a tile costs
//! 16 multiplications per input and output channel instead of 36. Grouped by the 16
//! points of the transform, the products are 16 GEMMs of `U` (`cout × cin`, packed once
//! at load) by `V` (`cin × tiles`, built per block of tiles straight into the GEMM's
//! packed layout); their results are transformed back to pixels with the bias and
//! activation.
//!
//! The transforms' entries are 0, ±1 and ±½, so they round little: outputs differ from a
//! direct convolution's by a few units in the last place of the terms summed.

use alloc::vec::Vec;

use ptero_simd::phase::Phases;
use ptero_simd::{dispatch_at, Level, Parallel, Simd, SimdOp, SlotArena};

use crate::conv::{fill_phases, Conv2d, Image};
use crate::driver::{gemm_packed_rows, with_scratch, COut, SyncPtr};
use crate::kernel::{geometry, Epi};
use crate::{Activation, Bias, Epilogue, GemmError, MatRef, PackedA, PackedBRef};

/// Points of the transform (4 × 4).
pub(crate) const POINTS: usize = 16;
/// f32 of `V` and `M` one task keeps (1 MiB, so both stay in L2).
const TASK_FLOATS: usize = 1 << 18;
/// Strips of output channels per task at most.
const MAX_STRIPS: usize = 8;

/// Input channels at most: a task's panel of tiles for every channel (`16 · 32 · (cin +
/// 12)` f32) must fit a slot of [`crate::conv_scratch_floats`].
const MAX_CIN: usize = 1024;
/// Fewest channels, in and out, and output tiles (2×2 pixels) for which Winograd pays
/// ([`crate::PackedConv::winograd_pays`]; measured on ResNet-18 with `conv_bench`: 49
/// tiles gain a third with tiles as rows, 16 lose as much).
pub(crate) const MIN_CHANNELS: usize = 16;
pub(crate) const MIN_TILES: usize = 36;
/// Most f32 of input transforms (16 · cin · tiles) for which the GEMMs take tiles as
/// rows ([`crate::winograd_rows`]): each task then reads every weight, so the tasks must
/// be few. ResNet-18's 56², 28² and 14² layers (0.8 M, 0.4 M, 0.2 M) run a fifth to a
/// third faster so than with tiles as columns.
pub(crate) const ROWS_MAX_FLOATS: usize = 1 << 20;

/// True when `g` can be computed by [`conv`]: a 3×3 filter, stride and dilation 1, one
/// group, and few enough channels for a task's scratch.
pub(crate) fn applies(g: &Conv2d) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && g.cin <= MAX_CIN
}

/// Tiles and stride-2 phase planes of a Winograd convolution's image.
pub(crate) struct TileGeo {
    pub ph: Phases,
    /// Tile columns, and tiles in all.
    pub tw: usize,
    pub tiles: usize,
    /// Rows and columns of one phase plane.
    pub hq: usize,
    pub wq: usize,
    /// Floats of one channel's four phases.
    pub ch: usize,
}

impl TileGeo {
    /// `g`'s tiles and phases; an error when the padded input is too small for them or
    /// the sizes overflow.
    pub(crate) fn of(g: &Conv2d) -> Result<TileGeo, GemmError> {
        let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
        let tiles = th.checked_mul(tw).ok_or(GemmError::Overflow)?;
        let ph = Phases {
            ih: g.ih,
            iw: g.iw,
            pad: g.pad,
            stride: [2, 2],
        };
        // Tile (ty, tx) reads rows and columns of phase planes up to ty + 1 and tx + 1.
        let (hq, wq) = ph.dims();
        if hq <= th || wq <= tw {
            return Err(GemmError::Shape {
                what: "Winograd input height (padded)",
                expected: th.saturating_mul(2).saturating_add(2),
                found: g.ih.saturating_add(g.pad[0].saturating_mul(2)),
            });
        }
        let ch = ph.floats().ok_or(GemmError::Overflow)?;
        Ok(TileGeo {
            ph,
            tw,
            tiles,
            hq,
            wq,
            ch,
        })
    }
}

/// `U = G g Gᵀ` of every filter of `w` (`[cout, cin, 3, 3]`, extent checked by the
/// caller), packed for `level` as 16 left operands (`cout × cin`), one per point.
pub(crate) fn pack(level: Level, g: &Conv2d, w: Image<'_>) -> Result<Vec<PackedA>, GemmError> {
    let n = g.cout * g.cin;
    let u = filter_transforms(g, w)?;
    u.chunks_exact(n.max(1))
        .take(POINTS)
        .map(|p| PackedA::new_at(level, MatRef::row_major(&p[..n], g.cout, g.cin)?))
        .collect()
}

/// `U = G g Gᵀ` of every filter of `w` (`[cout, cin, 3, 3]`, extent checked by the
/// caller): per point, a row-major `cout × cin` matrix.
pub(crate) fn filter_transforms(g: &Conv2d, w: Image<'_>) -> Result<Vec<f32>, GemmError> {
    let (cout, cin) = (g.cout, g.cin);
    let n = cout.checked_mul(cin).ok_or(GemmError::Overflow)?;
    let len = n.checked_mul(POINTS).ok_or(GemmError::Overflow)?;
    let mut u = Vec::new();
    u.try_reserve_exact(len)
        .map_err(|_| GemmError::OutOfMemory {
            bytes: len.saturating_mul(4),
        })?;
    u.resize(len, 0.0f32);
    let [s0, s1, s2, s3] = w.strides;
    // G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1], applied to the rows then the columns, in f64.
    let g3 = |a: f64, b: f64, c: f64| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    for oc in 0..cout {
        for ic in 0..cin {
            let at = |y: usize, x: usize| w.data[oc * s0 + ic * s1 + y * s2 + x * s3] as f64;
            let cols: [[f64; 4]; 3] = core::array::from_fn(|x| g3(at(0, x), at(1, x), at(2, x)));
            for i in 0..4 {
                let row = g3(cols[0][i], cols[1][i], cols[2][i]);
                for (j, &v) in row.iter().enumerate() {
                    u[(i * 4 + j) * n + oc * cin + ic] = v as f32;
                }
            }
        }
    }
    Ok(u)
}

/// `out = act(conv(x, w) + bias)` with `u` from [`pack`].
///
/// # Safety
/// As [`crate::conv2d`]'s output: every pixel of `g`'s output at strides `os` from `out`
/// valid for writes, distinct, and not accessed by anyone else during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    u: &[PackedA],
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Result<(), GemmError> {
    if u.len() != POINTS || !applies(g) || u[0].m != g.cout || u[0].k != g.cin {
        return Err(GemmError::Shape {
            what: "Winograd weights (output channels)",
            expected: g.cout,
            found: u.first().map_or(0, |p| p.m),
        });
    }
    let level = u[0].level;
    let (mr, nr) = geometry(level);
    let (cin, cout) = (g.cin, g.cout);
    let TileGeo {
        ph,
        tw,
        tiles,
        hq,
        wq,
        ch,
        ..
    } = TileGeo::of(g)?;
    let total = cin.checked_mul(ch).ok_or(GemmError::Overflow)?;
    if tiles == 0 || cout == 0 {
        return Ok(());
    }

    // Tasks: blocks of whole panels of tiles × blocks of whole strips of output channels,
    // as large as a task's scratch allows, then split until every thread has four.
    let strips = cout.div_ceil(mr);
    let panels = tiles.div_ceil(nr);
    let mut cs = strips.min(MAX_STRIPS);
    let per_panel = |cs: usize| POINTS * nr * (cin + cs * mr);
    while cs > 1 && per_panel(cs) > TASK_FLOATS {
        cs = cs.div_ceil(2);
    }
    let mut bp = (TASK_FLOATS / per_panel(cs)).clamp(1, panels);
    let want = 4 * par.threads().max(1);
    loop {
        let tasks = g.n * panels.div_ceil(bp) * strips.div_ceil(cs);
        if tasks >= want || (bp == 1 && cs == 1) {
            break;
        }
        if bp > 1 {
            bp = bp.div_ceil(2);
        } else {
            cs = cs.div_ceil(2);
        }
    }
    // Equal blocks, so that threads finish together.
    let bp = panels.div_ceil(panels.div_ceil(bp));
    let cs = strips.div_ceil(strips.div_ceil(cs));
    let (nbt, nbc) = (panels.div_ceil(bp), strips.div_ceil(cs));
    let (bt, cb) = (bp * nr, cs * mr);

    let err = crate::batch::FirstError::new();
    let epi = Epi {
        alpha: 1.0,
        beta: if bias.is_some() { 1.0 } else { 0.0 },
        bias: bias.map_or(Bias::None, Bias::PerRow),
        act,
    };
    let planes_of = |buf: &mut [f32]| {
        let buf = &mut buf[..total];
        for n in 0..g.n {
            fill_phases(par, x, n, &ph, &|_, _| true, buf, ch);
            let planes: &[f32] = buf;
            let task = |t: usize| {
                let (bi, ci) = (t / nbc, t % nbc);
                let t0 = bi * bt;
                let t1 = (t0 + bt).min(tiles);
                let c0 = ci * cb;
                let mc = cb.min(cout - c0);
                let ntp = (t1 - t0).div_ceil(nr) * nr;
                let run = |s: &mut [f32]| {
                    let (v, m) = s.split_at_mut(POINTS * cin * ntp);
                    let blk = Block {
                        t0,
                        t1,
                        tw,
                        ntp,
                        nr,
                    };
                    dispatch_at(
                        level,
                        Forward {
                            planes,
                            ch,
                            wq,
                            plane: hq * wq,
                            cin,
                            blk,
                            v: &mut v[..],
                        },
                    );
                    for p in 0..POINTS {
                        let r =
                            PackedBRef::new(level, &v[p * cin * ntp..][..cin * ntp], cin, t1 - t0)
                                .and_then(|b| {
                                    // Rows of one output channel, every point, side by side:
                                    // the back transform reads them together.
                                    let c = COut {
                                        ptr: SyncPtr(
                                            m[p * ntp..][..(mc - 1) * POINTS * ntp + ntp]
                                                .as_mut_ptr(),
                                        ),
                                        rows: mc,
                                        cols: t1 - t0,
                                        rs: POINTS * ntp,
                                        cs: 1,
                                    };
                                    // SAFETY: `c` lies in this task's own scratch
                                    // (`mc × POINTS × ntp`).
                                    unsafe { gemm_packed_rows(&u[p], c0, b, c, &PLAIN) }
                                });
                        if let Err(e) = r {
                            err.set(e);
                            return;
                        }
                    }
                    dispatch_at(
                        level,
                        Backward {
                            m: &m[..POINTS * mc * ntp],
                            mc,
                            c0,
                            blk,
                            g,
                            n,
                            epi: &epi,
                            out,
                            os,
                        },
                    );
                };
                if let Err(e) = with_scratch(arena, POINTS * ntp * (cin + mc), &run) {
                    err.set(e);
                }
            };
            par.run(nbt * nbc, &task);
        }
    };
    with_scratch(arena, total, &planes_of)?;
    match err.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

const PLAIN: Epilogue<'static> = Epilogue {
    alpha: 1.0,
    beta: 0.0,
    bias: Bias::None,
    act: Activation::None,
};

/// Tiles `t0..t1` (row-major over the `tw`-wide grid of tiles), as `ntp` columns (whole
/// panels of `nr`).
#[derive(Clone, Copy)]
struct Block {
    t0: usize,
    t1: usize,
    tw: usize,
    ntp: usize,
    nr: usize,
}

impl Block {
    /// The rows of tiles in the block (an iterator, not a closure: SIMD code called
    /// through a closure may lose the caller's target features).
    #[inline(always)]
    fn rows(&self) -> Rows {
        Rows {
            blk: *self,
            t: self.t0,
        }
    }
}

/// `(ty, tx0, tx1, col)`: tiles `tx0..tx1` of row `ty`, the first being column `col` of
/// the block.
struct Rows {
    blk: Block,
    t: usize,
}

impl Iterator for Rows {
    type Item = (usize, usize, usize, usize);
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        let b = &self.blk;
        if self.t >= b.t1 {
            return None;
        }
        let (ty, tx0) = (self.t / b.tw, self.t % b.tw);
        let tx1 = b.tw.min(tx0 + (b.t1 - self.t));
        let col = self.t - b.t0;
        self.t += tx1 - tx0;
        Some((ty, tx0, tx1, col))
    }
}

/// `len` values of `p` from `at` (a whole vector when `len` is `LANES`).
#[inline(always)]
pub(crate) fn load_n<S: Simd>(s: S, p: &[f32], at: usize, len: usize) -> S::F {
    if len == S::LANES {
        s.load(&p[at..])
    } else {
        s.load_part(&p[at..at + len])
    }
}

/// `V = Bᵀ d B` of the patches of `len` tiles of row `ty` from column `tx` (one per lane),
/// read from one channel's stride-2 phase planes `pl` (four of `plane` floats, rows `wq`
/// wide): point `(i, j)` at `i · 4 + j`.
#[inline(always)]
pub(crate) fn patch_transform<S: Simd>(
    s: S,
    pl: &[f32],
    plane: usize,
    wq: usize,
    ty: usize,
    tx: usize,
    len: usize,
) -> [S::F; POINTS] {
    let (r0, r1) = (ty * wq + tx, (ty + 1) * wq + tx);
    // Patch row r, column k: phase (r % 2, k % 2) at (ty + r / 2, tx + k / 2).
    let mut d = [[s.zero(); 4]; 4];
    for (r, dr) in d.iter_mut().enumerate() {
        let (pe, po) = if r % 2 == 0 {
            (&pl[..plane], &pl[plane..2 * plane])
        } else {
            (&pl[2 * plane..3 * plane], &pl[3 * plane..4 * plane])
        };
        let at = if r < 2 { r0 } else { r1 };
        dr[0] = load_n(s, pe, at, len);
        dr[1] = load_n(s, po, at, len);
        dr[2] = load_n(s, pe, at + 1, len);
        dr[3] = load_n(s, po, at + 1, len);
    }
    // Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] over the rows, then over the columns.
    let mut t = [[s.zero(); 4]; 4];
    for k in 0..4 {
        t[0][k] = s.sub(d[0][k], d[2][k]);
        t[1][k] = s.add(d[1][k], d[2][k]);
        t[2][k] = s.sub(d[2][k], d[1][k]);
        t[3][k] = s.sub(d[1][k], d[3][k]);
    }
    let mut v = [s.zero(); POINTS];
    for (i, r) in t.iter().enumerate() {
        v[i * 4] = s.sub(r[0], r[2]);
        v[i * 4 + 1] = s.add(r[1], r[2]);
        v[i * 4 + 2] = s.sub(r[2], r[1]);
        v[i * 4 + 3] = s.sub(r[1], r[3]);
    }
    v
}

/// `Y = Aᵀ m A` of a tile's 16 points: its 2 × 2 outputs, `[row][column]`.
#[inline(always)]
pub(crate) fn tile_transform<S: Simd>(s: S, mv: &[S::F; POINTS]) -> [[S::F; 2]; 2] {
    // Aᵀ = [1 1 1 0; 0 1 -1 -1] over the rows, then over the columns.
    let (mut r0, mut r1) = ([s.zero(); 4], [s.zero(); 4]);
    for j in 0..4 {
        r0[j] = s.add(s.add(mv[j], mv[4 + j]), mv[8 + j]);
        r1[j] = s.sub(s.sub(mv[4 + j], mv[8 + j]), mv[12 + j]);
    }
    // Explicit, not `map`: a closure would lose the caller's target features.
    [
        [
            s.add(s.add(r0[0], r0[1]), r0[2]),
            s.sub(s.sub(r0[1], r0[2]), r0[3]),
        ],
        [
            s.add(s.add(r1[0], r1[1]), r1[2]),
            s.sub(s.sub(r1[1], r1[2]), r1[3]),
        ],
    ]
}

/// The patches' transforms of a block of tiles, into `v`: per point, `cin` rows of the
/// block's columns in the GEMM's packed layout (panels of `nr` columns, each `cin` rows).
struct Forward<'a> {
    /// Per input channel, `ch` floats: its four stride-2 phases of `plane` floats, rows
    /// `wq` wide.
    planes: &'a [f32],
    ch: usize,
    wq: usize,
    plane: usize,
    cin: usize,
    blk: Block,
    v: &'a mut [f32],
}

impl SimdOp for Forward<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let Forward {
            planes,
            ch,
            wq,
            plane,
            cin,
            blk,
            v,
        } = self;
        let (nr, ntp) = (blk.nr, blk.ntp);
        let per_point = cin * ntp;
        let nt = blk.t1 - blk.t0;
        // The last panel's columns past the block must be zero (they are multiplied).
        let (q, used) = (nt / nr, nt % nr);
        for c in 0..cin {
            if used > 0 {
                for p in 0..POINTS {
                    v[p * per_point + q * cin * nr + c * nr..][used..nr].fill(0.0);
                }
            }
            let pl = &planes[c * ch..][..4 * plane];
            for (ty, tx0, tx1, col) in blk.rows() {
                let mut tx = tx0;
                while tx < tx1 {
                    let len = S::LANES.min(tx1 - tx);
                    let vt = patch_transform(s, pl, plane, wq, ty, tx, len);
                    let pos = place(cin, nr, c, col + tx - tx0, len);
                    for (p, &x) in vt.iter().enumerate() {
                        put(s, &mut v[p * per_point..][..per_point], pos, len, x);
                    }
                    tx += len;
                }
            }
        }
    }
}

/// Where `len` values of row `c`, columns `col..col + len`, of a packed operand (`k`
/// rows, panels of `nr` columns) go: `(at, first, next)`, the first `first` values at
/// `at`, the rest (if any) at `next`, in the next panel (`next >= nr > first`).
#[inline(always)]
fn place(k: usize, nr: usize, c: usize, col: usize, len: usize) -> (usize, usize, usize) {
    let (q, lane) = (col / nr, col % nr);
    let at = q * k * nr + c * nr + lane;
    (at, len.min(nr - lane), (q + 1) * k * nr + c * nr)
}

/// Writes the first `len` lanes of `x` at `dst[..]` per [`place`].
#[inline(always)]
fn put<S: Simd>(
    s: S,
    dst: &mut [f32],
    (at, first, next): (usize, usize, usize),
    len: usize,
    x: S::F,
) {
    if first == S::LANES {
        s.store(&mut dst[at..], x);
        return;
    }
    s.store_part(&mut dst[at..at + first], x);
    if first < len {
        // The rest starts the next panel: the vector stored `first` values before it,
        // its lanes below `first` masked off.
        s.store_from(&mut dst[next - first..next - first + len], first, x);
    }
}

/// The products `m` (per output channel, per point, the block's columns: rows `ntp`
/// apart) back to
/// pixels of output channels `c0..c0 + mc` of image `n`, with the epilogue.
struct Backward<'a> {
    m: &'a [f32],
    mc: usize,
    c0: usize,
    blk: Block,
    g: &'a Conv2d,
    n: usize,
    epi: &'a Epi<'a>,
    out: SyncPtr,
    os: [usize; 4],
}

impl SimdOp for Backward<'_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let Backward {
            m,
            mc,
            c0,
            blk,
            g,
            n,
            epi,
            out,
            os,
        } = self;
        let ntp = blk.ntp;
        for o in 0..mc {
            let oc = c0 + o;
            for (ty, tx0, tx1, col) in blk.rows() {
                let mut tx = tx0;
                while tx < tx1 {
                    let len = S::LANES.min(tx1 - tx);
                    let at = o * POINTS * ntp + col + tx - tx0;
                    let mut mv = [s.zero(); POINTS];
                    for (p, v) in mv.iter_mut().enumerate() {
                        *v = load_n(s, m, at + p * ntp, len);
                    }
                    let y = tile_transform(s, &mv);
                    let (x0, cols) = (2 * tx, (2 * len).min(g.ow - 2 * tx));
                    for (dy, &[a, b]) in y.iter().enumerate() {
                        let oy = 2 * ty + dy;
                        if oy >= g.oh {
                            break;
                        }
                        let (a, b) = (epi.apply(s, a, oc, 0, len), epi.apply(s, b, oc, 0, len));
                        let (lo, hi) = s.interleave(a, b);
                        // SAFETY: pixels (oy, x0..x0 + cols) of channel oc of image n are
                        // inside the output (the caller's contract) and belong to this
                        // task's tiles and channels only.
                        unsafe {
                            let p = out
                                .get()
                                .add(n * os[0] + oc * os[1] + oy * os[2] + x0 * os[3]);
                            store_row(s, p, os[3], cols, lo, hi);
                        }
                    }
                    tx += len;
                }
            }
        }
    }
}

/// Stores the first `cols` of the `2 * LANES` values `lo ++ hi` at `p`, `step` apart.
///
/// # Safety
/// `p + i * step` must be valid for writes for `i < cols`, and not otherwise accessed.
#[inline(always)]
unsafe fn store_row<S: Simd>(s: S, p: *mut f32, step: usize, cols: usize, lo: S::F, hi: S::F) {
    let l = S::LANES;
    if step == 1 {
        // SAFETY: the caller's contract, for `cols` contiguous values.
        let row = unsafe { core::slice::from_raw_parts_mut(p, cols) };
        if cols <= l {
            s.store_part(row, lo);
        } else {
            s.store(row, lo);
            s.store_part(&mut row[l..], hi);
        }
        return;
    }
    let mut tmp = [0.0f32; 32];
    s.store(&mut tmp[..l], lo);
    s.store(&mut tmp[l..2 * l], hi);
    for (i, &v) in tmp[..cols].iter().enumerate() {
        // SAFETY: the caller's contract.
        unsafe { *p.add(i * step) = v };
    }
}
