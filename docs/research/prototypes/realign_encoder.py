"""Re-aligns moving objects with a trained model's salient encoder: for every target image, the
WINDOW×WINDOW window (of all offsets) whose salient embedding lies nearest one of the model's
k-means centroids, scored against the alignment front's own window. Runs the exported ONNX graph
with ONNX Runtime, cut after the front (the window tensor feeds the encoder), so the encoder,
its preprocessing and centroids are exactly the model's. Labels are read for the scores only.

    python3 docs/research/prototypes/realign_encoder.py MODEL_DIR DATASET_DIR [ITERATIONS]
"""
import io
import sys
import time

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pyarrow.parquet as pq
from PIL import Image
from sklearn.cluster import KMeans

from tic_purity import acc

WINDOW = 28


def load(path):
    t = pq.read_table(path)
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.uint8)
                       for b in t.column("image").to_pylist()])
    return images, np.array(t.column("label").to_pylist())


def nmi(labels, pred):
    from sklearn.metrics import normalized_mutual_info_score
    return normalized_mutual_info_score(labels, pred)


def window_input(model):
    """Name of the tensor that holds the aligned window (the Reshape after GatherElements)."""
    nodes = model.graph.node
    for i, n in enumerate(nodes):
        if n.op_type == "GatherElements":
            return nodes[i + 1].output[0]
    raise SystemExit("the model has no alignment front")


def main(model_dir, data_dir, iterations=1):
    path = f"{model_dir}/model.onnx"
    model = onnx.load(path)
    cut = window_input(model)
    onnx.utils.extract_model(path, "/tmp/proto/encoder.onnx", [cut],
                             ["embedding", "cluster_id", "distance"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    full = ort.InferenceSession(path, opts)
    enc = ort.InferenceSession("/tmp/proto/encoder.onnx", opts)
    centroids = onnx.numpy_helper.to_array(
        [t for t in model.graph.initializer if t.name.startswith("centroids")][0])

    x, y = load(f"{data_dir}/target.parquet")
    n, side = len(x), x.shape[1]
    span = side - WINDOW + 1
    t0 = time.time()
    emb0, cid0, _ = full.run(None, {"image": x[:, None]})
    print(f"front windows: model clusters ACC {acc(y, cid0):.4f} NMI {nmi(y, cid0):.4f}", flush=True)

    # Every offset's embedding and distance to the nearest centroid.
    dist = np.empty((n, span * span), np.float32)
    embs = np.empty((span * span, n, emb0.shape[1]), np.float32)
    cids = np.empty((n, span * span), np.int64)
    for o in range(span * span):
        oy, ox = divmod(o, span)
        w = x[:, None, oy:oy + WINDOW, ox:ox + WINDOW].astype(np.float32)
        e, c, d = enc.run(None, {cut: w})
        embs[o], cids[:, o], dist[:, o] = e, c, d
    print(f"{span * span} offsets embedded in {time.time() - t0:.0f} s", flush=True)

    # The front's own offset (where its embedding equals the full graph's).
    front = np.argmin(((embs - emb0[None]) ** 2).sum(-1), axis=0)
    print(f"front offsets found exactly: {np.mean(((embs[front, np.arange(n)] - emb0) ** 2).sum(-1) < 1e-8):.3f}")

    best = np.argmin(dist, axis=1)
    print(f"re-aligned offsets equal to the front's: {np.mean(best == front):.3f}")
    e1 = embs[best, np.arange(n)]
    c1 = cids[np.arange(n), best]
    print(f"re-aligned: model clusters ACC {acc(y, c1):.4f} NMI {nmi(y, c1):.4f}")
    for name, e in (("front", emb0), ("re-aligned", e1)):
        km = KMeans(10, n_init=10, random_state=0).fit(e)
        print(f"{name}: k-means(10 restarts) ACC {acc(y, km.labels_):.4f} NMI {nmi(y, km.labels_):.4f}",
              flush=True)
    # Offset agreement with a margin: how peaked the distance is over offsets.
    sorted_d = np.sort(dist, axis=1)
    print(f"median margin best-vs-second {np.median(sorted_d[:, 1] - sorted_d[:, 0]):.4f}, "
          f"median distance front {np.median(dist[np.arange(n), front]):.4f} best {np.median(sorted_d[:, 0]):.4f}")

    # Local refinement: the nearest-centroid window within ±r px of the front's offset.
    fy, fx = np.divmod(front, span)
    oy, ox = np.divmod(np.arange(span * span), span)
    for r in (1, 2):
        near = (np.abs(oy[None] - fy[:, None]) <= r) & (np.abs(ox[None] - fx[:, None]) <= r)
        local = np.argmin(np.where(near, dist, np.inf), axis=1)
        c = cids[np.arange(n), local]
        km = KMeans(10, n_init=10, random_state=0).fit(embs[local, np.arange(n)])
        print(f"refined within ±{r}: moved {np.mean(local != front):.3f}; model clusters ACC "
              f"{acc(y, c):.4f}; k-means ACC {acc(y, km.labels_):.4f} NMI {nmi(y, km.labels_):.4f}",
              flush=True)
    # Shift pooling: the mean embedding over offsets near the front's (or all of them).
    for r in (1, 2, span):
        near = (np.abs(oy[None] - fy[:, None]) <= r) & (np.abs(ox[None] - fx[:, None]) <= r)
        pooled = np.einsum("no,ond->nd", near.astype(np.float32), embs)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-12
        km = KMeans(10, n_init=10, random_state=0).fit(pooled)
        print(f"pooled within ±{r}: k-means ACC {acc(y, km.labels_):.4f} NMI {nmi(y, km.labels_):.4f}",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
