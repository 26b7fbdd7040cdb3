//! Replays the fuzz corpus and every crash the fuzzer found (`fuzz/corpus`, `fuzz/regressions`)
//! through the same input path, on stable Rust: none may panic.

mod common;

use std::path::Path;

fn replay(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| salient::data::fuzzing::image_input(&data));
        assert!(outcome.is_ok(), "{} panics", path.display());
        n += 1;
    }
    n
}

#[test]
fn the_fuzz_corpus_and_its_crashes_decode_without_panicking() {
    let root = common::repo_path("fuzz");
    let corpus = replay(&root.join("corpus/image_input"));
    let crashes = replay(&root.join("regressions/image_input"));
    assert!(corpus >= 10, "the seed corpus is missing ({corpus} files)");
    println!("{corpus} corpus inputs and {crashes} former crashes replayed");
}
