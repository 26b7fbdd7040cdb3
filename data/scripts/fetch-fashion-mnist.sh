#!/usr/bin/env bash
# Fetches Fashion-MNIST (MIT) from Debian's dataset-fashion-mnist package into DIR/fashion-mnist.
# usage: fetch-fashion-mnist.sh [DIR]   (default: $SALIENT_DATA_DIR or ~/.cache/salient/data)
set -euo pipefail
root="${1:-${SALIENT_DATA_DIR:-$HOME/.cache/salient/data}}"
dest="$root/fashion-mnist"
if [ -f "$dest/t10k-images-idx3-ubyte.gz" ] && [ -f "$dest/t10k-labels-idx1-ubyte.gz" ]; then
  echo "Fashion-MNIST already in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
# apt-get download needs package lists; refresh them only when the first try fails.
apt-get download dataset-fashion-mnist >/dev/null 2>&1 || {
  apt-get update -qq
  apt-get download dataset-fashion-mnist
}
dpkg-deb -x dataset-fashion-mnist_*.deb unpacked
mkdir -p "$dest"
cp unpacked/usr/share/datasets/fashion-mnist/*-ubyte.gz "$dest/"
echo "Fashion-MNIST written to $dest"
