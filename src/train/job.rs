//! `salient train`: read the tables, train, cluster, and write the model directory, with
//! progress on a terminal, `tracing` logs otherwise, a CSV training log and checkpoints.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{EpochStats, ImageSet, Normalization, TrainConfig, Trainer};
use crate::data::source::{parquet_fingerprint, resolve_parquet_files};
use crate::data::{probe_table_shape, LabelRequirement, ReaderOptions, SizePolicy};
use crate::error::{Error, Result};
use crate::evaluate::cluster_and_score;
use crate::manifest::{
    sha256_file, FileFingerprint, InputSpec, Manifest, TrainingData, CENTROIDS_TENSOR,
    CHECKPOINT_FILE, TRAINING_LOG_FILE, WEIGHTS_FILE,
};
use crate::metrics::ClusterScores;
use crate::subspace::{ContrastiveSubspace, SUBSPACE_TENSOR};

/// Everything `salient train` needs.
#[derive(Clone, Debug)]
pub struct TrainJob {
    pub target: String,
    pub reference: Option<String>,
    pub out: PathBuf,
    pub config: TrainConfig,
    /// Continue from `out/checkpoint.safetensors` when it exists.
    pub resume: bool,
    pub size: SizePolicy,
    pub device: Device,
}

/// What a training run produced.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub epochs: usize,
    pub k: usize,
    pub d: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub metrics: Option<ClusterScores>,
}

fn fingerprints(spec: &str) -> Result<Vec<FileFingerprint>> {
    resolve_parquet_files(spec)?
        .into_iter()
        .map(|path| {
            let footer_sha256 = parquet_fingerprint(&path)?;
            Ok(FileFingerprint {
                path,
                footer_sha256,
            })
        })
        .collect()
}

pub fn run(job: &TrainJob) -> Result<TrainReport> {
    // The manifest records every setting as used, method defaults included.
    let mut config = job.config.resolved();
    config.validate()?;
    let started = Instant::now();
    let options = ReaderOptions {
        labels: LabelRequirement::Ignore,
        ..Default::default()
    };
    let shape = probe_table_shape(&job.target, &options)?;
    tracing::info!(target = %job.target, %shape, "reading the target table");
    config.resolve_for_images(shape);
    config.validate()?;
    if job.config.align_window.is_none() && config.align_window() > 0 {
        tracing::info!(
            window = config.align_window(),
            radius = config.align_search_radius(),
            "the images leave room to move: the alignment front is on (align_window = 0 turns it off)"
        );
    }
    // Labels are loaded for evaluation only; the training step never sees them.
    let target = ImageSet::load(&job.target, shape, LabelRequirement::Optional, job.size)?;
    if job.config.neighbour_skip_raw_nearest.is_none() {
        // The default skip gives way on a table too small to skip and keep the positives (a
        // skip that was asked for is refused there, below).
        let room = target
            .len()
            .saturating_sub(config.neighbour_positives() + 1);
        config.neighbour_skip_raw_nearest = Some(config.neighbour_skip_raw_nearest().min(room));
    }
    let config = &config;
    // IDFD reads the reference set only for the reference-overlay augmentation.
    let wants_reference = config.uses_reference() || config.augment.overlay_p > 0.0;
    let reference = match (&job.reference, config.uses_reference()) {
        (Some(spec), _) if wants_reference => {
            tracing::info!(reference = %spec, "reading the reference table");
            Some(ImageSet::load(spec, shape, LabelRequirement::Ignore, job.size)?)
        }
        (None, true) => {
            return Err(Error::Invalid(
                "cIDFD needs a reference table of background-only images (--reference); use --method idfd to train without one".into(),
            ))
        }
        _ => {
            if config.augment.overlay_p > 0.0 {
                tracing::warn!("augment.overlay_p is set but no reference table is given: no overlays");
            }
            None
        }
    };
    let labels = target.complete_labels();
    let k = config.clusters.unwrap_or_else(|| {
        labels
            .as_ref()
            .map(|l| l.iter().collect::<std::collections::BTreeSet<_>>().len())
            .filter(|&n| n >= 2)
            .unwrap_or(10)
    });
    if k > target.len() {
        return Err(Error::Invalid(format!(
            "{k} clusters asked for but the target table has only {} rows",
            target.len()
        )));
    }
    // The alignment front replaces every image by its object window before anything else
    // sees it: the normalisation, the whitening filter, the neighbours and the encoders.
    let (front, target, reference) = match (config.align_window(), &reference) {
        (0, _) => (None, target, reference),
        (window, Some(reference_set)) => {
            let (front, target_windows) = crate::alignment::AlignmentFront::fit(
                &target,
                reference_set,
                window,
                k,
                config.seed,
                config.align_locate(),
                &job.device,
            )?;
            let reference_windows = front.crop_set(reference_set)?;
            (Some(front), target_windows, Some(reference_windows))
        }
        (_, None) => {
            return Err(Error::Invalid(
                "internal: align_window without a reference table".into(),
            ))
        }
    };
    let input_shape = shape;
    let shape = target.shape;
    let norm = Normalization::fit(&target.pixels, shape);
    tracing::info!(
        device = %crate::device::name(&job.device),
        architecture = ?config.architecture,
        "building the encoders"
    );
    let mut trainer = Trainer::new(
        config.clone(),
        shape,
        norm.clone(),
        target.len(),
        reference.as_ref().map_or(0, ImageSet::len),
        job.device.clone(),
    )?;
    if config.whitening_kernel() > 0 || config.neighbour_positives() > 0 {
        // Validation keeps these knobs to cIDFD, which refused to start without a reference.
        let (Some(reference), Some(spec)) = (reference.as_ref(), job.reference.as_deref()) else {
            return Err(Error::Invalid(
                "internal: reference-fitted settings without a reference table".into(),
            ));
        };
        let in_reference = |e: Error| Error::Invalid(format!("reference table `{spec}`: {e}"));
        if config.whitening_kernel() > 0 && config.whitening_matrix {
            // Deterministic in the reference set, so a resumed run fits the same matrix again.
            let whitening = crate::whitening::WhiteningMatrix::fit(
                &reference.pixels,
                shape,
                &norm,
                config.whitening_shrinkage,
            )
            .map_err(in_reference)?;
            tracing::info!(
                values = whitening.mean.len(),
                shrinkage = config.whitening_shrinkage,
                "fitted the reference-whitening matrix"
            );
            trainer
                .salient
                .set_input_matrix(&whitening, &job.device)
                .map_err(|e| Error::Invalid(format!("internal: {e}")))?;
        } else if config.whitening_kernel() > 0 {
            // Deterministic in the reference set, so a resumed run fits the same filter again.
            let filter = crate::whitening::WhiteningFilter::fit(
                &reference.pixels,
                shape,
                &norm,
                config.whitening_kernel(),
                config.whitening_shrinkage,
            )
            .map_err(in_reference)?;
            tracing::info!(
                size = filter.size,
                shrinkage = config.whitening_shrinkage,
                "fitted the reference-whitening filter"
            );
            trainer
                .salient
                .set_input_filter(&filter, &job.device)
                .map_err(|e| Error::Invalid(format!("internal: {e}")))?;
        }
        if config.neighbour_positives() > 0 {
            use super::neighbours::Neighbours;
            // Search as many more as will be skipped, so that `neighbour_positives` remain.
            let skip = config.neighbour_skip_raw_nearest();
            let search = config.neighbour_positives() + skip;
            if skip > 0 && search >= target.len() {
                return Err(Error::Invalid(format!(
                    "neighbour_positives ({}) + neighbour_skip_raw_nearest ({skip}) must be below the number of target rows ({})",
                    config.neighbour_positives(),
                    target.len()
                )));
            }
            let mut neighbours = match config.neighbour_align_window {
                0 => Neighbours::in_whitened_pixels(
                    &target,
                    reference,
                    search,
                    config.neighbour_components,
                )?,
                window => Neighbours::in_aligned_windows(
                    &target,
                    reference,
                    search,
                    config.neighbour_components,
                    (window, k, config.seed),
                )?,
            };
            if skip > 0 {
                let twins = Neighbours::in_raw_pixels(&target, skip, config.neighbour_components)?;
                neighbours = neighbours.without(&twins, config.neighbour_positives())?;
            }
            match &labels {
                Some(labels) => tracing::info!(
                    k = neighbours.k(),
                    purity = neighbours.purity(labels),
                    "found the neighbour positives (purity: share of neighbours with the image's label, a diagnostic)"
                ),
                None => tracing::info!(k = neighbours.k(), "found the neighbour positives"),
            }
            trainer.set_neighbours(neighbours);
        }
    }
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io(&job.out, e))?;
    let checkpoint = job.out.join(CHECKPOINT_FILE);
    let log_path = job.out.join(TRAINING_LOG_FILE);
    if job.resume && checkpoint.exists() {
        trainer.load_checkpoint(&checkpoint)?;
        tracing::info!(
            epoch = trainer.epoch,
            "resumed from {}",
            checkpoint.display()
        );
    } else {
        if config.bank_init == super::BankInit::FirstPass {
            trainer.init_banks_from_first_pass(&target, reference.as_ref())?;
        }
        // A fresh run starts a fresh log.
        let _ = std::fs::remove_file(&log_path);
    }

    let steps = (target.len() / config.batch_size.min(target.len())).max(1);
    let bar = progress_bar(config.epochs, trainer.epoch, steps);
    let mut images_per_second = 0.0;
    while trainer.epoch < config.epochs {
        let epoch = trainer.epoch + 1;
        let every = config.neighbour_refresh_every;
        if every > 0 && trainer.epoch > 0 && trainer.epoch % every == 0 {
            if let Some(neighbours) = trainer.refresh_neighbours_from_bank()? {
                match &labels {
                    Some(labels) => tracing::info!(
                        epoch,
                        purity = neighbours.purity(labels),
                        "found the neighbour positives again in the salient bank"
                    ),
                    None => tracing::info!(
                        epoch,
                        "found the neighbour positives again in the salient bank"
                    ),
                }
            }
        }
        let last = trainer.train_epoch(&target, reference.as_ref(), |step, steps, stats| {
            if let Some(bar) = &bar {
                bar.set_position(((epoch - 1) * steps + step + 1) as u64);
                bar.set_message(format!("epoch {epoch} loss {:.4}", stats.loss));
            }
        })?;
        images_per_second = last.images_per_second;
        let evaluate_now =
            config.eval_every > 0 && epoch % config.eval_every == 0 && epoch < config.epochs;
        let scores = match (&labels, evaluate_now) {
            (Some(labels), true) => {
                let (embeddings, _) = salient_embeddings(&trainer, &target, reference.as_ref())?;
                let restarts = config.kmeans_restarts.min(5);
                cluster_and_score(
                    &embeddings,
                    config.dim_salient,
                    Some(labels),
                    k,
                    restarts,
                    config.seed,
                )?
                .1
            }
            _ => None,
        };
        append_log(&log_path, &last, scores.as_ref())?;
        tracing::info!(
            epoch,
            loss = last.losses.loss,
            id_target = last.losses.id_target,
            id_reference = last.losses.id_reference,
            fd = last.losses.fd,
            reference_salient = last.losses.reference_salient,
            reference_null = last.losses.reference_null,
            two_view = last.losses.two_view,
            lr = last.lr,
            images_per_second = format!("{:.0}", last.images_per_second),
            acc = scores.as_ref().map(|s| format!("{:.4}", s.acc)),
            "epoch done"
        );
        let checkpoint_now = config.checkpoint_every > 0 && epoch % config.checkpoint_every == 0;
        if checkpoint_now || epoch == config.epochs {
            trainer.save_checkpoint(&checkpoint)?;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    // k-means on the (projected) salient embeddings of the un-augmented target images.
    let (embeddings, subspace) = salient_embeddings(&trainer, &target, reference.as_ref())?;
    if let Some(subspace) = &subspace {
        tracing::info!(
            kept = subspace.rank(),
            of = subspace.dim(),
            "fitted the contrastive subspace of the salient embedding"
        );
    }
    let (fit, metrics) = cluster_and_score(
        &embeddings,
        config.dim_salient,
        labels.as_deref(),
        k,
        config.kmeans_restarts,
        config.seed,
    )?;
    if let Some(m) = &metrics {
        tracing::info!(
            acc = m.acc,
            nmi = m.nmi,
            ari = m.ari,
            n = m.n,
            "clusters against the labels"
        );
    }
    write_model(
        job,
        &trainer,
        front.as_ref(),
        subspace.as_ref(),
        &fit.centroids,
        k,
        input_shape,
        norm,
        &target,
        reference.as_ref(),
        metrics,
    )?;
    Ok(TrainReport {
        out: job.out.clone(),
        epochs: trainer.epoch,
        k,
        d: config.dim_salient,
        seconds: started.elapsed().as_secs_f64(),
        images_per_second,
        metrics,
    })
}

/// The salient embeddings of the un-augmented target images as k-means and the exported graph
/// see them: projected onto the contrastive subspace, fitted here to the targets' and the
/// references' embeddings, where the settings ask for one.
fn salient_embeddings(
    trainer: &Trainer,
    target: &ImageSet,
    reference: Option<&ImageSet>,
) -> Result<(Vec<f32>, Option<ContrastiveSubspace>)> {
    let embeddings = trainer.embed(target)?;
    if !trainer.config.contrastive_subspace() {
        return Ok((embeddings, None));
    }
    // Validation keeps the subspace to cIDFD, which refused to start without a reference.
    let Some(reference) = reference else {
        return Err(Error::Invalid(
            "internal: contrastive_subspace without a reference table".into(),
        ));
    };
    let d = trainer.config.dim_salient;
    let subspace = ContrastiveSubspace::fit(&embeddings, &trainer.embed(reference)?, d)
        .map_err(|e| Error::Invalid(format!("fitting the contrastive subspace: {e}")))?;
    Ok((subspace.apply(&embeddings), Some(subspace)))
}

#[allow(clippy::too_many_arguments)]
fn write_model(
    job: &TrainJob,
    trainer: &Trainer,
    front: Option<&crate::alignment::AlignmentFront>,
    subspace: Option<&ContrastiveSubspace>,
    centroids: &[f32],
    k: usize,
    shape: crate::data::ImageShape,
    norm: Normalization,
    target: &ImageSet,
    reference: Option<&ImageSet>,
    metrics: Option<ClusterScores>,
) -> Result<()> {
    let d = trainer.config.dim_salient;
    let mut tensors = trainer.parameters()?;
    tensors.insert(
        CENTROIDS_TENSOR.into(),
        Tensor::from_slice(centroids, (k, d), &Device::Cpu)?,
    );
    if let Some(front) = front {
        tensors.extend(front.tensors()?);
    }
    if let Some(subspace) = subspace {
        tensors.insert(
            SUBSPACE_TENSOR.into(),
            Tensor::from_slice(subspace.projector(), (d, d), &Device::Cpu)?,
        );
    }
    let weights = job.out.join(WEIGHTS_FILE);
    crate::atomic::write_bytes_atomically(&weights, &super::safetensors_bytes(&tensors)?)?;
    let name = job
        .out
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let manifest = Manifest {
        format_version: crate::manifest::FORMAT_VERSION,
        name,
        id: String::new(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        method: format!("{:?}", trainer.config.method).to_lowercase(),
        config: trainer.config.clone(),
        input: InputSpec {
            shape,
            normalization: norm,
        },
        k,
        d,
        kmeans_on: "fresh".into(),
        training_data: TrainingData {
            target: fingerprints(&job.target)?,
            target_rows: target.len(),
            reference: match &job.reference {
                Some(spec) if reference.is_some() => fingerprints(spec)?,
                _ => Vec::new(),
            },
            reference_rows: reference.map_or(0, ImageSet::len),
        },
        epochs_trained: trainer.epoch,
        metrics,
        weights_sha256: sha256_file(&weights)?,
    };
    manifest.write(&job.out)?;
    crate::export::export_model(&job.out).map(|_| ())
}

fn append_log(path: &Path, stats: &EpochStats, scores: Option<&ClusterScores>) -> Result<()> {
    let exists = path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let losses = stats.losses.named();
    let metric = |f: fn(&ClusterScores) -> f64| scores.map_or(String::new(), |s| f(s).to_string());
    let mut writer = csv::Writer::from_writer(file);
    let mut write = || -> std::result::Result<(), csv::Error> {
        if !exists {
            let mut header = vec!["epoch", "lr"];
            header.extend(losses.iter().map(|(name, _)| *name));
            header.extend(["seconds", "images_per_second", "acc", "nmi", "ari"]);
            writer.write_record(&header)?;
        }
        let mut row = vec![stats.epoch.to_string(), stats.lr.to_string()];
        row.extend(losses.iter().map(|(_, v)| v.to_string()));
        row.extend([
            stats.seconds.to_string(),
            stats.images_per_second.to_string(),
            metric(|s| s.acc),
            metric(|s| s.nmi),
            metric(|s| s.ari),
        ]);
        writer.write_record(&row)?;
        writer.flush()?;
        Ok(())
    };
    write().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

fn progress_bar(epochs: usize, done: usize, steps: usize) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new((epochs * steps) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} ETA {eta}] {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position((done * steps) as u64);
    Some(bar)
}
