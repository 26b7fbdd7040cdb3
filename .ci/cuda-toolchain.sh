#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit from NVIDIA's PyPI wheels, for building salient with
# `--features cuda` / `cudnn` on a machine without CUDA (and without a GPU):
#
#   bash .ci/cuda-toolchain.sh [DIR]        # default DIR: ~/.cache/salient-cuda
#   source DIR/env.sh
#   cargo build --release --features cudnn --bin salient
#
# nvcc compiles candle's kernels for the H100/H200 (CUDA_COMPUTE_CAP=90; set another value in
# env.sh for other GPUs). CUDA 13.0 matches the driver of the lent GPU machines (580): a newer
# nvcc writes PTX that an older driver refuses. candle links cudarc with `dynamic-linking`, so
# the linker needs the libraries by their plain names, and libcuda.so, which only a driver
# installs: a stub with the driver API's symbols stands in at link time (NVIDIA's toolkits ship
# the same kind of stub); the real driver library is loaded at run time.
set -euo pipefail
dir=${1:-$HOME/.cache/salient-cuda}
wheels="$dir/wheels"
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
  "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88" "nvidia-cuda-cccl==13.0.85" \
  "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.0.35" "nvidia-cudnn-cu13==9.13.0.50"
unpack=$(mktemp -d)
for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$unpack"; done
rm -rf "$dir/toolkit"
mkdir -p "$dir/toolkit"
cp -a "$unpack/nvidia/cu13/." "$dir/toolkit/"
cp -a "$unpack/nvidia/cudnn/lib/." "$dir/toolkit/lib/"
rm -rf "$unpack"
chmod +x "$dir"/toolkit/bin/* "$dir"/toolkit/nvvm/bin/*

# Plain names for the linker.
mkdir -p "$dir/toolkit/lib64"
cd "$dir/toolkit/lib64"
for l in cublas cublasLt cudart nvrtc; do ln -sf ../lib/lib$l.so.13 lib$l.so; done
ln -sf ../lib/libcurand.so.10 libcurand.so
ln -sf ../lib/libcudnn.so.9 libcudnn.so

# The link-time stub of libcuda.so.1: every driver function cudarc declares.
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)
if [ -z "$cudarc" ]; then
  echo "cudarc's source is not in the cargo registry: run \`cargo fetch\` in the repository first" >&2
  exit 1
fi
grep -ohE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$cudarc/src/driver/sys/mod.rs" \
  | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u >"$dir/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/toolkit/lib64/libcuda.so" "$dir/cuda_stub.c"

cat >"$dir/env.sh" <<ENV
export CUDA_HOME=$dir/toolkit
export PATH=$dir/toolkit/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
ENV
"$dir/toolkit/bin/nvcc" --version | tail -1
echo "toolkit ready: source $dir/env.sh"
