#!/usr/bin/env bash
# Where a cIDFD training step's time goes on a GPU, and the quality suite's cIDFD runs on it
# (issue 24), as one script for a lent GPU machine. Build the binaries on a development machine
# and pack them as DIR/bin.tar.xz (docs/gpu.md); the datasets are built there from the bundled
# MNIST. Run
#
#   bash benches/gpu_profile.sh DIR OUTDIR
#
# SECTIONS (default "phases ncu quality") picks parts, NCU (default "salient torch") the
# programs the ncu part profiles; BUDGET_SECONDS (default 560) is when the
# whole script ends: the quality runs get what the other parts leave.
#   phases   bench_train --phases: wall time per phase of the step, the device synchronised
#            after each, for ResNet-18 and the small CNN; the same runs unsynchronised; the
#            PyTorch twin's speed on the same data
#   ncu      every kernel's GPU time (Nsight Compute, one metric, clocks left alone) over two
#            ResNet-18 steps of salient and of the PyTorch twin, summed by kernel name
#   quality  `salient train --device cuda` with the settings of the quality table's cIDFD rows
#            (quickstart.toml on mnist-grass-01 and mnist-grass, moving-objects.toml on
#            mnist-grass-shifted), seeds 0-2; the training logs and manifests come back in
#            OUTDIR/quality_logs.tar.gz
set -u
deadline=$(($(date +%s) + ${BUDGET_SECONDS:-560}))
sections=" ${SECTIONS:-phases ncu quality} "
on() { [[ "$sections" == *" $1 "* ]]; }
dir=${1:?usage: gpu_profile.sh DIR OUTDIR}
out=${2:?usage: gpu_profile.sh DIR OUTDIR}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
build_datasets mnist-grass mnist-grass-shifted mnist-grass-01 || exit 1
t="$data/mnist-grass/target.parquet"; r="$data/mnist-grass/reference.parquet"

if on phases; then
  for arch in resnet18 small-cnn; do
    echo "== $arch: 4096 + 4096 images per epoch, batch 128, 2 epochs after a warm-up"
    timeout 120 "$bin/bench_train" "$t" "$r" 4096 2 --rounds 1 --device cuda --architecture "$arch" \
      --no-torch --phases 2>/dev/null
    echo "-- unsynchronised"
    timeout 120 "$bin/bench_train" "$t" "$r" 4096 2 --rounds 1 --device cuda --architecture "$arch" \
      --no-torch 2>/dev/null | tail -1
    echo "-- PyTorch twin (its defaults)"
    timeout 90 python3 benches/python_train.py "$t" "$r" 4096 2 16 --architecture "$arch" --device cuda
  done
fi

if on ncu; then
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  echo "== kernel times (ncu: $ncu), ResNet-18, 128 + 128 images: 2 epochs of 1 step"
  prof() {
    local name=$1; shift
    timeout 100 "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
      --log-file "$out/ncu_$name.csv" "$@" >/dev/null 2>"$out/ncu_$name.err"
    echo "$name: rc $?"
  }
  on_ncu() { [[ " ${NCU:-salient torch} " == *" $1 "* ]]; }
  on_ncu salient && prof salient "$bin/bench_train" "$t" "$r" 128 1 --rounds 1 --device cuda --architecture resnet18 --no-torch
  on_ncu torch && prof torch python3 benches/python_train.py "$t" "$r" 128 1 16 --architecture resnet18 --device cuda
  for name in ${NCU:-salient torch}; do
    python3 - "$out/ncu_$name.csv" 2 <<'PY'
import collections, csv, sys
rows = list(csv.reader(l for l in open(sys.argv[1]) if not l.startswith("==")))
if len(rows) < 3:
    sys.exit(f"{sys.argv[1]}: no kernels recorded")
head = rows[0]
name, dur = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
unit = rows[1][dur]
scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}[unit]
by = collections.defaultdict(lambda: [0, 0.0])
for row in rows[2:]:
    try:
        t = float(row[dur].replace(",", "")) * scale
    except ValueError:
        continue
    k = row[name].split("(")[0].split("<")[0].strip()
    by[k][0] += 1
    by[k][1] += t
steps = int(sys.argv[2])
total = sum(v[1] for v in by.values())
count = sum(v[0] for v in by.values())
print(f"{sys.argv[1]}: {count} kernels, {total / 1e3:.1f} ms of GPU time "
      f"({count / steps:.0f} kernels, {total / steps / 1e3:.2f} ms per step over {steps} steps)")
for k, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:25]:
    print(f"  {t / total * 100:5.1f} %  {t / 1e3:8.2f} ms  {n:6d}x  {k[:90]}")
PY
  done
fi

if on quality; then
  # One process per seed: a small CNN's step is bound by kernel launches, so runs side by side
  # fill the GPU's idle time; they stop at the deadline, and the finished ones report.
  left=$((deadline - $(date +%s) - 20))
  echo "== quality: salient train --device cuda, one process per dataset and seed, ${left} s"
  q=/tmp/salient-gpu-quality
  mkdir -p "$q"
  run() {
    local name=$1 k=$2 config=$3 seed=$4 label="$1-seed$4"
    timeout "$left" "$bin/salient" train --device cuda --config "$config" --seed "$seed" \
      --clusters "$k" --target "$data/$name/target.parquet" \
      --reference "$data/$name/reference.parquet" --out "$q/$label" >"$q/$label.out" 2>"$q/$label.log"
    echo "$label: rc $? $(grep -h 'clusters vs labels' "$q/$label.out")"
  }
  start=$(date +%s)
  for seed in 0 1 2; do
    run mnist-grass-01 2 examples/configs/quickstart.toml $seed &
    run mnist-grass 10 examples/configs/quickstart.toml $seed &
    run mnist-grass-shifted 10 examples/configs/moving-objects.toml $seed &
  done
  wait
  echo "quality runs: $(($(date +%s) - start)) s"
  (cd "$q" && find . \( -name '*.json' -o -name '*.log' -o -name '*.out' -o -name '*.csv' \) -print0 |
    tar --null -czf "$out/quality_logs.tar.gz" -T -)
fi
