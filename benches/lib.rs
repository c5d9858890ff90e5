//! Criterion benchmarks for Fuddle live beside this file: `storage.rs`
//! measures the sled stores and the pure apply alone. This library is empty;
//! it exists so the package has a target besides its benchmarks.
