//! NoseNet: the study's small CNN for one point on 80x60 images.
//!
//! Conv(1→C, 3, stride 2) + ReLU, Conv(C→C, 3, stride 2) + ReLU, MaxPool 2, Conv(C→2C, 3) + ReLU,
//! Conv(2C→2C, 3) + ReLU, MaxPool 2, Linear(flat, 40) + ReLU, Dropout, Linear(40, 2K).
//! Convolutions pad by 1 so the 80x60 input keeps a useful 5x3 map at the end; `flat` is computed
//! from the input size.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::kernels::forward_conv;
use serde::{Deserialize, Serialize};

use super::conv_out;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoseNetConfig {
    /// Channels of the first two convolutions (the last two have twice as many).
    pub width: usize,
    /// Units of the hidden linear layer.
    pub hidden: usize,
    /// Dropout probability after the hidden layer.
    pub dropout: f64,
    /// Number of landmarks predicted.
    pub points: usize,
    pub input_width: usize,
    pub input_height: usize,
    /// Scale each image to zero mean and unit variance first, so lighting matters less.
    pub standardize_input: bool,
}

impl Default for NoseNetConfig {
    fn default() -> Self {
        Self {
            width: 20,
            hidden: 40,
            dropout: 0.5,
            points: 1,
            input_width: 80,
            input_height: 60,
            standardize_input: false,
        }
    }
}

#[derive(Module, Debug)]
pub struct NoseNet {
    pub conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    conv4: Conv2d,
    pool: MaxPool2d,
    hidden: Linear,
    dropout: Dropout,
    output: Linear,
    activation: Relu,
    standardize_input: bool,
}

impl NoseNetConfig {
    /// Feature-map size `(width, height)` before flattening.
    fn final_map(&self) -> (usize, usize) {
        let side = |n: usize| {
            let n = conv_out(conv_out(n, 3, 2, 1), 3, 2, 1) / 2;
            conv_out(conv_out(n, 3, 1, 1), 3, 1, 1) / 2
        };
        (side(self.input_width), side(self.input_height))
    }

    pub fn init(&self, device: &Device) -> NoseNet {
        let c = self.width;
        let conv = |cin: usize, cout: usize, stride: usize| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let (fw, fh) = self.final_map();
        NoseNet {
            conv1: conv(1, c, 2),
            conv2: conv(c, c, 2),
            conv3: conv(c, 2 * c, 1),
            conv4: conv(2 * c, 2 * c, 1),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            hidden: LinearConfig::new(2 * c * fw * fh, self.hidden).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            output: LinearConfig::new(self.hidden, 2 * self.points).init(device),
            activation: Relu::new(),
            standardize_input: self.standardize_input,
        }
    }
}

impl NoseNet {
    /// `[batch, 1, H, W] -> [batch, 2K]`, coordinates as fractions of width and height.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let act = &self.activation;
        let images = if self.standardize_input {
            super::standardize(images)
        } else {
            images
        };
        let x = act.forward(forward_conv(&self.conv1, images));
        let x = self.pool.forward(act.forward(forward_conv(&self.conv2, x)));
        let x = act.forward(forward_conv(&self.conv3, x));
        let x = self.pool.forward(act.forward(forward_conv(&self.conv4, x)));
        let x = x.flatten::<2>(1, 3);
        let x = self.dropout.forward(act.forward(self.hidden.forward(x)));
        self.output.forward(x)
    }
}

impl super::Family for NoseNetConfig {
    fn name(&self) -> &'static str {
        "NoseNet"
    }
    fn options(&self) -> &'static [&'static str] {
        &["width", "dropout"]
    }
    fn apply(&mut self, o: &super::ModelOverrides) {
        self.width = o.width.unwrap_or(self.width);
        self.dropout = o.dropout.unwrap_or(self.dropout);
    }
    fn input_size(&self) -> (usize, usize) {
        (self.input_width, self.input_height)
    }
    fn set_points(&mut self, points: usize) {
        self.points = points;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_shape_for_default_and_narrow_nets() {
        let device = Device::flex();
        for width in [20, 12] {
            let config = NoseNetConfig {
                width,
                ..Default::default()
            };
            assert_eq!(config.final_map(), (5, 3));
            let net = config.init(&device);
            let out = net.forward(Tensor::zeros([3, 1, 60, 80], &device));
            assert_eq!(out.dims(), [3, 2]);
        }
    }
}
