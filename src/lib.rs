//! salient: cluster images by what matters in them, not by their background.
//!
//! The crate is organised one module per concept:
//! * [`data`]: the input contract, streaming Parquet reading and image decoding;
//! * [`datasets`]: the bundled datasets with characteristic backgrounds;
//! * [`device`]: `cpu` or `cuda:N`, where training runs;
//! * [`model`]: the candle encoders, and a trained model directory loaded with them (for export);
//! * [`train`]: cIDFD training (augmentation, losses, memory banks, optimiser, the loop);
//! * [`cluster`], [`metrics`], [`evaluate`]: k-means, ACC/NMI/ARI, and the two together;
//! * [`baselines`]: PCA and contrastive PCA;
//! * [`whitening`]: reference whitening as a fixed convolution (the salient encoder's first layer);
//! * [`export`]: the ONNX graph of a trained model (preprocessing, encoder, k-means head);
//! * [`infer`]: ONNX Runtime: finding the library, sessions pooled per model;
//! * [`etl`]: `salient embed`, Parquet in and Parquet out through DataFusion;
//! * [`sql`]: `cluster_embed()` in DataFusion and the sessions that serve it;
//! * `distributed` (cargo feature `ballista`): the same on an Apache Ballista cluster;
//! * [`manifest`]: the model directory;
//! * [`alloc`]: the allocator (mimalloc) and its setting for training;
//! * [`atomic`]: all-or-nothing file output;
//! * [`error`]: the typed errors every module returns.

pub mod alloc;
pub mod atomic;
pub mod baselines;
pub mod cluster;
pub mod compare;
pub mod data;
pub mod datasets;
pub mod device;
#[cfg(feature = "ballista")]
pub mod distributed;
pub mod error;
pub mod etl;
pub mod evaluate;
pub mod export;
pub mod infer;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod nhwc;
pub mod pipeline;
pub mod progress;
pub mod quickstart;
pub mod shell;
pub mod sql;
pub mod train;
pub mod whitening;

pub use error::{Error, Result};
