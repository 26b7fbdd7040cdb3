# Sourced by the GPU scripts (gpu_train.sh, gpu_profile.sh) on a lent GPU machine, which has
# the NVIDIA driver, PyTorch and its CUDA libraries but no package registry: unpacks the
# binaries built on a development machine (docs/gpu.md) from $dir/bin.tar.xz into $bin and puts
# the CUDA libraries they link (cuBLAS, cuRAND, NVRTC, cudart, cuDNN) from PyTorch's wheels on
# LD_LIBRARY_PATH (the driver, libcuda.so.1, comes from the system), and defines
# build_datasets.
bin=/tmp/salient-gpu
mkdir -p "$bin"
# Unpacked once per machine: the scripts can run one after the other.
if [ ! -f "$bin/.unpacked" ]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
    "$dir/bin.tar.xz" | tar -C "$bin" -xf - || exit 1
  touch "$bin/.unpacked"
fi
libs=$(python3 - <<'PY'
import os, site
dirs = set()
for root in site.getsitepackages():
    for dirpath, _, files in os.walk(os.path.join(root, "nvidia")):
        if any(f.endswith(".so") or ".so." in f for f in files):
            dirs.add(dirpath)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "missing libraries:"; ldd "$bin/salient" | grep "not found" || echo "  none"

# Builds the named benchmark datasets from the bundled sources into $data (once per machine).
data=/tmp/salient-gpu-data
build_datasets() {
  local name
  for name in "$@"; do
    [ -f "$data/$name/reference.parquet" ] ||
      "$bin/salient" datasets build "$name" --out "$data" --seed 0 >/dev/null || return 1
  done
}
