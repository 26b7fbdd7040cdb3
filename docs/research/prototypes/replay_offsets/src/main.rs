//! Replays the draws of `src/datasets` (`Recipe::write` and `Recipe::crop`) for a dataset's
//! targets: the seeded shuffle of the objects, then per target the background, the crop's
//! corner and the object's offset. Arguments: objects, backgrounds, background height and
//! width (all backgrounds of one size), canvas, object side, seed.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("seven whole numbers"))
        .collect();
    let [objects, backgrounds, height, width, canvas, object, seed] = args[..] else {
        panic!("usage: replay_offsets OBJECTS BACKGROUNDS HEIGHT WIDTH CANVAS OBJECT SEED");
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
    let mut order: Vec<usize> = (0..objects).collect();
    order.shuffle(&mut rng);
    for &index in &order {
        let background = rng.random_range(0..backgrounds);
        let y = rng.random_range(0..=height / 2 - canvas);
        let x = rng.random_range(0..=width - canvas);
        let dy = rng.random_range(0..=canvas - object);
        let dx = rng.random_range(0..=canvas - object);
        println!("{index} {background} {y} {x} {dy} {dx}");
    }
}
