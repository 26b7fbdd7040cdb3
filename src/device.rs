//! Where training runs: `cpu`, or `cuda` / `cuda:N` when salient is built with the `cuda`
//! feature (candle's CUDA backend; `cudnn` adds cuDNN).

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N` and opens the device.
pub fn open(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal),
            _ => Err(Error::Invalid(format!(
                "unknown device `{other}`: expected `cpu`, `cuda` or `cuda:N` (N a GPU number)"
            ))),
        },
    }
}

/// A short name for logs and reports: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The processor's model name from /proc/cpuinfo (Linux), else "unknown processor", for
/// benchmark reports.
pub fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown processor".into();
    };
    // The first processor's "key : value" lines.
    let field = |key: &str| {
        info.lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| "unknown processor".into());
    // Virtual machines often name only the brand ("AMD EPYC"); family and model tell the
    // generations apart (AMD family 23 is Zen 1 and 2, 25 is Zen 3 and 4).
    match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!("{name}, family {family} model {model}"),
        _ => name,
    }
}

/// The processor's vector extensions that matter to the CPU kernels (AVX2, FMA, AVX-512, AMX),
/// for benchmark reports: which machine a figure came from.
pub fn cpu_vector_extensions() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($feature:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($feature) {
                    found.push($feature);
                })*
            };
        }
        probe!(
            "avx2",
            "fma",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
        // AMX detection is not stable in std::arch: read the kernel's flags instead.
        let amx = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.split_whitespace().any(|f| f == "amx_tile"))
        });
        if amx {
            found.push("amx-tile");
        }
        if found.is_empty() {
            "x86-64 (no AVX2)".into()
        } else {
            found.join(" ")
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// The vector code the `gemm` crate's matrix products dispatch to on this processor at run
/// time: its x86-v4 (AVX-512) kernels, which salient builds in, where the processor has
/// AVX-512 F/BW/CD/DQ/VL, else x86-v3 (AVX2 and FMA), else the portable code.
pub fn gemm_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512cd")
            && has!("avx512dq")
            && has!("avx512vl")
        {
            return "x86-v4 (AVX-512)";
        }
        if has!("avx2") && has!("fma") {
            return "x86-v3 (AVX2, FMA)";
        }
    }
    "portable"
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| Error::Invalid(format!("cannot open CUDA device {ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    Err(Error::Invalid(
        "this salient was built without CUDA support: build it with `--features cuda` (or \
         `cudnn`) as docs/gpu.md says"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_unknown_devices() {
        assert!(open("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cuda:", "CPU", ""] {
            let e = open(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected `cpu`, `cuda` or `cuda:N`"),
                "{bad}: {e}"
            );
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = open("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
