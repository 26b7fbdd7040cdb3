//! `salient sql`: a DataFusion session with the given models and tables, running SQL from the
//! command line or from an interactive prompt (with history).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::error::{Error, Result};
use crate::infer::{shared_engine, EngineOptions};
use crate::sql::{
    execute, format_batches, runtime, session, session_config, ModelSet, OutputFormat,
};

/// Splits `NAME=VALUE`; without `=`, the name comes from `default_name(value)`.
fn split_named(spec: &str, default_name: impl Fn(&str) -> String) -> (String, String) {
    match spec.split_once('=') {
        Some((name, value)) if !name.is_empty() && !name.contains('/') => {
            (name.to_string(), value.to_string())
        }
        _ => (default_name(spec), spec.to_string()),
    }
}

/// Loads each `[NAME=]DIR` model (name defaults to the directory's name).
pub fn load_models(specs: &[String]) -> Result<ModelSet> {
    let mut models = ModelSet::new();
    for spec in specs {
        let (name, dir) = split_named(spec, |dir| {
            PathBuf::from(dir)
                .file_name()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
        });
        let engine = shared_engine(&PathBuf::from(&dir), EngineOptions::default())?;
        models.add(&name, engine)?;
    }
    Ok(models)
}

/// Registers each `NAME=PATH` Parquet table.
pub async fn register_tables(ctx: &SessionContext, specs: &[String]) -> Result<()> {
    for spec in specs {
        let Some((name, path)) = spec.split_once('=') else {
            return Err(Error::Invalid(format!(
                "--table `{spec}`: expected NAME=PATH"
            )));
        };
        // Resolve first: a missing file is named here, not deep inside DataFusion.
        let files = crate::data::source::resolve_parquet_files(path)?;
        // Open every footer here, so a truncated or foreign file is named in salient's words.
        for file in &files {
            crate::data::source::check_parquet(file)?;
        }
        // Absolute paths: on a cluster the scheduler and executors read the files themselves.
        let paths: Vec<String> = files
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .map(|p| p.display().to_string())
            .collect();
        let df = ctx
            .read_parquet(paths, ParquetReadOptions::default())
            .await
            .map_err(|e| Error::Invalid(format!("--table {name}={path}: {e}")))?;
        ctx.register_table(name, df.into_view())
            .map_err(|e| Error::Invalid(format!("--table {name}: {e}")))?;
    }
    Ok(())
}

/// A session with models and tables loaded, on its own runtime.
pub struct Shell {
    pub runtime: tokio::runtime::Runtime,
    pub ctx: SessionContext,
    pub models: Arc<ModelSet>,
}

/// Where `salient sql` runs its queries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// In this process.
    #[default]
    Local,
    /// On the Apache Ballista scheduler at this URL (`df://host:port`).
    Ballista(String),
}

/// Loads `[NAME=]DIR` models and registers `NAME=PATH` tables in a new local session.
pub fn open(model_specs: &[String], table_specs: &[String]) -> Result<Shell> {
    open_on(model_specs, table_specs, &Engine::Local)
}

/// Like [`open`], with the queries running on `engine`.
pub fn open_on(model_specs: &[String], table_specs: &[String], engine: &Engine) -> Result<Shell> {
    let models = Arc::new(load_models(model_specs)?);
    let runtime = runtime()?;
    let ctx = match engine {
        Engine::Local => session(models.clone(), session_config()),
        Engine::Ballista(url) => remote(&runtime, models.clone(), url)?,
    };
    runtime.block_on(register_tables(&ctx, table_specs))?;
    Ok(Shell {
        runtime,
        ctx,
        models,
    })
}

/// Runs SQL in a fresh session with `models` (the first is `default`) and Parquet `tables`
/// registered: for jobs that are not async themselves (the quickstart, benchmarks).
pub fn run_script(
    models: &[PathBuf],
    tables: &[(&str, PathBuf)],
    sql: &str,
) -> Result<Vec<arrow::array::RecordBatch>> {
    let models: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
    let tables: Vec<String> = tables
        .iter()
        .map(|(n, p)| format!("{n}={}", p.display()))
        .collect();
    let shell = open(&models, &tables)?;
    shell
        .runtime
        .block_on(execute(&shell.ctx, &shell.models, sql))
}

#[cfg(feature = "ballista")]
fn remote(
    runtime: &tokio::runtime::Runtime,
    models: Arc<ModelSet>,
    url: &str,
) -> Result<SessionContext> {
    runtime.block_on(crate::distributed::remote_session(models, url))
}

#[cfg(not(feature = "ballista"))]
fn remote(
    _runtime: &tokio::runtime::Runtime,
    _models: Arc<ModelSet>,
    url: &str,
) -> Result<SessionContext> {
    Err(Error::Invalid(format!(
        "--scheduler {url}: this salient was built without Ballista support; rebuild with `--features ballista`"
    )))
}

pub fn run(
    model_specs: &[String],
    table_specs: &[String],
    engine: &Engine,
    format: OutputFormat,
    sql: Option<&str>,
) -> anyhow::Result<()> {
    let shell = open_on(model_specs, table_specs, engine)?;
    match sql {
        Some(sql) => {
            let batches = shell
                .runtime
                .block_on(execute(&shell.ctx, &shell.models, sql))
                .map_err(|e| match engine {
                    Engine::Local => anyhow::Error::from(e),
                    Engine::Ballista(url) => {
                        anyhow::Error::from(e).context(format!("on the Ballista scheduler {url}"))
                    }
                })?;
            print!("{}", format_batches(&batches, format)?);
            Ok(())
        }
        None => repl(&shell.runtime, &shell.ctx, &shell.models, format),
    }
}

/// The interactive prompt: statements end with `;`; `\q` or Ctrl-D quits. History is kept in
/// salient's cache directory.
fn repl(
    runtime: &tokio::runtime::Runtime,
    ctx: &SessionContext,
    models: &ModelSet,
    format: OutputFormat,
) -> anyhow::Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = crate::infer::runtime::cache_dir().join("sql_history");
    let _ = editor.load_history(&history);
    eprintln!(
        "salient sql: models [{}]; end statements with `;`, quit with \\q or Ctrl-D",
        models.names().collect::<Vec<_>>().join(", ")
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "salient> "
        } else {
            "     ..> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && (trimmed == "\\q" || trimmed == "quit" || trimmed == "exit")
                {
                    break;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !trimmed.ends_with(';') {
                    continue;
                }
                let _ = editor.add_history_entry(buffer.trim());
                let started = std::time::Instant::now();
                match runtime.block_on(execute(ctx, models, &buffer)) {
                    Ok(batches) => {
                        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                        match format_batches(&batches, format) {
                            Ok(text) => print!("{text}"),
                            Err(e) => eprintln!("error: {e}"),
                        }
                        eprintln!("{rows} rows in {:.3} s", started.elapsed().as_secs_f64());
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
                buffer.clear();
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(&history);
    Ok(())
}
