//! The command line: clap's flags, and their translation into the library's settings
//! ([`Overrides`]) and messages (library option names back to flags).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use facemark::data::FaceBox;
use facemark::decode::Decoding;
use facemark::heatmap::TargetKind;
use facemark::model::{HeatmapLoss, ModelOverrides, Pooling};
use facemark::recipe::{
    AugmentOverrides, Distillation, Overrides, RecipeKind, Schedule, Task, TrainingBoxes,
};

#[derive(Parser)]
#[command(
    name = "facemark",
    version,
    about = "Train, evaluate and run facial-keypoint networks"
)]
pub struct Cli {
    /// Folder holding the data sets (imm_face_db/, ibug_300w/, ...).
    #[arg(long, global = true, env = "FACEMARK_DATA", default_value = "data")]
    pub data: PathBuf,
    /// Matrix products of the convolutions: bf16 operands summed in f32 on AMX tiles (the
    /// default; f32 on CPUs without AMX), or f32 throughout. A run keeps the precision it
    /// started training with.
    #[arg(
        long,
        global = true,
        env = "FACEMARK_PRECISION",
        default_value = "bf16"
    )]
    pub precision: facemark::kernels::Precision,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a model into a run directory, then evaluate it and draw its figures.
    Train(TrainArgs),
    /// Run a whole part of the study (all its runs, metrics and figures) into a results folder.
    Study {
        /// nose, imm58, ibug68 or heatmap.
        task: Task,
        /// Where metrics and figures go (checked into results/).
        #[arg(long)]
        out: PathBuf,
        /// Where the runs' checkpoints go.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
    },
    /// Evaluate a model on its validation split, or on any labelled face set.
    Eval {
        /// A run directory or a shipped model's name (an unknown name lists those shipped).
        #[arg(long)]
        model: String,
        /// A dlib XML file or a folder of image + .pts pairs to evaluate on (face-box models).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Evaluate on the validation faces in this label file's boxes instead of the training
        /// crop's (e.g. labels_300w_train_hogbox.xml: dlib's HOG boxes), refined as --refine says.
        #[arg(long, conflicts_with = "labels")]
        val_boxes: Option<PathBuf>,
        /// Also draw the best and worst faces, per-landmark errors and the CED here.
        #[arg(long)]
        figures: Option<PathBuf>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Decode a heatmap model's maps this way instead of as trained (argmax, subpixel, local_mean).
        #[arg(long)]
        decode: Option<Decoding>,
        /// `detect`: find the faces with facemark's detector instead of using the labels' boxes,
        /// and score the whole pipeline (missed faces count as failures).
        #[arg(long, value_parser = ["detect"], requires = "labels")]
        boxes: Option<String>,
        #[command(flatten)]
        detector: DetectorArgs,
    },
    /// Find the faces in photos: boxes and scores as JSON, optionally a dlib XML and overlays.
    /// With --labels, measure the detector's recall on a label set's boxes instead.
    Detect {
        #[arg(required_unless_present = "labels")]
        photos: Vec<PathBuf>,
        /// A dlib XML or .pts folder whose faces the detector should find (prints its recall).
        #[arg(long, conflicts_with = "photos")]
        labels: Option<PathBuf>,
        /// Write each photo with its face boxes drawn into this folder.
        #[arg(long)]
        draw: Option<PathBuf>,
        /// Write the boxes as a dlib XML file (for labelling tools).
        #[arg(long)]
        xml: Option<PathBuf>,
        #[command(flatten)]
        detector: DetectorArgs,
    },
    /// Find landmarks in images: every face the detector finds, or in the given boxes.
    Predict {
        /// A run directory or shipped model (default: the best shipped 68-point model, the first
        /// of face68, heatmap, ibug68).
        #[arg(long)]
        model: Option<String>,
        /// Images; with --boxes, the images the XML names are used instead.
        #[arg(required_unless_present = "boxes")]
        images: Vec<PathBuf>,
        #[command(flatten)]
        detector: DetectorArgs,
        /// The face box `left,top,width,height` in every image, instead of detecting faces.
        #[arg(long = "box", value_parser = parse_box, allow_hyphen_values = true)]
        face_box: Option<FaceBox>,
        /// Face boxes (and images) from a dlib XML file (face-box models).
        #[arg(long)]
        boxes: Option<PathBuf>,
        /// Print CSV (image,point,x,y) instead of JSON.
        #[arg(long)]
        csv: bool,
        /// Write each image with its points drawn into this folder.
        #[arg(long)]
        draw: Option<PathBuf>,
        /// Write one .pts file per face into this folder.
        #[arg(long)]
        pts: Option<PathBuf>,
        /// Write the predictions as a dlib XML file.
        #[arg(long)]
        xml: Option<PathBuf>,
    },
    /// Predict every face of a label file and write the course's competition CSV (Id,Predicted).
    Export {
        #[arg(long)]
        model: String,
        /// dlib XML whose boxes (and image order) are used.
        #[arg(long)]
        labels: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Landmark passes after the first, each from the previous pass's own landmark box (0: the
        /// labels' boxes only), as `predict --boxes` looks.
        #[arg(long, default_value_t = 1)]
        refine: usize,
    },
    /// Draw the first convolution layer's filters.
    Filters {
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "filters.png")]
        out: PathBuf,
    },
    /// Draw the loss curves of several runs on one plot, or with --labels the CED curves of
    /// several models (run directories or shipped names) on one label set, with their metrics as
    /// a Markdown table on stdout.
    Compare {
        /// Run directories; with --labels also shipped models, or NAME=PREDICTIONS.xml: another
        /// system's predictions (a dlib XML listing the label file's faces in its order).
        #[arg(required = true)]
        runs: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        /// A dlib XML file or .pts folder: compare CED curves on it.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Landmark passes after the first, each from the previous pass's own landmark box
        /// (0: the labels' boxes only), as `eval --labels` and `predict --boxes` look.
        #[arg(long, default_value_t = 1, requires = "labels")]
        refine: usize,
    },
    /// Measure a face-box model's mean offset from the labels on its training faces (the constant
    /// error that training on mirrored faces leaves) and, with --write, give it back at inference.
    Calibrate {
        /// A run directory or a shipped model's name.
        #[arg(long)]
        model: String,
        /// Store the offset that cancels it in the model's inference.json.
        #[arg(long)]
        write: bool,
    },
    /// Copy a run's best weights, in half precision, to the shipped models as NAME.
    Ship {
        run: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Assemble trained heatmap models into one model that averages their maps (written to OUT,
    /// loadable and shippable like a run).
    Ensemble {
        /// Run directories or shipped model names (two or more, one validation split).
        #[arg(required = true, num_args = 2..)]
        members: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure training and inference throughput (JSON lines).
    Bench {
        /// A run directory, a shipped model, or a task name (its recipe, freshly initialised).
        #[arg(long, default_value = "nose")]
        model: String,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Task names: measure the best recipe (with its augmentation) instead of the study's.
        #[arg(long)]
        augment: bool,
        /// Input side of face-box networks (224, 160, 112, ...).
        #[arg(long)]
        size: Option<usize>,
        /// Single faces timed for the latency figure (`"bench": "latency"`, `ms_per_face`).
        #[arg(long, default_value_t = 100)]
        faces: usize,
        /// Latency: landmark passes after the first, each from the previous pass's own landmark
        /// box (0: crop, forward and decode once; `predict --box` refines once by default).
        #[arg(long, default_value_t = 0)]
        refine: usize,
        /// Run only these benchmarks (comma-separated; default all).
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(facemark::bench::BENCHMARKS))]
        only: Vec<String>,
    },
}

/// How faces are found in whole photos.
#[derive(Args, Clone, Copy)]
pub struct DetectorArgs {
    /// Smallest face looked for, in pixels of the photo (smaller is slower).
    #[arg(long, default_value_t = 40)]
    pub min_face: u32,
    /// Detector: sliding-window step in pixels of each pyramid level (smaller is slower).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=40))]
    pub step: u32,
    /// Detector: size ratio of adjacent pyramid levels (closer to 1 is slower).
    #[arg(long, default_value_t = 0.8, value_parser = parse_pyramid_scale)]
    pub pyramid_scale: f32,
    /// Detector: faces scoring below this are dropped.
    #[arg(long, default_value_t = 2.0, value_parser = parse_score_threshold)]
    pub score_threshold: f64,
    /// Landmark passes after the first, each from the previous pass's own landmark box (the kind
    /// of box the 300-W models were trained on), for detected and given boxes alike (0: the
    /// detector's or given box only).
    #[arg(long, default_value_t = 1)]
    pub refine: usize,
}

impl DetectorArgs {
    pub fn config(&self) -> facemark::detect::DetectorConfig {
        facemark::detect::DetectorConfig {
            min_face: self.min_face.max(1),
            step: self.step,
            pyramid_scale: self.pyramid_scale,
            score_threshold: self.score_threshold,
            ..Default::default()
        }
    }
}

fn parse_pyramid_scale(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(v) if (0.5..=0.95).contains(&v) => Ok(v),
        _ => Err("expected a ratio from 0.5 to 0.95".into()),
    }
}

fn parse_score_threshold(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("expected a positive number".into()),
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// nose, imm58, ibug68 (ResNet18) or heatmap (U-Net).
    pub task: Task,
    /// Run directory to create.
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue an interrupted run in this directory (flags may only repeat its recipe, but
    /// `--epochs` may lengthen a finished run: its cosine schedule is spread over the new length).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Replace an existing run in --out.
    #[arg(long)]
    pub force: bool,
    /// Start from the study's recipe or from facemark's best (study, best).
    #[arg(long, value_parser = parse_recipe, default_value = "study")]
    pub recipe: RecipeKind,
    /// Train a face-box model on these labels instead (dlib XML or a folder of image + .pts
    /// pairs, any point count).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (Adam).
    #[arg(long)]
    pub lr: Option<f64>,
    /// constant or cosine.
    #[arg(long)]
    pub schedule: Option<Schedule>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Width of the first convolutions (NoseNet: 20 in the study; U-Net: base width).
    #[arg(long)]
    pub width: Option<usize>,
    /// Pooling between ImmNet's convolutions (avg, max).
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// Batch normalisation after each ImmNet convolution.
    #[arg(long)]
    pub batch_norm: bool,
    /// Dropout probability before the output layer.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Turn the recipe's augmentation off.
    #[arg(long)]
    pub no_augment: bool,
    /// Largest rotation of the augmentation, in degrees.
    #[arg(long, conflicts_with = "no_augment")]
    pub rotate: Option<f32>,
    /// Largest translation of the augmentation, as a fraction of the input side.
    #[arg(long, conflicts_with = "no_augment")]
    pub translate: Option<f32>,
    /// Scale range of the augmentation, `min,max` (e.g. 0.9,1.1).
    #[arg(long, value_parser = parse_scale_range, conflicts_with = "no_augment")]
    pub scale: Option<[f32; 2]>,
    /// Probability of hiding a random rectangle of each training image (random erasing).
    #[arg(long, conflicts_with = "no_augment")]
    pub occlusion: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Input side of face-box networks (224 as in the study; 160 or 112 for CPU budgets).
    #[arg(long)]
    pub size: Option<usize>,
    /// Which boxes face-box training crops start from (tight, detector, both).
    #[arg(long, value_parser = parse_training_boxes)]
    pub train_boxes: Option<TrainingBoxes>,
    /// Share of the face-box labels held out for validation (default 0.2); a smaller share holds
    /// out a subset of a larger one's faces.
    #[arg(long)]
    pub val_fraction: Option<f32>,
    /// `dx,dy`: photo pixels subtracted from every face-box label before training and added back
    /// to the predictions, so that labels off the mirror-symmetric position agree with their
    /// mirrored twins (`facemark calibrate --model M` measures it; 300-W: about 0.8,0).
    #[arg(long, value_parser = parse_offset, allow_hyphen_values = true)]
    pub label_offset: Option<[f32; 2]>,
    /// Heatmap target shape (gaussian, binary).
    #[arg(long)]
    pub target: Option<TargetKind>,
    /// Gaussian target's sigma in pixels at 224 (scaled with the map size).
    #[arg(long)]
    pub sigma: Option<f32>,
    /// Binary target's disc radius in map pixels (the keypoint's pixel is always marked).
    #[arg(long)]
    pub radius: Option<f32>,
    /// Heatmap loss (cross-entropy, mse).
    #[arg(long)]
    pub heatmap_loss: Option<HeatmapLoss>,
    /// U-Net depth (number of poolings).
    #[arg(long)]
    pub depth: Option<usize>,
    /// Add the training faces' mean shape as a log-prior to the heatmap logits (true/false).
    #[arg(long)]
    pub shape_prior: Option<bool>,
    /// Average each prediction with that on the mirrored image (true/false): better points,
    /// twice the time per face.
    #[arg(long)]
    pub test_time_flip: Option<bool>,
    /// Learn from this heatmap model's maps beside the truth (knowledge distillation): a run
    /// directory or a shipped model's name, whose validation faces include this run's.
    #[arg(long)]
    pub teacher: Option<String>,
    /// Share of each training target taken from the teacher's map, in (0, 1].
    #[arg(long, default_value_t = 0.5, requires = "teacher")]
    pub teacher_weight: f32,
    /// Print the recipe (flags applied) as JSON and exit without training.
    #[arg(long)]
    pub print_config: bool,
}

impl TrainArgs {
    /// The flags as the library's recipe overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            schedule: self.schedule,
            weight_decay: self.weight_decay,
            seed: self.seed,
            no_augment: self.no_augment,
            augment: AugmentOverrides {
                rotate_degrees: self.rotate,
                translate: self.translate,
                scale: self.scale,
                occlusion: self.occlusion,
            },
            input_size: self.size,
            training_boxes: self.train_boxes,
            val_fraction: self.val_fraction,
            label_offset: self.label_offset,
            distill: self.teacher.as_ref().map(|teacher| Distillation {
                // A run directory is stored absolute, so that resuming finds it from anywhere.
                teacher: std::path::absolute(teacher)
                    .ok()
                    .filter(|dir| dir.join("config.json").is_file())
                    .map_or_else(|| teacher.clone(), |dir| dir.to_string_lossy().into_owned()),
                weight: self.teacher_weight,
            }),
            test_time_flip: self.test_time_flip,
            labels: self.labels.as_ref().map(|p| {
                // A label file the user names is found from the working folder; otherwise it
                // is looked up in the data folder.
                std::path::absolute(p)
                    .ok()
                    .filter(|a| a.exists())
                    .unwrap_or_else(|| p.clone())
            }),
            model: ModelOverrides {
                width: self.width,
                pooling: self.pooling,
                batch_norm: self.batch_norm,
                dropout: self.dropout,
                depth: self.depth,
                target: self.target,
                sigma: self.sigma,
                radius: self.radius,
                heatmap_loss: self.heatmap_loss,
                shape_prior: self.shape_prior,
                decoding: None,
            },
        }
    }
}

/// The flag that sets a library option, for messages.
pub fn flag(option: &str) -> String {
    let name = match option {
        "learning_rate" => "lr",
        "input_size" => "size",
        "training_boxes" => "train-boxes",
        "decoding" => "decode",
        other => other,
    };
    format!("--{}", name.replace('_', "-"))
}

fn parse_recipe(text: &str) -> Result<RecipeKind, String> {
    match text {
        "study" => Ok(RecipeKind::Study),
        "best" => Ok(RecipeKind::Best),
        _ => Err("expected study or best".into()),
    }
}

fn parse_scale_range(text: &str) -> Result<[f32; 2], String> {
    let v = comma_separated_numbers(text)?;
    let [lo, hi] = v[..] else {
        return Err("expected min,max (e.g. 0.9,1.1)".into());
    };
    Ok([lo, hi])
}

fn parse_offset(text: &str) -> Result<[f32; 2], String> {
    let v = comma_separated_numbers(text)?;
    match v[..] {
        [dx, dy] if dx.is_finite() && dy.is_finite() => Ok([dx, dy]),
        _ => Err("expected dx,dy in photo pixels (e.g. 0.8,0)".into()),
    }
}

/// `a,b,...` -> the numbers, or which one is not a number.
fn comma_separated_numbers(text: &str) -> Result<Vec<f32>, String> {
    text.split(',')
        .map(|s| s.trim().parse::<f32>().map_err(|e| format!("{s:?}: {e}")))
        .collect()
}

fn parse_training_boxes(text: &str) -> Result<TrainingBoxes, String> {
    match text {
        "tight" => Ok(TrainingBoxes::Given),
        "detector" => Ok(TrainingBoxes::Detector),
        "both" => Ok(TrainingBoxes::Both),
        _ => Err("expected tight, detector or both".into()),
    }
}

/// `left,top,width,height` -> a face box.
pub fn parse_box(text: &str) -> Result<FaceBox, String> {
    let v = comma_separated_numbers(text)?;
    let [left, top, width, height] = v[..] else {
        return Err("expected four numbers: left,top,width,height".into());
    };
    let face_box = FaceBox {
        left,
        top,
        width,
        height,
    };
    face_box.validate_shape().map_err(|e| e.to_string())?;
    Ok(face_box)
}

#[cfg(test)]
mod tests {
    use super::*;
    use facemark::study::study_arms;

    /// Each study arm's documented flags make the same recipe as its typed overrides.
    #[test]
    fn study_arm_flags_match_their_overrides() {
        for task in Task::ALL {
            for arm in study_arms(task) {
                let mut argv = vec!["facemark", "train", task.name()];
                argv.extend(arm.flags.split_whitespace());
                let Cli {
                    command: Command::Train(args),
                    ..
                } = Cli::try_parse_from(&argv).unwrap()
                else {
                    panic!("train parses to Train")
                };
                let mut from_flags = facemark::recipe::TrainConfig::recipe(task, args.recipe);
                args.overrides().apply(&mut from_flags).unwrap();
                assert_eq!(from_flags, arm.config(task).unwrap(), "{}", arm.name);
            }
        }
    }

    #[test]
    fn negative_box_coordinates_parse() {
        let cli = Cli::try_parse_from([
            "facemark",
            "predict",
            "--model",
            "heatmap",
            "x.jpg",
            "--box",
            "-50,-10,100,120",
        ])
        .unwrap();
        let Command::Predict { face_box, .. } = cli.command else {
            panic!("predict")
        };
        assert_eq!(face_box.unwrap().left, -50.0);
    }

    #[test]
    fn nan_and_empty_boxes_are_refused_by_the_flag() {
        assert!(
            parse_box("nan,0,50,50")
                .unwrap_err()
                .contains("not a finite number")
        );
        assert!(parse_box("0,0,0,50").unwrap_err().contains("empty"));
        assert!(parse_box("0,0,-5,50").is_err());
        assert!(parse_box("1,2,3").is_err());
        assert_eq!(parse_box(" -5,-6, 7,8").unwrap().left, -5.0);
    }

    /// The detector flags reach the detector's settings; the defaults are the library's.
    #[test]
    fn detector_flags_set_the_detector() {
        let detect = |flags: &[&str]| {
            let mut argv = vec!["facemark", "detect", "x.jpg"];
            argv.extend(flags);
            Cli::try_parse_from(&argv).map(|cli| match cli.command {
                Command::Detect { detector, .. } => detector.config(),
                _ => panic!("detect"),
            })
        };
        assert_eq!(
            detect(&[]).unwrap(),
            facemark::detect::DetectorConfig::default()
        );
        let config = detect(&[
            "--min-face",
            "24",
            "--step",
            "2",
            "--pyramid-scale",
            "0.75",
            "--score-threshold",
            "1.5",
        ])
        .unwrap();
        assert_eq!(
            (
                config.min_face,
                config.step,
                config.pyramid_scale,
                config.score_threshold
            ),
            (24, 2, 0.75, 1.5)
        );
        assert!(detect(&["--step", "0"]).is_err());
        assert!(detect(&["--pyramid-scale", "1"]).is_err());
        assert!(detect(&["--pyramid-scale", "0.3"]).is_err());
        assert!(detect(&["--score-threshold", "0"]).is_err());
        assert!(detect(&["--score-threshold", "nan"]).is_err());
    }

    #[test]
    fn library_options_map_to_flags() {
        assert_eq!(flag("training_boxes"), "--train-boxes");
        assert_eq!(flag("heatmap_loss"), "--heatmap-loss");
        assert_eq!(flag("input_size"), "--size");
    }
}
