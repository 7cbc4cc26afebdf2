//! Winograd's F(2×2, 3×3) (see `winograd.rs`) with output tiles as the GEMM's rows and
//! output channels as its columns, for images with few tiles (ResNet's 14 × 14 stage: 49
//! tiles, seven strips of seven rows), the way `pixel_rows.rs` turns a direct
//! convolution round.
//!
//! The filters' transforms are packed once as 16 right operands (`cin × cout`, one per
//! point). A task takes a range of whole strips of tiles: it transforms their input
//! patches into `V` (per point, per input channel, its tiles side by side, so row `i` of
//! a strip reads channel `c` at `c · tiles + i`), then, per panel of output channels and
//! group of strips, accumulates the 16 points' products channel block by channel block
//! (the block's weights stay in L1 while every strip of the group reads them) and
//! transforms each tile back with the bias and activation, written transposed into the
//! channels-first output.

use alloc::vec::Vec;

use ptero_simd::{dispatch_at, split_count, split_range, Level, Parallel, Simd, SimdOp, SlotArena};

use crate::conv::{fill_phases, Conv2d, Image};
use crate::driver::{with_scratch, SyncPtr};
use crate::kernel::{geometry, Epi};
use crate::pixel_rows::{micro, mr_for_lanes, Prefetch, KC_STEPS, MR_MAX, NR_MAX};
use crate::winograd::{
    applies, filter_transforms, patch_transform, tile_transform, TileGeo, POINTS,
};
use crate::{Activation, Bias, GemmError, MatRef, PackedB};

/// f32 of input transforms a task keeps (1 MiB: they stay in L2).
const TASK_FLOATS: usize = 1 << 18;
/// Strips whose 16 points' sums are kept together (`GROUP · 16 · MR · NR` f32, 112 KiB
/// on AVX-512, in L2).
const GROUP: usize = 8;

/// `U = G g Gᵀ` of every filter of `w` (`[cout, cin, 3, 3]`, extent checked by the
/// caller), packed for `level` as 16 right operands (`cin × cout`), one per point.
pub(crate) fn pack(level: Level, g: &Conv2d, w: Image<'_>) -> Result<Vec<PackedB>, GemmError> {
    let n = g.cout * g.cin;
    let u = filter_transforms(g, w)?;
    u.chunks_exact(n.max(1))
        .take(POINTS)
        .map(|p| PackedB::new_at(level, MatRef::new(&p[..n], g.cin, g.cout, 1, g.cin)?))
        .collect()
}

/// f32 of scratch a task of `strips` strips needs, beside the input's phase planes.
fn task_floats(cin: usize, strips: usize, mr: usize) -> usize {
    POINTS * cin * strips * mr + GROUP * POINTS * MR_MAX * NR_MAX
}

/// `out = act(conv(x, w) + bias)` with `u` from [`pack`].
///
/// # Safety
/// As [`crate::conv2d`]'s output: extents checked, valid, non-aliasing and exclusive.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    u: &[PackedB],
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Result<(), GemmError> {
    if u.len() != POINTS || !applies(g) || u.iter().any(|p| p.k != g.cin || p.n != g.cout) {
        return Err(GemmError::Shape {
            what: "Winograd weights with tiles as rows (output channels)",
            expected: g.cout,
            found: u.first().map_or(0, |p| p.n),
        });
    }
    let level = u[0].level;
    let (_, nr) = geometry(level);
    let mr = mr_for_lanes(nr / 2);
    let TileGeo {
        ph,
        tw,
        tiles,
        hq,
        wq,
        ch,
        ..
    } = TileGeo::of(g)?;
    let total = g.cin.checked_mul(ch).ok_or(GemmError::Overflow)?;
    if tiles == 0 {
        return Ok(());
    }
    let strips = tiles.div_ceil(mr);
    // Tasks: equal ranges of whole strips, one per thread at least, each transform block
    // within TASK_FLOATS.
    let fit = (TASK_FLOATS / (POINTS * g.cin * mr).max(1)).max(1);
    let ntasks = split_count(strips, par.threads().max(strips.div_ceil(fit)), 1);
    let per_task = strips.div_ceil(ntasks);
    let need = task_floats(g.cin, per_task, mr);
    let epi = Epi {
        alpha: 1.0,
        beta: if bias.is_some() { 1.0 } else { 0.0 },
        bias: bias.map_or(Bias::None, Bias::PerCol),
        act,
    };
    let err = crate::batch::FirstError::new();
    let run = |buf: &mut [f32]| {
        let buf = &mut buf[..total];
        for n in 0..g.n {
            fill_phases(par, x, n, &ph, &|_, _| true, buf, ch);
            let planes: &[f32] = buf;
            let task = |t: usize| {
                let sr = split_range(strips, ntasks, 1, t);
                let (t0, t1) = (sr.start * mr, (sr.end * mr).min(tiles));
                let go = |scratch: &mut [f32]| {
                    let job = Job {
                        planes,
                        ch,
                        wq,
                        plane: hq * wq,
                        cin: g.cin,
                        tw,
                        t0,
                        t1,
                        u,
                        epi: &epi,
                        // SAFETY: image n is inside the checked output.
                        out: SyncPtr(unsafe { out.get().add(n * os[0]) }),
                        os,
                        oh: g.oh,
                        ow: g.ow,
                        scatter: os[1]
                            .checked_mul(NR_MAX)
                            .is_some_and(|v| v <= i32::MAX as usize),
                        scratch,
                    };
                    dispatch_at(level, job);
                };
                if let Err(e) = with_scratch(arena, need, &go) {
                    err.set(e);
                }
            };
            if ntasks == 1 {
                task(0);
            } else {
                par.run(ntasks, &task);
            }
        }
    };
    with_scratch(arena, total, &run)?;
    match err.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One task: tiles `t0..t1` (whole strips but the image's last) of one image, every
/// output channel.
struct Job<'a> {
    /// Per input channel, `ch` floats: its four stride-2 phases of `plane` floats, rows
    /// `wq` wide.
    planes: &'a [f32],
    ch: usize,
    wq: usize,
    plane: usize,
    cin: usize,
    tw: usize,
    t0: usize,
    t1: usize,
    u: &'a [PackedB],
    epi: &'a Epi<'a>,
    out: SyncPtr,
    os: [usize; 4],
    oh: usize,
    ow: usize,
    /// Channel offsets of a vector (`(LANES - 1) · os[1]`) fit `i32`: whole vectors may
    /// be scattered.
    scatter: bool,
    scratch: &'a mut [f32],
}

impl SimdOp for Job<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<S: Simd>(self, s: S) {
        match S::LANES {
            16 => self.run::<S, { mr_for_lanes(16) }>(s),
            8 => self.run::<S, { mr_for_lanes(8) }>(s),
            _ => self.run::<S, { mr_for_lanes(4) }>(s),
        }
    }
}

impl Job<'_> {
    #[inline(always)]
    fn run<S: Simd, const MR: usize>(mut self, s: S) {
        let (l, nr) = (S::LANES, 2 * S::LANES);
        let (cin, nt) = (self.cin, self.t1 - self.t0);
        let cout = self.u[0].n;
        let panels = cout.div_ceil(nr);
        let vlen = POINTS * cin * nt;
        let mlen = GROUP * POINTS * MR * nr;
        if nt == 0
            || self.scratch.len() < vlen + mlen
            || self.u.iter().any(|p| p.data.len() < panels * nr * cin)
        {
            return;
        }
        let scratch = core::mem::take(&mut self.scratch);
        let (v, m) = scratch.split_at_mut(vlen);
        self.forward(s, v);
        let v: &[f32] = v;
        let m = &mut m[..mlen];
        let kc = KC_STEPS.max(1);
        let mut tile = [0.0f32; 4 * NR_MAX];
        let lstrips = nt.div_ceil(MR);
        for panel in 0..panels {
            let c0 = panel * nr;
            let nc = nr.min(cout - c0);
            let mut g0 = 0;
            while g0 < lstrips {
                let g1 = (g0 + GROUP).min(lstrips);
                // Each point's block of weights is read from memory once per group of
                // strips: the next one (or the next panel's first) is fetched into L2
                // while this one is computed, spread over its steps (16.16 fixed point).
                let inc = (nr << 16) / (g1 - g0);
                for p in 0..POINTS {
                    // SAFETY: the panel's cin · nr values were checked above.
                    let b = unsafe { self.u[p].data.as_ptr().add(panel * cin * nr) };
                    let next = if p + 1 < POINTS {
                        self.u[p + 1].data.as_ptr().wrapping_add(panel * cin * nr)
                    } else if panel + 1 < panels && g1 == lstrips {
                        self.u[0].data.as_ptr().wrapping_add((panel + 1) * cin * nr)
                    } else {
                        b
                    };
                    let mut pos = 0usize;
                    let vp = &v[p * cin * nt..][..cin * nt];
                    let mut c = 0;
                    while c < cin {
                        let ce = (c + kc).min(cin);
                        for gi in 0..g1 - g0 {
                            let acc = &mut m[(gi * POINTS + p) * MR * nr..][..MR * nr];
                            if c == 0 {
                                acc.fill(0.0);
                            }
                            let mut rows = [vp.as_ptr(); MR];
                            for (i, r) in rows.iter_mut().enumerate() {
                                // Rows past the task's tiles repeat its last; not stored.
                                let t = ((g0 + gi) * MR + i).min(nt - 1);
                                // SAFETY: t < nt, inside this point's transforms.
                                *r = unsafe { vp.as_ptr().add(t) };
                            }
                            let pf = Prefetch {
                                base: next,
                                pos,
                                inc,
                            };
                            pos += (ce - c) * inc;
                            // SAFETY: row i reads channels c..ce at (c' · nt + t), inside
                            // the point's cin · nt values; steps c..ce of the panel are
                            // inside its cin · nr values.
                            unsafe {
                                micro::<S, MR>(s, acc, &rows, nt, &[0], c..ce, b.add(c * nr), pf)
                            };
                        }
                        c = ce;
                    }
                }
                for gi in 0..g1 - g0 {
                    let sums = &m[gi * POINTS * MR * nr..][..POINTS * MR * nr];
                    for i in 0..MR {
                        let t = (g0 + gi) * MR + i;
                        if t >= nt {
                            break;
                        }
                        let tg = self.t0 + t;
                        let (ty, tx) = (tg / self.tw, tg % self.tw);
                        // Output pixel (a, b) of the tile, when inside the image.
                        let px = |a: usize, bx: usize| {
                            let (oy, ox) = (2 * ty + a, 2 * tx + bx);
                            (oy < self.oh && ox < self.ow)
                                .then(|| oy * self.os[2] + ox * self.os[3])
                        };
                        // Whole vectors of channels are scattered straight to the output;
                        // the panel's tail goes through `tile`.
                        let mut scalar_from = 0;
                        for vi in 0..2 {
                            let j = vi * l;
                            let n = nc.saturating_sub(j).min(l);
                            if n == 0 {
                                break;
                            }
                            let mut mv = [s.zero(); POINTS];
                            for (k, x) in mv.iter_mut().enumerate() {
                                *x = s.load(&sums[(k * MR + i) * nr + j..]);
                            }
                            let y = tile_transform(s, &mv);
                            let whole = n == l && self.scatter;
                            if whole {
                                scalar_from = j + l;
                            }
                            for (a, ya) in y.iter().enumerate() {
                                for (bx, &yv) in ya.iter().enumerate() {
                                    let yv = self.epi.apply(s, yv, 0, c0 + j, n);
                                    match px(a, bx) {
                                        // SAFETY: channels c0 + j.. c0 + j + LANES < cout
                                        // at pixel (oy, ox) inside the image: distinct
                                        // elements of the checked output, exclusive to
                                        // this task's tiles; offsets fit i32 (`scatter`).
                                        Some(o) if whole => unsafe {
                                            s.scatter_ptr(
                                                self.out.get().add((c0 + j) * self.os[1] + o),
                                                self.os[1],
                                                yv,
                                            )
                                        },
                                        _ => s.store(&mut tile[(a * 2 + bx) * nr + j..], yv),
                                    }
                                }
                            }
                        }
                        if scalar_from >= nc {
                            continue;
                        }
                        for a in 0..2 {
                            for bx in 0..2 {
                                let Some(o) = px(a, bx) else {
                                    continue;
                                };
                                for cc in scalar_from..nc {
                                    // SAFETY: channel c0 + cc < cout and pixel (oy, ox)
                                    // inside the image are inside the checked output,
                                    // exclusive to this task's tiles.
                                    unsafe {
                                        *self.out.get().add((c0 + cc) * self.os[1] + o) =
                                            tile[(a * 2 + bx) * nr + cc]
                                    };
                                }
                            }
                        }
                    }
                }
                g0 = g1;
            }
        }
    }

    /// `V = Bᵀ d B` of the task's tiles into `v`: point `p`, channel `c`, tile `t` at
    /// `(p · cin + c) · nt + t - t0`.
    #[inline(always)]
    fn forward<S: Simd>(&self, s: S, v: &mut [f32]) {
        let (cin, nt, tw) = (self.cin, self.t1 - self.t0, self.tw);
        for c in 0..cin {
            let pl = &self.planes[c * self.ch..][..4 * self.plane];
            let mut t = self.t0;
            while t < self.t1 {
                let (ty, tx) = (t / tw, t % tw);
                let len = S::LANES.min(tw - tx).min(self.t1 - t);
                let vt = patch_transform(s, pl, self.plane, self.wq, ty, tx, len);
                let at = t - self.t0;
                for (p, &x) in vt.iter().enumerate() {
                    s.store_part(&mut v[(p * cin + c) * nt + at..][..len], x);
                }
                t += len;
            }
        }
    }
}
