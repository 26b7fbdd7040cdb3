//! Seeded, parallel data augmentation of uint8 C×H×W images into float batches (METHOD.md):
//! random resized crop, colour jitter, random grayscale; no flip (digits are not symmetric).
//! Each image draws from its own RNG stream, so results do not depend on thread scheduling.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

pub use crate::config::AugmentConfig;
use crate::data::ImageShape;
pub use crate::preprocess::Normalization;

/// Augments (or, with [`AugmentConfig::none`], only converts) a batch of images into normalised
/// floats, B×C×H×W. `stream` identifies the batch (e.g. epoch and step) so every call draws
/// fresh, reproducible randomness.
pub fn augment_batch(
    images: &[&[u8]],
    shape: ImageShape,
    config: &AugmentConfig,
    norm: &Normalization,
    seed: u64,
    stream: u64,
) -> Vec<f32> {
    augment_batch_with_overlays(images, None, shape, config, norm, seed, stream)
}

/// As [`augment_batch`], with one background-only image per image for the reference overlay.
pub fn augment_batch_with_overlays(
    images: &[&[u8]],
    overlays: Option<&[&[u8]]>,
    shape: ImageShape,
    config: &AugmentConfig,
    norm: &Normalization,
    seed: u64,
    stream: u64,
) -> Vec<f32> {
    let mut out = vec![0f32; images.len() * shape.len()];
    out.par_chunks_mut(shape.len())
        .zip(images.par_iter())
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            rng.set_stream(i as u64);
            augment_one(src, shape, config, &mut rng, dst);
            if let Some(overlay) = overlays.and_then(|o| o.get(i)) {
                if config.overlay_p > 0.0 && rng.random::<f32>() < config.overlay_p {
                    let (lo, hi) = config.overlay_strength;
                    let gamma = if hi > lo {
                        rng.random_range(lo..=hi)
                    } else {
                        lo
                    };
                    add_overlay(dst, overlay, shape, gamma);
                }
            }
            norm.apply(dst, shape);
        });
    out
}

/// x ← clip(x + γ·(r − mean(r))) per channel: adds a background's texture, not its brightness.
fn add_overlay(dst: &mut [f32], overlay: &[u8], shape: ImageShape, gamma: f32) {
    let plane = shape.height * shape.width;
    for c in 0..shape.channels {
        let r = &overlay[c * plane..(c + 1) * plane];
        let mean = r.iter().map(|&v| v as f32).sum::<f32>() / plane as f32;
        for (x, &v) in dst[c * plane..(c + 1) * plane].iter_mut().zip(r) {
            *x = (*x + gamma * (v as f32 - mean) / 255.0).clamp(0.0, 1.0);
        }
    }
}

/// One image into `dst` as floats in [0, 1].
fn augment_one(
    src: &[u8],
    shape: ImageShape,
    config: &AugmentConfig,
    rng: &mut ChaCha8Rng,
    dst: &mut [f32],
) {
    let (h, w) = (shape.height, shape.width);
    let (mut top, mut left, ch, cw) = random_crop(h, w, config, rng);
    if config.translate > 0 {
        // In source pixels, scaled by the crop: the view moves by up to `translate` pixels.
        let t = config.translate as i64;
        top += rng.random_range(-t..=t) as f32 * ch / h as f32;
        left += rng.random_range(-t..=t) as f32 * cw / w as f32;
    }
    let plane = h * w;
    for c in 0..shape.channels {
        resize_bilinear(
            &src[c * plane..(c + 1) * plane],
            w,
            (top, left, ch, cw),
            &mut dst[c * plane..(c + 1) * plane],
            h,
            w,
        );
    }
    // Colour jitter, fixed order: brightness, contrast, saturation.
    if config.brightness > 0.0 {
        let b = rng
            .random_range(1.0 - config.brightness..=1.0 + config.brightness)
            .max(0.0);
        dst.iter_mut().for_each(|v| *v = (*v * b).clamp(0.0, 1.0));
    }
    if config.contrast > 0.0 {
        let c = rng
            .random_range(1.0 - config.contrast..=1.0 + config.contrast)
            .max(0.0);
        let mean = gray_mean(dst, shape);
        dst.iter_mut()
            .for_each(|v| *v = ((*v - mean) * c + mean).clamp(0.0, 1.0));
    }
    if shape.channels == 3 {
        if config.saturation > 0.0 {
            let s = rng
                .random_range(1.0 - config.saturation..=1.0 + config.saturation)
                .max(0.0);
            blend_with_gray(dst, plane, s);
        }
        if config.grayscale_p > 0.0 && rng.random::<f32>() < config.grayscale_p {
            blend_with_gray(dst, plane, 0.0);
        }
    }
}

fn gray_mean(x: &[f32], shape: ImageShape) -> f32 {
    let plane = shape.height * shape.width;
    if shape.channels == 3 {
        let sum: f32 = (0..plane)
            .map(|i| 0.299 * x[i] + 0.587 * x[plane + i] + 0.114 * x[2 * plane + i])
            .sum();
        sum / plane as f32
    } else {
        x.iter().sum::<f32>() / x.len() as f32
    }
}

/// x ← gray + s·(x − gray), per pixel (s = 0 gives grayscale).
fn blend_with_gray(x: &mut [f32], plane: usize, s: f32) {
    for i in 0..plane {
        let g = 0.299 * x[i] + 0.587 * x[plane + i] + 0.114 * x[2 * plane + i];
        for c in 0..3 {
            let v = &mut x[c * plane + i];
            *v = (g + s * (*v - g)).clamp(0.0, 1.0);
        }
    }
}

/// torchvision's RandomResizedCrop parameters: (top, left, height, width) in pixels.
fn random_crop(
    h: usize,
    w: usize,
    config: &AugmentConfig,
    rng: &mut ChaCha8Rng,
) -> (f32, f32, f32, f32) {
    let area = (h * w) as f32;
    let (smin, smax) = config.crop_scale;
    let (rmin, rmax) = config.crop_ratio;
    if smin >= 1.0 && rmin >= 1.0 && rmax <= 1.0 {
        return (0.0, 0.0, h as f32, w as f32);
    }
    for _ in 0..10 {
        let target = area * rng.random_range(smin..=smax);
        let log_ratio = rng.random_range(rmin.ln()..=rmax.ln());
        let ratio = log_ratio.exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw >= 1.0 && ch >= 1.0 && cw <= w as f32 && ch <= h as f32 {
            let top = rng.random_range(0..=(h - ch as usize)) as f32;
            let left = rng.random_range(0..=(w - cw as usize)) as f32;
            return (top, left, ch, cw);
        }
    }
    (0.0, 0.0, h as f32, w as f32)
}

/// Bilinear resize (half-pixel centres) of a crop of a uint8 plane into a float plane in [0, 1].
fn resize_bilinear(
    src: &[u8],
    src_w: usize,
    (top, left, ch, cw): (f32, f32, f32, f32),
    dst: &mut [f32],
    out_h: usize,
    out_w: usize,
) {
    let src_h = src.len() / src_w;
    let sy = ch / out_h as f32;
    let sx = cw / out_w as f32;
    let at = |y: usize, x: usize| src[y * src_w + x] as f32 / 255.0;
    for y in 0..out_h {
        let fy = (top + (y as f32 + 0.5) * sy - 0.5).clamp(0.0, (src_h - 1) as f32);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(src_h - 1);
        let wy = fy - y0 as f32;
        for x in 0..out_w {
            let fx = (left + (x as f32 + 0.5) * sx - 0.5).clamp(0.0, (src_w - 1) as f32);
            let x0 = fx.floor() as usize;
            let x1 = (x0 + 1).min(src_w - 1);
            let wx = fx - x0 as f32;
            let top_row = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
            let bottom_row = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
            dst[y * out_w + x] = top_row * (1.0 - wy) + bottom_row * wy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ImageShape {
        ImageShape::new(1, 8, 8)
    }

    #[test]
    fn no_augmentation_only_normalises() {
        let img: Vec<u8> = (0..64).map(|i| (i * 4) as u8).collect();
        let norm = Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let out = augment_batch(&[&img], shape(), &AugmentConfig::none(), &norm, 1, 0);
        for (o, &v) in out.iter().zip(&img) {
            assert!((o - (v as f32 / 255.0 - 0.5) / 0.25).abs() < 1e-5);
        }
    }

    #[test]
    fn augmentation_is_reproducible_and_varies_with_the_stream() {
        let img: Vec<u8> = (0..64).map(|i| (i * 4) as u8).collect();
        let norm = Normalization {
            mean: vec![0.0],
            std: vec![1.0],
        };
        let cfg = AugmentConfig::default();
        let a = augment_batch(&[&img, &img], shape(), &cfg, &norm, 9, 3);
        let b = augment_batch(&[&img, &img], shape(), &cfg, &norm, 9, 3);
        let c = augment_batch(&[&img, &img], shape(), &cfg, &norm, 9, 4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Two images of one batch get different crops.
        assert_ne!(a[..64], a[64..]);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn translation_moves_the_image_by_whole_pixels_and_repeats_the_border() {
        // One bright pixel in the middle of a dark 8x8 image.
        let mut img = vec![0u8; 64];
        img[4 * 8 + 4] = 255;
        let norm = Normalization {
            mean: vec![0.0],
            std: vec![1.0],
        };
        let cfg = AugmentConfig {
            translate: 2,
            ..AugmentConfig::none()
        };
        let mut seen = std::collections::BTreeSet::new();
        for stream in 0..200 {
            let out = augment_batch(&[&img], shape(), &cfg, &norm, 5, stream);
            // Still exactly one bright pixel: whole-pixel moves, nothing blurred or lost.
            let bright: Vec<usize> = (0..64).filter(|&i| out[i] > 0.5).collect();
            assert_eq!(bright.len(), 1, "{out:?}");
            assert!((out[bright[0]] - 1.0).abs() < 1e-6);
            let (y, x) = (bright[0] / 8, bright[0] % 8);
            assert!((2..=6).contains(&y) && (2..=6).contains(&x), "({y}, {x})");
            seen.insert((y, x));
        }
        // Every offset in [-2, 2]^2 occurs.
        assert_eq!(seen.len(), 25);
        // Without translation the same settings leave the image where it was.
        let still = augment_batch(&[&img], shape(), &AugmentConfig::none(), &norm, 5, 0);
        assert!((still[4 * 8 + 4] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn normalization_fit_matches_the_pixel_statistics() {
        let pixels = [0u8, 255, 0, 255];
        let n = Normalization::fit(&pixels, ImageShape::new(1, 2, 2));
        assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.5).abs() < 1e-6);
    }
}
