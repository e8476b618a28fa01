//! Training: the recipe ([`TrainConfig`]), the IMM data it trains on, and the loop that fits a
//! network into a [`RunDir`], resumably.

use std::time::Instant;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, sample_rng};
use crate::data::ibug::{IBUG_MIRROR, IBUG_POINTS};
use crate::data::imm;
use crate::data::{DataError, Example, Point};
pub use crate::dataset::{FaceDataConfig, TaskData};
use crate::eval::{images_tensor, predict_with_mirror};
use crate::heatmap::ShapePrior;
use crate::model::{
    HeatmapNetConfig, ImmNetConfig, KeypointNet, ModelConfig, NoseNetConfig, Pooling, ResNetConfig,
};
use crate::run::{EpochRecord, RunDir, RunError, RunState, save_model, write_json};

/// What a model learns to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The nose tip (IMM point 52) at 80x60: Part 1.
    Nose,
    /// All 58 IMM points at 160x120: Part 2.
    Imm58,
    /// The 68 iBUG points on 300-W face crops: Part 3.
    Ibug68,
    /// The 68 iBUG points as heatmaps from a U-Net: Part 4.
    Heatmap,
}

impl Task {
    /// IMM landmark indices the task predicts.
    pub fn point_indices(self) -> Vec<usize> {
        match self {
            Task::Nose => vec![imm::NOSE_TIP],
            Task::Imm58 => (0..imm::IMM_POINTS).collect(),
            Task::Ibug68 | Task::Heatmap => (0..IBUG_POINTS).collect(),
        }
    }

    /// Whether the task crops faces from boxes (300-W) rather than using whole photos (IMM).
    pub fn crops_faces(self) -> bool {
        matches!(self, Task::Ibug68 | Task::Heatmap)
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Nose => "nose",
            Task::Imm58 => "imm58",
            Task::Ibug68 => "ibug68",
            Task::Heatmap => "heatmap",
        }
    }
}

/// Learning-rate schedule over epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The same rate every epoch (the study's).
    Constant,
    /// Cosine decay from the rate to 2 % of it at the last epoch.
    Cosine,
}

/// Everything that defines a training run; written to `config.json` before training starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: Task,
    pub model: ModelConfig,
    /// IMM tasks: persons (inclusive range) whose photos train; the others validate.
    pub train_persons: [u32; 2],
    /// Face-box tasks (300-W): labels, validation share, crop and box jitter.
    #[serde(default)]
    pub faces: FaceDataConfig,
    /// Augmentation of training images; `None` trains on the images as they are.
    pub augment: Option<AugmentConfig>,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub schedule: Schedule,
    /// L2 penalty added to the gradients by Adam; 0 for none.
    pub weight_decay: f32,
    /// Seeds weight initialisation, shuffling, dropout and augmentation.
    pub seed: u64,
    /// Average each prediction with that on the mirrored image (needs `augment.flip`).
    #[serde(default)]
    pub test_time_flip: bool,
}

impl TrainConfig {
    /// The study's recipe for a task: MSE, Adam 1e-3, 75 epochs, no augmentation for the nose and
    /// the study's affine augmentation for all 58 points; for heatmaps a U-Net at 224 with
    /// Gaussian targets (sigma 5), cross-entropy and Adam 5e-4.
    pub fn study(task: Task) -> Self {
        let ibug_augment = || {
            Some(AugmentConfig {
                flip: Some(IBUG_MIRROR.to_vec()),
                ..AugmentConfig::default()
            })
        };
        let (model, augment) = match task {
            Task::Nose => (ModelConfig::NoseNet(NoseNetConfig::default()), None),
            Task::Imm58 => (
                ModelConfig::ImmNet(ImmNetConfig::default()),
                Some(AugmentConfig::default()),
            ),
            Task::Ibug68 => (ModelConfig::ResNet(ResNetConfig::default()), ibug_augment()),
            Task::Heatmap => (
                ModelConfig::Heatmap(HeatmapNetConfig::default()),
                ibug_augment(),
            ),
        };
        let learning_rate = if task == Task::Heatmap { 5e-4 } else { 1e-3 };
        Self {
            task,
            model,
            train_persons: [1, 32],
            faces: FaceDataConfig::default(),
            augment,
            epochs: 75,
            batch_size: 16,
            learning_rate,
            schedule: Schedule::Constant,
            weight_decay: 0.0,
            seed: 42,
            test_time_flip: false,
        }
    }

    /// facemark's best recipe for a task, chosen on the validation persons (see results/).
    pub fn best(task: Task) -> Self {
        let mut config = Self::study(task);
        match task {
            Task::Nose => {
                config.augment = Some(AugmentConfig {
                    rotate_degrees: 12.0,
                    translate: 0.08,
                    shear: 0.05,
                    scale: Some([0.92, 1.08]),
                    // The nose tip lies on the face's midline: it is its own mirror partner.
                    flip: Some(vec![0]),
                    ..AugmentConfig::default()
                });
                if let ModelConfig::NoseNet(net) = &mut config.model {
                    // Dropout 0.5 on 40 units underfits (see results/nose).
                    net.width = 32;
                    net.hidden = 128;
                    net.dropout = 0.2;
                    net.standardize_input = true;
                }
                config.test_time_flip = true;
                config.epochs = 150;
                config.schedule = Schedule::Cosine;
            }
            Task::Imm58 => {
                if let ModelConfig::ImmNet(net) = &mut config.model {
                    net.pooling = Pooling::Avg;
                    net.standardize_input = true;
                    // Without batch norm the net underfits (training loss above validation).
                    net.batch_norm = true;
                    net.dropout = 0.1;
                }
                if let Some(augment) = &mut config.augment {
                    augment.flip = Some(imm::IMM_MIRROR.to_vec());
                }
                config.epochs = 120;
                config.schedule = Schedule::Cosine;
                config.test_time_flip = true;
            }
            // 112x112 trains 29.2 img/s on 2 cores against 9.2 at 224 (results/ibug68/bench*.jsonl),
            // so 30 epochs fit in about 40 minutes. Mirror-averaged prediction cut
            // the validation NME from 7.2 % to 6.4 % mid-training. Crops from tight and detector
            // boxes gave the lowest worst-case validation NME over the two box kinds.
            Task::Ibug68 => {
                config.epochs = 30;
                config.schedule = Schedule::Cosine;
                config.set_input_size(112);
                config.test_time_flip = true;
                config.faces.training_boxes = both_box_kinds(&config.faces.labels);
            }
            Task::Heatmap => {
                if let ModelConfig::Heatmap(net) = &mut config.model {
                    net.use_shape_prior = true;
                }
                config.epochs = 30;
                config.schedule = Schedule::Cosine;
                config.set_input_size(112);
                config.test_time_flip = true;
                config.faces.training_boxes = both_box_kinds(&config.faces.labels);
            }
        }
        config
    }

    /// Sets the square input side of a face-box model and its crops together (ignored by the
    /// fixed-size IMM networks).
    pub fn set_input_size(&mut self, size: usize) {
        let side = match &mut self.model {
            ModelConfig::ResNet(m) => &mut m.input_size,
            ModelConfig::Heatmap(m) => &mut m.unet.input_size,
            ModelConfig::NoseNet(_) | ModelConfig::ImmNet(_) => return,
        };
        *side = size;
        self.faces.crop.size = size;
    }

    /// Checks the settings once, before any work.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err("epochs and batch size must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!(
                "learning rate {} must be positive",
                self.learning_rate
            ));
        }
        if let ModelConfig::Heatmap(net) = &self.model {
            let step = 1usize << net.unet.depth;
            if net.unet.input_size == 0 || net.unet.input_size % step != 0 {
                return Err(format!(
                    "the U-Net's input side {} must be a multiple of 2^depth = {step}",
                    net.unet.input_size
                ));
            }
        }
        if self.train_persons[0] > self.train_persons[1] {
            return Err(format!(
                "train persons {:?} is an empty range",
                self.train_persons
            ));
        }
        Ok(())
    }

    pub fn learning_rate_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.learning_rate,
            Schedule::Cosine => {
                let t = (epoch.saturating_sub(1)) as f64 / (self.epochs.max(2) - 1) as f64;
                let floor = 0.02;
                self.learning_rate
                    * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
            }
        }
    }

    /// The landmark mirror permutation when predictions average over a mirrored copy.
    pub fn test_time_mirror(&self) -> Option<&[usize]> {
        self.augment
            .as_ref()
            .and_then(|a| a.flip.as_deref())
            .filter(|_| self.test_time_flip)
    }

    fn optimizer(&self) -> ModuleOptimizer {
        let weight_decay =
            (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay));
        AdamConfig::new().with_weight_decay(weight_decay).init()
    }
}

/// Training crops from either the given (tight) boxes or the detector's.
pub fn both_box_kinds(labels: &std::path::Path) -> Vec<std::path::PathBuf> {
    vec![
        labels.to_owned(),
        crate::dataset::DETECTOR_TRAIN_LABELS.into(),
    ]
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("invalid training settings: {0}")]
    Config(String),
    #[error(
        "the training loss became {value} at epoch {epoch}, batch {batch}: stopped; the last good \
         checkpoint is kept (try a lower learning rate)"
    )]
    NonFinite {
        epoch: usize,
        batch: usize,
        value: f32,
    },
}

/// The finished run.
pub struct TrainOutcome {
    /// The recipe as trained: the run's stored one when resumed.
    pub config: TrainConfig,
    pub state: RunState,
    /// The model with the lowest validation loss, in validation mode on the inference device.
    pub best: KeypointNet,
}

/// The training examples of one batch, re-cropped and augmented as the recipe says (in parallel).
pub fn batch_examples(
    config: &TrainConfig,
    data: &TaskData,
    indices: &[usize],
    epoch: usize,
) -> Vec<Example> {
    indices
        .par_iter()
        .map(|&i| data.training_example(config, i, epoch))
        .collect()
}

/// Trains `config` on `data` into `run`. With `resume`, continues from the run's last checkpoint;
/// without, the run directory must not hold a run yet.
pub fn train(
    config: &TrainConfig,
    data: &TaskData,
    run: &RunDir,
    resume: bool,
    show_progress: bool,
) -> Result<TrainOutcome, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let config = &if resume && run.exists() {
        // A resumed run keeps the recipe it started with, data statistics included: weights
        // trained with a shape prior are wrong without it.
        run.read_config()?
    } else {
        with_data_statistics(config, data)
    };
    let device = crate::backend::training_device();
    device.seed(config.seed);
    let mut model = config.model.init(&device);
    let mut optim = config.optimizer();
    let mut state = RunState::default();

    if resume && run.model_last().is_file() {
        state = run.read_state()?;
        model = crate::run::load_model(model, &run.model_last())?;
        let path = run.optimizer_last();
        optim = optim.load(&path).map_err(|e| RunError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    } else {
        write_json(&run.config(), config)?;
    }

    let start = state.epochs_done() + 1;
    let progress = progress_bar(config.epochs, start - 1, show_progress);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    for epoch in start..=config.epochs {
        let started = Instant::now();
        let lr = config.learning_rate_at(epoch);
        order.shuffle(&mut sample_rng(config.seed, epoch, usize::MAX));
        let (mut loss_sum, mut batches) = (0.0f64, 0usize);
        for (batch, indices) in order.chunks(config.batch_size).enumerate() {
            let examples = batch_examples(config, data, indices, epoch);
            let loss = model.loss(images_tensor(&examples, &device), &examples);
            let value: f32 = loss.clone().into_scalar();
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch,
                    batch,
                    value,
                });
            }
            loss_sum += value as f64;
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
        let val_loss = validation_loss(&model.valid(), &data.val, config.test_time_mirror());
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / batches.max(1) as f64,
            val_loss,
            learning_rate: lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        if state.best_val_loss.is_none_or(|best| val_loss < best) {
            state.best_val_loss = Some(val_loss);
            state.best_epoch = Some(epoch);
            save_model(&model, &run.model_best())?;
        }
        // Weights and optimizer first, then the state that names their epoch.
        save_model(&model, &run.model_last())?;
        let bytes = optim.into_bytes().map_err(|e| RunError::Invalid {
            path: run.optimizer_last(),
            reason: e.to_string(),
        })?;
        crate::run::write_atomic(&run.optimizer_last(), &bytes)?;
        progress.set_message(format!(
            "train {:.5}  val {:.5}  best {:.5}",
            record.train_loss,
            record.val_loss,
            state.best_val_loss.unwrap_or(f64::NAN)
        ));
        state.history.push(record);
        run.write_state(&state)?;
        progress.inc(1);
    }
    progress.finish();

    let best = crate::run::load_model(
        config.model.init(&crate::backend::device()),
        &run.model_best(),
    )?;
    Ok(TrainOutcome {
        config: config.clone(),
        state,
        best,
    })
}

/// `config` completed with what the model measures on the training data before it starts: the
/// heatmap network's shape prior, from one epoch's training crops as the network will see them.
/// A resumed run already has it in its `config.json`.
fn with_data_statistics(config: &TrainConfig, data: &TaskData) -> TrainConfig {
    let mut config = config.clone();
    let needs_prior = matches!(&config.model, ModelConfig::Heatmap(net) if net.needs_shape_prior());
    if needs_prior {
        let all: Vec<usize> = (0..data.train.len()).collect();
        let shapes: Vec<Vec<Point>> = batch_examples(&config, data, &all, 0)
            .into_iter()
            .map(|e| e.points)
            .collect();
        if let ModelConfig::Heatmap(net) = &mut config.model {
            net.shape_prior = Some(ShapePrior::from_shapes(&shapes, 0.02));
        }
    }
    config
}

/// The validation loss of `net` (in validation mode) on `examples`: the mean squared error of the
/// coordinates, or for heatmap networks their training loss (so the two loss curves compare).
pub fn validation_loss(net: &KeypointNet, examples: &[Example], mirror: Option<&[usize]>) -> f64 {
    let device = crate::backend::device();
    if let KeypointNet::Heatmap(_) = net {
        let total: f64 = examples
            .chunks(16)
            .map(|chunk| {
                let loss: f32 = net.loss(images_tensor(chunk, &device), chunk).into_scalar();
                loss as f64 * chunk.len() as f64
            })
            .sum();
        return total / examples.len().max(1) as f64;
    }
    let predicted = predict_with_mirror(net, examples, &device, mirror);
    let truth: Vec<_> = examples.iter().map(|e| e.points.clone()).collect();
    crate::eval::point_errors(&predicted, &truth, (1.0, 1.0)).mse
}

fn progress_bar(epochs: usize, done: usize, visible: bool) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(epochs as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {pos}/{len} [{bar:30}] {elapsed}<{eta}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_starts_at_rate_and_ends_low() {
        let mut c = TrainConfig::study(Task::Nose);
        c.schedule = Schedule::Cosine;
        assert!((c.learning_rate_at(1) - 1e-3).abs() < 1e-12);
        assert!((c.learning_rate_at(c.epochs) - 2e-5).abs() < 1e-9);
        c.schedule = Schedule::Constant;
        assert_eq!(c.learning_rate_at(40), 1e-3);
    }

    #[test]
    fn config_round_trips_through_json() {
        for task in [Task::Nose, Task::Imm58, Task::Ibug68, Task::Heatmap] {
            let c = TrainConfig::best(task);
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), c);
        }
    }
}
