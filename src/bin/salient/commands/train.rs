//! Training jobs: `salient train`, `salient compare`, `salient run` (a pipeline file) and
//! `salient quickstart`.

use std::path::PathBuf;

use anyhow::Context;
use salient::compare::{self, CompareJob, CompareMethod};
use salient::data::SizePolicy;
use salient::model::Architecture;
use salient::train::job::{self, TrainJob};
use salient::train::{Method, TrainConfig};

use super::Format;

#[derive(clap::Args, Debug)]
pub(crate) struct TrainArgs {
    /// Target table: a Parquet file, a directory of them, or a glob.
    #[arg(long)]
    target: String,
    /// Reference table of background-only images (needed by cIDFD).
    #[arg(long)]
    reference: Option<String>,
    /// The model directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Settings file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum)]
    method: Option<Method>,
    #[arg(long, value_enum)]
    architecture: Option<Architecture>,
    /// Number of clusters (default: the number of labels, else 10).
    #[arg(long)]
    clusters: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate every N epochs when the target has labels (ACC per epoch in the training log).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Continue from the model directory's last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Resize images whose size differs from the first image's instead of refusing them.
    #[arg(long)]
    resize: bool,
    /// Where to train: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// On CUDA, let FP32 matrix products use TF32 tensor cores (faster, ~1e-3 relative error
    /// per product, as PyTorch's cuDNN convolutions by default).
    #[arg(long)]
    tf32: bool,
}

impl TrainArgs {
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let mut config = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        if let Some(v) = self.method {
            config.method = v;
        }
        if let Some(v) = self.architecture {
            config.architecture = v;
        }
        if self.clusters.is_some() {
            config.clusters = self.clusters;
        }
        if let Some(v) = self.epochs {
            config.epochs = v;
        }
        if let Some(v) = self.batch_size {
            config.batch_size = v;
        }
        if let Some(v) = self.seed {
            config.seed = v;
        }
        if let Some(v) = self.eval_every {
            config.eval_every = v;
        }
        Ok(config)
    }

    pub(crate) fn run(self) -> anyhow::Result<()> {
        let job = TrainJob {
            target: self.target.clone(),
            reference: self.reference.clone(),
            out: self.out.clone(),
            config: self.config()?,
            resume: self.resume,
            size: if self.resize {
                SizePolicy::Resize
            } else {
                SizePolicy::Exact
            },
            device: salient::device::open(&self.device)?,
        };
        candle_core::cuda::set_gemm_reduced_precision_f32(self.tf32);
        let report = job::run(&job).context("training failed")?;
        println!("model: {}", report.out.display());
        println!(
            "trained {} epochs in {:.0} s ({:.0} images/s), k = {}, d = {}",
            report.epochs, report.seconds, report.images_per_second, report.k, report.d
        );
        if let Some(m) = report.metrics {
            println!(
                "clusters vs labels: ACC {:.4}  NMI {:.4}  ARI {:.4}  (n = {})",
                m.acc, m.nmi, m.ari, m.n
            );
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct CompareArgs {
    #[arg(long)]
    target: String,
    #[arg(long)]
    reference: String,
    #[arg(long)]
    clusters: usize,
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Methods to run, each on its own rows: k-means on raw pixels, on PCA, on contrastive PCA
    /// (a row per alpha), on reference-whitened pixels, on those reduced to the training
    /// settings' `neighbour_components` (64 unless --config sets it), shift-invariant k-means,
    /// IDFD and cIDFD.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw,pca,cpca,whiten,whiten-pca,tic,idfd,cidfd"
    )]
    methods: Vec<CompareMethod>,
    /// Components kept by PCA and contrastive PCA (`whiten-pca` keeps `neighbour_components`).
    #[arg(long, default_value_t = 20)]
    components: usize,
    /// The alpha grid of contrastive PCA (each alpha is reported on its own row).
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,5,10")]
    cpca_alphas: Vec<f64>,
    /// Side of the windows shift-invariant k-means (`tic`) aligns; 0: 28, or the image's
    /// smaller side if that is less.
    #[arg(long, default_value_t = 0)]
    align_window: usize,
    /// Settings of the IDFD / cIDFD runs (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Where the trained models go.
    #[arg(long, default_value = "out/compare")]
    work_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Where IDFD and cIDFD train: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda`
    /// feature (the other methods run on the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// On CUDA, let FP32 matrix products use TF32 tensor cores.
    #[arg(long)]
    tf32: bool,
}

impl CompareArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let mut train = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        if let Some(e) = self.epochs {
            train.epochs = e;
        }
        let job = CompareJob {
            target: self.target,
            reference: self.reference,
            clusters: self.clusters,
            seeds: self.seeds,
            methods: self.methods,
            components: self.components,
            cpca_alphas: self.cpca_alphas,
            align_window: self.align_window,
            train,
            work_dir: self.work_dir,
            size: SizePolicy::Exact,
            device: salient::device::open(&self.device)?,
        };
        candle_core::cuda::set_gemm_reduced_precision_f32(self.tf32);
        let rows = compare::run(&job).context("comparison failed")?;
        match self.format {
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(&compare::to_json(&rows))?
            ),
            Format::Text => print!("{}", compare::format_table(&rows)),
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    pipeline: PathBuf,
    /// Rerun every step.
    #[arg(long)]
    force: bool,
    /// Where the train step runs: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda`
    /// feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl RunArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            pipeline,
            force,
            device,
        } = self;
        let device = salient::device::open(&device)?;
        let spec = salient::pipeline::Pipeline::from_file(&pipeline)?;
        let report = salient::pipeline::run(&spec, force, &device)
            .with_context(|| format!("pipeline {} failed", pipeline.display()))?;
        for (step, outcome) in &report.steps {
            println!("{step:<9} {outcome:?}");
        }
        if let Some(m) = report.metrics {
            println!(
                "ACC {:.4}  NMI {:.4}  ARI {:.4}  (n = {})",
                m.acc, m.nmi, m.ari, m.n
            );
        }
        println!("outputs: {}", report.out.display());
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct QuickstartArgs {
    /// Where the quickstart writes its outputs.
    #[arg(long, default_value = "out/quickstart")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl QuickstartArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        salient::quickstart::run(&self.out, self.seed).context("quickstart failed")
    }
}
