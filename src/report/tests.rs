use super::*;

#[test]
fn the_montage_puts_the_nearest_first_then_the_random_members_below() {
    let shape = ImageShape::new(1, 4, 4);
    let dark = vec![10u8; 16];
    let light = vec![200u8; 16];
    let nearest: Vec<&[u8]> = vec![&dark; 3];
    let random: Vec<&[u8]> = vec![&light; 2];
    let image = montage::montage(&nearest, &random, shape, 2);
    let scale = montage::scale_for(shape);
    assert_eq!(scale, 8);
    let tile = 4 * scale;
    // Two columns; two rows of nearest, a wider gap, one row of random members.
    assert_eq!(image.width(), 2 * (tile + 2) + 2);
    assert_eq!(image.height(), 2 * (tile + 2) + 10 + (tile + 2) + 2);
    assert_eq!(image.get_pixel(2, 2).0, [10, 10, 10]);
    let random_top = 2 * (tile + 2) + 10 + 2;
    assert_eq!(image.get_pixel(2, random_top).0, [200, 200, 200]);
    // The third nearest image has no neighbour on its right: background there.
    assert_eq!(image.get_pixel(tile + 4, tile + 4 + 2).0, [255, 255, 255]);
}

#[test]
fn a_reservoir_keeps_a_uniform_sample_of_fixed_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut hits = vec![0u32; 100];
    for _ in 0..2000 {
        let mut sample = Vec::new();
        for i in 0..100u64 {
            reservoir(&mut sample, 10, i, &mut rng, || i);
        }
        assert_eq!(sample.len(), 10);
        for &i in &sample {
            hits[i as usize] += 1;
        }
    }
    // Each item is kept with probability 0.1: 200 of 2000 rounds, give or take sampling noise.
    let (lo, hi) = (hits.iter().min().unwrap(), hits.iter().max().unwrap());
    assert!(*lo > 140 && *hi < 260, "kept between {lo} and {hi} times");
    let mut few = Vec::new();
    for i in 0..3u64 {
        reservoir(&mut few, 10, i, &mut rng, || i);
    }
    assert_eq!(few, vec![0, 1, 2]);
}

#[test]
fn histogram_shares_sum_to_one_and_large_distances_land_in_the_last_bin() {
    let mut h = Histogram::new();
    for v in [0.0f32, 0.01, 1.0, 3.99, 17.0, -1.0] {
        h.add(v);
    }
    assert_eq!(h.total(), 6);
    assert_eq!(h.last_used(), h.bins.len());
    let shares = h.shares(h.last_used());
    let sum: f64 = shares.iter().map(|s| s.1).sum();
    assert!((sum - 1.0).abs() < 1e-12);
    assert_eq!(h.bins[0], 3, "0, 0.01 and the clamped -1");
    assert_eq!(h.bins[79], 2, "3.99 and 17");
}

/// Pixels of `image` that are neither white nor one of `colours`.
fn dark_pixels(image: &RgbImage, x: std::ops::Range<u32>, y: std::ops::Range<u32>) -> usize {
    let mut n = 0;
    for yy in y {
        for xx in x.clone() {
            let p = image.get_pixel(xx, yy).0;
            if p.iter().all(|&v| v < 100) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn charts_draw_their_points_and_their_text_with_the_bundled_font() {
    let points: Vec<(f64, f64)> = (0..50).map(|i| (f64::from(i), f64::from(i % 7))).collect();
    let groups: Vec<usize> = (0..50).map(|i| i % 3).collect();
    let names: Vec<String> = (0..3).map(|c| format!("cluster {c}")).collect();
    let image = figures::scatter("a title", &points, &groups, &names).unwrap();
    assert_eq!(
        (image.width(), image.height()),
        (figures::WIDTH, figures::HEIGHT)
    );
    // The caption is text at the top centre: dark glyph pixels there.
    let w = figures::WIDTH;
    assert!(dark_pixels(&image, w / 2 - 60..w / 2 + 60, 0..30) > 20);
    // Each group's colour appears.
    for g in 0..3 {
        let c = figures::colour(g);
        let found = image.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(found, "group {g}'s colour is missing");
    }
    // Without a caption the same area stays empty.
    let untitled = figures::scatter("", &points, &groups, &names).unwrap();
    assert_eq!(dark_pixels(&untitled, w / 2 - 60..w / 2 + 60, 0..10), 0);
}

#[test]
fn a_heat_map_and_bars_render_every_cell() {
    let counts = vec![vec![5, 0], vec![1, 9]];
    let names = vec!["0".to_string(), "1".to_string()];
    let image = figures::heat_map("t", &counts, &names, &names, ("cluster", "label")).unwrap();
    assert_eq!(image.width(), figures::WIDTH);
    let methods = vec![("raw".to_string(), vec![0.5, 0.2, 0.1])];
    let bars = figures::grouped_bars("m", &methods, &["ACC", "NMI", "ARI"]).unwrap();
    for s in 0..3 {
        let c = figures::colour(s);
        assert!(bars.pixels().any(|p| p.0 == [c.0, c.1, c.2]), "bar {s}");
    }
}
