//! Arbitrary bytes through an image column and the decoder (see `salient::data::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    salient::data::fuzzing::image_input(data);
});
