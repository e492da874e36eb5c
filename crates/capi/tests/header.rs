//! include/deltanet.h is what cbindgen makes of this crate: regenerating it
//! gives no diff (DN_BLESS=1 rewrites it).

use std::path::Path;

#[test]
fn header_matches_the_source() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new().with_crate(dir).with_config(config).generate().expect("cbindgen").write(&mut fresh);
    let path = dir.join("../../include/deltanet.h");
    if std::env::var_os("DN_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write header");
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "include/deltanet.h differs from what cbindgen generates ({} vs {} bytes): run `DN_BLESS=1 cargo test -p deltanet-capi --test header`",
        current.len(),
        fresh.len()
    );
}

#[test]
fn pkg_config_file_has_the_crate_version() {
    let pc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deltanet.pc.in")).expect("deltanet.pc.in");
    let version = pc.lines().find_map(|l| l.strip_prefix("Version: ")).expect("a Version line");
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "deltanet.pc.in's Version");
}
