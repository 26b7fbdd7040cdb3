//! Embedding throughput side by side, on the same model and table, medians over repeats:
//! 1. `cluster_embed` through SQL (Parquet scan, decode and ONNX Runtime inside DataFusion), in
//!    an open session, as the two loops keep theirs (opening one is timed apart);
//! 2. a raw ONNX Runtime loop over the same images, decoded beforehand (the engine alone);
//! 3. the Python loop a data engineer would write (`benches/python_embed.py`: pyarrow, Pillow,
//!    numpy, onnxruntime).
//!
//!     cargo run --release --example bench_embed -- MODEL_DIR TABLE.parquet [REPEATS]

use std::path::PathBuf;
use std::time::Instant;

use salient::data::{decode_batch, ImageTableReader, NullPolicy, ReaderOptions, SizePolicy};
use salient::infer::{EngineOptions, InferenceEngine};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
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
    let mut raw = Vec::new();
    for _ in 0..=repeats {
        let start = Instant::now();
        for pixels in &batches {
            std::hint::black_box(engine.run(pixels)?);
        }
        raw.push(start.elapsed().as_secs_f64());
    }
    raw.remove(0); // warm-up
    let raw = rows as f64 / median(raw);

    // 1. SQL: the whole path from the Parquet file, in one open session (the loops below also
    // keep their ONNX Runtime session); opening a session is timed on its own.
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
    let mut sql_times = Vec::new();
    for _ in 0..=repeats {
        let start = Instant::now();
        std::hint::black_box(shell.runtime.block_on(salient::sql::execute(
            &shell.ctx,
            &shell.models,
            sql,
        ))?);
        sql_times.push(start.elapsed().as_secs_f64());
    }
    sql_times.remove(0);
    let sql = rows as f64 / median(sql_times);
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
    println!("SQL / raw ORT = {:.2}   (target >= 0.9)", sql / raw);
    println!("SQL / Python  = {:.2}   (target >= 2)", sql / python);
    Ok(())
}
