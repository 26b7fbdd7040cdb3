//! The `salient` command line. Errors are typed in the library and reported here, once, with
//! their context; the exit status tells a scheduler what happened (see [`ExitCode`]s below).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use salient::compare::{self, CompareJob, CompareMethod};
use salient::data::SizePolicy;
use salient::datasets::{self, DatasetName};
use salient::model::Architecture;
use salient::train::job::{self, TrainJob};
use salient::train::{Method, TrainConfig};

/// Exit status for errors caused by input, configuration or the environment.
const EXIT_FAILURE: u8 = 1;
/// Exit status for command-line usage errors (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "salient",
    version,
    about = "Cluster images by what matters in them, not by their background (contrastive IDFD)"
)]
struct Cli {
    /// Log format on stderr: human-readable text, or JSON lines for schedulers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build or list the bundled datasets with characteristic backgrounds.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Train a model on a target table (and a reference table of backgrounds), fit k-means, and
    /// write the model directory.
    Train(TrainArgs),
    /// Score a model's clusters against a labelled table (ACC, NMI, ARI).
    Evaluate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: String,
        #[arg(long, default_value = "label")]
        label_column: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[arg(long)]
        resize: bool,
    },
    /// Write MODEL/model.onnx from the model's candle weights (train does it too) and record its
    /// sha256 as the model id.
    Export { model: PathBuf },
    /// What a model is: id, input, k, d, training data, metrics. Verifies model.onnx against
    /// the manifest and loads it in ONNX Runtime.
    Inspect {
        model: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Parquet in, Parquet out: every input column plus `embedding`, `cluster_id` and
    /// `distance`, streamed through DataFusion and written atomically.
    Embed {
        #[arg(long)]
        model: PathBuf,
        /// A Parquet file, a directory of them, or a glob.
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: PathBuf,
        /// Rows per record batch.
        #[arg(long, default_value_t = 1024)]
        batch_size: usize,
        /// ONNX Runtime threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// Resize images of another size than the model's instead of failing.
        #[arg(long)]
        resize: bool,
        /// Give NULL outputs for undecodable images instead of failing.
        #[arg(long)]
        null_on_bad_image: bool,
    },
    /// Run SQL with `cluster_embed()` registered. Without SQL, an interactive prompt.
    Sql {
        /// A model directory, optionally named: NAME=DIR. The first is also `default`.
        #[arg(long = "model")]
        models: Vec<String>,
        /// A table: NAME=PATH (a Parquet file, a directory of them, or a glob).
        #[arg(long = "table")]
        tables: Vec<String>,
        #[arg(long, value_enum, default_value_t = salient::sql::OutputFormat::Table)]
        format: salient::sql::OutputFormat,
        /// Run the queries on an Apache Ballista cluster: the scheduler's URL, df://HOST:PORT
        /// (see `salient scheduler`; needs a build with `--features ballista`).
        #[arg(long, value_name = "URL")]
        scheduler: Option<String>,
        /// Statements separated by `;`; the last one's rows are printed.
        sql: Option<String>,
    },
    /// Run an Apache Ballista scheduler that knows `cluster_embed` (feature `ballista`).
    #[cfg(feature = "ballista")]
    Scheduler {
        /// The models, as for `sql`: the same paths the executors load.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        /// Address to bind; 0.0.0.0 accepts executors and clients from other machines.
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The host name executors and clients reach the scheduler by.
        #[arg(long, default_value = "localhost")]
        external_host: String,
        #[arg(long, default_value_t = 50050)]
        port: u16,
    },
    /// Run an Apache Ballista executor with `cluster_embed` (feature `ballista`).
    #[cfg(feature = "ballista")]
    Executor {
        /// The models, as for `sql`; every executor must be able to read these paths.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        /// The scheduler, HOST:PORT.
        #[arg(long, default_value = "localhost:50050")]
        scheduler: String,
        /// Address to bind the Arrow Flight service to.
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The host name other nodes fetch this executor's results from (default: the address
        /// the scheduler sees).
        #[arg(long)]
        external_host: Option<String>,
        /// The Arrow Flight port (advertised to the scheduler, so not 0).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Tasks run at once (default: one per core).
        #[arg(long, default_value_t = 0)]
        vcores: usize,
        /// Directory for shuffle files (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<String>,
    },
    /// Run the baselines (raw, PCA, contrastive PCA) and IDFD / cIDFD on the same data and seeds.
    Compare(CompareArgs),
    /// Run a scheduled job described by a pipeline file (see pipelines/); steps whose inputs and
    /// settings did not change since the last successful run are skipped.
    Run {
        pipeline: PathBuf,
        /// Rerun every step.
        #[arg(long)]
        force: bool,
        /// Where the train step runs: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda`
        /// feature.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// The README's main job on the bundled data; prints where everything went.
    Quickstart {
        /// Where the quickstart writes its outputs.
        #[arg(long, default_value = "out/quickstart")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
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
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    #[arg(long)]
    target: String,
    #[arg(long)]
    reference: String,
    #[arg(long)]
    clusters: usize,
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw,pca,cpca,whiten,idfd,cidfd"
    )]
    methods: Vec<CompareMethod>,
    /// Components kept by PCA and contrastive PCA.
    #[arg(long, default_value_t = 20)]
    components: usize,
    /// The alpha grid of contrastive PCA (each alpha is reported on its own row).
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,5,10")]
    cpca_alphas: Vec<f64>,
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
}

#[derive(Subcommand, Debug)]
enum DatasetsCommand {
    /// Write DIR/NAME/target.parquet and DIR/NAME/reference.parquet.
    Build {
        name: DatasetName,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where fetched sources (Fashion-MNIST) live; default $SALIENT_DATA_DIR or ~/.cache/salient/data.
        #[arg(long)]
        sources: Option<PathBuf>,
        /// Keep only the first N target images (after shuffling) and N references.
        #[arg(long)]
        rows: Option<usize>,
    },
    /// List the datasets salient can build.
    List,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The error and its causes on one line. Library errors already print their source (for
/// users of the library), so a cause whose text is already in the line is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SALIENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a scheduler's log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Datasets { command } => match command {
            DatasetsCommand::Build {
                name,
                out,
                seed,
                sources,
                rows,
            } => {
                let sources = sources.unwrap_or_else(datasets::default_sources_dir);
                let built = datasets::build_with_rows(name, &out, seed, &sources, rows)
                    .with_context(|| format!("building dataset {name}"))?;
                println!(
                    "{name}: {} target rows -> {}",
                    built.target_rows,
                    built.target.display()
                );
                println!(
                    "{name}: {} reference rows -> {}",
                    built.reference_rows,
                    built.reference.display()
                );
                Ok(())
            }
            DatasetsCommand::List => {
                for name in DatasetName::value_variants() {
                    println!(
                        "{:<25} k={:<3} {}",
                        name.as_str(),
                        name.classes(),
                        name.description()
                    );
                }
                Ok(())
            }
        },
        Command::Train(args) => {
            let job = TrainJob {
                target: args.target.clone(),
                reference: args.reference.clone(),
                out: args.out.clone(),
                config: args.config()?,
                resume: args.resume,
                size: if args.resize {
                    SizePolicy::Resize
                } else {
                    SizePolicy::Exact
                },
                device: salient::device::open(&args.device)?,
            };
            candle_core::cuda::set_gemm_reduced_precision_f32(args.tf32);
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
        Command::Evaluate {
            model,
            input,
            label_column,
            format,
            resize,
        } => {
            let size = if resize {
                SizePolicy::Resize
            } else {
                SizePolicy::Exact
            };
            let scores = salient::evaluate::evaluate_model(&model, &input, &label_column, size)
                .with_context(|| format!("evaluating {} on {input}", model.display()))?;
            match format {
                Format::Json => println!("{}", serde_json::to_string(&scores)?),
                Format::Text => println!(
                    "ACC {:.4}  NMI {:.4}  ARI {:.4}  (n = {})",
                    scores.acc, scores.nmi, scores.ari, scores.n
                ),
            }
            Ok(())
        }
        Command::Export { model } => {
            let id = salient::export::export_model(&model)
                .with_context(|| format!("exporting {}", model.display()))?;
            println!(
                "{}: id {id}",
                model.join(salient::export::ONNX_FILE).display()
            );
            Ok(())
        }
        Command::Inspect { model, format } => {
            let info = salient::infer::inspect(&model)
                .with_context(|| format!("inspecting {}", model.display()))?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&info)?),
                Format::Text => print!("{}", info.to_text()),
            }
            Ok(())
        }
        Command::Embed {
            model,
            input,
            output,
            batch_size,
            threads,
            resize,
            null_on_bad_image,
        } => {
            let mut job = salient::etl::EmbedJob::new(model, input, output);
            job.batch_size = batch_size;
            if let Some(t) = threads {
                job.threads = t;
            }
            job.resize = resize;
            job.null_on_bad_image = null_on_bad_image;
            let report =
                salient::etl::run(&job).with_context(|| format!("embedding {}", job.input))?;
            println!(
                "{} rows -> {} in {:.1} s (model {})",
                report.rows,
                report.output.display(),
                report.seconds,
                report.model_id
            );
            Ok(())
        }
        Command::Sql {
            models,
            tables,
            format,
            scheduler,
            sql,
        } => {
            let engine = match scheduler {
                Some(url) => salient::shell::Engine::Ballista(url),
                None => salient::shell::Engine::Local,
            };
            salient::shell::run(&models, &tables, &engine, format, sql.as_deref())
        }
        #[cfg(feature = "ballista")]
        Command::Scheduler {
            models,
            bind_host,
            external_host,
            port,
        } => {
            let models = std::sync::Arc::new(salient::shell::load_models(&models)?);
            let options = salient::distributed::SchedulerOptions {
                bind_host,
                external_host,
                port,
            };
            salient::sql::runtime()?
                .block_on(salient::distributed::run_scheduler(models, &options))
                .context("Ballista scheduler failed")
        }
        #[cfg(feature = "ballista")]
        Command::Executor {
            models,
            scheduler,
            bind_host,
            external_host,
            port,
            vcores,
            work_dir,
        } => {
            let (scheduler_host, scheduler_port) = scheduler
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .with_context(|| format!("--scheduler `{scheduler}`: expected HOST:PORT"))?;
            // `cluster_embed` runs its batches on rayon's global pool: size it to the executor's
            // task slots, so an executor started with `--vcores N` keeps N cores busy, not all.
            if vcores > 0 {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(vcores)
                    .build_global()
                    .context("sizing the thread pool to --vcores")?;
            }
            let models = std::sync::Arc::new(salient::shell::load_models(&models)?);
            let options = salient::distributed::ExecutorOptions {
                scheduler_host,
                scheduler_port,
                bind_host,
                external_host,
                port,
                vcores,
                work_dir,
            };
            salient::sql::runtime()?
                .block_on(salient::distributed::run_executor(models, &options))
                .context("Ballista executor failed")
        }
        Command::Compare(args) => {
            let mut train = match &args.config {
                Some(path) => TrainConfig::from_toml_file(path)?,
                None => TrainConfig::default(),
            };
            if let Some(e) = args.epochs {
                train.epochs = e;
            }
            let job = CompareJob {
                target: args.target,
                reference: args.reference,
                clusters: args.clusters,
                seeds: args.seeds,
                methods: args.methods,
                components: args.components,
                cpca_alphas: args.cpca_alphas,
                train,
                work_dir: args.work_dir,
                size: SizePolicy::Exact,
            };
            let rows = compare::run(&job).context("comparison failed")?;
            match args.format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&compare::to_json(&rows))?
                ),
                Format::Text => print!("{}", compare::format_table(&rows)),
            }
            Ok(())
        }
        Command::Run {
            pipeline,
            force,
            device,
        } => {
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
        Command::Quickstart { out, seed } => {
            salient::quickstart::run(&out, seed).context("quickstart failed")
        }
    }
}
