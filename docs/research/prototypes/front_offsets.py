"""How well a trained located front (`align_search_radius`) aligns, against the generator's
offsets (replay_offsets): runs the model's ONNX graph with the locator's start and the chosen
window exposed, and scores both as align_truth.py does (exact and within 1 px, each template's
constant offset removed; k-means on the whitened windows). With LOCAL, the prototype's local
shift-invariant k-means (cam_windows.local_tic, radius 3, 3 restarts) also runs from the same
starts, its templates started by k-means on the start windows (`kmeans`) or by k-means++ seeds
alone (`plusplus`). Labels and offsets are read for the scores only.

    python3 docs/research/prototypes/front_offsets.py MODEL_ONNX DATASET_DIR OFFSETS_TXT [LOCAL]
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.cluster import KMeans, kmeans_plusplus

import cam_windows
from align_estimators import report
from neighbour_purity import load
from tic_purity import WINDOW
from tic_windows import whiten


def exposed_outputs(model):
    """The graph with the window scores (before the max over templates), the locator's start
    row and column (the two Clip nodes) and the chosen offset (the ArgMax) as extra outputs."""
    g = model.graph
    by_op = lambda op: [n for n in g.node if n.op_type == op]
    scores = by_op("ReduceMax")[0].input[0]
    start_row, start_col = (n.output[0] for n in by_op("Clip")[:2])
    offset = by_op("ArgMax")[0].output[0]
    names = [scores, start_row, start_col, offset]
    for name in names:
        g.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model, names


class PlusPlusOnly(KMeans):
    """k-means++ seeds without Lloyd rounds."""

    def fit(self, x, *args, **kwargs):
        self.cluster_centers_, _ = kmeans_plusplus(x, self.n_clusters, random_state=self.random_state)
        return self


def main(model_path, directory, offsets_txt, local=None):
    model, names = exposed_outputs(onnx.load(model_path))
    session = ort.InferenceSession(model.SerializeToString())
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    pixels = np.round(x * 255).astype(np.uint8)[:, None]
    runs = [session.run(names, {"image": pixels[i:i + 500]}) for i in range(0, len(x), 500)]
    scores, row, col, offset = (np.concatenate([r[j] for r in runs]) for j in range(4))
    span = x.shape[1] - WINDOW + 1
    offset = offset.reshape(-1).astype(int)
    templates = scores.reshape(len(x), -1, span * span)[np.arange(len(x)), :, offset].argmax(1)
    start = (row.reshape(-1) * span + col.reshape(-1)).astype(int)
    truth = np.loadtxt(offsets_txt, dtype=int)[:, 4:6]
    z = whiten(x, b)(x)
    report("locator start", start, truth, z, y, span)
    report("front", offset, truth, z, y, span, groups=templates)
    if local:
        cam_windows.KMeans = {"kmeans": KMeans, "plusplus": PlusPlusOnly}[local]
        kk, oo, _, _ = cam_windows.located_search(z, start, 0, y)
        report(f"local tic ({local}) from the starts", oo, truth, z, y, span, groups=kk)


if __name__ == "__main__":
    main(*sys.argv[1:])
