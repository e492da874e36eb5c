// The C-client tests compile C with the `cc` crate, which needs the target
// and host triples a build script sees.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["TARGET", "HOST"] {
        println!("cargo:rustc-env=DN_BUILD_{var}={}", std::env::var(var).unwrap_or_default());
    }
}
