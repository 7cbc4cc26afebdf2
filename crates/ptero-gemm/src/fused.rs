//! A pointwise convolution whose result only feeds a depthwise one (the expansion and
//! depthwise stages of an inverted-residual block), run a band of output rows at a time:
//! each task expands just the input rows its band needs into its scratch slot and
//! convolves them there, so the wide intermediate tensor never travels through memory.
//! Rows shared by neighbouring bands are expanded twice; bands are kept tall enough that
//! this costs a few percent.

use ptero_simd::{dispatch_at, Parallel, Serial, SlotArena};

use crate::batch::FirstError;
use crate::conv::{check_extent, check_output, Conv2d, Image, ImageMut, PackedConv, Packing};
use crate::depthwise::{DwPlanes, DW_FLOATS, MAX_TAPS};
use crate::driver::{gemm_shifted, COut, Shifted, SyncPtr, Wrap};
use crate::{Activation, Bias, Epilogue, GemmError};

/// Intermediate tensors smaller than this (f32) stay in cache anyway: not worth fusing.
const MIN_MID_FLOATS: usize = 1 << 18;
/// Most floats of one band of the intermediate (1 MiB: stays in L2 with the rest).
pub(crate) const BAND_FLOATS: usize = 1 << 18;
/// Fewest output rows per band (fewer would expand too many rows twice).
pub(crate) const MIN_BAND_ROWS: usize = 8;

/// Bands of output rows for `n` images of `oh` rows on `threads` threads, each at most
/// `fit` rows (what a band's expanded input may hold): about two per thread, at least
/// [`MIN_BAND_ROWS`] rows where possible, and as many in all as a multiple of the
/// threads, so the last round keeps every thread busy (56 rows in bands of 11 left one
/// thread a third idle). Band `b` is `split_range(oh, bands, 1, b)`.
pub(crate) fn band_count(n: usize, oh: usize, fit: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let spread = n.saturating_mul(oh).div_ceil(2 * threads);
    let rows = spread.clamp(MIN_BAND_ROWS.min(fit), fit).max(1);
    let mut bands = oh.div_ceil(rows).max(1);
    while bands < oh && !n.saturating_mul(bands).is_multiple_of(threads) {
        bands += 1;
    }
    bands
}

/// The pointwise stage: packed `[cmid, cin]` weights, bias per channel, activation.
#[derive(Clone, Copy, Debug)]
pub struct PointwiseStage<'a> {
    pub w: &'a PackedConv,
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
}

/// The depthwise stage: geometry (over the intermediate), `[cmid, 1, kh, kw]` weights.
#[derive(Clone, Copy, Debug)]
pub struct DepthwiseStage<'a> {
    pub geo: Conv2d,
    pub w: Image<'a>,
    /// The same weights packed by [`PackedConv::channels_last`], which channels-last
    /// images need.
    pub packed: Option<&'a PackedConv>,
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
}

/// f32 of scratch one task of [`pointwise_depthwise`] takes from its slot at most.
pub fn fused_scratch_floats() -> usize {
    BAND_FLOATS + DW_FLOATS
}

/// `out = depthwise(pointwise(x))` without materialising the intermediate. Returns
/// `Ok(false)`, having done nothing, when the pair does not fit this path (the caller
/// then runs the two convolutions one after the other): the first is not a plain 1 × 1
/// convolution, the input rows are not contiguous, the intermediate is small, or the
/// arena lacks room.
pub fn pointwise_depthwise(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g1: &Conv2d,
    pw: PointwiseStage<'_>,
    dw: DepthwiseStage<'_>,
    x: Image<'_>,
    out: ImageMut<'_>,
) -> Result<bool, GemmError> {
    let g2 = dw.geo;
    let plain = g1.kh == 1
        && g1.kw == 1
        && g1.stride == [1, 1]
        && g1.pad == [0, 0]
        && g1.groups == 1
        && g1.oh == g1.ih
        && g1.ow == g1.iw;
    let chained = g2.n == g1.n
        && g2.cin == g1.cout
        && g2.cout == g2.cin
        && g2.groups == g2.cin
        && g2.ih == g1.oh
        && g2.iw == g1.ow
        && g2.kh * g2.kw <= MAX_TAPS;
    let Some(arena) = arena else {
        return Ok(false);
    };
    let mid = g1.cout.saturating_mul(g1.oh).saturating_mul(g1.ow);
    if let Packing::ChannelsLast(cols) = &pw.w.kind {
        g1.check()?;
        g2.check()?;
        let Some(Packing::Depthwise(filt)) = dw.packed.map(|p| &p.kind) else {
            return Ok(false);
        };
        if !plain || !chained || mid < MIN_MID_FLOATS || filt.len() != g2.kh * g2.kw * g2.cout {
            return Ok(false);
        }
        return crate::nhwc_dw::pointwise_depthwise(
            par, arena, g1, cols, pw.bias, pw.act, &g2, filt, dw.bias, dw.act, x, out,
        );
    }
    let Packing::Planar(groups) = &pw.w.kind else {
        return Ok(false);
    };
    if !plain
        || !chained
        || x.strides[3] != 1
        || (g1.ih > 1 && x.strides[2] != g1.iw)
        || mid < MIN_MID_FLOATS
        || arena.slot_len() < fused_scratch_floats()
        || groups.len() != 1
    {
        return Ok(false);
    }
    g1.check()?;
    g2.check()?;
    let packed = &groups[0];
    if packed.m != g1.cout || packed.k != g1.cin || packed.level() != ptero_simd::level() {
        return Ok(false);
    }
    check_extent(
        "input",
        x.data.len(),
        [g1.n, g1.cin, g1.ih, g1.iw],
        x.strides,
    )?;
    check_extent(
        "depthwise weight",
        dw.w.data.len(),
        [g2.cout, 1, g2.kh, g2.kw],
        dw.w.strides,
    )?;
    check_output(&out, [g2.n, g2.cout, g2.oh, g2.ow])?;
    let os = out.strides;
    for (b, what) in [
        (pw.bias, "pointwise bias length"),
        (dw.bias, "depthwise bias length"),
    ] {
        if b.is_some_and(|b| b.len() < g1.cout) {
            return Err(GemmError::Shape {
                what,
                expected: g1.cout,
                found: b.map_or(0, |b| b.len()),
            });
        }
    }
    if g2.n == 0 || g2.oh == 0 || g2.ow == 0 || g1.cout == 0 {
        return Ok(true);
    }
    let (sh, ph) = (g2.stride[0], g2.pad[0]);
    let span = (g2.kh - 1) * g2.dilation[0] + 1;
    let rows_in = |r: usize| (r - 1) * sh + span;
    let row_floats = g1.cout * g1.iw;
    // Tallest band that fits, then shorter ones so every thread gets two.
    let mut fit = 0;
    while fit < g2.oh && rows_in(fit + 1).saturating_mul(row_floats) <= BAND_FLOATS {
        fit += 1;
    }
    if fit == 0 {
        return Ok(false);
    }
    let bands = band_count(g2.n, g2.oh, fit, par.threads());
    let optr = SyncPtr(out.data.as_mut_ptr());
    let level = ptero_simd::level();
    let epi = Epilogue {
        alpha: 1.0,
        beta: if pw.bias.is_some() { 1.0 } else { 0.0 },
        bias: pw.bias.map_or(Bias::None, Bias::PerRow),
        act: pw.act,
    };
    let err = FirstError::new();
    par.run(g2.n * bands, &|t| {
        let (n, b) = (t / bands, t % bands);
        let band = ptero_simd::split_range(g2.oh, bands, 1, b);
        let (oy0, oy1) = (band.start, band.end);
        // Input rows of the band, clipped to the image (the rest is padding).
        let top = (oy0 * sh) as isize - ph as isize;
        let lo = top.max(0) as usize;
        let hi = ((oy1 - 1) * sh + span).saturating_sub(ph).min(g1.ih);
        // A band over padding only sees no rows: its outputs are the bias, activated.
        let nrows = hi.saturating_sub(lo);
        let r = arena.with(fused_scratch_floats(), |buf| {
            let (band, rest) = buf.split_at_mut(nrows * row_floats);
            let ds = rest;
            let cols = nrows * g1.iw;
            let start = (n * x.strides[0] + lo * x.strides[2]).min(x.data.len());
            if cols > 0 {
                // B read in place: row `c` is channel c's rows of the band.
                let b = Shifted {
                    data: &x.data[start..],
                    ch: x.strides[1],
                    tapoff: &[0],
                    channels: g1.cin,
                    n: cols,
                };
                let c = COut {
                    ptr: SyncPtr(band.as_mut_ptr()),
                    rows: g1.cout,
                    cols,
                    rs: cols,
                    cs: 1,
                };
                let wrap = Wrap {
                    width: cols,
                    valid: cols,
                    row_stride: cols,
                };
                // SAFETY: `c` is exactly `band`, borrowed mutably here.
                unsafe { gemm_shifted(&Serial, packed, b, c, wrap, &epi)? };
            }
            let sub = Conv2d {
                n: 1,
                ih: nrows,
                oh: oy1 - oy0,
                // Rows above the image are padding; below it, `ih` ends the band.
                pad: [(lo as isize - top) as usize, g2.pad[1]],
                ..g2
            };
            dispatch_at(
                level,
                DwPlanes {
                    g: &sub,
                    x: Image {
                        data: band,
                        strides: [0, cols, g1.iw, 1],
                    },
                    w: dw.w,
                    bias: dw.bias,
                    planes: 0..g2.cout,
                    // SAFETY: row oy0 of image n is inside the checked output.
                    out: SyncPtr(unsafe { optr.get().add(n * os[0] + oy0 * os[2]) }),
                    os,
                    act: dw.act,
                    scratch: Some(ds),
                },
            );
            Ok(())
        });
        match r {
            Some(Ok(())) => {}
            Some(Err(e)) => err.set(e),
            None => err.set(GemmError::OutOfMemory {
                bytes: fused_scratch_floats() * 4,
            }),
        }
    });
    match err.take() {
        Some(e) => Err(e),
        None => Ok(true),
    }
}
