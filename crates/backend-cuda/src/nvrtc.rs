//! Run-time compilation of the kernels with NVRTC.
//!
//! cudarc loads `libnvrtc.so.13` by name, so it is found on the dynamic
//! loader's path (`LD_LIBRARY_PATH`, the system's library directories), or,
//! when it is not there, in the directory `DELTANET_NVRTC_DIR` names (e.g. the
//! `.nvrtc/nvidia/cu13/lib` that crates/backend-cuda/install-nvrtc.sh fills),
//! which [`load`] loads it from first.

use crate::kernels::{program_source, ARGS_HEADER, ARGS_HEADER_NAME};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;

/// Where NVRTC is looked for, for error messages.
pub const WHERE: &str = "libnvrtc.so.13 was found neither on the library path (LD_LIBRARY_PATH) nor in DELTANET_NVRTC_DIR \
(crates/backend-cuda/install-nvrtc.sh installs it into .nvrtc/nvidia/cu13/lib)";

/// Whether `libnvrtc` can be loaded (cudarc panics on first use otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

/// Makes NVRTC loadable: true when it is on the library path, or once it is
/// loaded from `DELTANET_NVRTC_DIR`.
pub fn load() -> bool {
    nvrtc_present() || std::env::var_os("DELTANET_NVRTC_DIR").is_some_and(|d| preload_nvrtc(std::path::Path::new(&d)))
}

/// Loads `libnvrtc.so.13` from `dir` and keeps it loaded, so cudarc's later
/// load by name finds it without `LD_LIBRARY_PATH`. Returns whether it is present now.
pub fn preload_nvrtc(dir: &std::path::Path) -> bool {
    if nvrtc_present() {
        return true;
    }
    let path = dir.join("libnvrtc.so.13");
    if !path.exists() {
        return false;
    }
    // SAFETY: loading NVRTC runs only its initialisers; the handle is leaked so
    // the library stays loaded for the process's life (cudarc holds symbols from it).
    match unsafe { libloading::Library::new(&path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            nvrtc_present()
        }
        Err(_) => false,
    }
}

/// The NVRTC version, when the library is present.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    (r == sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// The outcome of one compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The program log (warnings, and ptxas info with `--ptxas-options=-v`).
    pub log: String,
    /// The cubin for `arch`.
    pub cubin: Vec<u8>,
}

/// Compiles the whole kernel program for a real architecture (`sm_80`, `sm_90`...)
/// to a cubin, with `extra` NVRTC options. Errors carry the log.
pub fn compile(arch: &str, extra: &[&str]) -> Result<Compiled, String> {
    if !load() {
        return Err(WHERE.into());
    }
    let src = CString::new(program_source()).map_err(|e| e.to_string())?;
    let name = CString::new("deltanet.cu").expect("no NUL");
    // the one header the sources include, handed over by name (nothing is read from disk)
    let header = CString::new(ARGS_HEADER).map_err(|e| e.to_string())?;
    let header_name = CString::new(ARGS_HEADER_NAME).expect("no NUL");
    let mut prog = std::mem::MaybeUninit::uninit();
    // SAFETY: NVRTC is present (checked above); every string is NUL-terminated and
    // outlives the call (NVRTC copies them); the header arrays hold one entry each.
    let r = unsafe { sys::nvrtcCreateProgram(prog.as_mut_ptr(), src.as_ptr(), name.as_ptr(), 1, &header.as_ptr(), &header_name.as_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcCreateProgram: {r:?}"));
    }
    // SAFETY: nvrtcCreateProgram succeeded, so it wrote the program handle.
    let prog = unsafe { prog.assume_init() };
    let mut opts: Vec<String> = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
    opts.extend(extra.iter().map(|s| s.to_string()));
    // SAFETY: `prog` was created above and is destroyed once, at the end.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|raw| {
            let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let out = match compiled {
        Err(e) => Err(format!("NVRTC failed for {arch} ({e:?}):\n{log}")),
        Ok(()) => get_cubin(prog).map(|cubin| Compiled { log, cubin }),
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: `prog` is a live, compiled program; `size` is valid for writes.
    let r = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(format!("nvrtcGetCUBINSize: {r:?} (size {size})"));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds the `size` bytes NVRTC reported.
    let r = unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut std::ffi::c_char) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcGetCUBIN: {r:?}"));
    }
    Ok(cubin)
}
