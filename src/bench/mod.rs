//! Benchmarks behind `brook bench ...`. Each prints its figures (or one JSON object with
//! `--json`); the results are recorded with the machine and date in `BENCHMARKS.md`. Tests
//! check correctness, benchmarks check speed: nothing here asserts a speed.

pub mod native;
pub mod storage;
