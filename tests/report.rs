//! `salient report` on real images: the page and its PNGs, rendered in headless Chromium
//! (installed by tests/run.sh), for a labelled cIDFD model, a table without labels, an IDFD
//! model (no background encoder) and bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::ImageEncoding;

/// Loads `page` in headless Chromium and returns the `data-figures`, `data-loaded` and
/// `data-blank` the page's own check wrote on <body> after loading.
fn rendered(page: &Path) -> (usize, usize, usize) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            // Containers often have a small /dev/shm.
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium must be installed (tests/run.sh installs it)");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let attribute = |name: &str| -> usize {
        let key = format!("data-{name}=\"");
        let start = dom
            .find(&key)
            .unwrap_or_else(|| panic!("no {key} on <body>: the page's check did not run"))
            + key.len();
        dom[start..].split('"').next().unwrap().parse().unwrap()
    };
    (
        attribute("figures"),
        attribute("loaded"),
        attribute("blank"),
    )
}

fn png_size(path: &Path) -> (u32, u32) {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (image.width(), image.height())
}

fn report(args: &[&str]) -> std::process::Output {
    common::salient(&[&["report"], args].concat())
}

#[test]
fn a_report_shows_montages_maps_curves_and_scores_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = common::tiny_model(
        dir.path(),
        salient::model::Architecture::SmallCnn,
        false,
        192,
    );
    let out = dir.path().join("report");
    let (m, t, r, o) = (
        model.display().to_string(),
        data.target.display().to_string(),
        data.reference.display().to_string(),
        out.display().to_string(),
    );
    let run = report(&[
        "--model",
        &m,
        "--input",
        &t,
        "--reference",
        &r,
        "--out",
        &o,
        "--sample",
        "150",
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(stdout.contains("ACC "), "{stdout}");

    let k = salient::manifest::Manifest::read(&model).unwrap().k;
    let montages: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("montage_cluster_"))
        .collect();
    assert!(!montages.is_empty() && montages.len() <= k, "{montages:?}");
    for (file, size) in [
        ("map_salient.png", (720, 540)),
        ("map_salient_labels.png", (720, 540)),
        ("map_background.png", (720, 540)),
        ("confusion.png", (720, 540)),
        ("distances.png", (720, 300)),
        // Loss terms and the learning rate (no per-epoch evaluation in this run).
        ("training.png", (720, 600)),
    ] {
        assert_eq!(png_size(&out.join(file)), size, "{file}");
    }
    // 28×28 digits at 2×, 8 columns: 8 × (56 + 2) + 2 pixels wide.
    assert_eq!(png_size(&out.join(&montages[0])).0, 466);

    let figures = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    let (shown, loaded, blank) = rendered(&out.join("report.html"));
    assert_eq!(shown, figures, "every PNG is on the page");
    assert_eq!(loaded, shown, "an image did not load");
    assert_eq!(blank, 0, "a figure is blank");
}

#[test]
fn a_table_without_labels_and_an_idfd_model_get_a_page_with_notes() {
    let dir = tempfile::tempdir().unwrap();
    let config = salient::train::TrainConfig {
        method: salient::config::Method::Idfd,
        ..common::tiny_config()
    };
    let (model, data) = common::tiny_model_with(dir.path(), 128, config);
    // The same images without their labels.
    let unlabelled = dir.path().join("unlabelled.parquet");
    let rows = common::read_rows(&data.target);
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let images: Vec<Option<Vec<u8>>> = rows.into_iter().map(|r| Some(r.1)).collect();
    common::write_table(&unlabelled, &ids, &images, None, ImageEncoding::Binary);
    let out = dir.path().join("report");
    let run = report(&[
        "--model",
        &model.display().to_string(),
        "--input",
        &unlabelled.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(stdout.contains("no `label` values"), "{stdout}");
    assert!(stdout.contains("no background encoder"), "{stdout}");
    assert!(out.join("map_salient.png").is_file());
    for absent in [
        "map_background.png",
        "confusion.png",
        "map_salient_labels.png",
    ] {
        assert!(!out.join(absent).exists(), "{absent}");
    }
    let (shown, loaded, blank) = rendered(&out.join("report.html"));
    assert!(shown >= 2, "{shown} figures");
    assert_eq!((loaded, blank), (shown, 0));
}

#[test]
fn bad_input_is_named_and_leaves_no_page() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = common::tiny_model(
        dir.path(),
        salient::model::Architecture::SmallCnn,
        false,
        64,
    );
    let bad = dir.path().join("bad.parquet");
    common::write_table_with_bad_row(&bad, 100, 4);
    let out = dir.path().join("report");
    let m = model.display().to_string();
    let o = out.display().to_string();
    let run = report(&[
        "--model",
        &m,
        "--input",
        &bad.display().to_string(),
        "--out",
        &o,
    ]);
    assert!(!run.status.success());
    let stderr = common::stderr(&run);
    assert!(stderr.contains("row id 104"), "{stderr}");
    assert!(!out.join("report.html").exists());

    let missing = dir.path().join("no-model");
    let run = report(&[
        "--model",
        &missing.display().to_string(),
        "--input",
        &bad.display().to_string(),
        "--out",
        &o,
    ]);
    assert!(!run.status.success());
    assert!(
        common::stderr(&run).contains("no-model"),
        "{}",
        common::stderr(&run)
    );
}
