//! Training: the resumable loop that fits a recipe's network to a [`Dataset`] into a
//! [`RunDir`]. What to train is the recipe's ([`crate::recipe`]); how each network computes its
//! loss and validation metric is its family's ([`crate::model::Family`]).

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::seq::SliceRandom;

use crate::augment::sample_rng;
use crate::batch::images_tensor;
use crate::contract::predict_examples;
use crate::data::{DataError, Example, Point};
use crate::dataset::{DataSource, Dataset, Sampling};
use crate::model::{KeypointNet, ValidationMetric};
use crate::recipe::{RecipeError, Task, TrainConfig};
use crate::run::{EpochRecord, RunDir, RunError, RunState, save_model, write_json};

impl TrainConfig {
    /// The faces this recipe trains on.
    pub fn data_source(&self) -> DataSource<'_> {
        if self.task.crops_faces() {
            DataSource::Faces {
                config: &self.faces,
                seed: self.seed,
                scheme: self.scheme.clone(),
            }
        } else {
            DataSource::Imm {
                train_persons: self.train_persons,
                points: match self.task {
                    Task::Nose => vec![crate::data::imm::NOSE_TIP],
                    _ => (0..crate::data::imm::IMM_POINTS).collect(),
                },
                scheme: self.scheme(),
                input: self.model.input_size(),
            }
        }
    }

    /// How training examples are drawn each epoch.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            seed: self.seed,
            crop: self.faces.crop.clone(),
            jitter: self.faces.jitter.clone(),
            augment: self.augment.clone(),
            mirror: self.augment_mirror(),
        }
    }
}

/// Loads the faces `config` trains on from the data folder.
pub fn load_data(config: &TrainConfig, data_root: &std::path::Path) -> Result<Dataset, DataError> {
    Dataset::load(config.data_source(), data_root)
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("invalid training settings: {0}")]
    Config(#[from] RecipeError),
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

/// Trains `config` on `data` into `run`. With `resume`, continues from the run's last checkpoint;
/// without, the run directory must not hold a run yet.
pub fn train(
    config: &TrainConfig,
    data: &Dataset,
    run: &RunDir,
    resume: bool,
    show_progress: bool,
) -> Result<TrainOutcome, TrainError> {
    config.validate()?;
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
    let sampling = config.sampling();
    let val_examples = data.val_examples();
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
        write_json(&run.inference(), &config.contract())?;
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
            let examples = data.training_batch(&sampling, indices, epoch);
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
        let val_loss = validation_loss(config, &model.valid(), &val_examples);
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

/// `config` completed with what it measures on the training data before it starts: the landmark
/// scheme of labels that bring their own (and the network's output count with it), and what the
/// network family fits to one epoch's training shapes as it will see them (the heatmap U-Net's
/// shape prior).
/// A resumed run already has both in its `config.json`.
pub fn with_data_statistics(config: &TrainConfig, data: &Dataset) -> TrainConfig {
    let mut config = config.clone();
    config.ground_truth = Some(crate::dataset::GroundTruth::of(&data.train));
    if config.scheme.is_none() || config.scheme() != data.scheme {
        config.set_scheme(data.scheme.clone());
    }
    if config.model.needs_training_shapes() {
        let all: Vec<usize> = (0..data.train.len()).collect();
        let shapes: Vec<Vec<Point>> = data
            .training_batch(&config.sampling(), &all, 0)
            .into_iter()
            .map(|e| e.points)
            .collect();
        config.model.fit_training_shapes(&shapes);
    }
    config
}

/// The validation loss of `net` (in validation mode) on `examples`, as its family measures it:
/// the mean squared error of the (mirror-averaged) coordinates, or the training loss itself.
pub fn validation_loss(config: &TrainConfig, net: &KeypointNet, examples: &[Example]) -> f64 {
    let device = crate::backend::device();
    match config.model.validation_metric() {
        ValidationMetric::TrainingLoss => {
            let total: f64 = examples
                .chunks(16)
                .map(|chunk| {
                    let loss: f32 = net.loss(images_tensor(chunk, &device), chunk).into_scalar();
                    loss as f64 * chunk.len() as f64
                })
                .sum();
            total / examples.len().max(1) as f64
        }
        ValidationMetric::CoordinateMse => {
            let mirror = config.test_time_mirror();
            let predicted = predict_examples(
                net,
                examples,
                &device,
                config.model.decoding(),
                mirror.as_deref(),
            );
            let truth: Vec<_> = examples.iter().map(|e| e.points.clone()).collect();
            crate::eval::point_errors(&predicted, &truth).mse
        }
    }
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
