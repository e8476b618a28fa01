//! Heatmap keypoints (Part 4): a [`UNet`] draws one map per landmark, trained against rendered
//! target maps, and each map is decoded back to a point. Its `forward` returns coordinates like
//! every other [`super::KeypointNet`], so evaluation and prediction share one path.

use burn::nn::loss::{MseLoss, Reduction};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::unet::{UNet, UNetConfig};
use crate::data::{Example, Point};
use crate::heatmap::{
    HeatmapTarget, ShapePrior, decode_argmax, decode_subpixel, heatmap_cross_entropy,
};

/// What the maps are trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HeatmapLoss {
    /// The study's: softmax over each map's pixels, cross-entropy against the target normalised to
    /// sum 1 ([`heatmap_cross_entropy`]).
    #[default]
    CrossEntropy,
    /// Mean squared error between the raw maps and the target scaled to peak 1.
    Mse,
}

/// How a map becomes a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// The centre of the largest pixel (the study's).
    Argmax,
    /// Argmax refined by a parabola through the log-values around the peak.
    #[default]
    Subpixel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HeatmapNetConfig {
    pub unet: UNetConfig,
    pub target: HeatmapTarget,
    pub loss: HeatmapLoss,
    pub decoding: Decoding,
    /// Add the training faces' [`ShapePrior`] to the logits (cross-entropy only).
    pub use_shape_prior: bool,
    /// The prior itself, measured on the training crops when training starts.
    pub shape_prior: Option<ShapePrior>,
}

impl HeatmapNetConfig {
    pub fn init(&self, device: &Device) -> HeatmapNet {
        let side = self.unet.input_size;
        let log_prior = match (&self.shape_prior, self.use_shape_prior, self.loss) {
            (Some(prior), true, HeatmapLoss::CrossEntropy) => {
                let values = prior.log_maps(side, side);
                let shape = [1, prior.mean.len(), side, side];
                // Built once, outside autodiff: a constant for every forward and backward pass.
                Some(
                    Tensor::<4>::from_data(TensorData::new(values, shape), device)
                        .without_autodiff(),
                )
            }
            _ => None,
        };
        HeatmapNet {
            unet: self.unet.init(device),
            target: self.target,
            loss: self.loss,
            decoding: self.decoding,
            log_prior,
        }
    }

    /// Whether training must first measure the shape prior.
    pub fn needs_shape_prior(&self) -> bool {
        self.use_shape_prior && self.shape_prior.is_none() && self.loss == HeatmapLoss::CrossEntropy
    }
}

#[derive(Module, Debug)]
pub struct HeatmapNet {
    pub unet: UNet,
    #[module(skip)]
    target: HeatmapTarget,
    #[module(skip)]
    loss: HeatmapLoss,
    #[module(skip)]
    decoding: Decoding,
    /// `[1, K, H, W]` log-prior added to the logits, if the recipe uses one.
    #[module(skip)]
    log_prior: Option<Tensor<4>>,
}

impl HeatmapNet {
    /// `[batch, 1, H, W] -> [batch, K, H, W]`: the maps as the decoder sees them (probabilities
    /// per map for cross-entropy training, raw values for MSE training).
    pub fn heatmaps(&self, images: Tensor<4>) -> Tensor<4> {
        let logits = self.logits(images);
        match self.loss {
            HeatmapLoss::CrossEntropy => {
                let [b, k, h, w] = logits.dims();
                softmax(logits.reshape([b * k, h * w]), 1).reshape([b, k, h, w])
            }
            HeatmapLoss::Mse => logits,
        }
    }

    /// The U-Net's maps plus the shape prior, if any.
    fn logits(&self, images: Tensor<4>) -> Tensor<4> {
        let logits = self.unet.forward(images);
        match &self.log_prior {
            Some(prior) => logits + prior.clone(),
            None => logits,
        }
    }

    /// `[batch, 1, H, W] -> [batch, 2K]`: decoded points as fractions of width and height.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let device = images.device();
        let maps = self.heatmaps(images);
        let [b, k, h, w] = maps.dims();
        let values: Vec<f32> = maps
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("heatmaps are f32");
        let coords: Vec<f32> = values
            .par_chunks(h * w)
            .flat_map_iter(|map| {
                let [x, y] = self.decode(map, w);
                [x / w as f32, y / h as f32]
            })
            .collect();
        Tensor::from_data(TensorData::new(coords, [b, 2 * k]), &device)
    }

    fn decode(&self, map: &[f32], width: usize) -> Point {
        match self.decoding {
            Decoding::Argmax => decode_argmax(map, width),
            Decoding::Subpixel => decode_subpixel(map, width),
        }
    }

    /// The training loss of `images` against the landmarks of `examples` (the same faces).
    pub fn loss(&self, images: Tensor<4>, examples: &[Example]) -> Tensor<1> {
        let device = images.device();
        let logits = self.logits(images);
        let [b, k, h, w] = logits.dims();
        let peak_one = self.loss == HeatmapLoss::Mse;
        let targets: Vec<f32> = examples
            .par_iter()
            .flat_map_iter(|e| e.points.iter().map(|p| [p[0] * w as f32, p[1] * h as f32]))
            .flat_map_iter(|point| {
                let mut map = self.target.render(point, w, h);
                if peak_one {
                    let max = map.iter().copied().fold(0.0f32, f32::max);
                    if max > 0.0 {
                        map.iter_mut().for_each(|v| *v /= max);
                    }
                }
                map
            })
            .collect();
        let targets = Tensor::from_data(TensorData::new(targets, [b, k, h, w]), &device);
        match self.loss {
            HeatmapLoss::CrossEntropy => heatmap_cross_entropy(logits, targets),
            HeatmapLoss::Mse => MseLoss::new().forward(logits, targets, Reduction::Mean),
        }
    }

    /// Switches the decoding (for comparing argmax with sub-pixel refinement on one model).
    pub fn set_decoding(&mut self, decoding: Decoding) {
        self.decoding = decoding;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> HeatmapNetConfig {
        HeatmapNetConfig {
            unet: UNetConfig {
                points: 3,
                base_width: 4,
                depth: 2,
                input_size: 32,
            },
            ..Default::default()
        }
    }

    #[test]
    fn forward_gives_fractions_inside_the_image() {
        let device = Device::flex();
        let net = tiny().init(&device);
        let out = net.forward(Tensor::random(
            [2, 1, 32, 32],
            burn::tensor::Distribution::Uniform(-0.5, 0.5),
            &device,
        ));
        assert_eq!(out.dims(), [2, 6]);
        let values: Vec<f32> = out.into_data().try_to_vec().unwrap();
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)), "{values:?}");
    }

    #[test]
    fn loss_is_finite_and_positive_for_both_kinds() {
        let device = Device::flex();
        let example = Example {
            width: 32,
            height: 32,
            pixels: vec![0.0; 32 * 32],
            points: vec![[0.2, 0.3], [0.5, 0.5], [0.8, 0.6]],
        };
        for loss in [HeatmapLoss::CrossEntropy, HeatmapLoss::Mse] {
            let net = HeatmapNetConfig { loss, ..tiny() }.init(&device);
            let value: f32 = net
                .loss(
                    Tensor::zeros([1, 1, 32, 32], &device),
                    std::slice::from_ref(&example),
                )
                .into_scalar();
            assert!(value.is_finite() && value > 0.0, "{loss:?}: {value}");
        }
    }
}
