//! A run directory: everything one training run writes, at fixed paths.
//!
//! ```text
//! RUN/config.json        the full recipe (TrainConfig), written before training starts
//! RUN/inference.json     the inference contract (input, crop, pixels, scheme, mirroring, decoding)
//! RUN/state.json         progress: epochs done, loss history, best epoch (resume reads it)
//! RUN/metrics.csv        epoch,train_loss,val_loss,learning_rate,seconds
//! RUN/model-last.bpk     weights after the last finished epoch, with optimizer-last.bpk
//! RUN/model-best.bpk     weights of the epoch with the lowest validation loss
//! RUN/eval.json          metrics of the best model on the validation split
//! RUN/figures/*.png      figures drawn from the files above
//! RUN/*.bpk.sha256       each weights file's SHA-256, in `sha256sum` format
//! RUN/train.lock         held (OS advisory lock, pid inside) while a training runs here
//! ```
//! Every file is written atomically (temporary file, then rename), so an interrupted run never
//! leaves a half-written checkpoint behind.
//!
//! **Checksums.** Each weights file (`model-best.bpk`, `model-last.bpk`, `optimizer-last.bpk`,
//! a shipped `model.bpk`) gets `<file>.sha256` right after it is written, and loading compares
//! the two: a mismatch (a flipped bit, a file replaced by hand) is refused by name. A weights file
//! without a checksum is accepted, as runs from before checksums have none. The old checksum is
//! removed before new weights are written, so no interruption leaves new weights beside an old
//! checksum (refused) but at worst new weights without one (accepted).
//!
//! **Interruptions.** An epoch writes `model-best`, then `model-last`, then `optimizer-last`,
//! then `state.json` and `metrics.csv`. `state.json` never names an epoch whose weights are not
//! on disk; a process killed after the weights but before the state resumes by training that
//! epoch again from the weights already saved, so every epoch appears once in the history.
//!
//! **Fault injection (a testing hook).** `FACEMARK_FAULT=POINT` or `POINT@EPOCH` makes the process
//! abort at that point of checkpoint writing, as a kill would: `after-model-best`,
//! `after-model-last`, `after-optimizer-last`, `after-state` (in the training loop), and
//! `before-checksum:FILE` (between a weights file, e.g. `model-last.bpk`, and its checksum).
//! Never set it outside tests.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::store::ModuleRecord;
use burn::tensor::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::InferenceContract;
use crate::model::{Ensemble, EnsembleConfig, EnsemblePass, KeypointNet, ModelConfig};
use crate::recipe::TrainConfig;

/// Errors reading or writing a run directory or a shipped model.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0} already holds a run: resume it, or replace it explicitly")]
    Exists(PathBuf),
    #[error(
        "{path}: checksum mismatch: the file is corrupt or was replaced (its SHA-256 is not the \
         one in {checksum})"
    )]
    ChecksumMismatch { path: PathBuf, checksum: PathBuf },
    #[error(
        "{dir} is in use by another training (process {holder}, lock {lock}): wait for it to \
         finish or stop it"
    )]
    Busy {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error(
        "no model {name:?}: not a run directory, and not among the shipped models in {models} ({available})"
    )]
    UnknownModel {
        name: String,
        models: PathBuf,
        available: String,
    },
    #[error("no default landmark model: none of {preferred} is shipped in {models}")]
    NoDefaultModel { models: PathBuf, preferred: String },
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let err = |source| RunError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// The checksum file beside a weights file: `<file>.sha256`.
pub fn checksum_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// A checksum file's text for `bytes` saved as `path`: `sha256sum` format (`<hex>  <name>`), so
/// `sha256sum -c model.bpk.sha256` checks it too.
pub fn checksum_text(bytes: &[u8], path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    format!("{}  {name}\n", sha256_hex(bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a weights file atomically and then its checksum ([`checksum_path`]), also atomically.
pub fn write_checked(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let checksum = checksum_path(path);
    // Old checksum out first: interrupted between the two writes, the new weights are then
    // unchecked (accepted) rather than beside the old checksum (refused as corrupt).
    match std::fs::remove_file(&checksum) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RunError::Write {
                path: checksum,
                source,
            });
        }
    }
    write_atomic(path, bytes)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    fault_point(&format!("before-checksum:{name}"), None);
    write_atomic(&checksum, checksum_text(bytes, path).as_bytes())
}

/// Reads a weights file and checks it against its checksum file, if it has one.
pub fn read_checked(path: &Path) -> Result<Vec<u8>, RunError> {
    let bytes = std::fs::read(path).map_err(|source| RunError::Read {
        path: path.to_owned(),
        source,
    })?;
    verify_checksum(path, &bytes)?;
    Ok(bytes)
}

/// Compares `bytes`, read from `path`, with `path`'s checksum file; no checksum file passes.
pub fn verify_checksum(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let checksum = checksum_path(path);
    let text = match std::fs::read(&checksum) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RunError::Read {
                path: checksum,
                source,
            });
        }
    };
    let expected = text
        .split(|b| b.is_ascii_whitespace())
        .find(|field| !field.is_empty())
        .filter(|field| field.len() == 64 && field.iter().all(u8::is_ascii_hexdigit))
        .ok_or_else(|| RunError::Invalid {
            path: checksum.clone(),
            reason: "not a SHA-256 checksum file (expected `<64 hex digits>  <file name>`)".into(),
        })?;
    if expected.eq_ignore_ascii_case(sha256_hex(bytes).as_bytes()) {
        Ok(())
    } else {
        Err(RunError::ChecksumMismatch {
            path: path.to_owned(),
            checksum,
        })
    }
}

/// The testing hook described in the module documentation: aborts the process, as a kill would,
/// when `FACEMARK_FAULT` names this point (`POINT`, or `POINT@EPOCH` for one epoch only).
pub fn fault_point(point: &str, epoch: Option<usize>) {
    let Some(spec) = std::env::var_os("FACEMARK_FAULT") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let hit = match spec.split_once('@') {
        Some((name, at)) => name == point && epoch.is_some_and(|e| at.parse() == Ok(e)),
        None => spec == point,
    };
    if hit {
        eprintln!("FACEMARK_FAULT={spec}: aborting at {point}");
        std::process::abort();
    }
}

/// Exclusive use of a run directory by one training: `RUN/train.lock`, held with the OS's
/// advisory lock and holding the holder's pid for messages. The OS releases the lock when the
/// process ends, however it ends, so a lock file left by a killed run is simply taken over;
/// dropping the guard removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    // Held open: closing it releases the lock.
    _file: File,
}

impl RunLock {
    /// The lock file of run directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("train.lock")
    }

    /// Takes the lock of run directory `dir` (creating the directory), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, RunError> {
        let path = Self::path(dir);
        let write_err = |source| RunError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|source| RunError::Write {
            path: dir.to_owned(),
            source,
        })?;
        // A holder that finishes removes the file between our open and our lock: we then hold
        // a lock on a file no longer at `path`. Checking that it still is, and retrying when not,
        // keeps two processes from each holding a different file.
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(write_err)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    // The pid is for the message only; an unreadable one says so.
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "unknown".to_string(),
                        pid => pid.to_string(),
                    };
                    return Err(RunError::Busy {
                        dir: dir.to_owned(),
                        lock: path,
                        holder,
                    });
                }
                Err(std::fs::TryLockError::Error(source)) => return Err(write_err(source)),
            }
            if !still_at(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(write_err)?;
            writeln!(file, "{}", std::process::id()).map_err(write_err)?;
            return Ok(Self { path, _file: file });
        }
        Err(write_err(std::io::Error::other(
            "the lock file kept being replaced while taking it",
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), so a waiting process that
        // opened it sees it gone and retries. Failing to remove it is harmless: the lock is
        // released with the file either way.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the open `file` is the one now at `path`.
#[cfg(unix)]
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether the open `file` is the one now at `path` (elsewhere an open file cannot be removed).
#[cfg(not(unix))]
fn still_at(_file: &File, path: &Path) -> bool {
    path.is_file()
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| RunError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

/// Reads a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| RunError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// One epoch's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub learning_rate: f64,
    pub seconds: f64,
}

/// Progress of a run, rewritten after every epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub history: Vec<EpochRecord>,
    pub best_epoch: Option<usize>,
    pub best_val_loss: Option<f64>,
}

impl RunState {
    pub fn epochs_done(&self) -> usize {
        self.history.last().map_or(0, |r| r.epoch)
    }

    pub fn metrics_csv(&self) -> String {
        let mut csv = String::from("epoch,train_loss,val_loss,learning_rate,seconds\n");
        for r in &self.history {
            csv.push_str(&format!(
                "{},{:.8},{:.8},{:.3e},{:.2}\n",
                r.epoch, r.train_loss, r.val_loss, r.learning_rate, r.seconds
            ));
        }
        csv
    }
}

/// Paths inside one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn inference(&self) -> PathBuf {
        self.root.join("inference.json")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    pub fn model_last(&self) -> PathBuf {
        self.root.join("model-last.bpk")
    }
    pub fn optimizer_last(&self) -> PathBuf {
        self.root.join("optimizer-last.bpk")
    }
    pub fn model_best(&self) -> PathBuf {
        self.root.join("model-best.bpk")
    }
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval.json")
    }
    pub fn figure(&self, name: &str) -> PathBuf {
        self.root.join("figures").join(name)
    }

    /// Whether the folder holds a run (its config).
    pub fn exists(&self) -> bool {
        self.config().is_file()
    }

    pub fn read_config(&self) -> Result<TrainConfig, RunError> {
        read_json(&self.config())
    }

    pub fn read_state(&self) -> Result<RunState, RunError> {
        if self.state().is_file() {
            read_json(&self.state())
        } else {
            Ok(RunState::default())
        }
    }

    /// Records an epoch: state.json and metrics.csv.
    pub fn write_state(&self, state: &RunState) -> Result<(), RunError> {
        write_atomic(&self.metrics(), state.metrics_csv().as_bytes())?;
        write_json(&self.state(), state)
    }
}

/// Saves a model's weights atomically, in single precision.
pub fn save_model(model: &KeypointNet, path: &Path) -> Result<(), RunError> {
    save_record(model.clone().into_record(), path)
}

/// Saves a model's weights atomically in half precision, for shipping (half the size).
pub fn save_model_half(model: &KeypointNet, path: &Path) -> Result<(), RunError> {
    let half = model.clone().map(&mut CastFloats(DType::F16));
    save_record(half.into_record(), path)
}

fn save_record(record: ModuleRecord, path: &Path) -> Result<(), RunError> {
    let bytes = record.into_bytes().map_err(|e| RunError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_checked(path, &bytes)
}

/// Loads weights saved by [`save_model`] or [`save_model_half`] into `model`, checked against
/// their checksum file when there is one.
pub fn load_model(model: KeypointNet, path: &Path) -> Result<KeypointNet, RunError> {
    let bytes = read_checked(path)?;
    let invalid = |e: burn::store::RecordError| RunError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let record =
        ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(invalid)?;
    model
        .try_load_record(record.cast_to_module_dtype())
        .map_err(invalid)
}

/// Casts every float parameter to one dtype.
struct CastFloats(DType);

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// Where shipped models live: `$FACEMARK_MODELS`, else the repository's `models/` folder.
pub fn models_dir() -> PathBuf {
    std::env::var_os("FACEMARK_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // The repository root holds models/; this crate sits in crates/facemark.
            let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            crate_dir
                .ancestors()
                .nth(2)
                .unwrap_or(crate_dir)
                .join("models")
        })
}

/// The names of the models shipped in `models` (its folders holding a `config.json`), sorted.
pub fn shipped_models(models: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(models)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The shipped 68-point models in order of preference, best first: `face68` (3.02 % NME on 300-W's
/// test faces) wins over `heatmap` (3.25 %) over `ibug68` (5.02 %).
pub const PREFERRED_68_POINT_MODELS: [&str; 3] = ["face68", "heatmap", "ibug68"];

/// The landmark model used when none is named (the CLI's `predict` and the Python package's
/// `Landmarker()`): the first of [`PREFERRED_68_POINT_MODELS`] shipped in `models`.
pub fn default_landmark_model(models: &Path) -> Result<&'static str, RunError> {
    PREFERRED_68_POINT_MODELS
        .into_iter()
        .find(|name| models.join(name).join("config.json").is_file())
        .ok_or_else(|| RunError::NoDefaultModel {
            models: models.to_owned(),
            preferred: PREFERRED_68_POINT_MODELS.join(", "),
        })
}

/// A trained model ready to use: its recipe, inference contract and weights.
pub struct LoadedModel {
    pub config: TrainConfig,
    pub contract: InferenceContract,
    pub net: KeypointNet,
    /// Where it came from, for messages.
    pub source: PathBuf,
}

/// Loads `--model NAME_OR_DIR`: a run directory (its best weights, else its last), or the name of
/// a model shipped in [`models_dir`] (a folder with `config.json` and `model.bpk`).
pub fn load_trained(name_or_dir: &str, device: &Device) -> Result<LoadedModel, RunError> {
    load_trained_in(name_or_dir, &models_dir(), device)
}

/// [`load_trained`] with shipped models looked up in `models` instead of [`models_dir`] (an
/// installed package carries its own copy of the models folder).
pub fn load_trained_in(
    name_or_dir: &str,
    models: &Path,
    device: &Device,
) -> Result<LoadedModel, RunError> {
    let as_dir = Path::new(name_or_dir);
    let (config_path, weights) = if as_dir.join("config.json").is_file() {
        let run = RunDir::new(as_dir);
        let weights = if run.model_best().is_file() {
            run.model_best()
        } else if as_dir.join("model.bpk").is_file() {
            as_dir.join("model.bpk")
        } else {
            run.model_last()
        };
        (run.config(), weights)
    } else {
        let dir = models.join(name_or_dir);
        if !dir.join("config.json").is_file() {
            let available = match shipped_models(models) {
                Ok(names) => format!("shipped: {}", names.join(", ")),
                Err(_) => "none found".into(),
            };
            return Err(RunError::UnknownModel {
                name: name_or_dir.into(),
                models: models.to_owned(),
                available,
            });
        }
        (dir.join("config.json"), dir.join("model.bpk"))
    };
    let mut config: TrainConfig = read_json(&config_path)?;
    // Configs from before landmark schemes name theirs explicitly from now on.
    config.scheme = Some(config.scheme());
    // Runs from before contracts were saved derive theirs from the recipe.
    let contract_path = config_path.with_file_name("inference.json");
    let contract = if contract_path.is_file() {
        read_json(&contract_path)?
    } else {
        config.contract()
    };
    let net = load_model(config.model.init(device), &weights)?;
    Ok(LoadedModel {
        config,
        contract,
        net,
        source: weights,
    })
}

/// Copies a run's best weights, in half precision, with its recipe and inference contract, to
/// the shipped models as `name`; returns the model's folder.
pub fn ship(run: &Path, name: &str) -> Result<PathBuf, RunError> {
    let loaded = load_trained(&run.to_string_lossy(), &crate::backend::device())?;
    let dir = models_dir().join(name);
    save_model_half(&loaded.net, &dir.join("model.bpk"))?;
    write_json(&dir.join("config.json"), &loaded.config)?;
    write_json(&dir.join("inference.json"), &loaded.contract)?;
    Ok(dir)
}

/// Assembles trained heatmap models (run directories or shipped names) into one ensemble model
/// in `out` (`config.json`, `inference.json`, `model.bpk` in half precision), loadable like any
/// run or shipped model. The members must share their landmarks, crop, validation shuffle and
/// test-time mirroring (the ensemble validates on the smallest of their held-out shares); the
/// ensemble decodes as the first member does and is fed at the largest member's input size.
///
/// `MODEL@SIDE` runs a member at another input side than it was trained at (its fully
/// convolutional net sees the face larger or smaller): several sides of one model average its
/// maps over scales, as test-time augmentation, and its weights are stored once.
pub fn assemble_ensemble(members: &[String], out: &Path) -> Result<PathBuf, RunError> {
    let device = crate::backend::device();
    let invalid = |source: &Path, reason: String| RunError::Invalid {
        path: source.to_owned(),
        reason,
    };
    // Each distinct model once, and every pass as (that model's index, its side if given).
    let mut loaded: Vec<LoadedModel> = Vec::new();
    let mut requested = Vec::new();
    for m in members {
        let (name, side) = match m.rsplit_once('@') {
            Some((name, side)) => match side.parse::<usize>() {
                Ok(side) => (name, Some(side)),
                Err(_) => (m.as_str(), None),
            },
            None => (m.as_str(), None),
        };
        let member = load_trained(name, &device)?;
        let index = match loaded.iter().position(|l| l.source == member.source) {
            Some(index) => index,
            None => {
                loaded.push(member);
                loaded.len() - 1
            }
        };
        requested.push((index, side));
    }
    let Some(first) = loaded.first() else {
        return Err(invalid(out, "an ensemble needs at least one member".into()));
    };
    let mut nets = Vec::new();
    let mut configs = Vec::new();
    for member in &loaded {
        let (ModelConfig::Heatmap(config), KeypointNet::Heatmap(net)) =
            (&member.config.model, member.net.clone())
        else {
            return Err(invalid(
                &member.source,
                format!(
                    "only heatmap models can join an ensemble, not {}",
                    member.config.model.family_name()
                ),
            ));
        };
        let (a, b) = (&first.config, &member.config);
        let shared = [
            ("landmark scheme", a.scheme() == b.scheme()),
            (
                "crop enlargement",
                a.faces.crop.enlarge == b.faces.crop.enlarge,
            ),
            (
                "validation shuffle (labels and seed)",
                a.shares_validation_shuffle(b),
            ),
            (
                "test-time mirroring",
                first.contract.mirror_average == member.contract.mirror_average,
            ),
        ];
        if let Some((what, _)) = shared.iter().find(|(_, same)| !same) {
            return Err(invalid(
                &member.source,
                format!(
                    "its {what} differs from the first member's ({})",
                    first.source.display()
                ),
            ));
        }
        configs.push(config.clone());
        nets.push(net);
    }
    let passes = (requested.iter())
        .map(|&(member, side)| EnsemblePass {
            member,
            side: side.unwrap_or(configs[member].unet.input_size),
        })
        .collect();
    let ensemble = EnsembleConfig::with_passes(configs, passes, first.contract.decoding)
        .map_err(|reason| invalid(out, reason))?;
    let mut config = first.config.clone();
    config.faces.crop.size = ensemble.input_size;
    // Every member holds out the first faces of the same shuffle: the smallest share is held out
    // by all of them, so the ensemble validates on it.
    config.faces.val_fraction = loaded
        .iter()
        .map(|m| m.config.faces.val_fraction)
        .fold(f32::INFINITY, f32::min);
    let net = KeypointNet::Ensemble(Ensemble::from_members(nets, &ensemble, &device));
    config.model = ModelConfig::Ensemble(ensemble);
    let mut contract = config.contract();
    contract.mirror_average = first.contract.mirror_average;
    // The passes' maps are averaged, so their points' offsets are too.
    let n = requested.len() as f32;
    contract.point_offset = requested.iter().fold([0.0, 0.0], |sum, &(member, _)| {
        let [dx, dy] = loaded[member].contract.point_offset;
        [sum[0] + dx / n, sum[1] + dy / n]
    });
    save_model_half(&net, &out.join("model.bpk"))?;
    write_json(&out.join("config.json"), &config)?;
    write_json(&out.join("inference.json"), &contract)?;
    Ok(out.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }

    #[test]
    fn half_precision_round_trip_is_close() {
        let device = Device::flex();
        let config = crate::model::ModelConfig::nose();
        let net = config.init(&device);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bpk");
        save_model_half(&net, &path).unwrap();
        let loaded = load_model(config.init(&device), &path).unwrap();
        let x = Tensor::<4>::ones([1, 1, 60, 80], &device);
        let decoding = crate::decode::Decoding::Subpixel;
        let a = net.forward(x.clone()).into_point_lists(decoding).concat();
        let b = loaded.forward(x).into_point_lists(decoding).concat();
        for (a, b) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!((a - b).abs() < 1e-2, "{a} vs {b}");
        }
    }

    #[test]
    fn a_corrupted_model_is_refused_by_checksum() {
        let device = Device::flex();
        let config = crate::model::ModelConfig::nose();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-last.bpk");
        save_model(&config.init(&device), &path).unwrap();
        let checksum = checksum_path(&path);
        let text = std::fs::read_to_string(&checksum).unwrap();
        assert!(
            text.ends_with("  model-last.bpk\n") && text.len() == 64 + 2 + 14 + 1,
            "{text}"
        );
        assert!(load_model(config.init(&device), &path).is_ok());

        // One byte flipped in the middle: still a well-formed record, refused by checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = load_model(config.init(&device), &path).err().unwrap();
        assert!(matches!(err, RunError::ChecksumMismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("model-last.bpk: checksum mismatch: the file is corrupt or was replaced"),
            "{text}"
        );

        // A missing checksum (a run from before checksums) is accepted.
        std::fs::remove_file(&checksum).unwrap();
        assert!(load_model(config.init(&device), &path).is_ok());
        // A checksum file that is not one is refused by its own name.
        std::fs::write(&checksum, "not a checksum\n").unwrap();
        let err = load_model(config.init(&device), &path).err().unwrap();
        assert!(err.to_string().contains("model-last.bpk.sha256"), "{err}");
    }

    #[test]
    fn rewriting_weights_rewrites_their_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bpk");
        write_checked(&path, b"first").unwrap();
        write_checked(&path, b"second").unwrap();
        assert_eq!(read_checked(&path).unwrap(), b"second");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2, "weights and checksum, no temporary files");
    }

    #[test]
    fn shipped_models_carry_matching_checksums() {
        let shipped = shipped_models(&models_dir()).unwrap();
        for name in [
            "nose",
            "imm58",
            "ibug68",
            "heatmap",
            "face68-fast",
            "face68",
        ] {
            assert!(shipped.iter().any(|s| s == name), "{name} in {shipped:?}");
        }
        for name in &shipped {
            let path = models_dir().join(name).join("model.bpk");
            assert!(checksum_path(&path).is_file(), "{}", path.display());
            read_checked(&path).unwrap();
        }
    }

    /// A small untrained heatmap model saved as a shipped one in `dir`.
    fn tiny_heatmap_model(dir: &Path, side: usize, seed: u64) -> String {
        use crate::model::{HeatmapNetConfig, UNetConfig};
        let mut config = TrainConfig::study(crate::recipe::Task::Heatmap);
        config.model = ModelConfig::Heatmap(HeatmapNetConfig {
            unet: UNetConfig {
                points: 68,
                base_width: 4,
                depth: 2,
                input_size: side,
            },
            ..Default::default()
        });
        config.faces.crop.size = side;
        config.seed = seed;
        let net = config.model.init(&crate::backend::device());
        save_model(&net, &dir.join("model.bpk")).unwrap();
        write_json(&dir.join("config.json"), &config).unwrap();
        write_json(&dir.join("inference.json"), &config.contract()).unwrap();
        dir.to_string_lossy().into_owned()
    }

    #[test]
    fn an_ensemble_loads_and_predicts_like_any_model() {
        let dir = tempfile::tempdir().unwrap();
        let a = tiny_heatmap_model(&dir.path().join("a"), 32, 42);
        let b = tiny_heatmap_model(&dir.path().join("b"), 64, 42);
        let out = dir.path().join("both");
        // `a` also at twice its trained side: the same weights see the face larger.
        assemble_ensemble(&[a.clone(), format!("{a}@64"), b], &out).unwrap();
        let loaded = load_trained(&out.to_string_lossy(), &crate::backend::device()).unwrap();
        let KeypointNet::Ensemble(ensemble) = &loaded.net else {
            panic!("not an ensemble: {:?}", loaded.config.model.family_name());
        };
        // `a`'s weights are stored once for its two passes.
        assert_eq!(ensemble.members.len(), 2);
        let ModelConfig::Ensemble(config) = &loaded.config.model else {
            panic!("not an ensemble config");
        };
        let passes: Vec<(usize, usize)> =
            config.passes.iter().map(|p| (p.member, p.side)).collect();
        assert_eq!(passes, [(0, 32), (0, 64), (1, 64)]);
        assert_eq!(loaded.contract.input_width, 64);
        assert_eq!(loaded.config.faces.crop.size, 64);
        let example = crate::data::Example {
            width: 64,
            height: 64,
            pixels: (0..64 * 64).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect(),
            points: Vec::new(),
        };
        let points = loaded
            .contract
            .predict(&loaded.net, &[example], &crate::backend::device());
        assert_eq!(points[0].len(), 68);
        assert!(
            points[0].iter().flatten().all(|v| (0.0..=1.0).contains(v)),
            "{points:?}"
        );
    }

    #[test]
    fn an_ensemble_refuses_members_of_another_validation_shuffle() {
        let dir = tempfile::tempdir().unwrap();
        let a = tiny_heatmap_model(&dir.path().join("a"), 32, 42);
        let b = tiny_heatmap_model(&dir.path().join("b"), 32, 7);
        let err = assemble_ensemble(&[a, b.clone()], &dir.path().join("both")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("validation shuffle") && text.contains(&b),
            "{text}"
        );
        // Held-out shares of one shuffle nest: the ensemble validates on the smallest.
        let c = tiny_heatmap_model(&dir.path().join("c10"), 32, 42);
        let mut config: TrainConfig = read_json(&Path::new(&c).join("config.json")).unwrap();
        config.faces.val_fraction = 0.1;
        write_json(&Path::new(&c).join("config.json"), &config).unwrap();
        let a = tiny_heatmap_model(&dir.path().join("a"), 32, 42);
        let nested = assemble_ensemble(&[a, c], &dir.path().join("nested")).unwrap();
        let config: TrainConfig = read_json(&nested.join("config.json")).unwrap();
        assert_eq!(config.faces.val_fraction, 0.1);

        let err = assemble_ensemble(&["nose".into()], &dir.path().join("nose")).unwrap_err();
        assert!(err.to_string().contains("only heatmap models"), "{err}");
        let odd_side = format!("{}@30", tiny_heatmap_model(&dir.path().join("c"), 32, 42));
        let err = assemble_ensemble(&[odd_side], &dir.path().join("odd")).unwrap_err();
        assert!(err.to_string().contains("multiple of"), "{err}");
    }

    #[test]
    fn a_held_run_lock_refuses_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let lock = RunLock::acquire(&run).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(
            std::fs::read_to_string(RunLock::path(&run)).unwrap().trim(),
            pid
        );
        let err = RunLock::acquire(&run).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RunError::Busy { .. }), "{text}");
        assert!(text.contains(&pid) && text.contains("in use"), "{text}");
        drop(lock);
        assert!(
            !RunLock::path(&run).exists(),
            "the lock file goes with the lock"
        );
        drop(RunLock::acquire(&run).unwrap());
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // What a killed training leaves: the file with its pid, but no OS lock on it.
        std::fs::write(RunLock::path(dir.path()), "4194303\n").unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(RunLock::path(dir.path())).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(lock);
    }

    #[test]
    fn the_default_model_is_the_most_preferred_one_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let ship = |name: &str| {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("config.json"), "{}").unwrap();
        };
        let err = default_landmark_model(dir.path()).unwrap_err().to_string();
        assert!(err.contains("face68, heatmap, ibug68"), "{err}");
        ship("ibug68");
        ship("nose");
        assert_eq!(default_landmark_model(dir.path()).unwrap(), "ibug68");
        ship("heatmap");
        assert_eq!(default_landmark_model(dir.path()).unwrap(), "heatmap");
        ship("face68");
        assert_eq!(default_landmark_model(dir.path()).unwrap(), "face68");
        assert_eq!(
            shipped_models(dir.path()).unwrap(),
            ["face68", "heatmap", "ibug68", "nose"]
        );
        // The repository ships face68.
        assert_eq!(default_landmark_model(&models_dir()).unwrap(), "face68");
    }

    #[test]
    fn shipped_models_load_from_an_explicit_folder() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("nose");
        std::fs::create_dir_all(&copy).unwrap();
        for file in [
            "config.json",
            "inference.json",
            "model.bpk",
            "model.bpk.sha256",
        ] {
            std::fs::copy(models_dir().join("nose").join(file), copy.join(file)).unwrap();
        }
        let loaded = load_trained_in("nose", dir.path(), &Device::flex()).unwrap();
        assert_eq!(loaded.source, copy.join("model.bpk"));
        let err = load_trained_in("heatmap", dir.path(), &Device::flex())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("(shipped: nose)"), "{err}");
    }

    #[test]
    fn unknown_model_is_a_clear_error() {
        let err = load_trained("no-such-model", &Device::flex())
            .err()
            .unwrap();
        assert!(err.to_string().contains("no-such-model"), "{err}");
    }
}
