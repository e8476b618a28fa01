//! The `facemark` command: parses flags, calls the library, maps errors to an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use facemark::data::FaceBox;
use facemark::model::{ModelConfig, Pooling};
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
    /// Draw the validation loss curves of several runs on one plot.
    Compare {
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
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
        facemark::report::write_report(&run, config, data, &outcome.state, &outcome.best)?;
    eprintln!(
        "{}: validation mean error {:.1} px at 640x480 (mean shape {:.1} px), best epoch {}",
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
            let data = TaskData::load(&config, &cli.data)?;
            train_run(&config, &data, &dir, resume, args.force)?;
        }
        Command::Study { task, out, runs } => study(task, &cli.data, &out, &runs)?,
        Command::Eval {
            model,
            labels,
            figures,
            json,
        } => {
            let predictor = facemark::inference::Predictor::load(&model)?;
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
        Command::Compare { runs, out } => compare(&runs, &out)?,
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
            if let (ModelConfig::ResNet(m), Some(size)) = (&mut train.model, size) {
                m.input_size = size;
                train.faces.crop.size = size;
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
    for dir in runs {
        let state = RunDir::new(dir).read_state()?;
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
    facemark::figures::loss_curves(out, "loss per epoch", "loss (MSE)", &curves)?;
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
        // Part 3's runs are long (hours on 2 cores): train and evaluate them one by one.
        Task::Ibug68 => vec![],
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
    let mut table = String::from(
        "| run | command | best epoch | val MSE | mean error (px, 640x480) | median (px) | mean shape (px) |\n|---|---|---|---|---|---|---|\n",
    );
    let mut run_dirs = Vec::new();
    let mut data: Option<TaskData> = None;
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
        if data.is_none() {
            data = Some(TaskData::load(&config, data_root)?);
        }
        let dir = runs_root.join(task.name()).join(name);
        let resume = RunDir::new(&dir).exists();
        let summary = train_run(&config, data.as_ref().expect("loaded"), &dir, resume, false)?;
        let state = RunDir::new(&dir).read_state()?;
        table.push_str(&format!(
            "| {name} | `facemark train {} {}` | {} | {:.5} | {:.2} | {:.2} | {:.2} |\n",
            task.name(),
            flags.join(" "),
            state.best_epoch.unwrap_or(0),
            summary.mse,
            summary.mean_px_error,
            summary.median_px_error,
            summary.mean_shape_px_error.unwrap_or(f64::NAN)
        ));
        copy_results(&dir, &out.join(name))?;
        run_dirs.push(dir);
    }
    compare(&run_dirs, &out.join("comparison.png"))?;
    write_atomic(&out.join("summary.md"), table.as_bytes())?;
    println!("{table}");
    Ok(())
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
