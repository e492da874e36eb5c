//! Replay-file parsing from arbitrary bytes: an error or a validated file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = deltanet_cli::replay::ReplayFile::parse(data) {
        // whatever parses is self-consistent
        assert_eq!(f.cu_seqlens.first(), Some(&0));
        assert!(f.dims.validate().is_ok());
    }
});
