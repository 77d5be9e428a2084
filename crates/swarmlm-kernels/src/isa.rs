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
    /// Decided once per process. A name that is unknown or not supported here is not silently
    /// ignored: one line on stderr says so and which path runs instead, so an A/B run cannot
    /// compare a path with itself unawares.
    pub fn detect() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let wanted = std::env::var("SWARMLM_KERNELS_ISA").ok();
            let (isa, warning) = Isa::choose(wanted.as_deref());
            if let Some(w) = warning {
                eprintln!("swarmlm: {w}");
            }
            isa
        })
    }

    /// The path for a `SWARMLM_KERNELS_ISA` value (`None`: unset), and why the value was not
    /// taken, if it was not.
    fn choose(wanted: Option<&str>) -> (Isa, Option<String>) {
        let best = Isa::available()[0];
        let Some(name) = wanted.map(str::trim).filter(|n| !n.is_empty()) else {
            return (best, None);
        };
        match Isa::from_name(name) {
            Some(i) if i.is_supported() => (i, None),
            Some(_) => (
                best,
                Some(format!(
                    "SWARMLM_KERNELS_ISA={name}: this CPU cannot run it; using {}",
                    best.name()
                )),
            ),
            None => (
                best,
                Some(format!(
                    "SWARMLM_KERNELS_ISA={name} is not one of avx512bf16, avx512, avx2, scalar; \
                     using {}",
                    best.name()
                )),
            ),
        }
    }
}

/// The path chosen at run time: `"avx512bf16" | "avx512" | "avx2" | "scalar"`.
pub fn isa() -> &'static str {
    Isa::detect().name()
}

#[cfg(test)]
mod tests {
    use super::Isa;

    #[test]
    fn an_unknown_or_unsupported_isa_name_is_reported_not_ignored() {
        let best = Isa::available()[0];
        assert_eq!(Isa::choose(None), (best, None));
        assert_eq!(Isa::choose(Some(" ")), (best, None));
        assert_eq!(Isa::choose(Some("scalar")), (Isa::Scalar, None));
        let (i, w) = Isa::choose(Some("avx3"));
        assert_eq!(i, best);
        assert!(w.unwrap().contains("avx3 is not one of"));
        if let Some(missing) = [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| !i.is_supported())
        {
            let (i, w) = Isa::choose(Some(missing.name()));
            assert_eq!(i, best);
            assert!(w.unwrap().contains("this CPU cannot run it"));
        }
    }
}
