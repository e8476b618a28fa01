//! U-Net for heatmap keypoints (Part 4): an encoder-decoder with skip connections, a 1-channel
//! input and one output map per landmark at the input's resolution.
//!
//! Each level is two 3x3 convolutions (batch norm, ReLU); the encoder halves the size with 2x2 max
//! pooling, the decoder doubles it with a 2x2 transposed convolution and concatenates the encoder
//! features of the same level (Ronneberger et al., 2015, with "same" padding).

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::kernels::{conv_norm, fold_norm, forward_conv, max_pool, up_then_skip};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// Output maps, one per landmark.
    pub points: usize,
    /// Channels of the first level; each deeper level doubles them.
    pub base_width: usize,
    /// Number of poolings (levels below the first); the input side must divide by `2^depth`.
    pub depth: usize,
    /// Square input side in pixels.
    pub input_size: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            points: 68,
            base_width: 16,
            depth: 4,
            input_size: 224,
        }
    }
}

/// Two 3x3 convolutions with batch norm and ReLU.
#[derive(Module, Debug)]
pub struct DoubleConv {
    conv1: Conv2d,
    norm1: BatchNorm,
    conv2: Conv2d,
    norm2: BatchNorm,
    activation: Relu,
}

impl DoubleConv {
    fn new(cin: usize, cout: usize, device: &Device) -> Self {
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device)
        };
        Self {
            conv1: conv(cin, cout),
            norm1: BatchNormConfig::new(cout).init(device),
            conv2: conv(cout, cout),
            norm2: BatchNormConfig::new(cout).init(device),
            activation: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv_norm(&self.conv1, &self.norm1, true, x);
        conv_norm(&self.conv2, &self.norm2, true, x)
    }

    fn fold_batch_norm(self) -> Self {
        let (conv1, norm1) = fold_norm(self.conv1, self.norm1);
        let (conv2, norm2) = fold_norm(self.conv2, self.norm2);
        Self {
            conv1,
            norm1,
            conv2,
            norm2,
            ..self
        }
    }
}

#[derive(Module, Debug)]
pub struct UNet {
    /// Encoder levels, top (full resolution) first; the last is the bottleneck.
    encoders: Vec<DoubleConv>,
    pool: MaxPool2d,
    /// Decoder levels, deepest first, each with its upsampling.
    ups: Vec<ConvTranspose2d>,
    decoders: Vec<DoubleConv>,
    head: Conv2d,
}

impl UNetConfig {
    pub fn init(&self, device: &Device) -> UNet {
        let width = |level: usize| self.base_width << level;
        let encoders = (0..=self.depth)
            .map(|level| {
                DoubleConv::new(
                    if level == 0 { 1 } else { width(level - 1) },
                    width(level),
                    device,
                )
            })
            .collect();
        let (ups, decoders) = (0..self.depth)
            .rev()
            .map(|level| {
                let up = ConvTranspose2dConfig::new([width(level + 1), width(level)], [2, 2])
                    .with_stride([2, 2])
                    .init(device);
                (up, DoubleConv::new(2 * width(level), width(level), device))
            })
            .unzip();
        UNet {
            encoders,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            ups,
            decoders,
            head: Conv2dConfig::new([self.base_width, self.points], [1, 1]).init(device),
        }
    }
}

impl UNet {
    /// Weights of the first convolution, `[out_channels, 1, 3, 3]`.
    pub fn first_filters(&self) -> Tensor<4> {
        self.encoders[0].conv1.weight.val()
    }

    /// `[batch, 1, H, W] -> [batch, K, H, W]`: one logit map per landmark (H and W divisible by
    /// `2^depth`).
    /// The same net with each batch norm folded into its convolution, for inference only
    /// ([`fold_norm`]).
    pub fn fold_batch_norm(self) -> Self {
        Self {
            encoders: self
                .encoders
                .into_iter()
                .map(DoubleConv::fold_batch_norm)
                .collect(),
            decoders: self
                .decoders
                .into_iter()
                .map(DoubleConv::fold_batch_norm)
                .collect(),
            ..self
        }
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        forward_conv(&self.head, self.features(images))
    }

    /// Everything but the 1x1 head: `[batch, base width, H, W]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<4> {
        let mut skips = Vec::with_capacity(self.encoders.len());
        let mut x = images;
        for (level, encoder) in self.encoders.iter().enumerate() {
            if level > 0 {
                x = max_pool(&self.pool, x);
            }
            x = encoder.forward(x);
            skips.push(x.clone());
        }
        skips.pop(); // the bottleneck is `x` itself
        for (up, decoder) in self.ups.iter().zip(&self.decoders) {
            let skip = skips.pop().expect("one skip per decoder level");
            x = decoder.forward(up_then_skip(up, x, skip));
        }
        x
    }

    /// The 1x1 convolution from the features to one map per point.
    pub fn head(&self) -> &Conv2d {
        &self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_map_per_point_at_input_resolution() {
        let device = Device::flex();
        let config = UNetConfig {
            base_width: 8,
            depth: 3,
            input_size: 64,
            ..Default::default()
        };
        let net = config.init(&device);
        let out = net.forward(Tensor::zeros([2, 1, 64, 64], &device));
        assert_eq!(out.dims(), [2, 68, 64, 64]);
    }
}
