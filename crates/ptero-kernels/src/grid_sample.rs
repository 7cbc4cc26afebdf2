//! `grid_sampler_2d`: samples `[N, C, H, W]` input at the normalized `(x, y)` positions of
//! a `[N, Ho, Wo, 2]` grid, with bilinear, nearest or bicubic interpolation and zeros,
//! border or reflection padding.
//!
//! Coordinate handling follows ATen's `GridSampler.h` (unnormalize, clip / reflect,
//! out-of-range values mapped to -100 so they fall outside). Arithmetic is f64; ATen
//! computes float32 inputs in float32, so results agree to float rounding.

use ptero_core::{Error, KernelArgs, KernelRegistry, Result};

use crate::util::{load_f64, store_f64, FLOAT};

#[derive(Clone, Copy, PartialEq)]
enum Pad {
    Zeros,
    Border,
    Reflection,
}

fn unnormalize(c: f64, size: usize, align: bool) -> f64 {
    let s = size as f64;
    if align {
        (c + 1.0) / 2.0 * (s - 1.0)
    } else {
        ((c + 1.0) * s - 1.0) / 2.0
    }
}

fn clip(c: f64, size: usize) -> f64 {
    // fmin/fmax semantics: NaN becomes the bound it is compared with.
    libm::fmin((size - 1) as f64, libm::fmax(c, 0.0))
}

fn reflect(c: f64, twice_low: i64, twice_high: i64) -> f64 {
    if twice_low == twice_high {
        return 0.0;
    }
    let min = twice_low as f64 / 2.0;
    let span = (twice_high - twice_low) as f64 / 2.0;
    let c = libm::fabs(c - min);
    let extra = libm::fmod(c, span);
    let flips = libm::floor(c / span) as i64;
    if flips % 2 == 0 {
        extra + min
    } else {
        span - extra + min
    }
}

fn compute_coordinates(c: f64, size: usize, pad: Pad, align: bool) -> f64 {
    let c = match pad {
        Pad::Zeros => c,
        Pad::Border => clip(c, size),
        Pad::Reflection => {
            let r = if align {
                reflect(c, 0, 2 * (size as i64 - 1))
            } else {
                reflect(c, -1, 2 * size as i64 - 1)
            };
            clip(r, size)
        }
    };
    if !c.is_finite() || c > (i32::MAX - 1) as f64 || c < i32::MIN as f64 {
        -100.0
    } else {
        c
    }
}

fn cubic_coeffs(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let c1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]
}

/// `input, grid, interpolation_mode, padding_mode, align_corners, *, out`
fn grid_sampler_2d_out(a: &mut KernelArgs<'_>) -> Result<()> {
    a.expect_len(6)?;
    let interp = a.int(2)?;
    let pad = match a.int(3)? {
        0 => Pad::Zeros,
        1 => Pad::Border,
        2 => Pad::Reflection,
        m => {
            return Err(Error::invalid(alloc::format!(
                "grid_sampler_2d: padding_mode must be 0 (zeros), 1 (border) or 2 (reflection), found {m}"
            )))
        }
    };
    if !(0..=2).contains(&interp) {
        return Err(Error::invalid(alloc::format!(
            "grid_sampler_2d: interpolation_mode must be 0 (bilinear), 1 (nearest) or 2 (bicubic), found {interp}"
        )));
    }
    let align = a.bool(4)?;
    let (xm, gm) = (*a.meta(0)?, *a.meta(1)?);
    let t = xm.dtype;
    if !FLOAT.contains(&t) {
        return Err(Error::Dtype {
            arg: 0,
            expected: "a floating dtype".into(),
            found: t,
        });
    }
    for arg in [1, 5] {
        if a.meta(arg)?.dtype != t {
            return Err(Error::Dtype {
                arg,
                expected: t.name().into(),
                found: a.meta(arg)?.dtype,
            });
        }
    }
    let (xs, gs) = (xm.sizes(), gm.sizes());
    if xs.len() != 4 || gs.len() != 4 || gs[0] != xs[0] || gs[3] != 2 || (xs[2] == 0 || xs[3] == 0)
    {
        return Err(Error::shape(alloc::format!(
            "grid_sampler_2d: expected input [N, C, H, W] with H, W > 0 and grid [N, Ho, Wo, 2], found {xs:?} and {gs:?}"
        )));
    }
    let (n, c, h, w, oh, ow) = (xs[0], xs[1], xs[2], xs[3], gs[1], gs[2]);
    a.resize(5, &[n, c, oh, ow])?;
    // Nothing to sample into; the grid's batch and rows may still be huge.
    if a.meta(5)?.numel() == 0 {
        return Ok(());
    }
    let ost = a.meta(5)?.stride_dims();
    let (xst, gst) = (xm.strides(), gm.strides());
    let x = a.tensor(0)?;
    let g = a.tensor(1)?;
    let o = a.out(5)?;
    let ob = &mut *o.bytes;
    let inside = |yi: i64, xi: i64| yi >= 0 && yi < h as i64 && xi >= 0 && xi < w as i64;
    for ni in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let gb = ni * gst[0] + oy * gst[1] + ox * gst[2];
                let gx = load_f64(g.bytes, t, gb);
                let gy = load_f64(g.bytes, t, gb + gst[3]);
                for ci in 0..c {
                    let xb = ni * xst[0] + ci * xst[1];
                    let val = |yi: i64, xi: i64| {
                        if inside(yi, xi) {
                            load_f64(x.bytes, t, xb + yi as usize * xst[2] + xi as usize * xst[3])
                        } else {
                            0.0
                        }
                    };
                    let v = match interp {
                        0 => {
                            let ix = compute_coordinates(unnormalize(gx, w, align), w, pad, align);
                            let iy = compute_coordinates(unnormalize(gy, h, align), h, pad, align);
                            let (x0, y0) = (libm::floor(ix), libm::floor(iy));
                            let (x1, y1) = (x0 + 1.0, y0 + 1.0);
                            let (x0i, y0i) = (x0 as i64, y0 as i64);
                            let (x1i, y1i) = (x0i + 1, y0i + 1);
                            let nw = (x1 - ix) * (y1 - iy);
                            let ne = (ix - x0) * (y1 - iy);
                            let sw = (x1 - ix) * (iy - y0);
                            let se = (ix - x0) * (iy - y0);
                            let mut s = 0.0;
                            for (yy, xx, wt) in [
                                (y0i, x0i, nw),
                                (y0i, x1i, ne),
                                (y1i, x0i, sw),
                                (y1i, x1i, se),
                            ] {
                                if inside(yy, xx) {
                                    s += val(yy, xx) * wt;
                                }
                            }
                            s
                        }
                        1 => {
                            let ix = compute_coordinates(unnormalize(gx, w, align), w, pad, align);
                            let iy = compute_coordinates(unnormalize(gy, h, align), h, pad, align);
                            val(libm::rint(iy) as i64, libm::rint(ix) as i64)
                        }
                        _ => {
                            let ix = unnormalize(gx, w, align);
                            let iy = unnormalize(gy, h, align);
                            let (x0, y0) = (libm::floor(ix), libm::floor(iy));
                            let (cx, cy) = (cubic_coeffs(ix - x0), cubic_coeffs(iy - y0));
                            let bounded = |yy: f64, xx: f64| {
                                let xx = compute_coordinates(xx, w, pad, align);
                                let yy = compute_coordinates(yy, h, pad, align);
                                val(yy as i64, xx as i64)
                            };
                            let mut s = 0.0;
                            for (i, wy) in cy.iter().enumerate() {
                                let yy = y0 - 1.0 + i as f64;
                                let row: f64 = cx
                                    .iter()
                                    .enumerate()
                                    .map(|(j, wx)| bounded(yy, x0 - 1.0 + j as f64) * wx)
                                    .sum();
                                s += row * wy;
                            }
                            s
                        }
                    };
                    store_f64(
                        ob,
                        t,
                        ni * ost[0] + ci * ost[1] + oy * ost[2] + ox * ost[3],
                        v,
                    );
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn register(reg: &mut KernelRegistry) {
    reg.register("aten::grid_sampler_2d.out", grid_sampler_2d_out);
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, run_op, Arg, OwnedTensor};
    use alloc::vec;
    use alloc::vec::Vec;
    use ptero_core::ScalarType::*;

    fn sample(
        x: &OwnedTensor,
        grid: &[f64],
        go: [usize; 2],
        interp: i64,
        pad: i64,
        align: bool,
    ) -> Vec<f64> {
        let n = x.sizes[0];
        let g = OwnedTensor::from_f64(x.dtype, &[n, go[0], go[1], 2], grid);
        let out = run_op(
            "aten::grid_sampler_2d.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(g),
                Arg::Int(interp),
                Arg::Int(pad),
                Arg::Bool(align),
                Arg::Out(x.dtype, vec![n, x.sizes[1], go[0], go[1]]),
            ],
        )
        .unwrap();
        out.tensors[0].to_f64()
    }

    #[test]
    fn modes_and_padding() {
        // 2x2 image [[1, 2], [3, 4]].
        let x = OwnedTensor::from_f64(Float, &[1, 1, 2, 2], &[1., 2., 3., 4.]);
        // Corners with align_corners=True hit pixel centers exactly; (0, 0) is the mean.
        let grid = [-1., -1., 1., -1., -1., 1., 0., 0.];
        assert_close(
            &sample(&x, &grid, [2, 2], 0, 0, true),
            &[1., 2., 3., 2.5],
            1e-6,
            0.0,
        );
        // align_corners=False: (-1, -1) is the outer corner, a quarter of pixel (0, 0).
        assert_close(
            &sample(&x, &grid, [2, 2], 0, 0, false),
            &[0.25, 0.5, 0.75, 2.5],
            1e-6,
            0.0,
        );
        // Border padding clamps to the edge pixel.
        assert_close(
            &sample(&x, &grid, [2, 2], 0, 1, false),
            &[1., 2., 3., 2.5],
            1e-6,
            0.0,
        );
        // Outside the image: zeros -> 0, border -> edge, reflection -> mirrored.
        let far = [3., 0.];
        assert_close(&sample(&x, &far, [1, 1], 0, 0, true), &[0.], 1e-6, 0.0);
        assert_close(&sample(&x, &far, [1, 1], 0, 1, true), &[3.], 1e-6, 0.0);
        // align=True reflection over [0, 1]: x = 2 (unnormalized) reflects to 0; y = 0.5.
        assert_close(&sample(&x, &far, [1, 1], 0, 2, true), &[2.], 1e-6, 0.0);
        // Nearest rounds half to even: (0, 0) with align=True is (0.5, 0.5) -> (0, 0).
        assert_close(
            &sample(&x, &[0., 0., 0.9, -0.9], [1, 2], 1, 0, true),
            &[1., 2.],
            0.0,
            0.0,
        );
        // Bicubic at pixel centers reproduces the pixels; a constant image stays constant.
        let grid = [-1., -1., 1., -1., -1., 1., 1., 1.];
        assert_close(
            &sample(&x, &grid, [2, 2], 2, 1, true),
            &[1., 2., 3., 4.],
            1e-6,
            0.0,
        );
        let ones = OwnedTensor::from_f64(Double, &[1, 1, 3, 3], &[5.; 9]);
        let g2 = [0.3, -0.2, -0.77, 0.5];
        for pad in [1, 2] {
            assert_close(
                &sample(&ones, &g2, [1, 2], 2, pad, false),
                &[5., 5.],
                1e-12,
                0.0,
            );
            assert_close(
                &sample(&ones, &g2, [1, 2], 0, pad, false),
                &[5., 5.],
                1e-12,
                0.0,
            );
        }
        // NaN grid values sample nothing (zeros padding).
        assert_close(
            &sample(&x, &[f64::NAN, 0.], [1, 1], 0, 0, false),
            &[0.],
            0.0,
            0.0,
        );
    }

    /// An empty out over a huge grid batch: returns at once (it looped over the batch).
    #[test]
    fn empty_out_with_huge_batch_is_immediate() {
        let n = 1usize << 62;
        let out = run_op(
            "aten::grid_sampler_2d.out",
            vec![
                Arg::T(OwnedTensor::zeros(Float, &[n, 0, 1, 1])),
                Arg::T(OwnedTensor::zeros(Float, &[n, 1, 0, 2])),
                Arg::Int(0),
                Arg::Int(0),
                Arg::Bool(false),
                Arg::Out(Float, vec![n, 0, 1, 0]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [n, 0, 1, 0]);
    }

    #[test]
    fn layouts_empty_and_errors() {
        let v: Vec<f64> = (0..12).map(|i| i as f64).collect();
        let x = OwnedTensor::from_f64(Float, &[1, 3, 2, 2], &v);
        let grid = [-0.5, 0.25, 0.7, -0.1];
        let want = sample(&x, &grid, [1, 2], 0, 0, false);
        let g = OwnedTensor::from_f64(Float, &[1, 1, 2, 2], &grid);
        let out = run_op(
            "aten::grid_sampler_2d.out",
            vec![
                Arg::T(x.with_dim_order(&[0, 2, 3, 1])),
                Arg::T(g.clone()),
                Arg::Int(0),
                Arg::Int(0),
                Arg::Bool(false),
                Arg::OutLike(
                    OwnedTensor::zeros(Float, &[1, 3, 1, 2]).with_dim_order(&[0, 2, 3, 1]),
                ),
            ],
        )
        .unwrap();
        assert_close(&out.tensors[0].to_f64(), &want, 1e-6, 0.0);
        let ge = OwnedTensor::zeros(Float, &[1, 0, 2, 2]);
        let out = run_op(
            "aten::grid_sampler_2d.out",
            vec![
                Arg::T(x.clone()),
                Arg::T(ge),
                Arg::Int(0),
                Arg::Int(0),
                Arg::Bool(false),
                Arg::Out(Float, vec![1, 3, 0, 2]),
            ],
        )
        .unwrap();
        assert_eq!(out.tensors[0].sizes, [1, 3, 0, 2]);
        for (interp, pad, gt) in [(3, 0, Float), (0, 3, Float), (0, 0, Double)] {
            let g = OwnedTensor::from_f64(gt, &[1, 1, 2, 2], &grid);
            assert!(run_op(
                "aten::grid_sampler_2d.out",
                vec![
                    Arg::T(x.clone()),
                    Arg::T(g),
                    Arg::Int(interp),
                    Arg::Int(pad),
                    Arg::Bool(false),
                    Arg::Out(Float, vec![1, 3, 1, 2])
                ]
            )
            .is_err());
        }
    }
}
