//! Calibration: the constant offset between where a trained model puts the points and where the
//! labels put them, measured on the training faces and given back at inference
//! ([`InferenceContract::point_offset`]).
//!
//! Why a trained model has one: mirroring a face for augmentation mirrors its labels about the
//! photo's centre line. When the annotators' points sit a fraction of a pixel to one side of the
//! mirror-symmetric position (300-W's sit ~0.8 photo pixels to the right), each face and its
//! mirrored twin disagree by twice that, and the net learns the position halfway between: a
//! constant error in x on every face, that no amount of training removes. The offset is measured
//! in photo pixels because it is a property of the labels, not of the crop: on 300-W it is the
//! same for faces cropped at any scale.

use serde::Serialize;

use crate::contract::InferenceContract;
use crate::data::Point;
use crate::dataset::FaceSample;
use crate::model::KeypointNet;

/// What a calibration measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Calibration {
    /// Faces measured.
    pub faces: usize,
    /// Mean of prediction minus truth over every point of every face, in photo pixels, with the
    /// contract's offset as it was.
    pub mean_error_px: Point,
    /// The contract's offset before.
    pub offset_before: Point,
    /// The offset that cancels the mean error: `offset_before - mean_error_px`.
    pub offset_after: Point,
}

/// Measures `net` under `contract` on `samples` (their own crops, no augmentation) and returns
/// the offset that makes its mean signed error zero on them. Samples without points are skipped;
/// with none left the offset stays as it was.
pub fn calibrate(
    net: &KeypointNet,
    contract: &InferenceContract,
    samples: &[FaceSample],
) -> Calibration {
    let samples: Vec<&FaceSample> = samples.iter().filter(|s| !s.truth.is_empty()).collect();
    let examples: Vec<_> = samples.iter().map(|s| s.example.clone()).collect();
    let predicted = contract.predict(net, &examples, &crate::backend::device());
    let (mut sum, mut count) = ([0.0f64; 2], 0usize);
    for (sample, fractions) in samples.iter().zip(&predicted) {
        let points = contract.offset_points(sample.to_photo(fractions));
        for (p, t) in points.iter().zip(&sample.truth) {
            sum[0] += f64::from(p[0] - t[0]);
            sum[1] += f64::from(p[1] - t[1]);
            count += 1;
        }
    }
    let mean_error_px = if count == 0 {
        [0.0, 0.0]
    } else {
        [
            (sum[0] / count as f64) as f32,
            (sum[1] / count as f64) as f32,
        ]
    };
    let before = contract.point_offset;
    Calibration {
        faces: samples.len(),
        mean_error_px,
        offset_before: before,
        offset_after: [before[0] - mean_error_px[0], before[1] - mean_error_px[1]],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn offset_points_moves_every_point_by_the_offset() {
        let mut contract =
            crate::recipe::TrainConfig::best(crate::recipe::Task::Heatmap).contract();
        contract.point_offset = [0.75, -0.25];
        let moved = contract.offset_points(vec![[10.0, 20.0], [0.0, 0.0]]);
        assert_eq!(moved, vec![[10.75, 19.75], [0.75, -0.25]]);
    }
}
