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
use crate::baselines::{pca, reference_whitening};
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
        let floats =
            |set: &ImageSet| -> Vec<f32> { set.pixels.iter().map(|&v| v as f32 / 255.0).collect() };
        let whitened =
            reference_whitening(&floats(target), &floats(reference), d, WHITENING_SHRINKAGE)?;
        let components = components.min(d).min(target.len());
        let mut reduced = pca(&whitened, target.len(), d, components)?.embedding;
        normalize_rows(&mut reduced, components);
        Self::of_rows(&reduced, components, k)
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

fn normalize_rows(x: &mut [f32], d: usize) {
    x.par_chunks_exact_mut(d).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn nearest_rows_come_first_and_never_the_row_itself() {
        // Points on the unit circle at angles 0, 10, 25, 90, 100 degrees.
        let rows: Vec<f32> = [0f32, 10.0, 25.0, 90.0, 100.0]
            .iter()
            .flat_map(|a| {
                let r = a.to_radians();
                [r.cos(), r.sin()]
            })
            .collect();
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

    #[test]
    fn k_must_leave_room_for_neighbours() {
        let rows = vec![1f32, 0.0, 0.0, 1.0];
        assert!(Neighbours::of_rows(&rows, 2, 0).is_err());
        let err = Neighbours::of_rows(&rows, 2, 2).unwrap_err().to_string();
        assert!(err.contains("neighbour_positives"), "{err}");
        assert!(Neighbours::of_rows(&rows, 2, 1).is_ok());
    }
}
