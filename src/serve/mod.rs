//! `salient serve`: `cluster_embed()` over Arrow Flight SQL, for clients salient did not write
//! (ADBC from Python, Go, Java or R; JDBC; BI tools).
//!
//! The protocol is `datafusion-flight-sql-server`'s; this module decides who may ask and what
//! they may touch:
//! - **authentication**: every call carries `authorization: Bearer TOKEN` ([`auth`]); without a
//!   token the server only runs on a loopback address and only when asked to ([`Auth::None`]);
//! - **read-only**: DDL, DML, `COPY` and `SET` are refused before planning (DataFusion's
//!   `SQLOptions`), and an analyzer rule ([`guard::ServedTablesOnly`]) refuses any plan that
//!   writes or that scans anything but the served tables, whatever the path that built it (SQL,
//!   a prepared statement or a Substrait plan), so no query reaches the file system;
//! - **limits** ([`guard::QueryLimits`]): a memory pool per query, a bounded number of queries
//!   running at once (the others wait, within the time limit), a time limit and a result-size
//!   limit, enforced on the result stream itself, which also frees everything when a client
//!   cancels or disconnects;
//! - **operable**: one structured log line per query, TLS, the standard gRPC health service
//!   (`grpc.health.v1.Health`, without a token), graceful shutdown on SIGTERM or Ctrl-C with a
//!   grace period for running queries.
//!
//! The models are loaded once, at start-up, for the life of the process: serving a new model
//! means restarting the server (read-only, it has nothing to lose).

pub mod auth;
pub mod guard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use async_trait::async_trait;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SQLOptions;
use datafusion_flight_sql_server::service::FlightSqlService;
use datafusion_flight_sql_server::session::SessionStateProvider;
use tokio::sync::Semaphore;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use crate::error::{Error, Result};
use crate::sql::{ModelSet, SalientOptions};
pub use auth::Auth;
use guard::{ClientInfo, QueryLimits, ServedTablesOnly};

/// The address `salient serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50060";

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub auth: Auth,
    pub tls: Option<TlsFiles>,
    /// Queries running at once; more wait for a slot (within `query_timeout`).
    pub max_concurrent_queries: usize,
    /// From the start of a query's result stream (waiting for a slot included) to its end.
    pub query_timeout: Duration,
    /// DataFusion's memory pool per query (sorts, joins and aggregations spill or fail with a
    /// clear error beyond it). The ONNX Runtime sessions are outside it: their memory is set by
    /// the model and the batch size.
    pub memory_limit: usize,
    /// The largest result a query may return, in bytes of Arrow arrays.
    pub max_result_bytes: u64,
    /// How long running queries may go on after SIGTERM or Ctrl-C.
    pub shutdown_grace: Duration,
    /// The settings every query runs with (`salient.on_bad_image`, `salient.resize`): the
    /// server is stateless between calls, so `SET` cannot change them.
    pub settings: SalientOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            auth: Auth::None,
            tls: None,
            max_concurrent_queries: 4,
            query_timeout: Duration::from_secs(600),
            memory_limit: 2 << 30,
            max_result_bytes: 1 << 30,
            shutdown_grace: Duration::from_secs(30),
            settings: SalientOptions::default(),
        }
    }
}

impl ServeOptions {
    /// Refuses settings that would open the server wider than asked.
    pub fn validate(&self) -> Result<()> {
        if matches!(self.auth, Auth::None) && !self.listen.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "refusing to serve {} without a token: only a loopback address may run without \
                 authentication (give --token-file FILE or SALIENT_SERVE_TOKEN)",
                self.listen
            )));
        }
        if self.max_concurrent_queries == 0 {
            return Err(Error::Invalid(
                "max_concurrent_queries must be at least 1".into(),
            ));
        }
        if self.query_timeout.is_zero() || self.memory_limit == 0 || self.max_result_bytes == 0 {
            return Err(Error::Invalid(
                "query timeout, memory limit and result limit must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Gives every call a session over the served state, with its own memory pool and the
/// client's address for the query log.
struct Sessions {
    base: SessionState,
    memory_limit: usize,
}

#[async_trait]
impl SessionStateProvider for Sessions {
    async fn new_context(
        &self,
        request: &Request<()>,
    ) -> std::result::Result<SessionState, Status> {
        let runtime = RuntimeEnvBuilder::from_runtime_env(self.base.runtime_env())
            .with_memory_limit(self.memory_limit, 1.0)
            .build_arc()
            .map_err(|e| Status::internal(format!("creating the query's memory pool: {e}")))?;
        let mut state = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_runtime_env(runtime)
            .build();
        let client = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        state
            .config_mut()
            .set_extension(Arc::new(ClientInfo { address: client }));
        Ok(state)
    }
}

/// The served session: salient's settings, `cluster_embed` for `models`, the `tables`
/// (`NAME=PATH`), and the read-only rule and limits.
pub async fn served_state(
    models: Arc<ModelSet>,
    tables: &[String],
    options: &ServeOptions,
) -> Result<SessionState> {
    let config = crate::sql::session_config().with_option_extension(options.settings.clone());
    let ctx = crate::sql::session(models, config);
    crate::shell::register_tables(&ctx, tables).await?;
    let served = ServedTablesOnly::of_context(&ctx).await?;
    let limits = QueryLimits {
        slots: Arc::new(Semaphore::new(options.max_concurrent_queries)),
        timeout: options.query_timeout,
        max_result_bytes: options.max_result_bytes,
    };
    // Both rules go after the existing ones: the limits wrap the finished physical plan.
    Ok(SessionStateBuilder::new_from_existing(ctx.state())
        .with_analyzer_rule(Arc::new(served))
        .with_physical_optimizer_rule(Arc::new(limits))
        .build())
}

/// The SQL a client may send: queries only.
pub fn read_only_sql() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Binds `options.listen` and returns the listener with the address it got (port 0 picks a
/// free port).
pub async fn bind(options: &ServeOptions) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::Invalid(format!("binding {}: {e}", options.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("binding {}: {e}", options.listen)))?;
    Ok((listener, address))
}

/// Serves Flight SQL on `listener` until `shutdown` resolves, then lets running queries go
/// on for `options.shutdown_grace`.
pub async fn serve(
    state: SessionState,
    listener: tokio::net::TcpListener,
    options: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    options.validate()?;
    let service = FlightSqlService::new_with_provider(Box::new(Sessions {
        base: state,
        memory_limit: options.memory_limit,
    }))
    .with_sql_options(read_only_sql());
    let mut builder = Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key)))
            .map_err(|e| Error::Invalid(format!("TLS certificate or key: {e}")))?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // gRPC health (`grpc.health.v1.Health`) answers without a token, as probes and load
    // balancers expect; it tells only whether the server serves. Every Flight call is checked.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FlightServiceServer<FlightSqlService>>()
        .await;
    let flight = InterceptedService::new(
        FlightServiceServer::new(service),
        auth::checker(options.auth.clone()),
    );
    let server = builder
        .add_service(health_service)
        .add_service(flight)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    let finished = tokio::select! {
        finished = &mut server => Some(finished),
        () = shutdown => None,
    };
    let finished = match finished {
        Some(finished) => finished,
        None => {
            tracing::info!(
                grace_seconds = options.shutdown_grace.as_secs_f64(),
                "shutting down: no new calls; running queries may finish"
            );
            health
                .set_not_serving::<FlightServiceServer<FlightSqlService>>()
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            let _ = stop_tx.send(());
            match tokio::time::timeout(options.shutdown_grace, &mut server).await {
                Ok(finished) => finished,
                Err(_) => {
                    tracing::warn!("grace period over: stopping the queries still running");
                    Ok(())
                }
            }
        }
    };
    finished.map_err(|e| Error::Invalid(format!("Flight SQL server: {e}")))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The tables of a catalogue file, as `NAME=PATH` specs: TOML with one `[tables]` section of
/// `NAME = "PATH"` entries; relative paths are relative to the file's directory.
pub fn read_catalog(file: &std::path::Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Catalog {
        tables: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let catalog: Catalog = toml::from_str(&text).map_err(|e| Error::File {
        path: file.to_path_buf(),
        message: format!("not a catalogue (expected a [tables] section of NAME = \"PATH\"): {e}"),
    })?;
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    Ok(catalog
        .tables
        .into_iter()
        .map(|(name, path)| {
            let path = std::path::Path::new(&path);
            let path = if path.is_relative() {
                base.join(path)
            } else {
                path.to_path_buf()
            };
            format!("{name}={}", path.display())
        })
        .collect())
}

/// A duration as the CLI takes it (`30s`, `10m`), with the text named on failure.
pub fn parse_duration(text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| Error::Invalid(format!("`{text}` is not a duration (e.g. 30s, 10m): {e}")))
}

#[cfg(test)]
mod tests;
