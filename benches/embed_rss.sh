#!/usr/bin/env bash
# Peak RSS of `salient embed` at 100,000 and 1,000,000 rows (issue 5 and 6c): the ratio must stay
# near 1 (memory bounded by batches and one row group, not by the input size).
#   bash benches/embed_rss.sh MODEL_DIR [SALIENT_BINARY]
set -euo pipefail
model=${1:?model directory}
bin=${2:-target/release/salient}
work=${SALIENT_BENCH_DIR:-/tmp/salient-bench}
mkdir -p "$work"
[ -f "$work/mnist-grass/target.parquet" ] || "$bin" datasets build mnist-grass --out "$work" >/dev/null
for n in 100000 1000000; do
  [ -f "$work/rows_$n.parquet" ] || python3 benches/make_large_table.py "$work/mnist-grass/target.parquet" "$work/rows_$n.parquet" "$n"
done
declare -A rss secs
for n in 100000 1000000; do
  /usr/bin/time -f "%M %e" -o "$work/time_$n.txt" "$bin" embed --model "$model" \
      --input "$work/rows_$n.parquet" --output "$work/embedded_$n.parquet" >/dev/null
  read -r kb s < "$work/time_$n.txt"
  rss[$n]=$kb; secs[$n]=$s
  echo "rows=$n peak_rss_mib=$((kb / 1024)) seconds=$s images_per_second=$(python3 -c "print(round($n/$s))")"
done
python3 -c "print('rss ratio 1M/100k = %.3f' % (${rss[1000000]}/${rss[100000]}))"
