//! Recipes: everything that defines a training run ([`TrainConfig`], written to `config.json`),
//! the study's and facemark's best recipe per task, and [`Overrides`], the changes a user asks
//! for (the command line's flags, or a study arm's), applied in one place.

use std::path::{Path, PathBuf};

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, ModuleOptimizer};
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::contract::{InferenceContract, InputFrame};
use crate::crop::CropConfig;
use crate::dataset::{DETECTOR_TRAIN_LABELS, FaceDataConfig};
use crate::decode::Decoding;
use crate::model::{ModelConfig, ModelOverrides, NotApplicable, Pooling};
use crate::scheme::LandmarkScheme;

/// What a model learns to find: the four parts of the study, each with its own data, network
/// family and recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The nose tip (IMM point 52) at 80x60: Part 1.
    Nose,
    /// All 58 IMM points at 160x120: Part 2.
    Imm58,
    /// Face-box landmarks (300-W's 68 iBUG points by default) with ResNet18: Part 3.
    Ibug68,
    /// Face-box landmarks as heatmaps from a U-Net: Part 4.
    Heatmap,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Nose, Task::Imm58, Task::Ibug68, Task::Heatmap];

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

    /// The landmark scheme the task's default data uses.
    pub fn default_scheme(self) -> LandmarkScheme {
        match self {
            Task::Nose => LandmarkScheme::nose(),
            Task::Imm58 => LandmarkScheme::imm58(),
            Task::Ibug68 | Task::Heatmap => LandmarkScheme::ibug68(),
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown task {s:?} (nose, imm58, ibug68, heatmap)"))
    }
}

/// Learning-rate schedule over epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The same rate every epoch (the study's).
    Constant,
    /// Cosine decay from the rate to 2 % of it at the last epoch.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            _ => Err(format!("unknown schedule {s:?} (constant, cosine)")),
        }
    }
}

/// The two recipes every task has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecipeKind {
    /// The study's recipe, as the course gave it.
    #[default]
    Study,
    /// facemark's best recipe, chosen on validation data (see results/).
    Best,
}

/// The face boxes a face-box model trains from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainingBoxes {
    /// The boxes of the label file itself (300-W: tight landmark boxes).
    Given,
    /// dlib's HOG detector boxes (labels_300w_train_hogbox.xml; faces it missed are left out).
    Detector,
    /// Either, drawn at random each epoch.
    Both,
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
    /// The landmark markup; `None` (configs from before schemes) means the task's default.
    #[serde(default)]
    pub scheme: Option<LandmarkScheme>,
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
    /// Average each prediction with that on the mirrored image (needs the scheme's mirror pairs).
    #[serde(default)]
    pub test_time_flip: bool,
    /// Where the training faces' points came from (measured when training starts; absent in runs
    /// from before `.pts` files were preferred, which trained on the label file's points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ground_truth: Option<crate::dataset::GroundTruth>,
    /// Precision of the convolutions' matrix products while training: the one in force when the
    /// run started (`kernels::precision`), kept when it resumes. Older runs: f32.
    #[serde(default = "runs_before_precision")]
    pub precision: crate::kernels::Precision,
    /// A teacher whose maps join the truth in the training targets (heatmap networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distillation>,
}

/// Knowledge distillation: each training target is a mix of the truth's map and a trained
/// heatmap model's probability map of the same (augmented) image. Where the truth is one
/// point, the teacher's map says how unsure a point is along its contour, which a small net
/// learns from more easily than from the points alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distillation {
    /// A run directory (absolute) or a shipped model's name (the `distill` module loads it).
    pub teacher: String,
    /// Share of each target taken from the teacher's map, in (0, 1]; the rest is the truth's.
    pub weight: f32,
}

/// Runs recorded before the precision was: all trained in f32.
fn runs_before_precision() -> crate::kernels::Precision {
    crate::kernels::Precision::F32
}

/// A recipe that cannot be built as asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    NotApplicable(#[from] NotApplicable),
    #[error("{option} applies to the face-box tasks (ibug68, heatmap), not to {task}")]
    FaceBoxOnly {
        option: &'static str,
        task: &'static str,
    },
    #[error("{family} has a fixed input size")]
    FixedInputSize { family: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "a resumed run keeps the recipe it started with; these settings differ from it: {0} \
         (start a new run to change them)"
    )]
    ContradictsStoredRecipe(String),
}

impl TrainConfig {
    /// A task's recipe of the given kind.
    pub fn recipe(task: Task, kind: RecipeKind) -> Self {
        match kind {
            RecipeKind::Study => Self::study(task),
            RecipeKind::Best => Self::best(task),
        }
    }

    /// The study's recipe for a task: MSE, Adam 1e-3, 75 epochs, no augmentation for the nose and
    /// the study's affine augmentation for all 58 points; for heatmaps a U-Net at 224 with
    /// Gaussian targets (sigma 5), cross-entropy and Adam 5e-4.
    pub fn study(task: Task) -> Self {
        let mirrored = || {
            Some(AugmentConfig {
                mirror: true,
                ..AugmentConfig::default()
            })
        };
        let (model, augment) = match task {
            Task::Nose => (ModelConfig::nose(), None),
            Task::Imm58 => (ModelConfig::imm(), Some(AugmentConfig::default())),
            Task::Ibug68 => (ModelConfig::resnet(), mirrored()),
            Task::Heatmap => (ModelConfig::heatmap(), mirrored()),
        };
        let learning_rate = if task == Task::Heatmap { 5e-4 } else { 1e-3 };
        Self {
            task,
            model,
            train_persons: [1, 32],
            faces: FaceDataConfig::default(),
            scheme: Some(task.default_scheme()),
            augment,
            epochs: 75,
            batch_size: 16,
            learning_rate,
            schedule: Schedule::Constant,
            weight_decay: 0.0,
            seed: 42,
            test_time_flip: false,
            precision: crate::kernels::Precision::default(),
            ground_truth: None,
            distill: None,
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
                    mirror: true,
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
                    augment.mirror = true;
                }
                config.epochs = 120;
                config.schedule = Schedule::Cosine;
                config.test_time_flip = true;
            }
            // 112x112 trains 29.2 img/s on 2 cores against 9.2 at 224 (results/ibug68/bench*.jsonl),
            // so 30 epochs fit in about 40 minutes. Mirror-averaged prediction cut
            // the validation NME from 7.2 % to 6.4 % mid-training. Crops from tight and detector
            // boxes gave the lowest worst-case validation NME over the two box kinds.
            Task::Ibug68 | Task::Heatmap => {
                if let ModelConfig::Heatmap(net) = &mut config.model {
                    net.use_shape_prior = true;
                    // The windowed mean beats the parabola through the peak by 0.05 points of
                    // validation NME at 112 and at 80 pixels (results/face68.md).
                    net.decoding = Decoding::LocalMean;
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

    /// The landmark scheme (the task's default for configs that predate schemes).
    pub fn scheme(&self) -> LandmarkScheme {
        self.scheme
            .clone()
            .unwrap_or_else(|| self.task.default_scheme())
    }

    /// Sets the landmark scheme and the network's output count with it.
    pub fn set_scheme(&mut self, scheme: LandmarkScheme) {
        self.model.set_points(scheme.points);
        self.scheme = Some(scheme);
    }

    /// Sets the square input side of a face-box model and its crops together (fixed-size
    /// networks refuse).
    pub fn set_input_size(&mut self, size: usize) -> bool {
        if !self.model.set_input_size(size) {
            return false;
        }
        self.faces.crop.size = size;
        true
    }

    /// What inference needs besides the weights: how a photo becomes the network's input and how
    /// its output becomes points.
    pub fn contract(&self) -> InferenceContract {
        let scheme = self.scheme();
        let (width, height) = self.model.input_size();
        InferenceContract {
            input_width: width,
            input_height: height,
            frame: if self.task.crops_faces() {
                InputFrame::FaceCrop {
                    enlarge: self.faces.crop.enlarge,
                }
            } else {
                InputFrame::WholeImage
            },
            pixels: Default::default(),
            mirror_average: self.test_time_flip && scheme.mirror.is_some(),
            decoding: self.model.decoding(),
            scheme,
            point_offset: self.label_offset(),
        }
    }

    /// The crop a face-box model's input is cut with.
    pub fn crop(&self) -> &CropConfig {
        &self.faces.crop
    }

    /// Checks the settings once, before any work.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let invalid = |s: String| Err(RecipeError::Invalid(s));
        if self.epochs == 0 || self.batch_size == 0 {
            return invalid("epochs and batch size must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return invalid(format!(
                "learning rate {} must be positive",
                self.learning_rate
            ));
        }
        self.model.validate().map_err(RecipeError::Invalid)?;
        self.scheme().validate().map_err(RecipeError::Invalid)?;
        let fraction = self.faces.val_fraction;
        if !(fraction > 0.0 && fraction <= 0.5) {
            // Checkpoints are chosen on the held-out faces: there must be some, and most faces
            // should train.
            return invalid(format!(
                "validation fraction {fraction} must be above 0 and at most 0.5"
            ));
        }
        if let Some(distill) = &self.distill {
            if !(distill.weight > 0.0 && distill.weight <= 1.0) {
                return invalid(format!(
                    "the teacher's share of the targets {} must be above 0 and at most 1",
                    distill.weight
                ));
            }
            if !self.model.learns_probability_maps() {
                return invalid(format!(
                    "only heatmap networks trained with cross-entropy learn from a teacher's \
                     maps, not {} with {}",
                    self.model.family_name(),
                    self.model.loss_name()
                ));
            }
        }
        if self.train_persons[0] > self.train_persons[1] {
            return invalid(format!(
                "train persons {:?} is an empty range",
                self.train_persons
            ));
        }
        Ok(())
    }

    /// Whether `other` splits the same labels with the same seeded shuffle: each then holds out
    /// the first faces of one order, and the smaller share's faces are among the larger's.
    pub fn shares_validation_shuffle(&self, other: &TrainConfig) -> bool {
        (&self.faces.labels, self.seed) == (&other.faces.labels, other.seed)
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
    pub fn test_time_mirror(&self) -> Option<Vec<usize>> {
        self.scheme().mirror.filter(|_| self.test_time_flip)
    }

    /// Photo pixels the labels are moved by before training and the predictions are moved back
    /// by (`FaceDataConfig::label_offset`); whole-photo tasks have none.
    pub fn label_offset(&self) -> crate::data::Point {
        if self.task.crops_faces() {
            self.faces.label_offset
        } else {
            [0.0, 0.0]
        }
    }

    /// The mirror permutation that augmentation flips with, if it flips.
    pub fn augment_mirror(&self) -> Option<Vec<usize>> {
        let flips = self.augment.as_ref().is_some_and(|a| a.mirror);
        self.scheme().mirror.filter(|_| flips)
    }

    /// The recipe's optimiser (Adam, with the recipe's weight decay).
    pub fn optimizer(&self) -> ModuleOptimizer {
        let weight_decay =
            (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay));
        AdamConfig::new().with_weight_decay(weight_decay).init()
    }
}

/// Training crops from either the given (tight) boxes or the detector's.
pub fn both_box_kinds(labels: &Path) -> Vec<PathBuf> {
    vec![labels.to_owned(), DETECTOR_TRAIN_LABELS.into()]
}

/// Changes to a recipe, as a user asks for them; `None`/`false` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub schedule: Option<Schedule>,
    pub weight_decay: Option<f32>,
    pub seed: Option<u64>,
    /// Train on the images as they are.
    pub no_augment: bool,
    /// Augmentation ranges to change (starting from the study's ranges where the recipe has
    /// none).
    pub augment: AugmentOverrides,
    /// Square input side (face-box networks).
    pub input_size: Option<usize>,
    /// Which boxes face-box training crops start from.
    pub training_boxes: Option<TrainingBoxes>,
    /// Share of the face-box labels held out for validation. The held-out faces are the first of
    /// one seeded shuffle, so a smaller share holds out a subset of a larger one's faces.
    pub val_fraction: Option<f32>,
    /// Photo pixels subtracted from every face-box label before training and added back to the
    /// predictions (`FaceDataConfig::label_offset`).
    pub label_offset: Option<crate::data::Point>,
    /// Face-box labels to train on instead of the task's (a dlib XML or image + .pts folder,
    /// absolute or relative to the data folder): any point count.
    pub labels: Option<PathBuf>,
    /// Average each prediction with that on the mirrored image (twice the work per face).
    pub test_time_flip: Option<bool>,
    /// Learn from a teacher's maps beside the truth.
    pub distill: Option<Distillation>,
    /// The network's own settings.
    pub model: ModelOverrides,
}

impl Overrides {
    /// Applies every set override to `config`, refusing those that do not apply to its task or
    /// network family; validates the result.
    pub fn apply(&self, config: &mut TrainConfig) -> Result<(), RecipeError> {
        set(&mut config.epochs, self.epochs);
        set(&mut config.batch_size, self.batch_size);
        set(&mut config.learning_rate, self.learning_rate);
        set(&mut config.schedule, self.schedule);
        set(&mut config.weight_decay, self.weight_decay);
        set(&mut config.seed, self.seed);
        set(&mut config.test_time_flip, self.test_time_flip);
        if self.no_augment {
            if !self.augment.is_empty() {
                return Err(RecipeError::Invalid(
                    "augmentation ranges were given along with no_augment".into(),
                ));
            }
            config.augment = None;
        } else if !self.augment.is_empty() {
            let augment = config.augment.get_or_insert_with(AugmentConfig::default);
            self.augment.apply(augment)?;
        }
        let task = config.task.name();
        let faces_only = |option: &'static str| RecipeError::FaceBoxOnly { option, task };
        if let Some(labels) = &self.labels {
            if !config.task.crops_faces() {
                return Err(faces_only("labels"));
            }
            config.faces.labels = labels.clone();
            // Other markups bring their own scheme, measured when the data loads; the detector
            // boxes belong to 300-W's training faces only.
            config.scheme = None;
            config.faces.training_boxes.clear();
        }
        if let Some(boxes) = self.training_boxes {
            if !config.task.crops_faces() {
                return Err(faces_only("training_boxes"));
            }
            config.faces.training_boxes = match boxes {
                TrainingBoxes::Given => Vec::new(),
                TrainingBoxes::Detector => vec![DETECTOR_TRAIN_LABELS.into()],
                TrainingBoxes::Both => both_box_kinds(&config.faces.labels),
            };
        }
        if let Some(fraction) = self.val_fraction {
            if !config.task.crops_faces() {
                return Err(faces_only("val_fraction"));
            }
            config.faces.val_fraction = fraction;
        }
        if let Some(offset) = self.label_offset {
            if !config.task.crops_faces() {
                return Err(faces_only("label_offset"));
            }
            config.faces.label_offset = offset;
        }
        config.model.apply(&self.model)?;
        if let Some(distill) = &self.distill {
            config.distill = Some(distill.clone());
        }
        if let Some(size) = self.input_size
            && !config.set_input_size(size)
        {
            return Err(RecipeError::FixedInputSize {
                family: config.model.family_name(),
            });
        }
        config.validate()
    }

    /// The recipe a resumed run trains on: `stored` as it is, except that `--epochs` may lengthen
    /// (or shorten) the schedule; a cosine schedule is then spread over the new length, so a
    /// finished run continues from a raised rate (a warm restart). Every other override must
    /// repeat the stored recipe.
    pub fn resumed(&self, stored: &TrainConfig) -> Result<TrainConfig, RecipeError> {
        let mut resumed = stored.clone();
        if let Some(epochs) = self.epochs {
            resumed.epochs = epochs;
        }
        let mut changed = resumed.clone();
        self.apply(&mut changed)?;
        if changed == resumed {
            return Ok(resumed);
        }
        let (a, b) = (json_fields(&resumed), json_fields(&changed));
        let differing: Vec<String> = b
            .iter()
            .filter(|(key, value)| a.get(*key) != Some(value))
            .map(|(key, value)| {
                format!(
                    "{key} = {value} (stored: {})",
                    a.get(key).map_or("none".into(), |v| v.to_string())
                )
            })
            .collect();
        Err(RecipeError::ContradictsStoredRecipe(differing.join("; ")))
    }
}

/// Changes to the augmentation ranges; `None` leaves a range as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AugmentOverrides {
    pub rotate_degrees: Option<f32>,
    pub translate: Option<f32>,
    pub scale: Option<[f32; 2]>,
    pub occlusion: Option<f32>,
}

impl AugmentOverrides {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn apply(&self, augment: &mut AugmentConfig) -> Result<(), RecipeError> {
        let invalid = |s: String| Err(RecipeError::Invalid(s));
        if let Some(p) = self.occlusion
            && !(0.0..=1.0).contains(&p)
        {
            return invalid(format!("occlusion {p} is a probability (0 to 1)"));
        }
        if let Some([lo, hi]) = self.scale
            && !(lo > 0.0 && lo <= hi && hi.is_finite())
        {
            return invalid(format!("scale range {lo},{hi} must be 0 < min <= max"));
        }
        set(&mut augment.rotate_degrees, self.rotate_degrees);
        set(&mut augment.translate, self.translate);
        if self.scale.is_some() {
            augment.scale = self.scale;
        }
        set(&mut augment.occlusion, self.occlusion);
        Ok(())
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *target = v;
    }
}

/// A config's settings as dotted keys (`model.unet.depth`) with JSON values, for messages.
fn json_fields(config: &TrainConfig) -> std::collections::BTreeMap<String, serde_json::Value> {
    fn walk(
        prefix: &str,
        value: &serde_json::Value,
        out: &mut std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }
    let mut out = Default::default();
    walk(
        "",
        &serde_json::to_value(config).unwrap_or_default(),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heatmap::{HeatmapTarget, TargetKind};
    use crate::model::HeatmapLoss;

    fn applied(task: Task, o: Overrides) -> Result<TrainConfig, RecipeError> {
        let mut c = TrainConfig::study(task);
        o.apply(&mut c).map(|()| c)
    }

    fn model(o: ModelOverrides) -> Overrides {
        Overrides {
            model: o,
            ..Default::default()
        }
    }

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
        for task in Task::ALL {
            let c = TrainConfig::best(task);
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), c);
        }
    }

    #[test]
    fn no_overrides_change_nothing() {
        for task in Task::ALL {
            assert_eq!(
                applied(task, Overrides::default()).unwrap(),
                TrainConfig::study(task)
            );
        }
    }

    #[test]
    fn override_epochs() {
        let o = Overrides {
            epochs: Some(3),
            ..Default::default()
        };
        assert_eq!(applied(Task::Nose, o).unwrap().epochs, 3);
        let zero = Overrides {
            epochs: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            applied(Task::Nose, zero),
            Err(RecipeError::Invalid(_))
        ));
    }

    #[test]
    fn override_batch_size() {
        let o = Overrides {
            batch_size: Some(8),
            ..Default::default()
        };
        assert_eq!(applied(Task::Imm58, o).unwrap().batch_size, 8);
    }

    #[test]
    fn override_learning_rate() {
        let o = Overrides {
            learning_rate: Some(1e-4),
            ..Default::default()
        };
        assert_eq!(applied(Task::Nose, o).unwrap().learning_rate, 1e-4);
        let bad = Overrides {
            learning_rate: Some(f64::NAN),
            ..Default::default()
        };
        assert!(applied(Task::Nose, bad).is_err());
    }

    #[test]
    fn override_schedule() {
        let o = Overrides {
            schedule: Some(Schedule::Cosine),
            ..Default::default()
        };
        assert_eq!(applied(Task::Nose, o).unwrap().schedule, Schedule::Cosine);
    }

    #[test]
    fn override_weight_decay() {
        let o = Overrides {
            weight_decay: Some(1e-4),
            ..Default::default()
        };
        assert_eq!(applied(Task::Ibug68, o).unwrap().weight_decay, 1e-4);
    }

    #[test]
    fn override_test_time_flip() {
        let best = TrainConfig::recipe(Task::Heatmap, RecipeKind::Best);
        assert!(best.test_time_flip);
        let o = Overrides {
            test_time_flip: Some(false),
            ..Default::default()
        };
        let mut config = best.clone();
        o.apply(&mut config).unwrap();
        assert!(!config.test_time_flip);
    }

    #[test]
    fn override_val_fraction_on_face_box_tasks_only() {
        let held_out = |fraction| Overrides {
            val_fraction: Some(fraction),
            ..Default::default()
        };
        let mut heatmap = TrainConfig::recipe(Task::Heatmap, RecipeKind::Best);
        held_out(0.1).apply(&mut heatmap).unwrap();
        assert_eq!(heatmap.faces.val_fraction, 0.1);
        for bad in [0.0, -0.1, 0.6, f32::NAN] {
            let mut config = TrainConfig::recipe(Task::Heatmap, RecipeKind::Best);
            let err = held_out(bad).apply(&mut config).unwrap_err();
            assert!(err.to_string().contains("validation fraction"), "{err}");
        }
        let mut nose = TrainConfig::recipe(Task::Nose, RecipeKind::Study);
        assert!(matches!(
            held_out(0.1).apply(&mut nose),
            Err(RecipeError::FaceBoxOnly { .. })
        ));
    }

    #[test]
    fn override_seed() {
        let o = Overrides {
            seed: Some(7),
            ..Default::default()
        };
        assert_eq!(applied(Task::Heatmap, o).unwrap().seed, 7);
    }

    #[test]
    fn override_no_augment() {
        let o = Overrides {
            no_augment: true,
            ..Default::default()
        };
        assert_eq!(applied(Task::Imm58, o).unwrap().augment, None);
    }

    #[test]
    fn override_input_size() {
        let o = Overrides {
            input_size: Some(96),
            ..Default::default()
        };
        let c = applied(Task::Ibug68, o.clone()).unwrap();
        assert_eq!((c.model.input_size(), c.faces.crop.size), ((96, 96), 96));
        let err = applied(Task::Nose, o).unwrap_err();
        assert!(
            err.to_string().contains("NoseNet has a fixed input size"),
            "{err}"
        );
    }

    #[test]
    fn override_training_boxes() {
        let o = Overrides {
            training_boxes: Some(TrainingBoxes::Both),
            ..Default::default()
        };
        let c = applied(Task::Ibug68, o.clone()).unwrap();
        assert_eq!(c.faces.training_boxes, both_box_kinds(&c.faces.labels));
        let detector = Overrides {
            training_boxes: Some(TrainingBoxes::Detector),
            ..Default::default()
        };
        assert_eq!(
            applied(Task::Heatmap, detector)
                .unwrap()
                .faces
                .training_boxes,
            vec![PathBuf::from(DETECTOR_TRAIN_LABELS)]
        );
        let given = Overrides {
            training_boxes: Some(TrainingBoxes::Given),
            ..Default::default()
        };
        let mut best = TrainConfig::best(Task::Ibug68);
        given.apply(&mut best).unwrap();
        assert!(best.faces.training_boxes.is_empty());
        assert!(applied(Task::Nose, o).is_err());
    }

    #[test]
    fn override_labels() {
        let o = Overrides {
            labels: Some("my/faces.xml".into()),
            ..Default::default()
        };
        let mut c = TrainConfig::best(Task::Heatmap);
        o.apply(&mut c).unwrap();
        assert_eq!(c.faces.labels, PathBuf::from("my/faces.xml"));
        assert_eq!(c.scheme, None, "measured from the labels when they load");
        assert!(c.faces.training_boxes.is_empty());
        assert!(applied(Task::Imm58, o).is_err());
    }

    #[test]
    fn override_width() {
        let o = model(ModelOverrides {
            width: Some(12),
            ..Default::default()
        });
        match applied(Task::Nose, o.clone()).unwrap().model {
            ModelConfig::NoseNet(m) => assert_eq!(m.width, 12),
            other => panic!("{other:?}"),
        }
        match applied(Task::Heatmap, o.clone()).unwrap().model {
            ModelConfig::Heatmap(m) => assert_eq!(m.unet.base_width, 12),
            other => panic!("{other:?}"),
        }
        let err = applied(Task::Imm58, o).unwrap_err();
        assert!(
            err.to_string().contains("width does not apply to ImmNet"),
            "{err}"
        );
    }

    #[test]
    fn override_pooling() {
        let o = model(ModelOverrides {
            pooling: Some(Pooling::Max),
            ..Default::default()
        });
        match applied(Task::Imm58, o.clone()).unwrap().model {
            ModelConfig::ImmNet(m) => assert_eq!(m.pooling, Pooling::Max),
            other => panic!("{other:?}"),
        }
        let err = applied(Task::Nose, o).unwrap_err();
        assert!(
            err.to_string()
                .contains("pooling does not apply to NoseNet"),
            "{err}"
        );
    }

    #[test]
    fn override_batch_norm() {
        let o = model(ModelOverrides {
            batch_norm: true,
            ..Default::default()
        });
        match applied(Task::Imm58, o.clone()).unwrap().model {
            ModelConfig::ImmNet(m) => assert!(m.batch_norm),
            other => panic!("{other:?}"),
        }
        assert!(applied(Task::Ibug68, o).is_err());
    }

    #[test]
    fn override_dropout() {
        let o = model(ModelOverrides {
            dropout: Some(0.3),
            ..Default::default()
        });
        match applied(Task::Nose, o.clone()).unwrap().model {
            ModelConfig::NoseNet(m) => assert_eq!(m.dropout, 0.3),
            other => panic!("{other:?}"),
        }
        assert!(applied(Task::Heatmap, o).is_err());
    }

    #[test]
    fn override_depth() {
        let o = model(ModelOverrides {
            depth: Some(3),
            ..Default::default()
        });
        match applied(Task::Heatmap, o.clone()).unwrap().model {
            ModelConfig::Heatmap(m) => assert_eq!(m.unet.depth, 3),
            other => panic!("{other:?}"),
        }
        assert!(applied(Task::Ibug68, o).is_err());
        // 224 is not a multiple of 2^6.
        let deep = model(ModelOverrides {
            depth: Some(6),
            ..Default::default()
        });
        assert!(matches!(
            applied(Task::Heatmap, deep),
            Err(RecipeError::Invalid(_))
        ));
    }

    #[test]
    fn override_target_sigma_and_radius() {
        let binary = model(ModelOverrides {
            target: Some(TargetKind::Binary),
            radius: Some(2.0),
            ..Default::default()
        });
        match applied(Task::Heatmap, binary).unwrap().model {
            ModelConfig::Heatmap(m) => assert_eq!(m.target, HeatmapTarget::Binary { radius: 2.0 }),
            other => panic!("{other:?}"),
        }
        let sigma = model(ModelOverrides {
            target: Some(TargetKind::Gaussian),
            sigma: Some(3.0),
            ..Default::default()
        });
        match applied(Task::Heatmap, sigma.clone()).unwrap().model {
            ModelConfig::Heatmap(m) => {
                assert_eq!(m.target, HeatmapTarget::Gaussian { sigma_at_224: 3.0 })
            }
            other => panic!("{other:?}"),
        }
        assert!(applied(Task::Nose, sigma).is_err());
    }

    #[test]
    fn override_heatmap_loss() {
        let o = model(ModelOverrides {
            heatmap_loss: Some(HeatmapLoss::Mse),
            ..Default::default()
        });
        match applied(Task::Heatmap, o.clone()).unwrap().model {
            ModelConfig::Heatmap(m) => assert_eq!(m.loss, HeatmapLoss::Mse),
            other => panic!("{other:?}"),
        }
        assert!(applied(Task::Imm58, o).is_err());
    }

    #[test]
    fn override_shape_prior() {
        let o = model(ModelOverrides {
            shape_prior: Some(true),
            ..Default::default()
        });
        match applied(Task::Heatmap, o.clone()).unwrap().model {
            ModelConfig::Heatmap(m) => assert!(m.use_shape_prior),
            other => panic!("{other:?}"),
        }
        assert!(applied(Task::Ibug68, o).is_err());
    }

    #[test]
    fn override_decoding() {
        let o = model(ModelOverrides {
            decoding: Some(Decoding::Argmax),
            ..Default::default()
        });
        let c = applied(Task::Heatmap, o.clone()).unwrap();
        assert_eq!(c.contract().decoding, Decoding::Argmax);
        assert!(applied(Task::Nose, o).is_err());
    }

    #[test]
    fn resume_refuses_a_contradicting_override_and_accepts_a_repeated_one() {
        let stored = TrainConfig::best(Task::Heatmap);
        let same = Overrides {
            learning_rate: Some(stored.learning_rate),
            ..Default::default()
        };
        assert_eq!(same.resumed(&stored).unwrap(), stored);
        let other = Overrides {
            learning_rate: Some(0.01),
            ..Default::default()
        };
        let err = other.resumed(&stored).unwrap_err().to_string();
        assert!(err.contains("learning_rate = 0.01"), "{err}");
    }

    #[test]
    fn resume_may_lengthen_the_schedule_and_its_cosine_follows() {
        let stored = TrainConfig::best(Task::Heatmap);
        assert_eq!(stored.schedule, Schedule::Cosine);
        let longer = Overrides {
            epochs: Some(stored.epochs * 2),
            ..Default::default()
        }
        .resumed(&stored)
        .unwrap();
        assert_eq!(longer.epochs, stored.epochs * 2);
        assert_eq!(
            TrainConfig {
                epochs: stored.epochs,
                ..longer.clone()
            },
            stored,
            "only the epoch count changes"
        );
        // The stored run ends at its floor; the longer one is still half way down its cosine.
        let end = stored.epochs;
        assert!(stored.learning_rate_at(end) < 0.03 * stored.learning_rate);
        assert!(longer.learning_rate_at(end + 1) > 0.4 * stored.learning_rate);
        assert!(longer.learning_rate_at(2 * end) < 0.03 * stored.learning_rate);
    }

    #[test]
    fn contract_follows_the_recipe() {
        let c = TrainConfig::best(Task::Heatmap).contract();
        assert_eq!((c.input_width, c.input_height), (112, 112));
        assert!(c.mirror_average);
        assert_eq!(c.scheme.points, 68);
        assert!(matches!(c.frame, InputFrame::FaceCrop { enlarge } if enlarge == 1.3));
        let nose = TrainConfig::study(Task::Nose).contract();
        assert!(matches!(nose.frame, InputFrame::WholeImage));
        assert!(!nose.mirror_average);
    }

    #[test]
    fn augmentation_overrides_change_only_their_ranges() {
        let ranges = Overrides {
            augment: AugmentOverrides {
                rotate_degrees: Some(30.0),
                scale: Some([0.9, 1.1]),
                occlusion: Some(0.4),
                translate: None,
            },
            ..Default::default()
        };
        let best = TrainConfig::best(Task::Heatmap);
        let mut changed = best.clone();
        ranges.apply(&mut changed).unwrap();
        let (before, after) = (best.augment.unwrap(), changed.augment.unwrap());
        assert_eq!(after.rotate_degrees, 30.0);
        assert_eq!(after.scale, Some([0.9, 1.1]));
        assert_eq!(after.occlusion, 0.4);
        assert_eq!(after.translate, before.translate);
        assert!(after.mirror, "the recipe's mirroring stays");
        // A recipe without augmentation starts from the study's ranges.
        let nose = applied(Task::Nose, ranges.clone()).unwrap();
        assert_eq!(nose.augment.unwrap().rotate_degrees, 30.0);
        // Contradictions and out-of-range values are refused.
        let both = Overrides {
            no_augment: true,
            ..ranges
        };
        assert!(applied(Task::Heatmap, both).is_err());
        for bad in [
            AugmentOverrides {
                occlusion: Some(1.5),
                ..Default::default()
            },
            AugmentOverrides {
                scale: Some([1.2, 0.8]),
                ..Default::default()
            },
        ] {
            let o = Overrides {
                augment: bad,
                ..Default::default()
            };
            assert!(matches!(
                applied(Task::Heatmap, o),
                Err(RecipeError::Invalid(_))
            ));
        }
    }

    #[test]
    fn runs_recorded_before_the_precision_read_as_f32() {
        let mut json = serde_json::to_value(TrainConfig::best(Task::Heatmap)).unwrap();
        json.as_object_mut().unwrap().remove("precision");
        let old: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.precision, crate::kernels::Precision::F32);
        assert_eq!(
            TrainConfig::best(Task::Heatmap).precision,
            crate::kernels::Precision::Bf16,
            "new recipes record the default"
        );
    }
}
