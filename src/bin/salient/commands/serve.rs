//! `salient serve`: `cluster_embed()` over Arrow Flight SQL.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use salient::serve::{Auth, ServeOptions, TlsFiles};

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// A model directory, optionally named: NAME=DIR. The first is also `default`. Loaded once:
    /// serving another model means restarting the server.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// A table clients may read: NAME=PATH (a Parquet file, a directory of them, or a glob).
    /// Nothing else is readable.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// A catalogue of tables: a TOML file with a `[tables]` section of NAME = "PATH" entries
    /// (relative paths are relative to the file). Adds to --table.
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// HOST:PORT to listen on (port 0: any free port, printed at start-up).
    #[arg(long, default_value = salient::serve::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// A file holding the bearer token clients must present (`authorization: Bearer TOKEN`).
    /// Without it, the token comes from the environment variable SALIENT_SERVE_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve without authentication: only on a loopback address, and only with no token given.
    #[arg(long)]
    no_auth: bool,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Queries that run at once; others wait for a slot within their time limit.
    #[arg(long, default_value_t = 4)]
    max_concurrent_queries: usize,
    /// A query's time limit, waiting for a slot included (e.g. 30s, 10m).
    #[arg(long, default_value = "10m", value_parser = salient::serve::parse_duration)]
    query_timeout: std::time::Duration,
    /// DataFusion's memory pool per query, in MiB.
    #[arg(long, default_value_t = 2048)]
    memory_limit_mib: usize,
    /// The largest result a query may return, in MiB of Arrow arrays.
    #[arg(long, default_value_t = 1024)]
    max_result_mib: u64,
    /// How long running queries may go on after SIGTERM or Ctrl-C.
    #[arg(long, default_value = "30s", value_parser = salient::serve::parse_duration)]
    shutdown_grace: std::time::Duration,
    /// What `cluster_embed` does with an undecodable image, for every query: 'error' (fail,
    /// naming the row) or 'null'.
    #[arg(long, default_value = "error", value_parser = ["error", "null"])]
    on_bad_image: String,
    /// Resize images whose size differs from the model's, for every query.
    #[arg(long)]
    resize: bool,
}

impl ServeArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let auth = match (
            &self.token_file,
            std::env::var(salient::serve::auth::TOKEN_ENV),
        ) {
            (Some(_), _) | (None, Ok(_)) if self.no_auth => {
                anyhow::bail!("--no-auth and a token (--token-file or SALIENT_SERVE_TOKEN) exclude each other")
            }
            (Some(file), _) => Auth::from_file(file)?,
            (None, Ok(token)) => Auth::token(&token, salient::serve::auth::TOKEN_ENV)?,
            (None, Err(_)) if self.no_auth => Auth::None,
            (None, Err(_)) => anyhow::bail!(
                "no token: give --token-file FILE or set SALIENT_SERVE_TOKEN (or, on a loopback \
                 address only, --no-auth)"
            ),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: std::fs::read(cert)
                    .with_context(|| format!("TLS certificate {}", cert.display()))?,
                key: std::fs::read(key).with_context(|| format!("TLS key {}", key.display()))?,
            }),
            _ => None,
        };
        let options = ServeOptions {
            listen: self.listen,
            auth,
            tls,
            max_concurrent_queries: self.max_concurrent_queries,
            query_timeout: self.query_timeout,
            memory_limit: self.memory_limit_mib.saturating_mul(1 << 20),
            max_result_bytes: self.max_result_mib.saturating_mul(1 << 20),
            shutdown_grace: self.shutdown_grace,
            settings: salient::sql::SalientOptions {
                on_bad_image: self.on_bad_image,
                resize: self.resize,
            },
        };
        options.validate()?;
        let mut tables = self.tables;
        if let Some(file) = &self.catalog {
            tables.extend(salient::serve::read_catalog(file)?);
        }
        let models = Arc::new(salient::shell::load_models(&self.models)?);
        let runtime = salient::sql::runtime()?;
        runtime.block_on(async {
            let state = salient::serve::served_state(models, &tables, &options).await?;
            let (listener, address) = salient::serve::bind(&options).await?;
            let scheme = if options.tls.is_some() {
                "grpc+tls"
            } else {
                "grpc"
            };
            // The one line a script or test waits for; logs go to stderr as well.
            eprintln!("salient serve: listening on {scheme}://{address}");
            tracing::info!(%address, tls = options.tls.is_some(), "serving Flight SQL");
            salient::serve::serve(state, listener, &options, salient::serve::termination()).await
        })?;
        Ok(())
    }
}
