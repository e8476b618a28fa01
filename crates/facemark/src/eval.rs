//! Metrics: how far predicted landmarks are from the truth, normalised as the landmark scheme
//! says.

use serde::{Deserialize, Serialize};

use crate::data::{Point, tight_box};
use crate::scheme::LandmarkScheme;

/// Landmark errors of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointErrors {
    /// Mean squared error of the coordinates (as fractions of the input, the training loss, when
    /// the points are fractions).
    pub mse: f64,
    /// Mean Euclidean error per point (pixels, when the points are pixels).
    pub mean_px_error: f64,
    /// Median over images of each image's mean error, in pixels.
    pub median_px_error: f64,
    /// Mean error of each landmark over all images, in pixels.
    pub per_point_px: Vec<f64>,
    /// Mean error over the landmarks of each image, in pixels.
    pub per_image_px: Vec<f64>,
    pub count: usize,
}

/// Compares predictions with the truth, in the same units (predictions beyond the truth's count
/// are ignored).
pub fn point_errors(predicted: &[Vec<Point>], truth: &[Vec<Point>]) -> PointErrors {
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
            let px = dx.hypot(dy);
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

/// Normalised landmark errors (the 300-W benchmark's metrics for 68-point shapes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandmarkMetrics {
    /// What `nme` divides by: the scheme's first normaliser (`inter_ocular` for iBUG) or
    /// `box_diagonal`.
    pub normaliser: String,
    /// Mean over images of the mean point error divided by the normaliser, in percent.
    pub nme: f64,
    /// The same, normalised by the outer-eye-corner distance (iBUG 68 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nme_inter_ocular: Option<f64>,
    /// The same, normalised by the distance between the eye centres (iBUG 68 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nme_inter_pupil: Option<f64>,
    /// Area under the CED curve of `nme` up to 0.08, divided by 0.08.
    pub auc_0_08: f64,
    /// Fraction of images with NME above 0.08 and above 0.10.
    pub failure_rate_0_08: f64,
    pub failure_rate_0_10: f64,
    /// Each image's NME as a fraction (for CED curves).
    pub per_image_nme: Vec<f64>,
}

/// Each image's mean point error divided by its normalising distance (a fraction, not percent).
pub fn per_image_nme(
    predicted: &[Vec<Point>],
    truth: &[Vec<Point>],
    distances: &[f32],
) -> Vec<f64> {
    predicted
        .iter()
        .zip(truth)
        .zip(distances)
        .map(|((p, t), &d)| {
            let mean = p
                .iter()
                .zip(t)
                .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]) as f64)
                .sum::<f64>()
                / t.len().max(1) as f64;
            mean / d as f64
        })
        .collect()
}

/// Computes [`LandmarkMetrics`] for shapes in pixels, normalised as `scheme` says
/// (`box_diagonals` serve schemes that name no normaliser).
pub fn landmark_metrics(
    predicted: &[Vec<Point>],
    truth: &[Vec<Point>],
    scheme: &LandmarkScheme,
    box_diagonals: &[f32],
) -> LandmarkMetrics {
    let distances: Vec<f32> = truth
        .iter()
        .zip(box_diagonals)
        .map(|(t, &diagonal)| scheme.normalising_distance(t, diagonal))
        .collect();
    let nme = per_image_nme(predicted, truth, &distances);
    let nme_f32: Vec<f32> = nme.iter().map(|&e| e as f32).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let named = |name: &str| {
        let normaliser = scheme.normalisers.iter().find(|n| n.name == name)?;
        let distances: Option<Vec<f32>> = truth.iter().map(|t| normaliser.distance(t)).collect();
        Some(100.0 * mean(&per_image_nme(predicted, truth, &distances?)))
    };
    LandmarkMetrics {
        normaliser: scheme.normaliser_name().into(),
        nme: 100.0 * mean(&nme),
        nme_inter_ocular: named("inter_ocular"),
        nme_inter_pupil: named("inter_pupil"),
        auc_0_08: ced_auc(&nme_f32, 0.08) as f64,
        failure_rate_0_08: failure_rate(&nme_f32, 0.08) as f64,
        failure_rate_0_10: failure_rate(&nme_f32, 0.10) as f64,
        per_image_nme: nme,
    }
}

/// Why one face's NME cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeNmeError {
    #[error("the predicted shape has {predicted} points and the true one {truth}: they must match")]
    CountMismatch { predicted: usize, truth: usize },
    #[error("the shapes have no points")]
    Empty,
    #[error("the shapes hold a coordinate that is not a finite number")]
    NotFinite,
    #[error(
        "the true shape's normalising distance ({normaliser}) is zero: its points do not span a \
         face (a single point, or all points equal)"
    )]
    ZeroDistance { normaliser: String },
}

/// One face's NME as a fraction (not percent): the mean point error divided by the true shape's
/// normalising distance. 68 points are iBUG's markup, normalised inter-ocular (outer eye corners,
/// as `eval` reports for 300-W); any other count by the diagonal of the true points' tight box
/// (`eval` uses the label's face box there, which a bare shape lacks). Returns the normaliser's
/// name with the value.
pub fn shape_nme(predicted: &[Point], truth: &[Point]) -> Result<(f64, String), ShapeNmeError> {
    if predicted.len() != truth.len() {
        return Err(ShapeNmeError::CountMismatch {
            predicted: predicted.len(),
            truth: truth.len(),
        });
    }
    let finite = |shape: &[Point]| shape.iter().flatten().all(|v| v.is_finite());
    if !finite(predicted) || !finite(truth) {
        return Err(ShapeNmeError::NotFinite);
    }
    let bbox = tight_box(truth).ok_or(ShapeNmeError::Empty)?;
    let scheme = LandmarkScheme::for_labels(truth.len(), truth);
    let distance = scheme.normalising_distance(truth, bbox.width.hypot(bbox.height));
    let normaliser = scheme.normaliser_name().to_string();
    if distance <= 0.0 {
        return Err(ShapeNmeError::ZeroDistance { normaliser });
    }
    let nme = per_image_nme(&[predicted.to_vec()], &[truth.to_vec()], &[distance]);
    Ok((nme[0], normaliser))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_on_a_hand_computed_case() {
        // One image, two points; the first is off by 3 px right and 4 px down at 640x480.
        let truth = vec![vec![[0.5, 0.5], [0.25, 0.25]]];
        let predicted = vec![vec![[0.5 + 3.0 / 640.0, 0.5 + 4.0 / 480.0], [0.25, 0.25]]];
        let px = |shapes: &Vec<Vec<Point>>| -> Vec<Vec<Point>> {
            shapes
                .iter()
                .map(|s| s.iter().map(|p| [p[0] * 640.0, p[1] * 480.0]).collect())
                .collect()
        };
        let e = point_errors(&px(&predicted), &px(&truth));
        assert!((e.per_point_px[0] - 5.0).abs() < 1e-4);
        assert_eq!(e.per_point_px[1], 0.0);
        assert!((e.mean_px_error - 2.5).abs() < 1e-4);
        let expected_mse = ((3.0f64 / 640.0).powi(2) + (4.0f64 / 480.0).powi(2)) / 4.0;
        assert!((point_errors(&predicted, &truth).mse - expected_mse).abs() < 1e-9);
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
        let m = landmark_metrics(&[predicted], &[truth], &LandmarkScheme::ibug68(), &[1.0]);
        assert_eq!(m.nme_inter_ocular, Some(m.nme));
        assert!((m.nme - 5.0).abs() < 1e-4, "{}", m.nme);
        let pupil_nme = m.nme_inter_pupil.unwrap();
        let pupil = 100.0 * 5.0 / (96.0 * 5.0 + 100.0) * 6.0;
        assert!((pupil_nme - pupil).abs() < 1e-3, "{pupil_nme} vs {pupil}");
        assert_eq!(m.failure_rate_0_08, 0.0);
        // One image at NME 0.05: the CED is 0 below 0.05 and 1 from there to 0.08.
        assert!((m.auc_0_08 - 0.375).abs() < 1e-4, "{}", m.auc_0_08);
    }

    #[test]
    fn shape_nme_normalises_68_points_inter_ocular_and_others_by_their_diagonal() {
        let mut truth = vec![[50.0f32, 50.0]; 68];
        truth[36] = [0.0, 0.0];
        truth[45] = [100.0, 0.0];
        let predicted: Vec<Point> = truth.iter().map(|p| [p[0] + 3.0, p[1] + 4.0]).collect();
        let (nme, normaliser) = shape_nme(&predicted, &truth).unwrap();
        assert_eq!(normaliser, "inter_ocular");
        assert!((nme - 0.05).abs() < 1e-6, "{nme}");
        let metrics = landmark_metrics(&[predicted], &[truth], &LandmarkScheme::ibug68(), &[1.0]);
        assert!(
            (nme - metrics.per_image_nme[0]).abs() < 1e-9,
            "eval's metric"
        );

        // Two points spanning a 30x40 box (diagonal 50), each off by 5 px: 10 %.
        let truth = [[0.0f32, 0.0], [30.0, 40.0]];
        let (nme, normaliser) = shape_nme(&[[3.0, 4.0], [33.0, 44.0]], &truth).unwrap();
        assert_eq!(normaliser, "box_diagonal");
        assert!((nme - 0.1).abs() < 1e-6, "{nme}");

        let err = shape_nme(&[[0.0, 0.0]], &truth).unwrap_err();
        assert!(
            err.to_string().contains("1 points and the true one 2"),
            "{err}"
        );
        let one = [[5.0f32, 5.0]];
        let err = shape_nme(&one, &one).unwrap_err();
        assert!(matches!(err, ShapeNmeError::ZeroDistance { .. }), "{err}");
        assert_eq!(shape_nme(&[], &[]).unwrap_err(), ShapeNmeError::Empty);
        let nan = [[f32::NAN, 0.0], [1.0, 1.0]];
        assert_eq!(
            shape_nme(&nan, &truth).unwrap_err(),
            ShapeNmeError::NotFinite
        );
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
    fn schemes_without_a_normaliser_use_the_box_diagonal() {
        let truth = vec![vec![[0.0f32, 0.0], [30.0, 40.0]]];
        let predicted = vec![vec![[3.0f32, 4.0], [30.0, 40.0]]];
        let scheme = LandmarkScheme::for_labels(2, &truth[0]);
        let m = landmark_metrics(&predicted, &truth, &scheme, &[50.0]);
        assert_eq!(m.normaliser, "box_diagonal");
        assert!(
            (m.nme - 5.0).abs() < 1e-6,
            "mean error 2.5 px over 50 px: {}",
            m.nme
        );
        assert_eq!(m.nme_inter_ocular, None);
    }
}
