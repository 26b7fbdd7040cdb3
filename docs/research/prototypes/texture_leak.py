"""Background leakage on a dataset with several background textures (fashion-textures): does a
model's salient embedding still encode which texture an image sits on?

The datasets do not record the texture, so it is estimated: Fashion-MNIST objects leave the
image corners empty, and the four 5×5 corners' mean and standard deviation plus the mean
horizontal gradient magnitude, clustered into 3 groups on the reference images (k-means), give
each target a texture group. Reports, with k-means (10 clusters, 10 restarts) and 3-fold
logistic-regression probes:
- NMI of the embedding's clusters with the classes and with the texture groups, and the same
  for k-means on the reference-whitened pixels (what `whiten(ref)` clusters);
- how well a linear probe reads the texture group and the class from each;
- how often an image's 10 nearest whitened-pixel neighbours (PCA 64, cosine: the neighbour
  positives) share its texture group, against chance.
Labels are read for the diagnostic only.

    salient embed --model MODEL --input DATASET_DIR/target.parquet --output EMB.parquet
    python3 docs/research/prototypes/texture_leak.py DATASET_DIR EMB.parquet
"""
import sys

import numpy as np
import pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score as nmi
from sklearn.model_selection import cross_val_score

from neighbour_purity import load, purity
from tic_purity import whitened_targets


def corner_texture(images):
    """Per image: mean and standard deviation of the four 5×5 corners, mean |horizontal gradient|."""
    n = len(images)
    corners = np.concatenate(
        [c.reshape(n, -1) for c in (images[:, :5, :5], images[:, :5, -5:], images[:, -5:, :5], images[:, -5:, -5:])],
        axis=1,
    )
    gradient = np.abs(np.diff(images, axis=2)).mean((1, 2))
    return np.stack([corners.mean(1), corners.std(1), gradient], axis=1)


def probe(features, labels):
    return cross_val_score(LogisticRegression(max_iter=2000), features, labels, cv=3).mean()


def main(directory, embeddings):
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    db, dx = corner_texture(b), corner_texture(x)
    mu, sd = db.mean(0), db.std(0)
    texture = KMeans(3, n_init=10, random_state=0).fit((db - mu) / sd).predict((dx - mu) / sd)
    share = np.bincount(texture) / len(texture)
    print(f"texture groups of the targets: {np.bincount(texture).tolist()}")

    table = pq.read_table(embeddings)
    assert (table.column("label").to_numpy() == y).all(), "embeddings are not of this dataset's targets in order"
    e = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    z, _ = whitened_targets(directory, len(x))
    zf = z.reshape(len(z), -1)
    zf /= np.linalg.norm(zf, axis=1, keepdims=True)
    zp = PCA(128, random_state=0).fit_transform(zf)

    for name, clustered, probed in (("salient embedding", e, e), ("whitened pixels", zf, zp)):
        p = KMeans(10, n_init=10, random_state=0).fit_predict(clustered)
        print(
            f"{name}: k-means NMI with class {nmi(y, p):.3f}, with texture {nmi(texture, p):.3f}; "
            f"linear probe class {probe(probed, y):.3f}, texture {probe(probed, texture):.3f}"
        )
    neighbours = PCA(64, random_state=0).fit_transform(z.reshape(len(z), -1))
    print(
        f"whitened-pixel neighbours (10): class purity {purity(neighbours, y):.3f}, "
        f"texture purity {purity(neighbours, texture):.3f} (chance {share @ share:.3f})"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
