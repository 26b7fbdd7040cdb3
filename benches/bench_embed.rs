//! Embedding throughput side by side, on the same model and table, medians over repeats:
//! 1. `cluster_embed` through SQL (Parquet scan, decode and ONNX Runtime inside DataFusion), in
//!    an open session, as the two loops keep theirs (opening one is timed apart);
//! 2. a raw ONNX Runtime loop over the same images, decoded beforehand (the engine alone),
//!    alternating with the SQL query pass by pass so their ratio comes from back-to-back runs
//!    (and, for reference, the same loop on SQL's engine set-up: one single-threaded session
//!    per core);
//! 3. the Python loop a data engineer would write (`benches/python_embed.py`: pyarrow, Pillow,
//!    numpy, onnxruntime).
//!
//!     cargo bench --bench bench_embed -- MODEL_DIR TABLE.parquet [REPEATS]

use std::path::PathBuf;
use std::time::Instant;

use salient::data::{decode_batch, ImageTableReader, NullPolicy, ReaderOptions, SizePolicy};
use salient::infer::{EngineOptions, InferenceEngine};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let model = PathBuf::from(args.next().expect("MODEL_DIR"));
    let table = PathBuf::from(args.next().expect("TABLE.parquet"));
    let repeats: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    // 2. Raw ONNX Runtime loop over decoded batches.
    let engine = InferenceEngine::load(
        &model,
        EngineOptions {
            intra_threads: cores,
            max_sessions: 1,
            batch_size: 256,
        },
    )?;
    let shape = engine.manifest.input.shape;
    let mut batches = Vec::new();
    for batch in ImageTableReader::open(&table.to_string_lossy(), ReaderOptions::default())? {
        batches.push(decode_batch(&batch?, shape, SizePolicy::Exact, NullPolicy::Refuse)?.pixels);
    }
    // What the SQL path does besides ORT: read the table and decode every image (in parallel).
    let mut decode_times = Vec::new();
    for _ in 0..=repeats {
        let start = Instant::now();
        for batch in ImageTableReader::open(&table.to_string_lossy(), ReaderOptions::default())? {
            std::hint::black_box(decode_batch(
                &batch?,
                shape,
                SizePolicy::Exact,
                NullPolicy::Refuse,
            )?);
        }
        decode_times.push(start.elapsed().as_secs_f64());
    }
    decode_times.remove(0);
    let decode_seconds = median(decode_times);
    let rows: usize = batches.iter().map(|b| b.len() / shape.len()).sum();

    // 1. SQL: the whole path from the Parquet file, in one open session (the raw loop also
    // keeps its ONNX Runtime session); opening a session is timed on its own.
    let sql = "SELECT sum(c['distance']), count(c['cluster_id']) \
               FROM (SELECT cluster_embed(image) AS c FROM t)";
    let model_spec = model.display().to_string();
    let table_spec = format!("t={}", table.display());
    let mut open_times = Vec::new();
    let mut shell = None;
    for _ in 0..=repeats {
        let start = Instant::now();
        shell = Some(salient::shell::open(
            std::slice::from_ref(&model_spec),
            std::slice::from_ref(&table_spec),
        )?);
        open_times.push(start.elapsed().as_secs_f64());
    }
    open_times.remove(0);
    let open_seconds = median(open_times);
    let shell = shell.expect("opened above");

    // The raw loop and the SQL query alternate, one pass each per repeat: the machine's speed
    // drifts over seconds to minutes (shared virtual CPUs), so their ratio is taken per repeat,
    // from passes run back to back, and the report gives the median repeat.
    // The SQL engine's set-up without SQL: single-threaded sessions, one per core, each thread
    // taking every cores-th run of 256 images (as DataFusion's partitions share the batches).
    let pooled = InferenceEngine::load(
        &model,
        EngineOptions {
            intra_threads: 1,
            max_sessions: cores,
            batch_size: 256,
        },
    )?;
    let runs: Vec<&[u8]> = batches
        .iter()
        .flat_map(|b| b.chunks(256 * shape.len()))
        .collect();
    let run_pooled = || -> anyhow::Result<()> {
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..cores)
                .map(|t| {
                    let (pooled, runs) = (&pooled, &runs);
                    scope.spawn(move || -> salient::Result<()> {
                        for pixels in runs.iter().skip(t).step_by(cores) {
                            std::hint::black_box(pooled.run(pixels)?);
                        }
                        Ok(())
                    })
                })
                .collect();
            for thread in threads {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("a pooled ORT thread panicked"))??;
            }
            Ok(())
        })
    };
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let mut ratios = Vec::new();
    for repeat in 0..=repeats {
        let start = Instant::now();
        for pixels in &batches {
            std::hint::black_box(engine.run(pixels)?);
        }
        let raw_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        run_pooled()?;
        let pooled_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        std::hint::black_box(shell.runtime.block_on(salient::sql::execute(
            &shell.ctx,
            &shell.models,
            sql,
        ))?);
        let sql_seconds = start.elapsed().as_secs_f64();
        if repeat > 0 {
            // Repeat 0 warms all three up.
            for (t, seconds) in times
                .iter_mut()
                .zip([raw_seconds, pooled_seconds, sql_seconds])
            {
                t.push(seconds);
            }
            ratios.push(raw_seconds / sql_seconds);
        }
    }
    let [raw_times, pooled_times, sql_times] = times;
    let raw = rows as f64 / median(raw_times);
    let pooled = rows as f64 / median(pooled_times);
    let sql = rows as f64 / median(sql_times);
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    let sql_over_raw = median(ratios);
    // 3. Python.
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/python_embed.py"
        ))
        .arg(&model)
        .arg(&table)
        .arg(repeats.to_string())
        .arg(cores.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "python_embed.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let python = python["images_per_second"].as_f64().unwrap_or(f64::NAN);

    println!("embedding {rows} images {shape} with {} (k = {}, d = {}), {cores} cores, median of {repeats}",
        model.display(), engine.manifest.k, engine.manifest.d);
    println!(
        "{:<44} {:>10.0} img/s",
        "cluster_embed via SQL (scan+decode+ORT)", sql
    );
    println!(
        "{:<44} {:>10.0} img/s",
        "raw ORT loop (pre-decoded batches)", raw
    );
    println!(
        "{:<44} {:>10.0} img/s",
        format!("raw ORT, {cores} single-threaded sessions"),
        pooled
    );
    println!(
        "{:<44} {:>10.0} img/s",
        "Python loop (pyarrow+Pillow+onnxruntime)", python
    );
    let decode = rows as f64 / decode_seconds;
    println!(
        "{:<44} {:>10.0} img/s",
        "read + decode alone (Rust, all cores)", decode
    );
    // Decode and ORT share the cores: one after the other is the bound without overlap.
    let sequential = 1.0 / (1.0 / raw + 1.0 / decode);
    println!(
        "{:<44} {:>10.0} img/s  (SQL / this = {:.2})",
        "read + decode, then raw ORT (no overlap)",
        sequential,
        sql / sequential
    );
    println!(
        "{:<44} {:>10.3} s  (per `salient sql` call, not in the rates above)",
        "opening a session (runtime, model, table)", open_seconds
    );
    println!(
        "SQL / raw ORT = {sql_over_raw:.2}   (target >= 0.9; median repeat of {})",
        shown.join(", ")
    );
    println!("SQL / Python  = {:.2}   (target >= 2)", sql / python);
    Ok(())
}
