//! The `facemark` command: parses flags, makes one library call per command, prints the result
//! and maps errors to an exit code.

mod alloc;
mod args;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use facemark::data::FaceBox;
use facemark::inference::{FacePipeline, PredictOutputs};
use facemark::recipe::TrainConfig;
use facemark::run::{RunDir, write_atomic};
use facemark::study::{self, Existing};

use args::{Cli, Command, TrainArgs};

use output::{in_flag_terms, report_failures};

fn main() -> ExitCode {
    alloc::keep_freed_pages();
    quit_quietly_on_closed_pipe();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", in_flag_terms(&e));
            ExitCode::FAILURE
        }
    }
}

/// `facemark ... | head` stops like other command-line tools when the reader goes away: Rust
/// ignores SIGPIPE, so every `println!` after that would panic instead.
fn quit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn show_progress() -> bool {
    std::env::var_os("CI").is_none()
}

fn run(cli: Cli) -> Result<()> {
    facemark::kernels::set_precision(cli.precision);
    match cli.command {
        Command::Train(args) => train(&args, &cli.data),
        Command::Study { task, out, runs } => {
            let report = study::run_study(task, &cli.data, &out, &runs, show_progress())?;
            println!("{}", report.table);
            Ok(())
        }
        Command::Eval {
            model,
            labels,
            val_boxes,
            figures,
            json,
            decode,
            boxes,
            detector,
        } => match (boxes, &labels) {
            (Some(_), Some(labels)) => {
                let config = detector.config();
                let result = study::evaluate_detected(&model, labels, config, detector.refine)?;
                println!("{}", serde_json::to_string(&result)?);
                Ok(())
            }
            _ => eval(
                &model,
                match (&labels, &val_boxes) {
                    (Some(labels), _) => study::EvalFaces::Labels(labels),
                    (None, Some(boxes)) => study::EvalFaces::ValidationInBoxes(boxes),
                    (None, None) => study::EvalFaces::Validation,
                },
                figures.as_deref(),
                json,
                decode,
                detector.refine,
                &cli.data,
            ),
        },
        Command::Detect {
            labels: Some(labels),
            detector,
            ..
        } => {
            let recall = study::detector_recall(&labels, detector.config())?;
            println!("{}", serde_json::to_string(&recall)?);
            Ok(())
        }
        Command::Detect {
            photos,
            draw,
            xml,
            detector,
            ..
        } => {
            let detector = facemark::detect::FaceDetector::new(detector.config());
            let outputs = PredictOutputs {
                draw,
                pts: None,
                xml,
            };
            let (found, failures) =
                facemark::inference::detect_photos(&detector, &photos, &outputs)?;
            println!("{}", serde_json::to_string_pretty(&found)?);
            report_failures(&failures, photos.len())
        }
        Command::Predict {
            model,
            images,
            detector,
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
                        let boxes = image.faces.iter().map(|f| f.bbox).collect();
                        (image.image_path, boxes)
                    })
                    .collect(),
                None => images
                    .into_iter()
                    .map(|path| (path, face_box.into_iter().collect()))
                    .collect(),
            };
            let model = match model {
                Some(model) => model,
                None => facemark::run::default_landmark_model(&facemark::run::models_dir())?.into(),
            };
            let mut pipeline = FacePipeline::load(&model, detector.config())?;
            pipeline.refine = detector.refine;
            let outputs = PredictOutputs { draw, pts, xml };
            let (predictions, failures) =
                facemark::inference::predict_jobs(&pipeline, &jobs, &outputs)?;
            if csv {
                print!("{}", facemark::inference::predictions_csv(&predictions));
            } else {
                println!("{}", serde_json::to_string_pretty(&predictions)?);
            }
            report_failures(&failures, jobs.len())
        }
        Command::Export {
            model,
            labels,
            out,
            refine,
        } => {
            let mut pipeline = FacePipeline::load(&model, Default::default())?;
            pipeline.refine = refine;
            let jobs: Vec<(PathBuf, Vec<FaceBox>)> = facemark::dataset::read_labels(&labels)?
                .into_iter()
                .map(|image| {
                    (
                        image.image_path,
                        image.faces.iter().map(|f| f.bbox).collect(),
                    )
                })
                .collect();
            let mut predictions = Vec::new();
            for (image, boxes) in &jobs {
                predictions.extend(pipeline.predict_file(image, Some(boxes))?);
            }
            let csv = facemark::inference::competition_csv(&predictions);
            write_atomic(&out, csv.as_bytes())?;
            eprintln!("wrote {} ({} faces)", out.display(), predictions.len());
            Ok(())
        }
        Command::Filters { model, out } => {
            // The learned filters as trained (a predictor's have its batch norm folded in).
            let loaded = facemark::run::load_trained(&model, &facemark::backend::device())?;
            facemark::report::write_filters(&loaded.net, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Compare {
            runs,
            out,
            labels,
            refine,
        } => {
            match labels {
                Some(labels) => {
                    let measured = study::compare_ced(&runs, &labels, &out, refine)?;
                    let normaliser = measured.first().map_or("", |(_, m)| m.normaliser.as_str());
                    println!(
                        "| system | faces | NME ({normaliser}) | AUC@0.08 | failures > 0.08 | failures > 0.10 |"
                    );
                    println!("|---|---|---|---|---|---|");
                    for (name, m) in &measured {
                        println!(
                            "| {name} | {} | {:.2} % | {:.3} | {:.1} % | {:.1} % |",
                            m.per_image_nme.len(),
                            m.nme,
                            m.auc_0_08,
                            100.0 * m.failure_rate_0_08,
                            100.0 * m.failure_rate_0_10
                        );
                    }
                }
                None => {
                    let dirs: Vec<PathBuf> = runs.iter().map(PathBuf::from).collect();
                    study::compare_losses(&dirs, &out)?;
                }
            }
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Calibrate { model, write } => {
            let calibration = study::calibrate_model(&model, &cli.data, write)?;
            println!("{}", serde_json::to_string(&calibration)?);
            if write {
                eprintln!(
                    "{model}: points now move by ({:.3}, {:.3}) px",
                    calibration.offset_after[0], calibration.offset_after[1]
                );
            }
            Ok(())
        }
        Command::Ship { run, name } => {
            let dir = facemark::run::ship(&run, &name)?;
            eprintln!("shipped {} as {}", run.display(), dir.display());
            Ok(())
        }
        Command::Ensemble { members, out } => {
            let dir = facemark::run::assemble_ensemble(&members, &out)?;
            eprintln!(
                "wrote the ensemble of {} to {}",
                members.join(", "),
                dir.display()
            );
            Ok(())
        }
        Command::Bench {
            model,
            batch_size,
            seconds,
            augment,
            size,
            faces,
            only,
            refine,
        } => {
            let duration = Duration::from_secs_f64(seconds);
            let mut config =
                facemark::bench::BenchConfig::resolve(&model, augment, batch_size, size, duration)?;
            config.only = only;
            let data = facemark::train::load_data(&config.train, &cli.data);
            if let Err(e) = &data {
                eprintln!("real-data benchmarks skipped: {e}");
            }
            facemark::bench::run(&config, data.as_ref().ok(), |r| {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            })?;
            if config.wants("latency") {
                let latency = facemark::bench::latency(&config, data.as_ref().ok(), faces, refine)?;
                println!("{}", serde_json::to_string(&latency)?);
            }
            if let Some(mib) = facemark::bench::peak_memory_mib() {
                let line = serde_json::json!({"bench": "peak_memory", "model": model, "peak_rss_mib": mib});
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// `facemark train`: the recipe (or a resumed run's stored one), the data, the run and its report.
fn train(args: &TrainArgs, data_root: &Path) -> Result<()> {
    let overrides = args.overrides();
    let (config, dir, existing) = match &args.resume {
        Some(dir) => {
            let stored = RunDir::new(dir).read_config()?;
            if stored.task != args.task {
                bail!(
                    "{} holds a {} run, not {}",
                    dir.display(),
                    stored.task.name(),
                    args.task.name()
                );
            }
            (overrides.resumed(&stored)?, dir.clone(), Existing::Resume)
        }
        None => {
            let mut config = TrainConfig::recipe(args.task, args.recipe);
            overrides.apply(&mut config)?;
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(args.task.name()));
            let existing = if args.force {
                Existing::Replace
            } else {
                Existing::Refuse
            };
            (config, dir, existing)
        }
    };
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    let data = facemark::train::load_data(&config, data_root)?;
    let (summary, outcome) =
        study::train_and_report(&config, &data, &dir, existing, show_progress())?;
    let nme = summary
        .landmarks
        .as_ref()
        .map(|m| format!(", NME {:.2} % ({})", m.nme, m.normaliser))
        .unwrap_or_default();
    eprintln!(
        "{}: validation mean error {:.1} px of the photos{nme} (mean shape {:.1} px), best epoch {}",
        dir.display(),
        summary.mean_px_error,
        summary.mean_shape_px_error.unwrap_or(f64::NAN),
        outcome.state.best_epoch.unwrap_or(0)
    );
    Ok(())
}

/// `facemark eval`: prints the metrics (JSON or a short text) and optionally draws figures.
fn eval(
    model: &str,
    faces: study::EvalFaces,
    figures: Option<&Path>,
    json: bool,
    decode: Option<facemark::decode::Decoding>,
    refine: usize,
    data_root: &Path,
) -> Result<()> {
    let (predictor, data, evaluation) =
        study::evaluate_model(model, faces, data_root, decode, refine)?;
    if let Some(dir) = figures {
        let prefix = match faces {
            study::EvalFaces::Labels(_) => "test",
            _ => "val",
        };
        let (net, contract) = (&predictor.model.net, &predictor.model.contract);
        facemark::report::write_evaluation_figures(dir, prefix, net, contract, &data, &evaluation)
            .with_context(|| format!("drawing figures into {}", dir.display()))?;
    }
    let summary = evaluation.summary;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    println!(
        "{model}: MSE {:.6}, mean error {:.2} px over {} faces",
        summary.mse, summary.mean_px_error, summary.count
    );
    if let Some(px) = summary.mean_shape_px_error {
        println!("mean training shape: {px:.2} px");
    }
    if let Some(m) = &summary.landmarks {
        let pupil = m
            .nme_inter_pupil
            .map(|v| format!(", inter-pupil {v:.2} %"))
            .unwrap_or_default();
        println!(
            "NME {:.2} % ({}){pupil}, AUC@0.08 {:.3}, failures@0.08 {:.1} %, @0.10 {:.1} %",
            m.nme,
            m.normaliser,
            m.auc_0_08,
            100.0 * m.failure_rate_0_08,
            100.0 * m.failure_rate_0_10
        );
    }
    Ok(())
}
