//! The bundled datasets: sizes, labels, determinism, and that the files are ordinary Parquet.

use std::path::Path;

use salient::data::{
    decode_batch, ImageShape, ImageTableReader, LabelRequirement, NullPolicy, ReaderOptions,
    SizePolicy,
};
use salient::datasets::{self, DatasetName, DATASET_METADATA_KEY};

/// Per-class counts of the bundled MNIST digits (data/README.md).
const MNIST_CLASS_COUNTS: [usize; 10] = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];

struct Table {
    ids: Vec<i64>,
    labels: Vec<Option<i64>>,
    pixels: Vec<u8>,
}

fn read(path: &Path, labels: LabelRequirement) -> Table {
    read_sized(path, labels, 28)
}

/// Reads a table of `side` x `side` grayscale images (decoding fails on any other size).
fn read_sized(path: &Path, labels: LabelRequirement, side: usize) -> Table {
    let options = ReaderOptions {
        labels,
        ..Default::default()
    };
    let shape = ImageShape::new(1, side, side);
    let mut table = Table {
        ids: vec![],
        labels: vec![],
        pixels: vec![],
    };
    for batch in ImageTableReader::open(path.to_str().unwrap(), options).unwrap() {
        let d = decode_batch(
            &batch.unwrap(),
            shape,
            SizePolicy::Exact,
            NullPolicy::Refuse,
        )
        .unwrap();
        table.ids.extend(d.ids);
        table.labels.extend(d.labels);
        table.pixels.extend(d.pixels);
    }
    table
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn sources() -> std::path::PathBuf {
    datasets::default_sources_dir()
}

#[test]
fn mnist_grass_has_every_digit_once_and_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let built = datasets::build(DatasetName::MnistGrass, dir.path(), 7, &sources()).unwrap();
    assert_eq!(built.target, dir.path().join("mnist-grass/target.parquet"));
    assert_eq!((built.target_rows, built.reference_rows), (10_000, 10_000));

    let target = read(&built.target, LabelRequirement::Required);
    assert_eq!(target.ids, (0..10_000).collect::<Vec<_>>());
    let mut counts = [0usize; 10];
    for label in &target.labels {
        counts[label.expect("every target row has a label") as usize] += 1;
    }
    assert_eq!(counts, MNIST_CLASS_COUNTS);
    // Rows are shuffled: the first 100 labels are not one class.
    assert!(target.labels[..100].iter().any(|l| *l != target.labels[0]));

    let reference = read(&built.reference, LabelRequirement::Optional);
    assert_eq!(reference.ids.len(), 10_000);
    assert!(reference.labels.iter().all(Option::is_none));

    // The digit adds brightness on top of grass: targets are brighter on average.
    let mean = |p: &[u8]| p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
    let (t, r) = (mean(&target.pixels), mean(&reference.pixels));
    assert!(
        t > r + 5.0 && t < r + 40.0,
        "target mean {t}, reference mean {r}"
    );

    // The same seed writes byte-identical files; another seed writes other ones.
    let again = tempfile::tempdir().unwrap();
    let rebuilt = datasets::build(DatasetName::MnistGrass, again.path(), 7, &sources()).unwrap();
    assert_eq!(sha256(&built.target), sha256(&rebuilt.target));
    assert_eq!(sha256(&built.reference), sha256(&rebuilt.reference));
    let other = tempfile::tempdir().unwrap();
    let reseeded = datasets::build(DatasetName::MnistGrass, other.path(), 8, &sources()).unwrap();
    assert_ne!(sha256(&built.target), sha256(&reseeded.target));

    // The recipe travels with the file.
    let file = std::fs::File::open(&built.target).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap();
    let meta = kv.iter().find(|k| k.key == DATASET_METADATA_KEY).unwrap();
    let meta: serde_json::Value = serde_json::from_str(meta.value.as_ref().unwrap()).unwrap();
    assert_eq!(meta["dataset"], "mnist-grass");
    assert_eq!(meta["role"], "target");
    assert_eq!(meta["seed"], 7);
}

#[test]
fn fashion_textures_builds_from_the_fetched_fashion_mnist() {
    let dir = tempfile::tempdir().unwrap();
    let built = datasets::build(DatasetName::FashionTextures, dir.path(), 0, &sources()).unwrap_or_else(|e| {
        panic!("{e}\n(tests/run.sh fetches Fashion-MNIST first; run it rather than cargo test alone)")
    });
    assert_eq!((built.target_rows, built.reference_rows), (10_000, 10_000));
    let target = read(&built.target, LabelRequirement::Required);
    let mut counts = [0usize; 10];
    for label in &target.labels {
        counts[label.unwrap() as usize] += 1;
    }
    // The Fashion-MNIST test set holds 1,000 items of each class.
    assert_eq!(counts, [1000; 10]);
}

#[test]
fn a_missing_fashion_mnist_says_how_to_fetch_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let err =
        datasets::build(DatasetName::FashionTextures, out.path(), 0, empty.path()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("fetch-fashion-mnist.sh"), "{message}");
    assert!(message.contains("t10k-images-idx3-ubyte.gz"), "{message}");
    // Nothing was written.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

fn class_counts(table: &Table) -> Vec<usize> {
    let mut counts = vec![0usize; 10];
    for label in &table.labels {
        counts[label.expect("every target row has a label") as usize] += 1;
    }
    while counts.last() == Some(&0) {
        counts.pop();
    }
    counts
}

#[test]
fn the_literature_protocols_keep_only_their_digits() {
    for (name, classes) in [
        (DatasetName::MnistGrass01, 2),
        (DatasetName::MnistGrass012, 3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let built = datasets::build(name, dir.path(), 5, &sources()).unwrap();
        assert_eq!(built.classes, classes);
        assert_eq!(name.classes(), classes);
        assert_eq!((built.height, built.width), (28, 28));
        let target = read(&built.target, LabelRequirement::Required);
        assert_eq!(class_counts(&target), MNIST_CLASS_COUNTS[..classes]);
        let rows: usize = MNIST_CLASS_COUNTS[..classes].iter().sum();
        assert_eq!((built.target_rows, built.reference_rows), (rows, rows));
        let reference = read(&built.reference, LabelRequirement::Optional);
        assert_eq!(reference.ids.len(), rows);

        let again = tempfile::tempdir().unwrap();
        let rebuilt = datasets::build(name, again.path(), 5, &sources()).unwrap();
        assert_eq!(sha256(&built.target), sha256(&rebuilt.target), "{name}");
        assert_eq!(
            sha256(&built.reference),
            sha256(&rebuilt.reference),
            "{name}"
        );
    }
}

/// Mean over rows of each pixel of a table of `side` x `side` images.
fn mean_image(table: &Table, side: usize) -> Vec<f64> {
    let n = side * side;
    let rows = table.pixels.len() / n;
    let mut mean = vec![0f64; n];
    for image in table.pixels.chunks_exact(n) {
        for (m, &v) in mean.iter_mut().zip(image) {
            *m += v as f64 / rows as f64;
        }
    }
    mean
}

#[test]
fn shifted_datasets_move_the_objects_over_larger_crops() {
    let dir = tempfile::tempdir().unwrap();
    let built = datasets::build(DatasetName::MnistGrassShifted, dir.path(), 1, &sources()).unwrap();
    assert_eq!((built.height, built.width, built.classes), (36, 36, 10));
    assert_eq!((built.target_rows, built.reference_rows), (10_000, 10_000));
    let target = read_sized(&built.target, LabelRequirement::Required, 36);
    assert_eq!(class_counts(&target), MNIST_CLASS_COUNTS);
    let reference = read_sized(&built.reference, LabelRequirement::Optional, 36);
    assert_eq!(reference.ids.len(), 10_000);
    // Read as 28x28, the first batch is refused: every image has the canvas's size.
    let first = ImageTableReader::open(built.target.to_str().unwrap(), ReaderOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let refused = decode_batch(
        &first,
        ImageShape::new(1, 28, 28),
        SizePolicy::Exact,
        NullPolicy::Refuse,
    );
    assert!(refused.unwrap_err().to_string().contains("36"));

    // Where the digits' ink lands, on average: target minus reference brightness, averaged
    // over a band of rows (columns) through the middle. MNIST digits keep their ink within
    // columns 4-23 of their 28x28 frame, so aligned digits would leave columns 24 and beyond
    // bare; shifted ones reach column 27 and more, but never 34 (which needs an offset of 11).
    // Differences within one table cancel the brightness difference of the photo's two halves.
    let excess: Vec<f64> = mean_image(&target, 36)
        .iter()
        .zip(mean_image(&reference, 36))
        .map(|(t, r)| t - r)
        .collect();
    let column = |x: usize| (10..27).map(|y| excess[y * 36 + x]).sum::<f64>() / 17.0;
    let row = |y: usize| (10..27).map(|x| excess[y * 36 + x]).sum::<f64>() / 17.0;
    assert!(
        column(18) - column(34) > 15.0,
        "{} {}",
        column(18),
        column(34)
    );
    assert!(
        column(27) - column(34) > 2.0,
        "{} {}",
        column(27),
        column(34)
    );
    assert!(row(28) - row(35) > 3.0, "{} {}", row(28), row(35));

    let again = tempfile::tempdir().unwrap();
    let rebuilt =
        datasets::build(DatasetName::MnistGrassShifted, again.path(), 1, &sources()).unwrap();
    assert_eq!(sha256(&built.target), sha256(&rebuilt.target));
}

#[test]
fn fashion_textures_shifted_has_every_item_on_36x36_crops() {
    let dir = tempfile::tempdir().unwrap();
    let built = datasets::build(
        DatasetName::FashionTexturesShifted,
        dir.path(),
        0,
        &sources(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n(tests/run.sh fetches Fashion-MNIST first; run it rather than cargo test alone)"
        )
    });
    assert_eq!((built.height, built.width, built.classes), (36, 36, 10));
    let target = read_sized(&built.target, LabelRequirement::Required, 36);
    assert_eq!(class_counts(&target), [1000; 10]);
    let reference = read_sized(&built.reference, LabelRequirement::Optional, 36);
    assert_eq!(reference.ids.len(), 10_000);
}
