"""Spectral clustering of a model's salient embedding (the kNN graph), then the clusters' mean
embeddings as centroids and every row assigned to the nearest, as the exported graph would.

    python3 spectral_embedding.py TARGET_EMB.parquet K
"""
import sys, numpy as np, pyarrow.parquet as pq
sys.path.insert(0, __import__("os").path.dirname(__file__))
from smoothed_kmeans import scores, normalise
from sklearn.cluster import SpectralClustering
t=pq.read_table(sys.argv[1],columns=["embedding","label"])
x=normalise(np.asarray(t.column("embedding").combine_chunks().values,dtype=np.float64).reshape(t.num_rows,-1))
y=np.asarray(t.column("label")); K=int(sys.argv[2])
for nn in [10,30]:
    sc=SpectralClustering(K,affinity='nearest_neighbors',n_neighbors=nn,random_state=0,assign_labels='kmeans',n_init=10).fit(x)
    p=sc.labels_
    c=normalise(np.stack([x[p==j].mean(0) for j in range(K)]))
    own=np.argmax(x@c.T,axis=1)
    print(nn,"spectral %.3f/%.3f/%.3f"%scores(y,p),"centroid-assign %.3f/%.3f/%.3f"%scores(y,own),flush=True)
