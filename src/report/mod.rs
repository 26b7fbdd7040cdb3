//! `salient report`: one self-contained HTML page (figures inline as PNG, no network needed)
//! that shows what a model's clusters hold, plus each figure as a PNG file:
//! - cluster montages: the images nearest each centroid and a few random members;
//! - maps: a PCA projection of the salient embeddings coloured by cluster (and by label), and of
//!   the background encoder's embeddings coloured by the same clusters;
//! - the training curves from `training_log.csv`;
//! - the distance to the nearest centroid for target and reference images;
//! - with labels, ACC/NMI/ARI and the confusion matrix; with a `compare` result, the methods
//!   side by side.
//!
//! The input streams through once (ONNX Runtime, the graph SQL runs); memory holds only the
//! montage images, a uniform sample for the maps (reservoir sampling), fixed-size histograms and
//! the cluster × label counts, whatever the table's size.

pub mod figures;
mod html;
pub mod montage;

use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{
    decode_batch, ColumnNames, ImageShape, ImageTableReader, LabelRequirement, NullPolicy,
    ReaderOptions, SizePolicy,
};
use crate::error::{Error, Result};
use crate::infer::{EngineOptions, InferenceEngine};
use crate::metrics::ClusterScores;

pub use html::REPORT_FILE;

/// One `salient report` run.
#[derive(Clone, Debug)]
pub struct ReportJob {
    pub model: PathBuf,
    /// The table to describe: a Parquet file, a directory of them, or a glob.
    pub input: String,
    /// Background-only images, for the reference check.
    pub reference: Option<String>,
    pub out: PathBuf,
    pub columns: ColumnNames,
    /// Rows sampled uniformly for the maps.
    pub sample: usize,
    /// Images nearest each centroid in its montage.
    pub nearest: usize,
    /// Random members of each cluster in its montage.
    pub random: usize,
    /// A `salient compare --format json` result to chart; by default `MODEL/compare.json` when
    /// it exists.
    pub compare: Option<PathBuf>,
    pub seed: u64,
    pub size: SizePolicy,
}

impl ReportJob {
    pub fn new(model: PathBuf, input: String, out: PathBuf) -> Self {
        Self {
            model,
            input,
            reference: None,
            out,
            columns: ColumnNames::default(),
            sample: 2000,
            nearest: 24,
            random: 8,
            compare: None,
            seed: 0,
            size: SizePolicy::Exact,
        }
    }
}

/// What a report run wrote and found.
#[derive(Clone, Debug)]
pub struct ReportSummary {
    pub html: PathBuf,
    /// Every figure, also inline in the page.
    pub figures: Vec<PathBuf>,
    pub rows: u64,
    pub reference_rows: u64,
    /// With labels: the model's clusters scored against them.
    pub scores: Option<ClusterScores>,
    /// Things the page leaves out, and why (no labels, no background encoder, ...).
    pub notes: Vec<String>,
}

/// An image kept for a montage, ordered by its distance to the centroid.
struct Member {
    distance: f32,
    id: i64,
    pixels: Vec<u8>,
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.distance.total_cmp(&other.distance).is_eq()
    }
}
impl Eq for Member {}
impl PartialOrd for Member {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Member {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.id.cmp(&other.id))
    }
}

/// What the report keeps of one cluster.
#[derive(Default)]
struct Cluster {
    size: u64,
    reference_size: u64,
    /// The `nearest` closest members (a max-heap, so the farthest kept is dropped first).
    nearest: BinaryHeap<Member>,
    /// A uniform sample of the members.
    random: Vec<Member>,
    labels: BTreeMap<i64, u64>,
}

/// A row kept for the maps.
struct Sampled {
    cluster: u32,
    label: Option<i64>,
    embedding: Vec<f32>,
    pixels: Vec<u8>,
}

/// Fixed-range histogram of distances (squared distances between unit vectors and centroids
/// lie in [0, 4]; anything beyond lands in the last bin).
struct Histogram {
    bins: Vec<u64>,
}

const HISTOGRAM_MAX: f64 = 4.0;

impl Histogram {
    fn new() -> Self {
        Self { bins: vec![0; 80] }
    }

    fn add(&mut self, value: f32) {
        let n = self.bins.len();
        let at = (f64::from(value.max(0.0)) / HISTOGRAM_MAX * n as f64) as usize;
        self.bins[at.min(n - 1)] += 1;
    }

    fn total(&self) -> u64 {
        self.bins.iter().sum()
    }

    /// `(bin centre, share of the rows)` for every bin up to the last non-empty one.
    fn shares(&self, up_to: usize) -> Vec<(f64, f64)> {
        let width = HISTOGRAM_MAX / self.bins.len() as f64;
        let total = self.total().max(1) as f64;
        self.bins[..up_to]
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i as f64 + 0.5) * width, n as f64 / total))
            .collect()
    }

    fn last_used(&self) -> usize {
        self.bins.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1)
    }
}

/// Offers the `seen`-th item (0-based) to a uniform sample of at most `capacity` (Algorithm R);
/// `make` builds it only if it is kept.
fn reservoir<T>(
    sample: &mut Vec<T>,
    capacity: usize,
    seen: u64,
    rng: &mut ChaCha8Rng,
    make: impl FnOnce() -> T,
) {
    if sample.len() < capacity {
        sample.push(make());
    } else if capacity > 0 {
        let j = rng.random_range(0..=seen);
        if (j as usize) < capacity {
            sample[j as usize] = make();
        }
    }
}

/// Everything one pass over the input keeps.
struct Collected {
    rows: u64,
    clusters: Vec<Cluster>,
    sample: Vec<Sampled>,
    distances: Histogram,
    labelled: u64,
}

fn reader_options(columns: &ColumnNames) -> ReaderOptions {
    ReaderOptions {
        names: columns.clone(),
        labels: LabelRequirement::Optional,
        // Streaming: a set of every id would grow with the table.
        check_unique_ids: false,
        ..ReaderOptions::default()
    }
}

/// Streams `input` through the model once and keeps what the report shows.
fn collect(job: &ReportJob, engine: &InferenceEngine, rng: &mut ChaCha8Rng) -> Result<Collected> {
    let manifest = &engine.manifest;
    let shape = manifest.input.shape;
    let reader = ImageTableReader::open(&job.input, reader_options(&job.columns))?;
    let total = reader.validate_all()?;
    let bar = crate::progress::rows_bar(total, "report");
    let mut collected = Collected {
        rows: 0,
        clusters: (0..manifest.k).map(|_| Cluster::default()).collect(),
        sample: Vec::new(),
        distances: Histogram::new(),
        labelled: 0,
    };
    let mut logged = 0u64;
    for batch in reader {
        let batch = batch?;
        let decoded = decode_batch(&batch, shape, job.size, NullPolicy::Refuse)?;
        if decoded.ids.is_empty() {
            continue;
        }
        let embedded = engine.run(&decoded.pixels)?;
        for (row, &id) in decoded.ids.iter().enumerate() {
            let c = embedded.cluster_id[row];
            let cluster = usize::try_from(c)
                .ok()
                .and_then(|c| collected.clusters.get_mut(c))
                .ok_or_else(|| Error::Row {
                    path: batch.path.to_path_buf(),
                    id,
                    message: format!(
                        "the model assigned cluster {c}, outside its {} clusters",
                        manifest.k
                    ),
                })?;
            let distance = embedded.distance[row];
            let pixels = &decoded.pixels[row * shape.len()..(row + 1) * shape.len()];
            let seen = cluster.size;
            cluster.size += 1;
            collected.distances.add(distance);
            if let Some(label) = decoded.labels[row] {
                *cluster.labels.entry(label).or_default() += 1;
                collected.labelled += 1;
            }
            let farthest_kept = cluster.nearest.peek().map(|m| m.distance);
            if cluster.nearest.len() < job.nearest || farthest_kept.is_some_and(|f| distance < f) {
                cluster.nearest.push(Member {
                    distance,
                    id,
                    pixels: pixels.to_vec(),
                });
                if cluster.nearest.len() > job.nearest {
                    cluster.nearest.pop();
                }
            }
            reservoir(&mut cluster.random, job.random, seen, rng, || Member {
                distance,
                id,
                pixels: pixels.to_vec(),
            });
            let embedding = &embedded.embedding[row * manifest.d..(row + 1) * manifest.d];
            let label = decoded.labels[row];
            reservoir(
                &mut collected.sample,
                job.sample,
                collected.rows,
                rng,
                || Sampled {
                    cluster: c as u32,
                    label,
                    embedding: embedding.to_vec(),
                    pixels: pixels.to_vec(),
                },
            );
            collected.rows += 1;
        }
        if let Some(bar) = &bar {
            bar.inc(decoded.ids.len() as u64);
        } else if collected.rows - logged >= 100_000 {
            logged = collected.rows;
            tracing::info!(rows = collected.rows, total, "report: rows embedded");
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if collected.rows == 0 {
        return Err(Error::Invalid(format!(
            "{}: the table has no rows to report on",
            job.input
        )));
    }
    Ok(collected)
}

/// Streams the reference table: its distances, and how many of its rows each cluster takes.
fn collect_reference(
    spec: &str,
    job: &ReportJob,
    engine: &InferenceEngine,
    clusters: &mut [Cluster],
) -> Result<(u64, Histogram)> {
    let shape = engine.manifest.input.shape;
    let mut distances = Histogram::new();
    let mut rows = 0u64;
    for batch in ImageTableReader::open(spec, reader_options(&job.columns))? {
        let batch = batch?;
        let decoded = decode_batch(&batch, shape, job.size, NullPolicy::Refuse)?;
        if decoded.ids.is_empty() {
            continue;
        }
        let embedded = engine.run(&decoded.pixels)?;
        for (&c, &distance) in embedded.cluster_id.iter().zip(&embedded.distance) {
            if let Some(cluster) = usize::try_from(c).ok().and_then(|c| clusters.get_mut(c)) {
                cluster.reference_size += 1;
            }
            distances.add(distance);
            rows += 1;
        }
    }
    Ok((rows, distances))
}

/// A figure: its file name, caption and pixels.
pub(crate) struct Figure {
    pub file: String,
    pub caption: String,
    pub image: RgbImage,
}

/// The 2-D PCA projection of `rows` (n×d); `None` with fewer than 3 rows.
fn project(rows: &[f32], d: usize) -> Result<Option<Vec<(f64, f64)>>> {
    let n = rows.len() / d.max(1);
    if n < 3 || d < 2 {
        return Ok(None);
    }
    let pca = crate::baselines::pca(rows, n, d, 2)?;
    let xy = pca.transform(rows)?;
    Ok(Some(
        xy.chunks(2)
            .map(|p| (f64::from(p[0]), f64::from(p[1])))
            .collect(),
    ))
}

fn cluster_names(k: usize) -> Vec<String> {
    (0..k).map(|c| format!("cluster {c}")).collect()
}

/// Runs the report: streams the input (and reference), draws every figure, and writes the
/// PNGs and `report.html` into `job.out`, each atomically.
pub fn run(job: &ReportJob) -> Result<ReportSummary> {
    let engine = InferenceEngine::load(&job.model, EngineOptions::default())?;
    let manifest = engine.manifest.clone();
    let shape = manifest.input.shape;
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
    let mut notes = Vec::new();

    let mut collected = collect(job, &engine, &mut rng)?;
    let reference = match &job.reference {
        Some(spec) => Some(collect_reference(
            spec,
            job,
            &engine,
            &mut collected.clusters,
        )?),
        None => {
            notes.push("No reference table was given (--reference): no reference check.".into());
            None
        }
    };
    let labelled = collected.labelled > 0;
    if !labelled {
        notes.push(format!(
            "The table has no `{}` values: no scores, confusion matrix or label map.",
            job.columns.label
        ));
    } else if collected.labelled < collected.rows {
        notes.push(format!(
            "Scores cover the {} of {} rows that have a label.",
            collected.labelled, collected.rows
        ));
    }

    let mut figures = Vec::new();
    montages(&collected, shape, &mut figures)?;
    maps(
        job,
        &manifest,
        &collected,
        labelled,
        &mut figures,
        &mut notes,
    )?;
    let scores = if labelled {
        Some(confusion(&collected, &mut figures)?)
    } else {
        None
    };
    if let Some((_, reference_distances)) = &reference {
        figures.push(distances(&collected.distances, reference_distances)?);
    }
    match training_curves(&job.model)? {
        Some(figure) => figures.push(figure),
        None => notes.push(format!(
            "{} has no training log: no training curves.",
            job.model.display()
        )),
    }
    let compare_file = job.compare.clone().or_else(|| {
        let default = job.model.join("compare.json");
        default.is_file().then_some(default)
    });
    if let Some(file) = compare_file {
        figures.push(compare_bars(&file)?);
    }

    std::fs::create_dir_all(&job.out).map_err(|e| Error::io(&job.out, e))?;
    let mut written = Vec::new();
    let mut encoded = Vec::new();
    for figure in &figures {
        let png = encode_png(&figure.image, &figure.file)?;
        let path = job.out.join(&figure.file);
        crate::atomic::write_bytes_atomically(&path, &png)?;
        written.push(path);
        encoded.push(png);
    }
    let page = html::Page {
        job,
        manifest: &manifest,
        rows: collected.rows,
        reference_rows: reference.as_ref().map(|r| r.0),
        clusters: &collected
            .clusters
            .iter()
            .map(|c| html::ClusterRow {
                size: c.size,
                reference_size: c.reference_size,
                majority: c
                    .labels
                    .iter()
                    .max_by_key(|(_, &n)| n)
                    .map(|(&l, &n)| (l, n)),
            })
            .collect::<Vec<_>>(),
        scores: scores.as_ref(),
        figures: &figures,
        pngs: &encoded,
        notes: &notes,
    }
    .render();
    let html_path = job.out.join(REPORT_FILE);
    crate::atomic::write_bytes_atomically(&html_path, page.as_bytes())?;
    Ok(ReportSummary {
        html: html_path,
        figures: written,
        rows: collected.rows,
        reference_rows: reference.map_or(0, |r| r.0),
        scores,
        notes,
    })
}

fn encode_png(image: &RgbImage, name: &str) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Invalid(format!("encoding {name}: {e}")))?;
    Ok(png)
}

fn montages(collected: &Collected, shape: ImageShape, figures: &mut Vec<Figure>) -> Result<()> {
    for (c, cluster) in collected.clusters.iter().enumerate() {
        if cluster.size == 0 {
            continue;
        }
        let mut nearest: Vec<&Member> = cluster.nearest.iter().collect();
        nearest.sort();
        let nearest: Vec<&[u8]> = nearest.iter().map(|m| m.pixels.as_slice()).collect();
        let random: Vec<&[u8]> = cluster.random.iter().map(|m| m.pixels.as_slice()).collect();
        figures.push(Figure {
            file: format!("montage_cluster_{c}.png"),
            caption: format!(
                "Cluster {c}: the {} images nearest its centroid (nearest first), then {} random members.",
                nearest.len(),
                random.len()
            ),
            image: montage::montage(&nearest, &random, shape, 8),
        });
    }
    Ok(())
}

fn maps(
    job: &ReportJob,
    manifest: &crate::manifest::Manifest,
    collected: &Collected,
    labelled: bool,
    figures: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let sample = &collected.sample;
    let clusters: Vec<usize> = sample.iter().map(|s| s.cluster as usize).collect();
    let names = cluster_names(manifest.k);
    let embeddings: Vec<f32> = sample.iter().flat_map(|s| s.embedding.clone()).collect();
    let Some(points) = project(&embeddings, manifest.d)? else {
        notes.push("Fewer than 3 rows: no maps.".into());
        return Ok(());
    };
    figures.push(Figure {
        file: "map_salient.png".into(),
        caption: format!(
            "Salient embeddings of {} sampled rows (PCA), coloured by cluster.",
            sample.len()
        ),
        image: figures::scatter("salient embedding, by cluster", &points, &clusters, &names)?,
    });
    if labelled {
        let labels: Vec<i64> = {
            let mut l: Vec<i64> = sample.iter().filter_map(|s| s.label).collect();
            l.sort_unstable();
            l.dedup();
            l
        };
        let (kept, groups): (Vec<(f64, f64)>, Vec<usize>) = sample
            .iter()
            .zip(&points)
            .filter_map(|(s, &p)| {
                let label = s.label?;
                Some((p, labels.binary_search(&label).unwrap_or(0)))
            })
            .unzip();
        let label_names: Vec<String> = labels.iter().map(|l| format!("label {l}")).collect();
        figures.push(Figure {
            file: "map_salient_labels.png".into(),
            caption: "The same map, coloured by label.".into(),
            image: figures::scatter("salient embedding, by label", &kept, &groups, &label_names)?,
        });
    }
    let trained = crate::export::TrainedModel::load(&job.model)?;
    let pixels: Vec<u8> = sample.iter().flat_map(|s| s.pixels.clone()).collect();
    match trained.embed_background(&pixels)? {
        Some(background) => {
            if let Some(points) = project(&background, manifest.config.dim_background)? {
                figures.push(Figure {
                    file: "map_background.png".into(),
                    caption: "The background encoder's embeddings of the same rows (PCA), coloured by the salient clusters: clusters that follow the objects and not the backgrounds are mixed here.".into(),
                    image: figures::scatter(
                        "background embedding, by salient cluster",
                        &points,
                        &clusters,
                        &names,
                    )?,
                });
            }
        }
        None => notes.push(format!(
            "The model was trained with `{}`, which has no background encoder: no background map.",
            manifest.method
        )),
    }
    Ok(())
}

/// The confusion matrix figure; returns the scores from the same counts.
fn confusion(collected: &Collected, figures: &mut Vec<Figure>) -> Result<ClusterScores> {
    let mut counts = Vec::new();
    for (c, cluster) in collected.clusters.iter().enumerate() {
        for (&label, &n) in &cluster.labels {
            counts.push((label, c, n));
        }
    }
    let scores = crate::metrics::scores_from_counts(&counts)?;
    let mut labels: Vec<i64> = counts.iter().map(|c| c.0).collect();
    labels.sort_unstable();
    labels.dedup();
    // Clusters in the order of their majority label, so a good clustering shows a diagonal.
    let mut order: Vec<usize> = (0..collected.clusters.len())
        .filter(|&c| collected.clusters[c].size > 0)
        .collect();
    let majority = |c: usize| {
        collected.clusters[c]
            .labels
            .iter()
            .max_by_key(|(_, &n)| n)
            .map_or(i64::MAX, |(&l, _)| l)
    };
    order.sort_by_key(|&c| (majority(c), c));
    let matrix: Vec<Vec<u64>> = order
        .iter()
        .map(|&c| {
            labels
                .iter()
                .map(|l| collected.clusters[c].labels.get(l).copied().unwrap_or(0))
                .collect()
        })
        .collect();
    let row_names: Vec<String> = order.iter().map(|c| c.to_string()).collect();
    let column_names: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    figures.push(Figure {
        file: "confusion.png".into(),
        caption: format!(
            "Clusters × labels (counts; shade: share of the cluster). ACC {:.3}, NMI {:.3}, ARI {:.3} over {} labelled rows.",
            scores.acc, scores.nmi, scores.ari, scores.n
        ),
        image: figures::heat_map(
            "clusters x labels",
            &matrix,
            &row_names,
            &column_names,
            ("cluster", "label"),
        )?,
    });
    Ok(scores)
}

fn distances(target: &Histogram, reference: &Histogram) -> Result<Figure> {
    let up_to = target.last_used().max(reference.last_used()).max(1);
    let series = vec![
        figures::Series {
            name: "target".into(),
            points: target.shares(up_to),
        },
        figures::Series {
            name: "reference".into(),
            points: reference.shares(up_to),
        },
    ];
    Ok(Figure {
        file: "distances.png".into(),
        caption: "Squared distance to the nearest centroid, as a share of each table's rows. Background-only images should sit far from every centroid, or all near one.".into(),
        image: figures::line_panels(
            "distances",
            "squared distance to the nearest centroid",
            &[("distance to the nearest centroid".into(), series)],
        )?,
    })
}

/// The training curves from `MODEL/training_log.csv`: the loss terms, the learning rate and,
/// when the run was evaluated, ACC/NMI/ARI; `None` without a log.
fn training_curves(model: &Path) -> Result<Option<Figure>> {
    let path = model.join(crate::manifest::TRAINING_LOG_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let bad = |message: String| Error::File {
        path: path.clone(),
        message,
    };
    let mut reader = csv::Reader::from_path(&path).map_err(|e| bad(e.to_string()))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let epoch_column = headers
        .iter()
        .position(|h| h == "epoch")
        .ok_or_else(|| bad("no `epoch` column".into()))?;
    let mut columns: Vec<Vec<(f64, f64)>> = vec![Vec::new(); headers.len()];
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        let epoch: f64 = record
            .get(epoch_column)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("line {}: `epoch` is not a number", line + 2)))?;
        for (i, value) in record.iter().enumerate() {
            if let Ok(v) = value.parse::<f64>() {
                columns[i].push((epoch, v));
            }
        }
    }
    let series = |names: &[&str]| -> Vec<figures::Series> {
        headers
            .iter()
            .zip(&columns)
            .filter(|(h, points)| {
                names.contains(&h.as_str()) && points.iter().any(|&(_, v)| v != 0.0)
            })
            .map(|(h, points)| figures::Series {
                name: h.clone(),
                points: points.clone(),
            })
            .collect()
    };
    let terms: Vec<&str> = headers
        .iter()
        .map(String::as_str)
        .filter(|h| {
            !matches!(
                *h,
                "epoch" | "lr" | "seconds" | "images_per_second" | "acc" | "nmi" | "ari"
            )
        })
        .collect();
    let mut panels = vec![
        ("loss terms".to_string(), series(&terms)),
        ("learning rate".to_string(), series(&["lr"])),
    ];
    let evaluated = series(&["acc", "nmi", "ari"]);
    if !evaluated.is_empty() {
        panels.push(("scores during training".to_string(), evaluated));
    }
    panels.retain(|(_, s)| !s.is_empty());
    if panels.is_empty() {
        return Ok(None);
    }
    Ok(Some(Figure {
        file: "training.png".into(),
        caption: format!("Training, per epoch, from {}.", path.display()),
        image: figures::line_panels("training curves", "epoch", &panels)?,
    }))
}

/// The methods of a `salient compare --format json` result, side by side.
fn compare_bars(path: &Path) -> Result<Figure> {
    let bad = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let object = value.as_object().ok_or_else(|| {
        bad("expected an object of methods, as `salient compare --format json` writes".into())
    })?;
    let mut methods = Vec::new();
    for (name, scores) in object {
        let score = |key: &str| {
            scores
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| bad(format!("method `{name}`: no number `{key}`")))
        };
        methods.push((
            name.clone(),
            vec![score("acc")?, score("nmi")?, score("ari")?],
        ));
    }
    if methods.is_empty() {
        return Err(bad("no methods".into()));
    }
    Ok(Figure {
        file: "compare.png".into(),
        caption: format!("The methods of {} side by side.", path.display()),
        image: figures::grouped_bars("methods compared", &methods, &["ACC", "NMI", "ARI"])?,
    })
}

#[cfg(test)]
mod tests;
