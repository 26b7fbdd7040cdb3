//! The alignment front (`align_window`): a fixed first stage that cuts, from each image, the
//! `window × window` window where the object is, for objects that move within the image.
//!
//! Fitting runs shift-invariant k-means (see [`crate::baselines::align_by_templates`]) on the
//! target images in the reference-whitened pixels (ZCA, fitted to the reference set): one
//! template per cluster. An image's window is then the one of highest normalised correlation with
//! any template, and the encoders see that window of the raw image. The same arithmetic runs in
//! training, in the candle inference path and, as ONNX operators, in the exported graph, so the
//! whole model still takes the full image.
//!
//! With a search radius (`align_search_radius`), a [`Locator`] trained to tell targets from
//! references first estimates where each image's object is, and the templates are fitted and
//! matched only within that radius of the estimate.

mod locator;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};

pub use locator::{Locator, LocatorSettings, LOCATOR_PREFIX};

use crate::baselines::{
    align_within, best_offsets_within, ReferenceZca, SearchRegion, ShiftKMeans,
};
use crate::data::ImageShape;
use crate::error::{Error, Result};
use crate::export::{attr_int, attr_ints, GraphBuilder};
use crate::train::ImageSet;

/// Safetensors names of the front's parameters, stored beside the encoders' weights.
pub const MEAN_TENSOR: &str = "align.mean";
pub const WHITENING_TENSOR: &str = "align.whitening";
pub const TEMPLATES_TENSOR: &str = "align.templates";

/// The most pixels an image may have: the whitening is a dense `d × d` matrix.
pub const MAX_PIXELS: usize = 64 * 64;

/// The window of an unset `align_window` (and of `compare --methods tic`): the side of the
/// MNIST and Fashion-MNIST objects the benchmark sets move within larger crops.
pub const DEFAULT_WINDOW: usize = 28;

/// The search radius of an unset `align_search_radius` wherever a window is on.
pub const DEFAULT_SEARCH_RADIUS: usize = 3;

/// The window an unset `align_window` gives images of `shape`: [`DEFAULT_WINDOW`] where the
/// front can run and there is room to move a window of that side (single channel, both sides
/// larger than it, at most [`MAX_PIXELS`] pixels), else 0 (off). On images no larger than the
/// window, cutting a window would change nothing but the cost.
pub fn default_window(shape: ImageShape) -> usize {
    let room = shape.height.min(shape.width) > DEFAULT_WINDOW;
    if shape.channels == 1 && room && shape.len() <= MAX_PIXELS {
        DEFAULT_WINDOW
    } else {
        0
    }
}

/// A fitted alignment front.
#[derive(Clone, Debug, PartialEq)]
pub struct AlignmentFront {
    /// The shape of the images it cuts windows from (single channel).
    pub shape: ImageShape,
    pub window: usize,
    /// ZCA reference whitening of the unit pixels (value / 255).
    pub whitening: ReferenceZca,
    /// Unit-norm templates, `k × window²` row-major.
    pub templates: Vec<f32>,
    /// Where the windows are searched for: near the locator's estimate, or (None) everywhere.
    pub search: Option<LocatedSearch>,
}

/// A search near each object's estimated place.
#[derive(Clone, Debug, PartialEq)]
pub struct LocatedSearch {
    pub locator: Arc<Locator>,
    /// Rows and columns a window may lie from the locator's start offset.
    pub radius: usize,
}

/// How [`AlignmentFront::fit`] places the windows: everywhere (`None`) or near a locator's
/// estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocateSettings {
    pub radius: usize,
    pub locator: LocatorSettings,
}

impl AlignmentFront {
    /// Fits the front (whitening on `reference`, with `locate` a locator on targets against
    /// references, then `clusters` templates on `target`) and returns it with `target` cut to
    /// its windows, at the offsets the fit already found.
    pub fn fit(
        target: &ImageSet,
        reference: &ImageSet,
        window: usize,
        clusters: usize,
        seed: u64,
        locate: Option<LocateSettings>,
        device: &Device,
    ) -> Result<(Self, ImageSet)> {
        let shape = target.shape;
        check_geometry(shape, window)?;
        let d = shape.len();
        let whitening = ReferenceZca::fit(
            &reference.unit_pixels(),
            d,
            crate::baselines::WHITENING_SHRINKAGE,
        )
        .map_err(|e| Error::Invalid(format!("align_window: reference whitening: {e}")))?;
        let whitened = whitening
            .apply(&target.unit_pixels())
            .map_err(|e| Error::Invalid(format!("align_window: {e}")))?;
        let search = match locate {
            None => None,
            Some(settings) => {
                let locator = Locator::fit(target, reference, settings.locator, device)?;
                Some(LocatedSearch {
                    locator: Arc::new(locator),
                    radius: settings.radius,
                })
            }
        };
        let starts = located_starts(search.as_ref(), &target.pixels, window)?;
        let aligned = align_within(
            &whitened,
            target.len(),
            (shape.height, shape.width),
            if search.is_some() {
                ShiftKMeans::located(window, clusters, seed)
            } else {
                ShiftKMeans::suite(window, clusters, seed)
            },
            region(starts.as_deref(), search.as_ref()),
        )
        .map_err(|e| Error::Invalid(format!("align_window: {e}")))?;
        tracing::info!(
            window,
            templates = clusters,
            objective = aligned.objective,
            radius = search.as_ref().map(|s| s.radius),
            "fitted the alignment front"
        );
        let front = Self {
            shape,
            window,
            whitening,
            templates: aligned.templates,
            search,
        };
        let windows = front.cropped_set(target, &aligned.offsets);
        Ok((front, windows))
    }

    /// The shape of the windows the encoders see.
    pub fn window_shape(&self) -> ImageShape {
        ImageShape::new(1, self.window, self.window)
    }

    /// Each image's window offset, (row, column) of its top-left pixel, for decoded uint8
    /// images of [`AlignmentFront::shape`] one after another.
    pub fn offsets(&self, pixels: &[u8]) -> Result<Vec<(usize, usize)>> {
        let d = self.shape.len();
        if !pixels.len().is_multiple_of(d) {
            return Err(Error::Invalid(format!(
                "{} pixel values are not whole images of {}",
                pixels.len(),
                self.shape
            )));
        }
        let unit: Vec<f32> = pixels.iter().map(|&v| f32::from(v) / 255.0).collect();
        let whitened = self
            .whitening
            .apply(&unit)
            .map_err(|e| Error::Invalid(format!("alignment front: {e}")))?;
        let starts = located_starts(self.search.as_ref(), pixels, self.window)?;
        best_offsets_within(
            &whitened,
            pixels.len() / d,
            (self.shape.height, self.shape.width),
            self.window,
            &self.templates,
            region(starts.as_deref(), self.search.as_ref()),
        )
        .map_err(|e| Error::Invalid(format!("alignment front: {e}")))
    }

    /// The aligned windows of decoded uint8 images, one after another.
    pub fn crop(&self, pixels: &[u8]) -> Result<Vec<u8>> {
        Ok(self.crop_at(pixels, &self.offsets(pixels)?))
    }

    /// The set with every image replaced by its aligned window (ids and labels kept).
    pub fn crop_set(&self, set: &ImageSet) -> Result<ImageSet> {
        Ok(self.cropped_set(set, &self.offsets(&set.pixels)?))
    }

    /// The windows of `pixels` at `offsets`, one per image.
    fn crop_at(&self, pixels: &[u8], offsets: &[(usize, usize)]) -> Vec<u8> {
        let (d, w, width) = (self.shape.len(), self.window, self.shape.width);
        let mut out = Vec::with_capacity(offsets.len() * w * w);
        for (image, &(top, left)) in pixels.chunks_exact(d).zip(offsets) {
            for r in 0..w {
                let start = (top + r) * width + left;
                out.extend_from_slice(&image[start..start + w]);
            }
        }
        out
    }

    fn cropped_set(&self, set: &ImageSet, offsets: &[(usize, usize)]) -> ImageSet {
        ImageSet {
            shape: self.window_shape(),
            ids: set.ids.clone(),
            labels: set.labels.clone(),
            pixels: self.crop_at(&set.pixels, offsets),
        }
    }

    /// The front's parameters as tensors, to store with the model's weights.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let d = self.shape.len();
        let len = self.window * self.window;
        let cpu = Device::Cpu;
        let mut tensors = match &self.search {
            Some(s) => s.locator.tensors()?,
            None => HashMap::new(),
        };
        tensors.extend([
            (
                MEAN_TENSOR.to_string(),
                Tensor::from_slice(&self.whitening.mean, d, &cpu)?,
            ),
            (
                WHITENING_TENSOR.to_string(),
                Tensor::from_slice(&self.whitening.matrix, (d, d), &cpu)?,
            ),
            (
                TEMPLATES_TENSOR.to_string(),
                Tensor::from_slice(&self.templates, (self.templates.len() / len, len), &cpu)?,
            ),
        ]);
        Ok(tensors)
    }

    /// The front of a model whose images have `shape`, from its stored tensors, with a
    /// locator of `(radius, width)` when the model searches near one; the error names the
    /// tensor that is missing or has the wrong shape.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        shape: ImageShape,
        window: usize,
        locate: Option<(usize, usize)>,
    ) -> std::result::Result<Self, String> {
        check_geometry(shape, window).map_err(|e| e.to_string())?;
        let d = shape.len();
        let len = window * window;
        let read = |name: &str, expected: &dyn Fn(&[usize]) -> bool, what: &str| {
            let t = tensors.get(name).ok_or_else(|| {
                format!("no `{name}` tensor, though the manifest sets align_window = {window}")
            })?;
            if !expected(t.dims()) {
                return Err(format!(
                    "`{name}` has shape {:?}, expected {what}",
                    t.dims()
                ));
            }
            t.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| format!("`{name}`: {e}"))
        };
        let mean = read(MEAN_TENSOR, &|s| s == [d], &format!("[{d}]"))?;
        let matrix = read(WHITENING_TENSOR, &|s| s == [d, d], &format!("[{d}, {d}]"))?;
        let templates = read(
            TEMPLATES_TENSOR,
            &|s| s.len() == 2 && s[0] > 0 && s[1] == len,
            &format!("[k, {len}]"),
        )?;
        let search = match locate {
            None => None,
            Some((radius, width)) => Some(LocatedSearch {
                locator: Arc::new(Locator::from_tensors(tensors, shape, width)?),
                radius,
            }),
        };
        Ok(Self {
            shape,
            window,
            whitening: ReferenceZca { mean, matrix },
            templates,
            search,
        })
    }

    /// Appends the front to an ONNX graph: `pixels` (float N×1×H×W, values 0–255) → the
    /// aligned windows (float N×1×w×w, the same values). Whitening is a MatMul, the
    /// correlations a Conv with the templates divided by each window's norm (a Conv of the
    /// squares with ones), and the window is gathered at the ArgMax offset.
    ///
    /// With a located search, the locator's start offsets come from the same pixels, and every
    /// offset more than the radius away from them scores below any window before the ArgMax.
    pub fn export_onnx(&self, g: &mut GraphBuilder, pixels: &str) -> Result<String> {
        let (h, w, win) = (self.shape.height, self.shape.width, self.window);
        let d = h * w;
        let (rows, cols) = (h - win + 1, w - win + 1);
        let k = self.templates.len() / (win * win);
        let flat = g.node("Flatten", &[pixels], vec![attr_int("axis", 1)], None);
        let to_unit = g.constant_f32("align_unit", &[], &[1.0 / 255.0]);
        let unit = g.node("Mul", &[&flat, &to_unit], vec![], None);
        let mean = g.constant_f32("align_mean", &[1, d], &self.whitening.mean);
        let centred = g.node("Sub", &[&unit, &mean], vec![], None);
        let matrix = g.constant_f32("align_whitening", &[d, d], &self.whitening.matrix);
        let whitened = g.node("MatMul", &[&centred, &matrix], vec![], None);
        let image_shape = g.constant_i64("align_image_shape", &[-1, 1, h as i64, w as i64]);
        let image = g.node("Reshape", &[&whitened, &image_shape], vec![], None);
        let no_pads = || {
            vec![
                attr_ints("kernel_shape", &[win as i64, win as i64]),
                attr_ints("pads", &[0, 0, 0, 0]),
            ]
        };
        let templates = g.constant_f32("align_templates", &[k, 1, win, win], &self.templates);
        let correlation = g.node("Conv", &[&image, &templates], no_pads(), None);
        let squares = g.node("Mul", &[&image, &image], vec![], None);
        let ones = g.constant_f32("align_ones", &[1, 1, win, win], &vec![1.0; win * win]);
        let energy = g.node("Conv", &[&squares, &ones], no_pads(), None);
        let norm = g.node("Sqrt", &[&energy], vec![], None);
        let eps = g.constant_f32("align_eps", &[], &[1e-12]);
        let norm = g.node("Max", &[&norm, &eps], vec![], None);
        let scores = g.node("Div", &[&correlation, &norm], vec![], None);
        let best = g.node(
            "ReduceMax",
            &[&scores],
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
            None,
        );
        let best = match &self.search {
            None => best,
            Some(search) => {
                let (start_row, start_col) = search.locator.export_onnx(g, pixels, self.window)?;
                let radius = g.constant_f32("align_radius", &[], &[search.radius as f32]);
                let near = |g: &mut GraphBuilder, start: &str, grid: Vec<f32>| {
                    let grid = g.constant_f32("align_offset_grid", &[1, rows, cols], &grid);
                    let apart = g.node("Sub", &[&grid, start], vec![], None);
                    let apart = g.node("Abs", &[&apart], vec![], None);
                    g.node("LessOrEqual", &[&apart, &radius], vec![], None)
                };
                let row_grid = (0..rows * cols).map(|i| (i / cols) as f32).collect();
                let col_grid = (0..rows * cols).map(|i| (i % cols) as f32).collect();
                let near_rows = near(g, &start_row, row_grid);
                let near_cols = near(g, &start_col, col_grid);
                let allowed = g.node("And", &[&near_rows, &near_cols], vec![], None);
                // Below any normalised correlation (all lie in [−1, 1]).
                let outside = g.constant_f32("align_outside", &[], &[-1e30]);
                g.node("Where", &[&allowed, &best, &outside], vec![], None)
            }
        };
        let offsets_shape = g.constant_i64("align_offsets_shape", &[-1, (rows * cols) as i64]);
        let best = g.node("Reshape", &[&best, &offsets_shape], vec![], None);
        // The first offset of the highest score, in row-major order, as `best_offsets` picks.
        let index = g.node(
            "ArgMax",
            &[&best],
            vec![attr_int("axis", 1), attr_int("keepdims", 1)],
            None,
        );
        let across = g.constant_i64("align_across", &[cols as i64]);
        let top = g.node("Div", &[&index, &across], vec![], None);
        let left = g.node("Mod", &[&index, &across], vec![], None);
        let width = g.constant_i64("align_width", &[w as i64]);
        let top_row = g.node("Mul", &[&top, &width], vec![], None);
        let start = g.node("Add", &[&top_row, &left], vec![], None);
        let grid: Vec<i64> = (0..win)
            .flat_map(|r| (0..win).map(move |c| (r * w + c) as i64))
            .collect();
        let grid = g.constant_i64_shaped("align_grid", &[1, win * win], &grid);
        let indices = g.node("Add", &[&start, &grid], vec![], None);
        let gathered = g.node(
            "GatherElements",
            &[&flat, &indices],
            vec![attr_int("axis", 1)],
            None,
        );
        let window_shape = g.constant_i64("align_window_shape", &[-1, 1, win as i64, win as i64]);
        Ok(g.node("Reshape", &[&gathered, &window_shape], vec![], None))
    }
}

/// The locator's start offsets of `pixels` when the front searches near them.
fn located_starts(
    search: Option<&LocatedSearch>,
    pixels: &[u8],
    window: usize,
) -> Result<Option<Vec<(usize, usize)>>> {
    search.map(|s| s.locator.starts(pixels, window)).transpose()
}

/// The search region of `starts` under `search` (everywhere without a locator).
fn region<'a>(
    starts: Option<&'a [(usize, usize)]>,
    search: Option<&LocatedSearch>,
) -> SearchRegion<'a> {
    match (starts, search) {
        (Some(starts), Some(search)) => SearchRegion::Near {
            starts,
            radius: search.radius,
        },
        _ => SearchRegion::Everywhere,
    }
}

fn check_geometry(shape: ImageShape, window: usize) -> Result<()> {
    if shape.channels != 1 {
        return Err(Error::Invalid(format!(
            "align_window needs single-channel images, got {shape}"
        )));
    }
    if window < 2 || window > shape.height.min(shape.width) {
        return Err(Error::Invalid(format!(
            "align_window ({window}) must be between 2 and the images' smaller side ({shape})"
        )));
    }
    if shape.len() > MAX_PIXELS {
        return Err(Error::Invalid(format!(
            "align_window whitens whole images with a dense matrix: at most {MAX_PIXELS} pixels, got {shape}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const SIDE: usize = 16;
    const WINDOW: usize = 8;
    const OBJECT: usize = 6;

    /// Whether pixel (r, c) of an object of `kind` (0: a cross, 1: a ring) is on.
    fn object(kind: usize, r: usize, c: usize) -> bool {
        match kind {
            0 => r == 2 || r == 3 || c == 2 || c == 3,
            _ => r == 0 || r == OBJECT - 1 || c == 0 || c == OBJECT - 1,
        }
    }

    /// Images of faint noise; with `objects`, a bright cross (even rows) or ring (odd rows) at a
    /// random top-left corner in 1..=SIDE − OBJECT − 1, which is returned.
    fn images(n: usize, objects: bool, seed: u64) -> (ImageSet, Vec<(usize, usize)>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pixels = Vec::with_capacity(n * SIDE * SIDE);
        let mut corners = Vec::new();
        for i in 0..n {
            let mut image: Vec<u8> = (0..SIDE * SIDE).map(|_| rng.random_range(0..60)).collect();
            if objects {
                let top = rng.random_range(1..SIDE - OBJECT);
                let left = rng.random_range(1..SIDE - OBJECT);
                for r in 0..OBJECT {
                    for c in 0..OBJECT {
                        if object(i % 2, r, c) {
                            image[(top + r) * SIDE + left + c] = 250;
                        }
                    }
                }
                corners.push((top, left));
            }
            pixels.extend(image);
        }
        let set = ImageSet {
            shape: ImageShape::new(1, SIDE, SIDE),
            ids: (0..n as i64).collect(),
            labels: (0..n).map(|i| Some((i % 2) as i64)).collect(),
            pixels,
        };
        (set, corners)
    }

    /// A front with no whitening (mean 0, identity) and the two objects as templates, each one
    /// pixel in from the window's top-left corner.
    fn known_front() -> AlignmentFront {
        let d = SIDE * SIDE;
        let mut matrix = vec![0.0f32; d * d];
        (0..d).for_each(|i| matrix[i * d + i] = 1.0);
        let mut templates = Vec::new();
        for kind in 0..2 {
            let mut t = vec![0.0f32; WINDOW * WINDOW];
            for r in 0..OBJECT {
                for c in 0..OBJECT {
                    if object(kind, r, c) {
                        t[(r + 1) * WINDOW + c + 1] = 1.0;
                    }
                }
            }
            let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
            templates.extend(t.iter().map(|v| v / norm));
        }
        AlignmentFront {
            shape: ImageShape::new(1, SIDE, SIDE),
            window: WINDOW,
            whitening: ReferenceZca {
                mean: vec![0.0; d],
                matrix,
            },
            templates,
            search: None,
        }
    }

    #[test]
    fn the_window_follows_the_object_wherever_it_is() {
        let (target, corners) = images(200, true, 1);
        let front = known_front();
        let offsets = front.offsets(&target.pixels).unwrap();
        let expected: Vec<(usize, usize)> = corners.iter().map(|&(r, c)| (r - 1, c - 1)).collect();
        assert_eq!(offsets, expected);
        let cropped = front.crop_set(&target).unwrap();
        assert_eq!(cropped.shape, ImageShape::new(1, WINDOW, WINDOW));
        assert_eq!(
            (&cropped.ids, &cropped.labels),
            (&target.ids, &target.labels)
        );
        // Every window holds its object one pixel in from its top-left corner: the cross's
        // third row, the ring's first.
        for (i, &(top, left)) in offsets.iter().enumerate() {
            let window = cropped.image(i);
            let probe = if i % 2 == 0 {
                3 * WINDOW + 1
            } else {
                WINDOW + 1
            };
            assert_eq!(window[probe], 250, "image {i}");
            assert_eq!(
                window[WINDOW * WINDOW - 1],
                target.image(i)[(top + WINDOW - 1) * SIDE + left + WINDOW - 1]
            );
        }
    }

    #[test]
    fn fitting_gives_unit_templates_one_per_cluster_and_crops_at_the_fitted_offsets() {
        let (target, _) = images(120, true, 3);
        let (reference, _) = images(120, false, 4);
        let (front, fitted) =
            AlignmentFront::fit(&target, &reference, WINDOW, 2, 0, None, &Device::Cpu).unwrap();
        assert_eq!(front.templates.len(), 2 * WINDOW * WINDOW);
        for t in front.templates.chunks_exact(WINDOW * WINDOW) {
            let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "template norm {norm}");
        }
        let offsets = front.offsets(&target.pixels).unwrap();
        let mut distinct = offsets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 10, "{} distinct offsets", distinct.len());
        let cropped = front.crop(&target.pixels).unwrap();
        // The windows the fit cut are those the fitted front cuts again.
        assert_eq!(fitted.pixels, cropped);
        assert_eq!(fitted.shape, ImageShape::new(1, WINDOW, WINDOW));
        let (top, left) = offsets[5];
        assert_eq!(
            cropped[5 * WINDOW * WINDOW + WINDOW + 2],
            target.image(5)[(top + 1) * SIDE + left + 2]
        );
    }

    #[test]
    fn the_stored_tensors_give_the_same_front_and_a_bad_one_is_named() {
        let front = known_front();
        let mut tensors = front.tensors().unwrap();
        let back = AlignmentFront::from_tensors(&tensors, front.shape, WINDOW, None).unwrap();
        assert_eq!(back, front);
        tensors.insert(
            TEMPLATES_TENSOR.into(),
            Tensor::zeros((2, 10), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        let err = AlignmentFront::from_tensors(&tensors, front.shape, WINDOW, None).unwrap_err();
        assert!(
            err.contains(TEMPLATES_TENSOR) && err.contains("[k, 64]"),
            "{err}"
        );
        tensors.remove(MEAN_TENSOR);
        let err = AlignmentFront::from_tensors(&tensors, front.shape, WINDOW, None).unwrap_err();
        assert!(err.contains(MEAN_TENSOR), "{err}");
    }

    #[test]
    fn colour_images_and_windows_larger_than_the_image_are_refused() {
        let (target, _) = images(8, true, 5);
        let colour = ImageSet {
            shape: ImageShape::new(3, 4, 4),
            ..target.clone()
        };
        let err = AlignmentFront::fit(&colour, &colour, 2, 2, 0, None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("single-channel"), "{err}");
        let err = AlignmentFront::fit(&target, &target, SIDE + 1, 2, 0, None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("align_window (17)"), "{err}");
    }

    fn locate(radius: usize) -> LocateSettings {
        LocateSettings {
            radius,
            locator: LocatorSettings {
                width: 4,
                epochs: 8,
                seed: 0,
            },
        }
    }

    #[test]
    fn the_locator_finds_the_objects_and_the_front_searches_only_near_it() {
        let (target, corners) = images(160, true, 6);
        let (reference, _) = images(160, false, 7);
        let (front, fitted) = AlignmentFront::fit(
            &target,
            &reference,
            WINDOW,
            2,
            0,
            Some(locate(1)),
            &Device::Cpu,
        )
        .unwrap();
        let search = front.search.as_ref().expect("a located search");
        // The window centred on the object starts one pixel before its corner (the object's
        // centre is 2.5 px in, the window's 3.5).
        let starts = search.locator.starts(&target.pixels, WINDOW).unwrap();
        let near = starts
            .iter()
            .zip(&corners)
            .filter(|(s, c)| s.0.abs_diff(c.0 - 1) <= 1 && s.1.abs_diff(c.1 - 1) <= 1)
            .count();
        assert!(
            near * 10 >= corners.len() * 9,
            "{near} of {} starts near the object",
            corners.len()
        );
        let offsets = front.offsets(&target.pixels).unwrap();
        for (o, s) in offsets.iter().zip(&starts) {
            assert!(
                o.0.abs_diff(s.0) <= 1 && o.1.abs_diff(s.1) <= 1,
                "{o:?} from {s:?}"
            );
        }
        assert_eq!(fitted.pixels, front.crop(&target.pixels).unwrap());
        // Without a locator the same front searches everywhere again.
        let everywhere = AlignmentFront {
            search: None,
            ..front.clone()
        };
        assert_eq!(
            everywhere.offsets(&target.pixels).unwrap().len(),
            target.len()
        );
    }

    #[test]
    fn a_stored_locator_gives_the_same_front_and_a_missing_tensor_is_named() {
        let (target, _) = images(40, true, 8);
        let (reference, _) = images(40, false, 9);
        let settings = LocateSettings {
            locator: LocatorSettings {
                epochs: 1,
                ..locate(2).locator
            },
            ..locate(2)
        };
        let fit = || {
            AlignmentFront::fit(
                &target,
                &reference,
                WINDOW,
                2,
                0,
                Some(settings),
                &Device::Cpu,
            )
            .unwrap()
            .0
        };
        let front = fit();
        // The same seed trains the same locator.
        assert_eq!(fit(), front);
        let mut tensors = front.tensors().unwrap();
        let back =
            AlignmentFront::from_tensors(&tensors, front.shape, WINDOW, Some((2, 4))).unwrap();
        assert_eq!(back, front);
        assert_eq!(
            back.offsets(&target.pixels).unwrap(),
            front.offsets(&target.pixels).unwrap()
        );
        // A locator of another width does not fit the stored tensors.
        let err =
            AlignmentFront::from_tensors(&tensors, front.shape, WINDOW, Some((2, 8))).unwrap_err();
        assert!(err.contains("align_locator_width = 8"), "{err}");
        let name = format!("{LOCATOR_PREFIX}.head.weight");
        tensors.remove(&name);
        let err =
            AlignmentFront::from_tensors(&tensors, front.shape, WINDOW, Some((2, 4))).unwrap_err();
        assert!(
            err.contains("head.weight") || err.contains("tensors under"),
            "{err}"
        );
        tensors.remove(&format!("{LOCATOR_PREFIX}.mean"));
        let err =
            AlignmentFront::from_tensors(&tensors, front.shape, WINDOW, Some((2, 4))).unwrap_err();
        assert!(err.contains("align.locator.mean"), "{err}");
    }
}
