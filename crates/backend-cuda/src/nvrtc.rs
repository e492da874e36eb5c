//! Run-time compilation of the kernels with NVRTC, and the resource usage
//! ptxas reports for each kernel (registers, shared memory, spills).

use crate::kernels::program_source;
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;

/// Whether `libnvrtc` can be loaded (cudarc panics on first use otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

/// Loads `libnvrtc.so.13` from `dir` (e.g. the `.nvrtc/nvidia/cu13/lib` that
/// install-nvrtc.sh fills) and keeps it loaded, so cudarc's later load by
/// name finds it without `LD_LIBRARY_PATH`. Returns whether it is present now.
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
    /// Target, e.g. `sm_90`.
    pub arch: String,
    /// The program log (warnings, and ptxas info with `--ptxas-options=-v`).
    pub log: String,
    /// The cubin for `arch`.
    pub cubin: Vec<u8>,
}

/// Compiles the whole kernel program for a real architecture (`sm_80`, `sm_90`...)
/// to a cubin, with `extra` NVRTC options. Errors carry the log.
pub fn compile(arch: &str, extra: &[&str]) -> Result<Compiled, String> {
    if !nvrtc_present() {
        return Err(
            "libnvrtc.so.13 not found (run crates/backend-cuda/install-nvrtc.sh and add .nvrtc/nvidia/cu13/lib to LD_LIBRARY_PATH)".into(),
        );
    }
    let src = CString::new(program_source()).map_err(|e| e.to_string())?;
    let name = CString::new("deltanet.cu").expect("no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
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
        Ok(()) => get_cubin(prog).map(|cubin| Compiled { arch: arch.to_string(), log, cubin }),
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

/// What ptxas reported for one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// Entry name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory in bytes.
    pub shared_bytes: u32,
    /// Stack frame in bytes.
    pub stack_bytes: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Parses the ptxas `-v` lines of an NVRTC log into one entry per kernel.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        let quoted = line.split('\'').nth(1);
        if line.contains("Compiling entry function") || line.contains("Function properties for") {
            let name = quoted.map(str::to_string).or_else(|| line.rsplit(' ').next().map(str::to_string)).unwrap_or_default();
            if out.last().is_none_or(|k| k.name != name) {
                out.push(KernelResources { name, ..Default::default() });
            }
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("spill stores") {
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'dnk_extend' for 'sm_90'\n\
ptxas info    : Function properties for dnk_extend\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 40 registers, used 1 barriers, 33792 bytes smem, 928 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'dnk_gate' for 'sm_90'\n\
ptxas info    : Function properties for dnk_gate\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 16 registers, 928 bytes cmem[0]\n";
        let k = parse_ptxas_log(log);
        assert_eq!(k.len(), 2);
        assert_eq!(
            k[0],
            KernelResources {
                name: "dnk_extend".into(),
                registers: 40,
                shared_bytes: 33792,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!(k[1].name, "dnk_gate");
        assert_eq!((k[1].registers, k[1].shared_bytes, k[1].spill_stores), (16, 0, 0));
    }
}
