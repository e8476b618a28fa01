//! What a finished run reports: metrics of its best model on the validation split (`eval.json`)
//! and the figures drawn from them.

use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::data::imm::IMM_IMAGE_SIZE;
use crate::eval::{PointErrors, mean_shape, point_errors, predict_with_mirror};
use crate::figures::{self, Curve, FigureError, Tile};
use crate::model::KeypointNet;
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
    /// The same error for the mean training shape: the bar an untrained guess reaches.
    pub mean_shape_px_error: f64,
    pub count: usize,
    pub per_point_px_error: Vec<f64>,
}

/// Validation predictions and their errors.
pub struct Evaluation {
    pub summary: EvalSummary,
    pub predicted: Vec<Vec<crate::data::Point>>,
    pub errors: PointErrors,
}

/// Evaluates `net` (validation mode) on the validation split of `data`.
pub fn evaluate(net: &KeypointNet, config: &TrainConfig, data: &TaskData) -> Evaluation {
    let device = crate::backend::device();
    let predicted = predict_with_mirror(net, &data.val, &device, config.test_time_mirror());
    let size = (IMM_IMAGE_SIZE.0 as f32, IMM_IMAGE_SIZE.1 as f32);
    let truth: Vec<_> = data.val.iter().map(|e| e.points.clone()).collect();
    let errors = point_errors(&predicted, &truth, size);
    let mean = mean_shape(&data.train);
    let baseline = point_errors(&vec![mean; truth.len()], &truth, size);
    let summary = EvalSummary {
        task: config.task.name().into(),
        mse: errors.mse,
        mean_px_error: errors.mean_px_error,
        median_px_error: errors.median_px_error,
        mean_shape_px_error: baseline.mean_px_error,
        count: errors.count,
        per_point_px_error: errors.per_point_px.clone(),
    };
    Evaluation {
        summary,
        predicted,
        errors,
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
    figures::loss_curves(&run.figure("loss.png"), &title, "loss (MSE)", &curves)?;

    let scale = (320 / data.train[0].width).max(1) as u32;
    // Training images as the network sees them (augmented when the recipe augments).
    let indices: Vec<usize> = (0..data.train.len())
        .step_by((data.train.len() / 16).max(1))
        .take(16)
        .collect();
    let shown = batch_examples(config, &data.train, &indices, 1);
    let tiles = shown
        .iter()
        .zip(&indices)
        .map(|(e, &i)| tile(e, None, data.train_faces[i].name()))
        .collect::<Vec<_>>();
    figures::landmark_grid(&run.figure("train_samples.png"), &tiles, 4, scale)?;

    let mut ranked: Vec<usize> = (0..data.val.len()).collect();
    ranked.sort_by(|&a, &b| {
        evaluation.errors.per_image_px[a].total_cmp(&evaluation.errors.per_image_px[b])
    });
    let cases = |order: &[usize]| -> Vec<Tile> {
        order
            .iter()
            .take(6)
            .map(|&i| {
                let caption = format!(
                    "{}  {:.1} px",
                    data.val_faces[i].name(),
                    evaluation.errors.per_image_px[i]
                );
                tile(&data.val[i], Some(&evaluation.predicted[i]), caption)
            })
            .collect()
    };
    figures::landmark_grid(&run.figure("val_best.png"), &cases(&ranked), 3, scale)?;
    ranked.reverse();
    figures::landmark_grid(&run.figure("val_worst.png"), &cases(&ranked), 3, scale)?;

    if evaluation.errors.per_point_px.len() > 1 {
        let labels: Vec<String> = (0..evaluation.errors.per_point_px.len())
            .map(|i| i.to_string())
            .collect();
        let values: Vec<f32> = evaluation
            .errors
            .per_point_px
            .iter()
            .map(|&v| v as f32)
            .collect();
        figures::bar_chart(
            &run.figure("per_point_error.png"),
            "mean validation error per landmark",
            "landmark",
            "error (px at 640x480)",
            &labels,
            &values,
        )?;
    }
    write_filters(net, &run.figure("filters.png"))?;
    Ok(evaluation.summary)
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
