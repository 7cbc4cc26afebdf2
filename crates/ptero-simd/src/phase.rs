//! Padded, stride-split copies of image planes.
//!
//! A window op with stride `s` reads every `s`-th column; split into `s` phases (columns
//! `q·s + p` in phase `p`), every tap of a run of outputs becomes one contiguous read, and
//! padding stored in the copy removes every border case.

/// Geometry of [`phase_planes`]: an `ih × iw` plane padded by `pad` and split by `stride`
/// into `stride[0] · stride[1]` phases of `hq × wq`.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    pub ih: usize,
    pub iw: usize,
    pub pad: [usize; 2],
    pub stride: [usize; 2],
}

impl Phases {
    /// `(hq, wq)`: rows and columns of one phase. Saturates rather than wrapping on a
    /// hostile geometry, so that [`Phases::floats`] reports the overflow.
    pub fn dims(&self) -> (usize, usize) {
        let side = |n: usize, p: usize, s: usize| n.saturating_add(p.saturating_mul(2)).div_ceil(s);
        (
            side(self.ih, self.pad[0], self.stride[0]),
            side(self.iw, self.pad[1], self.stride[1]),
        )
    }

    /// Floats of all phases of one plane (`None` on overflow).
    pub fn floats(&self) -> Option<usize> {
        let (hq, wq) = self.dims();
        hq.checked_mul(wq)?
            .checked_mul(self.stride[0])?
            .checked_mul(self.stride[1])
    }
}

/// Copies the plane at `src[base..]` (row stride `rs`, column stride `cs`) into `dst`:
/// phase `(py, px)` at `(py · sw + px) · hq · wq`, its element `(qy, qx)` being input
/// `(qy · sh + py - pad[0], qx · sw + px - pad[1])`, or `fill` outside the input. Phases
/// for which `used(py, px)` is false are left untouched.
///
/// # Panics
/// If `dst` is shorter than [`Phases::floats`] or the plane does not fit in `src`.
pub fn phase_planes(
    src: &[f32],
    base: usize,
    (rs, cs): (usize, usize),
    g: &Phases,
    fill: f32,
    used: &dyn Fn(usize, usize) -> bool,
    dst: &mut [f32],
) {
    let (sh, sw) = (g.stride[0], g.stride[1]);
    let (ph, pw) = (g.pad[0], g.pad[1]);
    let (hq, wq) = g.dims();
    for py in 0..sh {
        for px in (0..sw).filter(|&px| used(py, px)) {
            let phase = &mut dst[(py * sw + px) * hq * wq..][..hq * wq];
            // Phase column q reads input column q * sw + px - pw: valid for q in [lo, hi).
            let lo = pw.saturating_sub(px).div_ceil(sw).min(wq);
            let hi =
                g.iw.saturating_add(pw)
                    .saturating_sub(px)
                    .div_ceil(sw)
                    .clamp(lo, wq);
            for (qy, row) in phase.chunks_exact_mut(wq).enumerate() {
                let iy = (qy * sh + py) as isize - ph as isize;
                if iy < 0 || iy >= g.ih as isize || hi == lo {
                    row.fill(fill);
                    continue;
                }
                row[..lo].fill(fill);
                row[hi..].fill(fill);
                let first = base + iy as usize * rs + (lo * sw + px - pw) * cs;
                if sw == 1 && cs == 1 {
                    row[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                } else if sw * cs == 2 && first + 2 * (hi - lo) <= src.len() {
                    // The common stride 2: pairs, which the compiler turns into shuffles.
                    let from = src[first..first + 2 * (hi - lo)].chunks_exact(2);
                    for (v, pair) in row[lo..hi].iter_mut().zip(from) {
                        *v = pair[0];
                    }
                } else {
                    let step = sw * cs;
                    let from = &src[first..first + (hi - lo - 1) * step + 1];
                    for (k, v) in row[lo..hi].iter_mut().enumerate() {
                        *v = from[k * step];
                    }
                }
            }
        }
    }
}
