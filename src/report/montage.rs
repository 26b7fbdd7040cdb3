//! Cluster montages: a grid of the images nearest a centroid, then a row of random members.

use image::{Rgb, RgbImage};

use crate::data::ImageShape;

/// Pixels between tiles, and between the nearest images and the random members.
const GAP: u32 = 2;
const SECTION_GAP: u32 = 10;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);

/// One C×H×W uint8 image (C = 1 or 3) as RGB, scaled up `scale` times (nearest neighbour, so
/// no pixel is invented).
fn tile(pixels: &[u8], shape: ImageShape, scale: u32) -> RgbImage {
    let (h, w) = (shape.height, shape.width);
    let plane = h * w;
    RgbImage::from_fn(w as u32 * scale, h as u32 * scale, |x, y| {
        let (x, y) = ((x / scale) as usize, (y / scale) as usize);
        let at = |c: usize| pixels[c * plane + y * w + x];
        if shape.channels >= 3 {
            Rgb([at(0), at(1), at(2)])
        } else {
            let v = at(0);
            Rgb([v, v, v])
        }
    })
}

/// The scale that makes a tile about 56 pixels wide (2× for 28×28 digits), at least 1.
pub fn scale_for(shape: ImageShape) -> u32 {
    (56 / shape.width.max(1)).clamp(1, 8) as u32
}

/// A grid of `nearest` (row-major, `columns` wide), then, after a wider gap, `random` in rows
/// of the same width. Each image is C×H×W uint8 of `shape`.
pub fn montage(nearest: &[&[u8]], random: &[&[u8]], shape: ImageShape, columns: usize) -> RgbImage {
    let scale = scale_for(shape);
    let (tw, th) = (shape.width as u32 * scale, shape.height as u32 * scale);
    let columns = columns.max(1) as u32;
    let rows_of = |n: usize| (n as u32).div_ceil(columns);
    let (top, bottom) = (rows_of(nearest.len()), rows_of(random.len()));
    let section = |rows: u32| rows * (th + GAP);
    let gap = if top > 0 && bottom > 0 {
        SECTION_GAP
    } else {
        0
    };
    let width = columns * (tw + GAP) + GAP;
    let height = (section(top) + gap + section(bottom) + GAP).max(th + 2 * GAP);
    let mut canvas = RgbImage::from_pixel(width, height, BACKGROUND);
    let mut place = |images: &[&[u8]], y0: u32| {
        for (i, pixels) in images.iter().enumerate() {
            let (col, row) = (i as u32 % columns, i as u32 / columns);
            let (x, y) = (GAP + col * (tw + GAP), y0 + GAP + row * (th + GAP));
            image::imageops::replace(&mut canvas, &tile(pixels, shape, scale), x.into(), y.into());
        }
    };
    place(nearest, 0);
    place(random, section(top) + gap);
    canvas
}
