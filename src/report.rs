//! What a finished run reports: metrics of its best model on the validation split (`eval.json`)
//! and the figures drawn from them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::data::ibug::IBUG_POINTS;
use crate::eval::{
    LandmarkMetrics, PointErrors, images_tensor, landmark_metrics, mean_shape, point_errors,
    predict_with_mirror,
};
use crate::figures::{self, Curve, FigureError, HeatmapRow, Tile};
use crate::model::{HeatmapNet, KeypointNet};
use crate::run::{RunDir, RunError, RunState, write_json};
use crate::train::{TaskData, TrainConfig, batch_examples};

/// The metrics `facemark eval` prints and `eval.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub task: String,
    /// Validation MSE of coordinates as fractions of width and height.
    pub mse: f64,
    /// Mean Euclidean error per landmark in pixels at 640x480.
    pub mean_px_error: f64,
    pub median_px_error: f64,
    /// The same error for the mean training shape: the bar an untrained guess reaches (absent
    /// when evaluating on labels outside the training data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_shape_px_error: Option<f64>,
    pub count: usize,
    pub per_point_px_error: Vec<f64>,
    /// The 300-W benchmark's metrics (68-point tasks).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<LandmarkMetrics>,
    /// The mean shape's inter-ocular NME in percent (68-point tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_shape_nme_inter_ocular: Option<f64>,
}

/// Validation predictions and their errors.
pub struct Evaluation {
    pub summary: EvalSummary,
    /// Predictions as fractions of the model input.
    pub predicted: Vec<Vec<crate::data::Point>>,
    /// Errors in photo pixels.
    pub errors: PointErrors,
    /// The mean training shape's 300-W metrics, when both are known.
    pub mean_shape_landmarks: Option<LandmarkMetrics>,
}

/// Evaluates `net` (validation mode) on the validation split of `data`. Pixel errors are in the
/// original photos' pixels (IMM: 640x480).
pub fn evaluate(net: &KeypointNet, config: &TrainConfig, data: &TaskData) -> Evaluation {
    let device = crate::backend::device();
    let predicted = predict_with_mirror(net, &data.val, &device, config.test_time_mirror());
    let truth: Vec<_> = data.val.iter().map(|e| e.points.clone()).collect();
    let mse = point_errors(&predicted, &truth, (1.0, 1.0)).mse;
    let predicted_px = data.val_predictions_px(&predicted);
    let truth_px = data.val_truth_px();
    let errors = point_errors(&predicted_px, &truth_px, (1.0, 1.0));
    // The mean training shape placed in each face; unknown when evaluating on outside labels.
    let baseline_px = (!data.train.is_empty())
        .then(|| data.val_predictions_px(&vec![mean_shape(&data.train); truth.len()]));
    let baseline = baseline_px
        .as_ref()
        .map(|b| point_errors(b, &truth_px, (1.0, 1.0)));
    let is_68 = truth.first().is_some_and(|t| t.len() == IBUG_POINTS) && config.task.crops_faces();
    let mean_shape_landmarks = baseline_px
        .as_ref()
        .filter(|_| is_68)
        .map(|b| landmark_metrics(b, &truth_px));
    let summary = EvalSummary {
        task: config.task.name().into(),
        mse,
        mean_px_error: errors.mean_px_error,
        median_px_error: errors.median_px_error,
        mean_shape_px_error: baseline.map(|b| b.mean_px_error),
        count: errors.count,
        per_point_px_error: errors.per_point_px.clone(),
        landmarks: is_68.then(|| landmark_metrics(&predicted_px, &truth_px)),
        mean_shape_nme_inter_ocular: mean_shape_landmarks.as_ref().map(|m| m.nme_inter_ocular),
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
    data: &TaskData,
    state: &RunState,
    net: &KeypointNet,
) -> Result<EvalSummary, ReportError> {
    let evaluation = evaluate(net, config, data);
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

    let scale = (320 / data.train[0].width).max(1) as u32;
    // Training images as the network sees them (augmented when the recipe augments).
    let indices: Vec<usize> = (0..data.train.len())
        .step_by((data.train.len() / 16).max(1))
        .take(16)
        .collect();
    let shown = batch_examples(config, data, &indices, 1);
    let tiles = shown
        .iter()
        .zip(&indices)
        .map(|(e, &i)| tile(e, None, data.train_names[i].clone()))
        .collect::<Vec<_>>();
    figures::landmark_grid(&run.figure("train_samples.png"), &tiles, 4, scale)?;

    let figures_dir = run.figure("");
    write_evaluation_figures(&figures_dir, "val", net, config, data, &evaluation)?;
    write_filters(net, &run.figure("filters.png"))?;
    Ok(evaluation.summary)
}

/// Draws an evaluation's figures into `dir`: `{prefix}_best.png` and `{prefix}_worst.png` (six
/// faces each, ranked by inter-ocular NME for 68-point models, else by mean pixel error),
/// `per_point_error.png`, for 68-point models `ced.png` against the mean shape, and for heatmap
/// models `{prefix}_heatmaps.png`.
pub fn write_evaluation_figures(
    dir: &Path,
    prefix: &str,
    net: &KeypointNet,
    config: &TrainConfig,
    data: &TaskData,
    evaluation: &Evaluation,
) -> Result<(), FigureError> {
    let Some(first) = data.val.first() else {
        return Ok(());
    };
    let scale = (320 / first.width).max(1) as u32;
    let nme = evaluation
        .summary
        .landmarks
        .as_ref()
        .map(|m| &m.per_image_nme);
    let score = |i: usize| nme.map_or(evaluation.errors.per_image_px[i], |n| n[i]);
    let mut ranked: Vec<usize> = (0..data.val.len()).collect();
    ranked.sort_by(|&a, &b| score(a).total_cmp(&score(b)));
    if let KeypointNet::Heatmap(heatmap_net) = net {
        // The best, the median and the worst face.
        let shown = [
            ranked[0],
            ranked[ranked.len() / 2],
            ranked[ranked.len() - 1],
        ];
        let rows = heatmap_rows(heatmap_net, data, &shown, evaluation, &|i| match nme {
            Some(n) => format!("{}  NME {:.1} %", data.val_names[i], 100.0 * n[i]),
            None => data.val_names[i].clone(),
        });
        figures::heatmap_grid(&dir.join(format!("{prefix}_heatmaps.png")), &rows, scale)?;
    }
    let cases = |order: &[usize]| -> Vec<Tile> {
        order
            .iter()
            .take(6)
            .map(|&i| {
                let caption = match nme {
                    Some(n) => format!("{}  NME {:.1} %", data.val_names[i], 100.0 * n[i]),
                    None => format!(
                        "{}  {:.1} px",
                        data.val_names[i], evaluation.errors.per_image_px[i]
                    ),
                };
                tile(&data.val[i], Some(&evaluation.predicted[i]), caption)
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
        let unit = if data.val_transforms.is_empty() {
            "error (px at 640x480)"
        } else {
            "error (px of the photo)"
        };
        figures::bar_chart(
            &dir.join("per_point_error.png"),
            "mean error per landmark",
            "landmark",
            unit,
            &labels,
            &values,
        )?;
    }
    if let Some(landmarks) = &evaluation.summary.landmarks {
        let as_curve = |label: &str, nme: &[f64]| Curve {
            label: label.into(),
            values: nme.iter().map(|&v| v as f32).collect(),
            dashed: false,
        };
        let mut curves = vec![as_curve(config.task.name(), &landmarks.per_image_nme)];
        if let Some(baseline) = &evaluation.mean_shape_landmarks {
            curves.push(as_curve("mean shape", &baseline.per_image_nme));
        }
        figures::ced_curves(
            &dir.join("ced.png"),
            "cumulative error distribution (inter-ocular NME)",
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
const SHOWN_MAPS: [(usize, &str); 4] = [
    (8, "chin"),
    (30, "nose tip"),
    (36, "eye corner"),
    (48, "mouth corner"),
];

/// For each of `shown` (validation indices): the face with its decoded points, all maps summed,
/// and the single maps of [`SHOWN_MAPS`] (those that exist).
fn heatmap_rows(
    net: &HeatmapNet,
    data: &TaskData,
    shown: &[usize],
    evaluation: &Evaluation,
    caption: &dyn Fn(usize) -> String,
) -> Vec<HeatmapRow> {
    let device = crate::backend::device();
    let examples: Vec<Example> = shown.iter().map(|&i| data.val[i].clone()).collect();
    let maps = net.heatmaps(images_tensor(&examples, &device));
    let [_, k, h, w] = maps.dims();
    let values: Vec<f32> = maps
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap_or_default();
    shown
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
                SHOWN_MAPS
                    .iter()
                    .filter(|(p, _)| *p < k)
                    .map(|&(p, name)| (format!("{p}: {name}"), per_point[p].to_vec())),
            );
            HeatmapRow {
                face: tile(&data.val[i], Some(&evaluation.predicted[i]), caption(i)),
                maps,
                map_size: (w, h),
            }
        })
        .collect()
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

fn tile(example: &Example, predicted: Option<&Vec<crate::data::Point>>, caption: String) -> Tile {
    let (w, h) = (example.width as f32, example.height as f32);
    Tile {
        image: example.to_gray(),
        truth: example.points_in(w, h),
        predicted: predicted.map(|p| crate::data::images::scale_points(p, w, h)),
        caption,
    }
}
