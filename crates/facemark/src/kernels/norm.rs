//! Batch normalisation in training, on f32 NCHW buffers: per-channel statistics in one pass,
//! the normalisation in another, and the backward pass in two (sums per channel, then the input
//! gradient). burn's generic version reaches the same numbers through a dozen tensor operations,
//! several of them layout copies.

use rayon::prelude::*;

/// Shapes of one batch-norm call: `[batch, channels, plane]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormGeometry {
    pub batch: usize,
    pub channels: usize,
    /// Values per channel and image (height times width).
    pub plane: usize,
}

impl NormGeometry {
    /// Values per channel over the batch.
    fn count(&self) -> f64 {
        (self.batch * self.plane) as f64
    }

    /// The planes of channel `c`, image by image.
    fn planes<'a>(&self, values: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        (0..self.batch).map(move |b| &values[(b * self.channels + c) * self.plane..][..self.plane])
    }
}

/// Per channel, the mean and the biased variance: `[mean_0.., var_0..]` (`2 * channels`).
pub fn statistics(g: &NormGeometry, x: &[f32]) -> Vec<f32> {
    let per_channel: Vec<(f32, f32)> = (0..g.channels)
        .into_par_iter()
        .map(|c| {
            // f64 sums: a channel holds up to hundreds of thousands of values.
            let (sum, squares) = g.planes(x, c).fold((0.0f64, 0.0f64), |(s, q), plane| {
                let (ps, pq) = plane
                    .iter()
                    .fold((0.0f32, 0.0f32), |(s, q), &v| (s + v, q + v * v));
                (s + ps as f64, q + pq as f64)
            });
            let mean = sum / g.count();
            (
                (mean) as f32,
                (squares / g.count() - mean * mean).max(0.0) as f32,
            )
        })
        .collect();
    per_channel
        .iter()
        .map(|s| s.0)
        .chain(per_channel.iter().map(|s| s.1))
        .collect()
}

/// Per channel, the scale `γ/√(σ²+ε)` that the normalisation multiplies by.
fn scales(g: &NormGeometry, gamma: &[f32], stats: &[f32], epsilon: f64) -> Vec<f32> {
    (0..g.channels)
        .map(|c| (gamma[c] as f64 / (stats[g.channels + c] as f64 + epsilon).sqrt()) as f32)
        .collect()
}

/// `(x − μ)·γ/√(σ²+ε) + β` with the given statistics.
pub fn normalize(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    epsilon: f64,
) -> Vec<f32> {
    let scale = scales(g, gamma, stats, epsilon);
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(g.plane.max(1))
        .zip(x.par_chunks(g.plane.max(1)))
        .enumerate()
        .for_each(|(i, (out, input))| {
            let c = i % g.channels;
            let (a, shift) = (scale[c], beta[c] - stats[c] * scale[c]);
            for (o, &v) in out.iter_mut().zip(input) {
                *o = v * a + shift;
            }
        });
    y
}

/// Gradients of [`normalize`] with the batch's own statistics (which depend on `x` too): the
/// input's, γ's and β's.
pub fn backward(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    epsilon: f64,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let inv_std: Vec<f32> = (0..g.channels)
        .map(|c| (1.0 / (stats[g.channels + c] as f64 + epsilon).sqrt()) as f32)
        .collect();
    // Σ dy and Σ dy·x̂ per channel.
    let sums: Vec<(f32, f32)> = (0..g.channels)
        .into_par_iter()
        .map(|c| {
            let (mean, inv) = (stats[c], inv_std[c]);
            let (sum, projected) = g.planes(dy, c).zip(g.planes(x, c)).fold(
                (0.0f64, 0.0f64),
                |(s, p), (grad, input)| {
                    let (gs, gp) = grad
                        .iter()
                        .zip(input)
                        .fold((0.0f32, 0.0f32), |(s, p), (&d, &v)| {
                            (s + d, p + d * (v - mean) * inv)
                        });
                    (s + gs as f64, p + gp as f64)
                },
            );
            (sum as f32, projected as f32)
        })
        .collect();
    let n = g.count() as f32;
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(g.plane.max(1))
        .zip(
            x.par_chunks(g.plane.max(1))
                .zip(dy.par_chunks(g.plane.max(1))),
        )
        .enumerate()
        .for_each(|(i, (out, (input, grad)))| {
            let c = i % g.channels;
            let (mean, inv) = (stats[c], inv_std[c]);
            let (mean_dy, mean_projected) = (sums[c].0 / n, sums[c].1 / n);
            let a = gamma[c] * inv;
            for ((o, &v), &d) in out.iter_mut().zip(input).zip(grad) {
                *o = a * (d - mean_dy - (v - mean) * inv * mean_projected);
            }
        });
    let dgamma = sums.iter().map(|s| s.1).collect();
    let dbeta = sums.iter().map(|s| s.0).collect();
    (dx, dgamma, dbeta)
}
