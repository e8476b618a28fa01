//! Heatmap targets and decoding (Part 4): one map per landmark at the model's output resolution,
//! and the way back from a map to a point, with sub-pixel refinement so the pixel grid does not cap
//! accuracy. Points are in the map's continuous pixel coordinates (pixel `i` covers `[i, i + 1)`).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use crate::data::Point;

/// The study's loss: for every map, a softmax over its pixels compared with the target map
/// (normalised to sum 1) by cross-entropy, `-sum(target * log_softmax(logits))`, averaged over
/// maps and batch. `logits` and `targets` are `[batch, K, H, W]`.
pub fn heatmap_cross_entropy(logits: Tensor<4>, targets: Tensor<4>) -> Tensor<1> {
    let [b, k, h, w] = logits.dims();
    let log_p = log_softmax(logits.reshape([b * k, h * w]), 1);
    let per_map = (targets.reshape([b * k, h * w]) * log_p).sum_dim(1).neg();
    per_map.mean()
}

/// The shape of a training target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeatmapTarget {
    /// A 2-D Gaussian of this standard deviation (pixels at a 224-pixel map; scaled with size).
    Gaussian { sigma_at_224: f32 },
    /// 1 on the pixels whose centres lie within `radius` pixels of the point (at least the pixel
    /// holding the point), 0 elsewhere.
    Binary { radius: f32 },
}

impl Default for HeatmapTarget {
    /// The study's Gaussian, sigma 5 at 224x224.
    fn default() -> Self {
        HeatmapTarget::Gaussian { sigma_at_224: 5.0 }
    }
}

/// Heatmap target shapes as a user names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A 2-D Gaussian (sigma 5 at 224 by default).
    Gaussian,
    /// 1 on the keypoint's pixel (and a small disc), 0 elsewhere.
    Binary,
}

impl TargetKind {
    /// The target with an optional size (`sigma` for Gaussians, `radius` for discs).
    pub fn target(self, sigma: Option<f32>, radius: Option<f32>) -> HeatmapTarget {
        match self {
            TargetKind::Gaussian => HeatmapTarget::Gaussian {
                sigma_at_224: sigma.unwrap_or(5.0),
            },
            TargetKind::Binary => HeatmapTarget::Binary {
                radius: radius.unwrap_or(1.0),
            },
        }
    }
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gaussian" => Ok(Self::Gaussian),
            "binary" => Ok(Self::Binary),
            _ => Err(format!("unknown heatmap target {s:?} (gaussian, binary)")),
        }
    }
}

impl HeatmapTarget {
    /// The map for `point` on a `width` x `height` grid, normalised to sum 1 (the target
    /// distribution that the softmax cross-entropy compares against).
    pub fn render(&self, point: Point, width: usize, height: usize) -> Vec<f32> {
        let mut map = vec![0.0f32; width * height];
        match *self {
            HeatmapTarget::Gaussian { sigma_at_224 } => {
                let sigma = sigma_at_224 * width.max(height) as f32 / 224.0;
                let two_var = 2.0 * sigma * sigma;
                // Separable: exp(-(dx² + dy²)/2σ²) = exp(-dx²/2σ²) · exp(-dy²/2σ²), so one
                // exponential per row and column instead of one per pixel.
                let profile = |len: usize, centre: f32| -> Vec<f32> {
                    (0..len)
                        .map(|i| (-(i as f32 + 0.5 - centre).powi(2) / two_var).exp())
                        .collect()
                };
                let (across, down) = (profile(width, point[0]), profile(height, point[1]));
                for (row, &gy) in map.chunks_mut(width.max(1)).zip(&down) {
                    for (v, &gx) in row.iter_mut().zip(&across) {
                        *v = gx * gy;
                    }
                }
            }
            HeatmapTarget::Binary { radius } => {
                let radius_squared = radius * radius;
                for (i, v) in map.iter_mut().enumerate() {
                    let (x, y) = ((i % width) as f32 + 0.5, (i / width) as f32 + 0.5);
                    if (x - point[0]).powi(2) + (y - point[1]).powi(2) <= radius_squared {
                        *v = 1.0;
                    }
                }
                let (px, py) = (point[0].floor(), point[1].floor());
                if px >= 0.0 && py >= 0.0 && (px as usize) < width && (py as usize) < height {
                    map[py as usize * width + px as usize] = 1.0;
                }
            }
        }
        let sum: f32 = map.iter().sum();
        if sum > 0.0 {
            map.iter_mut().for_each(|v| *v /= sum);
        }
        map
    }
}

/// Where each landmark lies across the training faces, as an axis-aligned Gaussian per point
/// (fractions of the crop). Added to the logits as a log-prior, it lets an untrained network
/// start from the mean shape instead of from anywhere in the crop, and the maps learn the
/// evidence on top of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapePrior {
    pub mean: Vec<Point>,
    /// Standard deviation per point and axis.
    pub spread: Vec<Point>,
}

impl ShapePrior {
    /// Mean and spread of the points of `shapes` (fractions of the crop), each spread at least
    /// `min_spread`.
    pub fn from_shapes(shapes: &[Vec<Point>], min_spread: f32) -> Self {
        let k = shapes.first().map_or(0, Vec::len);
        let n = shapes.len().max(1) as f32;
        let mut sum = vec![[0.0f32; 2]; k];
        let mut sum_sq = vec![[0.0f32; 2]; k];
        for shape in shapes {
            for (i, p) in shape.iter().enumerate().take(k) {
                for axis in 0..2 {
                    sum[i][axis] += p[axis];
                    sum_sq[i][axis] += p[axis] * p[axis];
                }
            }
        }
        let mean: Vec<Point> = sum.iter().map(|s| [s[0] / n, s[1] / n]).collect();
        let spread = sum_sq
            .iter()
            .zip(&mean)
            .map(|(sq, m)| {
                let sd = |axis: usize| {
                    (sq[axis] / n - m[axis] * m[axis])
                        .max(0.0)
                        .sqrt()
                        .max(min_spread)
                };
                [sd(0), sd(1)]
            })
            .collect();
        Self { mean, spread }
    }

    /// The log-prior maps `[K, height, width]`, row-major, up to a constant per map.
    pub fn log_maps(&self, width: usize, height: usize) -> Vec<f32> {
        let mut maps = Vec::with_capacity(self.mean.len() * width * height);
        for (m, s) in self.mean.iter().zip(&self.spread) {
            for y in 0..height {
                let dy = ((y as f32 + 0.5) / height as f32 - m[1]) / s[1];
                for x in 0..width {
                    let dx = ((x as f32 + 0.5) / width as f32 - m[0]) / s[0];
                    maps.push(-0.5 * (dx * dx + dy * dy));
                }
            }
        }
        maps
    }
}

/// The centre of the map's largest pixel (the study's decoding).
pub fn decode_argmax(map: &[f32], width: usize) -> Point {
    let best = argmax(map);
    [(best % width) as f32 + 0.5, (best / width) as f32 + 0.5]
}

/// Argmax refined to sub-pixel precision: a parabola through the log-values of the peak and its
/// two neighbours, per axis. A Gaussian's logarithm is exactly a parabola, so a Gaussian peak is
/// recovered exactly; the shift is capped at half a pixel.
pub fn decode_subpixel(map: &[f32], width: usize) -> Point {
    let height = map.len() / width.max(1);
    let best = argmax(map);
    let (bx, by) = (best % width, best / width);
    let log = |x: usize, y: usize| (map[y * width + x].max(0.0) + 1e-12).ln();
    let refine = |left: Option<f32>, centre: f32, right: Option<f32>| match (left, right) {
        (Some(l), Some(r)) => {
            let curvature = l - 2.0 * centre + r;
            if curvature < 0.0 {
                (0.5 * (l - r) / curvature).clamp(-0.5, 0.5)
            } else {
                0.0
            }
        }
        _ => 0.0,
    };
    let centre = log(bx, by);
    let dx = refine(
        bx.checked_sub(1).map(|x| log(x, by)),
        centre,
        (bx + 1 < width).then(|| log(bx + 1, by)),
    );
    let dy = refine(
        by.checked_sub(1).map(|y| log(bx, y)),
        centre,
        (by + 1 < height).then(|| log(bx, by + 1)),
    );
    [bx as f32 + 0.5 + dx, by as f32 + 0.5 + dy]
}

fn argmax(map: &[f32]) -> usize {
    map.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_peaks_at_the_point_and_sums_to_one() {
        let target = HeatmapTarget::default();
        let map = target.render([30.5, 20.5], 56, 56);
        assert!((map.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(decode_argmax(&map, 56), [30.5, 20.5]);
        // Symmetric about the point.
        assert!((map[20 * 56 + 29] - map[20 * 56 + 31]).abs() < 1e-9);
    }

    #[test]
    fn binary_mask_marks_the_pixel_holding_the_point() {
        let map = HeatmapTarget::Binary { radius: 0.0 }.render([10.3, 7.9], 32, 32);
        let marked: Vec<usize> = (0..map.len()).filter(|&i| map[i] > 0.0).collect();
        assert_eq!(marked, vec![7 * 32 + 10]);
        assert_eq!(map[7 * 32 + 10], 1.0);
        let disc = HeatmapTarget::Binary { radius: 1.5 }.render([10.5, 7.5], 32, 32);
        assert_eq!(disc.iter().filter(|&&v| v > 0.0).count(), 9);
    }

    #[test]
    fn cross_entropy_is_lowest_when_the_softmax_matches_the_target() {
        let device = Device::flex();
        let target = HeatmapTarget::default().render([10.5, 6.5], 16, 16);
        let entropy: f32 = target
            .iter()
            .filter(|&&t| t > 0.0)
            .map(|&t| -t * t.ln())
            .sum();
        let targets =
            Tensor::<4>::from_data(TensorData::new(target.clone(), [1, 1, 16, 16]), &device);
        let matching: Vec<f32> = target.iter().map(|&t| (t + 1e-20).ln()).collect();
        let loss = |logits: Vec<f32>| -> f32 {
            let logits = Tensor::<4>::from_data(TensorData::new(logits, [1, 1, 16, 16]), &device);
            heatmap_cross_entropy(logits, targets.clone()).into_scalar()
        };
        let best = loss(matching);
        assert!((best - entropy).abs() < 1e-3, "{best} vs entropy {entropy}");
        assert!(loss(vec![0.0; 256]) > best + 1.0, "a flat map costs more");
    }

    #[test]
    fn shape_prior_peaks_at_the_mean_point() {
        let shapes = vec![vec![[0.2, 0.4]], vec![[0.4, 0.6]]];
        let prior = ShapePrior::from_shapes(&shapes, 0.01);
        assert!((prior.mean[0][0] - 0.3).abs() < 1e-6 && (prior.mean[0][1] - 0.5).abs() < 1e-6);
        assert!((prior.spread[0][0] - 0.1).abs() < 1e-5);
        let maps = prior.log_maps(10, 10);
        // The mean (0.3, 0.5) lies on the border of pixels 2|3 and 4|5: the peak is among them.
        assert_eq!(decode_argmax(&maps, 10)[0].floor() as usize / 2, 1);
        assert!(maps.iter().all(|v| *v <= 0.0));
        let narrow = ShapePrior::from_shapes(&[vec![[0.5, 0.5]]], 0.05);
        assert_eq!(narrow.spread[0], [0.05, 0.05]);
    }

    #[test]
    fn subpixel_decoding_recovers_an_off_grid_peak() {
        let target = HeatmapTarget::Gaussian { sigma_at_224: 5.0 };
        for point in [[30.37f32, 20.81], [12.9, 40.12], [44.5, 8.66]] {
            let map = target.render(point, 56, 56);
            let refined = decode_subpixel(&map, 56);
            let err = (refined[0] - point[0]).hypot(refined[1] - point[1]);
            assert!(err < 0.1, "{point:?} decoded as {refined:?} ({err} px)");
            let nearest = decode_argmax(&map, 56);
            assert_eq!(nearest, [point[0].floor() + 0.5, point[1].floor() + 0.5]);
        }
    }
}
