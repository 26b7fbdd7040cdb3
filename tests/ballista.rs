//! `cluster_embed` on an Apache Ballista cluster: a scheduler and two executors, each its own
//! `salient` process on loopback ports, must give the local engine's results on a multi-file
//! table, keep salient's settings across processes, and refuse what it cannot do.
#![cfg(feature = "ballista")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use common::{image_array, read_rows, stderr, tiny_model, write_columns, ImageEncoding};
use salient::distributed::LocalCluster;
use salient::model::Architecture;

/// Runs `salient` with `args`, killing it after `limit` (a hung cluster must fail the test,
/// not stall CI).
fn salient_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_salient"))
        .args(args)
        .env("SALIENT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// One row of `SELECT id, cluster_embed(image) AS c … ORDER BY id` in JSON.
#[derive(Debug)]
struct Row {
    id: i64,
    cluster_id: Option<i64>,
    embedding: Option<Vec<f64>>,
}

fn parse_rows(stdout: &[u8]) -> Vec<Row> {
    let rows: Vec<serde_json::Value> = serde_json::from_slice(stdout).unwrap();
    rows.iter()
        .map(|r| {
            let c = r.get("c").filter(|c| !c.is_null());
            Row {
                id: r["id"].as_i64().unwrap(),
                cluster_id: c.map(|c| c["cluster_id"].as_i64().unwrap()),
                embedding: c.map(|c| {
                    c["embedding"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                }),
            }
        })
        .collect()
}

/// Splits the rows of `source` into `files` Parquet files under `dir`; the image of id
/// `bad_id`, if given, is replaced by bytes that are not an image.
fn write_multi_file_table(source: &Path, dir: &Path, files: usize, bad_id: Option<i64>) {
    std::fs::create_dir_all(dir).unwrap();
    let rows = read_rows(source);
    let per_file = rows.len().div_ceil(files);
    for (i, chunk) in rows.chunks(per_file).enumerate() {
        let ids: Vec<i64> = chunk.iter().map(|r| r.0).collect();
        let images: Vec<Option<Vec<u8>>> = chunk
            .iter()
            .map(|r| {
                Some(if Some(r.0) == bad_id {
                    b"not an image".to_vec()
                } else {
                    r.1.clone()
                })
            })
            .collect();
        write_columns(
            &dir.join(format!("part-{i}.parquet")),
            vec![
                ("id", Arc::new(Int64Array::from(ids)) as _),
                ("image", image_array(&images, ImageEncoding::Binary)),
            ],
        );
    }
}

fn assert_same_rows(cluster: &[Row], local: &[Row]) {
    assert_eq!(cluster.len(), local.len(), "row counts differ");
    for (c, l) in cluster.iter().zip(local) {
        assert_eq!(c.id, l.id, "ids differ");
        assert_eq!(
            c.cluster_id, l.cluster_id,
            "cluster ids differ at id {}",
            c.id
        );
        match (&c.embedding, &l.embedding) {
            (Some(ce), Some(le)) => {
                assert_eq!(ce.len(), le.len());
                for (a, b) in ce.iter().zip(le) {
                    assert!((a - b).abs() <= 1e-5, "id {}: embedding {a} vs {b}", c.id);
                }
            }
            (None, None) => {}
            _ => panic!("id {}: NULL on one engine only", c.id),
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    model: PathBuf,
    table: PathBuf,
    bad_table: PathBuf,
    bad_id: i64,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = tiny_model(dir.path(), Architecture::SmallCnn, false, 160);
    let table = dir.path().join("table");
    write_multi_file_table(&data.target, &table, 6, None);
    let bad_id = read_rows(&data.target)[37].0;
    let bad_table = dir.path().join("bad_table");
    write_multi_file_table(&data.target, &bad_table, 3, Some(bad_id));
    Setup {
        _dir: dir,
        model,
        table,
        bad_table,
        bad_id,
    }
}

#[test]
fn cluster_of_two_executors_matches_the_local_engine() {
    let s = setup();
    let model = s.model.display().to_string();
    let cluster = LocalCluster::start(
        Path::new(env!("CARGO_BIN_EXE_salient")),
        std::slice::from_ref(&model),
        2,
        1,
    )
    .unwrap();
    let limit = Duration::from_secs(180);
    let query = |engine: Option<&str>, table: &Path, sql: &str| {
        let table = format!("t={}", table.display());
        let mut args = vec![
            "sql", "--model", &model, "--table", &table, "--format", "json",
        ];
        if let Some(url) = engine {
            args.extend(["--scheduler", url]);
        }
        args.push(sql);
        salient_within(&args, limit)
    };
    let select = "SELECT id, cluster_embed(image) AS c FROM t ORDER BY id";

    // 1. Same ids, cluster ids and embeddings on the cluster as locally.
    let local = query(None, &s.table, select);
    assert!(local.status.success(), "local: {}", stderr(&local));
    let remote = query(Some(&cluster.url), &s.table, select);
    assert!(
        remote.status.success(),
        "cluster: {}\n{}",
        stderr(&remote),
        cluster.logs()
    );
    let (local, remote) = (parse_rows(&local.stdout), parse_rows(&remote.stdout));
    assert_eq!(local.len(), 160);
    assert!(local.iter().all(|r| r.cluster_id.is_some()));
    assert_same_rows(&remote, &local);
    // The scan was split into several tasks, and both executors ran some of them.
    let tasks = cluster.tasks_received();
    eprintln!("tasks received per executor: {tasks:?}");
    assert!(
        tasks.len() == 2 && tasks.iter().all(|&n| n > 0),
        "the executors received {tasks:?} tasks:\n{}",
        cluster.logs()
    );

    // 2. A bad image fails the query on the cluster, naming the row id, as locally.
    let failed = query(Some(&cluster.url), &s.bad_table, select);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let message = stderr(&failed);
    assert!(
        message.contains(&format!("row id {}", s.bad_id)),
        "the error should name row id {}: {message}",
        s.bad_id
    );

    // 3. `SET salient.on_bad_image` travels from the client through the scheduler to the
    // executors: the bad row becomes NULL there too.
    let lenient = format!("SET salient.on_bad_image = 'null'; {select}");
    let local = query(None, &s.bad_table, &lenient);
    assert!(local.status.success(), "local: {}", stderr(&local));
    let remote = query(Some(&cluster.url), &s.bad_table, &lenient);
    assert!(remote.status.success(), "cluster: {}", stderr(&remote));
    let (local, remote) = (parse_rows(&local.stdout), parse_rows(&remote.stdout));
    assert_same_rows(&remote, &local);
    let nulls: Vec<i64> = remote
        .iter()
        .filter(|r| r.cluster_id.is_none())
        .map(|r| r.id)
        .collect();
    assert_eq!(nulls, vec![s.bad_id]);

    // 4. COPY is refused with the reason: executors would write on their own machines.
    let out = s._dir.path().join("out.parquet");
    let copy = format!(
        "COPY (SELECT id FROM t) TO '{}' STORED AS PARQUET",
        out.display()
    );
    let refused = query(Some(&cluster.url), &s.table, &copy);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("COPY is not available with --scheduler"),
        "{}",
        stderr(&refused)
    );
    assert!(!out.exists());
}

#[test]
fn unreachable_scheduler_is_named() {
    let s = setup_model_only();
    let model = s.1.display().to_string();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("df://127.0.0.1:{port}");
    let out = salient_within(
        &["sql", "--model", &model, "--scheduler", &url, "SELECT 1"],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
}

fn setup_model_only() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(dir.path(), Architecture::SmallCnn, false, 64);
    (dir, model)
}

#[test]
fn cluster_processes_refuse_bad_arguments_by_name() {
    let missing = "/nonexistent/salient-model";
    for role in ["scheduler", "executor"] {
        let out = salient_within(&[role, "--model", missing], Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1), "{role}: {}", stderr(&out));
        assert!(stderr(&out).contains(missing), "{role}: {}", stderr(&out));
    }
    let (_dir, model) = setup_model_only();
    let model = model.display().to_string();
    let out = salient_within(
        &["executor", "--model", &model, "--scheduler", "no-port-here"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--scheduler `no-port-here`: expected HOST:PORT"),
        "{}",
        stderr(&out)
    );
}
