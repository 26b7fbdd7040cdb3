//! Launching the kernels of `src/cuda/nhwc.cu` (compiled to PTX by build.rs).

use super::ConvGeometry;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/nhwc.ptx"));

/// Runs `kernel(src, dst, n, H, W, C, OH, OW, K, S, P)` with one thread per element of
/// the (contiguous f32) output.
pub fn launch(
    kernel: &str,
    storage: &CudaStorage,
    layout: &Layout,
    out: Shape,
    [h, w, c, oh, ow]: [usize; 5],
    g: ConvGeometry,
) -> Result<(CudaStorage, Shape)> {
    let src = match &storage.slice {
        CudaStorageSlice::F32(s) => s,
        _ => candle_core::bail!("{kernel}: only f32 is supported"),
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{kernel}: input must be contiguous")
    };
    let n = out.elem_count();
    let fits = |v: usize| u32::try_from(v).ok();
    let params: Option<Vec<u32>> = [n, h, w, c, oh, ow, g.kernel, g.stride, g.padding]
        .into_iter()
        .map(fits)
        .collect();
    let Some(params) = params else {
        candle_core::bail!("{kernel}: {out:?} has more than 2^32 elements")
    };
    let dev = &storage.device;
    let src = src.slice(start..end);
    // SAFETY: the kernel writes every one of the n elements.
    let dst = unsafe { dev.alloc::<f32>(n)? };
    let func = dev.get_or_load_custom_func(kernel, "salient_nhwc", PTX)?;
    let mut builder = func.builder();
    builder.arg(&src);
    builder.arg(&dst);
    for p in &params {
        builder.arg(p);
    }
    // SAFETY: the argument list matches the kernel's signature in nhwc.cu.
    unsafe { builder.launch(LaunchConfig::for_num_elems(params[0])) }.w()?;
    Ok((
        CudaStorage {
            slice: CudaStorageSlice::F32(dst),
            device: dev.clone(),
        },
        out,
    ))
}
