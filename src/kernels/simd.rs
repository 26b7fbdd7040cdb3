//! The vector instruction set salient's own CPU kernels run with, chosen at run time.
//!
//! The shipped build targets baseline x86-64 (SSE2), so loops the compiler vectorises on their
//! own would use 128-bit SSE2 on every machine. Each kernel's inner loop is instead compiled a
//! second and third time with AVX2 + FMA and with AVX-512 enabled (through `pulp`'s
//! `vectorize`, the crate `gemm` uses for the same purpose), and [`Simd::current`] picks the
//! widest the processor has. Matrix products go through `gemm`, which dispatches the same way.
//!
//! `SALIENT_SIMD=baseline|avx2|avx512` caps the choice for a whole process (to compare the
//! paths on one machine); tests pass each available [`Simd`] to the kernels directly.

use std::sync::OnceLock;

/// A vector instruction set a kernel can run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// What the build targets: SSE2 on x86-64, the target's default elsewhere.
    Baseline,
    /// x86-64-v3: AVX2, FMA, BMI.
    Avx2,
    /// x86-64-v4: AVX-512 F, BW, CD, DQ and VL.
    Avx512,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "baseline" | "sse2" | "scalar" => Some(SimdLevel::Baseline),
            "avx2" | "x86-v3" | "v3" => Some(SimdLevel::Avx2),
            "avx512" | "avx-512" | "x86-v4" | "v4" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }
}

/// A token proving the processor supports a [`SimdLevel`]; [`Simd::run`] runs a closure
/// compiled for it.
#[derive(Clone, Copy, Debug)]
pub enum Simd {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
}

impl Simd {
    /// The token for `level`, if this processor supports it.
    pub fn new(level: SimdLevel) -> Option<Self> {
        match level {
            SimdLevel::Baseline => Some(Simd::Baseline),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => pulp::x86::V3::try_new().map(Simd::Avx2),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => pulp::x86::V4::try_new().map(Simd::Avx512),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }

    /// Every level this processor supports, narrowest first.
    pub fn available() -> Vec<Simd> {
        [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter_map(Simd::new)
            .collect()
    }

    /// The widest level the processor supports, capped by `SALIENT_SIMD` when it is set to a
    /// known level; detected once per process.
    pub fn current() -> Simd {
        static CURRENT: OnceLock<Simd> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let cap = std::env::var("SALIENT_SIMD")
                .ok()
                .and_then(|s| SimdLevel::parse(&s))
                .unwrap_or(SimdLevel::Avx512);
            Simd::available()
                .into_iter()
                .rfind(|s| s.level() <= cap)
                .unwrap_or(Simd::Baseline)
        })
    }

    pub fn level(self) -> SimdLevel {
        match self {
            Simd::Baseline => SimdLevel::Baseline,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2(_) => SimdLevel::Avx2,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512(_) => SimdLevel::Avx512,
        }
    }

    /// Runs `f` compiled with this level's target features. Only code inlined into the
    /// target-feature function gets them, and LLVM does not inline a closure body it finds too
    /// large: callers mark the closure itself `#[inline(always)]` (`simd.run(#[inline(always)]
    /// || …)`), as they do the kernels it calls, or the loops compile for baseline x86-64 and
    /// every level runs the same SSE2 code. Each rayon task calls `run` itself (a closure that
    /// spawns tasks would run them at the baseline).
    #[inline(always)]
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        match self {
            Simd::Baseline => f(),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2(v3) => v3.vectorize(f),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512(v4) => v4.vectorize(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_the_current_level_is_available() {
        assert_eq!(SimdLevel::parse("AVX2"), Some(SimdLevel::Avx2));
        assert_eq!(SimdLevel::parse("x86-v4"), Some(SimdLevel::Avx512));
        assert_eq!(SimdLevel::parse("baseline"), Some(SimdLevel::Baseline));
        assert_eq!(SimdLevel::parse("neon"), None);
        let available: Vec<SimdLevel> = Simd::available().iter().map(|s| s.level()).collect();
        assert_eq!(available[0], SimdLevel::Baseline);
        assert!(available.contains(&Simd::current().level()));
        // A processor with AVX-512 (x86-64-v4) has AVX2 as well.
        if available.contains(&SimdLevel::Avx512) {
            assert!(available.contains(&SimdLevel::Avx2));
        }
    }

    #[test]
    fn run_returns_the_closure_result_on_every_level() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        for simd in Simd::available() {
            let sum = simd.run(|| x.iter().map(|v| v * 2.0).sum::<f32>());
            assert_eq!(sum, 499_500.0, "{:?}", simd.level());
        }
    }
}
