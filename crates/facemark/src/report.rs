//! What a finished run reports: metrics of its best model on the validation split (`eval.json`)
//! and the figures drawn from them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batch::images_tensor;
use crate::contract::InferenceContract;
use crate::data::{Example, Point};
use crate::dataset::{Dataset, GroundTruth};
use crate::eval::{LandmarkMetrics, PointErrors, landmark_metrics, point_errors};
use crate::figures::{self, Curve, FigureError, HeatmapRow, Tile};
use crate::model::KeypointNet;
use crate::recipe::TrainConfig;
use crate::run::{RunDir, RunError, RunState, write_json};

/// The metrics `facemark eval` prints and `eval.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The task or model evaluated.
    pub task: String,
    /// Validation MSE of the network's coordinates as fractions of the model input's width and
    /// height, against the labels moved by the contract's point offset (where the contract
    /// expects the net's points).
    pub mse: f64,
    /// Mean Euclidean error per landmark in pixels of the photos.
    pub mean_px_error: f64,
    pub median_px_error: f64,
    /// The same error for the mean training shape: the bar an untrained guess reaches (absent
    /// when evaluating on labels outside the training data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_shape_px_error: Option<f64>,
    pub count: usize,
    pub per_point_px_error: Vec<f64>,
    /// Normalised errors, as the landmark scheme says (the 300-W metrics for 68 points).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<LandmarkMetrics>,
    /// The mean shape's NME in percent, normalised like `nme`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_shape_nme: Option<f64>,
    /// What the truth was read from: `pts` (the `.pts` files beside the images), `labels` (the
    /// label file's own points) or `mixed`.
    #[serde(default)]
    pub ground_truth: String,
    /// How many faces each source gave, when they are mixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ground_truth_faces: Option<GroundTruth>,
}

/// Validation predictions and their errors.
pub struct Evaluation {
    pub summary: EvalSummary,
    /// Predictions as fractions of the model input.
    pub predicted: Vec<Vec<Point>>,
    /// Errors in photo pixels.
    pub errors: PointErrors,
    /// The mean training shape's normalised errors, when it is known.
    pub mean_shape_landmarks: Option<LandmarkMetrics>,
}

/// Evaluates `net` (validation mode) on the validation faces of `data`, with the model's
/// inference contract; `name` labels the result. Pixel errors are in the photos' own pixels.
pub fn evaluate(
    net: &KeypointNet,
    contract: &InferenceContract,
    data: &Dataset,
    name: &str,
) -> Evaluation {
    let device = crate::backend::device();
    let examples = data.val_examples();
    let predicted = contract.predict(net, &examples, &device);
    let truth: Vec<Vec<Point>> = examples.iter().map(|e| e.points.clone()).collect();
    // The net's own output is compared with the labels moved by the contract's point offset,
    // which is added back only in photo pixels.
    let expected: Vec<Vec<Point>> = data
        .val
        .iter()
        .map(|s| s.labels_moved(contract.point_offset))
        .collect();
    let mse = point_errors(&predicted, &expected).mse;
    let to_photo = |shapes: &[Vec<Point>]| -> Vec<Vec<Point>> {
        data.val
            .iter()
            .zip(shapes)
            .map(|(sample, shape)| sample.to_photo(shape))
            .collect()
    };
    let predicted_px: Vec<Vec<Point>> = to_photo(&predicted)
        .into_iter()
        .map(|shape| contract.offset_points(shape))
        .collect();
    let truth_px: Vec<Vec<Point>> = data.val.iter().map(|s| s.truth.clone()).collect();
    let diagonals: Vec<f32> = data.val.iter().map(|s| s.box_diagonal()).collect();
    let errors = point_errors(&predicted_px, &truth_px);
    let metrics =
        |shapes: &[Vec<Point>]| landmark_metrics(shapes, &truth_px, &data.scheme, &diagonals);
    // The mean training shape placed in each face; unknown when evaluating on outside labels.
    let baseline_px = data
        .mean_shape()
        .map(|mean| to_photo(&vec![mean; truth.len()]));
    let mean_shape_landmarks = baseline_px.as_deref().map(metrics);
    let ground_truth = GroundTruth::of(&data.val);
    let summary = EvalSummary {
        task: name.into(),
        mse,
        mean_px_error: errors.mean_px_error,
        median_px_error: errors.median_px_error,
        mean_shape_px_error: baseline_px
            .as_ref()
            .map(|b| point_errors(b, &truth_px).mean_px_error),
        count: errors.count,
        per_point_px_error: errors.per_point_px.clone(),
        landmarks: (!truth.is_empty()).then(|| metrics(&predicted_px)),
        mean_shape_nme: mean_shape_landmarks.as_ref().map(|m| m.nme),
        ground_truth: ground_truth.name().into(),
        ground_truth_faces: Some(ground_truth).filter(|g| g.name() == "mixed"),
    };
    Evaluation {
        summary,
        predicted,
        errors,
        mean_shape_landmarks,
    }
}

/// Errors of writing a run's report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Figure(#[from] FigureError),
}

/// Writes `eval.json` and every figure of a finished run.
pub fn write_report(
    run: &RunDir,
    config: &TrainConfig,
    contract: &InferenceContract,
    data: &Dataset,
    state: &RunState,
    net: &KeypointNet,
) -> Result<EvalSummary, ReportError> {
    let evaluation = evaluate(net, contract, data, config.task.name());
    write_json(&run.eval(), &evaluation.summary)?;

    let curves = [
        Curve {
            label: "training".into(),
            values: state.history.iter().map(|r| r.train_loss as f32).collect(),
            dashed: false,
        },
        Curve {
            label: "validation".into(),
            values: state.history.iter().map(|r| r.val_loss as f32).collect(),
            dashed: false,
        },
    ];
    let title = format!("{}: loss per epoch", config.task.name());
    let y_label = format!("loss ({})", config.model.loss_name());
    figures::loss_curves(&run.figure("loss.png"), &title, &y_label, &curves)?;

    if let Some(first) = data.train.first() {
        let scale = (320 / first.example.width.max(1)).max(1) as u32;
        // Training images as the network sees them (augmented when the recipe augments).
        let indices: Vec<usize> = (0..data.train.len())
            .step_by((data.train.len() / 16).max(1))
            .take(16)
            .collect();
        let shown = data.training_batch(&config.sampling(), &indices, 1);
        let tiles = shown
            .iter()
            .zip(&indices)
            .map(|(e, &i)| tile(e, None, data.train[i].name.clone()))
            .collect::<Vec<_>>();
        figures::landmark_grid(&run.figure("train_samples.png"), &tiles, 4, scale)?;
    }

    let figures_dir = run.figure("");
    write_evaluation_figures(&figures_dir, "val", net, contract, data, &evaluation)?;
    write_filters(net, &run.figure("filters.png"))?;
    Ok(evaluation.summary)
}

/// Draws an evaluation's figures into `dir`: `{prefix}_best.png` and `{prefix}_worst.png` (six
/// faces each, ranked by NME for face-box models, else by mean pixel error),
/// `per_point_error.png`, for face-box models `ced.png` against the mean shape, and for heatmap
/// models `{prefix}_heatmaps.png`.
pub fn write_evaluation_figures(
    dir: &Path,
    prefix: &str,
    net: &KeypointNet,
    contract: &InferenceContract,
    data: &Dataset,
    evaluation: &Evaluation,
) -> Result<(), FigureError> {
    let Some(first) = data.val.first() else {
        return Ok(());
    };
    let scale = (320 / first.example.width.max(1)).max(1) as u32;
    // Whole photos rank by pixels (the study's measure), face crops by normalised error.
    let nme = evaluation
        .summary
        .landmarks
        .as_ref()
        .filter(|_| contract.needs_face_box())
        .map(|m| &m.per_image_nme);
    let score = |i: usize| nme.map_or(evaluation.errors.per_image_px[i], |n| n[i]);
    let mut ranked: Vec<usize> = (0..data.val.len()).collect();
    ranked.sort_by(|&a, &b| score(a).total_cmp(&score(b)));
    let name = |i: usize| &data.val[i].name;
    // The best, the median and the worst face.
    let shown = [
        ranked[0],
        ranked[ranked.len() / 2],
        ranked[ranked.len() - 1],
    ];
    let caption = |i: usize| match nme {
        Some(n) => format!("{}  NME {:.1} %", name(i), 100.0 * n[i]),
        None => name(i).clone(),
    };
    if let Some(rows) = heatmap_rows(net, data, &shown, evaluation, &caption) {
        figures::heatmap_grid(&dir.join(format!("{prefix}_heatmaps.png")), &rows, scale)?;
    }
    let cases = |order: &[usize]| -> Vec<Tile> {
        order
            .iter()
            .take(6)
            .map(|&i| {
                let caption = match nme {
                    Some(n) => format!("{}  NME {:.1} %", name(i), 100.0 * n[i]),
                    None => format!("{}  {:.1} px", name(i), evaluation.errors.per_image_px[i]),
                };
                tile(
                    &data.val[i].example,
                    Some(&evaluation.predicted[i]),
                    caption,
                )
            })
            .collect()
    };
    figures::landmark_grid(
        &dir.join(format!("{prefix}_best.png")),
        &cases(&ranked),
        3,
        scale,
    )?;
    ranked.reverse();
    figures::landmark_grid(
        &dir.join(format!("{prefix}_worst.png")),
        &cases(&ranked),
        3,
        scale,
    )?;

    let per_point = &evaluation.errors.per_point_px;
    if per_point.len() > 1 {
        let labels: Vec<String> = (0..per_point.len()).map(|i| i.to_string()).collect();
        let values: Vec<f32> = per_point.iter().map(|&v| v as f32).collect();
        let unit = "error (px of the photo)";
        figures::bar_chart(
            &dir.join("per_point_error.png"),
            "mean error per landmark",
            "landmark",
            unit,
            &labels,
            &values,
        )?;
    }
    if let Some(landmarks) = evaluation
        .summary
        .landmarks
        .as_ref()
        .filter(|_| nme.is_some())
    {
        let as_curve = |label: &str, nme: &[f64]| Curve {
            label: label.into(),
            values: nme.iter().map(|&v| v as f32).collect(),
            dashed: false,
        };
        let mut curves = vec![as_curve(&evaluation.summary.task, &landmarks.per_image_nme)];
        if let Some(baseline) = &evaluation.mean_shape_landmarks {
            curves.push(as_curve("mean shape", &baseline.per_image_nme));
        }
        figures::ced_curves(
            &dir.join("ced.png"),
            &format!(
                "cumulative error distribution (NME, {})",
                landmarks.normaliser.replace('_', "-")
            ),
            &curves,
            ced_range(&landmarks.per_image_nme),
        )?;
    }
    Ok(())
}

/// The CED plot's error range: the field's 0.10 when most faces fall within it, else wide enough
/// to show 95 % of them (at most 0.5), so a weak model's curve is still visible.
fn ced_range(nme: &[f64]) -> f32 {
    let mut sorted: Vec<f64> = nme.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let Some(&p95) = sorted.get(sorted.len() * 95 / 100) else {
        return 0.10;
    };
    if p95 <= 0.10 {
        0.10
    } else {
        ((p95 / 0.05).ceil() * 0.05).min(0.5) as f32
    }
}

/// iBUG landmarks whose single maps the heatmap figure shows, with their names.
const SHOWN_IBUG_MAPS: [(usize, &str); 4] = [
    (8, "chin"),
    (30, "nose tip"),
    (36, "eye corner"),
    (48, "mouth corner"),
];

/// For each of `shown` (validation indices) of a heatmap model: the face with its decoded points,
/// all maps summed, and four single maps (named iBUG points, else the first four). `None` for
/// regression models.
fn heatmap_rows(
    net: &KeypointNet,
    data: &Dataset,
    shown: &[usize],
    evaluation: &Evaluation,
    caption: &dyn Fn(usize) -> String,
) -> Option<Vec<HeatmapRow>> {
    let device = crate::backend::device();
    let examples: Vec<Example> = shown.iter().map(|&i| data.val[i].example.clone()).collect();
    let maps = net.forward(images_tensor(&examples, &device)).into_maps()?;
    let [_, k, h, w] = maps.dims();
    let values: Vec<f32> = maps
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let single: Vec<(usize, String)> = if data.scheme.name == "ibug68" {
        SHOWN_IBUG_MAPS
            .iter()
            .map(|&(p, n)| (p, format!("{p}: {n}")))
            .collect()
    } else {
        (0..k.min(4)).map(|p| (p, format!("point {p}"))).collect()
    };
    let rows = shown
        .iter()
        .zip(values.chunks(k * h * w))
        .map(|(&i, face_maps)| {
            let per_point: Vec<&[f32]> = face_maps.chunks(h * w).collect();
            let mut all = vec![0.0f32; h * w];
            for map in &per_point {
                all.iter_mut().zip(*map).for_each(|(a, v)| *a += v);
            }
            let mut maps = vec![("all points".to_string(), all)];
            maps.extend(
                single
                    .iter()
                    .filter(|(p, _)| *p < k)
                    .map(|(p, name)| (name.clone(), per_point[*p].to_vec())),
            );
            HeatmapRow {
                face: tile(
                    &data.val[i].example,
                    Some(&evaluation.predicted[i]),
                    caption(i),
                ),
                maps,
                map_size: (w, h),
            }
        })
        .collect();
    Some(rows)
}

/// Draws the first convolution's filters as a grid of images.
pub fn write_filters(net: &KeypointNet, path: &std::path::Path) -> Result<(), FigureError> {
    let weights = net.first_filters();
    let [out_channels, _, k, _] = weights.dims();
    let values: Vec<f32> = weights.into_data().try_to_vec().unwrap_or_default();
    let filters: Vec<Vec<f32>> = values
        .chunks(k * k)
        .take(out_channels)
        .map(<[f32]>::to_vec)
        .collect();
    figures::filter_grid(path, &filters, k, (48 / k).max(4) as u32)
}

fn tile(example: &Example, predicted: Option<&Vec<Point>>, caption: String) -> Tile {
    let (w, h) = (example.width as f32, example.height as f32);
    Tile {
        image: example.to_gray(),
        truth: example.points_in(w, h),
        predicted: predicted.map(|p| crate::data::images::scale_points(p, w, h)),
        caption,
    }
}
