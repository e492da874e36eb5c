//! The examples run as tests, so CI runs them (`cargo test` only builds examples):
//! `examples/engine.rs` asserts every layer step against the f64 layer oracle.

#![cfg(feature = "cpu")]

#[path = "../examples/engine.rs"]
mod engine;

#[test]
fn engine_example_matches_the_layer_oracle() {
    engine::main().unwrap();
}
