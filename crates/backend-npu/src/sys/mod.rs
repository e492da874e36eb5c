//! Raw layer: the checked-in bindings and the run-time loader that finds the
//! CANN libraries (`libascendcl`, `libnnopbase`, `libopapi` or its split
//! libraries) by name and under the CANN root.
//!
//! Nothing here is safe to call directly; [`crate::cann::Cann`] wraps the
//! function table behind the [`crate::api::AclApi`] trait.

#[allow(clippy::all, missing_docs, unsafe_op_in_unsafe_fn)]
pub mod bindings;

use std::path::PathBuf;

/// Environment variables that name a CANN root, in the order they are searched.
pub const ROOT_ENV_VARS: [&str; 2] = ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"];

/// Default install roots searched after the environment variables.
pub const DEFAULT_ROOTS: [&str; 4] =
    ["/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann", "/usr/local/Ascend/latest", "/opt/Ascend/ascend-toolkit/latest"];

/// Sub-directories of a CANN root that hold the runtime and operator libraries.
pub const LIB_SUBDIRS: [&str; 5] = ["lib64", "runtime/lib64", "opp/lib64", "aarch64-linux/lib64", "x86_64-linux/lib64"];

/// The operator-API libraries, tried in this order; every one found is kept
/// and operators are resolved by symbol name across all of them (CANN 8.x
/// ships one `libopapi.so`; newer releases split it, and the open-source
/// ops-transformer package installs the GDN operators separately).
pub const OPAPI_LIBS: [&str; 5] = ["libopapi.so", "libopapi_transformer.so", "libopapi_math.so", "libopapi_nn.so", "libcust_opapi.so"];

/// Why the CANN libraries could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The library that could not be loaded.
    pub library: String,
    /// Every path (or bare name, for the system loader) that was tried, with the loader's message.
    pub tried: Vec<String>,
    /// The roots searched, with where each came from.
    pub roots: Vec<String>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not load {} (CANN not installed or not on the search path); searched the system loader path and the roots [{}] \
             from the environment variables {} and the default install roots; set ASCEND_TOOLKIT_HOME to the CANN toolkit \
             (e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh)",
            self.library,
            self.roots.join(", "),
            ROOT_ENV_VARS.join(" / "),
        )?;
        if let Some(first) = self.tried.first() {
            write!(f, "; first attempt: {first}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// The CANN roots to search, each tagged with its origin (`ASCEND_TOOLKIT_HOME=...`, `default`).
pub fn search_roots() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for var in ROOT_ENV_VARS {
        if let Some(v) = std::env::var_os(var) {
            if !v.is_empty() {
                out.push((var.to_string(), PathBuf::from(v)));
            }
        }
    }
    for d in DEFAULT_ROOTS {
        out.push(("default".to_string(), PathBuf::from(d)));
    }
    out
}

/// Candidate paths for one library: the bare name first (the system loader,
/// `LD_LIBRARY_PATH`), then `<root>/<subdir>/<name>` for every root.
pub fn candidates(name: &str) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(name)];
    for (_, root) in search_roots() {
        for sub in LIB_SUBDIRS {
            out.push(root.join(sub).join(name));
        }
    }
    out
}

/// Opens the first loadable candidate of `name`.
pub fn open(name: &str) -> Result<libloading::Library, LoadError> {
    let mut tried = Vec::new();
    for path in candidates(name) {
        let bare = path.components().count() == 1;
        if !bare && !path.exists() {
            continue;
        }
        // SAFETY: loading a shared library runs its initialisers; the CANN
        // libraries are plain C/C++ libraries with no initialiser contract
        // beyond being loaded once per process, which the OS loader ensures.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => return Ok(lib),
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    Err(LoadError {
        library: name.to_string(),
        tried,
        roots: search_roots().into_iter().map(|(origin, p)| format!("{} ({origin})", p.display())).collect(),
    })
}
