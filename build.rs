//! With the `cuda` feature, compiles salient's own CUDA kernels (src/cuda/*.cu) to PTX with
//! nvcc, for the GPU at CUDA_COMPUTE_CAP (default 70: PTX the driver compiles for any newer
//! GPU). Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/cuda/nhwc.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("nhwc.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "70".into());
    let status = Command::new("nvcc")
        .args([
            "--ptx",
            "-O3",
            &format!("-arch=sm_{cap}"),
            "src/cuda/nhwc.cu",
            "-o",
        ])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("the cuda feature needs nvcc on the PATH (docs/gpu.md): {e}"));
    assert!(status.success(), "nvcc failed on src/cuda/nhwc.cu");
}
