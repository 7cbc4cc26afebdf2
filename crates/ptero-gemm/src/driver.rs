//! Blocking, packing and the split over threads.

use ptero_simd::{dispatch_at, Parallel, Serial, Simd, SimdOp, SlotArena};

use crate::kernel::{
    geometry, micro, micro_row, micro_rows, micro_rows_half, micro_shifted, store_tile,
    store_wrapped, Epi, TileOut,
};
use crate::pack::{pack_a_strip, pack_b_panel};
use crate::{gemv, Bias, Epilogue, GemmError, Lhs, MatMut, Rhs};

/// Depth of a K block: a `KC × NR` panel of B (24 KiB) and a strip of A stay in L1 (192
/// measured best on AVX-512: 256 fills L1 and drops to 55% of peak at 1024³).
const KC: usize = 192;
/// Strips of A per row block (`MC = MC_STRIPS × MR`): the `MC × KC` block stays in L2.
const MC_STRIPS: usize = 12;
/// Widest column block of B packed at once (`KC × NC_MAX` f32 = 1 MiB).
const NC_MAX: usize = 1024;
const MR_MAX: usize = 12;
/// Below this many multiply-adds a product runs on the calling thread: waking workers
/// costs more than it saves.
pub(crate) const PAR_MIN_MACS: usize = 1 << 18;

/// f32 of packing space one task needs: what each slot of the arena handed to [`gemm`]
/// should hold.
pub fn scratch_floats() -> usize {
    MR_MAX * MC_STRIPS * KC + KC * NC_MAX
}

/// Runs `f` on `need` floats of scratch: a slot of `arena` when one is free and large
/// enough, else memory of its own (bounded by `need`, which callers size from block
/// sizes). `Err` only when that allocation fails.
pub(crate) fn with_scratch(
    arena: Option<&SlotArena>,
    need: usize,
    f: &dyn Fn(&mut [f32]),
) -> Result<(), GemmError> {
    if arena.and_then(|a| a.with(need, |b| f(b))).is_some() {
        return Ok(());
    }
    let mut own = alloc::vec::Vec::new();
    own.try_reserve_exact(need)
        .map_err(|_| GemmError::OutOfMemory {
            bytes: need.saturating_mul(4),
        })?;
    own.resize(need, 0.0);
    f(&mut own);
    Ok(())
}

/// An output matrix as a raw pointer: entries of a batch may interleave in memory, so no
/// `&mut` slice may span one entry while another is written.
#[derive(Clone, Copy)]
pub(crate) struct COut {
    pub ptr: SyncPtr,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// The right operand as the driver reads it.
#[derive(Clone, Copy)]
enum BSrc<'a> {
    Mat(crate::MatRef<'a>),
    Packed(crate::PackedBRef<'a>),
    Shifted(Shifted<'a>),
}

/// A right operand read in place, never packed: a convolution's taps over its (padded)
/// input. Row `p = c · taps + t` of B is `data[c · ch + tapoff[t]..][..n]`.
#[derive(Clone, Copy)]
pub(crate) struct Shifted<'a> {
    pub data: &'a [f32],
    /// Floats between channels.
    pub ch: usize,
    pub tapoff: &'a [usize],
    /// Channels: B has `channels × tapoff.len()` rows.
    pub channels: usize,
    /// Columns.
    pub n: usize,
}

impl Shifted<'_> {
    /// Every read stays inside `data`: the last channel's widest tap plus `n` columns.
    fn in_bounds(&self) -> bool {
        let Some(&maxoff) = self.tapoff.iter().max() else {
            return false;
        };
        self.channels
            .checked_sub(1)
            .and_then(|c| c.checked_mul(self.ch))
            .and_then(|v| v.checked_add(maxoff))
            .and_then(|v| v.checked_add(self.n))
            .is_some_and(|end| end <= self.data.len())
    }
}

/// Output columns that are pixels of an image row by row: column `j` is pixel
/// `(j / width, j % width)`, which exists only when `j % width < valid`; rows of pixels
/// are `row_stride` apart.
#[derive(Clone, Copy)]
pub(crate) struct Wrap {
    pub width: usize,
    pub valid: usize,
    pub row_stride: usize,
}

/// A pointer shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
// SAFETY: tasks only write the tiles of their own (row block, column block), which are
// disjoint because the output's strides were checked not to alias (`MatMut::new`).
unsafe impl Send for SyncPtr {}
// SAFETY: see above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// Through a method, so closures capture the whole `Sync` wrapper, not the field.
    #[inline(always)]
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

fn check_bias(epi: &Epilogue<'_>, m: usize, n: usize) -> Result<(), GemmError> {
    if epi.beta == 0.0 {
        return Ok(());
    }
    match epi.bias {
        Bias::None => Ok(()),
        Bias::PerCol(b) if b.len() < n => Err(GemmError::Shape {
            what: "bias per column (length)",
            expected: n,
            found: b.len(),
        }),
        Bias::PerRow(b) if b.len() < m => Err(GemmError::Shape {
            what: "bias per row (length)",
            expected: m,
            found: b.len(),
        }),
        Bias::Mat(b) if b.rows != m || b.cols != n => Err(GemmError::Shape {
            what: "bias matrix (rows x cols)",
            expected: m * n,
            found: b.rows * b.cols,
        }),
        _ => Ok(()),
    }
}

/// `C = act(alpha · A·B + beta · bias)` (see [`Epilogue`]).
///
/// `par` runs the blocks; `arena` lends packing buffers of [`scratch_floats`] f32 (one per
/// thread; without one, each task allocates its own).
pub fn gemm(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    a: Lhs<'_>,
    b: Rhs<'_>,
    c: MatMut<'_>,
    epi: &Epilogue<'_>,
) -> Result<(), GemmError> {
    let out = COut {
        ptr: SyncPtr(c.data.as_mut_ptr()),
        rows: c.rows,
        cols: c.cols,
        rs: c.rs,
        cs: c.cs,
    };
    // SAFETY: `MatMut::new` checked that the output's extent fits `c.data` and that its
    // elements do not alias; `c` is borrowed mutably for the whole call.
    unsafe { gemm_out(par, arena, None, a, b, out, epi) }
}

/// [`gemm`] into a raw output. With `buf`, runs on the calling thread and packs into
/// `buf` (callers that already hold a slot of the arena pass the rest of it).
///
/// # Safety
/// Every element `(i, j)` of `c` (`ptr + i * rs + j * cs`) must be valid for writes,
/// distinct from the others, and not accessed by anyone else during the call.
pub(crate) unsafe fn gemm_out(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    buf: Option<&mut [f32]>,
    a: Lhs<'_>,
    b: Rhs<'_>,
    c: COut,
    epi: &Epilogue<'_>,
) -> Result<(), GemmError> {
    let ka = match a {
        Lhs::Mat(x) => x.cols,
        Lhs::Packed(p) => p.k,
    };
    let (kb, n) = match b {
        Rhs::Mat(x) => (x.rows, x.cols),
        Rhs::Packed(p) => (p.k, p.n),
    };
    let bsrc = match b {
        Rhs::Mat(x) => BSrc::Mat(x),
        Rhs::Packed(p) => BSrc::Packed(p),
    };
    // SAFETY: forwarded from the caller.
    unsafe { run(par, arena, buf, a, bsrc, (ka, kb, n), c, None, None, epi) }
}

/// `C = act(A[r0..r0 + c.rows] · B + bias)` on the calling thread: rows of a packed A
/// from `r0`, a multiple of its strips' height.
///
/// # Safety
/// As [`gemm_out`].
pub(crate) unsafe fn gemm_packed_rows(
    a: &crate::PackedA,
    r0: usize,
    b: crate::PackedBRef<'_>,
    c: COut,
    epi: &Epilogue<'_>,
) -> Result<(), GemmError> {
    if !r0.is_multiple_of(a.mr) || r0.checked_add(c.rows).is_none_or(|end| end > a.m) {
        return Err(GemmError::Shape {
            what: "rows of a packed left operand",
            expected: a.m,
            found: r0.saturating_add(c.rows),
        });
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        run(
            &Serial,
            None,
            None,
            Lhs::Packed(a),
            BSrc::Packed(b),
            (a.k, b.k, b.n),
            c,
            None,
            Some(r0),
            epi,
        )
    }
}

/// `C = act(A · B + bias)` with B read in place from a convolution's input and the
/// columns wrapped into image rows (see [`Shifted`] and [`Wrap`]).
///
/// # Safety
/// Every existing pixel `(i, j)` of `c` (`ptr + i * rs + (j / width) * row_stride +
/// (j % width) * cs` with `j % width < valid`) must be valid for writes, distinct from the
/// others, and not accessed by anyone else during the call.
pub(crate) unsafe fn gemm_shifted(
    par: &dyn Parallel,
    a: &crate::PackedA,
    b: Shifted<'_>,
    c: COut,
    wrap: Wrap,
    epi: &Epilogue<'_>,
) -> Result<(), GemmError> {
    if !b.in_bounds() || b.tapoff.len() > MAX_TAPS || wrap.valid > wrap.width {
        return Err(GemmError::Shape {
            what: "shifted operand extent",
            expected: b.data.len(),
            found: b.n,
        });
    }
    let kb = b.channels * b.tapoff.len();
    // SAFETY: forwarded from the caller.
    unsafe {
        run(
            par,
            None,
            None,
            Lhs::Packed(a),
            BSrc::Shifted(b),
            (a.k, kb, b.n),
            c,
            Some(wrap),
            None,
            epi,
        )
    }
}

/// Taps of a [`Shifted`] operand at most (one K block holds whole channels).
pub(crate) const MAX_TAPS: usize = 64;

#[allow(clippy::too_many_arguments)]
unsafe fn run(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    buf: Option<&mut [f32]>,
    a: Lhs<'_>,
    b: BSrc<'_>,
    (ka, kb, n): (usize, usize, usize),
    c: COut,
    wrap: Option<Wrap>,
    row0: Option<usize>,
    epi: &Epilogue<'_>,
) -> Result<(), GemmError> {
    // A packed A read from row `row0` (a multiple of its strip height) has the output's
    // rows (`gemm_packed_rows` checked that they exist).
    let m = match a {
        Lhs::Mat(x) => x.rows,
        Lhs::Packed(_) if row0.is_some() => c.rows,
        Lhs::Packed(p) => p.m,
    };
    let row0 = row0.unwrap_or(0);
    let k = ka;
    if kb != ka {
        return Err(GemmError::Shape {
            what: "inner dimensions (A columns vs B rows)",
            expected: ka,
            found: kb,
        });
    }
    if c.rows != m {
        return Err(GemmError::Shape {
            what: "output rows",
            expected: m,
            found: c.rows,
        });
    }
    if c.cols != n {
        return Err(GemmError::Shape {
            what: "output columns",
            expected: n,
            found: c.cols,
        });
    }
    check_bias(epi, m, n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let level = match (a, b) {
        (Lhs::Packed(pa), BSrc::Packed(pb)) if pa.level != pb.level => {
            return Err(GemmError::LevelMismatch)
        }
        (Lhs::Packed(pa), _) => pa.level,
        (_, BSrc::Packed(pb)) => pb.level,
        _ => ptero_simd::level(),
    };
    let (gmr, gnr) = geometry(level);
    let packed_ok = match (a, b) {
        (Lhs::Packed(p), _) if p.mr != gmr => false,
        (_, BSrc::Packed(p)) if p.nr != gnr => false,
        _ => true,
    };
    if !packed_ok {
        return Err(GemmError::LevelMismatch);
    }
    let macs = m.saturating_mul(n).saturating_mul(k);
    let par: &dyn Parallel = if macs < PAR_MIN_MACS || buf.is_some() {
        &Serial
    } else {
        par
    };
    let e = Epi {
        alpha: epi.alpha,
        beta: epi.beta,
        bias: if epi.beta == 0.0 {
            Bias::None
        } else {
            epi.bias
        },
        act: epi.act,
    };

    // A single row or column against a plain matrix: stream it, no packing.
    if let (Lhs::Mat(am), BSrc::Mat(bm)) = (a, b) {
        if gemv::try_run(par, level, am, bm, c, &e) {
            return Ok(());
        }
    }

    let (mut mr, nr) = (gmr, gnr);
    if m == 1 && matches!(a, Lhs::Mat(_)) {
        mr = 1;
    } else if let Lhs::Mat(am) = a {
        if wrap.is_none() && direct_a(&am, mr) {
            mr = direct_mr(gmr, nr, m);
        }
    }
    // Row blocks of at most MC_STRIPS strips, of equal size so threads finish together.
    // With threads, enough blocks for three each: more row blocks when A is the larger
    // operand (each block of A is then read once: a convolution's weights over a small
    // image), more column blocks otherwise.
    let threads = par.threads().max(1);
    let max_nb = n.div_ceil(nr);
    let mut mb = m.div_ceil(MC_STRIPS * mr);
    let mut nb = n.div_ceil(NC_MAX);
    if threads > 1 {
        let want = 3 * threads;
        if m >= n {
            mb = mb.max(want.min(m.div_ceil(mr)));
        }
        nb = nb.max(want.div_ceil(mb)).min(max_nb);
    }
    if threads > 1 {
        // A B packed per task is packed again by every extra row block.
        let rows_fixed = matches!(b, BSrc::Mat(_));
        (mb, nb) = balance(m.div_ceil(mr), max_nb, mb, nb, threads, rows_fixed);
    }
    let mc = m.div_ceil(mb).div_ceil(mr) * mr;
    let mb = m.div_ceil(mc);
    let nc = n.div_ceil(nb).div_ceil(nr) * nr;
    let nb = n.div_ceil(nc);

    // A K block of a shifted operand holds whole channels, so its rows are found from
    // the channel and the tap.
    let kc = match b {
        BSrc::Shifted(sh) => {
            let taps = sh.tapoff.len();
            taps * (KC / taps).max(1)
        }
        _ => KC,
    };
    let ctx = Ctx {
        a,
        strip0: row0 / mr,
        b,
        kc,
        wrap,
        c: c.ptr,
        crs: c.rs,
        ccs: c.cs,
        m,
        n,
        k,
        epi: e,
        mr,
        nr,
        mc,
        nc,
        nb,
    };
    let need = ctx.scratch_need();
    if let Some(buf) = buf {
        if buf.len() >= need {
            for t in 0..mb * nb {
                dispatch_at(
                    level,
                    Task {
                        ctx: &ctx,
                        t,
                        buf: &mut buf[..need],
                    },
                );
            }
            return Ok(());
        }
    }
    let task = |t: usize| {
        let run = |buf: &mut [f32]| dispatch_at(level, Task { ctx: &ctx, t, buf });
        if need == 0 {
            run(&mut []);
        } else if arena.and_then(|ar| ar.with(need, run)).is_none() {
            // No arena (or it is busy): the buffer is bounded by the block sizes, not by
            // the input.
            let mut own = alloc::vec![0.0f32; need];
            run(&mut own);
        }
    };
    par.run(mb * nb, &task);
    Ok(())
}

/// Rows of a strip of an A read in place: the kernel's own unless 7-row strips (14
/// accumulators on AVX-512) leave clearly fewer rows idle. A 7 x 7 image is 49 pixels:
/// five strips of 12, the last with one live row, or seven full strips of 7.
fn direct_mr(gmr: usize, nr: usize, m: usize) -> usize {
    const SHORT: usize = 7;
    if gmr == 12 && nr == 32 {
        let full = m.div_ceil(gmr) * gmr;
        let short = m.div_ceil(SHORT) * SHORT;
        // A 7-row tile loads 9 values per 14 multiply-adds against 14 per 24: about 8%
        // slower per row.
        if short * 108 < full * 100 {
            return SHORT;
        }
    }
    gmr
}

/// Row and column block counts `(mb, nb)` (at least the given ones, at most `strips`
/// and `panels`) whose tasks share out evenly over `threads`. Tasks are claimed one by
/// one, so the slowest thread does `ceil(tasks / threads)` of them: five column panels of
/// a 7 x 7 layer's 160 channels are three tasks against two; split by rows as well they
/// are 18 tile-sized tasks against 17. Smaller tasks re-read their operands more often
/// (a tenth slower per tile measured at one strip by one panel), so a split is only
/// changed when the slowest thread's share drops by at least a tenth, and products with
/// many tasks per thread are left alone.
fn balance(
    strips: usize,
    panels: usize,
    mb: usize,
    nb: usize,
    threads: usize,
    rows_fixed: bool,
) -> (usize, usize) {
    const MAX_TASKS: usize = 64;
    // (tiles the slowest thread computes, tasks).
    let cost = |mb: usize, nb: usize| {
        let tasks = mb * nb;
        let tiles = strips.div_ceil(mb) * panels.div_ceil(nb);
        (tasks.div_ceil(threads) * tiles, tasks)
    };
    if mb * nb >= MAX_TASKS / 2 || mb > strips || nb > panels {
        return (mb, nb);
    }
    let now = cost(mb, nb);
    let mut best = (now, mb, nb);
    let top = if rows_fixed {
        mb
    } else {
        strips.min(MAX_TASKS)
    };
    for m2 in mb..=top {
        for n2 in nb..=panels.min(MAX_TASKS / m2) {
            let c = cost(m2, n2);
            if c < best.0 {
                best = (c, m2, n2);
            }
        }
    }
    if best.0 .0 * 10 <= now.0 * 9 {
        (best.1, best.2)
    } else {
        (mb, nb)
    }
}

/// True when A is read in place by [`micro_rows`] instead of packed: any row-major
/// operand (unit column stride) of more than one row. Packing such an A costs a scalar
/// transposition as long as the product itself on short inner dimensions (channels-last
/// pointwise convolutions), and measured no faster on long ones (linear layers).
#[inline(always)]
fn direct_a(a: &crate::MatRef<'_>, mr: usize) -> bool {
    mr > 1 && a.cs == 1
}

struct Ctx<'a> {
    a: Lhs<'a>,
    /// First strip of a packed A read.
    strip0: usize,
    b: BSrc<'a>,
    /// Depth of a K block.
    kc: usize,
    wrap: Option<Wrap>,
    c: SyncPtr,
    crs: usize,
    ccs: usize,
    m: usize,
    n: usize,
    k: usize,
    epi: Epi<'a>,
    mr: usize,
    nr: usize,
    mc: usize,
    nc: usize,
    nb: usize,
}

impl Ctx<'_> {
    fn scratch_need(&self) -> usize {
        let kc = self.kc.min(self.k);
        let a = match self.a {
            Lhs::Mat(am) if !direct_a(&am, self.mr) => self.mc * kc,
            Lhs::Mat(_) | Lhs::Packed(_) => 0,
        };
        let b = match self.b {
            BSrc::Mat(_) => self.nc * kc,
            BSrc::Packed(_) | BSrc::Shifted(_) => 0,
        };
        a + b
    }
}

struct Task<'c, 'a> {
    ctx: &'c Ctx<'a>,
    t: usize,
    buf: &'c mut [f32],
}

impl SimdOp for Task<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        let mr = self.ctx.mr;
        // The shifted operand gets its own instances: sharing one function with the
        // packed microkernel costs the packed loop ~10% (register allocation).
        let shifted = matches!(self.ctx.b, BSrc::Shifted(_));
        let (ctx, t, buf) = (self.ctx, self.t, self.buf);
        match (mr, S::LANES, shifted) {
            (1, _, _) => block::<S, 1, false>(s, ctx, t, buf),
            (7, 16, false) => block::<S, 7, false>(s, ctx, t, buf),
            (_, 16, false) => block::<S, 12, false>(s, ctx, t, buf),
            (_, 16, true) => block::<S, 12, true>(s, ctx, t, buf),
            (_, 8, false) => block::<S, 6, false>(s, ctx, t, buf),
            (_, 8, true) => block::<S, 6, true>(s, ctx, t, buf),
            (_, _, false) => block::<S, 4, false>(s, ctx, t, buf),
            (_, _, true) => block::<S, 4, true>(s, ctx, t, buf),
        }
    }
}

/// One (row block, column block) of the output, over every K block.
#[inline(always)]
fn block<S: Simd, const MR: usize, const SHIFTED: bool>(
    s: S,
    ctx: &Ctx<'_>,
    t: usize,
    buf: &mut [f32],
) {
    let nr = 2 * S::LANES;
    debug_assert!(nr == ctx.nr && (MR == ctx.mr));
    let (bi, bj) = (t / ctx.nb, t % ctx.nb);
    let i0 = bi * ctx.mc;
    let i1 = (i0 + ctx.mc).min(ctx.m);
    let j0 = bj * ctx.nc;
    let j1 = (j0 + ctx.nc).min(ctx.n);
    let strips = (i1 - i0).div_ceil(MR);
    let panels = (j1 - j0).div_ceil(nr);
    let k = ctx.k;
    let direct =
        ctx.wrap.is_none() && matches!(ctx.a, Lhs::Mat(am) if !SHIFTED && direct_a(&am, MR));
    let (abuf, bbuf) = match ctx.a {
        Lhs::Mat(_) if !direct => buf.split_at_mut(ctx.mc * ctx.kc.min(k)),
        Lhs::Mat(_) | Lhs::Packed(_) => buf.split_at_mut(0),
    };
    let blk = Blk { i1, j0, j1 };
    // A packed A with a B that needs no packing per K block and stays in L2 (read in place
    // from an image, or packed and at most 256 KiB): strip by strip over the whole depth,
    // so each strip of A (a convolution's weights, often read from memory once) streams
    // sequentially while B is read again per strip from the cache.
    let b_cached = match ctx.b {
        BSrc::Shifted(_) => true,
        BSrc::Packed(_) => k.saturating_mul(j1 - j0) <= 1 << 16,
        BSrc::Mat(_) => false,
    };
    if matches!(ctx.a, Lhs::Packed(_)) && b_cached {
        for st in 0..strips {
            // At least once: an empty K still writes the epilogue.
            let mut k0 = 0;
            loop {
                let kc = ctx.kc.min(k - k0);
                for q in 0..panels {
                    tile::<S, MR, SHIFTED>(s, ctx, &blk, i0 + st * MR, q, k0, kc, &[], &[], false);
                }
                k0 += kc;
                if k0 >= k {
                    break;
                }
            }
        }
        return;
    }
    let mut k0 = 0;
    loop {
        let kc = ctx.kc.min(k - k0);
        if let (Lhs::Mat(am), false) = (ctx.a, direct) {
            for st in 0..strips {
                let r0 = i0 + st * MR;
                pack_a_strip(
                    &am,
                    r0,
                    MR.min(i1 - r0),
                    k0,
                    kc,
                    MR,
                    &mut abuf[st * kc * MR..],
                );
            }
        }
        if let BSrc::Mat(bm) = ctx.b {
            for q in 0..panels {
                let c0 = j0 + q * nr;
                pack_b_panel(
                    &bm,
                    k0,
                    kc,
                    c0,
                    nr.min(j1 - c0),
                    nr,
                    &mut bbuf[q * kc * nr..],
                );
            }
        }
        for q in 0..panels {
            for st in 0..strips {
                let abuf_st = match ctx.a {
                    Lhs::Mat(_) if !direct => &abuf[st * kc * MR..][..kc * MR],
                    _ => &[][..],
                };
                let bbuf_q = match ctx.b {
                    BSrc::Mat(_) => &bbuf[q * kc * nr..][..kc * nr],
                    _ => &[][..],
                };
                tile::<S, MR, SHIFTED>(
                    s,
                    ctx,
                    &blk,
                    i0 + st * MR,
                    q,
                    k0,
                    kc,
                    abuf_st,
                    bbuf_q,
                    direct,
                );
            }
        }
        k0 += kc;
        if k0 >= k {
            break;
        }
    }
}

/// The rows and columns a task covers: rows up to `i1`, columns `j0..j1`.
struct Blk {
    i1: usize,
    j0: usize,
    j1: usize,
}

/// The tile of rows `r0..r0 + MR` and panel `q` of the task's columns, over K block
/// `k0..k0 + kc`: `abuf` holds A's strip packed for it (empty when A is packed or read
/// in place), `bbuf` B's panel (empty unless B is a plain matrix).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<S: Simd, const MR: usize, const SHIFTED: bool>(
    s: S,
    ctx: &Ctx<'_>,
    blk: &Blk,
    r0: usize,
    q: usize,
    k0: usize,
    kc: usize,
    abuf: &[f32],
    bbuf: &[f32],
    direct: bool,
) {
    let nr = 2 * S::LANES;
    let k = ctx.k;
    let first = k0 == 0;
    let last = k0 + kc >= k;
    let c0 = blk.j0 + q * nr;
    let n_eff = nr.min(blk.j1 - c0);
    let m_eff = MR.min(blk.i1 - r0);
    let bptr = match ctx.b {
        BSrc::Packed(p) => {
            let panel = c0 / nr;
            // `PackedBRef::new` / `PackedB::new` guaranteed panels * nr * k values.
            p.data[panel * k * nr + k0 * nr..][..kc * nr].as_ptr()
        }
        BSrc::Mat(_) => bbuf[..kc * nr].as_ptr(),
        BSrc::Shifted(_) => core::ptr::null(),
    };
    // A whole-depth tile read in place starts its accumulators at the per-column bias,
    // which the store then leaves out (an add per vector less in small-K products).
    let fold = match ctx.epi.bias {
        Bias::PerCol(b)
            if first
                && last
                && direct
                && ctx.epi.alpha == 1.0
                && ctx.epi.beta == 1.0
                && matches!(ctx.a, Lhs::Mat(_)) =>
        {
            Some(b)
        }
        _ => None,
    };
    let acc = if let (Lhs::Mat(am), true) = (ctx.a, direct) {
        // The strip's rows checked once (the last row's `kc` values lie inside the data,
        // so every earlier row's do), then plain pointer steps: twelve checked slicings
        // per tile showed in small-K products, where a tile is only 16 steps of K.
        let first = &am.data[r0 * am.rs + k0..];
        let span = (m_eff - 1) * am.rs + kc;
        assert!(first.len() >= span, "strip outside the left operand");
        let base = first.as_ptr();
        let rows: [*const f32; MR] = core::array::from_fn(|i| {
            let r = if i < m_eff { i } else { 0 };
            // SAFETY: r < m_eff, so r * rs + kc <= span <= first.len().
            unsafe { base.add(r * am.rs) }
        });
        let init = match fold {
            Some(b) => {
                let n0 = n_eff.min(S::LANES);
                let lo = s.load_part(&b[c0..c0 + n0]);
                let hi = if n_eff > S::LANES {
                    s.load_part(&b[c0 + S::LANES..c0 + n_eff])
                } else {
                    s.zero()
                };
                [lo, hi]
            }
            None => [s.zero(); 2],
        };
        // SAFETY: each row pointer is readable for `kc` values (above), `bptr` comes from
        // a slice of `kc * nr`.
        if n_eff <= S::LANES {
            unsafe { micro_rows_half::<S, MR>(s, kc, &rows, bptr, init) }
        } else {
            unsafe { micro_rows::<S, MR>(s, kc, &rows, bptr, init) }
        }
    } else {
        let aptr = match ctx.a {
            Lhs::Packed(p) => {
                let strip = ctx.strip0 + r0 / MR;
                p.data[strip * k * MR + k0 * MR..][..kc * MR].as_ptr()
            }
            Lhs::Mat(_) => abuf[..kc * MR].as_ptr(),
        };
        match ctx.b {
            // SAFETY: `gemm_shifted` checked that the last channel's widest tap plus n
            // columns is inside `data`, and k0 + kc <= k rows exist.
            BSrc::Shifted(sh) if SHIFTED => unsafe {
                micro_shifted::<S, MR>(s, aptr, &sh, k0, kc, c0, n_eff)
            },
            BSrc::Shifted(_) => unreachable!("shifted operand in the packed instance"),
            // SAFETY: `aptr` and `bptr` come from slices of exactly `kc * MR` and `kc * nr`
            // elements (indexing above checked them).
            _ if MR == 1 => {
                let row = unsafe { micro_row::<S>(s, kc, aptr, bptr) };
                core::array::from_fn(|_| row[0])
            }
            // SAFETY: as above.
            _ => unsafe { micro::<S, MR>(s, kc, aptr, bptr) },
        }
    };
    // Wrapped columns start at pixel 0 of row r0 (`store_wrapped` finds c0's place); plain
    // ones at (r0, c0).
    let col = if ctx.wrap.is_some() { 0 } else { c0 * ctx.ccs };
    let tile = TileOut {
        // SAFETY: (r0, c0) is inside the output (r0 < m, c0 < n), whose extent was checked
        // by `MatMut::new` (or is the caller's contract).
        c: unsafe { ctx.c.get().add(r0 * ctx.crs + col) },
        rs: ctx.crs,
        cs: ctx.ccs,
        i0: r0,
        j0: c0,
        m_eff,
        n_eff,
    };
    match ctx.wrap {
        None if fold.is_some() => {
            let epi = Epi {
                bias: Bias::None,
                ..ctx.epi
            };
            // SAFETY: the tile lies inside the output, and inside this task's block, which
            // no other task writes.
            unsafe { store_tile::<S, MR>(s, &acc, &tile, first, last, &epi) }
        }
        // SAFETY: as above.
        None => unsafe { store_tile::<S, MR>(s, &acc, &tile, first, last, &ctx.epi) },
        // SAFETY: the existing pixels of the tile lie inside the output (the caller's
        // contract), and inside this task's block.
        Some(w) => unsafe { store_wrapped::<S, MR>(s, &acc, &tile, w, first, last, &ctx.epi) },
    }
}

#[cfg(test)]
mod split_tests {
    use super::{balance, direct_mr};

    #[test]
    fn short_strips_only_where_they_waste_less() {
        // (kernel rows, panel width, m, rows chosen)
        for (gmr, nr, m, want) in [
            (12, 32, 49, 7),
            (12, 32, 37, 7),
            (12, 32, 196, 12),
            (12, 32, 64, 12),
            (12, 32, 3136, 12),
            (6, 16, 49, 6),
            (4, 8, 49, 4),
        ] {
            assert_eq!(direct_mr(gmr, nr, m), want, "mr {gmr}, m {m}");
        }
    }

    #[test]
    fn splits_share_out_evenly() {
        // (strips, panels, mb, nb, threads, rows fixed) -> (mb, nb)
        for (case, want) in [
            // Five panels over two threads: split by rows too.
            ((7, 5, 1, 5, 2, false), (7, 5)),
            // ... unless that repacks B per row block.
            ((7, 5, 1, 5, 2, true), (1, 5)),
            // Already even, or too little to gain: unchanged.
            ((17, 3, 6, 1, 2, false), (6, 1)),
            ((7, 4, 1, 4, 2, false), (1, 4)),
            ((100, 40, 9, 4, 2, false), (9, 4)),
            ((1, 1, 1, 1, 2, false), (1, 1)),
        ] {
            let (s, p, mb, nb, t, fixed) = case;
            assert_eq!(balance(s, p, mb, nb, t, fixed), want, "{case:?}");
        }
    }
}
