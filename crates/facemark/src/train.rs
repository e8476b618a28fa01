//! Training: the resumable loop that fits a recipe's network to a [`Dataset`] into a
//! [`RunDir`]. What to train is the recipe's ([`crate::recipe`]); how each network computes its
//! loss and validation metric is its family's ([`crate::model::Family`]).

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::seq::SliceRandom;

use crate::augment::sample_rng;
use crate::batch::images_tensor;
use crate::contract::{InferenceContract, predict_examples};
use crate::data::{DataError, Example, Point};
use crate::dataset::{DataSource, Dataset, Sampling};
use crate::distill::Teacher;
use crate::model::{KeypointNet, ValidationMetric};
use crate::recipe::{RecipeError, Task, TrainConfig};
use crate::run::{
    EpochRecord, RunDir, RunError, RunLock, RunState, fault_point, save_model, write_json,
};

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
            label_offset: self.label_offset(),
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
    #[error(
        "the validation loss became {value} at epoch {epoch}: stopped; the last good checkpoint \
         is kept (try a lower learning rate)"
    )]
    NonFiniteValidation { epoch: usize, value: f64 },
}

/// The finished run.
pub struct TrainOutcome {
    /// The recipe as trained: the run's stored one when resumed (with the caller's epoch count).
    pub config: TrainConfig,
    pub state: RunState,
    /// The model with the lowest validation loss, in validation mode on the inference device.
    pub best: KeypointNet,
    /// How `best` is run (the run's `inference.json`), its point offset calibrated on the
    /// training faces when the training mirrored them.
    pub contract: InferenceContract,
}

/// Trains `config` on `data` into `run`. With `resume`, continues from the run's last checkpoint;
/// without, the run directory must not hold a run yet. The run directory is locked
/// ([`RunLock`]) for the whole run: a second training into it is refused while this one runs.
pub fn train(
    config: &TrainConfig,
    data: &Dataset,
    run: &RunDir,
    resume: bool,
    show_progress: bool,
) -> Result<TrainOutcome, TrainError> {
    config.validate()?;
    let _lock = RunLock::acquire(&run.root)?;
    let config = &if resume && run.exists() {
        // A resumed run keeps the recipe it started with, data statistics included: weights
        // trained with a shape prior are wrong without it. Only its length may change
        // (`Overrides::resumed`), and is stored before any epoch trains to it.
        let stored = run.read_config()?;
        if stored.epochs == config.epochs {
            stored
        } else {
            let trained = run.read_state()?.epochs_done();
            if config.epochs < trained {
                return Err(RecipeError::Invalid(format!(
                    "{} has trained {trained} epochs already; resume it with --epochs {trained} \
                     or more",
                    run.root.display()
                ))
                .into());
            }
            let resized = TrainConfig {
                epochs: config.epochs,
                ..stored
            };
            write_json(&run.config(), &resized)?;
            resized
        }
    } else {
        TrainConfig {
            precision: crate::kernels::precision(),
            ..with_data_statistics(config, data)
        }
    };
    crate::kernels::set_precision(config.precision);
    let device = crate::backend::training_device();
    device.seed(config.seed);
    let mut model = config.model.init(&device);
    let mut optim = config.optimizer();
    let sampling = config.sampling();
    let val_examples = data.val_targets(&sampling);
    let teacher = match &config.distill {
        Some(distill) => {
            let teacher = Teacher::load(distill, config)?;
            let sampling = teacher.sampling(&sampling);
            Some((teacher, sampling))
        }
        None => None,
    };
    let side = config.faces.crop.size;
    let mut state = RunState::default();

    if resume && run.model_last().is_file() {
        state = run.read_state()?;
        model = crate::run::load_model(model, &run.model_last())?;
        let path = run.optimizer_last();
        let bytes = crate::run::read_checked(&path)?;
        optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| RunError::Invalid {
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
            let images = images_tensor(&examples, &device);
            let loss = match &teacher {
                Some((teacher, teacher_sampling)) => {
                    let seen = data.training_batch(teacher_sampling, indices, epoch);
                    let maps = teacher.maps(&seen, side, &device);
                    model.loss_with_teacher(images, &examples, maps, teacher.weight)
                }
                None => model.loss(images, &examples),
            };
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
        // Weights that give a finite training loss can still overflow on validation images;
        // saving them would replace the last good checkpoint.
        if !val_loss.is_finite() {
            return Err(TrainError::NonFiniteValidation {
                epoch,
                value: val_loss,
            });
        }
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
            fault_point("after-model-best", Some(epoch));
        }
        // Weights and optimizer first, then the state that names their epoch (see crate::run
        // on interruptions).
        save_model(&model, &run.model_last())?;
        fault_point("after-model-last", Some(epoch));
        let bytes = optim.into_bytes().map_err(|e| RunError::Invalid {
            path: run.optimizer_last(),
            reason: e.to_string(),
        })?;
        crate::run::write_checked(&run.optimizer_last(), &bytes)?;
        fault_point("after-optimizer-last", Some(epoch));
        progress.set_message(format!(
            "train {:.5}  val {:.5}  best {:.5}",
            record.train_loss,
            record.val_loss,
            state.best_val_loss.unwrap_or(f64::NAN)
        ));
        state.history.push(record);
        run.write_state(&state)?;
        fault_point("after-state", Some(epoch));
        progress.inc(1);
    }
    progress.finish();

    let best = crate::run::load_model(
        config.model.init(&crate::backend::device()),
        &run.model_best(),
    )?;
    let contract = calibrated_contract(config, data, &best);
    write_json(&run.inference(), &contract)?;
    Ok(TrainOutcome {
        config: config.clone(),
        state,
        best,
        contract,
    })
}

/// The contract of `net` trained with `config`: with the point offset that cancels its mean
/// error on the training faces when training mirrored them (see [`crate::calibrate`]; other
/// runs keep the recipe's).
pub fn calibrated_contract(
    config: &TrainConfig,
    data: &Dataset,
    net: &KeypointNet,
) -> InferenceContract {
    let mut contract = config.contract();
    if config.task.crops_faces() && config.augment_mirror().is_some() {
        contract.point_offset =
            crate::calibrate::calibrate(net, &contract, &data.train).offset_after;
    }
    contract
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::dataset::Frame;

    /// The data folder, or `None` (with a visible message) when its IMM photos are absent.
    fn data_root() -> Option<PathBuf> {
        let root = crate::test_data::data_root();
        if root.join("imm_face_db").is_dir() {
            Some(root)
        } else {
            eprintln!("SKIPPED: no IMM data in {}", root.display());
            None
        }
    }

    /// The data folder, or `None` (with a visible message) when its 300-W faces are absent.
    fn ibug_data_root() -> Option<PathBuf> {
        let root = data_root()?;
        if root.join("ibug_300w").is_dir() {
            Some(root)
        } else {
            eprintln!("SKIPPED: no 300-W data in {}", root.display());
            None
        }
    }

    /// The nose study recipe for `epochs` epochs, and its data.
    fn nose(epochs: usize, root: &Path) -> (TrainConfig, Dataset) {
        let mut config = TrainConfig::study(Task::Nose);
        config.epochs = epochs;
        let data = load_data(&config, root).unwrap();
        (config, data)
    }

    /// Changes a run's stored recipe, as resuming reads it.
    fn edit_stored_config(run: &RunDir, edit: impl FnOnce(&mut TrainConfig)) {
        let mut stored = run.read_config().unwrap();
        edit(&mut stored);
        write_json(&run.config(), &stored).unwrap();
    }

    #[test]
    fn a_smaller_validation_share_holds_out_a_subset_of_a_larger_ones_faces() {
        let Some(root) = ibug_data_root() else { return };
        let held_out = |fraction| {
            let mut config = TrainConfig::best(Task::Heatmap);
            config.faces.val_fraction = fraction;
            let data = load_data(&config, &root).unwrap();
            let images: Vec<PathBuf> = data.val_images.into_iter().map(|i| i.image_path).collect();
            (images, data.train.len())
        };
        let (small, small_train) = held_out(0.1);
        let (large, large_train) = held_out(0.2);
        assert_eq!((small.len(), large.len()), (201, 402));
        assert_eq!(
            small,
            large[..small.len()],
            "the 0.1 split is the 0.2 split's first faces"
        );
        assert!(small_train > large_train, "{small_train} vs {large_train}");
    }

    #[test]
    fn a_label_offset_moves_every_target_by_its_photo_pixels() {
        let Some(root) = ibug_data_root() else { return };
        let mut config = TrainConfig::best(Task::Heatmap);
        config.augment = None;
        let data = load_data(&config, &root).unwrap();
        let plain = config.sampling();
        config.faces.label_offset = [2.0, -1.0];
        let moved = config.sampling();
        let side = config.faces.crop.size as f32;
        for index in [0, 7, 500] {
            let (a, b) = (
                data.training_example(&plain, index, 3),
                data.training_example(&moved, index, 3),
            );
            assert_eq!(a.pixels, b.pixels, "face {index}: the same crop");
            // The crop's pixels per photo pixel, from the first point's shift across.
            let scale = (a.points[0][0] - b.points[0][0]) * side / 2.0;
            assert!((0.1..2.0).contains(&scale), "face {index}: scale {scale}");
            for (p, q) in a.points.iter().zip(&b.points) {
                assert!((p[0] - q[0] - 2.0 * scale / side).abs() < 1e-5);
                assert!((p[1] - q[1] + scale / side).abs() < 1e-5);
            }
        }
        // Validation targets move the same way; the photo-pixel truth stays.
        let (plain_val, moved_val) = (data.val_targets(&plain), data.val_targets(&moved));
        let Frame::Crop(transform) = data.val[0].frame else {
            panic!("300-W faces are cropped")
        };
        let per_px = transform.scale / side;
        let (p, q) = (plain_val[0].points[5], moved_val[0].points[5]);
        assert!((p[0] - q[0] - 2.0 * per_px).abs() < 1e-5 && (p[1] - q[1] + per_px).abs() < 1e-5);
        assert_eq!(plain_val[0].points, data.val[0].example.points);
    }

    #[test]
    fn a_student_learns_from_a_teacher_whose_maps_find_the_points() {
        let Some(root) = ibug_data_root() else { return };
        // A slim U-Net at 64x64 on 256 faces, taught by the shipped face68-fast (at 80x80).
        let mut config = TrainConfig::best(Task::Heatmap);
        config.set_input_size(64);
        if let crate::model::ModelConfig::Heatmap(net) = &mut config.model {
            net.unet.base_width = 8;
            net.unet.depth = 3;
        }
        config.epochs = 3;
        config.learning_rate = 1e-3;
        config.augment = None;
        // Within the teacher's held-out faces (it held out 10 %).
        config.faces.val_fraction = 0.1;
        config.distill = Some(crate::recipe::Distillation {
            teacher: "face68-fast".into(),
            weight: 0.5,
        });
        let mut data = load_data(&config, &root).unwrap();
        data.train.truncate(256);

        // The teacher's maps of faces it never trained on peak at their points: a mirrored pass
        // flipped back to the wrong side, or given to the wrong landmarks, would miss by a tenth
        // of the crop and more.
        let teacher = Teacher::load(config.distill.as_ref().unwrap(), &config).unwrap();
        let faces = &data.val_examples()[..16];
        let device = crate::backend::device();
        let peaks = crate::decode::Output::Heatmaps(teacher.maps(faces, 64, &device))
            .into_point_lists(crate::decode::Decoding::Argmax);
        let errors: Vec<f32> = peaks
            .iter()
            .zip(faces)
            .flat_map(|(found, face)| {
                found
                    .iter()
                    .zip(&face.points)
                    .map(|(p, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
            })
            .collect();
        let mean_error = errors.iter().sum::<f32>() / errors.len() as f32;
        assert!(
            mean_error < 0.04,
            "teacher's peaks {mean_error} of the side off"
        );

        // The teacher sees each training face as the student does, at its own side (80).
        let mut sampling = config.sampling();
        sampling.augment = TrainConfig::best(Task::Heatmap).augment;
        let batch = [0, 1, 2, 3];
        let student_view = data.training_batch(&sampling, &batch, 5);
        let teacher_view = data.training_batch(&teacher.sampling(&sampling), &batch, 5);
        for (s, t) in student_view.iter().zip(&teacher_view) {
            assert_eq!((s.width, t.width), (64, 80));
            let moved = s.points.iter().zip(&t.points);
            assert!(
                moved.clone().all(|(p, q)| (p[0] - q[0]).abs() < 1e-4),
                "x differs"
            );
            assert!(
                moved.clone().all(|(p, q)| (p[1] - q[1]).abs() < 1e-4),
                "y differs"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let outcome = train(&config, &data, &run, false, false).unwrap();
        let losses: Vec<f64> = outcome.state.history.iter().map(|r| r.train_loss).collect();
        assert!(losses[2] < losses[0], "{losses:?}");
        assert_eq!(run.read_config().unwrap().distill, config.distill);
    }

    #[test]
    fn a_second_training_into_a_locked_run_is_refused() {
        let Some(root) = data_root() else { return };
        let (config, data) = nose(1, &root);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held = RunLock::acquire(&run.root).unwrap();
        let err = train(&config, &data, &run, false, false).err().unwrap();
        let text = err.to_string();
        assert!(
            matches!(err, TrainError::Run(RunError::Busy { .. })),
            "{text}"
        );
        assert!(text.contains("is in use by another training"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(!run.config().exists(), "nothing written into the busy run");
        drop(held);
        train(&config, &data, &run, false, false).unwrap();
        assert!(!RunLock::path(&run.root).exists(), "released at the end");
    }

    #[test]
    fn a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
        let Some(root) = data_root() else { return };
        let (config, data) = nose(1, &root);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        train(&config, &data, &run, false, false).unwrap();
        let files = [
            run.model_last(),
            run.optimizer_last(),
            run.model_best(),
            run.state(),
        ];
        let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

        // A second epoch at an absurd learning rate: Adam moves every weight by ~1e30.
        edit_stored_config(&run, |c| c.learning_rate = 1e30);
        let longer = TrainConfig {
            epochs: 2,
            ..config.clone()
        };
        let err = train(&longer, &data, &run, true, false).err().unwrap();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(
            matches!(
                err,
                TrainError::NonFinite { epoch: 2, .. }
                    | TrainError::NonFiniteValidation { epoch: 2, .. }
            ),
            "{text}"
        );
        assert!(
            text.contains("at epoch 2") && text.contains("the last good checkpoint is kept"),
            "{text}"
        );
        for (file, bytes) in files.iter().zip(&before) {
            assert_eq!(
                &std::fs::read(file).unwrap(),
                bytes,
                "{} changed",
                file.display()
            );
        }
        assert_eq!(run.read_state().unwrap().epochs_done(), 1);
        crate::run::load_model(
            config.model.init(&crate::backend::device()),
            &run.model_last(),
        )
        .unwrap();
    }

    #[test]
    fn a_run_that_cannot_write_stops_with_a_clean_error() {
        let Some(root) = data_root() else { return };
        let (config, data) = nose(1, &root);
        let dir = tempfile::tempdir().unwrap();

        // A run folder that cannot be made (its parent is a file: refused even to root).
        let file = dir.path().join("file.txt");
        std::fs::write(&file, "").unwrap();
        let run = RunDir::new(file.join("run"));
        let err = train(&config, &data, &run, false, false).err().unwrap();
        eprintln!("{err}");
        assert!(
            matches!(err, TrainError::Run(RunError::Write { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("file.txt/run:"), "{err}");

        // A read-only run folder (only effective when not running as root).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let readonly = dir.path().join("readonly");
            std::fs::create_dir(&readonly).unwrap();
            let mode = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(&readonly, mode(0o555)).unwrap();
            if std::fs::write(readonly.join("probe"), "").is_err() {
                let err = train(&config, &data, &RunDir::new(&readonly), false, false)
                    .err()
                    .unwrap();
                assert!(err.to_string().contains("readonly"), "{err}");
            } else {
                eprintln!("read-only folder not tested: this user writes into it anyway (root)");
            }
            std::fs::set_permissions(&readonly, mode(0o755)).unwrap();
        }
    }

    #[test]
    fn a_failed_write_stops_cleanly_and_the_run_resumes() {
        let Some(root) = data_root() else { return };
        let (config, data) = nose(1, &root);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        train(&config, &data, &run, false, false).unwrap();

        // Epoch 2 cannot write its metrics: a directory stands in the file's place (a failure
        // even root meets, unlike permissions). It is the last write of an epoch, after the
        // weights: the state still says epoch 1, and every weights file is whole and checked.
        std::fs::remove_file(run.metrics()).unwrap();
        std::fs::create_dir(run.metrics()).unwrap();
        // Resuming with a longer schedule than the stored one extends the run.
        let longer = TrainConfig {
            epochs: 2,
            ..config.clone()
        };
        let err = train(&longer, &data, &run, true, false).err().unwrap();
        assert!(
            matches!(err, TrainError::Run(RunError::Write { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("metrics.csv"), "{err}");
        assert_eq!(run.read_state().unwrap().epochs_done(), 1);
        let device = crate::backend::device();
        for weights in [run.model_last(), run.model_best()] {
            crate::run::load_model(config.model.init(&device), &weights).unwrap();
        }
        assert!(
            !RunLock::path(&run.root).exists(),
            "the lock is released on error"
        );

        // The cause removed, the run resumes where its state says it stopped.
        std::fs::remove_dir(run.metrics()).unwrap();
        assert_eq!(run.read_config().unwrap().epochs, 2, "the length is stored");
        let outcome = train(&longer, &data, &run, true, false).unwrap();
        let epochs: Vec<usize> = outcome.state.history.iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, vec![1, 2]);
        // Shorter than what is trained is refused by name.
        let err = train(&config, &data, &run, true, false).err().unwrap();
        assert!(
            err.to_string().contains("trained 2 epochs already"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(run.metrics())
                .unwrap()
                .lines()
                .count(),
            3
        );
    }
}
