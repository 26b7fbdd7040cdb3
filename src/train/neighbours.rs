//! Neighbour positives: for each target image, its nearest neighbours in the reference-whitened
//! pixel space (reference whitening, then PCA, then cosine similarity). A view of a neighbour
//! shares the image's object class more often than not but never its background crop, so a
//! contrast that pairs an image with a neighbour cannot be won by recognising the background:
//! it rewards exactly what the two images share. With views of the image itself as positives,
//! instance discrimination on these datasets learns each image's background first.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::ImageSet;
use crate::baselines::WHITENING_SHRINKAGE;
use crate::baselines::{
    align_by_templates, normalised_principal_components, reference_whitened_pixels,
    reference_whitening, ShiftKMeans,
};
use crate::error::{Error, Result};

/// Each target image's `k` nearest neighbours (itself excluded), nearest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbours {
    k: usize,
    indices: Vec<u32>,
}

impl Neighbours {
    /// Neighbours in the reference-whitened pixel space, reduced to `components` principal
    /// components and L2-normalised.
    pub fn in_whitened_pixels(
        target: &ImageSet,
        reference: &ImageSet,
        k: usize,
        components: usize,
    ) -> Result<Self> {
        let d = target.shape.len();
        let whitened = reference_whitening(
            &target.unit_pixels(),
            &reference.unit_pixels(),
            d,
            WHITENING_SHRINKAGE,
        )?;
        Self::in_principal_components(&whitened, target.len(), d, components, k)
    }

    /// Neighbours among windows of the reference-whitened pixels aligned by shift-invariant
    /// k-means ([`align_by_templates`] with `clusters` templates of `window × window`), reduced
    /// to `components` principal components and L2-normalised. When objects move within the
    /// image, two images' pixels compare positions that do not correspond; their aligned
    /// windows do. Single-channel images only.
    pub fn in_aligned_windows(
        target: &ImageSet,
        reference: &ImageSet,
        k: usize,
        components: usize,
        (window, clusters, seed): (usize, usize, u64),
    ) -> Result<Self> {
        let shape = target.shape;
        if shape.channels != 1 {
            return Err(Error::Invalid(format!(
                "neighbour_align_window needs single-channel images, got {} channels",
                shape.channels
            )));
        }
        let d = shape.len();
        let whitened = reference_whitened_pixels(
            &target.unit_pixels(),
            &reference.unit_pixels(),
            d,
            WHITENING_SHRINKAGE,
        )?;
        let settings = ShiftKMeans::suite(window, clusters, seed);
        let aligned = align_by_templates(
            &whitened,
            target.len(),
            (shape.height, shape.width),
            settings,
        )?;
        Self::in_principal_components(
            &aligned.windows,
            target.len(),
            window * window,
            components,
            k,
        )
    }

    /// Each image's `k` nearest images in the raw pixels, reduced to `components` principal
    /// components and L2-normalised. Where the background dominates the pixels, these are
    /// mostly images on overlapping crops of the same background photograph: they share the
    /// image's background more often than its object, so they make poor positives (see
    /// [`Neighbours::without`]).
    pub fn in_raw_pixels(target: &ImageSet, k: usize, components: usize) -> Result<Self> {
        let pixels = target.unit_pixels();
        Self::in_principal_components(&pixels, target.len(), target.shape.len(), components, k)
    }

    /// Neighbours among `n` rows of `d` values, reduced to `components` principal components
    /// (at most `d` and `n`) and L2-normalised.
    fn in_principal_components(
        rows: &[f32],
        n: usize,
        d: usize,
        components: usize,
        k: usize,
    ) -> Result<Self> {
        let (reduced, components) = normalised_principal_components(rows, n, d, components)?;
        Self::of_rows(&reduced, components, k)
    }

    /// The first `k` of each image's neighbours that are not among its `excluded` ones. `self`
    /// must hold at least `k + excluded.k()` neighbours per image, so that `k` always remain.
    pub fn without(&self, excluded: &Neighbours, k: usize) -> Result<Self> {
        let n = self.indices.len() / self.k.max(1);
        if k == 0 || self.k < k + excluded.k || excluded.indices.len() != n * excluded.k {
            return Err(Error::Invalid(format!(
                "internal: {} neighbours per image cannot leave {k} after excluding {} of {} images",
                self.k,
                excluded.k,
                excluded.indices.len() / excluded.k.max(1)
            )));
        }
        let indices = (0..n)
            .flat_map(|i| {
                let skip = excluded.of(i);
                self.of(i)
                    .iter()
                    .copied()
                    .filter(move |j| !skip.contains(j))
                    .take(k)
            })
            .collect();
        Ok(Self { k, indices })
    }

    /// The `k` most cosine-similar rows of each of the (L2-normalised) `rows`.
    pub fn of_rows(rows: &[f32], d: usize, k: usize) -> Result<Self> {
        let n = rows.len() / d.max(1);
        if k == 0 || k >= n {
            return Err(Error::Invalid(format!(
                "neighbour_positives = {k}: must be between 1 and the number of target rows - 1 ({})",
                n.saturating_sub(1)
            )));
        }
        let indices: Vec<u32> = (0..n)
            .into_par_iter()
            .flat_map_iter(|i| {
                let row = &rows[i * d..(i + 1) * d];
                let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
                for (j, other) in rows.chunks_exact(d).enumerate() {
                    if j == i {
                        continue;
                    }
                    let s: f32 = row.iter().zip(other).map(|(a, b)| a * b).sum();
                    // Keep the k best, most similar first; ties go to the lower index.
                    if best.len() < k || s > best[k - 1].0 {
                        let at = best.partition_point(|&(t, _)| t >= s);
                        best.insert(at, (s, j as u32));
                        best.truncate(k);
                    }
                }
                best.into_iter().map(|(_, j)| j)
            })
            .collect();
        Ok(Self { k, indices })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The neighbours of image `i`, nearest first.
    pub fn of(&self, i: usize) -> &[u32] {
        &self.indices[i * self.k..(i + 1) * self.k]
    }

    /// One of image `i`'s neighbours, uniformly.
    pub fn pick(&self, i: usize, rng: &mut ChaCha8Rng) -> usize {
        self.of(i)[rng.random_range(0..self.k)] as usize
    }

    /// Fraction of neighbours that share their image's label (labels are read for this
    /// diagnostic only, never for training).
    pub fn purity(&self, labels: &[i64]) -> f64 {
        let same = (0..labels.len())
            .map(|i| {
                self.of(i)
                    .iter()
                    .filter(|&&j| labels[j as usize] == labels[i])
                    .count()
            })
            .sum::<usize>();
        same as f64 / (labels.len() * self.k).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Points on the unit circle at angles 0, 10, 25, 90, 100 degrees.
    fn circle_points() -> Vec<f32> {
        [0f32, 10.0, 25.0, 90.0, 100.0]
            .iter()
            .flat_map(|a| {
                let r = a.to_radians();
                [r.cos(), r.sin()]
            })
            .collect()
    }

    #[test]
    fn nearest_rows_come_first_and_never_the_row_itself() {
        let rows = circle_points();
        let nb = Neighbours::of_rows(&rows, 2, 2).unwrap();
        assert_eq!(nb.of(0), &[1, 2]);
        assert_eq!(nb.of(1), &[0, 2]);
        assert_eq!(nb.of(2), &[1, 0]);
        assert_eq!(nb.of(3), &[4, 2]);
        assert_eq!(nb.of(4), &[3, 2]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..50 {
            assert!([1, 2].contains(&nb.pick(0, &mut rng)));
        }
        // Labels {0,0,0,1,1}: 8 of the 10 neighbour slots share their image's label (rows 3
        // and 4 each have row 2 as a neighbour).
        assert!((nb.purity(&[0, 0, 0, 1, 1]) - 0.8).abs() < 1e-12);
    }

    /// `n` single-channel `side × side` images: uniform noise, plus a bright 5×5 plus or ring
    /// (alternating labels) at a random offset; and `n` noise-only references.
    fn moving_pattern_sets(n: usize, side: usize) -> (ImageSet, ImageSet, Vec<i64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let shape = crate::data::ImageShape::new(1, side, side);
        let noise = |rng: &mut ChaCha8Rng| -> Vec<u8> {
            (0..side * side)
                .map(|_| rng.random_range(60..=140))
                .collect()
        };
        let (mut target, mut reference, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let label = (i % 2) as i64;
            let mut image = noise(&mut rng);
            let (top, left) = (
                rng.random_range(0..=side - 5),
                rng.random_range(0..=side - 5),
            );
            for r in 0..5 {
                for c in 0..5 {
                    let on = if label == 0 {
                        r == 2 || c == 2
                    } else {
                        r == 0 || r == 4 || c == 0 || c == 4
                    };
                    if on {
                        let p = &mut image[(top + r) * side + left + c];
                        *p = p.saturating_add(90);
                    }
                }
            }
            target.extend(image);
            reference.extend(noise(&mut rng));
            labels.push(label);
        }
        let set = |pixels| ImageSet {
            shape,
            ids: (0..n as i64).collect(),
            labels: labels.iter().map(|&l| Some(l)).collect(),
            pixels,
        };
        (set(target), set(reference), labels)
    }

    #[test]
    fn aligned_windows_give_purer_neighbours_when_objects_move() {
        let (target, reference, labels) = moving_pattern_sets(300, 12);
        let pixels = Neighbours::in_whitened_pixels(&target, &reference, 5, 16).unwrap();
        let aligned =
            Neighbours::in_aligned_windows(&target, &reference, 5, 16, (5, 2, 0)).unwrap();
        let (p, a) = (pixels.purity(&labels), aligned.purity(&labels));
        assert!(a > 0.9, "aligned-window purity {a}");
        assert!(a > p + 0.1, "aligned {a} against whitened pixels {p}");
        let window = Neighbours::in_aligned_windows(&target, &reference, 5, 16, (13, 2, 0));
        assert!(window.unwrap_err().to_string().contains("window 13"));
    }

    #[test]
    fn excluded_neighbours_are_skipped_and_the_next_ones_take_their_place() {
        let rows = circle_points();
        let search = Neighbours::of_rows(&rows, 2, 3).unwrap();
        // Row 0's nearest are 1, 2, 3; excluding 1 leaves 2 and 3. Row 3's are 4, 2, 1;
        // excluding 0 (not among them) keeps 4 and 2.
        let excluded = Neighbours {
            k: 1,
            indices: vec![1, 0, 0, 0, 3],
        };
        let kept = search.without(&excluded, 2).unwrap();
        assert_eq!(kept.of(0), &[2, 3]);
        assert_eq!(kept.of(3), &[4, 2]);
        assert_eq!(kept.of(4), &[2, 1]);
        assert!(search.without(&excluded, 3).is_err());
    }

    /// Images on overlapping crops of one background are each other's nearest raw-pixel
    /// neighbours; excluding them leaves the neighbours that share the object.
    #[test]
    fn raw_pixel_twins_are_excluded_from_the_positives() {
        let side = 8;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let backgrounds: Vec<Vec<u8>> = (0..20)
            .map(|_| {
                (0..side * side)
                    .map(|_| rng.random_range(40..=200))
                    .collect()
            })
            .collect();
        // 40 images: background b = i / 2 (twins share it), object = label on a faint stripe.
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let label = (i % 2) as i64;
            pixels.extend(backgrounds[i / 2].iter().enumerate().map(|(p, &v)| {
                let stripe = if label == 0 {
                    p / side == 3
                } else {
                    p % side == 3
                };
                v.saturating_add(if stripe { 20 } else { 0 })
            }));
            labels.push(label);
        }
        let shape = crate::data::ImageShape::new(1, side, side);
        let target = ImageSet {
            shape,
            ids: (0..40).collect(),
            labels: labels.iter().map(|&l| Some(l)).collect(),
            pixels,
        };
        let raw = Neighbours::in_raw_pixels(&target, 1, 16).unwrap();
        for i in 0..40 {
            assert_eq!(raw.of(i), &[(i ^ 1) as u32], "row {i}'s twin");
        }
        assert_eq!(raw.purity(&labels), 0.0);
    }

    #[test]
    fn k_must_leave_room_for_neighbours() {
        let rows = vec![1f32, 0.0, 0.0, 1.0];
        assert!(Neighbours::of_rows(&rows, 2, 0).is_err());
        let err = Neighbours::of_rows(&rows, 2, 2).unwrap_err().to_string();
        assert!(err.contains("neighbour_positives"), "{err}");
        assert!(Neighbours::of_rows(&rows, 2, 1).is_ok());
    }
}
