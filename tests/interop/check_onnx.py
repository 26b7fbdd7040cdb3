"""Checks an exported salient model with the ONNX reference tools: onnx.checker accepts it, and
Python's onnxruntime gives the same outputs as salient's Rust runtime on the same images.

usage: check_onnx.py MODEL_DIR PIXELS.bin EXPECTED_PREFIX
  PIXELS.bin       uint8 N×C×H×W, raw
  EXPECTED_PREFIX  .embedding.bin (float32 N×d), .cluster_id.bin (int32 N), .distance.bin (float32 N)
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

model_dir, pixels_path, prefix = sys.argv[1:4]
model = onnx.load(f"{model_dir}/model.onnx")
onnx.checker.check_model(model, full_check=True)

manifest = json.load(open(f"{model_dir}/manifest.json"))
shape = manifest["input"]["shape"]
c, h, w = shape["channels"], shape["height"], shape["width"]
pixels = np.fromfile(pixels_path, dtype=np.uint8).reshape(-1, c, h, w)
n, d = pixels.shape[0], manifest["d"]

session = ort.InferenceSession(f"{model_dir}/model.onnx", providers=["CPUExecutionProvider"])
assert [i.name for i in session.get_inputs()] == ["image"], session.get_inputs()
embedding, cluster_id, distance = session.run(["embedding", "cluster_id", "distance"], {"image": pixels})

want_e = np.fromfile(f"{prefix}.embedding.bin", dtype=np.float32).reshape(n, d)
want_c = np.fromfile(f"{prefix}.cluster_id.bin", dtype=np.int32)
want_d = np.fromfile(f"{prefix}.distance.bin", dtype=np.float32)
assert embedding.shape == (n, d) and embedding.dtype == np.float32, embedding.shape
assert cluster_id.dtype == np.int32, cluster_id.dtype
err = float(np.abs(embedding - want_e).max())
assert err <= 1e-5, f"embedding differs by {err}"
assert (cluster_id == want_c).all(), "cluster ids differ"
assert float(np.abs(distance - want_d).max()) <= 1e-5
print(json.dumps({"n": n, "d": d, "max_abs_embedding_diff": err, "checker": "ok"}))
