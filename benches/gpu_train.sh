#!/usr/bin/env bash
# The GPU speed and agreement check (issue 24), as one script for a lent GPU machine (which has
# the NVIDIA driver, PyTorch and its CUDA libraries, but no package registry). Build the
# binaries on a development machine first and put them into DIR/bin.tar.xz (docs/gpu.md: salient
# and bench_train, `--features cudnn` release builds, stripped, in one tar compressed with
# `xz --lzma2=preset=6,dict=512MiB`; the two share most of their bytes, candle's kernels, so one
# wide window stores them once), then run `bash benches/gpu_train.sh DIR OUTDIR`. The data is
# built there from the bundled MNIST (mnist-grass, and mnist-grass-01 for the `salient train`
# run). It prints the device, the training speed of salient against PyTorch, the loss agreement
# with the CPU, and a `salient train --device cuda` run; logs land in OUTDIR. SECTIONS
# (default: all of "speed portable agree cli tf32 candle small") picks parts.
# The agreement check compares 16 ResNet-18 steps (512 + 512 images, 4 epochs) on CUDA with the
# same steps on the CPU: DIR/steps_cpu.csv if present (bench_train T R 512 3 --architecture
# resnet18 --no-torch --loss-log steps_cpu.csv, with the same binary on any machine), else
# computed there on the CPU first.
set -u
sections=" ${SECTIONS:-speed portable agree cli tf32 candle small} "
on() { [[ "$sections" == *" $1 "* ]]; }
dir=${1:?usage: gpu_train.sh DIR OUTDIR}
out=${2:?usage: gpu_train.sh DIR OUTDIR}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"

build_datasets mnist-grass mnist-grass-01 || exit 1
t="$data/mnist-grass/target.parquet"; r="$data/mnist-grass/reference.parquet"
bench() { timeout 150 "$bin/bench_train" "$t" "$r" 4096 3 --device cuda --architecture resnet18 --no-torch "$@" 2>&1 | tail -1; }
torch() { timeout 120 python3 benches/python_train.py "$t" "$r" 4096 3 16 --architecture resnet18 --device cuda "$@"; }
if on speed; then
  echo "== speed, ResNet-18, 4096 + 4096 images per epoch, batch 128, median of 3 epochs after a warm-up"
  bench --kernels fused
  if on portable; then bench --kernels portable; fi
  echo "-- PyTorch (its defaults: TF32 in cuDNN convolutions), then --no-tf32"; torch; torch --no-tf32
fi
if on agree; then
  echo "== loss agreement: ResNet-18, 512 + 512 images, 4 epochs (16 steps), CPU against CUDA"
  if [ -f "$dir/steps_cpu.csv" ]; then
    cp "$dir/steps_cpu.csv" "$out/steps_cpu.csv"
  else
    timeout 240 "$bin/bench_train" "$t" "$r" 512 3 --device cpu --architecture resnet18 --no-torch \
      --loss-log "$out/steps_cpu.csv" 2>&1 | tail -1
  fi
  for k in fused portable; do
    timeout 120 "$bin/bench_train" "$t" "$r" 512 3 \
      --device cuda --kernels $k --architecture resnet18 --no-torch --loss-log "$out/steps_cuda_$k.csv" 2>&1 | tail -1
    [ -f "$out/steps_cpu.csv" ] && python3 - "$out/steps_cpu.csv" "$out/steps_cuda_$k.csv" <<'PY'
import csv, sys
cpu, gpu = ([float(r["loss"]) for r in csv.DictReader(open(p))] for p in sys.argv[1:3])
rel = [abs(c - g) / abs(c) for c, g in zip(cpu, gpu)]
print("cpu  " + " ".join(f"{v:.4f}" for v in cpu))
print("cuda " + " ".join(f"{v:.4f}" for v in gpu))
print(f"{sys.argv[2]}: {len(rel)} steps, largest relative difference {max(rel):.1e}")
PY
  done
fi
if on cli; then
  echo "== salient train --device cuda (ResNet-18, mnist-grass-01: 2,128 + 2,128 images, 3 epochs)"
  rm -rf /tmp/gpu_model
  start=$(date +%s)
  timeout 150 "$bin/salient" train --device cuda --architecture resnet18 --epochs 3 \
    --target "$data/mnist-grass-01/target.parquet" --reference "$data/mnist-grass-01/reference.parquet" --out /tmp/gpu_model \
    >"$out/train_cuda.log" 2>"$out/train_cuda.err"
  echo "rc $? after $(($(date +%s) - start)) s"; tail -3 "$out/train_cuda.log"
  grep -iE "error|panick" "$out/train_cuda.err" | head -5
fi
if on tf32; then echo "== TF32 matrix products"; bench --kernels fused --tf32; fi
if on candle; then echo "== candle's conv2d (cuDNN forward)"; bench --kernels candle; fi
if on small; then
  echo "== small-cnn, cuda, against PyTorch"
  timeout 120 "$bin/bench_train" "$t" "$r" 4096 3 --device cuda --kernels fused \
    --torch-script benches/python_train.py 2>&1 | tail -3
fi
