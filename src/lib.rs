//! salient: cluster images by what matters in them, not by their background.
//!
//! The crate is organised one module per concept:
//! * [`data`]: the input contract, streaming Parquet reading and image decoding;
//! * [`datasets`]: the bundled datasets with characteristic backgrounds;
//! * [`device`]: `cpu` or `cuda:N`, where training runs;
//! * [`preprocess`]: the input normalisation shared by training and the ONNX graph;
//! * [`kernels`]: channels-last convolution and batch norm as candle custom ops (CPU, CUDA);
//! * [`model`]: the candle encoders (small CNN, ResNet-18) and their layers;
//! * [`config`]: every training setting, with its default;
//! * [`train`]: cIDFD training (augmentation, losses, memory banks, optimiser, the loop);
//! * [`cluster`], [`metrics`], [`evaluate`]: k-means, ACC/NMI/ARI, and the two together;
//! * [`baselines`]: PCA and contrastive PCA;
//! * [`whitening`]: reference whitening as a fixed convolution (the salient encoder's first layer);
//! * [`subspace`]: the salient embedding's contrastive subspace (fitted after training, before
//!   k-means);
//! * [`alignment`]: the alignment front, a fixed first stage that cuts each image's object window
//!   for objects that move (shift-invariant k-means templates);
//! * [`export`]: a trained model directory loaded with candle, and its ONNX graph
//!   (preprocessing, encoder, k-means head);
//! * [`infer`]: ONNX Runtime: finding the library, sessions pooled per model;
//! * [`etl`]: `salient embed`, Parquet in and Parquet out through DataFusion;
//! * [`sql`]: `cluster_embed()` in DataFusion and the sessions that serve it;
//! * `distributed` (cargo feature `ballista`): the same on an Apache Ballista cluster;
//! * [`manifest`]: the model directory; [`digest`]: sha256 ids and fingerprints;
//! * [`alloc`]: the allocator (mimalloc) and its setting for training;
//! * [`atomic`]: all-or-nothing file output;
//! * [`error`]: the typed errors every module returns.

pub mod alignment;
pub mod alloc;
pub mod atomic;
pub mod baselines;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod data;
pub mod datasets;
pub mod device;
pub mod digest;
#[cfg(feature = "ballista")]
pub mod distributed;
pub mod error;
pub mod etl;
pub mod evaluate;
pub mod export;
pub mod infer;
pub mod kernels;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod progress;
pub mod quickstart;
pub mod report;
#[cfg(feature = "serve")]
pub mod serve;
pub mod shell;
pub mod sql;
pub mod subspace;
pub mod train;
pub mod whitening;

pub use error::{Error, Result};
