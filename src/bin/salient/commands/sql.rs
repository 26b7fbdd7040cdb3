//! SQL with `cluster_embed()`: `salient sql`, and with the feature `ballista` the cluster's
//! `salient scheduler` and `salient executor`.

#[cfg(feature = "ballista")]
use anyhow::Context;

#[derive(clap::Args, Debug)]
pub(crate) struct SqlArgs {
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
}

impl SqlArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            models,
            tables,
            format,
            scheduler,
            sql,
        } = self;
        let engine = match scheduler {
            Some(url) => salient::shell::Engine::Ballista(url),
            None => salient::shell::Engine::Local,
        };
        salient::shell::run(&models, &tables, &engine, format, sql.as_deref())
    }
}

#[cfg(feature = "ballista")]
#[derive(clap::Args, Debug)]
pub(crate) struct SchedulerArgs {
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
}

#[cfg(feature = "ballista")]
impl SchedulerArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            models,
            bind_host,
            external_host,
            port,
        } = self;
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
}

#[cfg(feature = "ballista")]
#[derive(clap::Args, Debug)]
pub(crate) struct ExecutorArgs {
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
}

#[cfg(feature = "ballista")]
impl ExecutorArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            models,
            scheduler,
            bind_host,
            external_host,
            port,
            vcores,
            work_dir,
        } = self;
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
}
