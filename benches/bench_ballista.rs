//! `cluster_embed` throughput on an Apache Ballista cluster of one executor against two, with
//! the local engine in the same run as the baseline. Every executor is its own `salient`
//! process running one task at a time, so two executors use two cores.
//!
//!     cargo build --release --features ballista
//!     cargo bench --features ballista --bench bench_ballista -- \
//!         MODEL_DIR TABLE.parquet [FILES] [REPEATS]
//!
//! The table is split into FILES Parquet files (default 8) under a temporary directory.
//! The `salient` binary is taken from `$SALIENT_BIN`, else from next to this example's
//! directory (target/<profile>/salient).

use std::path::{Path, PathBuf};
use std::time::Instant;

use salient::distributed::LocalCluster;
use salient::shell::{open_on, Engine};
use salient::sql::execute;

const QUERY: &str = "SELECT sum(c['distance']), count(c['cluster_id']) \
                     FROM (SELECT cluster_embed(image) AS c FROM t)";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Splits `table` into `files` Parquet files of consecutive rows under `dir`; returns the rows.
fn split(table: &Path, dir: &Path, files: usize) -> anyhow::Result<usize> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(table)?)?;
    let rows = builder.metadata().file_metadata().num_rows() as usize;
    let schema = builder.schema().clone();
    let per_file = rows.div_ceil(files);
    let reader = builder.with_batch_size(per_file.clamp(1, 4096)).build()?;
    let mut index = 0;
    let mut written = 0;
    let mut writer: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
    for batch in reader {
        let mut batch = batch?;
        while batch.num_rows() > 0 {
            if writer.is_none() {
                let file = std::fs::File::create(dir.join(format!("part-{index}.parquet")))?;
                writer = Some(parquet::arrow::ArrowWriter::try_new(
                    file,
                    schema.clone(),
                    None,
                )?);
                index += 1;
            }
            let room = per_file - written % per_file;
            let take = room.min(batch.num_rows());
            if let Some(w) = writer.as_mut() {
                w.write(&batch.slice(0, take))?;
            }
            batch = batch.slice(take, batch.num_rows() - take);
            written += take;
            if written % per_file == 0 {
                if let Some(w) = writer.take() {
                    w.close()?;
                }
            }
        }
    }
    if let Some(w) = writer.take() {
        w.close()?;
    }
    Ok(rows)
}

/// Median seconds of `repeats` runs of the query (after one warm-up) on `engine`.
fn time_query(model: &str, table: &str, engine: &Engine, repeats: usize) -> anyhow::Result<f64> {
    let shell = open_on(&[model.to_string()], &[format!("t={table}")], engine)?;
    let mut times = Vec::new();
    for _ in 0..=repeats {
        let start = Instant::now();
        std::hint::black_box(
            shell
                .runtime
                .block_on(execute(&shell.ctx, &shell.models, QUERY))?,
        );
        times.push(start.elapsed().as_secs_f64());
    }
    times.remove(0);
    Ok(median(times))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let model = args.next().expect("MODEL_DIR");
    let table = PathBuf::from(args.next().expect("TABLE.parquet"));
    let files: usize = args.next().map_or(Ok(8), |s| s.parse())?;
    let repeats: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let binary = match std::env::var_os("SALIENT_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("salient"))
            .expect("target directory"),
    };
    anyhow::ensure!(
        binary.is_file(),
        "no salient binary at {}; build it with --features ballista or set SALIENT_BIN",
        binary.display()
    );
    let dir = tempfile::tempdir()?;
    let rows = split(&table, dir.path(), files)?;
    let table = dir.path().display().to_string();
    println!("{rows} images in {files} files; median of {repeats} runs after a warm-up");

    let mut results = Vec::new();
    let local = time_query(&model, &table, &Engine::Local, repeats)?;
    results.push(("local engine (all cores)", local));
    for executors in [1, 2] {
        let cluster = LocalCluster::start(&binary, std::slice::from_ref(&model), executors, 1)?;
        let seconds = time_query(
            &model,
            &table,
            &Engine::Ballista(cluster.url.clone()),
            repeats,
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
        results.push((
            if executors == 1 {
                "Ballista, 1 executor × 1 task"
            } else {
                "Ballista, 2 executors × 1 task"
            },
            seconds,
        ));
    }
    let one = results[1].1;
    println!(
        "{:<32} {:>10} {:>12} {:>14}",
        "engine", "seconds", "images/s", "vs 1 executor"
    );
    for (name, seconds) in &results {
        println!(
            "{name:<32} {seconds:>10.3} {:>12.0} {:>13.2}×",
            rows as f64 / seconds,
            one / seconds
        );
    }
    Ok(())
}
