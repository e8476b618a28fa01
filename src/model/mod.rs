//! Keypoint networks. Every model maps a batch of grayscale images `[batch, 1, H, W]` to landmark
//! coordinates `[batch, 2K]` (x0, y0, x1, y1, ...) as fractions of width and height: regression
//! networks directly, the heatmap network by decoding its maps.

pub mod heatmap_net;
pub mod imm_net;
pub mod nose_net;
pub mod resnet;
pub mod unet;

use burn::nn::loss::{MseLoss, Reduction};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Example;

pub use heatmap_net::{Decoding, HeatmapLoss, HeatmapNet, HeatmapNetConfig};
pub use imm_net::{ImmNet, ImmNetConfig, Pooling};
pub use nose_net::{NoseNet, NoseNetConfig};
pub use resnet::{ResNet, ResNetConfig};
pub use unet::{UNet, UNetConfig};

/// Which network to build, with its settings. Stored in every run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    NoseNet(NoseNetConfig),
    ImmNet(ImmNetConfig),
    ResNet(ResNetConfig),
    Heatmap(HeatmapNetConfig),
}

impl ModelConfig {
    pub fn init(&self, device: &Device) -> KeypointNet {
        match self {
            ModelConfig::NoseNet(c) => KeypointNet::Nose(c.init(device)),
            ModelConfig::ImmNet(c) => KeypointNet::Imm(c.init(device)),
            ModelConfig::ResNet(c) => KeypointNet::ResNet(c.init(device)),
            ModelConfig::Heatmap(c) => KeypointNet::Heatmap(c.init(device)),
        }
    }

    /// What the network is trained with, for axis labels.
    pub fn loss_name(&self) -> &'static str {
        match self {
            ModelConfig::Heatmap(c) => match c.loss {
                HeatmapLoss::CrossEntropy => "heatmap cross-entropy",
                HeatmapLoss::Mse => "heatmap MSE",
            },
            _ => "MSE",
        }
    }

    /// Input size `(width, height)` the network expects.
    pub fn input_size(&self) -> (usize, usize) {
        match self {
            ModelConfig::NoseNet(c) => (c.input_width, c.input_height),
            ModelConfig::ImmNet(c) => (c.input_width, c.input_height),
            ModelConfig::ResNet(c) => (c.input_size, c.input_size),
            ModelConfig::Heatmap(c) => (c.unet.input_size, c.unet.input_size),
        }
    }
}

/// Any of facemark's coordinate-regression networks.
// Moved once per optimizer step; boxing would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum KeypointNet {
    Nose(NoseNet),
    Imm(ImmNet),
    ResNet(ResNet),
    Heatmap(HeatmapNet),
}

impl KeypointNet {
    /// `[batch, 1, H, W] -> [batch, 2K]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            KeypointNet::Nose(m) => m.forward(images),
            KeypointNet::Imm(m) => m.forward(images),
            KeypointNet::ResNet(m) => m.forward(images),
            KeypointNet::Heatmap(m) => m.forward(images),
        }
    }

    /// The training loss on `images` made from `examples`: MSE of the coordinates for regression
    /// networks, the heatmap loss for the heatmap network.
    pub fn loss(&self, images: Tensor<4>, examples: &[Example]) -> Tensor<1> {
        match self {
            KeypointNet::Heatmap(m) => m.loss(images, examples),
            _ => {
                let targets = crate::eval::targets_tensor(examples, &images.device());
                MseLoss::new().forward(self.forward(images), targets, Reduction::Mean)
            }
        }
    }

    /// Switches a heatmap network's decoding; `false` (and no change) for regression networks.
    pub fn set_decoding(&mut self, decoding: Decoding) -> bool {
        match self {
            KeypointNet::Heatmap(m) => {
                m.set_decoding(decoding);
                true
            }
            _ => false,
        }
    }

    /// Weights of the first convolution, `[out_channels, 1, k, k]`, for filter images.
    pub fn first_filters(&self) -> Tensor<4> {
        match self {
            KeypointNet::Nose(m) => m.conv1.weight.val(),
            KeypointNet::Imm(m) => m.convs[0].weight.val(),
            KeypointNet::ResNet(m) => m.stem_conv.weight.val(),
            KeypointNet::Heatmap(m) => m.unet.first_filters(),
        }
    }
}

/// Shifts and scales each image of `[batch, C, H, W]` to zero mean and unit variance.
pub(crate) fn standardize(images: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = images.dims();
    let flat = images.reshape([b, c * h * w]);
    let mean = flat.clone().mean_dim(1);
    let centred = flat - mean;
    let std = centred
        .clone()
        .powi_scalar(2)
        .mean_dim(1)
        .sqrt()
        .add_scalar(1e-5);
    (centred / std).reshape([b, c, h, w])
}

/// Output length of a convolution or pooling along one axis.
pub(crate) fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_arithmetic() {
        assert_eq!(conv_out(60, 3, 2, 1), 30);
        assert_eq!(conv_out(80, 3, 2, 1), 40);
        assert_eq!(conv_out(15, 2, 2, 0), 7);
    }
}
