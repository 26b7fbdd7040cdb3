use super::*;

/// A recipe on one flat background, so that every non-zero pixel is the object's.
fn flat_recipe(canvas: usize) -> Recipe {
    Recipe {
        name: DatasetName::MnistGrassShifted,
        seed: 0,
        object_weight: 0.25,
        backgrounds: vec![Background {
            name: "flat",
            width: 64,
            height: 128,
            pixels: vec![0; 64 * 128],
        }],
        canvas: (canvas, canvas),
        reference_rows: 0,
        target_rows: None,
    }
}

#[test]
fn shifted_objects_land_at_every_offset_and_nowhere_else() {
    let recipe = flat_recipe(36);
    let object = vec![200u8; 28 * 28];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let crop = recipe.crop(&mut rng, (28, 28), false);
        assert!(crop.dy <= 8 && crop.dx <= 8, "{crop:?}");
        seen.insert((crop.dy, crop.dx));
        let image = recipe.target_image(crop, &object, 28);
        assert_eq!(image.len(), 36 * 36);
        for y in 0..36 {
            for x in 0..36 {
                let inside =
                    (crop.dy..crop.dy + 28).contains(&y) && (crop.dx..crop.dx + 28).contains(&x);
                assert_eq!(image[y * 36 + x], if inside { 50 } else { 0 }, "{crop:?}");
            }
        }
    }
    // 81 possible offsets; 2,000 draws see every one of them.
    assert_eq!(seen.len(), 81);
    // References are background crops alone: no offset.
    let reference = recipe.crop(&mut rng, (28, 28), true);
    assert_eq!((reference.dy, reference.dx), (0, 0));
}

#[test]
fn aligned_objects_cover_the_whole_crop() {
    let recipe = flat_recipe(28);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let crop = recipe.crop(&mut rng, (28, 28), false);
    assert_eq!((crop.dy, crop.dx), (0, 0));
    let image = recipe.target_image(crop, &[255u8; 28 * 28], 28);
    assert!(image.iter().all(|&v| v == 64));
}

#[test]
fn keep_classes_keeps_the_order_and_only_those_classes() {
    let objects = Objects {
        height: 1,
        width: 2,
        pixels: vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
        labels: vec![0, 1, 2, 1, 0],
        source: "test".into(),
    };
    let kept = objects.keep_classes(&[0, 2]);
    assert_eq!(kept.labels, vec![0, 2, 0]);
    assert_eq!(kept.pixels, vec![0, 0, 2, 2, 4, 4]);
    assert!(kept.source.contains("classes 0, 2 only"));
}
