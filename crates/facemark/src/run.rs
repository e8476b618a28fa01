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
//! ```
//! Every file is written atomically (temporary file, then rename), so an interrupted run never
//! leaves a half-written checkpoint behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::store::ModuleRecord;
use burn::tensor::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::contract::InferenceContract;
use crate::model::KeypointNet;
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
        "no model {name:?}: not a run directory, and not among the shipped models in {models} ({available})"
    )]
    UnknownModel {
        name: String,
        models: PathBuf,
        available: String,
    },
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
    write_atomic(path, &bytes)
}

/// Loads weights saved by [`save_model`] or [`save_model_half`] into `model`.
pub fn load_model(model: KeypointNet, path: &Path) -> Result<KeypointNet, RunError> {
    let bytes = std::fs::read(path).map_err(|source| RunError::Read {
        path: path.to_owned(),
        source,
    })?;
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
        let dir = models_dir().join(name_or_dir);
        if !dir.join("config.json").is_file() {
            let available = std::fs::read_dir(models_dir())
                .map(|entries| {
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.path().join("config.json").is_file())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    format!("shipped: {}", names.join(", "))
                })
                .unwrap_or_else(|_| "none found".into());
            return Err(RunError::UnknownModel {
                name: name_or_dir.into(),
                models: models_dir(),
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
    fn unknown_model_is_a_clear_error() {
        let err = load_trained("no-such-model", &Device::flex())
            .err()
            .unwrap();
        assert!(err.to_string().contains("no-such-model"), "{err}");
    }
}
