//! The bad-input matrix: every entry point (`train`, `embed`, `sql`, `evaluate`, `run`) against
//! every kind of bad input, run as the real CLI. Each refusal must exit 1 with one message that
//! names the file and the row id or column and what was expected, write nothing, and never
//! panic; the valid variants (a NULL image, an empty table) must succeed.
//!
//! The corpus is built here, from real mnist-grass images, under a temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{
    ids_column, image_array, int32_column, png_gray, read_rows, tiny_model, write_columns,
    ImageEncoding,
};
use salient::model::Architecture;

struct Corpus {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    reference: PathBuf,
    /// A second model whose model.onnx replaces the first one's: valid ONNX, wrong id.
    other_onnx: PathBuf,
}

/// A row of the real target table: (id, PNG bytes, label).
type Row = (i64, Vec<u8>, Option<i64>);

fn real_rows() -> &'static Vec<Row> {
    static ROWS: OnceLock<Vec<Row>> = OnceLock::new();
    ROWS.get_or_init(|| read_rows(&corpus().root.join("data/mnist-grass/target.parquet")))
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (model, data) = tiny_model(&root.join("data"), Architecture::SmallCnn, false, 48);
        // The data directory holds data/mnist-grass/{target,reference}.parquet.
        let (other, _) = tiny_model(&root.join("other"), Architecture::SmallCnn, true, 48);
        Corpus {
            _dir: dir,
            model,
            reference: data.reference,
            other_onnx: other.join("model.onnx"),
            root,
        }
    })
}

/// A table of the first `n` real images with `edit` applied to the (id, image) pairs.
fn table(name: &str, n: usize, edit: impl Fn(i64, Vec<u8>) -> Option<Vec<u8>>) -> PathBuf {
    let path = corpus().root.join(name);
    let rows = &real_rows()[..n];
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let images: Vec<Option<Vec<u8>>> = rows.iter().map(|r| edit(r.0, r.1.clone())).collect();
    let labels: Vec<i64> = rows.iter().map(|r| r.2.unwrap()).collect();
    common::write_table(&path, &ids, &images, Some(&labels), ImageEncoding::Binary);
    path
}

/// The id of the row that each corrupted table breaks.
fn bad_id() -> i64 {
    real_rows()[5].0
}

fn run(args: &[&str]) -> Output {
    let out = common::salient(args);
    let text = common::stderr(&out);
    assert!(
        !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
        "salient {args:?} panicked:\n{text}"
    );
    out
}

/// The CLI entry points the matrix covers.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Train,
    Embed,
    Sql,
    Evaluate,
    Run,
}

const ENTRIES: [Entry; 5] = [
    Entry::Train,
    Entry::Embed,
    Entry::Sql,
    Entry::Evaluate,
    Entry::Run,
];

/// Runs `entry` on `input` with `model`, writing under a fresh name; returns the process output
/// and the paths that must not exist after a refusal.
fn invoke(entry: Entry, case: &str, input: &Path, model: &Path) -> (Output, Vec<PathBuf>) {
    let c = corpus();
    let out = c.root.join(format!("out-{case}-{entry:?}"));
    std::fs::create_dir_all(&out).unwrap();
    let input = input.to_str().unwrap();
    match entry {
        Entry::Train => {
            let model_dir = out.join("model");
            let o = run(&[
                "train",
                "--target",
                input,
                "--reference",
                c.reference.to_str().unwrap(),
                "--out",
                model_dir.to_str().unwrap(),
                "--epochs",
                "1",
                "--batch-size",
                "16",
            ]);
            (
                o,
                vec![
                    model_dir.join("manifest.json"),
                    model_dir.join("model.onnx"),
                ],
            )
        }
        Entry::Embed => {
            let target = out.join("embedded.parquet");
            let o = run(&[
                "embed",
                "--model",
                model.to_str().unwrap(),
                "--input",
                input,
                "--output",
                target.to_str().unwrap(),
            ]);
            (o, vec![target])
        }
        Entry::Sql => {
            let target = out.join("copied.parquet");
            let sql = format!(
                "COPY (SELECT id, cluster_embed(image)['cluster_id'] AS cluster_id FROM t) \
                 TO '{}' STORED AS PARQUET",
                target.display()
            );
            let table = format!("t={input}");
            let o = run(&[
                "sql",
                "--model",
                model.to_str().unwrap(),
                "--table",
                &table,
                &sql,
            ]);
            (o, vec![target])
        }
        Entry::Evaluate => {
            let o = run(&[
                "evaluate",
                "--model",
                model.to_str().unwrap(),
                "--input",
                input,
            ]);
            (o, vec![])
        }
        Entry::Run => {
            let job = out.join("job");
            let file = out.join("pipeline.toml");
            std::fs::write(
                &file,
                format!(
                    "name = \"bad-input\"\nout = \"{}\"\n[data]\ntarget = \"{input}\"\n\
                     reference = \"{}\"\n[train]\nepochs = 1\nbatch_size = 16\nwidth = 8\n\
                     dim_salient = 8\ndim_background = 8\nkmeans_restarts = 1\n[embed]\n\
                     [evaluate]\n",
                    job.display(),
                    c.reference.display()
                ),
            )
            .unwrap();
            let o = run(&["run", file.to_str().unwrap()]);
            (
                o,
                vec![job.join("embedded.parquet"), job.join("metrics.json")],
            )
        }
    }
}

/// Runs `entries` on `input` and checks each is refused with a message holding every one of
/// `needles`, exit status 1, and nothing written.
fn expect_refused(case: &str, entries: &[Entry], input: &Path, model: &Path, needles: &[&str]) {
    for &entry in entries {
        let (o, outputs) = invoke(entry, case, input, model);
        let text = common::stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{case}: {entry:?} should be refused with exit status 1:\n{text}"
        );
        for needle in needles {
            assert!(
                text.contains(needle),
                "{case}: {entry:?}'s error should mention {needle:?}:\n{text}"
            );
        }
        // One message: the error line, not a log dump or a backtrace.
        let errors = text.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(errors, 1, "{case}: {entry:?} printed:\n{text}");
        for path in outputs {
            assert!(
                !path.exists(),
                "{case}: {entry:?} wrote {} despite the error",
                path.display()
            );
        }
    }
}

#[test]
fn undecodable_images_are_refused_by_row_id_everywhere() {
    let bad = bad_id();
    let id = format!("row id {bad}");
    let garbage = table("garbage.parquet", 12, |i, png| {
        Some(if i == bad {
            b"not an image".to_vec()
        } else {
            png
        })
    });
    let truncated = table("truncated_png.parquet", 12, |i, png| {
        Some(if i == bad {
            png[..png.len() / 2].to_vec()
        } else {
            png
        })
    });
    let model = &corpus().model;
    for (case, path) in [("garbage", &garbage), ("truncated-png", &truncated)] {
        expect_refused(case, &ENTRIES, path, model, &[&id]);
    }
}

#[test]
fn an_image_of_another_size_is_refused_unless_resizing_is_asked_for() {
    let bad = bad_id();
    let other = table("other_size.parquet", 12, |i, png| {
        Some(if i == bad {
            png_gray(&common::gray_pattern(32, 32, 1), 32, 32)
        } else {
            png
        })
    });
    expect_refused(
        "other-size",
        &ENTRIES,
        &other,
        &corpus().model,
        &[&format!("row id {bad}"), "32x32", "28x28"],
    );
    // Opting in resizes and embeds every row.
    let out = corpus().root.join("resized.parquet");
    let o = run(&[
        "embed",
        "--model",
        corpus().model.to_str().unwrap(),
        "--input",
        other.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--resize",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(embedded(&out).len(), 12);
}

/// (id, cluster_id) of an embedded table, in file order.
fn embedded(path: &Path) -> Vec<(i64, Option<i32>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type};
    let mut rows = Vec::new();
    for batch in common::read_batches(path) {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let clusters = batch
            .column_by_name("cluster_id")
            .unwrap()
            .as_primitive::<Int32Type>();
        for i in 0..batch.num_rows() {
            let c = (!clusters.is_null(i)).then(|| clusters.value(i));
            rows.push((ids.value(i), c));
        }
    }
    rows
}

#[test]
fn a_null_image_gives_null_outputs_and_an_empty_table_an_empty_output() {
    let c = corpus();
    let bad = bad_id();
    let nulls = table("null_image.parquet", 12, |i, png| (i != bad).then_some(png));
    for entry in [Entry::Embed, Entry::Sql] {
        let (o, outputs) = invoke(entry, "null", &nulls, &c.model);
        assert!(o.status.success(), "{entry:?}: {}", common::stderr(&o));
        let out = outputs[0].clone();
        // The COPY names its cluster column `cluster_id` too.
        let rows = embedded(&out);
        assert_eq!(rows.len(), 12, "{entry:?}");
        for (id, cluster) in rows {
            assert_eq!(cluster.is_none(), id == bad, "{entry:?}: row id {id}");
        }
    }
    // Training has nothing to learn from a NULL image: refused by row id.
    expect_refused(
        "null",
        &[Entry::Train],
        &nulls,
        &c.model,
        &[&format!("row id {bad}"), "NULL"],
    );

    let empty = table("empty.parquet", 0, |_, png| Some(png));
    for entry in [Entry::Embed, Entry::Sql] {
        let (o, outputs) = invoke(entry, "empty", &empty, &c.model);
        assert!(o.status.success(), "{entry:?}: {}", common::stderr(&o));
        assert!(outputs[0].is_file(), "{entry:?} wrote no output");
        let rows = embedded(&outputs[0]);
        assert!(rows.is_empty(), "{entry:?}");
    }
    // Nothing to train on or to score: said so, naming the file.
    expect_refused(
        "empty",
        &[Entry::Train, Entry::Evaluate, Entry::Run],
        &empty,
        &c.model,
        &["empty.parquet"],
    );
}

#[test]
fn missing_and_mistyped_columns_are_named_with_what_was_expected() {
    let c = corpus();
    let rows = &real_rows()[..6];
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let labels: Vec<i32> = rows.iter().map(|r| r.2.unwrap() as i32).collect();
    let images: Vec<Option<Vec<u8>>> = rows.iter().map(|r| Some(r.1.clone())).collect();

    let no_image = c.root.join("no_image.parquet");
    write_columns(
        &no_image,
        vec![
            ("id", ids_column(&ids)),
            ("picture", image_array(&images, ImageEncoding::Binary)),
        ],
    );
    let not_sql = [Entry::Train, Entry::Embed, Entry::Evaluate, Entry::Run];
    expect_refused(
        "no-image",
        &not_sql,
        &no_image,
        &c.model,
        &["no_image.parquet", "`image`"],
    );
    // SQL names the column as the query wrote it, and the table's columns.
    expect_refused(
        "no-image",
        &[Entry::Sql],
        &no_image,
        &c.model,
        &["image", "t.picture"],
    );

    let typed = c.root.join("int_image.parquet");
    write_columns(
        &typed,
        vec![("id", ids_column(&ids)), ("image", int32_column(&labels))],
    );
    expect_refused(
        "int-image",
        &not_sql,
        &typed,
        &c.model,
        &["int_image.parquet", "`image`", "Int32"],
    );
    expect_refused(
        "int-image",
        &[Entry::Sql],
        &typed,
        &c.model,
        &["cluster_embed: the image argument has type Int32, expected Binary"],
    );

    // Evaluation needs labels: a mistyped label column is named.
    let bad_label = c.root.join("string_label.parquet");
    write_columns(
        &bad_label,
        vec![
            ("id", ids_column(&ids)),
            ("image", image_array(&images, ImageEncoding::Binary)),
            (
                "label",
                std::sync::Arc::new(arrow::array::StringArray::from(
                    labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                )),
            ),
        ],
    );
    expect_refused(
        "string-label",
        &[Entry::Evaluate],
        &bad_label,
        &c.model,
        &["string_label.parquet", "`label`", "Int64"],
    );
}

#[test]
fn truncated_and_foreign_files_are_refused_by_name() {
    let c = corpus();
    let good = table("whole.parquet", 12, |_, png| Some(png));
    let bytes = std::fs::read(&good).unwrap();
    let truncated = c.root.join("cut.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    expect_refused(
        "cut",
        &ENTRIES,
        &truncated,
        &c.model,
        &["cut.parquet", "not a readable Parquet file"],
    );
    let text = c.root.join("notes.parquet");
    std::fs::write(&text, "id,image\n1,abc\n").unwrap();
    expect_refused(
        "text",
        &ENTRIES,
        &text,
        &c.model,
        &["notes.parquet", "not a readable Parquet file"],
    );
    let missing = c.root.join("nowhere.parquet");
    expect_refused(
        "missing",
        &ENTRIES,
        &missing,
        &c.model,
        &["nowhere.parquet"],
    );
}

#[test]
fn missing_corrupt_or_mismatched_models_are_refused_before_any_output() {
    let c = corpus();
    let good = table("for_models.parquet", 12, |_, png| Some(png));
    let model_entries = [Entry::Embed, Entry::Sql, Entry::Evaluate];

    let missing = c.root.join("no-such-model");
    expect_refused(
        "no-model",
        &model_entries,
        &good,
        &missing,
        &["no-such-model"],
    );

    let copy = |name: &str| {
        let dir = c.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&c.model).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
            }
        }
        dir
    };
    // A flipped byte in the graph: the sha256 no longer matches the manifest.
    let corrupt = copy("corrupt-model");
    let onnx = corrupt.join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    expect_refused(
        "corrupt-model",
        &model_entries,
        &good,
        &corrupt,
        &["model.onnx", "manifest"],
    );
    // Another model's graph: valid ONNX, but not the one this manifest describes.
    let mismatched = copy("mismatched-model");
    std::fs::copy(&c.other_onnx, mismatched.join("model.onnx")).unwrap();
    expect_refused(
        "mismatched-model",
        &model_entries,
        &good,
        &mismatched,
        &["model.onnx", "manifest"],
    );
    // A manifest that is not JSON.
    let broken = copy("broken-manifest");
    std::fs::write(broken.join("manifest.json"), "{ not json").unwrap();
    expect_refused(
        "broken-manifest",
        &model_entries,
        &good,
        &broken,
        &["manifest.json"],
    );
}

#[test]
fn an_unwritable_output_path_is_refused_and_leaves_nothing() {
    let c = corpus();
    let good = table("for_outputs.parquet", 12, |_, png| Some(png));
    // A regular file where a directory should be: not writable even for root.
    let blocker = c.root.join("blocker");
    std::fs::write(&blocker, "a file, not a directory").unwrap();
    let under = blocker.join("sub");
    let under_s = under.to_str().unwrap();
    let input = good.to_str().unwrap();
    let model = c.model.to_str().unwrap();
    let reference = c.reference.to_str().unwrap();

    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "train",
            [
                "train",
                "--target",
                input,
                "--reference",
                reference,
                "--out",
                &format!("{under_s}/model"),
                "--epochs",
                "1",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "embed",
            [
                "embed",
                "--model",
                model,
                "--input",
                input,
                "--output",
                &format!("{under_s}/out.parquet"),
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "sql",
            [
                "sql".to_string(),
                "--model".into(),
                model.into(),
                "--table".into(),
                format!("t={input}"),
                format!(
                    "COPY (SELECT id, cluster_embed(image)['cluster_id'] AS c FROM t) \
                     TO '{under_s}/out.parquet' STORED AS PARQUET"
                ),
            ]
            .to_vec(),
        ),
        (
            "export",
            ["export", &format!("{under_s}/model")]
                .map(String::from)
                .to_vec(),
        ),
    ];
    for (name, args) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&args);
        let text = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {text}");
        assert!(
            text.contains("blocker"),
            "{name} should name the path:\n{text}"
        );
    }
    // The pipeline's output directory under the same file.
    let file = c.root.join("unwritable.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"unwritable\"\nout = \"{under_s}/job\"\n[data]\ntarget = \"{input}\"\n\
             reference = \"{reference}\"\n[train]\nepochs = 1\n"
        ),
    )
    .unwrap();
    let o = run(&["run", file.to_str().unwrap()]);
    let text = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "run: {text}");
    assert!(
        text.contains("blocker"),
        "run should name the path:\n{text}"
    );
    assert!(std::fs::read_to_string(&blocker)
        .unwrap()
        .starts_with("a file"));
}
