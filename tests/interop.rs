//! Files salient writes are ordinary Parquet: pyarrow and DuckDB read them (the Python side is
//! installed by tests/run.sh from tests/requirements.txt).

mod common;

use std::process::Command;

use salient::datasets::{self, DatasetName};

#[test]
fn pyarrow_and_duckdb_read_the_built_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let built = datasets::build(
        DatasetName::MnistGrass,
        dir.path(),
        0,
        &datasets::default_sources_dir(),
    )
    .unwrap();
    let script = common::repo_path("tests/interop/read_tables.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&built.target)
        .arg(&built.reference)
        .output()
        .expect("python3 must be installed (tests/run.sh checks)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "read_tables.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("pyarrow target rows=10000 labels=10"),
        "{stdout}"
    );
    assert!(
        stdout.contains("duckdb target rows=10000 min_id=0 max_id=9999"),
        "{stdout}"
    );
    assert!(stdout.contains("pyarrow reference rows=10000"), "{stdout}");
    assert!(stdout.contains("duckdb reference rows=10000"), "{stdout}");
}
