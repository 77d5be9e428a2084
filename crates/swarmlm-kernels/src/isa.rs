//! Run-time choice of the SIMD instruction set.
//!
//! One binary runs on AVX2-only AMD hosts and on AVX-512 Intel hosts, so the path is picked once
//! at run time (`is_x86_feature_detected!`) rather than at compile time. Every kernel also accepts
//! an explicit [`Isa`] so tests and benchmarks can compare each available path with the scalar one.

use std::sync::OnceLock;

/// A code path of the kernels, from most to least capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F + AVX512-BF16 (`vdpbf16ps`). With f32 activations it runs the AVX-512 path; the
    /// bf16 dot instruction is used only by the opt-in bf16-activation kernels.
    Avx512Bf16,
    /// AVX-512F (with AVX2+FMA, which every AVX-512F CPU has).
    Avx512,
    /// AVX2 + FMA.
    Avx2,
    /// Portable Rust; the reference the SIMD paths are tested against.
    Scalar,
}

impl Isa {
    /// The name used in logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }

    /// Parses a name as printed by [`Isa::name`].
    pub fn from_name(s: &str) -> Option<Isa> {
        [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .find(|i| i.name() == s)
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && Isa::Avx2.is_supported(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Isa::Avx512.is_supported() && is_x86_feature_detected!("avx512bf16"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every path this CPU supports, best first (always ends with `Scalar`).
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }

    /// The path the default kernels use: the best supported one, or the one named by the
    /// `SWARMLM_KERNELS_ISA` environment variable if that is supported (for A/B measurements).
    /// Decided once per process.
    pub fn detect() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            if let Ok(v) = std::env::var("SWARMLM_KERNELS_ISA") {
                if let Some(i) = Isa::from_name(v.trim()) {
                    if i.is_supported() {
                        return i;
                    }
                }
            }
            Isa::available()[0]
        })
    }
}

/// The path chosen at run time: `"avx512bf16" | "avx512" | "avx2" | "scalar"`.
pub fn isa() -> &'static str {
    Isa::detect().name()
}
