#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs every test.
#   bash tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Python side of the interoperability tests (pyarrow, DuckDB, Pillow).
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
bash data/scripts/fetch-fashion-mnist.sh

# `ballista`: the scale-out test (tests/ballista.rs) starts a scheduler and two executors.
cargo test --locked --features ballista "$@"
