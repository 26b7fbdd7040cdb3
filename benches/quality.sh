#!/usr/bin/env bash
# The clustering-quality suite: every method of `salient compare` (k-means on raw pixels, PCA,
# contrastive PCA over its alpha grid, reference whitening, reference whitening + PCA,
# shift-invariant k-means, IDFD, cIDFD) on every benchmark dataset, over 3 seeds, into one table.
#
#   bash benches/quality.sh [WORK_DIR]
#
# Writes docs/quality.md (Markdown table; each row with its date, machine and training
# settings), docs/quality.json and docs/quality.png (bar chart); per-dataset JSON and the
# trained models stay in WORK_DIR (default out/quality). Rows of methods and datasets a run did
# not ask for keep their earlier results (from WORK_DIR, else from docs/quality.json), so a
# method can be rerun or added alone. Settings through the environment:
#   SALIENT   the salient binary (default: built here with `cargo build --release`)
#   DATASETS  space-separated dataset names (default: all six)
#   METHODS   comma-separated methods (default: raw,pca,cpca,whiten,whiten-pca,tic,idfd,cidfd)
#   SEEDS     seeds per method (default 3)
#   CONFIG    training settings (TOML) for IDFD and cIDFD (default: salient's defaults)
#   EPOCHS    overrides the training epochs
#   DOCS      where the table goes (default docs)
# A full run trains 2 x 3 models per dataset: many hours on 2 cores. Linear methods alone
# (METHODS=raw,pca,cpca,whiten,whiten-pca,tic) take minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

work="${1:-out/quality}"
datasets="${DATASETS:-mnist-grass-01 mnist-grass-012 mnist-grass-shifted fashion-textures-shifted mnist-grass fashion-textures}"
methods="${METHODS:-raw,pca,cpca,whiten,whiten-pca,tic,idfd,cidfd}"
seeds="${SEEDS:-3}"
docs="${DOCS:-docs}"
if [[ -z "${SALIENT:-}" ]]; then
    cargo build --release --locked --bin salient
    SALIENT="${CARGO_TARGET_DIR:-target}/release/salient"
fi
mkdir -p "$work" "$docs"

extra=()
settings=""
[[ -n "${CONFIG:-}" ]] && extra+=(--config "$CONFIG") && settings="$CONFIG"
[[ -n "${EPOCHS:-}" ]] && extra+=(--epochs "$EPOCHS") && settings="${settings:+$settings, }epochs $EPOCHS"

for name in $datasets; do
    case "$name" in
        fashion-textures*) bash data/scripts/fetch-fashion-mnist.sh >/dev/null ;;
    esac
    k=$("$SALIENT" datasets list | awk -v n="$name" '$1 == n { sub("k=", "", $2); print $2 }')
    if [[ -z "$k" ]]; then
        echo "unknown dataset: $name" >&2
        exit 2
    fi
    "$SALIENT" datasets build "$name" --out "$work/data" --seed 0
    echo "== $name (k = $k): $methods, $seeds seeds" >&2
    "$SALIENT" compare --target "$work/data/$name/target.parquet" \
        --reference "$work/data/$name/reference.parquet" --clusters "$k" --seeds "$seeds" \
        --methods "$methods" --work-dir "$work/models/$name" --format json "${extra[@]}" \
        > "$work/$name.json.tmp"
    # Rows of methods this run did not ask for keep their earlier results (from the work
    # directory, or the published table on a fresh clone), so one method can be rerun or added
    # on its own; every new row is stamped with its date, processor and training settings.
    python3 benches/quality_table.py merge "$work/$name.json" "$work/$name.json.tmp" \
        --published "$docs/quality.json" --dataset "$name" ${settings:+--settings "$settings"}
    mv "$work/$name.json.tmp" "$work/$name.json"
done

python3 -m pip install --quiet --disable-pip-version-check matplotlib
python3 benches/quality_table.py table --work "$work" --docs "$docs" --published "$docs/quality.json"
