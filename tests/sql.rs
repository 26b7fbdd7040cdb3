//! `cluster_embed()` in DataFusion: the `.slt` files under `tests/sql/` (sqllogictest), plus
//! the `salient sql` and `salient embed` commands on real Parquet files and a real model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::{image_array, read_rows, salient, stderr, tiny_model, write_columns, ImageEncoding};
use salient::model::Architecture;
use salient::sql::{execute, session, session_config, ModelSet};

/// A model trained on 96 real mnist-grass images and tables of every image encoding.
struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    tables: Vec<(&'static str, PathBuf)>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (model, data) = tiny_model(dir.path(), Architecture::SmallCnn, false, 96);
        let rows = read_rows(&data.target);
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let labels: Vec<i64> = rows.iter().map(|r| r.2.unwrap()).collect();
        let pngs: Vec<Option<Vec<u8>>> = rows.iter().map(|r| Some(r.1.clone())).collect();
        let table = |name: &str, images: &[Option<Vec<u8>>], encoding, ids: &[i64]| {
            let path = dir.path().join(format!("{name}.parquet"));
            write_columns(
                &path,
                vec![
                    (
                        "id",
                        Arc::new(arrow::array::Int64Array::from(ids.to_vec())) as _,
                    ),
                    ("image", image_array(images, encoding)),
                    (
                        "label",
                        Arc::new(arrow::array::Int64Array::from(labels[..ids.len()].to_vec())) as _,
                    ),
                ],
            );
            path
        };
        let hf = table("hf", &pngs, ImageEncoding::HfStruct, &ids);
        // The same images as colour JPEGs (the grayscale model converts them to luma).
        let jpegs: Vec<Option<Vec<u8>>> = rows
            .iter()
            .map(|r| {
                let gray = image::load_from_memory(&r.1).unwrap().to_luma8();
                let rgb: Vec<u8> = gray.as_raw().iter().flat_map(|&v| [v, v, v]).collect();
                Some(common::jpeg_rgb(&rgb, 28, 28))
            })
            .collect();
        let jpeg = table("jpeg", &jpegs, ImageEncoding::Binary, &ids);
        let mut with_null = pngs[..5].to_vec();
        with_null[2] = None;
        let nulls = table("nulls", &with_null, ImageEncoding::Binary, &ids[..5]);
        let mut corrupt = pngs[..5].to_vec();
        corrupt[3] = Some(b"definitely not an image".to_vec());
        let corrupt = table("corrupt", &corrupt, ImageEncoding::Binary, &ids[..5]);
        Fixture {
            model,
            tables: vec![
                ("target", data.target.clone()),
                ("reference", data.reference.clone()),
                ("hf", hf),
                ("jpeg", jpeg),
                ("nulls", nulls),
                ("corrupt", corrupt),
            ],
            _dir: dir,
        }
    })
}

fn table(name: &str) -> &'static Path {
    &fixture().tables.iter().find(|(n, _)| *n == name).unwrap().1
}

fn models(f: &Fixture) -> ModelSet {
    // The model is `default` and `tiny`.
    salient::shell::load_models(&[format!("tiny={}", f.model.display())]).unwrap()
}

/// A session for sqllogictest: the fixture's tables and model.
struct SqlDb {
    ctx: datafusion::prelude::SessionContext,
    models: Arc<ModelSet>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbError(String);

fn to_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for i in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
        }
    }
    rows
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for SqlDb {
    type Error = DbError;
    type ColumnType = sqllogictest::DefaultColumnType;

    async fn run(
        &mut self,
        sql: &str,
    ) -> Result<sqllogictest::DBOutput<Self::ColumnType>, Self::Error> {
        let batches = execute(&self.ctx, &self.models, sql)
            .await
            .map_err(|e| DbError(e.to_string()))?;
        let width = batches.first().map_or(0, |b| b.num_columns());
        Ok(sqllogictest::DBOutput::Rows {
            types: vec![sqllogictest::DefaultColumnType::Any; width],
            rows: to_rows(&batches),
        })
    }

    async fn shutdown(&mut self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let f = fixture();
    let dir = common::repo_path("tests/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let models = Arc::new(models(f));
        let mut runner = sqllogictest::Runner::new(|| {
            let models = models.clone();
            async move {
                let ctx = session(models.clone(), session_config());
                let specs: Vec<String> = f
                    .tables
                    .iter()
                    .map(|(n, p)| format!("{n}={}", p.display()))
                    .collect();
                salient::shell::register_tables(&ctx, &specs)
                    .await
                    .map_err(|e| DbError(e.to_string()))?;
                Ok(SqlDb { ctx, models })
            }
        });
        runner.with_column_validator(|_, _| true);
        runner.set_var(
            "MODEL_ID".into(),
            models.get(None).unwrap().manifest.id.clone(),
        );
        for (name, path) in &f.tables {
            runner.set_var(
                format!("{}_PATH", name.to_uppercase()),
                path.display().to_string(),
            );
        }
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
    }
}

/// `tests/interop/read_embedded.py`: pyarrow and DuckDB read `path` with `rows` rows and the
/// model's `salient.model` metadata (and exactly `columns`, when given).
fn check_embedded(path: &Path, model: &Path, rows: usize, columns: Option<&str>) {
    let id = salient::manifest::Manifest::read(model).unwrap().id;
    let mut check = Command::new("python3");
    check
        .arg(common::repo_path("tests/interop/read_embedded.py"))
        .arg(path)
        .arg(&id)
        .arg(rows.to_string());
    if let Some(columns) = columns {
        check.arg(columns);
    }
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn salient_sql_reads_hf_struct_and_jpeg_tables() {
    let f = fixture();
    let model = f.model.display().to_string();
    let mut by_table = Vec::new();
    for name in ["target", "hf", "jpeg"] {
        let spec = format!("t={}", table(name).display());
        let out = salient(&[
            "sql",
            "--model",
            &model,
            "--table",
            &spec,
            "--format",
            "json",
            "SELECT id, cluster_embed(image).cluster_id FROM t ORDER BY id",
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), 96, "{name}");
        let ids: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| {
                let cluster = r
                    .as_object()
                    .unwrap()
                    .iter()
                    .find(|(k, _)| k.contains("cluster_id"))
                    .map(|(_, v)| v.as_i64().unwrap())
                    .unwrap();
                (r["id"].as_i64().unwrap(), cluster)
            })
            .collect();
        by_table.push(ids);
    }
    // The HF struct holds the same PNG bytes: identical clusters. JPEG is lossy: most agree.
    assert_eq!(by_table[0], by_table[1]);
    let agree = by_table[0]
        .iter()
        .zip(&by_table[2])
        .filter(|(a, b)| a == b)
        .count();
    assert!(agree >= 80, "only {agree}/96 JPEG rows in the same cluster");

    // CSV needs flat columns; the struct is refused with advice, exit 1.
    let spec = format!("t={}", table("target").display());
    let out = salient(&[
        "sql",
        "--model",
        &model,
        "--table",
        &spec,
        "--format",
        "csv",
        "SELECT cluster_embed(image) FROM t",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--format json"), "{}", stderr(&out));
}

#[test]
fn copy_to_parquet_is_readable_by_pyarrow_and_duckdb_with_model_metadata() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("clusters.parquet");
    let spec = format!("t={}", table("target").display());
    let sql = format!(
        "COPY (SELECT id, label, cluster_embed(image) AS c FROM t) TO '{}' STORED AS PARQUET",
        out_path.display()
    );
    let out = salient(&[
        "sql",
        "--model",
        &f.model.display().to_string(),
        "--table",
        &spec,
        &sql,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Only the output: no temporary file left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["clusters.parquet".to_string()]);
    check_embedded(&out_path, &f.model, 96, None);

    // A failing COPY leaves nothing behind.
    let bad = format!("t={}", table("corrupt").display());
    let failed_path = dir.path().join("failed.parquet");
    let sql = format!(
        "COPY (SELECT id, cluster_embed(image, 'default', id) AS c FROM t) TO '{}'",
        failed_path.display()
    );
    let out = salient(&[
        "sql",
        "--model",
        &f.model.display().to_string(),
        "--table",
        &bad,
        &sql,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("row id"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn embed_keeps_every_column_appends_the_outputs_and_is_atomic() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("embedded.parquet");
    let out = salient(&[
        "embed",
        "--model",
        &f.model.display().to_string(),
        "--input",
        &table("hf").display().to_string(),
        "--output",
        &output.display().to_string(),
        "--batch-size",
        "40",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    check_embedded(
        &output,
        &f.model,
        96,
        Some("id,image,label,embedding,cluster_id,distance"),
    );

    // NULL image: NULL outputs, the row kept.
    let nulls_out = dir.path().join("nulls.parquet");
    let out = salient(&[
        "embed",
        "--model",
        &f.model.display().to_string(),
        "--input",
        &table("nulls").display().to_string(),
        "--output",
        &nulls_out.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A corrupt image fails the run naming the row id, and no output exists.
    let bad_out = dir.path().join("bad.parquet");
    let out = salient(&[
        "embed",
        "--model",
        &f.model.display().to_string(),
        "--input",
        &table("corrupt").display().to_string(),
        "--output",
        &bad_out.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let ids: Vec<i64> = read_rows(table("corrupt")).iter().map(|r| r.0).collect();
    let message = stderr(&out);
    assert!(message.contains(&format!("row id {}", ids[3])), "{message}");
    assert!(!bad_out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "temporary file left"
    );
}

#[test]
fn selecting_several_fields_runs_the_model_once() {
    let f = fixture();
    let batches = salient::shell::run_script(
        std::slice::from_ref(&f.model),
        &[("t", table("target").to_path_buf())],
        "EXPLAIN SELECT id, c['embedding'] AS e, c['cluster_id'] AS k, c['distance'] AS d \
         FROM (SELECT id, cluster_embed(image) AS c FROM t)",
    )
    .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let physical = &text[text.find("physical_plan").unwrap()..];
    assert_eq!(physical.matches("cluster_embed(").count(), 1, "{text}");
}

/// `cluster_embed` cuts an Arrow array into the engine's batches and runs them as parallel
/// tasks: NULL and bad rows must stay on their own rows, every output on its image, and an
/// error must name the first bad row in row order, whichever task finishes first.
#[test]
fn embedding_in_parallel_batches_keeps_rows_in_place() {
    use arrow::array::{Array, AsArray};
    use salient::data::{decode_into, SizePolicy};
    use salient::infer::{EngineOptions, InferenceEngine};
    use salient::sql::{embed_array, EmbedSettings};

    let f = fixture();
    let rows = read_rows(table("target"));
    let mut images: Vec<Option<Vec<u8>>> = rows[..20].iter().map(|r| Some(r.1.clone())).collect();
    images[4] = None;
    images[7] = Some(b"not an image".to_vec());
    images[15] = Some(b"nor this".to_vec());
    let array = image_array(&images, ImageEncoding::Binary);
    let ids: Vec<i64> = rows[..20].iter().map(|r| r.0).collect();
    let ids = common::ids_column(&ids);
    let engine = |batch_size| {
        InferenceEngine::load(
            &f.model,
            EngineOptions {
                batch_size,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (small, whole) = (engine(3), engine(256));
    let lenient = EmbedSettings {
        null_on_bad_image: true,
        size: SizePolicy::Exact,
    };
    let split = embed_array(&small, &array, Some(&ids), &lenient).unwrap();
    let one = embed_array(&whole, &array, Some(&ids), &lenient).unwrap();
    let nulls: Vec<usize> = (0..20).filter(|&i| split.is_null(i)).collect();
    assert_eq!(nulls, [4, 7, 15]);
    assert_eq!(split.nulls(), one.nulls());
    let shape = small.manifest.input.shape;
    let d = small.manifest.d;
    let mut pixels = vec![0u8; shape.len()];
    for (row, image) in images.iter().enumerate() {
        if nulls.contains(&row) {
            continue;
        }
        // Each row's outputs are its own image's, run alone.
        decode_into(
            image.as_ref().unwrap(),
            shape,
            SizePolicy::Exact,
            &mut pixels,
        )
        .unwrap();
        let alone = small.run(&pixels).unwrap();
        let embedding = split.column(0).as_fixed_size_list().value(row);
        let embedding = embedding.as_primitive::<arrow::datatypes::Float32Type>();
        for j in 0..d {
            let (got, want) = (embedding.value(j), alone.embedding[j]);
            assert!(
                (got - want).abs() < 1e-5,
                "row {row} dim {j}: {got} vs {want}"
            );
        }
        let cluster = split
            .column(1)
            .as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(cluster.value(row), alone.cluster_id[0], "row {row}");
        let distance = split
            .column(2)
            .as_primitive::<arrow::datatypes::Float32Type>();
        assert!(
            (distance.value(row) - alone.distance[0]).abs() < 1e-5,
            "row {row}"
        );
    }
    // The rows' embeddings differ, so a row given another row's outputs would be caught.
    let embeddings = split.column(0).as_fixed_size_list();
    let first = embeddings.value(0);
    let first = first.as_primitive::<arrow::datatypes::Float32Type>();
    for row in [1, 2, 3, 5, 19] {
        let other = embeddings.value(row);
        let other = other.as_primitive::<arrow::datatypes::Float32Type>();
        let diff: f32 = (0..d)
            .map(|j| (first.value(j) - other.value(j)).abs())
            .sum();
        assert!(diff > 1e-3, "rows 0 and {row} have the same embedding");
    }
    let strict = EmbedSettings {
        null_on_bad_image: false,
        ..lenient
    };
    for _ in 0..5 {
        let error = embed_array(&small, &array, Some(&ids), &strict).unwrap_err();
        assert!(
            matches!(error, salient::sql::EmbedError::BadImage { .. }),
            "{error:?}"
        );
        let error = error.to_string();
        assert!(
            error.contains(&format!("row id {}:", rows[7].0))
                && error.contains("neither PNG nor JPEG"),
            "{error}"
        );
    }
}

/// `examples/cluster_embed.rs`, the library's how-to: `cluster_embed` registered on a plain
/// `SessionContext` groups the fixture's table by cluster, every row counted once.
#[test]
fn the_cluster_embed_example_runs_on_a_real_model() {
    let f = fixture();
    // Cargo builds the examples next to the test binaries' directory (target/<profile>/examples).
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("cluster_embed");
    assert!(
        example.exists(),
        "{} was not built: `cargo test` builds the examples (or `cargo build --example cluster_embed`)",
        example.display()
    );
    let out = Command::new(&example)
        .arg(&f.model)
        .arg(table("target"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Rows of the printed table: | cluster | images | mean_distance |
    let counts: Vec<(i64, i64)> = stdout
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            Some((cells.get(1)?.parse().ok()?, cells.get(2)?.parse().ok()?))
        })
        .collect();
    assert!(counts.len() > 1, "{stdout}");
    assert!(
        counts.iter().all(|&(c, _)| (0..10).contains(&c)),
        "{stdout}"
    );
    assert_eq!(counts.iter().map(|&(_, n)| n).sum::<i64>(), 96, "{stdout}");
}
