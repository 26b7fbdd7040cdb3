use super::*;

const SHAPE: ImageShape = ImageShape::new(1, 12, 12);

/// `n` unlabelled 12×12 images of deterministic pixels (`stride` varies the pattern).
fn tiny_set(n: usize, stride: usize) -> ImageSet {
    ImageSet {
        shape: SHAPE,
        ids: (0..n as i64).collect(),
        labels: vec![None; n],
        pixels: (0..n * SHAPE.len())
            .map(|i| (i * stride % 251) as u8)
            .collect(),
    }
}

/// A trainer small enough for unit tests: width 4, d = 8, batch 4.
fn tiny_config() -> TrainConfig {
    TrainConfig {
        batch_size: 4,
        dim_salient: 8,
        dim_background: 8,
        width: Some(4),
        ..Default::default()
    }
}

#[test]
fn embeddings_do_not_keep_the_forward_graph() {
    let (shape, n) = (SHAPE, 6);
    let set = tiny_set(n, 7);
    let config = tiny_config();
    let norm = Normalization::fit(&set.pixels, shape);
    let trainer = Trainer::new(config, shape, norm, n, n, Device::Cpu).unwrap();
    let e = trainer.embed_with(&trainer.salient, &set, 4).unwrap();
    assert_eq!(e.dims(), [n, 8]);
    assert!(!e.track_op(), "embeddings still reference the forward pass");
}

#[test]
fn neighbours_are_found_again_in_the_salient_bank() {
    let (shape, n) = (SHAPE, 8);
    let pixels = tiny_set(n, 13).pixels;
    let config = TrainConfig {
        two_view_weight: 1.0,
        neighbour_positives: Some(2),
        ..tiny_config()
    };
    let norm = Normalization::fit(&pixels, shape);
    let mut trainer = Trainer::new(config, shape, norm, n, n, Device::Cpu).unwrap();
    // Without neighbour positives there is nothing to refresh.
    assert!(trainer.refresh_neighbours_from_bank().unwrap().is_none());
    // Start from the neighbours of other rows (points on a circle).
    let start: Vec<f32> = (0..n)
        .flat_map(|i| {
            let a = i as f32;
            [a.cos(), a.sin()]
        })
        .collect();
    trainer.set_neighbours(neighbours::Neighbours::of_rows(&start, 2, 2).unwrap());
    let bank: Vec<f32> = trainer
        .bank_s
        .rows()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = neighbours::Neighbours::of_rows(&bank, 8, 2).unwrap();
    let got = trainer
        .refresh_neighbours_from_bank()
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(got, want);
    assert_eq!(got.k(), 2);
}

#[test]
fn profiled_steps_time_every_phase_and_train_the_same() {
    let (shape, n) = (SHAPE, 8);
    let set = tiny_set(n, 11);
    let config = TrainConfig {
        two_view_weight: 1.0,
        ..tiny_config()
    };
    let norm = Normalization::fit(&set.pixels, shape);
    let new = || Trainer::new(config.clone(), shape, norm.clone(), n, n, Device::Cpu).unwrap();
    let (mut plain, mut profiled) = (new(), new());
    assert!(
        profiled.take_phases().is_none(),
        "profiling is off by default"
    );
    profiled.profile_phases(true);
    let a = plain.train_epoch(&set, Some(&set), |_, _, _| {}).unwrap();
    let b = profiled
        .train_epoch(&set, Some(&set), |_, _, _| {})
        .unwrap();
    // Synchronising between phases changes nothing in the arithmetic.
    assert_eq!(a.losses.loss, b.losses.loss);
    let phases = profiled.take_phases().unwrap();
    assert_eq!(phases.steps, 2);
    let names: Vec<&str> = phases.seconds.iter().map(|(p, _)| *p).collect();
    for want in [
        "batches (augment, upload)",
        "salient forward",
        "second view (augment, forward)",
        "background forward",
        "losses (bank products, reading them)",
        "backward",
        "optimiser",
        "memory banks",
    ] {
        assert!(names.contains(&want), "no phase {want:?} in {names:?}");
    }
    assert!(phases.seconds.iter().all(|(_, s)| *s >= 0.0));
    // Taking the figures starts a new count.
    assert_eq!(profiled.take_phases().unwrap().steps, 0);
    profiled.profile_phases(false);
    assert!(profiled.take_phases().is_none());
}

#[test]
fn the_two_view_background_correction_changes_training() {
    let (shape, n) = (SHAPE, 8);
    let set = tiny_set(n, 17);
    let reference = tiny_set(n, 5);
    let with = |lambda: f64| TrainConfig {
        two_view_weight: 1.0,
        two_view_lambda: Some(lambda),
        ..tiny_config()
    };
    let norm = Normalization::fit(&set.pixels, shape);
    let epoch = |config: TrainConfig| {
        let mut trainer = Trainer::new(config, shape, norm.clone(), n, n, Device::Cpu).unwrap();
        trainer
            .train_epoch(&set, Some(&reference), |_, _, _| {})
            .unwrap()
            .losses
    };
    let (off, again, on) = (epoch(with(0.0)), epoch(with(0.0)), epoch(with(1.0)));
    assert_eq!(off.two_view, again.two_view, "training is deterministic");
    assert_ne!(
        off.two_view, on.two_view,
        "λ·z·z' did not reach the two-view logits"
    );
    assert!(on.two_view.is_finite() && on.loss.is_finite());
}
