use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::*;

/// A Parquet table of `rows` ids in `dir`, as `NAME=PATH`.
fn ids_table(dir: &std::path::Path, name: &str, rows: i64) -> String {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>()))],
    )
    .unwrap();
    let path = dir.join(format!("{name}.parquet"));
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    format!("{name}={}", path.display())
}

async fn served(dir: &std::path::Path, options: &ServeOptions) -> SessionContext {
    let table = ids_table(dir, "t", 1000);
    let state = served_state(Arc::new(ModelSet::new()), &[table], options)
        .await
        .unwrap();
    SessionContext::new_with_state(state)
}

async fn run(ctx: &SessionContext, sql: &str) -> std::result::Result<usize, String> {
    let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test]
async fn only_the_served_tables_are_readable_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = served(dir.path(), &ServeOptions::default()).await;
    assert_eq!(run(&ctx, "SELECT id FROM t WHERE id < 10").await, Ok(10));
    assert_eq!(
        run(
            &ctx,
            "SELECT id FROM t WHERE id IN (SELECT id FROM t WHERE id < 3)"
        )
        .await,
        Ok(3)
    );

    // A table that appears after start-up (here registered behind the server's back, as a
    // Substrait plan naming a file would) is not served.
    let other = ids_table(dir.path(), "other", 5);
    let path = other.split_once('=').unwrap().1.to_string();
    ctx.register_parquet("other", &path, ParquetReadOptions::default())
        .await
        .unwrap();
    let refused = run(&ctx, "SELECT * FROM other").await.unwrap_err();
    assert!(
        refused.contains("table `other` is not served here (served: t)"),
        "{refused}"
    );
    let refused = run(&ctx, "SELECT id FROM t WHERE id IN (SELECT id FROM other)")
        .await
        .unwrap_err();
    assert!(refused.contains("not served"), "{refused}");

    // The analyzer refuses writes even where SQLOptions are not applied.
    let refused = run(&ctx, "INSERT INTO t VALUES (1)").await.unwrap_err();
    assert!(refused.contains("read-only"), "{refused}");
    let copy = dir.path().join("copy.parquet");
    let refused = run(&ctx, &format!("COPY t TO '{}'", copy.display()))
        .await
        .unwrap_err();
    assert!(refused.contains("read-only"), "{refused}");
    assert!(!copy.exists());

    // And the SQL options refuse them before planning.
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
        "SET salient.on_bad_image = 'null'",
        "DROP TABLE t",
    ] {
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let refused = read_only_sql().verify_plan(&plan).unwrap_err();
        assert!(
            refused.to_string().contains("not supported"),
            "{sql}: {refused}"
        );
    }
}

#[tokio::test]
async fn a_result_over_the_limit_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        max_result_bytes: 1024,
        ..ServeOptions::default()
    };
    let ctx = served(dir.path(), &options).await;
    assert_eq!(run(&ctx, "SELECT id FROM t LIMIT 10").await, Ok(10));
    let refused = run(&ctx, "SELECT id FROM t").await.unwrap_err();
    assert!(
        refused.contains("larger than the server's limit of 1024 bytes"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_query_waiting_for_a_slot_past_its_time_limit_fails() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        max_concurrent_queries: 1,
        query_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let ctx = served(dir.path(), &options).await;
    // Hold the only slot with a started, unfinished query.
    let mut first = ctx
        .sql("SELECT id FROM t")
        .await
        .unwrap()
        .execute_stream()
        .await
        .unwrap();
    use futures::StreamExt;
    assert!(first.next().await.unwrap().is_ok());
    let refused = run(&ctx, "SELECT id FROM t").await.unwrap_err();
    assert!(
        refused.contains("ran longer than the server's limit"),
        "{refused}"
    );
    // Dropping the first query frees its slot.
    drop(first);
    assert_eq!(run(&ctx, "SELECT id FROM t").await, Ok(1000));
}

#[test]
fn serving_without_a_token_needs_a_loopback_address() {
    let open = ServeOptions {
        listen: "0.0.0.0:50060".parse().unwrap(),
        ..ServeOptions::default()
    };
    let refused = open.validate().unwrap_err().to_string();
    assert!(refused.contains("without a token"), "{refused}");
    let with_token = ServeOptions {
        auth: Auth::token("t0ken", "test").unwrap(),
        ..open
    };
    assert!(with_token.validate().is_ok());
    assert!(ServeOptions::default().validate().is_ok());
}

#[test]
fn a_catalogue_names_tables_relative_to_itself_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog.toml");
    std::fs::write(
        &file,
        "[tables]\ndigits = \"data/t.parquet\"\nabs = \"/srv/x.parquet\"\n",
    )
    .unwrap();
    let specs = read_catalog(&file).unwrap();
    assert_eq!(
        specs,
        vec![
            "abs=/srv/x.parquet".to_string(),
            format!("digits={}", dir.path().join("data/t.parquet").display()),
        ]
    );
    std::fs::write(&file, "[tabels]\nx = \"y\"\n").unwrap();
    let err = read_catalog(&file).unwrap_err().to_string();
    assert!(
        err.contains("catalog.toml") && err.contains("[tables]"),
        "{err}"
    );
    let missing = read_catalog(&dir.path().join("none.toml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("none.toml"), "{missing}");
}
