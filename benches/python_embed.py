"""The Python loop a data engineer would write to embed an image table with the exported model:
pyarrow record batches, Pillow decode, numpy, onnxruntime. Prints JSON with images/s (median over
repeats). Used by `cargo bench --bench bench_embed` as the baseline.

usage: python_embed.py MODEL_DIR TABLE.parquet REPEATS THREADS
"""
import io
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from PIL import Image

model_dir, table, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
manifest = json.load(open(f"{model_dir}/manifest.json"))
channels = manifest["input"]["shape"]["channels"]
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(f"{model_dir}/model.onnx", options, providers=["CPUExecutionProvider"])
mode = "L" if channels == 1 else "RGB"


def run():
    n = 0
    for batch in pq.ParquetFile(table).iter_batches(batch_size=1024, columns=["id", "image"]):
        images = batch.column(1).to_pylist()
        arrays = [np.asarray(Image.open(io.BytesIO(b)).convert(mode)) for b in images]
        x = np.stack(arrays)
        x = x[:, None, :, :] if channels == 1 else x.transpose(0, 3, 1, 2)
        embedding, cluster_id, distance = session.run(None, {"image": np.ascontiguousarray(x)})
        n += len(cluster_id)
    return n


run()  # warm-up
times = []
for _ in range(repeats):
    start = time.perf_counter()
    n = run()
    times.append(time.perf_counter() - start)
print(json.dumps({"rows": n, "median_seconds": statistics.median(times),
                  "images_per_second": n / statistics.median(times)}))
