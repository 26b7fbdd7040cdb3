#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs every test.
#   bash tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Python side of the interoperability tests (pyarrow, DuckDB, Pillow).
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# tests/serve.rs makes a self-signed certificate for its TLS test (openssl); tests/report.rs
# renders the report page in headless Chromium.
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
bash data/scripts/fetch-fashion-mnist.sh

# The CUDA kernels' index arithmetic, on the host (the GPU itself is checked by
# benches/gpu_train.sh on a GPU machine).
c++ -O1 -x c++ tests/cuda/nhwc_host.cpp -o "${TMPDIR:-/tmp}/salient-nhwc-host"
"${TMPDIR:-/tmp}/salient-nhwc-host"

# The quality suite's merge and table steps (benches/quality_table.py).
python3 tests/quality_table_test.py

# `ballista`: the scale-out test (tests/ballista.rs) starts a scheduler and two executors.
cargo test --locked --features ballista "$@"
