//! Crash safety and concurrency: kill -9 during training, `embed` and `COPY` leaves nothing
//! half-written and a rerun finishes; concurrent queries on one model give the sequential results.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{image_array, read_rows, tiny_model, write_columns, ImageEncoding};
use salient::model::Architecture;

fn salient() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_salient"));
    c.env("SALIENT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Waits until `ready()` holds, then kills the child with SIGKILL. Panics if the child exits
/// first (the work was too short to interrupt).
fn kill_when(mut child: Child, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("finished ({status}) before it could be killed");
        }
        if ready() {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return;
        }
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn hidden_temporaries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            name.starts_with('.') && name.contains(".tmp")
        })
        .count()
}

/// The target table repeated `copies` times with unique ids: enough rows to be interrupted.
fn large_table(dir: &Path, target: &Path, copies: usize) -> PathBuf {
    let rows = read_rows(target);
    let n = rows.len() * copies;
    let ids: Vec<i64> = (0..n as i64).collect();
    let images: Vec<Option<Vec<u8>>> = (0..n)
        .map(|i| Some(rows[i % rows.len()].1.clone()))
        .collect();
    let path = dir.join("large.parquet");
    write_columns(
        &path,
        vec![
            ("id", Arc::new(arrow::array::Int64Array::from(ids)) as _),
            ("image", image_array(&images, ImageEncoding::Binary)),
        ],
    );
    path
}

#[test]
fn kill_9_during_embed_or_copy_leaves_no_output_and_a_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = tiny_model(dir.path(), Architecture::SmallCnn, false, 1000);
    let input = large_table(dir.path(), &data.target, 60);
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let output = out_dir.join("embedded.parquet");
    let embed = |c: &mut Command| {
        c.args(["embed", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output);
    };

    let mut cmd = salient();
    embed(&mut cmd);
    kill_when(cmd.spawn().unwrap(), || hidden_temporaries(&out_dir) > 0);
    assert!(!output.exists(), "a killed embed left {}", output.display());

    let mut cmd = salient();
    embed(&mut cmd);
    let started = Instant::now();
    let rerun = cmd.output().unwrap();
    let embed_time = started.elapsed();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(read_rows_count(&output), 60_000);

    // COPY through `salient sql`: the same guarantee.
    let copied = out_dir.join("copied.parquet");
    let sql = format!(
        "COPY (SELECT id, cluster_embed(image)['cluster_id'] AS c FROM t) TO '{}'",
        copied.display()
    );
    let copy = |c: &mut Command| {
        c.args(["sql", "--model"])
            .arg(&model)
            .arg("--table")
            .arg(format!("t={}", input.display()))
            .arg(&sql);
    };
    // DataFusion writes a small COPY output in one piece at the end, so there is nothing to
    // wait for: kill a third of the way through the time the same work took in `embed`.
    let mut cmd = salient();
    copy(&mut cmd);
    let started = Instant::now();
    kill_when(cmd.spawn().unwrap(), || started.elapsed() >= embed_time / 3);
    assert!(!copied.exists(), "a killed COPY left {}", copied.display());
    let mut cmd = salient();
    copy(&mut cmd);
    let rerun = cmd.output().unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(read_rows_count(&copied), 60_000);
}

fn read_rows_count(path: &Path) -> i64 {
    let file = std::fs::File::open(path).unwrap();
    parquet::file::reader::SerializedFileReader::new(file)
        .map(|r| {
            use parquet::file::reader::FileReader;
            r.metadata().file_metadata().num_rows()
        })
        .unwrap()
}

#[test]
fn kill_9_during_training_then_resume_finishes_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = salient::datasets::build_with_rows(
        salient::datasets::DatasetName::MnistGrass,
        dir.path(),
        0,
        &salient::datasets::default_sources_dir(),
        Some(1500),
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "epochs = 4\nbatch_size = 64\nwidth = 8\ndim_salient = 16\ndim_background = 16\nkmeans_restarts = 2\ncheckpoint_every = 1\n",
    )
    .unwrap();
    let model = dir.path().join("model");
    let train = |resume: bool| {
        let mut c = salient();
        c.args(["train", "--target"])
            .arg(&data.target)
            .arg("--reference")
            .arg(&data.reference)
            .arg("--out")
            .arg(&model)
            .arg("--config")
            .arg(&config);
        if resume {
            c.arg("--resume");
        }
        c
    };
    let checkpoint = model.join(salient::manifest::CHECKPOINT_FILE);
    kill_when(train(false).spawn().unwrap(), || checkpoint.exists());
    assert!(!model.join(salient::manifest::MANIFEST_FILE).exists());

    let resumed = train(true).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    let manifest = salient::manifest::Manifest::read(&model).unwrap();
    assert_eq!(manifest.epochs_trained, 4);
    // The log holds each epoch once: the resumed run did not start over.
    let log = std::fs::read_to_string(model.join(salient::manifest::TRAINING_LOG_FILE)).unwrap();
    let epochs: Vec<&str> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(epochs, vec!["1", "2", "3", "4"], "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_queries_on_one_model_match_the_sequential_results() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = tiny_model(dir.path(), Architecture::SmallCnn, false, 500);
    let models = Arc::new(salient::shell::load_models(&[model.display().to_string()]).unwrap());
    let ctx = salient::sql::session(models.clone(), salient::sql::session_config());
    salient::shell::register_tables(&ctx, &[format!("t={}", data.target.display())])
        .await
        .unwrap();
    let queries = [
        "SELECT id, c['cluster_id'] AS k, c['distance'] AS d, c['embedding'] AS e \
         FROM (SELECT id, cluster_embed(image) AS c FROM t) ORDER BY id",
        "SELECT cluster_embed(image)['cluster_id'] AS k, count(*) AS n FROM t GROUP BY 1 ORDER BY 1",
    ];
    let mut sequential = Vec::new();
    for q in queries {
        sequential.push(salient::sql::execute(&ctx, &models, q).await.unwrap());
    }
    let concurrent = futures::future::join_all((0..8).map(|i| {
        let (ctx, models) = (ctx.clone(), models.clone());
        let q = queries[i % 2];
        tokio::spawn(async move { salient::sql::execute(&ctx, &models, q).await.unwrap() })
    }))
    .await;
    for (i, result) in concurrent.into_iter().enumerate() {
        assert_eq!(result.unwrap(), sequential[i % 2], "query {i}");
    }
}
