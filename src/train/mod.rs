//! cIDFD training (METHOD.md): a salient encoder g_s on the target set, a background encoder g_z
//! on the target and reference sets, three memory banks, and the loss
//!
//!   L = CE((s·Sᵀ + λ·z_x·Ztᵀ)/τ) + CE(z_b·Zbᵀ/τ) + α·FD(s) [+ α·FD(z)] + β·(1 − ‖mean s(b)‖²)
//!       [+ γ·‖Cov(s, z_x)‖²]
//!
//! IDFD is the degenerate setting (method = idfd: λ = 0, no reference data, no g_z).

pub mod augment;
pub mod bank;
mod checkpoint;
mod image_set;
pub mod job;
pub mod loss;
pub mod neighbours;
pub mod optim;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use crate::config::{AugmentConfig, BankInit, Method, TrainConfig};
use crate::data::ImageShape;
use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderConfig};
pub use crate::preprocess::Normalization;
use bank::MemoryBank;
pub use checkpoint::safetensors_bytes;
pub use image_set::ImageSet;
use loss::LossTerms;
pub use loss::StepStats;
use optim::Sgd;

/// Mean losses of one epoch, its learning rate and speed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f64,
    pub losses: StepStats,
    pub seconds: f64,
    /// Images through the encoders per second (target and reference batches counted).
    pub images_per_second: f64,
}

/// Where a training step's time goes, phase by phase (`Trainer::profile_phases`). Each
/// phase ends with a device synchronisation, so on a GPU the figures are wall time including
/// the phase's kernels, and the synchronisations themselves slow the step down a little.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepPhases {
    /// (phase, total seconds over the profiled steps), in the order the step runs them.
    pub seconds: Vec<(&'static str, f64)>,
    pub steps: usize,
    #[serde(skip)]
    mark: Option<Instant>,
}

impl StepPhases {
    fn start(&mut self, device: &Device) -> Result<()> {
        device.synchronize()?;
        self.mark = Some(Instant::now());
        Ok(())
    }

    /// Ends `phase`: waits for the device, then adds the time since the last mark.
    fn end(&mut self, phase: &'static str, device: &Device) -> Result<()> {
        device.synchronize()?;
        let now = Instant::now();
        let took = self.mark.map_or(0.0, |m| (now - m).as_secs_f64());
        self.mark = Some(now);
        match self.seconds.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, total)) => *total += took,
            None => self.seconds.push((phase, took)),
        }
        Ok(())
    }
}

/// Ends a phase when the step is being profiled.
fn end_phase(phases: &mut Option<StepPhases>, phase: &'static str, device: &Device) -> Result<()> {
    match phases {
        Some(p) => p.end(phase, device),
        None => Ok(()),
    }
}

/// The trainable state: encoders, banks and optimiser.
pub struct Trainer {
    pub config: TrainConfig,
    pub shape: ImageShape,
    pub norm: Normalization,
    pub device: Device,
    pub varmap: VarMap,
    pub salient: Encoder,
    pub background: Option<Encoder>,
    bank_s: MemoryBank,
    bank_zt: Option<MemoryBank>,
    bank_zb: Option<MemoryBank>,
    optim: Sgd,
    /// Positives for the two-view contrast drawn from each image's neighbours (knob
    /// `neighbour_positives`); `None`: the second view is of the image itself.
    neighbours: Option<neighbours::Neighbours>,
    /// Per-phase step times, when profiling (`profile_phases`).
    phases: Option<StepPhases>,
    /// Epochs completed.
    pub epoch: usize,
}

impl Trainer {
    pub fn new(
        config: TrainConfig,
        shape: ImageShape,
        norm: Normalization,
        n_target: usize,
        n_reference: usize,
        device: Device,
    ) -> Result<Self> {
        config.validate()?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let salient = Encoder::new(
            EncoderConfig {
                architecture: config.architecture,
                in_channels: shape.channels,
                dim: config.dim_salient,
                width: config.width(),
                head_norm: config.head_norm,
            },
            vb.pp("salient"),
        )?;
        let uses_reference = config.uses_reference();
        let background = if uses_reference {
            Some(Encoder::new(
                EncoderConfig {
                    architecture: config.architecture,
                    in_channels: shape.channels,
                    dim: config.dim_background,
                    width: config.width(),
                    head_norm: config.head_norm,
                },
                vb.pp("background"),
            )?)
        } else {
            None
        };
        let m = config.bank_momentum;
        let seed = config.seed;
        let bank_s = MemoryBank::random(n_target, config.dim_salient, m, seed ^ 1, &device)?;
        let (bank_zt, bank_zb) = if uses_reference {
            if n_reference == 0 {
                return Err(Error::Invalid(
                    "cIDFD needs a non-empty reference table".into(),
                ));
            }
            (
                Some(MemoryBank::random(
                    n_target,
                    config.dim_background,
                    m,
                    seed ^ 2,
                    &device,
                )?),
                Some(MemoryBank::random(
                    n_reference,
                    config.dim_background,
                    m,
                    seed ^ 3,
                    &device,
                )?),
            )
        } else {
            (None, None)
        };
        seeded_init(&varmap, config.seed)?;
        let mut named: Vec<(String, candle_core::Var)> = varmap
            .data()
            .lock()
            .map_err(|_| Error::Invalid("internal: variable map poisoned".into()))?
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let optim = Sgd::new(named, config.lr, config.momentum, config.weight_decay);
        Ok(Self {
            config,
            shape,
            norm,
            device,
            varmap,
            salient,
            background,
            bank_s,
            bank_zt,
            bank_zb,
            optim,
            neighbours: None,
            phases: None,
            epoch: 0,
        })
    }

    /// Runs both encoders' convolutions and batch norms with `kernels` (benchmarks compare
    /// them; training uses `auto`).
    pub fn set_kernels(&mut self, kernels: crate::kernels::Kernels) {
        self.salient.set_kernels(kernels);
        if let Some(background) = &mut self.background {
            background.set_kernels(kernels);
        }
    }

    /// Starts (or stops, with `false`) timing each phase of every training step; the figures
    /// so far are returned by [`Trainer::take_phases`]. Profiling synchronises the device
    /// between phases, so it is for benchmarks, not for training runs.
    pub fn profile_phases(&mut self, on: bool) {
        self.phases = on.then(StepPhases::default);
    }

    /// The phase times gathered since profiling started or since the last call.
    pub fn take_phases(&mut self) -> Option<StepPhases> {
        let taken = self.phases.take();
        if taken.is_some() {
            self.phases = Some(StepPhases::default());
        }
        taken
    }

    /// Makes the two-view contrast pair each image with a view of one of its neighbours.
    pub fn set_neighbours(&mut self, neighbours: neighbours::Neighbours) {
        self.neighbours = Some(neighbours);
    }

    /// Finds the neighbour positives again, in the salient memory bank (the running salient
    /// embeddings of the augmented target images): once the encoder has learned the objects,
    /// its own neighbours are better than those of the whitened pixels. Returns the new
    /// neighbours, or `None` when the run uses none.
    pub fn refresh_neighbours_from_bank(&mut self) -> Result<Option<&neighbours::Neighbours>> {
        let Some(current) = &self.neighbours else {
            return Ok(None);
        };
        let rows = self.bank_s.rows().to_device(&Device::Cpu)?;
        let d = rows.dim(1)?;
        let rows: Vec<f32> = rows.flatten_all()?.to_vec1()?;
        self.neighbours = Some(neighbours::Neighbours::of_rows(&rows, d, current.k())?);
        Ok(self.neighbours.as_ref())
    }

    fn batch_tensor(
        &self,
        images: &[&[u8]],
        augment: &AugmentConfig,
        stream: u64,
    ) -> Result<Tensor> {
        self.batch_tensor_with_overlays(images, None, augment, stream)
    }

    fn batch_tensor_with_overlays(
        &self,
        images: &[&[u8]],
        overlays: Option<&[&[u8]]>,
        augment: &AugmentConfig,
        stream: u64,
    ) -> Result<Tensor> {
        let floats = augment::augment_batch_with_overlays(
            images,
            overlays,
            self.shape,
            augment,
            &self.norm,
            self.config.seed,
            stream,
        );
        let s = self.shape;
        Ok(Tensor::from_vec(
            floats,
            (images.len(), s.channels, s.height, s.width),
            &self.device,
        )?)
    }

    /// Embeds un-augmented images with an encoder in inference mode, `batch` at a time.
    fn embed_with(&self, encoder: &Encoder, set: &ImageSet, batch: usize) -> Result<Tensor> {
        let mut parts = Vec::new();
        for start in (0..set.len()).step_by(batch.max(1)) {
            let end = (start + batch).min(set.len());
            let images: Vec<&[u8]> = (start..end).map(|i| set.image(i)).collect();
            let s = self.shape;
            let x = Tensor::from_vec(
                self.norm.batch(&images, s),
                (images.len(), s.channels, s.height, s.width),
                &self.device,
            )?;
            // Detached: candle's autograd graph of a forward pass from the encoder's variables
            // keeps every intermediate tensor alive, so the embeddings of a 10,000-image set held
            // about 5 GiB of activations until the last batch was done.
            parts.push(encoder.forward_t(&x, false)?.detach());
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Salient embeddings (N×d_s, row-major) of the un-augmented images.
    pub fn embed(&self, set: &ImageSet) -> Result<Vec<f32>> {
        let e = self.embed_with(&self.salient, set, 512)?;
        Ok(e.flatten_all()?.to_vec1()?)
    }

    /// Initialises the banks from a first pass over the un-augmented images (knob `bank_init`).
    pub fn init_banks_from_first_pass(
        &mut self,
        target: &ImageSet,
        reference: Option<&ImageSet>,
    ) -> Result<()> {
        let m = self.config.bank_momentum;
        self.bank_s = MemoryBank::from_rows(self.embed_with(&self.salient, target, 512)?, m)?;
        if let Some(bg) = &self.background {
            self.bank_zt = Some(MemoryBank::from_rows(self.embed_with(bg, target, 512)?, m)?);
            if let Some(r) = reference {
                self.bank_zb = Some(MemoryBank::from_rows(self.embed_with(bg, r, 512)?, m)?);
            }
        }
        Ok(())
    }

    /// One epoch over the target set (dropping the last partial batch); reference batches of the
    /// same size are drawn from a shuffled, cycled reference set.
    pub fn train_epoch(
        &mut self,
        target: &ImageSet,
        reference: Option<&ImageSet>,
        mut on_step: impl FnMut(usize, usize, &StepStats),
    ) -> Result<EpochStats> {
        // Every step frees and re-allocates the same tensors: keep them mapped (see `alloc`).
        let _keep = crate::alloc::KeepFreedMemory::new();
        let cfg = self.config.clone();
        let b = cfg.batch_size.min(target.len());
        let steps = (target.len() / b).max(1);
        let mut rng =
            ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(1_000_003 * self.epoch as u64));
        let mut order: Vec<usize> = (0..target.len()).collect();
        order.shuffle(&mut rng);
        let mut ref_order: Vec<usize> = (0..reference.map_or(0, |r| r.len())).collect();
        ref_order.shuffle(&mut rng);

        let started = Instant::now();
        let mut sums = StepStats::default();
        let mut images = 0usize;
        let mut lr = cfg.lr;
        for step in 0..steps {
            lr = cfg.lr_at(self.epoch as f64 + step as f64 / steps as f64);
            self.optim.lr = lr;
            let idx: Vec<usize> = order[step * b..(step + 1) * b].to_vec();
            let ref_idx: Vec<usize> = if ref_order.is_empty() {
                Vec::new()
            } else {
                (0..b)
                    .map(|i| ref_order[(step * b + i) % ref_order.len()])
                    .collect()
            };
            let stream = ((self.epoch as u64) << 32) | step as u64;
            let stats = self.step(target, reference, &idx, &ref_idx, stream)?;
            images += idx.len()
                + if self.background.is_some() {
                    ref_idx.len()
                } else {
                    0
                };
            sums = sums.map2(&stats, |a, b| a + b);
            if !stats.loss.is_finite() {
                return Err(Error::Invalid(format!(
                    "training diverged at epoch {} step {step}: loss is {} (try a lower lr)",
                    self.epoch + 1,
                    stats.loss
                )));
            }
            on_step(step, steps, &stats);
        }
        self.epoch += 1;
        let n = steps as f32;
        let seconds = started.elapsed().as_secs_f64();
        Ok(EpochStats {
            epoch: self.epoch,
            lr,
            losses: sums.map(|a| a / n),
            seconds,
            images_per_second: images as f64 / seconds.max(1e-9),
        })
    }

    fn step(
        &mut self,
        target: &ImageSet,
        reference: Option<&ImageSet>,
        idx: &[usize],
        ref_idx: &[usize],
        stream: u64,
    ) -> Result<StepStats> {
        let mut phases = self.phases.take();
        if let Some(p) = phases.as_mut() {
            p.start(&self.device)?;
        }
        let stats = self.step_phases(target, reference, idx, ref_idx, stream, &mut phases);
        if let Some(mut p) = phases {
            p.steps += 1;
            self.phases = Some(p);
        }
        stats
    }

    fn step_phases(
        &mut self,
        target: &ImageSet,
        reference: Option<&ImageSet>,
        idx: &[usize],
        ref_idx: &[usize],
        stream: u64,
        phases: &mut Option<StepPhases>,
    ) -> Result<StepStats> {
        let cfg = &self.config;
        let device = &self.device;
        let images: Vec<&[u8]> = idx.iter().map(|&i| target.image(i)).collect();
        // Overlays come from the reference set, shifted so they differ from this step's
        // reference batch.
        let overlays: Option<Vec<&[u8]>> = match reference {
            Some(r) if cfg.augment.overlay_p > 0.0 && !ref_idx.is_empty() => Some(
                (0..idx.len())
                    .map(|i| r.image(ref_idx[(i + ref_idx.len() / 2) % ref_idx.len()]))
                    .collect(),
            ),
            _ => None,
        };
        let xt = self.batch_tensor_with_overlays(
            &images,
            overlays.as_deref(),
            &cfg.augment,
            stream.wrapping_mul(2),
        )?;
        let targets = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            device,
        )?;

        // The reference batch, when the background encoder (or β) needs it.
        let reference_batch = match (reference, self.background.is_some()) {
            (Some(reference), true) => {
                let ref_images: Vec<&[u8]> = ref_idx.iter().map(|&i| reference.image(i)).collect();
                let xb =
                    self.batch_tensor(&ref_images, &cfg.augment, stream.wrapping_mul(2) + 1)?;
                let ref_targets = Tensor::from_vec(
                    ref_idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    ref_idx.len(),
                    device,
                )?;
                Some((xb, ref_targets))
            }
            _ => None,
        };
        end_phase(phases, "batches (augment, upload)", device)?;
        let b = idx.len();
        // With β, g_s sees target and reference images in one batch: one pass, and batch
        // statistics shared by the two sets, so a constant s(b) does not force a constant s(x).
        let mut null_term = None;
        let (s, sb) = match &reference_batch {
            Some((xb, _)) if cfg.beta != 0.0 || cfg.reference_null != 0.0 => {
                let features = self.salient.features(&Tensor::cat(&[&xt, xb], 0)?, true)?;
                let n = features.dim(0)?;
                if cfg.reference_null != 0.0 {
                    let r = loss::reference_null(
                        &features.narrow(0, 0, b)?,
                        &features.narrow(0, b, n - b)?,
                    )?;
                    null_term = Some(r);
                }
                let both = crate::model::l2_normalize(&features)?;
                (both.narrow(0, 0, b)?, Some(both.narrow(0, b, n - b)?))
            }
            _ => (self.salient.forward_t(&xt, true)?, None),
        };
        end_phase(phases, "salient forward", device)?;
        let mut logit_t = self.bank_s.similarities(&s)?;
        let mut fd = loss::feature_decorrelation(&s, cfg.tau2)?;
        // Auxiliary two-view contrast: a second, independently augmented view of the batch.
        let two_view = if cfg.two_view_weight > 0.0 {
            let shifted: Option<Vec<&[u8]>> = overlays
                .as_ref()
                .map(|o| (0..o.len()).map(|i| o[(i + 1) % o.len()]).collect());
            let partner_idx: Vec<usize> = match &self.neighbours {
                Some(nb) => {
                    let mut rng = ChaCha8Rng::seed_from_u64(
                        cfg.seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
                    );
                    idx.iter().map(|&i| nb.pick(i, &mut rng)).collect()
                }
                None => idx.to_vec(),
            };
            let partners: Vec<&[u8]> = partner_idx.iter().map(|&j| target.image(j)).collect();
            let xt2 = self.batch_tensor_with_overlays(
                &partners,
                shifted.as_deref(),
                &cfg.augment,
                stream.wrapping_mul(2).wrapping_add(1 << 62),
            )?;
            let s2 = self.salient.forward_t(&xt2, true)?;
            // The background rows of both views come from the target background bank: what
            // g_z last made of each image, so the correction costs no extra forward pass.
            let background = match (&self.bank_zt, cfg.two_view_lambda() != 0.0) {
                (Some(bank), true) => {
                    let rows = |ids: &[usize]| -> Result<Tensor> {
                        let ids = Tensor::from_vec(
                            ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                            ids.len(),
                            device,
                        )?;
                        Ok(bank.rows().index_select(&ids, 0)?)
                    };
                    Some((rows(idx)?, rows(&partner_idx)?))
                }
                _ => None,
            };
            Some(loss::two_view_contrast_corrected(
                &s,
                &s2,
                background
                    .as_ref()
                    .map(|(za, zb)| (cfg.two_view_lambda(), za, zb)),
                cfg.two_view_tau,
            )?)
        } else {
            None
        };
        end_phase(phases, "second view (augment, forward)", device)?;

        let mut background_parts = None;
        let mut terms = LossTerms::default();
        if let (Some(g_z), Some((xb, ref_targets))) = (&self.background, reference_batch) {
            // One pass of g_z over the target and reference batches.
            let z = g_z.forward_t(&Tensor::cat(&[&xt, &xb], 0)?, true)?;
            end_phase(phases, "background forward", device)?;
            let zx = z.narrow(0, 0, b)?;
            let zb = z.narrow(0, b, z.dim(0)? - b)?;
            let (bank_zt, bank_zb) = (self.bank_zt.as_ref(), self.bank_zb.as_ref());
            let (bank_zt, bank_zb) = match (bank_zt, bank_zb) {
                (Some(t), Some(b)) => (t, b),
                _ => return Err(Error::Invalid("internal: cIDFD banks missing".into())),
            };
            let zx_t = bank_zt.similarities(&zx)?;
            logit_t = (logit_t + (zx_t * cfg.lambda)?)?;
            let (logit_t_full, logit_b, ref_target_idx) = if cfg.joint_bank {
                // One softmax over target and reference rows; reference rows have no salient part.
                let zx_b = (bank_zb.similarities(&zx)? * cfg.lambda)?;
                let zb_t = (bank_zt.similarities(&zb)? * cfg.lambda)?;
                let zb_b = (bank_zb.similarities(&zb)? * cfg.lambda)?;
                let offset = Tensor::full(target.len() as u32, ref_idx.len(), device)?;
                (
                    Tensor::cat(&[&logit_t, &zx_b], 1)?,
                    Tensor::cat(&[&zb_t, &zb_b], 1)?,
                    (ref_targets.clone() + offset)?,
                )
            } else {
                (
                    logit_t.clone(),
                    bank_zb.similarities(&zb)?,
                    ref_targets.clone(),
                )
            };
            logit_t = logit_t_full;
            terms.id_reference = Some(loss::instance_discrimination(
                &(logit_b / cfg.tau)?,
                &ref_target_idx,
            )?);
            if cfg.fd_background {
                fd = (fd + loss::feature_decorrelation(&Tensor::cat(&[&zx, &zb], 0)?, cfg.tau2)?)?;
            }
            terms.reference_null = null_term.take();
            if let (Some(sb), true) = (&sb, cfg.beta != 0.0) {
                terms.reference_salient = Some(loss::reference_salient(sb)?);
            }
            if cfg.gamma_xcov != 0.0 {
                terms.xcov = Some(loss::cross_covariance(&s, &zx)?);
            }
            background_parts = Some((zx, zb, ref_targets));
        }

        terms.id_target = Some(loss::instance_discrimination(
            &(logit_t / cfg.tau)?,
            &targets,
        )?);
        terms.fd = Some(fd);
        terms.two_view = two_view;
        let total = terms.total(cfg)?;
        let stats = terms.stats(&total)?;
        end_phase(phases, "losses (bank products, reading them)", device)?;
        let grads = total.backward()?;
        end_phase(phases, "backward", device)?;
        self.optim.step(&grads)?;
        end_phase(phases, "optimiser", device)?;

        // Banks are updated after the step, with the features the logits were computed from.
        self.bank_s.update(&targets, &s)?;
        if let Some((zx, zb, ref_targets)) = background_parts {
            if let Some(bank) = self.bank_zt.as_mut() {
                bank.update(&targets, &zx)?;
            }
            if let Some(bank) = self.bank_zb.as_mut() {
                bank.update(&ref_targets, &zb)?;
            }
        }
        end_phase(phases, "memory banks", device)?;
        Ok(stats)
    }
}

/// Re-initialises the random parameters from `seed` (candle's CPU initialisers draw from an
/// unseedable thread RNG): He-normal weights (std √(2/fan_in)) for convolutions and linear
/// layers, U(±1/√fan_in) for linear biases; batch-norm parameters keep their constants.
pub(crate) fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    use rand_distr::{Distribution, Normal};
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("internal: variable map poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_1417);
    for name in names {
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let is_bn = name.contains(".bn") || name.contains("bn1") || name.contains("bn2");
        if is_bn {
            continue;
        }
        let values: Vec<f32> = if name.ends_with(".weight") && dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let normal = Normal::new(0.0f32, (2.0 / fan_in as f32).sqrt())
                .map_err(|e| Error::Invalid(format!("internal: {e}")))?;
            (0..var.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect()
        } else if name.ends_with(".bias") {
            // Only linear heads have biases (convolutions are followed by batch norm).
            let fan_in = vars
                .get(&name.replace(".bias", ".weight"))
                .map_or(1, |w| w.dims().get(1).copied().unwrap_or(1));
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..var.elem_count())
                .map(|_| rand::Rng::random_range(&mut rng, -bound..bound))
                .collect()
        } else {
            continue;
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
