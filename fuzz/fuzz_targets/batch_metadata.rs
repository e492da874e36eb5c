//! Batch-metadata validation (ExtendBatch / DecodeBatch / VerifyBatch /
//! CommitBatch, snapshots, commit dispatch) from arbitrary bytes: never panics,
//! and whatever validates is consistent with its pool.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    deltanet_conformance::fuzz::batch_metadata(data);
});
