//! Scale-out on Apache Ballista: `cluster_embed` on a scheduler and its executors.
//!
//! Ballista ships plans between processes by name: a scalar UDF is looked up in the receiving
//! process's registry, and `salient.*` settings travel as key-value pairs that only a process
//! knowing [`SalientOptions`] keeps. So the same pieces are registered in all three roles:
//! - the client plans the SQL (`salient sql --scheduler`, [`remote_session`]);
//! - the scheduler decodes and re-plans it ([`run_scheduler`]);
//! - every executor runs the stages ([`run_executor`]).
//!
//! Each process loads the models once from a path all of them can read; an executor's tasks
//! share one `Arc<ScalarUDF>`, hence one pool of ONNX Runtime sessions per process.
//! How to run it and what each process needs: `docs/scale-out.md`.

use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::{
    ballista_aggregate_functions, ballista_scalar_functions, ballista_window_functions,
    SessionConfigExt,
};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::ConfigProducer;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_server::SessionBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{Error, Result};
use crate::sql::{cluster_embed_udf, session, ModelSet, SalientOptions};

/// The session configuration of every role: Ballista's settings and salient's.
pub fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista().with_option_extension(SalientOptions::default())
}

fn config_producer() -> ConfigProducer {
    Arc::new(session_config)
}

/// The scheduler's and executors' session state: a local salient session (its analyzer and
/// optimizer rules, `cluster_embed`) with Ballista's functions and optimizer rules added.
pub fn cluster_state(models: Arc<ModelSet>, config: SessionConfig) -> SessionState {
    let local = session(models.clone(), config).state();
    let rules = ballista_core::optimizer::with_ballista_optimizer_rules(local.optimizers());
    let mut scalars = ballista_scalar_functions();
    scalars.push(Arc::new(cluster_embed_udf(models)));
    SessionStateBuilder::new_from_existing(local)
        .with_optimizer_rules(rules)
        .with_scalar_functions(scalars)
        .with_aggregate_functions(ballista_aggregate_functions())
        .with_window_functions(ballista_window_functions())
        .build()
}

/// Where a scheduler listens.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// The address to bind, e.g. 0.0.0.0 to accept executors from other machines.
    pub bind_host: String,
    /// The host name executors and clients reach this scheduler by.
    pub external_host: String,
    pub port: u16,
}

/// Runs a Ballista scheduler that knows `cluster_embed`, until the process is stopped.
pub async fn run_scheduler(models: Arc<ModelSet>, options: &SchedulerOptions) -> Result<()> {
    let builder: SessionBuilder = Arc::new(move |config| Ok(cluster_state(models.clone(), config)));
    let mut config = SchedulerConfig::default()
        .with_hostname(options.external_host.clone())
        .with_port(options.port)
        // Executors poll for work: they need no inbound gRPC port.
        .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
        .with_override_config_producer(config_producer())
        .with_override_session_builder(builder);
    config.bind_host = options.bind_host.clone();
    let address = format!("{}:{}", options.bind_host, options.port);
    let address = address
        .parse()
        .map_err(|e| Error::Invalid(format!("scheduler address `{address}`: {e}")))?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(ballista_error("starting the scheduler"))?;
    tracing::info!(%address, "Ballista scheduler with cluster_embed listening");
    ballista_scheduler::scheduler_process::start_server(cluster, address, Arc::new(config))
        .await
        .map_err(ballista_error("scheduler"))
}

/// How an executor joins a scheduler.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// The address to bind the Arrow Flight service (which serves shuffle data) to.
    pub bind_host: String,
    /// The host name other executors and clients fetch results from (default: the address
    /// the scheduler sees).
    pub external_host: Option<String>,
    /// The Arrow Flight port; a real port, since it is advertised to the scheduler.
    pub port: u16,
    /// Tasks run at once (0: one per core).
    pub vcores: usize,
    /// Where shuffle files go (default: a temporary directory).
    pub work_dir: Option<String>,
}

/// Runs a Ballista executor with `cluster_embed` serving `models`, until the process is
/// stopped (Ctrl-C, SIGTERM) or the scheduler goes away.
pub async fn run_executor(models: Arc<ModelSet>, options: &ExecutorOptions) -> Result<()> {
    let state = cluster_state(models, session_config());
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.port,
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        // Wait for a scheduler that is still starting instead of failing at once.
        scheduler_connect_timeout_seconds: 60,
        vcores: options.vcores,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: options.work_dir.clone(),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&state))),
        override_config_producer: Some(config_producer()),
        ..Default::default()
    };
    tracing::info!(
        scheduler = %format!("{}:{}", options.scheduler_host, options.scheduler_port),
        port = options.port,
        "Ballista executor with cluster_embed starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(ballista_error("executor"))
}

/// A client session whose queries run on the Ballista scheduler at `url`
/// (`df://host:port`), with `cluster_embed` and salient's settings available for planning.
pub async fn remote_session(models: Arc<ModelSet>, url: &str) -> Result<SessionContext> {
    use ballista::prelude::SessionContextExt;
    let local = session(models.clone(), session_config()).state();
    let ctx = SessionContext::remote_with_state(url, local)
        .await
        .map_err(|e| Error::Invalid(format!("connecting to the scheduler at {url}: {e}")))?;
    // Ballista's upgrade of the state replaces its scalar functions: register ours again.
    ctx.register_udf(cluster_embed_udf(models));
    Ok(ctx)
}

fn ballista_error(what: &'static str) -> impl Fn(ballista_core::error::BallistaError) -> Error {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

/// A scheduler and executors on this machine, each its own `salient` process on loopback
/// ports: what the integration test and the benchmark run queries against. The processes are
/// killed when it is dropped.
pub struct LocalCluster {
    /// The URL for `salient sql --scheduler`.
    pub url: String,
    /// Each executor's work directory (shuffle files land there).
    pub work_dirs: Vec<std::path::PathBuf>,
    children: Vec<std::process::Child>,
    /// Holds the processes' logs and the executors' work directories.
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts `salient scheduler` and `executors` × `salient executor` (each running `vcores`
    /// tasks at once) from the `salient` binary at `binary`, serving the models `model_specs`,
    /// and waits until the scheduler accepts connections. Process logs go to files under a
    /// temporary directory (see [`LocalCluster::logs`]).
    pub fn start(
        binary: &std::path::Path,
        model_specs: &[String],
        executors: usize,
        vcores: usize,
    ) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let mut cluster = Self {
            url: String::new(),
            work_dirs: Vec::new(),
            children: Vec::new(),
            dir,
        };
        let scheduler_port = free_port()?;
        let mut scheduler = vec![
            "scheduler".to_string(),
            "--port".into(),
            scheduler_port.to_string(),
        ];
        for m in model_specs {
            scheduler.extend(["--model".into(), m.clone()]);
        }
        cluster.spawn(binary, "scheduler", &scheduler)?;
        cluster.wait_for_port(scheduler_port)?;
        for i in 0..executors {
            let work_dir = cluster.dir.path().join(format!("executor-{i}"));
            std::fs::create_dir_all(&work_dir).map_err(|e| Error::io(&work_dir, e))?;
            let mut args = vec![
                "executor".to_string(),
                "--scheduler".into(),
                format!("localhost:{scheduler_port}"),
                "--port".into(),
                free_port()?.to_string(),
                "--vcores".into(),
                vcores.to_string(),
                "--work-dir".into(),
                work_dir.display().to_string(),
            ];
            for m in model_specs {
                args.extend(["--model".into(), m.clone()]);
            }
            cluster.spawn(binary, &format!("executor-{i}"), &args)?;
            cluster.work_dirs.push(work_dir);
        }
        cluster.url = format!("df://localhost:{scheduler_port}");
        cluster.wait_for_executors()?;
        Ok(cluster)
    }

    fn spawn(&mut self, binary: &std::path::Path, name: &str, args: &[String]) -> Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = file.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = std::process::Command::new(binary)
            .args(args)
            .env("SALIENT_LOG", "info")
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(binary, e))?;
        self.children.push(child);
        Ok(())
    }

    fn wait_for_port(&mut self, port: u16) -> Result<()> {
        self.wait_until(&format!("the scheduler to listen on port {port}"), |_| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    /// Polls `ready` every 100 ms for up to 60 s; fails early, with the logs, if a process exits.
    fn wait_until(&mut self, what: &str, ready: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if ready(self) {
                return Ok(());
            }
            self.check_running()?;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(Error::Invalid(format!(
            "timed out after 60 s waiting for {what}:\n{}",
            self.logs()
        )))
    }

    /// Fails, with the logs, if a process has exited.
    fn check_running(&mut self) -> Result<()> {
        match self
            .children
            .iter_mut()
            .find_map(|c| c.try_wait().ok().flatten())
        {
            Some(status) => Err(Error::Invalid(format!(
                "a cluster process exited with {status} while starting:\n{}",
                self.logs()
            ))),
            None => Ok(()),
        }
    }

    /// Waits until every executor polls the scheduler for work, so that a query submitted next
    /// can run on all of them.
    fn wait_for_executors(&mut self) -> Result<()> {
        self.wait_until("the executors to reach the scheduler", |cluster| {
            (0..cluster.work_dirs.len())
                .all(|i| cluster.executor_log(i).contains("Starting poll work loop"))
        })
    }

    /// Executor `i`'s log so far (empty if unreadable).
    fn executor_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("executor-{i}.log")))
            .unwrap_or_default()
    }

    /// How many tasks each executor has received so far (from its log).
    pub fn tasks_received(&self) -> Vec<usize> {
        (0..self.work_dirs.len())
            .map(|i| self.executor_log(i).matches("Received task").count())
            .collect()
    }

    /// Every process's log, for error messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            let mut logs: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            for path in logs {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.push_str(&format!("--- {}\n{text}\n", path.display()));
            }
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port nothing listens on right now (the OS picks it; another process could take it before
/// it is used, which is acceptable on a test machine).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Invalid(format!("finding a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Invalid(format!("finding a free port: {e}")))
}
