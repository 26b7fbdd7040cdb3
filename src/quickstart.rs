//! `salient quickstart`: the README's main job on the bundled data. Builds a bundled dataset,
//! runs the raw-pixel and linear contrastive baselines, trains cIDFD (which exports the ONNX
//! graph), embeds the target with `cluster_embed()` in SQL, scores the clusters, prints a table
//! of cIDFD against raw k-means and the best linear baseline, writes the HTML report, and ends
//! with where everything went.

use std::path::{Path, PathBuf};

use crate::compare::{self, CompareJob, CompareMethod};
use crate::data::SizePolicy;
use crate::datasets::{self, DatasetName};
use crate::error::Result;
use crate::train::job::{self, TrainJob};
use crate::train::TrainConfig;

/// The quickstart's training settings (also in `examples/configs/quickstart.toml`).
pub const QUICKSTART_CONFIG: &str = include_str!("../examples/configs/quickstart.toml");

/// The quickstart's dataset: bundled, and small enough to train on in minutes.
pub const QUICKSTART_DATASET: DatasetName = DatasetName::MnistGrass012;

pub fn run(out: &Path, seed: u64) -> Result<()> {
    let data_dir = out.join("data");
    let name = QUICKSTART_DATASET;
    let k = name.classes();
    println!("1/6 building {name} ({})", name.description());
    let data = datasets::build(name, &data_dir, seed, &datasets::default_sources_dir())?;
    println!("    target    {}", data.target.display());
    println!("    reference {}", data.reference.display());

    let mut config: TrainConfig = toml::from_str(QUICKSTART_CONFIG)
        .map_err(|e| crate::Error::Invalid(format!("internal: quickstart config: {e}")))?;
    config.seed = seed;
    println!(
        "2/6 baselines: k-means on raw pixels, on contrastive PCA (20 components) and on \
         reference-whitened pixels (whole, and reduced to their top {} principal components)",
        config.neighbour_components
    );
    let baselines = compare::run(&CompareJob {
        target: data.target.to_string_lossy().into_owned(),
        reference: data.reference.to_string_lossy().into_owned(),
        clusters: k,
        seeds: 1,
        methods: vec![
            CompareMethod::Raw,
            CompareMethod::Cpca,
            CompareMethod::Whiten,
            CompareMethod::WhitenPca,
        ],
        components: 20,
        cpca_alphas: vec![1.0, 2.0, 5.0],
        align_window: 0,
        train: config.clone(),
        work_dir: out.join("compare"),
        size: SizePolicy::Exact,
        device: candle_core::Device::Cpu,
    })?;
    for line in compare::format_table(&baselines).lines() {
        println!("    {line}");
    }

    let model: PathBuf = out.join("model");
    println!(
        "3/6 training cIDFD ({} epochs, width {}; progress below)",
        config.epochs,
        config.width()
    );
    let report = job::run(&TrainJob {
        target: data.target.to_string_lossy().into_owned(),
        reference: Some(data.reference.to_string_lossy().into_owned()),
        out: model.clone(),
        config,
        resume: false,
        size: SizePolicy::Exact,
        device: candle_core::Device::Cpu,
    })?;
    println!(
        "    {} epochs in {:.0} s ({:.0} images/s)",
        report.epochs, report.seconds, report.images_per_second
    );

    // Embedding with SQL through the exported ONNX model, as a user of `salient sql` would.
    let clusters = out.join("clusters.parquet");
    println!("4/6 embedding the target with SQL (ONNX Runtime inside DataFusion):");
    let sql = format!(
        "COPY (SELECT id, label, c['embedding'] AS embedding, c['cluster_id'] AS cluster_id, \
         c['distance'] AS distance FROM (SELECT id, label, cluster_embed(image) AS c FROM target)) \
         TO '{}' STORED AS PARQUET",
        clusters.display()
    );
    println!("    {sql}");
    crate::shell::run_script(
        std::slice::from_ref(&model),
        &[("target", data.target.clone())],
        &sql,
    )?;

    println!("5/6 scoring the clusters against the labels (read only now, never by training)");
    let scores = crate::evaluate::score_embedded(&clusters, "label")?;
    let raw = baselines.iter().find(|(method, _)| method == "raw");
    let best_linear = baselines
        .iter()
        .filter(|(method, _)| method != "raw")
        .max_by(|a, b| a.1.acc.total_cmp(&b.1.acc));
    println!(
        "    {:<44} {:>6} {:>6} {:>6}",
        format!("{name}, k = {k}"),
        "ACC",
        "NMI",
        "ARI"
    );
    for (label, summary) in [
        ("k-means on raw pixels", raw),
        ("best linear baseline", best_linear),
    ] {
        if let Some((method, s)) = summary {
            println!(
                "    {:<44} {:>6.3} {:>6.3} {:>6.3}",
                format!("{label} ({method})"),
                s.acc,
                s.nmi,
                s.ari
            );
        }
    }
    println!(
        "    {:<44} {:>6.3} {:>6.3} {:>6.3}",
        "cIDFD (clusters from SQL)", scores.acc, scores.nmi, scores.ari
    );

    // The methods side by side, for the report's chart.
    let mut rows = baselines.clone();
    rows.push((
        "cidfd".to_string(),
        compare::Summary::of(&[scores], &[report.seconds]),
    ));
    let compare_json = out.join("compare.json");
    crate::atomic::write_bytes_atomically(
        &compare_json,
        serde_json::to_string_pretty(&compare::to_json(&rows))
            .map_err(|e| crate::Error::Invalid(format!("internal: compare JSON: {e}")))?
            .as_bytes(),
    )?;
    println!("6/6 writing the report: cluster montages, salient and background maps, curves");
    let mut report_job = crate::report::ReportJob::new(
        model.clone(),
        data.target.to_string_lossy().into_owned(),
        out.join("report"),
    );
    report_job.reference = Some(data.reference.to_string_lossy().into_owned());
    report_job.compare = Some(compare_json);
    report_job.seed = seed;
    let page = crate::report::run(&report_job)?;

    println!("outputs:");
    println!("    report           {}", page.html.display());
    println!("    model directory  {}", model.display());
    println!(
        "    ONNX model       {}",
        model.join(crate::export::ONNX_FILE).display()
    );
    println!("    clusters         {}", clusters.display());
    println!(
        "    training log     {}",
        model.join(crate::manifest::TRAINING_LOG_FILE).display()
    );
    println!("    dataset          {}", data_dir.display());
    Ok(())
}
