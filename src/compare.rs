//! `salient compare`: the baselines and cIDFD on the same data and seeds, in one table
//! (METHOD.md's evaluation protocol): k-means on raw pixels, PCA + k-means, contrastive PCA +
//! k-means (reported per α, since picking α by the labels would be cheating), reference
//! whitening + k-means, reference whitening + PCA + k-means (the space cIDFD finds its neighbour
//! positives in when no alignment front is on), shift-invariant k-means on the whitened pixels, IDFD on the target set
//! alone, and cIDFD.

use std::path::PathBuf;

use serde::Serialize;

use crate::baselines::{
    align_by_templates, cpca_grid, normalised_principal_components, normalize_rows, pca,
    reference_whitened_pixels, reference_whitening, ShiftKMeans,
};
use crate::data::{probe_table_shape, LabelRequirement, ReaderOptions, SizePolicy};
use crate::error::{Error, Result};
use crate::evaluate::cluster_and_score;
use crate::metrics::ClusterScores;
use crate::train::job::{self, TrainJob};
use crate::train::{ImageSet, Method, TrainConfig};

pub use crate::baselines::WHITENING_SHRINKAGE;

/// The methods `compare` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum CompareMethod {
    Raw,
    Pca,
    Cpca,
    /// k-means on target pixels whitened with the reference covariance.
    Whiten,
    /// k-means on the reference-whitened pixels reduced to the top `neighbour_components`
    /// principal components and normalised: the space cIDFD finds its neighbour positives in
    /// (when no alignment front is on), so a bar its learned embedding has to clear.
    WhitenPca,
    /// k-means on the windows of the reference-whitened pixels that shift-invariant k-means
    /// aligns (templates matched at every offset): the classical answer to objects that move.
    Tic,
    Idfd,
    Cidfd,
}

#[derive(Clone, Debug)]
pub struct CompareJob {
    pub target: String,
    pub reference: String,
    pub clusters: usize,
    pub seeds: usize,
    pub methods: Vec<CompareMethod>,
    /// Components kept by PCA and cPCA.
    pub components: usize,
    /// The α grid of contrastive PCA.
    pub cpca_alphas: Vec<f64>,
    /// Side of shift-invariant k-means' windows; 0: [`crate::alignment::DEFAULT_WINDOW`], or
    /// the image's smaller side if that is less.
    pub align_window: usize,
    /// Settings of the IDFD and cIDFD runs (method and seed are set per run).
    pub train: TrainConfig,
    /// Where the trained models go (one directory per method and seed).
    pub work_dir: PathBuf,
    pub size: SizePolicy,
    /// Where IDFD and cIDFD train (the linear methods and k-means run on the CPU).
    pub device: candle_core::Device,
}

/// Mean and standard deviation over seeds, in the shape of `evaluate`'s JSON plus `*_std`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub acc: f64,
    pub nmi: f64,
    pub ari: f64,
    pub acc_std: f64,
    pub nmi_std: f64,
    pub ari_std: f64,
    pub n: usize,
    pub seeds: usize,
    /// Mean wall-clock seconds per seed: fitting (projection or training) plus k-means. A
    /// linear projection is fitted once for all seeds; its time counts in every seed's.
    pub seconds: f64,
}

impl Summary {
    pub fn of(runs: &[ClusterScores], seconds: &[f64]) -> Self {
        let stat = |f: fn(&ClusterScores) -> f64| {
            let n = runs.len().max(1) as f64;
            let mean = runs.iter().map(f).sum::<f64>() / n;
            let var = runs.iter().map(|r| (f(r) - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            (mean, var.sqrt())
        };
        let (acc, acc_std) = stat(|r| r.acc);
        let (nmi, nmi_std) = stat(|r| r.nmi);
        let (ari, ari_std) = stat(|r| r.ari);
        Self {
            acc,
            nmi,
            ari,
            acc_std,
            nmi_std,
            ari_std,
            n: runs.first().map_or(0, |r| r.n),
            seeds: runs.len(),
            seconds: seconds.iter().sum::<f64>() / seconds.len().max(1) as f64,
        }
    }
}

/// One row of the comparison: a name (e.g. `cpca(20,a=2)`) and its summary over seeds.
pub type Row = (String, Summary);

/// Runs every method for every seed; rows come in the order the methods were asked for.
pub fn run(job: &CompareJob) -> Result<Vec<Row>> {
    let options = ReaderOptions {
        labels: LabelRequirement::Ignore,
        ..Default::default()
    };
    let shape = probe_table_shape(&job.target, &options)?;
    let target = ImageSet::load(&job.target, shape, LabelRequirement::Required, job.size)?;
    let labels = target.complete_labels().ok_or_else(|| {
        Error::Invalid(format!(
            "`{}`: every target row needs a label to compare methods",
            job.target
        ))
    })?;
    let needs_reference = job.methods.iter().any(|m| {
        matches!(
            m,
            CompareMethod::Cpca
                | CompareMethod::Whiten
                | CompareMethod::WhitenPca
                | CompareMethod::Tic
        )
    });
    let reference = if needs_reference {
        Some(ImageSet::load(
            &job.reference,
            shape,
            LabelRequirement::Ignore,
            job.size,
        )?)
    } else {
        None
    };
    let d = shape.len();
    let x = target.unit_pixels();
    // cPCA and whitening share the reference pixels: convert them once.
    let b = reference.as_ref().map(ImageSet::unit_pixels);
    let mut runs: Vec<(String, Vec<ClusterScores>, Vec<f64>)> = Vec::new();
    let restarts = job.train.kmeans_restarts;
    let k = job.clusters;

    // Linear projections do not depend on the seed; only k-means does.
    let timed = std::time::Instant::now;
    let started = timed();
    let pca_embedding = if job.methods.contains(&CompareMethod::Pca) {
        Some(pca(&x, target.len(), d, job.components)?.embedding)
    } else {
        None
    };
    let pca_seconds = started.elapsed().as_secs_f64();
    let started = timed();
    let cpca_embeddings: Vec<(f64, Vec<f32>)> =
        match (&b, job.methods.contains(&CompareMethod::Cpca)) {
            (Some(b), true) => job
                .cpca_alphas
                .iter()
                .copied()
                .zip(cpca_grid(&x, b, d, job.components, &job.cpca_alphas)?)
                .map(|(alpha, projection)| (alpha, projection.embedding))
                .collect(),
            _ => Vec::new(),
        };
    // One grid fits every alpha: each row is charged the grid's time over its size.
    let cpca_seconds = started.elapsed().as_secs_f64() / job.cpca_alphas.len().max(1) as f64;
    // Shift-invariant k-means reads the ZCA-whitened pixels; whitening's k-means reads the same
    // rows normalised (a rotation of `reference_whitening`'s rows, the same distances), so one
    // eigendecomposition of the reference covariance serves both.
    let started = timed();
    let whitened_pixels = match (&b, job.methods.contains(&CompareMethod::Tic)) {
        (Some(b), true) => {
            if shape.channels != 1 {
                return Err(Error::Invalid(format!(
                    "`{}`: method tic needs single-channel images, got {} channels",
                    job.target, shape.channels
                )));
            }
            Some(reference_whitened_pixels(&x, b, d, WHITENING_SHRINKAGE)?)
        }
        _ => None,
    };
    let whitened_pixels_seconds = started.elapsed().as_secs_f64();
    let started = timed();
    let wants_whitened = job.methods.contains(&CompareMethod::Whiten)
        || job.methods.contains(&CompareMethod::WhitenPca);
    let whitened = match (&b, &whitened_pixels, wants_whitened) {
        (_, Some(pixels), true) => {
            let mut rows = pixels.clone();
            normalize_rows(&mut rows, d);
            Some(rows)
        }
        (Some(b), None, true) => Some(reference_whitening(&x, b, d, WHITENING_SHRINKAGE)?),
        _ => None,
    };
    let whiten_seconds = match &whitened_pixels {
        Some(_) => whitened_pixels_seconds + started.elapsed().as_secs_f64(),
        None => started.elapsed().as_secs_f64(),
    };
    // The neighbour space (`Neighbours::in_whitened_pixels` searches the same projection).
    let started = timed();
    let whitened_pca = match (&whitened, job.methods.contains(&CompareMethod::WhitenPca)) {
        (Some(z), true) => Some(normalised_principal_components(
            z,
            target.len(),
            d,
            job.train.neighbour_components,
        )?),
        _ => None,
    };
    let whitened_pca_seconds = whiten_seconds + started.elapsed().as_secs_f64();
    let window = match job.align_window {
        0 => crate::alignment::DEFAULT_WINDOW
            .min(shape.height)
            .min(shape.width),
        w => w,
    };
    // The projections are done: free the reference pixels before IDFD / cIDFD train.
    drop((b, reference));

    for seed in 0..job.seeds as u64 {
        for method in &job.methods {
            let started = timed();
            let took = |fit: f64| fit + started.elapsed().as_secs_f64();
            match method {
                CompareMethod::Raw => {
                    let (_, s) = cluster_and_score(&x, d, Some(&labels), k, restarts, seed)?;
                    push(&mut runs, "raw", s, took(0.0));
                }
                CompareMethod::Pca => {
                    if let Some(e) = &pca_embedding {
                        let (_, s) =
                            cluster_and_score(e, job.components, Some(&labels), k, restarts, seed)?;
                        push(
                            &mut runs,
                            &format!("pca({})", job.components),
                            s,
                            took(pca_seconds),
                        );
                    }
                }
                CompareMethod::Cpca => {
                    for (alpha, e) in &cpca_embeddings {
                        let started = timed();
                        let (_, s) =
                            cluster_and_score(e, job.components, Some(&labels), k, restarts, seed)?;
                        push(
                            &mut runs,
                            &format!("cpca({},a={alpha})", job.components),
                            s,
                            cpca_seconds + started.elapsed().as_secs_f64(),
                        );
                    }
                }
                CompareMethod::Whiten => {
                    if let Some(z) = &whitened {
                        let (_, s) = cluster_and_score(z, d, Some(&labels), k, restarts, seed)?;
                        push(&mut runs, "whiten(ref)", s, took(whiten_seconds));
                    }
                }
                CompareMethod::WhitenPca => {
                    if let Some((e, c)) = &whitened_pca {
                        let c = *c;
                        let (_, s) = cluster_and_score(e, c, Some(&labels), k, restarts, seed)?;
                        push(
                            &mut runs,
                            &format!("whiten(ref)+pca({c})"),
                            s,
                            took(whitened_pca_seconds),
                        );
                    }
                }
                CompareMethod::Tic => {
                    if let Some(z) = &whitened_pixels {
                        let settings = ShiftKMeans::suite(window, k, seed);
                        let aligned = align_by_templates(
                            z,
                            target.len(),
                            (shape.height, shape.width),
                            settings,
                        )?;
                        let (_, s) = cluster_and_score(
                            &aligned.windows,
                            window * window,
                            Some(&labels),
                            k,
                            restarts,
                            seed,
                        )?;
                        push(
                            &mut runs,
                            &format!("tic(ref,w={window})"),
                            s,
                            took(whitened_pixels_seconds),
                        );
                    }
                }
                CompareMethod::Idfd | CompareMethod::Cidfd => {
                    let idfd = *method == CompareMethod::Idfd;
                    let mut config = TrainConfig {
                        method: if idfd { Method::Idfd } else { Method::Cidfd },
                        seed,
                        clusters: Some(k),
                        ..job.train.clone()
                    };
                    // Named by the settings of the row's own method, whatever `method` the
                    // given settings name (the method-dependent defaults differ).
                    let (method_name, dir_name) = trained_row_name(idfd, &config);
                    if idfd {
                        // IDFD reads no reference set: no reference whitening, and no
                        // neighbours found in reference-whitened pixels.
                        config.whitening_kernel = Some(0);
                        config.whitening_matrix = false;
                        config.neighbour_positives = Some(0);
                        config.neighbour_align_window = 0;
                        config.neighbour_skip_raw_nearest = Some(0);
                        config.contrastive_subspace = Some(false);
                    }
                    let train = TrainJob {
                        target: job.target.clone(),
                        reference: Some(job.reference.clone()),
                        out: job.work_dir.join(format!("{dir_name}-seed{seed}")),
                        config,
                        resume: false,
                        size: job.size,
                        device: job.device.clone(),
                    };
                    tracing::info!(method = %method_name, seed, "training");
                    let report = job::run(&train)?;
                    let s = report.metrics.ok_or_else(|| {
                        Error::Invalid("internal: training on labelled data gave no metrics".into())
                    })?;
                    push(&mut runs, &method_name, Some(s), took(0.0));
                }
            }
        }
    }
    Ok(runs
        .into_iter()
        .map(|(name, r, seconds)| (name, Summary::of(&r, &seconds)))
        .collect())
}

/// The row name and model-directory name of a trained method. Settings that change what
/// the positives are, the whitening matrix, the reference-null term, the two-view background
/// correction, the contrastive subspace, the reference overlay and a schedule other than the
/// default name the row (as the window names tic's), so that rows trained differently never
/// share a name in a table: `cidfd(skip=3)`, `cidfd(align=28)`, `cidfd(skip=3,null=1)`,
/// `cidfd(skip=3,view_lambda=1)`, `cidfd(skip=3,view_lambda=1,subspace)`,
/// `cidfd(window=28,skip=3,view_lambda=1,subspace)`,
/// `cidfd(window=28,radius=3,skip=3,view_lambda=1,subspace)`,
/// `cidfd(whiten=matrix,skip=3,view_lambda=1,subspace)`,
/// `cidfd(skip=3,view_lambda=1,subspace,overlay=0.5)`, `cidfd(skip=3,epochs=50)`, `idfd(epochs=50)`.
fn trained_row_name(idfd: bool, train: &TrainConfig) -> (String, String) {
    let mut parts: Vec<(&str, String)> = Vec::new();
    if !idfd {
        if train.whitening_matrix {
            parts.push(("whiten", "matrix".to_string()));
        }
        // An unset window is the default front: it names nothing. A set window names its
        // radius as well, default or not, so that both searches keep distinct rows.
        let (window, radius) = match train.align_window {
            None => (0, train.align_search_radius.unwrap_or(0)),
            Some(0) => (0, 0),
            Some(window) => (window, train.align_search_radius()),
        };
        for (key, value) in [
            ("window", window),
            ("radius", radius),
            ("align", train.neighbour_align_window),
            ("skip", train.neighbour_skip_raw_nearest()),
        ] {
            if value > 0 {
                parts.push((key, value.to_string()));
            }
        }
        if train.reference_null != 0.0 {
            parts.push(("null", train.reference_null.to_string()));
        }
        if train.two_view_lambda() != 0.0 {
            parts.push(("view_lambda", train.two_view_lambda().to_string()));
        }
        if train.contrastive_subspace() {
            parts.push(("subspace", String::new()));
        }
    }
    // IDFD reads the reference set for overlays too.
    if train.augment.overlay_p > 0.0 {
        parts.push(("overlay", train.augment.overlay_p.to_string()));
    }
    if train.epochs != TrainConfig::default().epochs {
        parts.push(("epochs", train.epochs.to_string()));
    }
    let base = if idfd { "idfd" } else { "cidfd" };
    if parts.is_empty() {
        return (base.to_string(), base.to_string());
    }
    let join = |sep: &str, between: &str| {
        parts
            .iter()
            .map(|(k, v)| match v.is_empty() {
                true => k.to_string(),
                false => format!("{k}{sep}{v}"),
            })
            .collect::<Vec<_>>()
            .join(between)
    };
    (
        format!("{base}({})", join("=", ",")),
        format!("{base}-{}", join("", "-")),
    )
}

fn push(
    runs: &mut Vec<(String, Vec<ClusterScores>, Vec<f64>)>,
    name: &str,
    scores: Option<ClusterScores>,
    seconds: f64,
) {
    let Some(s) = scores else { return };
    match runs.iter_mut().find(|(n, _, _)| n == name) {
        Some((_, list, times)) => {
            list.push(s);
            times.push(seconds);
        }
        None => runs.push((name.to_string(), vec![s], vec![seconds])),
    }
}

/// The comparison as JSON: one object per row name, as CONTRACT.md's `compare` promises.
pub fn to_json(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Object(
        rows.iter()
            .map(|(name, s)| (name.clone(), serde_json::to_value(s).unwrap_or_default()))
            .collect(),
    )
}

/// The comparison as a text table.
pub fn format_table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<22} {:>15} {:>15} {:>15} {:>6} {:>5} {:>9}\n",
        "method", "ACC", "NMI", "ARI", "n", "seeds", "seconds"
    );
    for (name, s) in rows {
        out.push_str(&format!(
            "{:<22} {:>8.4}±{:.4} {:>8.4}±{:.4} {:>8.4}±{:.4} {:>6} {:>5} {:>9.1}\n",
            name, s.acc, s.acc_std, s.nmi, s.nmi_std, s.ari, s.ari_std, s.n, s.seeds, s.seconds
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_rows_are_named_by_their_positives_reference_terms_front_subspace_overlay_and_a_non_default_schedule(
    ) {
        let default = TrainConfig::default();
        assert_eq!(
            trained_row_name(false, &default),
            (
                "cidfd(skip=3,view_lambda=1,subspace)".into(),
                "cidfd-skip3-view_lambda1-subspace".into()
            )
        );
        assert_eq!(
            trained_row_name(true, &default),
            ("idfd".into(), "idfd".into())
        );
        // The rest without the subspace, which names nothing then.
        let default = TrainConfig {
            contrastive_subspace: Some(false),
            ..default
        };
        assert_eq!(
            trained_row_name(false, &default),
            (
                "cidfd(skip=3,view_lambda=1)".into(),
                "cidfd-skip3-view_lambda1".into()
            )
        );
        let aligned = TrainConfig {
            neighbour_align_window: 28,
            neighbour_skip_raw_nearest: Some(0),
            ..default.clone()
        };
        assert_eq!(
            trained_row_name(false, &aligned),
            (
                "cidfd(align=28,view_lambda=1)".into(),
                "cidfd-align28-view_lambda1".into()
            )
        );
        let null = TrainConfig {
            reference_null: 0.5,
            ..default.clone()
        };
        assert_eq!(
            trained_row_name(false, &null),
            (
                "cidfd(skip=3,null=0.5,view_lambda=1)".into(),
                "cidfd-skip3-null0.5-view_lambda1".into()
            )
        );
        let windowed = TrainConfig {
            align_window: Some(28),
            align_search_radius: Some(0),
            ..default.clone()
        };
        assert_eq!(
            trained_row_name(false, &windowed),
            (
                "cidfd(window=28,skip=3,view_lambda=1)".into(),
                "cidfd-window28-skip3-view_lambda1".into()
            )
        );
        let located = TrainConfig {
            align_search_radius: None,
            ..windowed.clone()
        };
        assert_eq!(
            trained_row_name(false, &located),
            (
                "cidfd(window=28,radius=3,skip=3,view_lambda=1)".into(),
                "cidfd-window28-radius3-skip3-view_lambda1".into()
            )
        );
        let uncorrected = TrainConfig {
            two_view_lambda: Some(0.0),
            ..default.clone()
        };
        assert_eq!(
            trained_row_name(false, &uncorrected),
            ("cidfd(skip=3)".into(), "cidfd-skip3".into())
        );
        let mut overlaid = default.clone();
        overlaid.augment.overlay_p = 0.5;
        let matrix = TrainConfig {
            whitening_matrix: true,
            ..overlaid
        };
        assert_eq!(
            trained_row_name(false, &matrix),
            (
                "cidfd(whiten=matrix,skip=3,view_lambda=1,overlay=0.5)".into(),
                "cidfd-whitenmatrix-skip3-view_lambda1-overlay0.5".into()
            )
        );
        assert_eq!(
            trained_row_name(true, &matrix),
            ("idfd(overlay=0.5)".into(), "idfd-overlay0.5".into())
        );
        let epochs = default.epochs + 20;
        let longer = TrainConfig { epochs, ..default };
        assert_eq!(
            trained_row_name(false, &longer),
            (
                format!("cidfd(skip=3,view_lambda=1,epochs={epochs})"),
                format!("cidfd-skip3-view_lambda1-epochs{epochs}")
            )
        );
        assert_eq!(
            trained_row_name(true, &longer),
            (
                format!("idfd(epochs={epochs})"),
                format!("idfd-epochs{epochs}")
            )
        );
    }
}
