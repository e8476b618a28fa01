//! Metrics: how far predicted landmarks are from the truth.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Example, Point};
use crate::model::KeypointNet;

/// Runs `net` over `examples` in batches and returns each example's predicted points as fractions
/// of width and height. `net` should be in validation mode ([`Module::valid`]).
pub fn predict_examples(
    net: &KeypointNet,
    examples: &[Example],
    device: &Device,
    batch_size: usize,
) -> Vec<Vec<Point>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let images = images_tensor(chunk, device);
        let coords: Vec<f32> = net
            .forward(images)
            .into_data()
            .try_to_vec()
            .expect("model outputs f32");
        let per_example = coords.len() / chunk.len();
        out.extend(
            coords
                .chunks(per_example)
                .map(|c| c.chunks(2).map(|xy| [xy[0], xy[1]]).collect()),
        );
    }
    out
}

/// Like [`predict_examples`], and with `mirror` (the landmarks' left/right permutation) also
/// predicts on each mirrored image and averages the two, which halves the variance of the guess.
pub fn predict_with_mirror(
    net: &KeypointNet,
    examples: &[Example],
    device: &Device,
    mirror: Option<&[usize]>,
) -> Vec<Vec<Point>> {
    let direct = predict_examples(net, examples, device, 32);
    let Some(mirror) = mirror else { return direct };
    let mirrored: Vec<Example> = examples.iter().map(mirror_example).collect();
    let back = predict_examples(net, &mirrored, device, 32);
    direct
        .iter()
        .zip(&back)
        .map(|(d, m)| {
            d.iter()
                .zip(mirror)
                .map(|(p, &partner)| {
                    let q = m[partner];
                    [(p[0] + 1.0 - q[0]) / 2.0, (p[1] + q[1]) / 2.0]
                })
                .collect()
        })
        .collect()
}

/// The example's image mirrored left-right (points are left as they are).
fn mirror_example(example: &Example) -> Example {
    let mut pixels = example.pixels.clone();
    for row in pixels.chunks_mut(example.width) {
        row.reverse();
    }
    Example {
        pixels,
        ..example.clone()
    }
}

/// Stacks examples' pixels into `[batch, 1, H, W]`.
pub fn images_tensor(examples: &[Example], device: &Device) -> Tensor<4> {
    let (w, h) = (examples[0].width, examples[0].height);
    let mut pixels = Vec::with_capacity(examples.len() * w * h);
    for e in examples {
        pixels.extend_from_slice(&e.pixels);
    }
    Tensor::from_data(TensorData::new(pixels, [examples.len(), 1, h, w]), device)
}

/// Stacks examples' points into `[batch, 2K]` (x0, y0, x1, y1, ...).
pub fn targets_tensor(examples: &[Example], device: &Device) -> Tensor<2> {
    let k = examples[0].points.len();
    let coords: Vec<f32> = examples
        .iter()
        .flat_map(|e| e.points.iter().flatten().copied())
        .collect();
    Tensor::from_data(TensorData::new(coords, [examples.len(), 2 * k]), device)
}

/// Landmark errors of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointErrors {
    /// Mean squared error of the coordinates as fractions of width and height (the training loss).
    pub mse: f64,
    /// Mean Euclidean error per point, in pixels of the original image size.
    pub mean_px_error: f64,
    /// Median over images of each image's mean error, in pixels.
    pub median_px_error: f64,
    /// Mean error of each landmark over all images, in pixels.
    pub per_point_px: Vec<f64>,
    /// Mean error over the landmarks of each image, in pixels.
    pub per_image_px: Vec<f64>,
    pub count: usize,
}

/// Compares predictions with the truth, both as fractions; pixel errors are at `size` (w, h).
pub fn point_errors(
    predicted: &[Vec<Point>],
    truth: &[Vec<Point>],
    size: (f32, f32),
) -> PointErrors {
    assert_eq!(predicted.len(), truth.len(), "one prediction per image");
    let k = truth.first().map_or(0, Vec::len);
    let (mut sq, mut n_coords) = (0.0f64, 0usize);
    let mut per_point = vec![0.0f64; k];
    let mut per_image = Vec::with_capacity(truth.len());
    for (p, t) in predicted.iter().zip(truth) {
        let mut image_sum = 0.0;
        for (i, (a, b)) in p.iter().zip(t).enumerate() {
            let (dx, dy) = ((a[0] - b[0]) as f64, (a[1] - b[1]) as f64);
            sq += dx * dx + dy * dy;
            n_coords += 2;
            let px = (dx * size.0 as f64).hypot(dy * size.1 as f64);
            per_point[i] += px;
            image_sum += px;
        }
        per_image.push(image_sum / k.max(1) as f64);
    }
    let n = truth.len().max(1) as f64;
    per_point.iter_mut().for_each(|v| *v /= n);
    let mean = per_image.iter().sum::<f64>() / n;
    PointErrors {
        mse: sq / n_coords.max(1) as f64,
        mean_px_error: mean,
        median_px_error: median(&per_image),
        per_point_px: per_point,
        per_image_px: per_image,
        count: truth.len(),
    }
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// The 300-W benchmark's metrics for a set of 68-point predictions (pixel coordinates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandmarkMetrics {
    /// Mean over images of the mean point error divided by the outer-eye-corner distance, in percent.
    pub nme_inter_ocular: f64,
    /// The same, normalised by the distance between the eye centres, in percent.
    pub nme_inter_pupil: f64,
    /// Area under the inter-ocular CED curve up to 0.08, divided by 0.08.
    pub auc_0_08: f64,
    /// Fraction of images with inter-ocular NME above 0.08 and above 0.10.
    pub failure_rate_0_08: f64,
    pub failure_rate_0_10: f64,
    /// Each image's inter-ocular NME as a fraction (for CED curves).
    pub per_image_nme: Vec<f64>,
}

/// Each image's mean point error divided by `normaliser(truth)` (a fraction, not percent).
pub fn per_image_nme(
    predicted: &[Vec<Point>],
    truth: &[Vec<Point>],
    normaliser: fn(&[Point]) -> f32,
) -> Vec<f64> {
    predicted
        .iter()
        .zip(truth)
        .map(|(p, t)| {
            let mean = p
                .iter()
                .zip(t)
                .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]) as f64)
                .sum::<f64>()
                / t.len().max(1) as f64;
            mean / normaliser(t) as f64
        })
        .collect()
}

/// Computes [`LandmarkMetrics`] for 68-point shapes given in pixels.
pub fn landmark_metrics(predicted: &[Vec<Point>], truth: &[Vec<Point>]) -> LandmarkMetrics {
    use crate::data::ibug::{inter_ocular, inter_pupil};
    let ocular = per_image_nme(predicted, truth, inter_ocular);
    let pupil = per_image_nme(predicted, truth, inter_pupil);
    let ocular_f32: Vec<f32> = ocular.iter().map(|&e| e as f32).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    LandmarkMetrics {
        nme_inter_ocular: 100.0 * mean(&ocular),
        nme_inter_pupil: 100.0 * mean(&pupil),
        auc_0_08: ced_auc(&ocular_f32, 0.08) as f64,
        failure_rate_0_08: failure_rate(&ocular_f32, 0.08) as f64,
        failure_rate_0_10: failure_rate(&ocular_f32, 0.10) as f64,
        per_image_nme: ocular,
    }
}

/// Area under the CED curve on `[0, max_error]`, divided by `max_error` (so in `[0, 1]`; 1
/// means every error is 0). Exact for the step function: each image with error `e <= max_error`
/// contributes `max_error - e`. Non-finite errors count as failures. Returns 0 for no errors
/// or a non-positive `max_error`.
pub fn ced_auc(errors: &[f32], max_error: f32) -> f32 {
    if errors.is_empty() || !(max_error.is_finite() && max_error > 0.0) {
        return 0.0;
    }
    let max_error = f64::from(max_error);
    let area: f64 = errors
        .iter()
        .filter(|e| e.is_finite())
        .map(|&e| (max_error - f64::from(e.max(0.0))).max(0.0))
        .sum();
    (area / (max_error * errors.len() as f64)) as f32
}

/// Fraction of errors above `threshold`; non-finite errors count as failures. 0 for no errors.
pub fn failure_rate(errors: &[f32], threshold: f32) -> f32 {
    if errors.is_empty() {
        return 0.0;
    }
    let failures = errors
        .iter()
        .filter(|e| !e.is_finite() || **e > threshold)
        .count();
    failures as f32 / errors.len() as f32
}

/// The mean shape: the average position of each landmark over `examples` (fractions).
pub fn mean_shape(examples: &[Example]) -> Vec<Point> {
    let k = examples.first().map_or(0, |e| e.points.len());
    let mut mean = vec![[0.0f32; 2]; k];
    for e in examples {
        for (m, p) in mean.iter_mut().zip(&e.points) {
            m[0] += p[0];
            m[1] += p[1];
        }
    }
    let n = examples.len().max(1) as f32;
    mean.iter().map(|m| [m[0] / n, m[1] / n]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_on_a_hand_computed_case() {
        // One image, two points; the first is off by 3 px right and 4 px down at 640x480.
        let truth = vec![vec![[0.5, 0.5], [0.25, 0.25]]];
        let predicted = vec![vec![[0.5 + 3.0 / 640.0, 0.5 + 4.0 / 480.0], [0.25, 0.25]]];
        let e = point_errors(&predicted, &truth, (640.0, 480.0));
        assert!((e.per_point_px[0] - 5.0).abs() < 1e-4);
        assert_eq!(e.per_point_px[1], 0.0);
        assert!((e.mean_px_error - 2.5).abs() < 1e-4);
        let expected_mse = ((3.0f64 / 640.0).powi(2) + (4.0f64 / 480.0).powi(2)) / 4.0;
        assert!((e.mse - expected_mse).abs() < 1e-9);
    }

    #[test]
    fn nme_on_a_hand_computed_case() {
        // Outer eye corners 100 px apart, eye centres 80 px apart; every point off by 5 px.
        let mut truth = vec![[0.0f32, 0.0]; 68];
        truth[36] = [0.0, 0.0];
        truth[45] = [100.0, 0.0];
        truth[42..45].fill([96.0, 0.0]);
        truth[46..48].fill([96.0, 0.0]);
        // Right eye centre: mean of 36..42 = 0; left: (3*96 + 100 + 2*96) / 6 = 96.67.
        let predicted: Vec<Point> = truth.iter().map(|p| [p[0] + 3.0, p[1] + 4.0]).collect();
        let m = landmark_metrics(&[predicted], &[truth]);
        assert!(
            (m.nme_inter_ocular - 5.0).abs() < 1e-4,
            "{}",
            m.nme_inter_ocular
        );
        let pupil = 100.0 * 5.0 / (96.0 * 5.0 + 100.0) * 6.0;
        assert!(
            (m.nme_inter_pupil - pupil).abs() < 1e-3,
            "{} vs {pupil}",
            m.nme_inter_pupil
        );
        assert_eq!(m.failure_rate_0_08, 0.0);
        // One image at NME 0.05: the CED is 0 below 0.05 and 1 from there to 0.08.
        assert!((m.auc_0_08 - 0.375).abs() < 1e-4, "{}", m.auc_0_08);
    }

    #[test]
    fn ced_auc_hand_computed() {
        // CED is 1/3 on [0, 0.04), 2/3 on [0.04, 0.08]: (0.04/3 + 0.04*2/3) / 0.08 = 0.5.
        let auc = ced_auc(&[0.0, 0.04, 0.1], 0.08);
        assert!((auc - 0.5).abs() < 1e-6, "{auc}");
        assert_eq!(ced_auc(&[0.0, 0.0], 0.08), 1.0);
        assert_eq!(ced_auc(&[0.2, f32::NAN], 0.08), 0.0);
        assert_eq!(ced_auc(&[], 0.08), 0.0);
        // NaN counts as a failure: half the images at error 0.
        assert!((ced_auc(&[0.0, f32::NAN], 0.08) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn failure_rate_hand_computed() {
        assert!((failure_rate(&[0.0, 0.04, 0.1], 0.08) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(failure_rate(&[0.08], 0.08), 0.0);
        assert_eq!(failure_rate(&[f32::INFINITY, 0.01], 0.08), 0.5);
        assert_eq!(failure_rate(&[], 0.08), 0.0);
    }

    #[test]
    fn mean_shape_averages_points() {
        let ex = |x: f32| Example {
            width: 1,
            height: 1,
            pixels: vec![0.0],
            points: vec![[x, 1.0 - x]],
        };
        let m = mean_shape(&[ex(0.2), ex(0.4)]);
        assert!(
            (m[0][0] - 0.3).abs() < 1e-6 && (m[0][1] - 0.7).abs() < 1e-6,
            "{m:?}"
        );
    }
}
