//! The locator of the alignment front (`align_search_radius`): a small fully convolutional
//! CNN trained to tell target images (background and object) from reference images (background
//! alone) through the mean of a per-pixel logit map, a class activation map. Where the map is
//! positive the network sees the object, so the centre of mass of its positive part estimates
//! where the object is without any template or class; the front then searches for the
//! template window only near that estimate, where a search over every offset lets the
//! background's texture pull windows away from faint objects.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::ImageShape;
use crate::error::{Error, Result};
use crate::export::{attr_int, attr_ints, GraphBuilder};
use crate::kernels::Kernels;
use crate::model::layers::{ConvBn, Pass};
use crate::train::ImageSet;

/// Safetensors prefix of the locator's parameters.
pub const LOCATOR_PREFIX: &str = "align.locator";
const MEAN: &str = "align.locator.mean";
const SCALE: &str = "align.locator.scale";

/// Images per training step and per inference batch.
const BATCH: usize = 128;
/// Adam's peak learning rate in the one-cycle schedule.
const PEAK_LR: f64 = 3e-3;
/// Added to every pixel of the positive map, so that an empty map centres the window.
const MASS_EPS: f32 = 1e-12;

/// How the locator is built and trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocatorSettings {
    /// Channels of the first convolution; the other three have twice as many.
    pub width: usize,
    pub epochs: usize,
    pub seed: u64,
}

/// A trained locator.
pub struct Locator {
    shape: ImageShape,
    /// Per-pixel mean of the reference images (values / 255).
    mean: Vec<f32>,
    /// 1 / the standard deviation of the reference pixels (values / 255).
    scale: f32,
    layers: Vec<ConvBn>,
    /// The 1×1 convolution to the logit map, (1, channels) as a linear layer's, and its bias.
    head_weight: Tensor,
    head_bias: Tensor,
    varmap: VarMap,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator")
            .field("shape", &self.shape)
            .field("layers", &self.layers.len())
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

/// Two locators are equal when their shapes and every stored value are.
impl PartialEq for Locator {
    fn eq(&self, other: &Self) -> bool {
        let values = |l: &Self| -> Option<Vec<(String, Vec<f32>)>> {
            let mut v: Vec<(String, Vec<f32>)> = l
                .tensors()
                .ok()?
                .into_iter()
                .map(|(name, t)| Some((name, t.flatten_all().ok()?.to_vec1::<f32>().ok()?)))
                .collect::<Option<_>>()?;
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Some(v)
        };
        self.shape == other.shape && values(self).is_some() && values(self) == values(other)
    }
}

impl Locator {
    fn build(shape: ImageShape, width: usize, vb: VarBuilder, varmap: VarMap) -> Result<Self> {
        let widths = [width, 2 * width, 2 * width, 2 * width];
        let mut layers = Vec::new();
        let mut cin = shape.channels;
        for (i, &w) in widths.iter().enumerate() {
            layers.push(ConvBn::new(cin, w, 1, vb.pp(format!("layer{i}")))?);
            cin = w;
        }
        let head_weight = vb.get_with_hints(
            (1, cin),
            "head.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let head_bias = vb.get_with_hints(1, "head.bias", candle_nn::Init::Const(0.0))?;
        Ok(Self {
            shape,
            mean: vec![0.0; shape.len()],
            scale: 1.0,
            layers,
            head_weight,
            head_bias,
            varmap,
        })
    }

    /// Trains a locator on `target` against `reference` (single-channel images of one shape).
    pub fn fit(
        target: &ImageSet,
        reference: &ImageSet,
        settings: LocatorSettings,
        device: &Device,
    ) -> Result<Self> {
        let shape = target.shape;
        if reference.shape != shape || shape.channels != 1 {
            return Err(Error::Invalid(format!(
                "align locator: needs single-channel targets and references of one shape, got {} and {}",
                shape, reference.shape
            )));
        }
        if target.is_empty() || reference.is_empty() || settings.width == 0 {
            return Err(Error::Invalid(
                "align locator: needs target and reference images and a width of at least 1".into(),
            ));
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device).pp(LOCATOR_PREFIX);
        let mut locator = Self::build(shape, settings.width, vb, varmap.clone())?;
        crate::train::seeded_init(&varmap, settings.seed ^ 0x10ca7e)?;
        locator.fit_standardisation(&reference.pixels);
        let trainable: Vec<candle_core::Var> = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::Invalid("internal: variable map poisoned".into()))?;
            let mut named: Vec<_> = data
                .iter()
                .filter(|(name, _)| !name.contains("running_"))
                .map(|(name, var)| (name.clone(), var.clone()))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named.into_iter().map(|(_, var)| var).collect()
        };
        let mut optimizer = candle_nn::AdamW::new(
            trainable,
            candle_nn::ParamsAdamW {
                lr: PEAK_LR / 25.0,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let d = shape.len();
        let rows = target.len() + reference.len();
        let pixels = |row: usize| -> &[u8] {
            if row < target.len() {
                &target.pixels[row * d..(row + 1) * d]
            } else {
                let r = row - target.len();
                &reference.pixels[r * d..(r + 1) * d]
            }
        };
        let steps_per_epoch = rows.div_ceil(BATCH);
        let total = (settings.epochs * steps_per_epoch).max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(settings.seed ^ 0x10ca7e);
        let mut order: Vec<usize> = (0..rows).collect();
        let pass = Pass {
            train: true,
            kernels: Kernels::Auto.resolve(device)?,
        };
        let mut step = 0;
        for epoch in 0..settings.epochs {
            order.shuffle(&mut rng);
            let (mut sum, mut seen) = (0.0f64, 0usize);
            for batch in order.chunks(BATCH) {
                let mut values = Vec::with_capacity(batch.len() * d);
                for &row in batch {
                    values.extend(locator.standardise(pixels(row)));
                }
                let labels: Vec<f32> = batch
                    .iter()
                    .map(|&row| if row < target.len() { 1.0 } else { 0.0 })
                    .collect();
                let x =
                    Tensor::from_vec(values, (batch.len(), shape.height, shape.width, 1), device)?;
                let y = Tensor::from_vec(labels, batch.len(), device)?;
                let logits = locator.logit_map(&x, pass)?.mean(1)?;
                let loss = binary_cross_entropy_with_logits(&logits, &y)?;
                optimizer.set_learning_rate(one_cycle(step, total));
                optimizer.backward_step(&loss)?;
                step += 1;
                let value = loss.to_scalar::<f32>()?;
                if !value.is_finite() {
                    return Err(Error::Invalid(format!(
                        "align locator: the loss became {value} in epoch {}",
                        epoch + 1
                    )));
                }
                sum += f64::from(value) * batch.len() as f64;
                seen += batch.len();
            }
            tracing::info!(
                epoch = epoch + 1,
                epochs = settings.epochs,
                loss = sum / seen.max(1) as f64,
                "align locator epoch done"
            );
        }
        Ok(locator)
    }

    /// The reference pixels' per-pixel mean and overall spread, which standardise the input.
    fn fit_standardisation(&mut self, reference: &[u8]) {
        let d = self.shape.len();
        let n = reference.len() / d;
        let mut mean = vec![0.0f64; d];
        for image in reference.chunks_exact(d) {
            mean.iter_mut()
                .zip(image)
                .for_each(|(m, &v)| *m += f64::from(v) / 255.0);
        }
        mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let mut var = 0.0f64;
        for image in reference.chunks_exact(d) {
            for (&v, m) in image.iter().zip(&mean) {
                var += (f64::from(v) / 255.0 - m).powi(2);
            }
        }
        let sd = (var / (n * d).max(1) as f64).sqrt();
        self.mean = mean.iter().map(|&m| m as f32).collect();
        self.scale = if sd > 0.0 { (1.0 / sd) as f32 } else { 1.0 };
    }

    fn standardise<'a>(&'a self, image: &'a [u8]) -> impl Iterator<Item = f32> + 'a {
        image
            .iter()
            .zip(&self.mean)
            .map(|(&v, &m)| (f32::from(v) / 255.0 - m) * self.scale)
    }

    /// The logit map (B, H·W) of a standardised channels-last batch (B, H, W, 1).
    fn logit_map(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward_t(&h, pass)?;
        }
        let (b, height, width, c) = h.dims4()?;
        let map = h
            .reshape((b * height * width, c))?
            .matmul(&self.head_weight.t()?.contiguous()?)?
            .broadcast_add(&self.head_bias)?;
        Ok(map.reshape((b, height * width))?)
    }

    /// The logit maps (n × H·W, row-major) of decoded uint8 images, one after another.
    pub fn maps(&self, pixels: &[u8]) -> Result<Vec<f32>> {
        let d = self.shape.len();
        let device = self.head_weight.device();
        let pass = Pass {
            train: false,
            kernels: Kernels::Auto.resolve(device)?,
        };
        let mut out = Vec::with_capacity(pixels.len());
        for chunk in pixels.chunks(BATCH * d) {
            let b = chunk.len() / d;
            let values: Vec<f32> = chunk
                .chunks_exact(d)
                .flat_map(|image| self.standardise(image))
                .collect();
            let x = Tensor::from_vec(values, (b, self.shape.height, self.shape.width, 1), device)?;
            out.extend(self.logit_map(&x, pass)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Each image's start offset for a `window`-sided window: the window centred (rounded half
    /// to even, as ONNX's Round) on the centre of mass of the map's positive part, kept inside
    /// the image.
    pub fn starts(&self, pixels: &[u8], window: usize) -> Result<Vec<(usize, usize)>> {
        let (h, w) = (self.shape.height, self.shape.width);
        let mut starts = Vec::with_capacity(pixels.len() / (h * w));
        // A batch of maps at a time: memory does not grow with the number of images.
        for chunk in pixels.chunks(BATCH * h * w) {
            let maps = self.maps(chunk)?;
            starts.extend(
                maps.chunks_exact(h * w)
                    .map(|map| start_of(map, (h, w), window)),
            );
        }
        Ok(starts)
    }

    /// The locator's parameters (batch-norm statistics and standardisation included).
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut tensors: HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::Invalid("internal: variable map poisoned".into()))?
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().to_device(&Device::Cpu)))
            .map(|(name, t)| t.map(|t| (name, t)))
            .collect::<candle_core::Result<_>>()?;
        let cpu = Device::Cpu;
        tensors.insert(
            MEAN.into(),
            Tensor::from_slice(&self.mean, self.shape.len(), &cpu)?,
        );
        tensors.insert(SCALE.into(), Tensor::from_slice(&[self.scale], 1, &cpu)?);
        Ok(tensors)
    }

    /// The locator of a model whose images have `shape`, from its stored tensors (on the CPU);
    /// the error names the tensor that is missing or has the wrong shape.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        shape: ImageShape,
        width: usize,
    ) -> std::result::Result<Self, String> {
        let prefix = format!("{LOCATOR_PREFIX}.");
        let ours: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let read = |name: &str, len: usize| -> std::result::Result<Vec<f32>, String> {
            let t = ours.get(name).ok_or_else(|| {
                format!("no `{name}` tensor, though the manifest sets align_search_radius")
            })?;
            if t.dims() != [len] {
                return Err(format!(
                    "`{name}` has shape {:?}, expected [{len}]",
                    t.dims()
                ));
            }
            t.to_vec1::<f32>().map_err(|e| format!("`{name}`: {e}"))
        };
        let mean = read(MEAN, shape.len())?;
        let scale = read(SCALE, 1)?[0];
        // A VarMap loaded with the stored values, so the locator can be stored again.
        let varmap = VarMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| "internal: variable map poisoned".to_string())?;
            for (name, t) in &ours {
                if name != MEAN && name != SCALE {
                    let var =
                        candle_core::Var::from_tensor(t).map_err(|e| format!("`{name}`: {e}"))?;
                    data.insert(name.clone(), var);
                }
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp(LOCATOR_PREFIX);
        let mut locator = Self::build(shape, width, vb, varmap.clone()).map_err(|e| {
            format!("the stored locator does not match align_locator_width = {width}: {e}")
        })?;
        // `build` adds any variable the file lacks with its initial value: refuse instead.
        let stored = ours.len() - 2;
        let expected = varmap.data().lock().map_or(0, |d| d.len());
        if stored != expected {
            return Err(format!(
                "the stored locator has {stored} tensors under `{prefix}`, a width-{width} locator has {expected}"
            ));
        }
        locator.mean = mean;
        locator.scale = scale;
        Ok(locator)
    }

    /// Appends the locator to an ONNX graph: `pixels` (float N×1×H×W, values 0–255) → the
    /// start offsets' (row, column) as float N×1×1 tensors, as [`Locator::starts`] computes them.
    pub fn export_onnx(
        &self,
        g: &mut GraphBuilder,
        pixels: &str,
        window: usize,
    ) -> Result<(String, String)> {
        let (h, w) = (self.shape.height, self.shape.width);
        let to_unit = g.constant_f32("locator_unit", &[], &[1.0 / 255.0]);
        let unit = g.node("Mul", &[pixels, &to_unit], vec![], None);
        let mean = g.constant_f32("locator_mean", &[1, 1, h, w], &self.mean);
        let centred = g.node("Sub", &[&unit, &mean], vec![], None);
        let scale = g.constant_f32("locator_scale", &[], &[self.scale]);
        let mut x = g.node("Mul", &[&centred, &scale], vec![], None);
        for layer in &self.layers {
            let y = layer.conv.export_with_bn(&layer.bn, g, &x)?;
            x = g.node("Relu", &[&y], vec![], None);
        }
        let (_, c) = self.head_weight.dims2()?;
        let head = g.constant_f32(
            "locator_head",
            &[1, c, 1, 1],
            &self.head_weight.flatten_all()?.to_vec1::<f32>()?,
        );
        let bias = g.constant_f32("locator_bias", &[1], &self.head_bias.to_vec1::<f32>()?);
        let map = g.node(
            "Conv",
            &[&x, &head, &bias],
            vec![attr_ints("kernel_shape", &[1, 1])],
            None,
        );
        let positive = g.node("Relu", &[&map], vec![], None);
        let eps = g.constant_f32("locator_eps", &[], &[MASS_EPS]);
        let mass_map = g.node("Add", &[&positive, &eps], vec![], None);
        let flat_shape = g.constant_i64("locator_flat", &[-1, (h * w) as i64]);
        let flat = g.node("Reshape", &[&mass_map, &flat_shape], vec![], None);
        let axes = g.constant_i64("locator_axes", &[1]);
        let keep = || vec![attr_int("keepdims", 1)];
        let mass = g.node("ReduceSum", &[&flat, &axes], keep(), None);
        let coordinate = |g: &mut GraphBuilder, name: &str, of: fn(usize, usize) -> usize| {
            let grid: Vec<f32> = (0..h * w).map(|i| of(i / w, i % w) as f32).collect();
            let grid = g.constant_f32(name, &[1, h * w], &grid);
            let weighted = g.node("Mul", &[&flat, &grid], vec![], None);
            let sum = g.node("ReduceSum", &[&weighted, &axes], keep(), None);
            g.node("Div", &[&sum, &mass], vec![], None)
        };
        let centre_row = coordinate(g, "locator_rows", |r, _| r);
        let centre_col = coordinate(g, "locator_cols", |_, c| c);
        let half = g.constant_f32("locator_half", &[], &[(window as f32 - 1.0) / 2.0]);
        let zero = g.constant_f32("locator_zero", &[], &[0.0]);
        let out_shape = g.constant_i64("locator_out", &[-1, 1, 1]);
        let place = |g: &mut GraphBuilder, centre: &str, last: usize| {
            let corner = g.node("Sub", &[centre, &half], vec![], None);
            let rounded = g.node("Round", &[&corner], vec![], None);
            let max = g.constant_f32("locator_max", &[], &[last as f32]);
            let clipped = g.node("Clip", &[&rounded, &zero, &max], vec![], None);
            g.node("Reshape", &[&clipped, &out_shape], vec![], None)
        };
        let row = place(g, &centre_row, h - window);
        let col = place(g, &centre_col, w - window);
        Ok((row, col))
    }
}

/// The start offset of one `h × w` logit map (see [`Locator::starts`]).
fn start_of(map: &[f32], (h, w): (usize, usize), window: usize) -> (usize, usize) {
    let (mut mass, mut rows, mut cols) = (0.0f32, 0.0f32, 0.0f32);
    for (i, &v) in map.iter().enumerate() {
        let m = v.max(0.0) + MASS_EPS;
        mass += m;
        rows += m * (i / w) as f32;
        cols += m * (i % w) as f32;
    }
    let half = (window as f32 - 1.0) / 2.0;
    let place = |centre: f32, last: usize| -> usize {
        (centre / mass - half)
            .round_ties_even()
            .clamp(0.0, last as f32) as usize
    };
    (place(rows, h - window), place(cols, w - window))
}

/// Mean binary cross-entropy of logits against 0/1 targets, in the stable form
/// max(x, 0) − x·y + log(1 + e^(−|x|)).
fn binary_cross_entropy_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok((softplus - (logits * targets)?)?.mean_all()?)
}

/// PyTorch's OneCycleLR (cosine, 30% warm-up from PEAK_LR / 25 to PEAK_LR, then down to
/// PEAK_LR / 25 / 10⁴) at `step` of `total`.
fn one_cycle(step: usize, total: usize) -> f64 {
    let (start, end) = (PEAK_LR / 25.0, PEAK_LR / 25.0 / 1e4);
    let warm = 0.3 * total as f64 - 1.0;
    let cos = |from: f64, to: f64, t: f64| {
        to + (from - to) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
    };
    let s = step as f64;
    if s <= warm {
        cos(start, PEAK_LR, s / warm.max(1.0))
    } else {
        cos(
            PEAK_LR,
            end,
            (s - warm) / (total as f64 - 1.0 - warm).max(1.0),
        )
    }
}
