//! The batcher: stacks model-ready examples into tensors, and nothing else.

use burn::prelude::*;

use crate::data::Example;

/// Stacks examples' pixels into `[batch, 1, H, W]`.
pub fn images_tensor(examples: &[Example], device: &Device) -> Tensor<4> {
    let (w, h) = examples.first().map_or((0, 0), |e| (e.width, e.height));
    let mut pixels = Vec::with_capacity(examples.len() * w * h);
    for e in examples {
        pixels.extend_from_slice(&e.pixels);
    }
    Tensor::from_data(TensorData::new(pixels, [examples.len(), 1, h, w]), device)
}

/// Stacks examples' points into `[batch, 2K]` (x0, y0, x1, y1, ...).
pub fn targets_tensor(examples: &[Example], device: &Device) -> Tensor<2> {
    let k = examples.first().map_or(0, |e| e.points.len());
    let coords: Vec<f32> = examples
        .iter()
        .flat_map(|e| e.points.iter().flatten().copied())
        .collect();
    Tensor::from_data(TensorData::new(coords, [examples.len(), 2 * k]), device)
}
