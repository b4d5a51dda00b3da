//! Benchmarks behind `brook bench ...`. Each prints its figures (or one JSON object with
//! `--json`); the results are recorded with the machine and date in `BENCHMARKS.md`. Tests
//! check correctness, benchmarks check speed: nothing here asserts a speed.

pub mod native;
pub mod storage;

/// Fills `buf` with xorshift64 output: cheap, incompressible-looking record values.
pub fn fill_random(seed: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
