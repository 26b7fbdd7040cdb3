//! Reference whitening as a fixed convolution. Backgrounds such as grass or gravel are roughly
//! stationary: their covariance depends on the offset between two pixels, not on where the
//! pixels are, so its inverse square root (the reference-whitening matrix of
//! [`crate::baselines::reference_whitening`]) acts on every pixel with nearly the same
//! weights. One row of that matrix, cut to a small kernel, is therefore a filter that does what
//! the whole matrix does, for any image size and wherever the object sits. The salient encoder
//! applies it to its input before its first learned layer, so training starts from the
//! coordinates in which the backgrounds carry the least energy; the ONNX graph holds it as one
//! depthwise `Conv`.
//!
//! Where the backgrounds are not stationary (several textures, light that varies across the
//! image), one kernel keeps less than the whole matrix does; [`WhiteningMatrix`] applies the
//! whole matrix instead (`whitening_matrix`), for images of a fixed, small size.

use crate::baselines::reference_whitening_matrix;
use crate::data::ImageShape;
use crate::error::{Error, Result};
use crate::preprocess::Normalization;

/// At most this many reference images estimate the covariance: plenty for a stationary
/// texture, and it bounds the fitting time.
const MAX_COVARIANCE_IMAGES: usize = 4096;

/// A depthwise whitening kernel: one `size`×`size` filter per channel, applied with zero
/// padding `size / 2` to normalised images.
#[derive(Clone, Debug, PartialEq)]
pub struct WhiteningFilter {
    pub channels: usize,
    pub size: usize,
    /// C×size×size, row-major.
    pub weights: Vec<f32>,
}

impl WhiteningFilter {
    /// Fits the filter to reference images (uint8 N×C×H×W, normalised with `norm` as the
    /// encoder's input is). Per channel: the reference-whitening matrix of the images' pixels
    /// (ε = `shrinkage` × the mean eigenvalue of their covariance), its row for the centre pixel
    /// cut to the `size`×`size` neighbourhood of that pixel, scaled so that the filtered
    /// references have unit variance.
    pub fn fit(
        pixels: &[u8],
        shape: ImageShape,
        norm: &Normalization,
        size: usize,
        shrinkage: f64,
    ) -> Result<Self> {
        let (h, w, c) = (shape.height, shape.width, shape.channels);
        if size.is_multiple_of(2) || size > h.min(w) {
            return Err(Error::Invalid(format!(
                "whitening kernel size {size}: must be odd and at most {} for {h}x{w} images",
                h.min(w)
            )));
        }
        let n = reference_count(pixels, shape, shrinkage)?;
        let used = n.min(MAX_COVARIANCE_IMAGES);
        let plane = h * w;
        let (cy, cx) = (h / 2, w / 2);
        let r = size / 2;
        let mut weights = Vec::with_capacity(c * size * size);
        for ch in 0..c {
            let (mean, std) = (norm.mean[ch], norm.std[ch]);
            let planes: Vec<f32> = pixels
                .chunks_exact(shape.len())
                .take(used)
                .flat_map(|image| {
                    image[ch * plane..(ch + 1) * plane]
                        .iter()
                        .map(move |&v| (v as f32 / 255.0 - mean) / std)
                })
                .collect();
            let spread = planes
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if spread.1 - spread.0 <= 0.0 {
                return Err(no_variation());
            }
            let matrix = reference_whitening_matrix(&planes, plane, shrinkage)?;
            let centre = cy * w + cx;
            let mut kernel = Vec::with_capacity(size * size);
            for dy in 0..size {
                for dx in 0..size {
                    let q = (cy + dy - r) * w + (cx + dx - r);
                    kernel.push(matrix[(centre, q)] as f32);
                }
            }
            // Unit variance of the filtered references (zero-padded borders included, as the
            // encoder sees them).
            let single = WhiteningFilter {
                channels: 1,
                size,
                weights: kernel.clone(),
            };
            let sample = &planes[..plane * used.min(512)];
            let filtered = single.apply(sample, ImageShape::new(1, h, w));
            let count = filtered.len() as f64;
            let m = filtered.iter().map(|&v| v as f64).sum::<f64>() / count;
            let var = filtered
                .iter()
                .map(|&v| (v as f64 - m).powi(2))
                .sum::<f64>()
                / count;
            let sd = var.sqrt();
            if !(sd.is_finite() && sd > 0.0) {
                return Err(no_variation());
            }
            weights.extend(kernel.iter().map(|&v| (v as f64 / sd) as f32));
        }
        Ok(Self {
            channels: c,
            size,
            weights,
        })
    }

    /// The filter applied to normalised images (N×C×H×W floats), zero-padded as the encoder
    /// and the ONNX `Conv` apply it: the reference implementation the tests compare against.
    pub fn apply(&self, x: &[f32], shape: ImageShape) -> Vec<f32> {
        let (h, w) = (shape.height as isize, shape.width as isize);
        let r = (self.size / 2) as isize;
        let k = self.size as isize;
        let plane = (h * w) as usize;
        let mut out = vec![0f32; x.len()];
        for (index, (src, dst)) in x
            .chunks_exact(plane)
            .zip(out.chunks_exact_mut(plane))
            .enumerate()
        {
            let kernel = &self.weights[(index % self.channels) * self.size * self.size..]
                [..self.size * self.size];
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = 0f32;
                    for ky in -r..=r {
                        let sy = y + ky;
                        if !(0..h).contains(&sy) {
                            continue;
                        }
                        for kx in -r..=r {
                            let sx = xx + kx;
                            if !(0..w).contains(&sx) {
                                continue;
                            }
                            acc += kernel[((ky + r) * k + kx + r) as usize]
                                * src[(sy * w + sx) as usize];
                        }
                    }
                    dst[(y * w + xx) as usize] = acc;
                }
            }
        }
        out
    }
}

/// The number of reference images in `pixels` (uint8 images of `shape`), after the checks both
/// fits share: a positive, finite shrinkage and at least two images.
fn reference_count(pixels: &[u8], shape: ImageShape, shrinkage: f64) -> Result<usize> {
    if !(shrinkage.is_finite() && shrinkage > 0.0) {
        return Err(Error::Invalid(format!(
            "whitening shrinkage {shrinkage}: must be positive"
        )));
    }
    let n = pixels.len() / shape.len().max(1);
    if n < 2 {
        return Err(Error::Invalid(
            "reference whitening needs at least two reference images".into(),
        ));
    }
    Ok(n)
}

fn no_variation() -> Error {
    Error::Invalid("reference whitening: the reference images have no variation".into())
}

/// The most values (channels × height × width) an image may have for [`WhiteningMatrix`]: it is
/// a dense `d × d` matrix (64 MiB at this size).
pub const MAX_MATRIX_VALUES: usize = 64 * 64;

/// Reference whitening as the whole ZCA matrix rather than one row of it: `(x − μ) M` on the
/// flattened normalised image, `M` the symmetric reference-whitening matrix (ε = `shrinkage` ×
/// the mean eigenvalue). Unlike [`WhiteningFilter`] it whitens each pixel with its own weights,
/// so it also removes background structure that depends on the position in the image (the
/// light falling across a table, a texture's orientation in each crop), at the price of a fixed
/// image size. The output is still an image (ZCA keeps the pixel layout), scaled so that the
/// whitened references have unit mean variance, as the filter's do.
#[derive(Clone, Debug, PartialEq)]
pub struct WhiteningMatrix {
    /// The reference images' mean, normalised (C·H·W).
    pub mean: Vec<f32>,
    /// `d × d`, row-major (symmetric).
    pub matrix: Vec<f32>,
}

impl WhiteningMatrix {
    /// Fits the matrix to reference images (uint8 N×C×H×W, normalised with `norm` as the
    /// encoder's input is).
    pub fn fit(
        pixels: &[u8],
        shape: ImageShape,
        norm: &Normalization,
        shrinkage: f64,
    ) -> Result<Self> {
        let d = shape.len();
        if d > MAX_MATRIX_VALUES {
            return Err(Error::Invalid(format!(
                "whitening_matrix: {}x{}x{} images have {d} values, at most {MAX_MATRIX_VALUES} fit a dense whitening matrix; use the whitening kernel (whitening_matrix = false)",
                shape.channels, shape.height, shape.width
            )));
        }
        let n = reference_count(pixels, shape, shrinkage)?;
        let plane = shape.height * shape.width;
        let rows: Vec<f32> = pixels
            .chunks_exact(d)
            .flat_map(|image| {
                image.iter().enumerate().map(|(i, &v)| {
                    let c = i / plane;
                    (v as f32 / 255.0 - norm.mean[c]) / norm.std[c]
                })
            })
            .collect();
        if rows.iter().all(|&v| v == rows[0]) {
            return Err(no_variation());
        }
        let zca = crate::baselines::ReferenceZca::fit(&rows, d, shrinkage)?;
        let sample = &rows[..d * n.min(MAX_COVARIANCE_IMAGES)];
        let whitened = zca.apply(sample)?;
        let mean_square =
            whitened.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / whitened.len() as f64;
        let sd = mean_square.sqrt();
        if !(sd.is_finite() && sd > 0.0) {
            return Err(no_variation());
        }
        Ok(Self {
            mean: zca.mean,
            matrix: zca
                .matrix
                .iter()
                .map(|&v| (f64::from(v) / sd) as f32)
                .collect(),
        })
    }

    /// The matrix applied to normalised images (N×C×H×W floats, flattened per image): the
    /// reference implementation the tests compare the encoder's first stage against.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let d = self.mean.len();
        x.chunks_exact(d)
            .flat_map(|image| {
                (0..d).map(move |j| {
                    image
                        .iter()
                        .zip(&self.mean)
                        .enumerate()
                        .map(|(i, (&v, &m))| (v - m) * self.matrix[i * d + j])
                        .sum::<f32>()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const SIDE: usize = 16;

    fn shape() -> ImageShape {
        ImageShape::new(1, SIDE, SIDE)
    }

    fn identity_norm() -> Normalization {
        Normalization {
            mean: vec![0.5],
            std: vec![0.1],
        }
    }

    /// Smooth, stationary "backgrounds": white noise blurred by a 7x7 Gaussian (sigma 1.5), as
    /// uint8 around 128.
    fn smooth_backgrounds(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let taps: Vec<f32> = (-3..=3)
            .map(|i| (-0.5 * (i as f32 / 1.5).powi(2)).exp())
            .collect();
        let total: f32 = taps.iter().sum();
        let big = SIDE + 6;
        let mut out = Vec::with_capacity(n * SIDE * SIDE);
        for _ in 0..n {
            let noise: Vec<f32> = (0..big * big)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let mut s = 0.0;
                    for dy in 0..7 {
                        for dx in 0..7 {
                            s += taps[dy] * taps[dx] * noise[(y + dy) * big + x + dx];
                        }
                    }
                    out.push((128.0 + 84.0 * s / (total * total)).clamp(0.0, 255.0) as u8);
                }
            }
        }
        out
    }

    fn normalised(pixels: &[u8], norm: &Normalization) -> Vec<f32> {
        pixels
            .iter()
            .map(|&v| (v as f32 / 255.0 - norm.mean[0]) / norm.std[0])
            .collect()
    }

    /// Mean correlation of horizontally adjacent pixels, away from the borders.
    fn neighbour_correlation(x: &[f32]) -> f64 {
        let (mut a, mut b, mut ab, mut aa, mut bb, mut n) = (0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
        for image in x.chunks_exact(SIDE * SIDE) {
            for y in 3..SIDE - 3 {
                for xx in 3..SIDE - 4 {
                    let (u, v) = (image[y * SIDE + xx] as f64, image[y * SIDE + xx + 1] as f64);
                    a += u;
                    b += v;
                    ab += u * v;
                    aa += u * u;
                    bb += v * v;
                    n += 1.0;
                }
            }
        }
        let cov = ab / n - (a / n) * (b / n);
        cov / ((aa / n - (a / n).powi(2)) * (bb / n - (b / n).powi(2))).sqrt()
    }

    #[test]
    fn the_filter_decorrelates_fresh_backgrounds_to_unit_variance() {
        let norm = identity_norm();
        let filter =
            WhiteningFilter::fit(&smooth_backgrounds(600, 1), shape(), &norm, 9, 0.1).unwrap();
        assert_eq!(
            (filter.channels, filter.size, filter.weights.len()),
            (1, 9, 81)
        );
        // The centre tap dominates, and a stationary background gives a nearly symmetric kernel.
        let largest = filter.weights.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(filter.weights[40].abs(), largest);
        for y in 0..9 {
            for x in 0..9 {
                let (v, mirrored) = (
                    filter.weights[y * 9 + x],
                    filter.weights[(8 - y) * 9 + 8 - x],
                );
                assert!((v - mirrored).abs() < 0.05 * largest, "{v} {mirrored}");
            }
        }
        let fresh = normalised(&smooth_backgrounds(200, 2), &norm);
        let before = neighbour_correlation(&fresh);
        let white = filter.apply(&fresh, shape());
        let after = neighbour_correlation(&white);
        assert!(before > 0.8, "blurred noise is correlated: {before}");
        assert!(
            after < before - 0.1,
            "whitened neighbours: {after} (before {before})"
        );
        let var = white.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / white.len() as f64;
        assert!((0.6..1.6).contains(&var), "variance {var}");
    }

    #[test]
    fn what_the_backgrounds_do_not_vary_in_stands_out_after_whitening() {
        let norm = identity_norm();
        let filter =
            WhiteningFilter::fit(&smooth_backgrounds(600, 3), shape(), &norm, 9, 0.1).unwrap();
        // A thin, sharp stroke (high frequencies the smooth backgrounds lack) on a background.
        let backgrounds = normalised(&smooth_backgrounds(100, 4), &norm);
        let stroke: Vec<f32> = (0..SIDE * SIDE)
            .map(|i| if i % SIDE == SIDE / 2 { 0.5 } else { 0.0 })
            .collect();
        let energy = |x: &[f32]| x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        let snr_before = energy(&stroke) * 100.0 / energy(&backgrounds);
        let white_stroke = filter.apply(&stroke, shape());
        let white_backgrounds = filter.apply(&backgrounds, shape());
        let snr_after = energy(&white_stroke) * 100.0 / energy(&white_backgrounds);
        assert!(
            snr_after > 3.0 * snr_before,
            "stroke-to-background energy {snr_before} -> {snr_after}"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let norm = identity_norm();
        let refs = smooth_backgrounds(4, 5);
        for (size, shrinkage) in [(8, 1.0), (17, 1.0), (9, 0.0), (9, f64::NAN)] {
            let err = WhiteningFilter::fit(&refs, shape(), &norm, size, shrinkage).unwrap_err();
            assert!(err.to_string().contains("whitening"), "{err}");
        }
        assert!(WhiteningFilter::fit(&[], shape(), &norm, 9, 1.0).is_err());
        let flat = vec![128u8; 4 * SIDE * SIDE];
        let err = WhiteningFilter::fit(&flat, shape(), &norm, 9, 1.0).unwrap_err();
        assert!(err.to_string().contains("no variation"), "{err}");
    }

    /// Smooth backgrounds plus a left-to-right brightness ramp of random sign and strength: a
    /// background structure tied to the position in the image, which one kernel cannot follow.
    fn ramped_backgrounds(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = smooth_backgrounds(n, seed + 100);
        for image in out.chunks_exact_mut(SIDE * SIDE) {
            let a: f32 = rng.random_range(-100.0..100.0);
            for (i, v) in image.iter_mut().enumerate() {
                let x = (i % SIDE) as f32 / (SIDE - 1) as f32 - 0.5;
                *v = (*v as f32 + a * x).clamp(0.0, 255.0) as u8;
            }
        }
        out
    }

    #[test]
    fn the_matrix_whitens_fresh_backgrounds_to_unit_variance() {
        let norm = identity_norm();
        let matrix =
            WhiteningMatrix::fit(&smooth_backgrounds(600, 1), shape(), &norm, 0.1).unwrap();
        let d = SIDE * SIDE;
        assert_eq!((matrix.mean.len(), matrix.matrix.len()), (d, d * d));
        let largest = matrix.matrix.iter().fold(0f32, |m, v| m.max(v.abs()));
        for i in 0..d {
            for j in 0..i {
                let (a, b) = (matrix.matrix[i * d + j], matrix.matrix[j * d + i]);
                assert!((a - b).abs() <= 1e-5 * largest, "({i}, {j}): {a} {b}");
            }
        }
        let fresh = normalised(&smooth_backgrounds(200, 2), &norm);
        let before = neighbour_correlation(&fresh);
        let white = matrix.apply(&fresh);
        let after = neighbour_correlation(&white);
        assert!(
            after < before - 0.1,
            "whitened neighbours: {after} (before {before})"
        );
        let var = white.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / white.len() as f64;
        assert!((0.6..1.6).contains(&var), "variance {var}");
    }

    /// Stroke-to-background energy after the matrix over the same after the 9×9 kernel, both
    /// fitted to `references` and measured on `backgrounds` (fresh images of the same kind).
    fn matrix_over_kernel_gain(references: &[u8], backgrounds: &[u8]) -> f64 {
        let norm = identity_norm();
        let matrix = WhiteningMatrix::fit(references, shape(), &norm, 0.1).unwrap();
        let filter = WhiteningFilter::fit(references, shape(), &norm, 9, 0.1).unwrap();
        let backgrounds = normalised(backgrounds, &norm);
        let stroke: Vec<f32> = (0..SIDE * SIDE)
            .map(|i| if i % SIDE == SIDE / 2 { 0.5 } else { 0.0 })
            .collect();
        // Both see backgrounds centred on the reference mean (the matrix subtracts it itself).
        let centred: Vec<f32> = backgrounds
            .iter()
            .zip(matrix.mean.iter().cycle())
            .map(|(v, m)| v - m)
            .collect();
        let zero_mean = WhiteningMatrix {
            mean: vec![0.0; SIDE * SIDE],
            matrix: matrix.matrix.clone(),
        };
        let energy = |x: &[f32]| x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        let snr_matrix = energy(&zero_mean.apply(&stroke)) / energy(&zero_mean.apply(&centred));
        let snr_kernel =
            energy(&filter.apply(&stroke, shape())) / energy(&filter.apply(&centred, shape()));
        snr_matrix / snr_kernel
    }

    #[test]
    fn the_matrix_also_removes_background_structure_tied_to_the_position() {
        // On stationary backgrounds one row of the matrix does about what the matrix does; a
        // ramp tied to the position is what only the whole matrix can follow.
        let stationary =
            matrix_over_kernel_gain(&smooth_backgrounds(800, 6), &smooth_backgrounds(100, 7));
        let ramped =
            matrix_over_kernel_gain(&ramped_backgrounds(800, 6), &ramped_backgrounds(100, 7));
        assert!(
            ramped > 1.5 * stationary,
            "matrix over kernel: {ramped} with the ramp, {stationary} without"
        );
    }

    #[test]
    fn bad_matrix_settings_are_refused() {
        let norm = identity_norm();
        let refs = smooth_backgrounds(4, 5);
        for shrinkage in [0.0, f64::NAN] {
            let err = WhiteningMatrix::fit(&refs, shape(), &norm, shrinkage).unwrap_err();
            assert!(err.to_string().contains("whitening"), "{err}");
        }
        assert!(WhiteningMatrix::fit(&refs[..SIDE * SIDE], shape(), &norm, 1.0).is_err());
        let flat = vec![128u8; 4 * SIDE * SIDE];
        let err = WhiteningMatrix::fit(&flat, shape(), &norm, 1.0).unwrap_err();
        assert!(err.to_string().contains("no variation"), "{err}");
        let big = ImageShape::new(3, 64, 64);
        let err = WhiteningMatrix::fit(&vec![0u8; 2 * big.len()], big, &norm, 1.0).unwrap_err();
        assert!(
            err.to_string().contains("3x64x64") && err.to_string().contains("4096"),
            "{err}"
        );
    }
}
