//! The batch-metadata fuzz entry point on random bytes (the cargo-fuzz target
//! in fuzz/ runs the same function under libFuzzer): it must never panic.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn batch_validation_never_panics(data in prop::collection::vec(any::<u8>(), 0..160)) {
        deltanet_conformance::fuzz::batch_metadata(&data);
    }

    /// Bytes biased to small values reach deeper (valid pools, allocated slots, short cu_seqlens).
    #[test]
    fn batch_validation_never_panics_small_values(data in prop::collection::vec(0u8..6, 0..160)) {
        deltanet_conformance::fuzz::batch_metadata(&data);
    }
}

#[test]
fn some_batches_validate() {
    // a hand-made input that builds a pool, allocates, and validates an extend batch:
    // dims (hv 1, k 1, v 1), draft 2, layers 1, slots 4, alloc 3, no frees,
    // cu [0, 2] (n = 1), one slot (1), one flag
    let data = [0u8, 0, 0, 2, 0, 3, 3, 0, 1, 0, 0, 2, 0, 1, 0, 1, 1, 1];
    deltanet_conformance::fuzz::batch_metadata(&data);
}
