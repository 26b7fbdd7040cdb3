//! Shift-invariant k-means (transformation-invariant clustering, Frey & Jojic 2003) on images:
//! K templates of `window × window` pixels; each image takes the template and offset of the
//! highest normalised correlation over every `window × window` window of it, and each template
//! becomes the normalised mean of the windows assigned to it. A template averages many windows,
//! so noise that two images do not share (the background that whitening leaves) averages out of
//! it, where comparing two images with each other keeps the noise of both.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::BaselineError;

/// Settings of [`align_by_templates`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShiftKMeans {
    /// Side of the square templates and windows, at most the image's smaller side.
    pub window: usize,
    /// Number of templates.
    pub clusters: usize,
    /// Assignment and update rounds per restart.
    pub iterations: usize,
    /// Restarts from different k-means++ seedings; the one with the highest summed correlation
    /// wins (the objective, which reads no labels).
    pub restarts: usize,
    /// Rounds of spherical k-means on the windows at the start offsets (held there) between the
    /// seeding and the search. The search then starts from templates that average many
    /// windows: single seeded windows carry their own noise, and the first search rounds move
    /// the offsets toward it.
    pub start_rounds: usize,
    pub seed: u64,
}

impl ShiftKMeans {
    /// The settings salient uses everywhere it aligns (the `tic` baseline, aligned-window
    /// neighbours, the alignment front): 15 rounds per restart (the prototype's objective had
    /// settled by then: docs/research/salient-encoder.md) and 3 restarts, of which the highest
    /// summed correlation wins.
    pub fn suite(window: usize, clusters: usize, seed: u64) -> Self {
        Self {
            window,
            clusters,
            iterations: 15,
            restarts: 3,
            start_rounds: 0,
            seed,
        }
    }

    /// [`ShiftKMeans::suite`] for a search near located starts: 20 rounds of k-means on the
    /// start windows before it, since a start is already close to the object.
    pub fn located(window: usize, clusters: usize, seed: u64) -> Self {
        Self {
            start_rounds: 20,
            ..Self::suite(window, clusters, seed)
        }
    }
}

/// The winning restart of [`align_by_templates`].
#[derive(Clone, Debug, PartialEq)]
pub struct Alignment {
    /// Each image's window at its best offset, L2-normalised, `n × window²` row-major.
    pub windows: Vec<f32>,
    /// Each image's template.
    pub labels: Vec<usize>,
    /// Each image's best offset, (row, column) of the window's top-left pixel.
    pub offsets: Vec<(usize, usize)>,
    /// The unit-norm templates, `clusters × window²` row-major.
    pub templates: Vec<f32>,
    /// Sum over the images of their best normalised correlation.
    pub objective: f64,
}

/// One image's best (template, offset index, normalised correlation).
type Best = (usize, usize, f32);

/// Where each image's window may lie: anywhere, or within `radius` pixels (rows and columns)
/// of that image's start offset, (row, column) of the window's top-left pixel.
#[derive(Clone, Copy, Debug)]
pub enum SearchRegion<'a> {
    Everywhere,
    Near {
        starts: &'a [(usize, usize)],
        radius: usize,
    },
}

impl SearchRegion<'_> {
    /// Whether `offset` is in image `i`'s region.
    fn allows(&self, i: usize, (row, col): (usize, usize)) -> bool {
        match *self {
            SearchRegion::Everywhere => true,
            SearchRegion::Near { starts, radius } => {
                let (r0, c0) = starts[i];
                row.abs_diff(r0) <= radius && col.abs_diff(c0) <= radius
            }
        }
    }

    fn check(&self, n: usize, g: Geometry) -> Result<(), BaselineError> {
        if let SearchRegion::Near { starts, .. } = *self {
            let (rows, cols) = (g.h - g.window + 1, g.w - g.window + 1);
            if starts.len() != n {
                return Err(BaselineError::ShapeMismatch {
                    which: "start offsets",
                    len: starts.len(),
                    n,
                    d: 1,
                });
            }
            if let Some(row) = starts.iter().position(|&(r, c)| r >= rows || c >= cols) {
                return Err(BaselineError::StartOutside {
                    row,
                    start: starts[row],
                    rows,
                    cols,
                });
            }
        }
        Ok(())
    }
}

/// Shift-invariant k-means of `n` single-channel `h × w` images, row-major in `images`.
pub fn align_by_templates(
    images: &[f32],
    n: usize,
    (h, w): (usize, usize),
    settings: ShiftKMeans,
) -> Result<Alignment, BaselineError> {
    align_within(images, n, (h, w), settings, SearchRegion::Everywhere)
}

/// Shift-invariant k-means with each image's window limited to `region`. Templates are seeded
/// (k-means++) on the windows at the images' start offsets, or at the centre when the region is
/// everywhere.
pub fn align_within(
    images: &[f32],
    n: usize,
    (h, w): (usize, usize),
    settings: ShiftKMeans,
    region: SearchRegion,
) -> Result<Alignment, BaselineError> {
    let ShiftKMeans {
        window,
        clusters,
        iterations,
        restarts,
        start_rounds,
        seed,
    } = settings;
    let geometry = Geometry::checked(images, n, (h, w), window)?;
    region.check(n, geometry)?;
    let d = h * w;
    if clusters == 0 || clusters > n {
        return Err(BaselineError::InvalidClusters { clusters, n });
    }
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(BaselineError::NonFinite {
            which: "images",
            row: i / d,
            col: i % d,
        });
    }
    let starts = start_offsets(region, n, geometry);
    let at_starts = SearchRegion::Near {
        starts: &starts,
        radius: 0,
    };
    let mut best: Option<(f64, Vec<Best>, Vec<Vec<f32>>)> = None;
    for restart in 0..restarts.max(1) {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(restart as u64));
        let mut templates = seed_templates(images, n, geometry, clusters, &starts, &mut rng);
        for _ in 0..start_rounds {
            let held = assign(images, geometry, &templates, at_starts);
            templates = update(images, geometry, &held, clusters);
        }
        let mut assigned = assign(images, geometry, &templates, region);
        for _ in 0..iterations {
            templates = update(images, geometry, &assigned, clusters);
            assigned = assign(images, geometry, &templates, region);
        }
        let objective: f64 = assigned.iter().map(|&(_, _, s)| f64::from(s)).sum();
        tracing::info!(restart, objective, "shift-invariant k-means restart done");
        if best.as_ref().is_none_or(|(o, _, _)| objective > *o) {
            best = Some((objective, assigned, templates));
        }
    }
    let (objective, assigned, templates) = best.expect("at least one restart ran");
    let mut windows = vec![0.0f32; n * window * window];
    windows
        .par_chunks_exact_mut(window * window)
        .zip(images.par_chunks_exact(d))
        .zip(assigned.par_iter())
        .for_each(|((out, image), &(_, offset, _))| {
            geometry.copy_window(image, offset, out);
            normalise(out);
        });
    Ok(Alignment {
        windows,
        labels: assigned.iter().map(|&(k, _, _)| k).collect(),
        offsets: assigned
            .iter()
            .map(|&(_, o, _)| geometry.offset(o))
            .collect(),
        templates: templates.concat(),
        objective,
    })
}

/// Each image's best offset, (row, column) of the window's top-left pixel, against fixed
/// unit-norm `templates` (`clusters × window²` row-major, as [`Alignment::templates`]): the
/// offset of the highest normalised correlation with any template. Ties go to the first offset
/// in row-major order.
pub fn best_offsets(
    images: &[f32],
    n: usize,
    (h, w): (usize, usize),
    window: usize,
    templates: &[f32],
) -> Result<Vec<(usize, usize)>, BaselineError> {
    best_offsets_within(
        images,
        n,
        (h, w),
        window,
        templates,
        SearchRegion::Everywhere,
    )
}

/// [`best_offsets`] with each image's window limited to `region`.
pub fn best_offsets_within(
    images: &[f32],
    n: usize,
    (h, w): (usize, usize),
    window: usize,
    templates: &[f32],
    region: SearchRegion,
) -> Result<Vec<(usize, usize)>, BaselineError> {
    let geometry = Geometry::checked(images, n, (h, w), window)?;
    region.check(n, geometry)?;
    let len = window * window;
    if templates.is_empty() || !templates.len().is_multiple_of(len) {
        return Err(BaselineError::ShapeMismatch {
            which: "templates",
            len: templates.len(),
            n: templates.len() / len,
            d: len,
        });
    }
    let templates: Vec<Vec<f32>> = templates.chunks_exact(len).map(<[f32]>::to_vec).collect();
    Ok(assign(images, geometry, &templates, region)
        .into_iter()
        .map(|(_, o, _)| geometry.offset(o))
        .collect())
}

#[derive(Clone, Copy, Debug)]
struct Geometry {
    h: usize,
    w: usize,
    window: usize,
}

impl Geometry {
    /// The geometry of `n` images of `h × w` pixels, row-major in `images`, with windows of
    /// side `window`, after checking that the three agree.
    fn checked(
        images: &[f32],
        n: usize,
        (h, w): (usize, usize),
        window: usize,
    ) -> Result<Self, BaselineError> {
        let d = h * w;
        if d == 0 {
            return Err(BaselineError::ZeroDimension);
        }
        if images.len() != n * d {
            return Err(BaselineError::ShapeMismatch {
                which: "images",
                len: images.len(),
                n,
                d,
            });
        }
        if window == 0 || window > h.min(w) {
            return Err(BaselineError::InvalidWindow { window, h, w });
        }
        Ok(Self { h, w, window })
    }

    fn offsets(&self) -> usize {
        (self.h - self.window + 1) * (self.w - self.window + 1)
    }

    fn offset(&self, index: usize) -> (usize, usize) {
        let across = self.w - self.window + 1;
        (index / across, index % across)
    }

    fn copy_window(&self, image: &[f32], index: usize, out: &mut [f32]) {
        let (top, left) = self.offset(index);
        for (r, row) in out.chunks_exact_mut(self.window).enumerate() {
            let start = (top + r) * self.w + left;
            row.copy_from_slice(&image[start..start + self.window]);
        }
    }
}

/// Scales `v` to unit length (zeros stay zero).
pub(super) fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Dot product with eight independent sums, which the compiler vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Each image's best template and offset in its region by normalised correlation (templates
/// unit-norm).
fn assign(images: &[f32], g: Geometry, templates: &[Vec<f32>], region: SearchRegion) -> Vec<Best> {
    let d = g.h * g.w;
    images
        .par_chunks_exact(d)
        .enumerate()
        .map(|(i, image)| {
            let mut window = vec![0.0f32; g.window * g.window];
            let mut first_allowed = None;
            let mut best = (0, 0, f32::NEG_INFINITY);
            for o in 0..g.offsets() {
                if !region.allows(i, g.offset(o)) {
                    continue;
                }
                first_allowed.get_or_insert(o);
                g.copy_window(image, o, &mut window);
                let norm = window.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm == 0.0 {
                    continue;
                }
                for (k, t) in templates.iter().enumerate() {
                    let s = dot(&window, t) / norm;
                    if s > best.2 {
                        best = (k, o, s);
                    }
                }
            }
            if best.2 == f32::NEG_INFINITY {
                // All-zero windows: every one correlates 0, and the first in the region wins.
                best = (0, first_allowed.unwrap_or(0), 0.0);
            }
            best
        })
        .collect()
}

/// Each template: the normalised mean of its images' unit windows. A template no image chose
/// takes the worst-fitting image's window, so k templates stay in use.
fn update(images: &[f32], g: Geometry, assigned: &[Best], clusters: usize) -> Vec<Vec<f32>> {
    let d = g.h * g.w;
    let len = g.window * g.window;
    let mut sums = vec![vec![0.0f32; len]; clusters];
    let mut counts = vec![0usize; clusters];
    let mut window = vec![0.0f32; len];
    for (image, &(k, o, _)) in images.chunks_exact(d).zip(assigned) {
        g.copy_window(image, o, &mut window);
        normalise(&mut window);
        sums[k].iter_mut().zip(&window).for_each(|(s, v)| *s += v);
        counts[k] += 1;
    }
    let mut by_fit: Vec<usize> = (0..assigned.len()).collect();
    by_fit.sort_by(|&a, &b| assigned[a].2.total_cmp(&assigned[b].2));
    let mut worst = by_fit.into_iter();
    for (k, sum) in sums.iter_mut().enumerate() {
        if counts[k] == 0 {
            if let Some(i) = worst.next() {
                g.copy_window(&images[i * d..(i + 1) * d], assigned[i].1, sum);
            }
        }
        normalise(sum);
    }
    sums
}

/// Each image's start offset: its region's start, or the centre when the region is everywhere.
fn start_offsets(region: SearchRegion, n: usize, g: Geometry) -> Vec<(usize, usize)> {
    match region {
        SearchRegion::Everywhere => vec![((g.h - g.window) / 2, (g.w - g.window) / 2); n],
        SearchRegion::Near { starts, .. } => starts.to_vec(),
    }
}

/// k-means++ seeding (cosine distance) on each image's window at its start offset.
fn seed_templates(
    images: &[f32],
    n: usize,
    g: Geometry,
    clusters: usize,
    starts: &[(usize, usize)],
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<f32>> {
    let d = g.h * g.w;
    let across = g.w - g.window + 1;
    let start = |i: usize| starts[i].0 * across + starts[i].1;
    let centres: Vec<Vec<f32>> = images
        .par_chunks_exact(d)
        .enumerate()
        .map(|(i, image)| {
            let mut v = vec![0.0f32; g.window * g.window];
            g.copy_window(image, start(i), &mut v);
            normalise(&mut v);
            v
        })
        .collect();
    let mut templates = vec![centres[rng.random_range(0..n)].clone()];
    let mut distance: Vec<f32> = centres
        .iter()
        .map(|c| (1.0 - dot(c, &templates[0])).max(0.0))
        .collect();
    while templates.len() < clusters {
        let total: f64 = distance.iter().map(|&v| f64::from(v)).sum();
        let pick = if total > 0.0 {
            let mut r = rng.random::<f64>() * total;
            distance
                .iter()
                .position(|&v| {
                    r -= f64::from(v);
                    r <= 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.random_range(0..n)
        };
        let t = centres[pick].clone();
        distance
            .iter_mut()
            .zip(&centres)
            .for_each(|(dist, c)| *dist = dist.min((1.0 - dot(c, &t)).max(0.0)));
        templates.push(t);
    }
    templates
}
