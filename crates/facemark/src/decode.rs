//! From a network's output to points: regression outputs are points already, heatmaps are decoded
//! here, in tensor operations, so the decoding runs on the model's device with no copy to the
//! host and an exported network stays a pure map producer.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What a keypoint network's forward pass returns.
pub enum Output {
    /// `[batch, 2K]`: x0, y0, x1, y1, ... as fractions of the input's width and height.
    Coordinates(Tensor<2>),
    /// `[batch, K, H, W]`: one map per landmark (probabilities, or raw values for nets trained
    /// with a squared error), the largest value at the landmark.
    Heatmaps(Tensor<4>),
    /// `[batch, K, H, W]`: each map's log-probabilities up to a constant per map (the logits of a
    /// per-map softmax). Decoded without the softmax: the argmax and the parabola through the
    /// log-values do not change when a map is shifted by a constant.
    LogHeatmaps(Tensor<4>),
}

/// How a heatmap becomes a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// The centre of the largest pixel (the study's).
    Argmax,
    /// Argmax refined by a parabola through the log-values around the peak.
    #[default]
    Subpixel,
    /// The mean of the pixel centres within a tenth of the map's side of the peak, weighted by
    /// the map's probabilities there: integral regression restricted to the peak, so a second
    /// mode far away does not pull the point, while a spread along an unsure contour (the jaw)
    /// counts whole, which is what the mean of an error is smallest for.
    LocalMean,
}

/// How far from the peak [`Decoding::LocalMean`] looks, in pixels per axis, on a map whose longer
/// side is `side`: a tenth of it (chosen on the validation split: at 112 and 80 pixels, windows
/// from 2 to 12 pixels lower the error steadily up to about this size, and the whole map is
/// worse), at least 2 pixels.
pub fn local_mean_radius(side: usize) -> i64 {
    ((side as f32 / 10.0).round() as i64).max(2)
}

impl std::str::FromStr for Decoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "argmax" => Ok(Self::Argmax),
            "subpixel" => Ok(Self::Subpixel),
            "local_mean" => Ok(Self::LocalMean),
            _ => Err(format!(
                "unknown decoding {s:?} (argmax, subpixel, local_mean)"
            )),
        }
    }
}

impl Output {
    /// `[batch, K, 2]` points as fractions of the input's width and height.
    pub fn points(self, decoding: Decoding) -> Tensor<3> {
        match self {
            Output::Coordinates(coords) => {
                let [b, two_k] = coords.dims();
                coords.reshape([b, two_k / 2, 2])
            }
            Output::Heatmaps(maps) => decode_maps(maps, decoding),
            Output::LogHeatmaps(logits) => decode_log_maps(logits, decoding),
        }
    }

    /// The maps as figures show them: probabilities per map for log-maps, raw values for other
    /// maps; `None` for coordinates.
    pub fn into_maps(self) -> Option<Tensor<4>> {
        match self {
            Output::Coordinates(_) => None,
            Output::Heatmaps(maps) => Some(maps),
            Output::LogHeatmaps(logits) => Some(map_probabilities(logits)),
        }
    }

    /// The points of every face as host vectors (fractions), one `Vec` per face.
    pub fn into_point_lists(self, decoding: Decoding) -> Vec<Vec<crate::data::Point>> {
        let points = self.points(decoding);
        let [b, k, _] = points.dims();
        let values: Vec<f32> = points
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        if values.len() != b * k * 2 {
            return vec![Vec::new(); b];
        }
        values
            .chunks(2 * k.max(1))
            .map(|face| face.chunks(2).map(|xy| [xy[0], xy[1]]).collect())
            .collect()
    }
}

/// Each map's softmax: `[batch, K, H, W]` logits to probabilities summing to 1 per map.
pub fn map_probabilities(logits: Tensor<4>) -> Tensor<4> {
    let [b, k, h, w] = logits.dims();
    let flat = logits.reshape([b * k, h * w]);
    burn::tensor::activation::softmax(flat, 1).reshape([b, k, h, w])
}

/// Decodes `[batch, K, H, W]` maps to `[batch, K, 2]` points (fractions of the map's width and
/// height): the centre of each map's largest pixel, with [`Decoding::Subpixel`] shifted by a
/// parabola through the log-values of the peak and its two neighbours per axis (exact for a
/// Gaussian; at most half a pixel; none at the map's border or where the log-map is not concave).
pub fn decode_maps(maps: Tensor<4>, decoding: Decoding) -> Tensor<3> {
    let log = match decoding {
        Decoding::Argmax => maps,
        Decoding::Subpixel | Decoding::LocalMean => maps.clamp_min(0.0).add_scalar(1e-12).log(),
    };
    decode_log_maps(log, decoding)
}

/// [`decode_maps`] of maps given as log-values (up to a constant per map).
pub fn decode_log_maps(log_maps: Tensor<4>, decoding: Decoding) -> Tensor<3> {
    let [b, k, h, w] = log_maps.dims();
    let n = b * k;
    let log = log_maps.reshape([n, h * w]);
    let best = log.clone().argmax(1); // [n, 1]
    if decoding == Decoding::LocalMean {
        return local_mean(log, best, [h, w]).reshape([b, k, 2]);
    }
    let bx = best.clone().remainder_scalar(w as i64);
    let by = best.clone().div_scalar(w as i64);
    let mut x = bx.clone().float().add_scalar(0.5);
    let mut y = by.clone().float().add_scalar(0.5);
    if decoding == Decoding::Subpixel {
        let at = |index: Tensor<2, Int>| log.clone().gather(1, index);
        let last = (h * w - 1) as i64;
        let centre = at(best.clone());
        let offset = |step: i64, inside: Tensor<2, Bool>| {
            let before = at(best.clone().sub_scalar(step).clamp(0, last));
            let after = at(best.clone().add_scalar(step).clamp(0, last));
            parabola_offset(before, centre.clone(), after, inside)
        };
        let inside_x = bx
            .clone()
            .greater_elem(0)
            .bool_and(bx.lower_elem(w as i64 - 1));
        let inside_y = by
            .clone()
            .greater_elem(0)
            .bool_and(by.lower_elem(h as i64 - 1));
        x = x + offset(1, inside_x);
        y = y + offset(w as i64, inside_y);
    }
    let x = x.div_scalar(w as f32);
    let y = y.div_scalar(h as f32);
    Tensor::cat(vec![x, y], 1).reshape([b, k, 2])
}

/// `[n, 2]` points (fractions of the map) of [`Decoding::LocalMean`]: the probability-weighted
/// mean of the pixel centres in the window around each row's `best` pixel of `log` (`[n, h * w]`
/// log-values), pixels outside the map left out. Only the windows are read back to the host
/// (the maps stay on their device): done as tensor operations, the index arithmetic cost
/// `face68-fast` 0.15-0.22 ms of its 2.6 ms per face, against 0.05-0.13 ms this way.
fn local_mean(log: Tensor<2>, best: Tensor<2, Int>, [h, w]: [usize; 2]) -> Tensor<2> {
    let device = log.device();
    let best: Vec<i64> = best
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default();
    let n = best.len();
    let (h, w) = (h as i64, w as i64);
    let radius = local_mean_radius(h.max(w) as usize);
    let side = 2 * radius + 1;
    let window = (side * side) as usize;
    // Every window's pixel indices, clamped into the map; the sums below skip the clamped ones.
    let mut index = vec![0i64; n * window];
    for (indices, &peak) in index.chunks_exact_mut(window).zip(&best) {
        let (bx, by) = (peak % w, peak / w);
        for (row, dy) in indices.chunks_exact_mut(side as usize).zip(-radius..) {
            let y = (by + dy).clamp(0, h - 1);
            for (slot, dx) in row.iter_mut().zip(-radius..) {
                *slot = y * w + (bx + dx).clamp(0, w - 1);
            }
        }
    }
    let index = Tensor::<2, Int>::from_data(TensorData::new(index, [n, window]), &device);
    let values: Vec<f32> = log
        .gather(1, index)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let mut points = Vec::with_capacity(2 * n);
    for (row, &peak) in best.iter().enumerate() {
        let (bx, by) = (peak % w, peak / w);
        let (mut total, mut sx, mut sy) = (0.0f32, 0.0f32, 0.0f32);
        if let Some(values) = values.get(row * window..(row + 1) * window) {
            // The centre of the window is the peak: exp(log - peak) ≤ 1, no overflow.
            let top = values[window / 2];
            for (row, dy) in values.chunks_exact(side as usize).zip(-radius..) {
                if !(0..h).contains(&(by + dy)) {
                    continue;
                }
                for (&v, dx) in row.iter().zip(-radius..) {
                    // Pixels e^-17 below the peak weigh nothing in f32 sums: no exp for them.
                    if v - top > -17.0 && (0..w).contains(&(bx + dx)) {
                        let weight = (v - top).exp();
                        total += weight;
                        sx += weight * dx as f32;
                        sy += weight * dy as f32;
                    }
                }
            }
        }
        // Offsets from the peak's centre are summed, not coordinates: small numbers in f32.
        let (x, y) = if total > 0.0 {
            (bx as f32 + 0.5 + sx / total, by as f32 + 0.5 + sy / total)
        } else {
            (bx as f32 + 0.5, by as f32 + 0.5)
        };
        points.push(x / w as f32);
        points.push(y / h as f32);
    }
    Tensor::from_data(TensorData::new(points, [n, 2]), &device)
}

/// The vertex of the parabola through `(−1, before)`, `(0, centre)`, `(1, after)`, clamped to
/// half a pixel; 0 where `valid` is false or the parabola does not open downwards.
fn parabola_offset(
    before: Tensor<2>,
    centre: Tensor<2>,
    after: Tensor<2>,
    valid: Tensor<2, Bool>,
) -> Tensor<2> {
    let curvature = before.clone() - centre.mul_scalar(2.0) + after.clone();
    let use_it = valid.bool_and(curvature.clone().lower_elem(0.0));
    let vertex = ((before - after).mul_scalar(0.5) / curvature).clamp(-0.5, 0.5);
    vertex.zeros_like().mask_where(use_it, vertex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heatmap::{HeatmapTarget, decode_argmax, decode_subpixel};

    fn maps_tensor(maps: &[Vec<f32>], side: usize) -> Tensor<4> {
        let values: Vec<f32> = maps.iter().flatten().copied().collect();
        Tensor::from_data(
            TensorData::new(values, [1, maps.len(), side, side]),
            &Device::flex(),
        )
    }

    #[test]
    fn tensor_decoding_equals_the_reference_on_every_kind_of_peak() {
        let side = 28;
        let mut maps = vec![
            HeatmapTarget::Gaussian { sigma_at_224: 9.0 }.render([10.3, 17.8], side, side),
            HeatmapTarget::Binary { radius: 1.0 }.render([5.5, 20.2], side, side),
            // Peaks on the border: no refinement along that axis.
            HeatmapTarget::Gaussian { sigma_at_224: 9.0 }.render([0.2, 27.9], side, side),
        ];
        // Raw (MSE-style) maps with negative values.
        maps.push(maps[0].iter().map(|v| v * 3.0 - 0.01).collect());
        let decoded = Output::Heatmaps(maps_tensor(&maps, side));
        for decoding in [Decoding::Argmax, Decoding::Subpixel, Decoding::LocalMean] {
            let got = Output::Heatmaps(maps_tensor(&maps, side)).into_point_lists(decoding);
            for (map, point) in maps.iter().zip(&got[0]) {
                let reference = match decoding {
                    Decoding::Argmax => decode_argmax(map, side),
                    Decoding::Subpixel => decode_subpixel(map, side),
                    Decoding::LocalMean => local_mean_reference(map, side),
                };
                let expected = [reference[0] / side as f32, reference[1] / side as f32];
                assert!(
                    (point[0] - expected[0]).abs() < 1e-5 && (point[1] - expected[1]).abs() < 1e-5,
                    "{decoding:?}: {point:?} vs {expected:?}"
                );
            }
        }
        assert_eq!(decoded.points(Decoding::Subpixel).dims(), [1, 4, 2]);
    }

    /// The weighted mean of the pixel centres within the window around the peak, weights = the
    /// map's non-negative values.
    fn local_mean_reference(map: &[f32], side: usize) -> [f32; 2] {
        let best = decode_argmax(map, side);
        let (bx, by) = (best[0] as i64, best[1] as i64);
        let (mut sum, mut sx, mut sy) = (0.0f64, 0.0f64, 0.0f64);
        let r = local_mean_radius(side);
        for y in (by - r).max(0)..=(by + r).min(side as i64 - 1) {
            for x in (bx - r).max(0)..=(bx + r).min(side as i64 - 1) {
                let v = map[y as usize * side + x as usize].max(0.0) as f64 + 1e-12;
                sum += v;
                sx += v * (x as f64 + 0.5);
                sy += v * (y as f64 + 0.5);
            }
        }
        [(sx / sum) as f32, (sy / sum) as f32]
    }

    #[test]
    fn local_mean_finds_a_disc_centre_between_pixels() {
        // A symmetric disc of four pixels around the corner they share: the mean is that corner,
        // where argmax (and a parabola through a flat top) stays on a pixel centre.
        let side = 16;
        let map = HeatmapTarget::Binary { radius: 0.75 }.render([8.0, 6.0], side, side);
        assert_eq!(map.iter().filter(|&&v| v > 0.0).count(), 4);
        let got = Output::Heatmaps(maps_tensor(&[map], side)).into_point_lists(Decoding::LocalMean);
        let expected = [8.0 / side as f32, 6.0 / side as f32];
        assert!((got[0][0][0] - expected[0]).abs() < 1e-5, "{:?}", got[0][0]);
        assert!((got[0][0][1] - expected[1]).abs() < 1e-5, "{:?}", got[0][0]);
    }

    #[test]
    fn local_mean_follows_a_spread_near_the_peak_but_not_a_far_second_mode() {
        // A 64-pixel map (window radius 6): the peak at pixel (20, 30), a shoulder of half its
        // height 3 pixels to its right, and a second mode 18 pixels away to its left.
        let side = 64;
        assert_eq!(local_mean_radius(side), 6);
        let mut map = vec![0.0f32; side * side];
        map[30 * side + 20] = 1.0;
        map[30 * side + 23] = 0.5;
        map[30 * side + 2] = 0.9;
        let got = Output::Heatmaps(maps_tensor(&[map], side)).into_point_lists(Decoding::LocalMean);
        // (20.5 + 0.5 * 23.5) / 1.5 = 21.5 map pixels; y stays on the peak's row.
        assert!(
            (got[0][0][0] * side as f32 - 21.5).abs() < 1e-3,
            "{:?}",
            got[0][0]
        );
        assert!(
            (got[0][0][1] * side as f32 - 30.5).abs() < 1e-3,
            "{:?}",
            got[0][0]
        );
    }

    #[test]
    fn coordinates_pass_through_as_pairs() {
        let coords = Tensor::<2>::from_data(
            TensorData::new(vec![0.1f32, 0.2, 0.3, 0.4], [1, 4]),
            &Device::flex(),
        );
        let points = Output::Coordinates(coords).into_point_lists(Decoding::Subpixel);
        assert_eq!(points, vec![vec![[0.1, 0.2], [0.3, 0.4]]]);
    }
}
