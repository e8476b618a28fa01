//! The `facemark` command: parses flags, calls the library, maps errors to an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use facemark::data::FaceBox;
use facemark::dataset::DETECTOR_TRAIN_LABELS;
use facemark::eval::LandmarkMetrics;
use facemark::heatmap::HeatmapTarget;
use facemark::model::{Decoding, HeatmapLoss, ModelConfig, Pooling};
use facemark::run::{RunDir, write_atomic, write_json};
use facemark::train::{Schedule, Task, TaskData, TrainConfig};

#[derive(Parser)]
#[command(
    name = "facemark",
    version,
    about = "Train, evaluate and run facial-keypoint networks"
)]
struct Cli {
    /// Folder holding the data sets (imm_face_db/, ibug_300w/, ...).
    #[arg(long, global = true, env = "FACEMARK_DATA", default_value = "data")]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model into a run directory, then evaluate it and draw its figures.
    Train(TrainArgs),
    /// Run a whole part of the study (all its runs, metrics and figures) into a results folder.
    Study {
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
        /// A run directory or a shipped model's name (nose, imm58).
        #[arg(long)]
        model: String,
        /// A dlib XML file or a folder of image + .pts pairs to evaluate on (face-box models).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Also draw the best and worst faces, per-landmark errors and (68 points) the CED here.
        #[arg(long)]
        figures: Option<PathBuf>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Decode a heatmap model's maps this way instead of as trained.
        #[arg(long, value_enum)]
        decode: Option<Decoding>,
    },
    /// Find landmarks in images.
    Predict {
        #[arg(long)]
        model: String,
        /// Images; with --boxes, the images the XML names are used instead.
        #[arg(required_unless_present = "boxes")]
        images: Vec<PathBuf>,
        /// The face box `left,top,width,height` in every image (face-box models).
        #[arg(long = "box", value_parser = parse_box)]
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
        /// Write one 300-W .pts file per face into this folder.
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
    },
    /// Draw the first convolution layer's filters.
    Filters {
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "filters.png")]
        out: PathBuf,
    },
    /// Draw the validation loss curves of several runs on one plot, or with --labels the CED
    /// curves of several models (run directories or shipped names) on one label set.
    Compare {
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// A dlib XML file or .pts folder: compare inter-ocular CED curves on it.
        #[arg(long)]
        labels: Option<PathBuf>,
    },
    /// Copy a run's best weights, in half precision, to the shipped models as NAME.
    Ship {
        run: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Measure training and inference throughput (JSON lines).
    Bench {
        /// Which task's network to measure.
        #[arg(long, default_value = "nose")]
        model: Task,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Measure with the best recipe's augmentation in the real pipeline.
        #[arg(long)]
        augment: bool,
        /// Input side for ibug68 (224, 160, 112, ...).
        #[arg(long)]
        size: Option<usize>,
    },
}

#[derive(Args)]
struct TrainArgs {
    task: Task,
    /// Run directory to create.
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue an interrupted run in this directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Replace an existing run in --out.
    #[arg(long)]
    force: bool,
    /// Start from the study's recipe or from facemark's best.
    #[arg(long, value_enum, default_value = "study")]
    recipe: Recipe,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate (Adam).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    schedule: Option<Schedule>,
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Width of NoseNet's first convolutions (20 in the study, 12 for the width experiment).
    #[arg(long)]
    width: Option<usize>,
    /// Pooling between ImmNet's convolutions.
    #[arg(long)]
    pooling: Option<Pooling>,
    /// Batch normalisation after each ImmNet convolution.
    #[arg(long)]
    batch_norm: bool,
    /// Dropout probability before the output layer.
    #[arg(long)]
    dropout: Option<f64>,
    /// Turn the recipe's augmentation off.
    #[arg(long)]
    no_augment: bool,
    #[arg(long)]
    seed: Option<u64>,
    /// Input side for ibug68 (224 as in the study; 160 or 112 for CPU budgets).
    #[arg(long)]
    size: Option<usize>,
    /// Which boxes the 300-W training crops start from.
    #[arg(long, value_enum)]
    train_boxes: Option<TrainingBoxes>,
    /// Heatmap target shape.
    #[arg(long, value_enum)]
    target: Option<TargetKind>,
    /// Gaussian target's sigma in pixels at 224 (scaled with the map size).
    #[arg(long)]
    sigma: Option<f32>,
    /// Binary target's disc radius in map pixels (the keypoint's pixel is always marked).
    #[arg(long)]
    radius: Option<f32>,
    /// Heatmap loss.
    #[arg(long, value_enum)]
    heatmap_loss: Option<HeatmapLoss>,
    /// U-Net depth (number of poolings).
    #[arg(long)]
    depth: Option<usize>,
    /// Add the training faces' mean shape as a log-prior to the heatmap logits (true/false).
    #[arg(long)]
    shape_prior: Option<bool>,
    /// Print the recipe (flags applied) as JSON and exit without training.
    #[arg(long)]
    print_config: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TargetKind {
    /// A 2-D Gaussian (sigma 5 at 224 by default).
    Gaussian,
    /// 1 on the keypoint's pixel (and a small disc), 0 elsewhere.
    Binary,
}

/// The face boxes a 300-W model trains from.
#[derive(Clone, Copy, clap::ValueEnum)]
enum TrainingBoxes {
    /// The tight landmark boxes of labels_300w_train.xml.
    Tight,
    /// dlib's HOG detector boxes (labels_300w_train_hogbox.xml; faces it missed are left out).
    Detector,
    /// Either, drawn at random each epoch.
    Both,
}

impl TrainingBoxes {
    fn label_files(self, labels: &Path) -> Vec<PathBuf> {
        match self {
            TrainingBoxes::Tight => vec![],
            TrainingBoxes::Detector => vec![DETECTOR_TRAIN_LABELS.into()],
            TrainingBoxes::Both => facemark::train::both_box_kinds(labels),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Recipe {
    Study,
    Best,
}

impl TrainArgs {
    /// The recipe with the flags applied, validated once.
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match self.recipe {
            Recipe::Study => TrainConfig::study(self.task),
            Recipe::Best => TrainConfig::best(self.task),
        };
        if let Some(v) = self.epochs {
            c.epochs = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.lr {
            c.learning_rate = v;
        }
        if let Some(v) = self.schedule {
            c.schedule = v;
        }
        if let Some(v) = self.weight_decay {
            c.weight_decay = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if self.no_augment {
            c.augment = None;
        }
        if let Some(boxes) = self.train_boxes {
            if !c.task.crops_faces() {
                bail!("--train-boxes applies to the 300-W tasks");
            }
            c.faces.training_boxes = boxes.label_files(&c.faces.labels);
        }
        match &mut c.model {
            ModelConfig::NoseNet(m) => {
                if self.pooling.is_some() || self.batch_norm || self.size.is_some() {
                    bail!("--pooling and --batch-norm apply to imm58");
                }
                m.width = self.width.unwrap_or(m.width);
                m.dropout = self.dropout.unwrap_or(m.dropout);
            }
            ModelConfig::ImmNet(m) => {
                if self.width.is_some() || self.size.is_some() {
                    bail!("--width applies to the nose task");
                }
                m.pooling = self.pooling.unwrap_or(m.pooling);
                m.batch_norm |= self.batch_norm;
                m.dropout = self.dropout.unwrap_or(m.dropout);
            }
            ModelConfig::ResNet(_) => {
                if self.width.is_some()
                    || self.pooling.is_some()
                    || self.batch_norm
                    || self.dropout.is_some()
                {
                    bail!(
                        "--width, --pooling, --batch-norm and --dropout do not apply to ResNet18"
                    );
                }
            }
            ModelConfig::Heatmap(m) => {
                if self.pooling.is_some() || self.batch_norm || self.dropout.is_some() {
                    bail!("--pooling, --batch-norm and --dropout do not apply to the U-Net");
                }
                m.unet.base_width = self.width.unwrap_or(m.unet.base_width);
                m.unet.depth = self.depth.unwrap_or(m.unet.depth);
                m.loss = self.heatmap_loss.unwrap_or(m.loss);
                m.use_shape_prior = self.shape_prior.unwrap_or(m.use_shape_prior);
                match self.target {
                    Some(TargetKind::Gaussian) => {
                        m.target = HeatmapTarget::Gaussian {
                            sigma_at_224: self.sigma.unwrap_or(5.0),
                        }
                    }
                    Some(TargetKind::Binary) => {
                        m.target = HeatmapTarget::Binary {
                            radius: self.radius.unwrap_or(1.0),
                        }
                    }
                    None => {}
                }
            }
        }
        if let Some(size) = self.size {
            c.set_input_size(size);
        }
        let heatmap_flags = self.target.is_some()
            || self.heatmap_loss.is_some()
            || self.depth.is_some()
            || self.shape_prior.is_some()
            || self.sigma.is_some()
            || self.radius.is_some();
        if heatmap_flags && c.task != Task::Heatmap {
            bail!(
                "--target, --heatmap-loss, --depth, --sigma and --radius apply to the heatmap task"
            );
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// Trains (or resumes) one run and writes its report; returns the evaluation.
fn train_run(
    config: &TrainConfig,
    data: &TaskData,
    dir: &Path,
    resume: bool,
    force: bool,
) -> Result<facemark::report::EvalSummary> {
    let run = RunDir::new(dir);
    if run.exists() && !resume {
        if !force {
            return Err(facemark::run::RunError::Exists(dir.to_owned()).into());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let show_progress = std::env::var_os("CI").is_none();
    let outcome = facemark::train::train(config, data, &run, resume, show_progress)?;
    let summary =
        facemark::report::write_report(&run, &outcome.config, data, &outcome.state, &outcome.best)?;
    let nme = summary
        .landmarks
        .as_ref()
        .map(|m| format!(", inter-ocular NME {:.2} %", m.nme_inter_ocular))
        .unwrap_or_default();
    eprintln!(
        "{}: validation mean error {:.1} px of the photos{nme} (mean shape {:.1} px), best epoch {}",
        dir.display(),
        summary.mean_px_error,
        summary.mean_shape_px_error.unwrap_or(f64::NAN),
        outcome.state.best_epoch.unwrap_or(0)
    );
    Ok(summary)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => {
            let (config, dir, resume) = match &args.resume {
                Some(dir) => (RunDir::new(dir).read_config()?, dir.clone(), true),
                None => {
                    let dir = args
                        .out
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("runs").join(args.task.name()));
                    (args.config()?, dir, false)
                }
            };
            if args.print_config {
                println!("{}", serde_json::to_string_pretty(&config)?);
                return Ok(());
            }
            let data = TaskData::load(&config, &cli.data)?;
            train_run(&config, &data, &dir, resume, args.force)?;
        }
        Command::Study { task, out, runs } => study(task, &cli.data, &out, &runs)?,
        Command::Eval {
            model,
            labels,
            figures,
            json,
            decode,
        } => {
            let mut predictor = facemark::inference::Predictor::load(&model)?;
            if let Some(decoding) = decode
                && !predictor.model.net.set_decoding(decoding)
            {
                bail!("--decode applies to heatmap models; {model} regresses coordinates");
            }
            let config = &predictor.model.config;
            if labels.is_some() && !predictor.needs_face_box() {
                bail!(
                    "--labels needs a face-box model (ibug68); {model} evaluates on its own validation split"
                );
            }
            let data = match &labels {
                Some(path) => {
                    TaskData::faces_for_validation(config, &facemark::dataset::read_labels(path)?)?
                }
                None => TaskData::load(config, &cli.data)?,
            };
            let evaluation = facemark::report::evaluate(&predictor.model.net, config, &data);
            if let Some(dir) = &figures {
                let prefix = if labels.is_some() { "test" } else { "val" };
                facemark::report::write_evaluation_figures(
                    dir,
                    prefix,
                    &predictor.model.net,
                    config,
                    &data,
                    &evaluation,
                )?;
            }
            let summary = evaluation.summary;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "{model}: MSE {:.6}, mean error {:.2} px over {} faces",
                    summary.mse, summary.mean_px_error, summary.count
                );
                if let Some(px) = summary.mean_shape_px_error {
                    println!("mean training shape: {px:.2} px");
                }
                if let Some(m) = &summary.landmarks {
                    println!(
                        "NME inter-ocular {:.2} %, inter-pupil {:.2} %, AUC@0.08 {:.3}, failures@0.08 {:.1} %, @0.10 {:.1} %",
                        m.nme_inter_ocular,
                        m.nme_inter_pupil,
                        m.auc_0_08,
                        100.0 * m.failure_rate_0_08,
                        100.0 * m.failure_rate_0_10
                    );
                }
            }
        }
        Command::Predict {
            model,
            images,
            face_box,
            boxes,
            csv,
            draw,
            pts,
            xml,
        } => {
            let jobs: Vec<(PathBuf, Vec<FaceBox>)> = match &boxes {
                Some(path) => facemark::dataset::read_labels(path)?
                    .into_iter()
                    .map(|image| {
                        (
                            image.image_path,
                            image.faces.iter().map(|f| f.bbox).collect(),
                        )
                    })
                    .collect(),
                None => images
                    .into_iter()
                    .map(|path| (path, face_box.into_iter().collect()))
                    .collect(),
            };
            let outputs = PredictOutputs {
                csv,
                draw,
                pts,
                xml,
            };
            predict(&model, &jobs, &outputs)?;
        }
        Command::Export { model, labels, out } => {
            let predictor = facemark::inference::Predictor::load(&model)?;
            let mut predictions = Vec::new();
            for image in facemark::dataset::read_labels(&labels)? {
                let boxes: Vec<FaceBox> = image.faces.iter().map(|f| f.bbox).collect();
                predictions.extend(predictor.predict_file(&image.image_path, &boxes)?);
            }
            write_atomic(
                &out,
                facemark::inference::competition_csv(&predictions).as_bytes(),
            )?;
            eprintln!("wrote {} ({} faces)", out.display(), predictions.len());
        }
        Command::Filters { model, out } => {
            let predictor = facemark::inference::Predictor::load(&model)?;
            facemark::report::write_filters(&predictor.model.net, &out)?;
            eprintln!("wrote {}", out.display());
        }
        Command::Compare { runs, out, labels } => match labels {
            Some(labels) => compare_ced(&runs, &labels, &out)?,
            None => compare(&runs, &out)?,
        },
        Command::Ship { run, name } => {
            let loaded =
                facemark::run::load_trained(&run.to_string_lossy(), &facemark::backend::device())?;
            let dir = facemark::run::models_dir().join(&name);
            facemark::run::save_model_half(&loaded.net, &dir.join("model.bpk"))?;
            write_json(&dir.join("config.json"), &loaded.config)?;
            eprintln!("shipped {} as {}", loaded.source.display(), dir.display());
        }
        Command::Bench {
            model,
            batch_size,
            seconds,
            augment,
            size,
        } => {
            let mut train = if augment {
                TrainConfig::best(model)
            } else {
                TrainConfig::study(model)
            };
            train.batch_size = batch_size;
            if let Some(size) = size {
                train.set_input_size(size);
            }
            if !augment {
                train.augment = None;
            }
            let data = TaskData::load(&train, &cli.data);
            if let Err(e) = &data {
                eprintln!("real-data benchmarks skipped: {e}");
            }
            let config = facemark::bench::BenchConfig {
                train,
                duration: Duration::from_secs_f64(seconds),
            };
            facemark::bench::run(&config, data.as_ref().ok(), |r| {
                println!("{}", serde_json::to_string(r).expect("serializable"));
            });
            if let Some(mib) = facemark::bench::peak_memory_mib() {
                println!(
                    "{}",
                    serde_json::json!({"bench": "peak_memory", "task": model.name(), "peak_rss_mib": mib})
                );
            }
        }
    }
    Ok(())
}

/// Where `facemark predict` writes its results besides stdout.
struct PredictOutputs {
    csv: bool,
    draw: Option<PathBuf>,
    pts: Option<PathBuf>,
    xml: Option<PathBuf>,
}

/// `left,top,width,height` -> a face box.
fn parse_box(text: &str) -> Result<FaceBox, String> {
    let v: Vec<f32> = text
        .split(',')
        .map(|s| s.trim().parse::<f32>().map_err(|e| format!("{s:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [left, top, width, height] if width > 0.0 && height > 0.0 => Ok(FaceBox {
            left,
            top,
            width,
            height,
        }),
        _ => Err("expected left,top,width,height with a positive width and height".into()),
    }
}

fn predict(model: &str, jobs: &[(PathBuf, Vec<FaceBox>)], outputs: &PredictOutputs) -> Result<()> {
    let predictor = facemark::inference::Predictor::load(model)?;
    if predictor.needs_face_box() && jobs.iter().any(|(_, boxes)| boxes.is_empty()) {
        bail!(
            "model {model} finds landmarks inside a face box: give --box left,top,width,height or --boxes FILE.xml"
        );
    }
    let mut predictions = Vec::new();
    let mut failures = 0;
    for (path, boxes) in jobs {
        match predictor.predict_file(path, boxes) {
            Ok(found) => {
                let name = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                for (i, p) in found.iter().enumerate() {
                    let stem = if found.len() > 1 {
                        format!("{name}_{i}")
                    } else {
                        name.clone()
                    };
                    if let Some(dir) = &outputs.draw {
                        facemark::inference::draw_prediction(p, &dir.join(format!("{stem}.png")))?;
                    }
                    if let Some(dir) = &outputs.pts {
                        write_atomic(
                            &dir.join(format!("{stem}.pts")),
                            facemark::data::pts::format_pts(&p.points).as_bytes(),
                        )?;
                    }
                }
                predictions.extend(found);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
            }
        }
    }
    if let Some(path) = &outputs.xml {
        let base = path.parent().unwrap_or(Path::new("."));
        let images = facemark::inference::to_labeled_images(&predictions);
        let text = facemark::data::dlib_xml::format_dlib_xml(&images, base, "facemark predictions");
        write_atomic(path, text.as_bytes())?;
    }
    if outputs.csv {
        print!("{}", facemark::inference::predictions_csv(&predictions));
    } else {
        println!("{}", serde_json::to_string_pretty(&predictions)?);
    }
    if failures > 0 {
        bail!("{failures} of {} images could not be read", jobs.len());
    }
    Ok(())
}

fn compare(runs: &[PathBuf], out: &Path) -> Result<()> {
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
        curves.push(facemark::figures::Curve {
            label: format!("{name} (validation)"),
            values: state.history.iter().map(|r| r.val_loss as f32).collect(),
            dashed: false,
        });
        curves.push(facemark::figures::Curve {
            label: format!("{name} (training)"),
            values: state.history.iter().map(|r| r.train_loss as f32).collect(),
            dashed: true,
        });
    }
    let y_label = format!("loss ({})", loss_names.join(" / "));
    facemark::figures::loss_curves(out, "loss per epoch", &y_label, &curves)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Evaluates each model on `labels` and draws their inter-ocular CED curves on one plot.
fn compare_ced(models: &[PathBuf], labels: &Path, out: &Path) -> Result<()> {
    let images = facemark::dataset::read_labels(labels)?;
    let mut curves = Vec::new();
    for model in models {
        let name = model.to_string_lossy();
        let predictor = facemark::inference::Predictor::load(&name)?;
        if !predictor.needs_face_box() {
            bail!("{name} is not a face-box model: CED curves need 68-point face-box models");
        }
        let config = &predictor.model.config;
        let data = TaskData::faces_for_validation(config, &images)?;
        let evaluation = facemark::report::evaluate(&predictor.model.net, config, &data);
        let Some(metrics) = evaluation.summary.landmarks else {
            bail!("{name} does not predict the 68 iBUG points");
        };
        let label = model
            .file_name()
            .map_or_else(|| name.to_string(), |f| f.to_string_lossy().into_owned());
        eprintln!(
            "{label}: NME {:.2} % (inter-ocular), AUC@0.08 {:.3}",
            metrics.nme_inter_ocular, metrics.auc_0_08
        );
        curves.push(facemark::figures::Curve {
            label: format!("{label} ({:.2} %)", metrics.nme_inter_ocular),
            values: metrics.per_image_nme.iter().map(|&v| v as f32).collect(),
            dashed: false,
        });
    }
    let title = format!(
        "cumulative error distribution on {}",
        labels.file_name().unwrap_or_default().to_string_lossy()
    );
    facemark::figures::ced_curves(out, &title, &curves, 0.10)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The runs of one part of the study, each with its flags (as `facemark train` takes them).
fn study_runs(task: Task) -> Vec<(&'static str, Vec<&'static str>)> {
    match task {
        Task::Nose => vec![
            ("study", vec![]),
            ("lr_1e-4", vec!["--lr", "1e-4"]),
            ("width_12", vec!["--width", "12"]),
            ("best", vec!["--recipe", "best"]),
        ],
        Task::Imm58 => vec![
            ("avg_pool", vec![]),
            ("max_pool", vec!["--pooling", "max"]),
            ("no_augment", vec!["--no-augment"]),
            ("best", vec!["--recipe", "best"]),
        ],
        // About 40 minutes each on 2 cores (resumable: rerun the study to continue).
        Task::Ibug68 => vec![
            ("tight", vec!["--recipe", "best", "--train-boxes", "tight"]),
            (
                "detector",
                vec!["--recipe", "best", "--train-boxes", "detector"],
            ),
            ("both", vec!["--recipe", "best"]),
        ],
        // About an hour each on 2 cores.
        Task::Heatmap => vec![
            ("gaussian", vec!["--recipe", "best"]),
            ("binary", vec!["--recipe", "best", "--target", "binary"]),
        ],
    }
}

/// Runs every experiment of a part and gathers their metrics and figures into `out`.
fn study(task: Task, data_root: &Path, out: &Path, runs_root: &Path) -> Result<()> {
    if study_runs(task).is_empty() {
        bail!(
            "no study is defined for {} yet: use `facemark train {}`",
            task.name(),
            task.name()
        );
    }
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
    let mut run_dirs = Vec::new();
    // Runs that crop from other boxes need their own training data.
    let mut loaded: Option<(facemark::dataset::FaceDataConfig, TaskData)> = None;
    for (name, flags) in study_runs(task) {
        let argv: Vec<String> = ["facemark", "train", task.name()]
            .iter()
            .map(|s| s.to_string())
            .chain(flags.iter().map(|s| s.to_string()))
            .collect();
        let Cli {
            command: Command::Train(args),
            ..
        } = Cli::try_parse_from(&argv)?
        else {
            unreachable!("train flags parse to Train")
        };
        let config = args.config()?;
        if loaded
            .as_ref()
            .is_none_or(|(faces, _)| *faces != config.faces)
        {
            loaded = Some((config.faces.clone(), TaskData::load(&config, data_root)?));
        }
        let data = &loaded.as_ref().expect("loaded").1;
        let dir = runs_root.join(task.name()).join(name);
        let resume = RunDir::new(&dir).exists();
        let summary = train_run(&config, data, &dir, resume, false)?;
        let state = RunDir::new(&dir).read_state()?;
        let command = format!("`facemark train {} {}`", task.name(), flags.join(" "));
        let best_epoch = state.best_epoch.unwrap_or(0);
        copy_results(&dir, &out.join(name))?;
        if task.crops_faces() {
            let m = face_study_metrics(&dir, data, data_root, &out.join(name))?;
            let argmax = m
                .argmax
                .map(|[test, hogbox]| {
                    format!(
                        " {:.2} % | {:.2} % |",
                        test.nme_inter_ocular, hogbox.nme_inter_ocular
                    )
                })
                .unwrap_or_default();
            table.push_str(&format!(
                "| {name} | {command} | {best_epoch} | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {:.3} | {:.1} % |{argmax}\n",
                m.val.nme_inter_ocular,
                m.val_detector.nme_inter_ocular,
                m.test.nme_inter_ocular,
                m.hogbox.nme_inter_ocular,
                m.hogbox.auc_0_08,
                100.0 * m.hogbox.failure_rate_0_10,
            ));
        } else {
            table.push_str(&format!(
                "| {name} | {command} | {best_epoch} | {:.5} | {:.2} | {:.2} | {:.2} |\n",
                summary.mse,
                summary.mean_px_error,
                summary.median_px_error,
                summary.mean_shape_px_error.unwrap_or(f64::NAN)
            ));
        }
        run_dirs.push(dir);
    }
    compare(&run_dirs, &out.join("comparison.png"))?;
    if task.crops_faces() {
        // Heatmap curves against the shipped ResNet18 (Part 3), when there is one.
        let mut models = run_dirs.clone();
        if task == Task::Heatmap && facemark::run::models_dir().join("ibug68").is_dir() {
            models.push(PathBuf::from("ibug68"));
        }
        for (labels, figure) in [
            (TEST_LABELS, "ced_test.png"),
            (HOGBOX_LABELS, "ced_test_hogbox.png"),
        ] {
            compare_ced(&models, &data_root.join(labels), &out.join(figure))?;
        }
    }
    write_atomic(&out.join("summary.md"), table.as_bytes())?;
    println!("{table}");
    Ok(())
}

/// 300-W's test faces with tight boxes, and with the boxes dlib's HOG detector found (221 of 224).
const TEST_LABELS: &str = "ibug_300w/labels_300w_test.xml";
const HOGBOX_LABELS: &str = "ibug_300w/labels_300w_test_hogbox.xml";

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

/// A face-box run's best model on its validation faces (tight, then detector boxes) and on both
/// test sets; writes `test.json`, `test_hogbox.json` and their figures into `dest`.
fn face_study_metrics(
    run: &Path,
    data: &TaskData,
    data_root: &Path,
    dest: &Path,
) -> Result<FaceStudyMetrics> {
    let mut predictor = facemark::inference::Predictor::load(&run.to_string_lossy())?;
    let config = predictor.model.config.clone();
    let metrics = |net: &facemark::model::KeypointNet,
                   data: &TaskData,
                   name: Option<&str>|
     -> Result<LandmarkMetrics> {
        let evaluation = facemark::report::evaluate(net, &config, data);
        if let Some(name) = name {
            write_json(&dest.join(format!("{name}.json")), &evaluation.summary)?;
            let figures = dest.join(name);
            facemark::report::write_evaluation_figures(
                &figures,
                name,
                net,
                &config,
                data,
                &evaluation,
            )?;
        }
        evaluation
            .summary
            .landmarks
            .context("a 68-point model has 300-W metrics")
    };
    let detector_boxes = facemark::dataset::read_labels(&data_root.join(DETECTOR_TRAIN_LABELS))?;
    let test = |labels: &str| -> Result<TaskData> {
        let images = facemark::dataset::read_labels(&data_root.join(labels))?;
        Ok(TaskData::faces_for_validation(&config, &images)?)
    };
    let (test_data, hogbox_data) = (test(TEST_LABELS)?, test(HOGBOX_LABELS)?);
    let net = &predictor.model.net;
    let mut measured = FaceStudyMetrics {
        val: metrics(net, data, None)?,
        val_detector: metrics(
            net,
            &data.validation_with_boxes(&config, &detector_boxes)?,
            None,
        )?,
        test: metrics(net, &test_data, Some("test"))?,
        hogbox: metrics(net, &hogbox_data, Some("test_hogbox"))?,
        argmax: None,
    };
    if predictor.model.net.set_decoding(Decoding::Argmax) {
        let net = &predictor.model.net;
        measured.argmax = Some([
            metrics(net, &test_data, None)?,
            metrics(net, &hogbox_data, None)?,
        ]);
    }
    Ok(measured)
}

/// Copies a run's small outputs (config, metrics, evaluation, figures) into `dest`.
fn copy_results(run: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest.join("figures"))?;
    for file in ["config.json", "metrics.csv", "eval.json"] {
        std::fs::copy(run.join(file), dest.join(file))
            .with_context(|| format!("copying {file}"))?;
    }
    for entry in std::fs::read_dir(run.join("figures"))? {
        let path = entry?.path();
        std::fs::copy(
            &path,
            dest.join("figures")
                .join(path.file_name().unwrap_or_default()),
        )?;
    }
    Ok(())
}
