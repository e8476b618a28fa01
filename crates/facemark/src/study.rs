//! Experiments a library user can run: one training run with its report, a study (a part of the
//! course's study: several arms, their summary table and comparison figures), and comparisons of
//! several runs' loss curves or several models' CED curves.

use std::path::{Path, PathBuf};

use std::time::Instant;

use serde::Serialize;

use crate::data::DataError;
use crate::dataset::{DETECTOR_TRAIN_LABELS, Dataset, GroundTruth, read_labels};
use crate::decode::Decoding;
use crate::detect::DetectorConfig;
use crate::eval::LandmarkMetrics;
use crate::figures::{self, Curve, FigureError};
use crate::inference::{FacePipeline, Predictor};
use crate::model::ModelOverrides;
use crate::recipe::{Overrides, RecipeError, RecipeKind, Task, TrainConfig, TrainingBoxes};
use crate::report::{self, EvalSummary, ReportError};
use crate::run::{RunDir, RunError, models_dir, write_atomic, write_json};
use crate::train::{TrainError, load_data};

/// 300-W's test faces with tight boxes, and with the boxes dlib's HOG detector found (221 of 224),
/// relative to the data folder.
pub const TEST_LABELS: &str = "ibug_300w/labels_300w_test.xml";
pub const HOGBOX_TEST_LABELS: &str = "ibug_300w/labels_300w_test_hogbox.xml";

/// Errors of an experiment.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Figure(#[from] FigureError),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("{0}")]
    Unsuitable(String),
}

/// Where a training run goes and what happens to an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to touch a directory that holds a run.
    Refuse,
    /// Continue the run in it from its last checkpoint.
    Resume,
    /// Delete it and start over.
    Replace,
}

/// Trains `config` on `data` into `dir` and writes the run's report (evaluation and figures).
pub fn train_and_report(
    config: &TrainConfig,
    data: &Dataset,
    dir: &Path,
    existing: Existing,
    show_progress: bool,
) -> Result<(EvalSummary, crate::train::TrainOutcome), StudyError> {
    let run = RunDir::new(dir);
    if run.exists() {
        match existing {
            Existing::Refuse => return Err(RunError::Exists(dir.to_owned()).into()),
            Existing::Replace => {
                // Never wipe a run that a training is still writing. The lock is let go
                // before the wipe (`train` takes it again), so a training started in those
                // milliseconds could still lose files: a window, not a guarantee.
                drop(crate::run::RunLock::acquire(dir)?);
                std::fs::remove_dir_all(dir).map_err(|source| RunError::Write {
                    path: dir.to_owned(),
                    source,
                })?
            }
            Existing::Resume => {}
        }
    }
    let resume = existing == Existing::Resume;
    let outcome = crate::train::train(config, data, &run, resume, show_progress)?;
    let summary = report::write_report(
        &run,
        &outcome.config,
        &outcome.contract,
        data,
        &outcome.state,
        &outcome.best,
    )?;
    Ok((summary, outcome))
}

/// The faces a model is evaluated on.
#[derive(Debug, Clone, Copy)]
pub enum EvalFaces<'a> {
    /// Its own validation split from the data folder, cropped as in training (one pass).
    Validation,
    /// Its validation faces in the boxes of this label file (e.g. the HOG-box twin of the
    /// training labels), matched by photo and position; faces without a box are left out.
    ValidationInBoxes(&'a Path),
    /// Every face of a dlib XML file or .pts folder (face-box models only).
    Labels(&'a Path),
}

/// Evaluates a model (run directory or shipped name) on `faces`; in given boxes with `refine`
/// passes after the first as [`evaluate_labelled`] says. `decoding` overrides its heatmap
/// decoding.
pub fn evaluate_model(
    name: &str,
    faces: EvalFaces,
    data_root: &Path,
    decoding: Option<Decoding>,
    refine: usize,
) -> Result<(Predictor, Dataset, report::Evaluation), StudyError> {
    let mut predictor = Predictor::load(name)?;
    if let Some(decoding) = decoding {
        predictor.model.contract.decoding = decoding;
    }
    let (data, evaluation) = match faces {
        EvalFaces::Labels(path) => {
            evaluate_labelled(&predictor, name, &read_labels(path)?, refine)?
        }
        EvalFaces::ValidationInBoxes(path) => {
            if !predictor.needs_face_box() {
                return Err(StudyError::Unsuitable(format!(
                    "boxes need a face-box model; {name} sees whole photos"
                )));
            }
            let data = load_data(&predictor.model.config, data_root)?;
            let images = data.validation_in_boxes(&read_labels(path)?);
            if images.is_empty() {
                return Err(StudyError::Unsuitable(format!(
                    "none of {name}'s validation faces has a box in {}",
                    path.display()
                )));
            }
            evaluate_labelled(&predictor, name, &images, refine)?
        }
        EvalFaces::Validation => {
            let data = load_data(&predictor.model.config, data_root)?;
            let evaluation =
                report::evaluate(&predictor.model.net, &predictor.model.contract, &data, name);
            (data, evaluation)
        }
    };
    Ok((predictor, data, evaluation))
}

/// A face-box model measured on the labelled faces of `images` as `facemark predict` finds them in
/// given boxes: a first pass in each label box, then `refine` passes each from the tight box of
/// the points the pass before found (the kind of box the 300-W models were trained on). The
/// returned faces are cropped as the last pass saw them.
pub fn evaluate_labelled(
    predictor: &Predictor,
    name: &str,
    images: &[crate::data::LabeledImage],
    refine: usize,
) -> Result<(Dataset, report::Evaluation), StudyError> {
    let (net, contract) = (&predictor.model.net, &predictor.model.contract);
    let Some(crop) = contract.crop() else {
        return Err(StudyError::Unsuitable(format!(
            "labels need a face-box model; {name} evaluates on its own validation split"
        )));
    };
    let mut data = Dataset::for_evaluation(images, &crop, &contract.scheme)?;
    let mut evaluation = report::evaluate(net, contract, &data, name);
    let mut boxed = images.to_vec();
    for _ in 0..refine {
        // The faces of `data.val` are those of `images`, in order.
        let mut samples = data.val.iter().zip(&evaluation.predicted);
        for face in boxed.iter_mut().flat_map(|image| image.faces.iter_mut()) {
            if let Some((sample, predicted)) = samples.next() {
                let points = contract.offset_points(sample.to_photo(predicted));
                face.bbox = crate::data::tight_box(&points).unwrap_or(face.bbox);
            }
        }
        data = Dataset::for_evaluation(&boxed, &crop, &contract.scheme)?;
        evaluation = report::evaluate(net, contract, &data, name);
    }
    Ok((data, evaluation))
}

/// Measures a face-box model's mean offset from the labels on its own training faces (see
/// [`crate::calibrate`]); with `write`, stores the offset that cancels it in the model's
/// `inference.json`, so every later prediction gives it back.
pub fn calibrate_model(
    name: &str,
    data_root: &Path,
    write: bool,
) -> Result<crate::calibrate::Calibration, StudyError> {
    let predictor = Predictor::load(name)?;
    let model = &predictor.model;
    if !model.contract.needs_face_box() {
        return Err(StudyError::Unsuitable(format!(
            "{name} sees whole photos: calibration is for face-box models"
        )));
    }
    let data = load_data(&model.config, data_root)?;
    let calibration = crate::calibrate::calibrate(&model.net, &model.contract, &data.train);
    if write {
        let contract = crate::contract::InferenceContract {
            point_offset: calibration.offset_after,
            ..model.contract.clone()
        };
        write_json(&model.source.with_file_name("inference.json"), &contract)?;
    }
    Ok(calibration)
}

/// The whole pipeline measured on labelled photos (`eval --boxes detect`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectedEvaluation {
    /// Always `detect`: the faces were found by facemark's own detector.
    pub boxes: &'static str,
    /// Annotated faces.
    pub count: usize,
    /// Annotated faces a detection matched (IoU at least `match_iou`).
    pub detected: usize,
    pub missed: usize,
    pub match_iou: f32,
    /// Detections that matched no annotated face (other people, or false alarms).
    pub unmatched_detections: usize,
    /// Normalised errors over the detected faces; the failure rates and the AUC count missed faces
    /// as failures.
    #[serde(flatten)]
    pub landmarks: LandmarkMetrics,
    /// Mean point error over the detected faces, in photo pixels.
    pub mean_px_error: f64,
    /// Median time of detection alone per photo, and of the whole pipeline per photo.
    pub median_detection_ms: f64,
    pub median_pipeline_ms: f64,
    pub ground_truth: String,
}

/// Runs the whole pipeline (detector, then the landmark model `name`) on every photo of `labels`
/// and scores the detected faces against their annotations.
pub fn evaluate_detected(
    name: &str,
    labels: &Path,
    detector: DetectorConfig,
    refine: usize,
) -> Result<DetectedEvaluation, StudyError> {
    const MATCH_IOU: f32 = 0.3;
    let images = read_labels(labels)?;
    let mut pipeline = FacePipeline::load(name, detector)?;
    pipeline.refine = refine;
    let scheme = pipeline.landmarker.model.contract.scheme.clone();
    let (mut predicted, mut truth, mut diagonals) = (Vec::new(), Vec::new(), Vec::new());
    let (mut count, mut missed, mut unmatched) = (0, 0, 0);
    let (mut detect_ms, mut pipeline_ms) = (Vec::new(), Vec::new());
    let mut sources = GroundTruth::default();
    for image in &images {
        let gray = crate::data::load_gray(&image.image_path)?;
        let started = Instant::now();
        let detections = pipeline.detector.detect(&gray);
        detect_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let annotated: Vec<_> = image.faces.iter().map(|f| f.bbox).collect();
        let found: Vec<_> = detections.iter().map(|d| d.bbox).collect();
        let matched = crate::detect::match_detections(&annotated, &found, MATCH_IOU);
        let claimed: Vec<_> = matched.iter().flatten().map(|&j| found[j]).collect();
        let faces = pipeline.landmarks_from(&gray, &claimed, &image.image_path);
        pipeline_ms.push(started.elapsed().as_secs_f64() * 1e3);
        unmatched += found.len() - claimed.len();
        let mut faces = faces.into_iter();
        for (face, m) in image.faces.iter().zip(&matched) {
            count += 1;
            match face.source {
                crate::data::PointSource::Pts => sources.pts += 1,
                crate::data::PointSource::Labels => sources.labels += 1,
            }
            if face.points.len() != scheme.points {
                return Err(StudyError::Unsuitable(format!(
                    "{}: a face has {} points; {name} predicts {}",
                    image.image_path.display(),
                    face.points.len(),
                    scheme.points
                )));
            }
            if m.is_none() {
                missed += 1;
                continue;
            }
            let Some(p) = faces.next() else { break };
            predicted.push(p.points);
            truth.push(face.points.clone());
            diagonals.push(face.bbox.width.hypot(face.bbox.height));
        }
    }
    let mut landmarks = crate::eval::landmark_metrics(&predicted, &truth, &scheme, &diagonals);
    // Missed faces count as failures: the CED (and so AUC and failure rates) runs over all faces.
    let mut all: Vec<f32> = landmarks.per_image_nme.iter().map(|&v| v as f32).collect();
    all.extend(std::iter::repeat_n(f32::INFINITY, missed));
    landmarks.auc_0_08 = crate::eval::ced_auc(&all, 0.08) as f64;
    landmarks.failure_rate_0_08 = crate::eval::failure_rate(&all, 0.08) as f64;
    landmarks.failure_rate_0_10 = crate::eval::failure_rate(&all, 0.10) as f64;
    Ok(DetectedEvaluation {
        boxes: "detect",
        count,
        detected: count - missed,
        missed,
        match_iou: MATCH_IOU,
        unmatched_detections: unmatched,
        mean_px_error: crate::eval::point_errors(&predicted, &truth).mean_px_error,
        landmarks,
        median_detection_ms: median(&mut detect_ms),
        median_pipeline_ms: median(&mut pipeline_ms),
        ground_truth: sources.name().into(),
    })
}

/// How well the detector alone finds the annotated faces of a label set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorRecall {
    pub count: usize,
    pub detected: usize,
    pub missed: usize,
    /// `detected / count`.
    pub recall: f64,
    pub match_iou: f32,
    /// Detections that matched no annotated face.
    pub unmatched_detections: usize,
    pub photos: usize,
    pub median_detection_ms: f64,
    /// Median IoU of matched detections with their annotated boxes.
    pub median_iou: f64,
}

/// Runs the detector on every photo of `labels` and matches its boxes to the annotated ones.
pub fn detector_recall(
    labels: &Path,
    config: DetectorConfig,
) -> Result<DetectorRecall, StudyError> {
    const MATCH_IOU: f32 = 0.3;
    let images = read_labels(labels)?;
    let detector = crate::detect::FaceDetector::new(config);
    let (mut count, mut detected, mut unmatched) = (0, 0, 0);
    let (mut times, mut ious) = (Vec::new(), Vec::new());
    for image in &images {
        let gray = crate::data::images::load_photo(&image.image_path)?.into_luma8();
        let started = Instant::now();
        let found: Vec<_> = detector.detect(&gray).into_iter().map(|d| d.bbox).collect();
        times.push(started.elapsed().as_secs_f64() * 1e3);
        let annotated: Vec<_> = image.faces.iter().map(|f| f.bbox).collect();
        let matched = crate::detect::match_detections(&annotated, &found, MATCH_IOU);
        count += annotated.len();
        for (a, m) in annotated.iter().zip(&matched) {
            if let Some(j) = m {
                detected += 1;
                ious.push(crate::detect::iou(a, &found[*j]) as f64);
            }
        }
        unmatched += found.len() - matched.iter().flatten().count();
    }
    Ok(DetectorRecall {
        count,
        detected,
        missed: count - detected,
        recall: detected as f64 / count.max(1) as f64,
        match_iou: MATCH_IOU,
        unmatched_detections: unmatched,
        photos: images.len(),
        median_detection_ms: median(&mut times),
        median_iou: median(&mut ious),
    })
}

/// The middle value (the upper one of an even count), sorting `values`; NaN for none.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One arm of a study: a recipe and the changes to it.
pub struct Arm {
    pub name: &'static str,
    pub recipe: RecipeKind,
    pub overrides: Overrides,
    /// The `facemark train` flags that make the same run, for the summary table.
    pub flags: &'static str,
}

impl Arm {
    fn new(
        name: &'static str,
        recipe: RecipeKind,
        flags: &'static str,
        overrides: Overrides,
    ) -> Self {
        Self {
            name,
            recipe,
            overrides,
            flags,
        }
    }

    /// The arm's recipe for `task`.
    pub fn config(&self, task: Task) -> Result<TrainConfig, RecipeError> {
        let mut config = TrainConfig::recipe(task, self.recipe);
        self.overrides.apply(&mut config)?;
        Ok(config)
    }
}

fn model(o: ModelOverrides) -> Overrides {
    Overrides {
        model: o,
        ..Default::default()
    }
}

/// The arms of one part of the study.
pub fn study_arms(task: Task) -> Vec<Arm> {
    use RecipeKind::{Best, Study};
    let none = Overrides::default;
    match task {
        Task::Nose => vec![
            Arm::new("study", Study, "", none()),
            Arm::new(
                "lr_1e-4",
                Study,
                "--lr 1e-4",
                Overrides {
                    learning_rate: Some(1e-4),
                    ..none()
                },
            ),
            Arm::new(
                "width_12",
                Study,
                "--width 12",
                model(ModelOverrides {
                    width: Some(12),
                    ..Default::default()
                }),
            ),
            Arm::new("best", Best, "--recipe best", none()),
        ],
        Task::Imm58 => vec![
            Arm::new("avg_pool", Study, "", none()),
            Arm::new(
                "max_pool",
                Study,
                "--pooling max",
                model(ModelOverrides {
                    pooling: Some(crate::model::Pooling::Max),
                    ..Default::default()
                }),
            ),
            Arm::new(
                "no_augment",
                Study,
                "--no-augment",
                Overrides {
                    no_augment: true,
                    ..none()
                },
            ),
            Arm::new("best", Best, "--recipe best", none()),
        ],
        // About 40 minutes each on 2 cores (resumable: rerun the study to continue).
        Task::Ibug68 => vec![
            Arm::new(
                "tight",
                Best,
                "--recipe best --train-boxes tight",
                Overrides {
                    training_boxes: Some(TrainingBoxes::Given),
                    ..none()
                },
            ),
            Arm::new(
                "detector",
                Best,
                "--recipe best --train-boxes detector",
                Overrides {
                    training_boxes: Some(TrainingBoxes::Detector),
                    ..none()
                },
            ),
            Arm::new("both", Best, "--recipe best", none()),
        ],
        // About 80 minutes each on 2 cores.
        Task::Heatmap => vec![
            Arm::new("gaussian", Best, "--recipe best", none()),
            Arm::new(
                "binary",
                Best,
                "--recipe best --target binary",
                model(ModelOverrides {
                    target: Some(crate::heatmap::TargetKind::Binary),
                    ..Default::default()
                }),
            ),
        ],
    }
}

/// A finished study.
pub struct StudyReport {
    /// The summary table (markdown), also written to `summary.md`.
    pub table: String,
    /// Each arm's run directory.
    pub runs: Vec<PathBuf>,
}

/// Runs (or resumes) every arm of a part of the study into `runs_root/<task>/<arm>`, copies their
/// small outputs into `out/<arm>` and writes the summary table and comparison figures into `out`.
pub fn run_study(
    task: Task,
    data_root: &Path,
    out: &Path,
    runs_root: &Path,
    show_progress: bool,
) -> Result<StudyReport, StudyError> {
    let mut table = String::from(match task {
        Task::Heatmap => {
            "| run | command | best epoch | val NME (tight boxes) | val NME (detector boxes) | test NME (tight) | test NME (hogbox) | hogbox AUC@0.08 | hogbox failures@0.10 | test NME, argmax (tight) | test NME, argmax (hogbox) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        }
        Task::Ibug68 => {
            "| run | command | best epoch | val NME (tight boxes) | val NME (detector boxes) | test NME (tight) | test NME (hogbox) | hogbox AUC@0.08 | hogbox failures@0.10 |\n|---|---|---|---|---|---|---|---|---|\n"
        }
        Task::Nose | Task::Imm58 => {
            "| run | command | best epoch | val MSE | mean error (px, 640x480) | median (px) | mean shape (px) |\n|---|---|---|---|---|---|---|\n"
        }
    });
    let mut runs = Vec::new();
    // Arms that crop from other boxes need their own training data.
    let mut loaded: Option<(crate::dataset::FaceDataConfig, Dataset)> = None;
    for arm in study_arms(task) {
        let config = arm.config(task)?;
        if loaded
            .as_ref()
            .is_none_or(|(faces, _)| *faces != config.faces)
        {
            loaded = Some((config.faces.clone(), load_data(&config, data_root)?));
        }
        let Some((_, data)) = loaded.as_ref() else {
            unreachable!("loaded just above")
        };
        let dir = runs_root.join(task.name()).join(arm.name);
        let existing = if RunDir::new(&dir).exists() {
            Existing::Resume
        } else {
            Existing::Refuse
        };
        let (summary, outcome) = train_and_report(&config, data, &dir, existing, show_progress)?;
        let command = format!("`facemark train {} {}`", task.name(), arm.flags);
        let best_epoch = outcome.state.best_epoch.unwrap_or(0);
        copy_results(&dir, &out.join(arm.name))?;
        if task.crops_faces() {
            let m = face_study_metrics(&dir, data, data_root, &out.join(arm.name))?;
            let argmax = m
                .argmax
                .map(|[test, hogbox]| format!(" {:.2} % | {:.2} % |", test.nme, hogbox.nme))
                .unwrap_or_default();
            table.push_str(&format!(
                "| {} | {command} | {best_epoch} | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {:.3} | {:.1} % |{argmax}\n",
                arm.name,
                m.val.nme,
                m.val_detector.nme,
                m.test.nme,
                m.hogbox.nme,
                m.hogbox.auc_0_08,
                100.0 * m.hogbox.failure_rate_0_10,
            ));
        } else {
            table.push_str(&format!(
                "| {} | {command} | {best_epoch} | {:.5} | {:.2} | {:.2} | {:.2} |\n",
                arm.name,
                summary.mse,
                summary.mean_px_error,
                summary.median_px_error,
                summary.mean_shape_px_error.unwrap_or(f64::NAN)
            ));
        }
        runs.push(dir);
    }
    compare_losses(&runs, &out.join("comparison.png"))?;
    if task.crops_faces() {
        // Heatmap curves against the shipped ResNet18 (Part 3), when there is one.
        let mut models: Vec<String> = runs.iter().map(|r| r.to_string_lossy().into()).collect();
        if task == Task::Heatmap && models_dir().join("ibug68").is_dir() {
            models.push("ibug68".into());
        }
        for (labels, figure) in [
            (TEST_LABELS, "ced_test.png"),
            (HOGBOX_TEST_LABELS, "ced_test_hogbox.png"),
        ] {
            // One pass, as the study's own test metrics (`face_study_metrics`) measure.
            compare_ced(&models, &data_root.join(labels), &out.join(figure), 0)?;
        }
    }
    write_atomic(&out.join("summary.md"), table.as_bytes())?;
    Ok(StudyReport { table, runs })
}

/// Draws the validation and training loss curves of several runs on one plot.
pub fn compare_losses(runs: &[PathBuf], out: &Path) -> Result<(), StudyError> {
    let mut curves = Vec::new();
    let mut loss_names = Vec::new();
    for dir in runs {
        let run = RunDir::new(dir);
        let state = run.read_state()?;
        let loss_name = run.read_config()?.model.loss_name();
        if !loss_names.contains(&loss_name) {
            loss_names.push(loss_name);
        }
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        curves.push(Curve {
            label: format!("{name} (validation)"),
            values: state.history.iter().map(|r| r.val_loss as f32).collect(),
            dashed: false,
        });
        curves.push(Curve {
            label: format!("{name} (training)"),
            values: state.history.iter().map(|r| r.train_loss as f32).collect(),
            dashed: true,
        });
    }
    let y_label = format!("loss ({})", loss_names.join(" / "));
    figures::loss_curves(out, "loss per epoch", &y_label, &curves)?;
    Ok(())
}

/// Evaluates each entry on `labels` and draws their CED curves on one plot; returns each entry's
/// metrics. An entry is a model (run directory or shipped name), or `NAME=PREDICTIONS.xml`: another
/// system's predictions (a dlib XML holding the label file's faces in the same order, dlib's point
/// convention), scored against the same truth (see [`score_predictions`]). Models look `refine`
/// times again from their own points' box (see [`evaluate_labelled`]).
pub fn compare_ced(
    entries: &[String],
    labels: &Path,
    out: &Path,
    refine: usize,
) -> Result<Vec<(String, LandmarkMetrics)>, StudyError> {
    let images = read_labels(labels)?;
    let mut curves = Vec::new();
    let mut measured = Vec::new();
    for entry in entries {
        let (label, metrics) = match entry.split_once('=') {
            Some((name, predictions)) => (
                name.to_string(),
                score_predictions(
                    &crate::data::dlib_xml::read_dlib_xml(Path::new(predictions))?,
                    &images,
                    labels,
                )?,
            ),
            None => (
                Path::new(entry)
                    .file_name()
                    .map_or_else(|| entry.clone(), |f| f.to_string_lossy().into_owned()),
                evaluate_on(entry, &images, labels, refine)?,
            ),
        };
        curves.push(Curve {
            label: format!("{label} ({:.2} %)", metrics.nme),
            values: metrics.per_image_nme.iter().map(|&v| v as f32).collect(),
            dashed: false,
        });
        measured.push((label, metrics));
    }
    let title = format!(
        "cumulative error distribution on {}",
        labels.file_name().unwrap_or_default().to_string_lossy()
    );
    figures::ced_curves(out, &title, &curves, 0.10)?;
    Ok(measured)
}

/// A face-box model's metrics on the faces of `images` (read from `labels`), with `refine`
/// passes as [`evaluate_labelled`] says.
fn evaluate_on(
    name: &str,
    images: &[crate::data::LabeledImage],
    labels: &Path,
    refine: usize,
) -> Result<LandmarkMetrics, StudyError> {
    let predictor = Predictor::load(name)?;
    let (_, evaluation) = evaluate_labelled(&predictor, name, images, refine)?;
    evaluation.summary.landmarks.ok_or_else(|| {
        StudyError::Unsuitable(format!("{name} found no faces in {}", labels.display()))
    })
}

/// Scores another system's predictions against the truth of `labels` (read into `truth`, `.pts`
/// points preferred as everywhere): face `i` of `predicted` (images and boxes in the label file's
/// order) against face `i` of the labels, with the same metrics as `eval`: errors normalised as
/// the points' scheme says (inter-ocular for iBUG's 68), the label box's diagonal otherwise.
pub fn score_predictions(
    predicted: &[crate::data::LabeledImage],
    truth: &[crate::data::LabeledImage],
    labels: &Path,
) -> Result<LandmarkMetrics, StudyError> {
    let faces =
        |images: &[crate::data::LabeledImage]| -> Vec<(PathBuf, crate::data::AnnotatedFace)> {
            images
                .iter()
                .flat_map(|image| {
                    image
                        .faces
                        .iter()
                        .map(|face| (image.image_path.clone(), face.clone()))
                })
                .collect()
        };
    let (predicted, truth) = (faces(predicted), faces(truth));
    if predicted.len() != truth.len() {
        return Err(StudyError::Unsuitable(format!(
            "the predictions hold {} faces and {} holds {}: they must list the same faces in the same order",
            predicted.len(),
            labels.display(),
            truth.len()
        )));
    }
    for (i, ((p_path, p), (t_path, t))) in predicted.iter().zip(&truth).enumerate() {
        if p_path.file_name() != t_path.file_name() || p.points.len() != t.points.len() {
            return Err(StudyError::Unsuitable(format!(
                "face {} of the predictions ({}, {} points) does not match face {} of {} ({}, {} points)",
                i + 1,
                p_path.display(),
                p.points.len(),
                i + 1,
                labels.display(),
                t_path.display(),
                t.points.len()
            )));
        }
    }
    let shapes = |faces: &[(PathBuf, crate::data::AnnotatedFace)]| -> Vec<Vec<crate::data::Point>> {
        faces.iter().map(|(_, f)| f.points.clone()).collect()
    };
    let (predicted_points, true_points) = (shapes(&predicted), shapes(&truth));
    let first = true_points.first().cloned().unwrap_or_default();
    let scheme = crate::scheme::LandmarkScheme::for_labels(first.len(), &first);
    let diagonals: Vec<f32> = truth
        .iter()
        .map(|(_, f)| f.bbox.width.hypot(f.bbox.height))
        .collect();
    Ok(crate::eval::landmark_metrics(
        &predicted_points,
        &true_points,
        &scheme,
        &diagonals,
    ))
}

/// A face-box run's best model measured for the study table.
struct FaceStudyMetrics {
    val: LandmarkMetrics,
    /// The validation faces cropped from the detector's boxes.
    val_detector: LandmarkMetrics,
    test: LandmarkMetrics,
    hogbox: LandmarkMetrics,
    /// Heatmap models: the test sets again with argmax decoding.
    argmax: Option<[LandmarkMetrics; 2]>,
}

/// A face-box run's best model on its validation faces (given, then detector boxes) and on both
/// test sets; writes `test.json`, `test_hogbox.json` and their figures into `dest`.
fn face_study_metrics(
    run: &Path,
    data: &Dataset,
    data_root: &Path,
    dest: &Path,
) -> Result<FaceStudyMetrics, StudyError> {
    let mut predictor = Predictor::load(&run.to_string_lossy())?;
    let name = predictor.model.config.task.name();
    let crop = predictor.model.config.crop().clone();
    let measure = |predictor: &Predictor, data: &Dataset, figures: Option<&str>| {
        let (net, contract) = (&predictor.model.net, &predictor.model.contract);
        let evaluation = report::evaluate(net, contract, data, name);
        if let Some(prefix) = figures {
            write_json(&dest.join(format!("{prefix}.json")), &evaluation.summary)?;
            report::write_evaluation_figures(
                &dest.join(prefix),
                prefix,
                net,
                contract,
                data,
                &evaluation,
            )?;
        }
        evaluation
            .summary
            .landmarks
            .ok_or_else(|| StudyError::Unsuitable("no faces to measure".into()))
    };
    let detector_boxes = read_labels(&data_root.join(DETECTOR_TRAIN_LABELS))?;
    let scheme = &predictor.model.contract.scheme;
    let test = |labels: &str| -> Result<Dataset, StudyError> {
        let images = read_labels(&data_root.join(labels))?;
        Ok(Dataset::for_evaluation(&images, &crop, scheme)?)
    };
    let (test_data, hogbox_data) = (test(TEST_LABELS)?, test(HOGBOX_TEST_LABELS)?);
    let mut measured = FaceStudyMetrics {
        val: measure(&predictor, data, None)?,
        val_detector: measure(
            &predictor,
            &data.validation_with_boxes(&crop, &detector_boxes)?,
            None,
        )?,
        test: measure(&predictor, &test_data, Some("test"))?,
        hogbox: measure(&predictor, &hogbox_data, Some("test_hogbox"))?,
        argmax: None,
    };
    if predictor.model.config.model.validation_metric()
        == crate::model::ValidationMetric::TrainingLoss
    {
        predictor.model.contract.decoding = Decoding::Argmax;
        measured.argmax = Some([
            measure(&predictor, &test_data, None)?,
            measure(&predictor, &hogbox_data, None)?,
        ]);
    }
    Ok(measured)
}

/// Copies a run's small outputs (config, metrics, evaluation, figures) into `dest`.
fn copy_results(run: &Path, dest: &Path) -> Result<(), RunError> {
    let copy = |from: PathBuf, to: PathBuf| -> Result<(), RunError> {
        let bytes = std::fs::read(&from).map_err(|source| RunError::Read { path: from, source })?;
        write_atomic(&to, &bytes)
    };
    for file in ["config.json", "metrics.csv", "eval.json"] {
        copy(run.join(file), dest.join(file))?;
    }
    let figures = run.join("figures");
    let entries = std::fs::read_dir(&figures).map_err(|source| RunError::Read {
        path: figures.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        copy(path.clone(), dest.join("figures").join(entry.file_name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300-W's test faces (.pts points preferred), or `None` with a visible message.
    fn test_faces() -> Option<(PathBuf, Vec<crate::data::LabeledImage>)> {
        let labels = crate::test_data::data_root().join(TEST_LABELS);
        if !labels.is_file() {
            eprintln!("SKIPPED: no {}", labels.display());
            return None;
        }
        let images = read_labels(&labels).unwrap();
        Some((labels, images))
    }

    #[test]
    fn predictions_are_scored_against_the_labels_truth() {
        let Some((labels, truth)) = test_faces() else {
            return;
        };
        let exact = score_predictions(&truth, &truth, &labels).unwrap();
        assert_eq!(exact.per_image_nme.len(), 224);
        assert_eq!(exact.nme, 0.0);
        // Every point 1 px to the right: each face's NME is 1 / its inter-ocular distance.
        let mut shifted = truth.clone();
        for face in shifted.iter_mut().flat_map(|image| image.faces.iter_mut()) {
            face.points.iter_mut().for_each(|p| p[0] += 1.0);
        }
        let metrics = score_predictions(&shifted, &truth, &labels).unwrap();
        let faces = truth.iter().flat_map(|image| &image.faces);
        let expected = faces
            .map(|f| {
                100.0
                    / (f.points[36][0] - f.points[45][0]).hypot(f.points[36][1] - f.points[45][1])
                        as f64
            })
            .sum::<f64>()
            / 224.0;
        assert!(
            (metrics.nme - expected).abs() < 1e-4,
            "{} vs {expected}",
            metrics.nme
        );
        assert_eq!(metrics.normaliser, "inter_ocular");
        // A file missing a face, or listing faces in another order, is refused.
        let missing = &truth[1..];
        assert!(score_predictions(missing, &truth, &labels).is_err());
        let mut swapped = truth.clone();
        swapped.swap(0, 1);
        let error = score_predictions(&swapped, &truth, &labels)
            .unwrap_err()
            .to_string();
        assert!(error.contains("face 1"), "{error}");
    }

    /// Given boxes of another kind than the training crops' (dlib's HOG boxes here) frame faces
    /// differently: a second look from the model's own landmark box is better (face68-fast on its
    /// validation faces: 3.32 % in one pass, 3.24 % refined), and the faces stay those given.
    #[test]
    fn a_pass_from_the_models_own_landmark_box_improves_on_hog_boxes() {
        let root = crate::test_data::data_root();
        let hog_boxes = root.join("ibug_300w/labels_300w_train_hogbox.xml");
        if !hog_boxes.is_file() {
            eprintln!("SKIPPED: no {}", hog_boxes.display());
            return;
        }
        let faces = EvalFaces::ValidationInBoxes(&hog_boxes);
        let nme = |refine| {
            let (_, data, evaluation) =
                evaluate_model("face68-fast", faces, &root, None, refine).unwrap();
            let metrics = evaluation.summary.landmarks.unwrap();
            (data.val.len(), metrics.nme, data)
        };
        let (count, one_pass, given) = nme(0);
        let (refined_count, refined, looked) = nme(1);
        // 186 of the 201 validation faces have a HOG box.
        assert_eq!((count, refined_count), (186, 186));
        assert!(refined < one_pass - 0.04, "{refined} vs {one_pass}");
        // The second pass cropped each face from the tight box of its first-pass points: the
        // truth's own tight box, give or take the model's error.
        for (first, second) in given.val.iter().zip(&looked.val) {
            assert_eq!(first.truth, second.truth);
            let truth = crate::data::tight_box(&second.truth).unwrap();
            let looked = second.bbox.unwrap();
            assert_ne!(first.bbox.unwrap(), looked);
            let off = (looked.left - truth.left).abs() + (looked.width - truth.width).abs();
            assert!(off < 0.25 * truth.width, "{looked:?} vs {truth:?}");
        }
    }

    #[test]
    fn every_arm_builds_a_valid_recipe() {
        for task in Task::ALL {
            let arms = study_arms(task);
            assert!(!arms.is_empty());
            for arm in arms {
                arm.config(task)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", task.name(), arm.name));
            }
        }
    }
}
