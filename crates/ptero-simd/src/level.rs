//! Which instruction set the kernels use: detected once, optionally capped lower.

use core::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level, ordered from the most portable to the widest.
///
/// x86-64 levels need the features named; a level is only ever selected on a CPU that
/// has them, so kernels compiled for it are safe to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    /// Portable Rust, no target features beyond the compile target's baseline.
    Scalar = 1,
    /// aarch64 Advanced SIMD (always present on aarch64).
    Neon = 2,
    /// x86-64 AVX2 + FMA (x86-64-v3).
    Avx2 = 3,
    /// x86-64 AVX-512 F/BW/VL/DQ (x86-64-v4).
    Avx512 = 4,
}

impl Level {
    /// The name used by `PTERO_ISA` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Neon => "neon",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parses a name as written in `PTERO_ISA` (case-insensitive).
    ///
    /// ```
    /// use ptero_simd::Level;
    /// assert_eq!(Level::parse("AVX2"), Some(Level::Avx2));
    /// assert_eq!(Level::parse("sse9"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Level> {
        let s = s.trim();
        [Level::Scalar, Level::Neon, Level::Avx2, Level::Avx512]
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
    }

    fn from_u8(v: u8) -> Option<Level> {
        match v {
            1 => Some(Level::Scalar),
            2 => Some(Level::Neon),
            3 => Some(Level::Avx2),
            4 => Some(Level::Avx512),
            _ => None,
        }
    }

    /// True when the running CPU can execute code of this level.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Scalar => true,
            Level::Neon => cfg!(target_arch = "aarch64"),
            Level::Avx2 => cpu::avx2(),
            Level::Avx512 => cpu::avx512(),
        }
    }
}

impl core::fmt::Display for Level {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Extra features a level may or may not have; kernels test them where a faster
/// instruction exists (dot products of int8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// AVX-512 VNNI (`vpdpbusd` on zmm).
    pub avx512vnni: bool,
    /// AVX-VNNI (`vpdpbusd` on ymm, VEX encoded).
    pub avxvnni: bool,
    /// F16C conversions.
    pub f16c: bool,
    /// aarch64 dot product (`sdot`/`udot`).
    pub dotprod: bool,
}

#[cfg(target_arch = "x86_64")]
mod cpu {
    #[cfg(feature = "std")]
    pub fn avx2() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(feature = "std")]
    pub fn avx512() -> bool {
        avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(feature = "std")]
    pub fn features() -> super::Features {
        super::Features {
            avx512vnni: avx512() && std::is_x86_feature_detected!("avx512vnni"),
            avxvnni: avx2() && std::is_x86_feature_detected!("avxvnni"),
            f16c: std::is_x86_feature_detected!("f16c"),
            dotprod: false,
        }
    }
    // Without std there is no run-time detection: what the build targets is what runs.
    #[cfg(not(feature = "std"))]
    pub fn avx2() -> bool {
        cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
    #[cfg(not(feature = "std"))]
    pub fn avx512() -> bool {
        avx2()
            && cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl",
                target_feature = "avx512dq"
            ))
    }
    #[cfg(not(feature = "std"))]
    pub fn features() -> super::Features {
        super::Features {
            avx512vnni: avx512() && cfg!(target_feature = "avx512vnni"),
            avxvnni: false,
            f16c: cfg!(target_feature = "f16c"),
            dotprod: false,
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod cpu {
    pub fn avx2() -> bool {
        false
    }
    pub fn avx512() -> bool {
        false
    }
    #[cfg(feature = "std")]
    pub fn features() -> super::Features {
        super::Features {
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
            ..Default::default()
        }
    }
    #[cfg(not(feature = "std"))]
    pub fn features() -> super::Features {
        super::Features {
            dotprod: cfg!(target_feature = "dotprod"),
            ..Default::default()
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod cpu {
    pub fn avx2() -> bool {
        false
    }
    pub fn avx512() -> bool {
        false
    }
    pub fn features() -> super::Features {
        super::Features::default()
    }
}

/// The best level this CPU supports.
pub fn detected() -> Level {
    [Level::Avx512, Level::Avx2, Level::Neon]
        .into_iter()
        .find(|l| l.is_supported())
        .unwrap_or(Level::Scalar)
}

/// Optional features of the running CPU, masked by the selected level (forcing `avx2`
/// hides AVX-512 VNNI, forcing `scalar` hides everything).
pub fn features() -> Features {
    let f = cpu::features();
    let l = level();
    Features {
        avx512vnni: f.avx512vnni && l >= Level::Avx512,
        avxvnni: f.avxvnni && l >= Level::Avx2,
        f16c: f.f16c && l >= Level::Avx2,
        dotprod: f.dotprod && l == Level::Neon,
    }
}

// 0 = not chosen yet. The choice is made once (detection, capped by `PTERO_ISA`) and
// can be lowered later by `set_level`; kernels read it on every dispatch.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level kernels run at: the detected one, capped by the `PTERO_ISA` environment
/// variable (`avx512`, `avx2`, `neon`, `scalar`) when it names a lower level, or by
/// [`set_level`].
pub fn level() -> Level {
    if let Some(l) = Level::from_u8(LEVEL.load(Ordering::Relaxed)) {
        return l;
    }
    let mut l = detected();
    if let Some(cap) = env_cap() {
        l = l.min(cap);
        if !l.is_supported() {
            l = Level::Scalar;
        }
    }
    // Another thread may have chosen concurrently; both computed the same answer unless
    // `set_level` raced, in which case its value wins.
    match LEVEL.compare_exchange(0, l as u8, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => l,
        Err(v) => Level::from_u8(v).unwrap_or(Level::Scalar),
    }
}

#[cfg(feature = "std")]
fn env_cap() -> Option<Level> {
    let v = std::env::var("PTERO_ISA").ok()?;
    Level::parse(&v)
}

#[cfg(not(feature = "std"))]
fn env_cap() -> Option<Level> {
    None
}

/// Error of [`set_level`]: the CPU cannot run the level asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsupported(pub Level);

impl core::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "this CPU cannot run {} kernels (best: {})",
            self.0,
            detected()
        )
    }
}

/// Forces the level used by every kernel from now on, to test a lower level on a machine
/// that has a higher one or to compare levels. Returns the previous level.
///
/// ```
/// use ptero_simd::{level, set_level, Level};
/// let before = set_level(Level::Scalar).unwrap();
/// assert_eq!(level(), Level::Scalar);
/// set_level(before).unwrap();
/// ```
pub fn set_level(l: Level) -> Result<Level, Unsupported> {
    if !l.is_supported() {
        return Err(Unsupported(l));
    }
    let prev = level();
    LEVEL.store(l as u8, Ordering::Relaxed);
    Ok(prev)
}
