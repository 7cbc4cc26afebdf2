//! 2-d convolution on the GEMM: pointwise convolutions multiply the input directly;
//! others gather patches of the input into a column buffer (im2col), a block of output
//! pixels at a time, and multiply that; depthwise convolutions have a direct kernel.
//! Bias and activation are fused into the product's epilogue.

use alloc::vec::Vec;

use ptero_simd::phase::{phase_planes, Phases};
use ptero_simd::{Parallel, Serial, SlotArena};

use crate::depthwise::depthwise;
use crate::driver::{
    gemm_out, gemm_shifted, scratch_floats, with_scratch, COut, Shifted, SyncPtr, Wrap, MAX_TAPS,
};
use crate::{nhwc, nhwc_dw, pixel_rows, winograd, winograd_rows};
use crate::{Activation, Bias, Epilogue, GemmError, Lhs, MatRef, PackedA, PackedB, PackedBRef};

/// f32 of column buffer a task fills at most (2 MiB): pixels per block are chosen so
/// `K × pixels` fits.
const COL_FLOATS: usize = 1 << 19;
/// Fewest output pixels gathered per block.
const MIN_COLS: usize = 32;

/// f32 of scratch one thread needs for [`conv2d`]: a column block plus GEMM packing.
pub fn conv_scratch_floats() -> usize {
    (COL_FLOATS + scratch_floats()).max(nhwc::nhwc_scratch_floats())
}

/// Geometry of a 2-d convolution (a 1-d one has `ih = oh = kh = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub groups: usize,
    pub ih: usize,
    pub iw: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
}

impl Conv2d {
    /// The geometry [`PackedConv::new`] needs: channels, groups and kernel size (the
    /// spatial sizes are those of a 1 × 1 image).
    pub fn for_weights(cin: usize, cout: usize, groups: usize, kh: usize, kw: usize) -> Conv2d {
        Conv2d {
            n: 1,
            cin,
            cout,
            groups,
            ih: 1,
            iw: 1,
            oh: 1,
            ow: 1,
            kh,
            kw,
            stride: [1, 1],
            pad: [0, 0],
            dilation: [1, 1],
        }
    }

    fn cin_g(&self) -> usize {
        self.cin / self.groups
    }
    fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    /// Inner dimension of each group's product.
    fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    pub(crate) fn is_depthwise(&self) -> bool {
        self.groups == self.cin && self.cout == self.cin && self.groups > 1
    }
    pub(crate) fn check(&self) -> Result<(), GemmError> {
        let bad = |what| {
            Err(GemmError::Shape {
                what,
                expected: 0,
                found: 0,
            })
        };
        if self.groups == 0
            || !self.cin.is_multiple_of(self.groups)
            || !self.cout.is_multiple_of(self.groups)
        {
            return bad("convolution groups must divide the channels");
        }
        if self.stride.contains(&0) || self.dilation.contains(&0) {
            return bad("convolution strides and dilations must be positive");
        }
        // Every coordinate the loops form must fit an isize.
        for q in 0..2 {
            let (o, k) = if q == 0 {
                (self.oh, self.kh)
            } else {
                (self.ow, self.kw)
            };
            let far = o
                .checked_mul(self.stride[q])
                .and_then(|x| x.checked_add(k.checked_mul(self.dilation[q])?))
                .and_then(|x| x.checked_add(self.pad[q]))
                .and_then(|x| x.checked_add(self.ih.max(self.iw)));
            if far.is_none_or(|f| f > isize::MAX as usize / 2) {
                return Err(GemmError::Overflow);
            }
        }
        Ok(())
    }
}

/// A 4-d f32 tensor indexed `(n, c, h, w)`: element at `n*s[0] + c*s[1] + h*s[2] + w*s[3]`.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 4],
}

/// A writable [`Image`].
#[derive(Debug)]
pub struct ImageMut<'a> {
    pub data: &'a mut [f32],
    pub strides: [usize; 4],
}

fn extent(sizes: [usize; 4], st: [usize; 4]) -> Option<usize> {
    if sizes.contains(&0) {
        return Some(0);
    }
    let mut e = 1usize;
    for (n, s) in sizes.iter().zip(st) {
        e = e.checked_add((n - 1).checked_mul(s)?)?;
    }
    Some(e)
}

pub(crate) fn check_extent(
    what: &'static str,
    len: usize,
    sizes: [usize; 4],
    st: [usize; 4],
) -> Result<(), GemmError> {
    let need = extent(sizes, st).ok_or(GemmError::Overflow)?;
    if need > len {
        return Err(GemmError::OutOfBounds {
            operand: what,
            needed: need,
            len,
        });
    }
    Ok(())
}

/// An output image of `sizes`: inside its slice, and no two elements sharing memory.
pub(crate) fn check_output(out: &ImageMut<'_>, sizes: [usize; 4]) -> Result<(), GemmError> {
    check_extent("output", out.data.len(), sizes, out.strides)?;
    let mut dims: [(usize, usize); 4] = core::array::from_fn(|d| (sizes[d], out.strides[d]));
    if !crate::batch::no_overlap(&mut dims) {
        return Err(GemmError::Aliasing);
    }
    Ok(())
}

/// Weights `[cout, cin / groups, kh, kw]` packed once, in the layout of the kernel that
/// will run them.
#[derive(Clone, Debug)]
pub struct PackedConv {
    pub(crate) kind: Packing,
    geo: Conv2d,
}

/// The layouts of [`PackedConv`].
#[derive(Clone, Debug)]
pub(crate) enum Packing {
    /// Per group, as the left operand (channels-first images).
    Planar(Vec<PackedA>),
    /// Per group, `Wᵀ` as the right operand (channels-last images).
    ChannelsLast(Vec<PackedB>),
    /// A depthwise filter `[tap][channel]` (channels-last images).
    Depthwise(Vec<f32>),
    /// Winograd's transforms of 3×3 filters, one left operand per point.
    Winograd(Vec<PackedA>),
    /// Winograd's transforms, one right operand per point ([`crate::winograd_rows`]).
    WinogradRows(Vec<PackedB>),
    /// `Wᵀ` for output pixels as rows ([`crate::pixel_rows`]), one group.
    PixelRows(PackedB),
}

impl PackedConv {
    /// Packs `w` for `geo` (any strides).
    pub fn new(geo: &Conv2d, w: Image<'_>) -> Result<PackedConv, GemmError> {
        geo.check()?;
        let (cout_g, cin_g) = (geo.cout_g(), geo.cin_g());
        check_extent(
            "weight",
            w.data.len(),
            [geo.cout, cin_g, geo.kh, geo.kw],
            w.strides,
        )?;
        let k = geo.k();
        let mut flat = Vec::new();
        flat.try_reserve_exact(cout_g.checked_mul(k).ok_or(GemmError::Overflow)?)
            .map_err(|_| GemmError::OutOfMemory {
                bytes: cout_g.saturating_mul(k).saturating_mul(4),
            })?;
        let mut groups = Vec::with_capacity(geo.groups);
        let [s0, s1, s2, s3] = w.strides;
        for g in 0..geo.groups {
            flat.clear();
            for oc in g * cout_g..(g + 1) * cout_g {
                for ic in 0..cin_g {
                    for ky in 0..geo.kh {
                        for kx in 0..geo.kw {
                            flat.push(w.data[oc * s0 + ic * s1 + ky * s2 + kx * s3]);
                        }
                    }
                }
            }
            groups.push(PackedA::new(MatRef::row_major(&flat, cout_g, k)?)?);
        }
        Ok(PackedConv {
            kind: Packing::Planar(groups),
            geo: *geo,
        })
    }

    /// Packs 3×3 filters (`geo` of stride and dilation 1, one group) for Winograd's
    /// F(2×2, 3×3), which [`conv2d`] then uses on any image layout: 16/9 of the
    /// weights' size, for 4/9 of a direct convolution's multiplications. See
    /// [`PackedConv::winograd_pays`] for when it is worth it; images of few tiles get the
    /// layout of [`PackedConv::winograd_rows`].
    pub fn winograd(geo: &Conv2d, w: Image<'_>) -> Result<PackedConv, GemmError> {
        let tiles = geo.oh.div_ceil(2).saturating_mul(geo.ow.div_ceil(2));
        let v = tiles
            .saturating_mul(geo.cin)
            .saturating_mul(winograd::POINTS);
        if v <= winograd::ROWS_MAX_FLOATS {
            PackedConv::winograd_rows(geo, w)
        } else {
            PackedConv::winograd_columns(geo, w)
        }
    }

    /// Packs 3×3 filters like [`PackedConv::winograd`], with output tiles as the GEMM's
    /// columns: the layout for large images.
    pub fn winograd_columns(geo: &Conv2d, w: Image<'_>) -> Result<PackedConv, GemmError> {
        winograd_check(geo, w)?;
        Ok(PackedConv {
            kind: Packing::Winograd(winograd::pack(ptero_simd::level(), geo, w)?),
            geo: *geo,
        })
    }

    /// Packs 3×3 filters like [`PackedConv::winograd`], with output tiles as the GEMM's
    /// rows ([`crate::winograd_rows`]): the layout for small images.
    pub fn winograd_rows(geo: &Conv2d, w: Image<'_>) -> Result<PackedConv, GemmError> {
        winograd_check(geo, w)?;
        Ok(PackedConv {
            kind: Packing::WinogradRows(winograd_rows::pack(ptero_simd::level(), geo, w)?),
            geo: *geo,
        })
    }

    /// True when `geo` (with its image sizes) runs faster with [`PackedConv::winograd`]
    /// weights than with [`PackedConv::new`] ones: a 3×3 filter of stride 1 over enough
    /// channels and pixels, whose padded input fits a slot of [`conv_scratch_floats`].
    pub fn winograd_pays(geo: &Conv2d) -> bool {
        // Saturating: a hostile geometry must answer false, not overflow.
        let tiles = geo.oh.div_ceil(2).saturating_mul(geo.ow.div_ceil(2));
        let side = |i: usize, p: usize| i.saturating_add(p.saturating_mul(2)).saturating_add(1);
        let planes = side(geo.ih, geo.pad[0]).saturating_mul(side(geo.iw, geo.pad[1]));
        winograd::applies(geo)
            && geo.check().is_ok()
            && geo.cin >= winograd::MIN_CHANNELS
            && geo.cout >= winograd::MIN_CHANNELS
            && tiles >= winograd::MIN_TILES
            && geo.cin.saturating_mul(planes) <= conv_scratch_floats()
    }

    /// Packs `w` (one group) for channels-first images with output pixels as the GEMM's
    /// rows ([`crate::pixel_rows`]): small images with many channels.
    pub fn pixel_rows(geo: &Conv2d, w: Image<'_>) -> Result<PackedConv, GemmError> {
        geo.check()?;
        if !pixel_rows::applies(geo) {
            return Err(GemmError::Shape {
                what: "convolution with pixels as rows (groups)",
                expected: 1,
                found: geo.groups,
            });
        }
        check_extent(
            "weight",
            w.data.len(),
            [geo.cout, geo.cin, geo.kh, geo.kw],
            w.strides,
        )?;
        Ok(PackedConv {
            kind: Packing::PixelRows(pixel_rows::pack(ptero_simd::level(), geo, w)?),
            geo: *geo,
        })
    }

    /// True when `geo` (with its image sizes) runs faster with [`PackedConv::pixel_rows`]
    /// weights than with [`PackedConv::new`] ones (and Winograd does not pay): a filter
    /// of several taps over enough channels, on an image whose padded input fits in L2.
    pub fn pixel_rows_pays(geo: &Conv2d) -> bool {
        let ph = Phases {
            ih: geo.ih,
            iw: geo.iw,
            pad: geo.pad,
            stride: geo.stride,
        };
        pixel_rows::applies(geo)
            && geo.check().is_ok()
            && geo.kh.saturating_mul(geo.kw) > 1
            && geo.cin >= pixel_rows::MIN_CHANNELS
            && geo.cout >= pixel_rows::MIN_CHANNELS
            && !PackedConv::winograd_pays(geo)
            && ph
                .floats()
                .and_then(|f| f.checked_mul(geo.cin))
                .is_some_and(|f| f <= pixel_rows::MAX_PLANES)
    }

    /// Packs `w` for channels-last images (outputs whose channels are adjacent): the
    /// layout [`conv2d`] uses when the output's channel stride is 1.
    pub fn channels_last(geo: &Conv2d, w: Image<'_>) -> Result<PackedConv, GemmError> {
        geo.check()?;
        check_extent(
            "weight",
            w.data.len(),
            [geo.cout, geo.cin_g(), geo.kh, geo.kw],
            w.strides,
        )?;
        if geo.is_depthwise() {
            let len = geo.kh * geo.kw * geo.cout;
            let mut dw = Vec::new();
            dw.try_reserve_exact(len)
                .map_err(|_| GemmError::OutOfMemory { bytes: len * 4 })?;
            dw.resize(len, 0.0);
            nhwc_dw::pack_depthwise(geo, w, &mut dw);
            return Ok(PackedConv {
                kind: Packing::Depthwise(dw),
                geo: *geo,
            });
        }
        Ok(PackedConv {
            kind: Packing::ChannelsLast(nhwc::pack_weights(geo, w)?),
            geo: *geo,
        })
    }

    /// True when packed by [`PackedConv::channels_last`].
    pub fn is_channels_last(&self) -> bool {
        matches!(self.kind, Packing::ChannelsLast(_) | Packing::Depthwise(_))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.kind {
            Packing::Planar(a) | Packing::Winograd(a) => a.iter().map(|g| g.bytes()).sum(),
            Packing::ChannelsLast(b) | Packing::WinogradRows(b) => {
                b.iter().map(|g| g.bytes()).sum()
            }
            Packing::Depthwise(d) => d.len() * 4,
            Packing::PixelRows(b) => b.bytes(),
        }
    }

    /// True when packed by [`PackedConv::winograd`].
    pub fn is_winograd(&self) -> bool {
        matches!(self.kind, Packing::Winograd(_) | Packing::WinogradRows(_))
    }
}

/// The weights of [`conv2d`].
#[derive(Clone, Copy, Debug)]
pub enum ConvWeights<'a> {
    Packed(&'a PackedConv),
    /// `[cout, cin / groups, kh, kw]`.
    Image(Image<'a>),
}

/// `out = act(conv(x, w) + bias)`, NCHW-indexed views of any strides.
///
/// Unpacked weights that cannot be read as a matrix (`[cout, K]` with a constant stride
/// along `K`) are packed on the fly, which allocates: pack constant weights once with
/// [`PackedConv::new`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    geo: &Conv2d,
    x: Image<'_>,
    w: ConvWeights<'_>,
    bias: Option<&[f32]>,
    out: ImageMut<'_>,
    act: Activation,
) -> Result<(), GemmError> {
    geo.check()?;
    let g = *geo;
    check_extent("input", x.data.len(), [g.n, g.cin, g.ih, g.iw], x.strides)?;
    check_output(&out, [g.n, g.cout, g.oh, g.ow])?;
    if let Some(b) = bias {
        if b.len() < g.cout {
            return Err(GemmError::Shape {
                what: "convolution bias length",
                expected: g.cout,
                found: b.len(),
            });
        }
    }
    if let ConvWeights::Packed(p) = w {
        if p.geo.cout != g.cout
            || p.geo.cin != g.cin
            || p.geo.groups != g.groups
            || p.geo.kh != g.kh
            || p.geo.kw != g.kw
        {
            return Err(GemmError::Shape {
                what: "packed convolution weights (geometry)",
                expected: g.cout,
                found: p.geo.cout,
            });
        }
    }
    if g.n == 0 || g.cout == 0 || g.oh == 0 || g.ow == 0 {
        return Ok(());
    }
    let optr = SyncPtr(out.data.as_mut_ptr());
    let os = out.strides;
    if let (true, ConvWeights::Image(wi)) = (g.is_depthwise(), w) {
        check_extent("weight", wi.data.len(), [g.cout, 1, g.kh, g.kw], wi.strides)?;
        if nhwc_dw::depthwise_applies(&g, x.strides, os) {
            // The filter laid out `[tap][channel]` once per call, shared by the tasks.
            let need = g.kh * g.kw * g.cout;
            let run = |buf: &mut [f32]| {
                nhwc_dw::pack_depthwise(&g, wi, buf);
                // SAFETY: extents and the output's layout were checked above; `out` is
                // borrowed mutably for the call.
                unsafe { nhwc_dw::depthwise(par, &g, x, buf, bias, optr, os, act) };
            };
            return with_scratch(arena, need, &run);
        }
        // SAFETY: as above.
        unsafe { depthwise(par, arena, &g, x, wi, bias, optr, os, act) };
        return Ok(());
    }
    match w {
        ConvWeights::Packed(PackedConv {
            kind: Packing::Depthwise(dw),
            ..
        }) => {
            if dw.len() != g.kh * g.kw * g.cout {
                return Err(GemmError::Shape {
                    what: "depthwise weights packed for channels-last images (length)",
                    expected: g.kh * g.kw * g.cout,
                    found: dw.len(),
                });
            }
            if nhwc_dw::depthwise_applies(&g, x.strides, os) {
                // SAFETY: as above; the filter holds kh · kw · cout values.
                unsafe { nhwc_dw::depthwise(par, &g, x, dw, bias, optr, os, act) };
            } else {
                // The same filter seen as `[cout, 1, kh, kw]`, for the planar kernel.
                let wi = Image {
                    data: dw,
                    strides: [1, 0, g.kw * g.cout, g.cout],
                };
                // SAFETY: as above.
                unsafe { depthwise(par, arena, &g, x, wi, bias, optr, os, act) };
            }
            Ok(())
        }
        ConvWeights::Packed(p) => match &p.kind {
            // SAFETY (every arm): as above.
            Packing::PixelRows(b) => unsafe {
                pixel_rows::conv(par, arena, &g, x, b, bias, optr, os, act)
            },
            Packing::Winograd(u) => unsafe {
                winograd::conv(par, arena, &g, x, u, bias, optr, os, act)
            },
            Packing::WinogradRows(u) => unsafe {
                winograd_rows::conv(par, arena, &g, x, u, bias, optr, os, act)
            },
            Packing::ChannelsLast(cols) => unsafe {
                nhwc::conv(par, arena, &g, x, cols, bias, optr, os, act)
            },
            Packing::Planar(groups) => unsafe {
                grouped(par, arena, &g, x, groups, bias, optr, os, act)
            },
            Packing::Depthwise(_) => unreachable!("matched above"),
        },
        ConvWeights::Image(wi) if nhwc::channels_last(&g, os) => {
            let cols = nhwc::pack_weights(&g, wi)?;
            // SAFETY: as above.
            unsafe { nhwc::conv(par, arena, &g, x, &cols, bias, optr, os, act) }
        }
        ConvWeights::Image(wi) => {
            let packed = PackedConv::new(&g, wi)?;
            let Packing::Planar(groups) = &packed.kind else {
                unreachable!("PackedConv::new packs planar weights")
            };
            // SAFETY: as above.
            unsafe { grouped(par, arena, &g, x, groups, bias, optr, os, act) }
        }
    }
}

/// Copies image `n` of `x` (every channel) into `buf` padded with zeros and split into
/// the stride phases of `ph`, `ch` floats per channel, channels split over threads;
/// phases for which `used(py, px)` is false are not filled.
pub(crate) fn fill_phases(
    par: &dyn Parallel,
    x: Image<'_>,
    n: usize,
    ph: &Phases,
    used: &(dyn Fn(usize, usize) -> bool + Sync),
    buf: &mut [f32],
    ch: usize,
) {
    let xs = x.strides;
    ptero_simd::for_each_chunk_by(par, buf, ch, &|r, chunk| {
        for (i, dst) in chunk.chunks_exact_mut(ch).enumerate() {
            let c = r.start / ch + i;
            phase_planes(
                x.data,
                n * xs[0] + c * xs[1],
                (xs[2], xs[3]),
                ph,
                0.0,
                used,
                dst,
            );
        }
    });
}

/// Errors unless `geo` suits Winograd's F(2×2, 3×3) and `w` holds its filters.
fn winograd_check(geo: &Conv2d, w: Image<'_>) -> Result<(), GemmError> {
    geo.check()?;
    if !winograd::applies(geo) {
        return Err(GemmError::Shape {
            what: "Winograd convolution (3x3, stride 1, one group) kernel height",
            expected: 3,
            found: geo.kh,
        });
    }
    check_extent("weight", w.data.len(), [geo.cout, geo.cin, 3, 3], w.strides)
}

/// Group `grp`'s epilogue: its slice of the bias per output channel, and the activation.
fn group_epilogue(
    bias: Option<&[f32]>,
    grp: usize,
    cout_g: usize,
    act: Activation,
) -> Epilogue<'_> {
    Epilogue {
        alpha: 1.0,
        beta: if bias.is_some() { 1.0 } else { 0.0 },
        bias: match bias {
            Some(b) => Bias::PerRow(&b[grp * cout_g..(grp + 1) * cout_g]),
            None => Bias::None,
        },
        act,
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn grouped(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    w: &[PackedA],
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Result<(), GemmError> {
    let (cin_g, cout_g, k) = (g.cin_g(), g.cout_g(), g.k());
    if w.len() != g.groups || w.iter().any(|p| p.m != cout_g || p.k != k) {
        return Err(GemmError::Shape {
            what: "packed convolution weights (groups)",
            expected: g.groups,
            found: w.len(),
        });
    }
    let pixels = g.oh * g.ow;
    let xs = x.strides;
    let out_linear = g.oh == 1 || os[2] == g.ow * os[3];
    let epi_for = |grp: usize| group_epilogue(bias, grp, cout_g, act);
    // SAFETY: forwarded from the caller.
    if let Some(r) = unsafe { shifted(par, arena, g, x, w, bias, out, os, act) } {
        return r;
    }
    let pointwise = g.kh == 1
        && g.kw == 1
        && g.stride == [1, 1]
        && g.pad == [0, 0]
        && out_linear
        && (g.ih == 1 || xs[2] == g.iw * xs[3]);
    if pointwise {
        for n in 0..g.n {
            for (grp, wg) in w.iter().enumerate().take(g.groups) {
                let xoff = n * xs[0] + grp * cin_g * xs[1];
                let b = MatRef {
                    data: &x.data[xoff..],
                    rows: cin_g,
                    cols: pixels,
                    rs: xs[1],
                    cs: xs[3],
                };
                let c = COut {
                    // SAFETY: (n, grp * cout_g, 0, 0) is inside the checked output.
                    ptr: SyncPtr(unsafe { out.get().add(n * os[0] + grp * cout_g * os[1]) }),
                    rows: cout_g,
                    cols: pixels,
                    rs: os[1],
                    cs: os[3],
                };
                // SAFETY: this group's outputs lie inside the checked, non-aliasing output.
                unsafe {
                    gemm_out(
                        par,
                        arena,
                        None,
                        Lhs::Packed(wg),
                        crate::Rhs::Mat(b),
                        c,
                        &epi_for(grp),
                    )?
                };
            }
        }
        return Ok(());
    }
    // Blocks of output pixels (within one row unless the output is pixel-linear), gathered
    // straight into the GEMM's packed layout for the right operand.
    let level = w[0].level();
    let nr = PackedBRef::panel_width(level);
    let span = if out_linear { pixels } else { g.ow };
    let cols = (COL_FLOATS / k.max(1)).max(MIN_COLS) / MIN_COLS * MIN_COLS;
    // Enough blocks for every thread to have two, when the image allows.
    let spread = (g.n * g.groups * pixels)
        .div_ceil(2 * par.threads().max(1))
        .div_ceil(MIN_COLS)
        * MIN_COLS;
    let cols = cols.min(spread.max(MIN_COLS)).min(span);
    let blocks_per_span = span.div_ceil(cols);
    let spans = pixels / span;
    let per_image = spans * blocks_per_span;
    let tasks = g.n * g.groups * per_image;
    let need = cols.div_ceil(nr) * nr * k;
    let err = crate::batch::FirstError::new();
    let task = |t: usize| {
        let n = t / (g.groups * per_image);
        let grp = t / per_image % g.groups;
        let r = t % per_image;
        let (sp, blk) = (r / blocks_per_span, r % blocks_per_span);
        let p0 = sp * span + blk * cols;
        let nc = cols.min(sp * span + span - p0);
        let run = |buf: &mut [f32]| {
            let col = &mut buf[..nc.div_ceil(nr) * nr * k];
            im2col_packed(g, x, n, grp, p0, nc, nr, col);
            let (oy, ox) = (p0 / g.ow, p0 % g.ow);
            let c = COut {
                // SAFETY: pixel (oy, ox) of channel grp * cout_g of image n is inside the
                // checked output.
                ptr: SyncPtr(unsafe {
                    out.get()
                        .add(n * os[0] + grp * cout_g * os[1] + oy * os[2] + ox * os[3])
                }),
                rows: cout_g,
                cols: nc,
                rs: os[1],
                cs: os[3],
            };
            let r = PackedBRef::new(level, col, k, nc).and_then(|b| {
                // SAFETY: this block's outputs (its pixels, this group's channels) are
                // written by this task only, inside the checked, non-aliasing output.
                unsafe {
                    gemm_out(
                        &Serial,
                        None,
                        None,
                        Lhs::Packed(&w[grp]),
                        crate::Rhs::Packed(b),
                        c,
                        &epi_for(grp),
                    )
                }
            });
            if let Err(e) = r {
                err.set(e);
            }
        };
        if let Err(e) = with_scratch(arena, need, &run) {
            err.set(e);
        }
    };
    par.run(tasks, &task);
    match err.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Gathers the patches of `nc` output pixels from `p0` (row-major over `oh × ow`) of image
/// `n`, group `grp`, into `col` in the packed layout: panels of `nr` pixels, each `K`
/// rows of `nr` values (padding and the columns past `nc` read as 0).
#[allow(clippy::too_many_arguments)]
fn im2col_packed(
    g: &Conv2d,
    x: Image<'_>,
    n: usize,
    grp: usize,
    p0: usize,
    nc: usize,
    nr: usize,
    col: &mut [f32],
) {
    let xs = x.strides;
    let k = g.k();
    let base = n * xs[0] + grp * g.cin_g() * xs[1];
    if !nc.is_multiple_of(nr) {
        // The last panel's unused columns must be zero.
        let last = nc / nr;
        col[last * nr * k..].fill(0.0);
    }
    let mut row = 0;
    for ic in 0..g.cin_g() {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let kidx = row;
                row += 1;
                let offy = (ky * g.dilation[0]) as isize - g.pad[0] as isize;
                let offx = (kx * g.dilation[1]) as isize - g.pad[1] as isize;
                let sx = g.stride[1] as isize;
                let mut j = 0;
                while j < nc {
                    let p = p0 + j;
                    let (oy, ox) = (p / g.ow, p % g.ow);
                    let run = (g.ow - ox).min(nc - j);
                    let iy = (oy * g.stride[0]) as isize + offy;
                    let inside = iy >= 0 && iy < g.ih as isize;
                    let rbase = if inside {
                        base + ic * xs[1] + iy as usize * xs[2]
                    } else {
                        0
                    };
                    // Panel and lane of pixel j, stepped without a division per value.
                    let (mut q, mut lane) = (j / nr, j % nr);
                    if inside && sx == 1 && xs[3] == 1 {
                        // Unit stride: the valid pixels read a contiguous run of the input
                        // row, copied panel piece by panel piece; the padding is zeros.
                        let ix0 = ox as isize + offx;
                        let lo = (-ix0).clamp(0, run as isize) as usize;
                        let hi = (g.iw as isize - ix0).clamp(lo as isize, run as isize) as usize;
                        let mut t = 0;
                        while t < run {
                            let piece = (nr - lane).min(run - t);
                            let dst = &mut col[q * nr * k + kidx * nr + lane..][..piece];
                            // Part of [t, t + piece) inside [lo, hi).
                            let a0 = t.max(lo).min(t + piece);
                            let a1 = (t + piece).min(hi).max(a0);
                            dst[..a0 - t].fill(0.0);
                            if a1 > a0 {
                                let src = rbase + (ix0 + a0 as isize) as usize;
                                dst[a0 - t..a1 - t].copy_from_slice(&x.data[src..src + (a1 - a0)]);
                            }
                            dst[a1 - t..].fill(0.0);
                            t += piece;
                            lane += piece;
                            if lane == nr {
                                lane = 0;
                                q += 1;
                            }
                        }
                        j += run;
                        continue;
                    }
                    // Any stride: the same pieces, gathered with the stride.
                    let ix0 = ox as isize * sx + offx;
                    let (lo, hi) = if inside {
                        // t with 0 <= ix0 + t * sx < iw.
                        let lo = if ix0 < 0 { (-ix0 + sx - 1) / sx } else { 0 };
                        let hi = (g.iw as isize - ix0 + sx - 1).div_euclid(sx);
                        let lo = lo.clamp(0, run as isize) as usize;
                        (lo, hi.clamp(lo as isize, run as isize) as usize)
                    } else {
                        (0, 0)
                    };
                    let mut t = 0;
                    while t < run {
                        let piece = (nr - lane).min(run - t);
                        let dst = &mut col[q * nr * k + kidx * nr + lane..][..piece];
                        let a0 = t.max(lo).min(t + piece);
                        let a1 = (t + piece).min(hi).max(a0);
                        dst[..a0 - t].fill(0.0);
                        for (d, tt) in dst[a0 - t..a1 - t].iter_mut().zip(a0..a1) {
                            *d = x.data[rbase + (ix0 + tt as isize * sx) as usize * xs[3]];
                        }
                        dst[a1 - t..].fill(0.0);
                        t += piece;
                        lane += piece;
                        if lane == nr {
                            lane = 0;
                            q += 1;
                        }
                    }
                    j += run;
                }
            }
        }
    }
}

/// Convolution as a GEMM reading its input in place: B's row for input channel `c` and
/// tap `(ky, kx)` is the image shifted by the tap, so nothing is gathered per output
/// pixel. The input is used as it is for unit stride without padding; otherwise it is
/// first copied into one slot of the arena, padded with zeros and split into stride phases
/// (`x[c, qy·sh + py, qx·sw + px]` at phase `(py, px)`, row `qy`, column `qx`). Output
/// pixels then sit `width` apart per row, the columns past `ow` being computed and
/// dropped. `None` when the taps or the copy do not fit.
///
/// # Safety
/// As [`conv2d`]'s output: valid, non-aliasing and exclusive.
#[allow(clippy::too_many_arguments)]
unsafe fn shifted(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    w: &[PackedA],
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Option<Result<(), GemmError>> {
    let taps = g.kh * g.kw;
    let xs = x.strides;
    if taps > MAX_TAPS || g.oh == 0 || g.ow == 0 {
        return None;
    }
    let (cin_g, cout_g) = (g.cin_g(), g.cout_g());
    let (sh, sw, dh, dw) = (g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]);
    let mut tapoff = [0usize; MAX_TAPS];
    let epi = |grp: usize| group_epilogue(bias, grp, cout_g, act);
    // One image, every group, from `data` laid out with channels `ch` apart.
    let run = |n: usize, data: &[f32], ch: usize, width: usize, tapoff: &[usize]| {
        let cols = (g.oh - 1) * width + g.ow;
        let linear = width == g.ow && os[2] == g.ow * os[3];
        let wrap = Wrap {
            width: if linear { cols } else { width },
            valid: if linear { cols } else { g.ow },
            row_stride: os[2],
        };
        for grp in 0..g.groups {
            let b = Shifted {
                data: &data[grp * cin_g * ch..],
                ch,
                tapoff,
                channels: cin_g,
                n: cols,
            };
            let c = COut {
                // SAFETY: (n, grp * cout_g, 0, 0) is inside the checked output.
                ptr: SyncPtr(unsafe { out.get().add(n * os[0] + grp * cout_g * os[1]) }),
                rows: cout_g,
                cols,
                rs: os[1],
                cs: os[3],
            };
            // SAFETY: pixel (y, x) < (oh, ow) of every channel of this group is inside the
            // checked, non-aliasing output, exclusive to this call.
            unsafe { gemm_shifted(par, &w[grp], b, c, wrap, &epi(grp))? };
        }
        Ok(())
    };
    if g.stride == [1, 1] && g.pad == [0, 0] && xs[3] == 1 && xs[2] >= g.iw {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                tapoff[ky * g.kw + kx] = ky * dh * xs[2] + kx * dw;
            }
        }
        let r =
            (0..g.n).try_for_each(|n| run(n, &x.data[n * xs[0]..], xs[1], xs[2], &tapoff[..taps]));
        return Some(r);
    }
    let ph = Phases {
        ih: g.ih,
        iw: g.iw,
        pad: g.pad,
        stride: g.stride,
    };
    let (hq, wq) = ph.dims();
    let plane = hq * wq;
    let ch = ph.floats()?;
    let total = g.cin.checked_mul(ch)?;
    // Phases no tap reads (a strided 1×1 reads one of them) are not filled.
    let used = |py: usize, px: usize| {
        (0..g.kh).any(|ky| ky * dh % sh == py) && (0..g.kw).any(|kx| kx * dw % sw == px)
    };
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let (y, xx) = (ky * dh, kx * dw);
            tapoff[ky * g.kw + kx] = (y % sh * sw + xx % sw) * plane + y / sh * wq + xx / sw;
        }
    }
    let arena = arena?;
    arena.with(total, |buf| {
        let buf = &mut buf[..total];
        for n in 0..g.n {
            fill_phases(par, x, n, &ph, &used, buf, ch);
            run(n, buf, ch, wq, &tapoff[..taps])?;
        }
        Ok(())
    })
}
