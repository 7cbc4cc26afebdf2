//! Channels-last (NHWC) convolution. Output pixels are the GEMM's rows and channels its
//! columns, against weights packed once as `Wᵀ` (`K = taps × cin / groups` rows ordered
//! tap-major, so each tap's channels are one contiguous run of the input):
//! - a pointwise convolution multiplies the activations in place;
//! - any other gathers a block of pixels' patches into scratch first (whole channel runs
//!   per tap), one task per block of pixels and of output channels, or once per image
//!   when the image is small;
//! - a few input channels (a first layer) run the direct kernel of `stem.rs`;
//! - depthwise convolutions are in `nhwc_dw.rs`.

use alloc::vec::Vec;

use ptero_simd::{dispatch_at, split_count, split_range, Parallel, Serial, SlotArena};

use crate::conv::{Conv2d, Image};
use crate::driver::{gemm_out, scratch_floats, with_scratch, COut, SyncPtr};
use crate::stem::{stem_vectors, Stem, StemN};
use crate::{Activation, Bias, Epilogue, GemmError, Lhs, MatRef, PackedB, PackedBRef, Rhs};

/// f32 of patches a task gathers at most (1 MiB, about an L2).
const ROW_FLOATS: usize = 1 << 18;

/// Scratch one thread needs for [`conv`]: a block of patches plus GEMM packing.
pub(crate) fn nhwc_scratch_floats() -> usize {
    ROW_FLOATS + scratch_floats()
}

/// True when the channels of an output pixel are adjacent: the NHWC kernels apply.
pub(crate) fn channels_last(g: &Conv2d, os: [usize; 4]) -> bool {
    g.cout > 1 && os[1] == 1 && (g.oh * g.ow <= 1 || os[3] >= g.cout || os[2] >= g.cout)
}

/// Packs `w` (`[cout, cin / groups, kh, kw]`, any strides) per group as `Wᵀ`:
/// `[kh · kw · cin_g, cout_g]`, row `(ky · kw + kx) · cin_g + ic`.
pub(crate) fn pack_weights(g: &Conv2d, w: Image<'_>) -> Result<Vec<PackedB>, GemmError> {
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let k = cin_g * g.kh * g.kw;
    let len = k.checked_mul(cout_g).ok_or(GemmError::Overflow)?;
    let mut flat = Vec::new();
    flat.try_reserve_exact(len)
        .map_err(|_| GemmError::OutOfMemory {
            bytes: len.saturating_mul(4),
        })?;
    flat.resize(len, 0.0);
    let [s0, s1, s2, s3] = w.strides;
    let mut out = Vec::with_capacity(g.groups);
    for grp in 0..g.groups {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                for ic in 0..cin_g {
                    let row = ((ky * g.kw + kx) * cin_g + ic) * cout_g;
                    for oc in 0..cout_g {
                        flat[row + oc] =
                            w.data[(grp * cout_g + oc) * s0 + ic * s1 + ky * s2 + kx * s3];
                    }
                }
            }
        }
        out.push(PackedB::new(MatRef::row_major(&flat, k, cout_g)?)?);
    }
    Ok(out)
}

fn epilogue(bias: Option<&[f32]>, grp: usize, cout_g: usize, act: Activation) -> Epilogue<'_> {
    Epilogue {
        alpha: 1.0,
        beta: if bias.is_some() { 1.0 } else { 0.0 },
        bias: match bias {
            Some(b) => Bias::PerCol(&b[grp * cout_g..(grp + 1) * cout_g]),
            None => Bias::None,
        },
        act,
    }
}

/// `out = act(conv(x, w) + bias)` with output pixels as rows. Any strides are read
/// correctly; channels-last input and output are the fast case.
///
/// # Safety
/// As [`crate::conv2d`]'s output: extents checked, valid, non-aliasing and exclusive.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    x: Image<'_>,
    w: &[PackedB],
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Result<(), GemmError> {
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let k = cin_g * g.kh * g.kw;
    let xs = x.strides;
    if w.len() != g.groups || w.iter().any(|p| p.k != k || p.n != cout_g) {
        return Err(GemmError::Shape {
            what: "channels-last packed weights (K)",
            expected: k,
            found: w.first().map_or(0, |p| p.k),
        });
    }
    if let Some(nv) = stem_vectors(g, w[0].level).filter(|_| os[1] == 1) {
        let level = w[0].level;
        let rows = g.n * g.oh;
        let work = rows * g.ow * k * g.cout;
        let parts = if work < crate::driver::PAR_MIN_MACS {
            1
        } else {
            4 * par.threads()
        };
        let chunks = split_count(rows, parts, 1);
        par.run(chunks, &|t| {
            let op = Stem {
                g,
                x,
                w: &w[0],
                bias,
                rows: split_range(rows, chunks, 1, t),
                out,
                os,
                act,
            };
            match nv {
                1 => dispatch_at(level, StemN::<1, 8>(op)),
                2 => dispatch_at(level, StemN::<2, 8>(op)),
                3 => dispatch_at(level, StemN::<3, 6>(op)),
                4 => dispatch_at(level, StemN::<4, 4>(op)),
                5 => dispatch_at(level, StemN::<5, 2>(op)),
                6 => dispatch_at(level, StemN::<6, 2>(op)),
                7 => dispatch_at(level, StemN::<7, 2>(op)),
                _ => dispatch_at(level, StemN::<8, 2>(op)),
            }
        });
        return Ok(());
    }
    let pixels = g.oh * g.ow;
    let direct = g.kh == 1
        && g.kw == 1
        && g.stride == [1, 1]
        && g.pad == [0, 0]
        && (xs[1] == 1 || cin_g == 1)
        && (g.ih == 1 || xs[2] == g.iw * xs[3])
        && (g.oh == 1 || os[2] == g.ow * os[3]);
    if direct {
        for n in 0..g.n {
            for (grp, wg) in w.iter().enumerate() {
                let a = MatRef {
                    data: &x.data[n * xs[0] + grp * cin_g * xs[1]..],
                    rows: pixels,
                    cols: cin_g,
                    rs: xs[3],
                    cs: xs[1],
                };
                // SAFETY: forwarded from the caller.
                unsafe { image_product(par, arena, g, a, wg, n, grp, bias, out, os, act)? };
            }
        }
        return Ok(());
    }
    // Blocks of pixels (a multiple of the row tile), and blocks of output channels (whole
    // panels) when there are too few pixel blocks for every thread.
    let level = w[0].level;
    let (mr, nr) = crate::kernel::geometry(level);
    let threads = par.threads().max(1);
    let rows = (ROW_FLOATS / k.max(1)).max(mr) / mr * mr;
    let spread = (g.n * g.groups * pixels).div_ceil(2 * threads).div_ceil(mr) * mr;
    let rows = rows.min(spread.max(mr)).min(pixels);
    let pblocks = pixels.div_ceil(rows);
    let images = g.n * g.groups * pblocks;
    let panels = cout_g.div_ceil(nr);
    let cblocks = if images < 2 * threads {
        (2 * threads).div_ceil(images).min(panels)
    } else {
        1
    };
    // Too few pixels for a block per thread (deep layers): each image's patches are
    // gathered once into one slot, and one product over them is split by the driver,
    // instead of every channel block gathering them again.
    let linear_out = g.oh == 1 || os[2] == g.ow * os[3];
    if let (Some(ar), true) = (arena, images < 2 * threads && linear_out) {
        if pixels * k <= ar.slot_len() {
            let r = ar.with(pixels * k, |buf| -> Result<(), GemmError> {
                let col = &mut buf[..pixels * k];
                for n in 0..g.n {
                    for (grp, wg) in w.iter().enumerate() {
                        gather_patches(g, x, n, grp, 0, pixels, col);
                        let a = MatRef {
                            data: col,
                            rows: pixels,
                            cols: k,
                            rs: k,
                            cs: 1,
                        };
                        // SAFETY: forwarded from the caller; the output is pixel-linear.
                        unsafe { image_product(par, arena, g, a, wg, n, grp, bias, out, os, act)? };
                    }
                }
                Ok(())
            });
            if let Some(r) = r {
                return r;
            }
        }
    }
    let tasks = images * cblocks;
    let need = rows * k + scratch_floats();
    let err = crate::batch::FirstError::new();
    let task = |t: usize| {
        let (img, cb) = (t / cblocks, t % cblocks);
        let (n, grp, pb) = (
            img / (g.groups * pblocks),
            img / pblocks % g.groups,
            img % pblocks,
        );
        let p0 = pb * rows;
        let np = rows.min(pixels - p0);
        let pan = split_range(panels, cblocks, 1, cb);
        let (c0, c1) = (pan.start * nr, (pan.end * nr).min(cout_g));
        let run = |buf: &mut [f32]| {
            let (col, rest) = buf.split_at_mut(rows * k);
            let col = &mut col[..np * k];
            gather_patches(g, x, n, grp, p0, np, col);
            let b = &w[grp];
            let packed = PackedBRef {
                data: &b.data[pan.start * nr * k..],
                k,
                n: c1 - c0,
                nr: b.nr,
                level: b.level,
            };
            let (oy, ox) = (p0 / g.ow, p0 % g.ow);
            let e = epilogue(bias, grp, cout_g, act);
            let e = Epilogue {
                bias: match e.bias {
                    Bias::PerCol(bb) => Bias::PerCol(&bb[c0..]),
                    other => other,
                },
                ..e
            };
            let r = if g.oh == 1 || os[2] == g.ow * os[3] || ox + np <= g.ow {
                let c = COut {
                    // SAFETY: pixel (oy, ox), channel grp * cout_g + c0 of image n is
                    // inside the checked output.
                    ptr: SyncPtr(unsafe {
                        out.get()
                            .add(n * os[0] + (grp * cout_g + c0) * os[1] + oy * os[2] + ox * os[3])
                    }),
                    rows: np,
                    cols: c1 - c0,
                    rs: os[3],
                    cs: os[1],
                };
                let a = MatRef {
                    data: col,
                    rows: np,
                    cols: k,
                    rs: k,
                    cs: 1,
                };
                // SAFETY: this block's pixels and channels are written by this task only,
                // inside the checked, non-aliasing output.
                unsafe {
                    gemm_out(
                        &Serial,
                        None,
                        Some(rest),
                        Lhs::Mat(a),
                        Rhs::Packed(packed),
                        c,
                        &e,
                    )
                }
            } else {
                // Pixels that wrap over output rows whose stride is not `ow` pixels: one
                // product per output row.
                let mut r = Ok(());
                let mut j = 0;
                while j < np && r.is_ok() {
                    let p = p0 + j;
                    let (oy, ox) = (p / g.ow, p % g.ow);
                    let len = (g.ow - ox).min(np - j);
                    let c = COut {
                        // SAFETY: as above, for this row's pixels.
                        ptr: SyncPtr(unsafe {
                            out.get().add(
                                n * os[0] + (grp * cout_g + c0) * os[1] + oy * os[2] + ox * os[3],
                            )
                        }),
                        rows: len,
                        cols: c1 - c0,
                        rs: os[3],
                        cs: os[1],
                    };
                    let a = MatRef {
                        data: &col[j * k..],
                        rows: len,
                        cols: k,
                        rs: k,
                        cs: 1,
                    };
                    // SAFETY: as above.
                    r = unsafe {
                        gemm_out(
                            &Serial,
                            None,
                            Some(&mut *rest),
                            Lhs::Mat(a),
                            Rhs::Packed(packed),
                            c,
                            &e,
                        )
                    };
                    j += len;
                }
                r
            };
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

/// `C = act(A · Wᵀ + bias)` for every pixel of image `n`, group `grp`: `a` holds one row
/// per output pixel (the input itself, or its gathered patches).
///
/// # Safety
/// As [`conv`]'s output, whose pixels must be `os[3]` apart (pixel-linear).
#[allow(clippy::too_many_arguments)]
unsafe fn image_product(
    par: &dyn Parallel,
    arena: Option<&SlotArena>,
    g: &Conv2d,
    a: MatRef<'_>,
    w: &PackedB,
    n: usize,
    grp: usize,
    bias: Option<&[f32]>,
    out: SyncPtr,
    os: [usize; 4],
    act: Activation,
) -> Result<(), GemmError> {
    let cout_g = g.cout / g.groups;
    let c = COut {
        // SAFETY: channel grp * cout_g of image n is inside the checked output.
        ptr: SyncPtr(unsafe { out.get().add(n * os[0] + grp * cout_g * os[1]) }),
        rows: g.oh * g.ow,
        cols: cout_g,
        rs: os[3],
        cs: os[1],
    };
    // SAFETY: this image's and group's outputs lie inside the checked, non-aliasing
    // output, exclusive to this call (the caller's contract).
    unsafe {
        gemm_out(
            par,
            arena,
            None,
            Lhs::Mat(a),
            Rhs::Packed(w.view()),
            c,
            &epilogue(bias, grp, cout_g, act),
        )
    }
}

/// Writes the patches of `np` output pixels from `p0` (row-major over `oh × ow`) of image
/// `n`, group `grp`, as rows of `col`: `K` values per pixel, tap-major, padding as 0.
fn gather_patches(
    g: &Conv2d,
    x: Image<'_>,
    n: usize,
    grp: usize,
    p0: usize,
    np: usize,
    col: &mut [f32],
) {
    let xs = x.strides;
    let cin_g = g.cin / g.groups;
    let k = cin_g * g.kh * g.kw;
    let base = n * xs[0] + grp * cin_g * xs[1];
    for (j, row) in col.chunks_exact_mut(k).take(np).enumerate() {
        let p = p0 + j;
        let (oy, ox) = (p / g.ow, p % g.ow);
        for ky in 0..g.kh {
            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad[0] as isize;
            for kx in 0..g.kw {
                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad[1] as isize;
                let dst = &mut row[(ky * g.kw + kx) * cin_g..][..cin_g];
                if iy < 0 || ix < 0 || iy as usize >= g.ih || ix as usize >= g.iw {
                    dst.fill(0.0);
                    continue;
                }
                let at = base + iy as usize * xs[2] + ix as usize * xs[3];
                if xs[1] == 1 && cin_g >= 16 {
                    dst.copy_from_slice(&x.data[at..at + cin_g]);
                } else if xs[1] == 1 {
                    // A few channels (a stem's): element copies beat a call per run.
                    for (d, v) in dst.iter_mut().zip(&x.data[at..at + cin_g]) {
                        *d = *v;
                    }
                } else {
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = x.data[at + c * xs[1]];
                    }
                }
            }
        }
    }
}
