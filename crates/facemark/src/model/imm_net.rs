//! ImmNet: a deeper CNN for a whole face of landmarks (Part 2, 160x120 input).
//!
//! A stack of convolution stages (kernel size per stage, "same" padding, ReLU), each followed by a
//! 2x2 pooling of the configured kind, then Linear(flat, hidden) + ReLU, Dropout, Linear(hidden, 2K).
//! The study found average pooling better than max pooling for this task.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;

use crate::kernels::forward_conv;
use serde::{Deserialize, Serialize};

/// Pooling between convolution stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Avg,
    Max,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "avg" => Ok(Self::Avg),
            "max" => Ok(Self::Max),
            _ => Err(format!("unknown pooling {s:?} (avg, max)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImmNetConfig {
    /// Output channels of each convolution stage.
    pub channels: Vec<usize>,
    /// Kernel size of each convolution stage (odd, 3 to 7).
    pub kernels: Vec<usize>,
    pub pooling: Pooling,
    pub hidden: usize,
    pub dropout: f64,
    pub points: usize,
    pub input_width: usize,
    pub input_height: usize,
    /// Scale each image to zero mean and unit variance first, so lighting matters less.
    pub standardize_input: bool,
    /// Batch normalisation after each convolution.
    pub batch_norm: bool,
}

impl Default for ImmNetConfig {
    fn default() -> Self {
        Self {
            channels: vec![16, 32, 48, 64, 96, 128],
            kernels: vec![7, 5, 5, 3, 3, 3],
            pooling: Pooling::Avg,
            hidden: 256,
            dropout: 0.3,
            points: 58,
            input_width: 160,
            input_height: 120,
            standardize_input: false,
            batch_norm: false,
        }
    }
}

/// The pooling layer, either kind.
#[derive(Module, Debug)]
pub enum Pool {
    Avg(AvgPool2d),
    Max(MaxPool2d),
}

impl Pool {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Pool::Avg(p) => p.forward(x),
            Pool::Max(p) => p.forward(x),
        }
    }
}

#[derive(Module, Debug)]
pub struct ImmNet {
    pub convs: Vec<Conv2d>,
    /// One per convolution when batch normalisation is on, else empty.
    norms: Vec<BatchNorm>,
    pool: Pool,
    /// Stages after which no pooling happens (the map is already small).
    pooled_stages: usize,
    hidden: Linear,
    dropout: Dropout,
    output: Linear,
    activation: Relu,
    standardize_input: bool,
}

impl ImmNetConfig {
    /// How many stages are followed by pooling: pool while the map is at least 4 pixels high.
    fn pooled_stages(&self) -> usize {
        let mut h = self.input_height;
        let mut n = 0;
        while n < self.channels.len() && h >= 4 {
            h /= 2;
            n += 1;
        }
        n
    }

    pub fn init(&self, device: &Device) -> ImmNet {
        assert_eq!(
            self.channels.len(),
            self.kernels.len(),
            "one kernel size per stage"
        );
        let mut cin = 1;
        let convs = self
            .channels
            .iter()
            .zip(&self.kernels)
            .map(|(&cout, &k)| {
                let conv = Conv2dConfig::new([cin, cout], [k, k])
                    .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                    .init(device);
                cin = cout;
                conv
            })
            .collect();
        let pooled = self.pooled_stages();
        let (fw, fh) = (self.input_width >> pooled, self.input_height >> pooled);
        let pool = match self.pooling {
            Pooling::Avg => Pool::Avg(AvgPool2dConfig::new([2, 2]).init()),
            Pooling::Max => Pool::Max(MaxPool2dConfig::new([2, 2]).init()),
        };
        let norms = if self.batch_norm {
            self.channels
                .iter()
                .map(|&c| BatchNormConfig::new(c).init(device))
                .collect()
        } else {
            Vec::new()
        };
        ImmNet {
            convs,
            norms,
            pool,
            pooled_stages: pooled,
            hidden: LinearConfig::new(cin * fw * fh, self.hidden).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            output: LinearConfig::new(self.hidden, 2 * self.points).init(device),
            activation: Relu::new(),
            standardize_input: self.standardize_input,
        }
    }
}

impl ImmNet {
    /// `[batch, 1, H, W] -> [batch, 2K]`, coordinates as fractions of width and height.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = if self.standardize_input {
            super::standardize(images)
        } else {
            images
        };
        for (i, conv) in self.convs.iter().enumerate() {
            x = forward_conv(conv, x);
            if let Some(norm) = self.norms.get(i) {
                x = norm.forward(x);
            }
            x = self.activation.forward(x);
            if i < self.pooled_stages {
                x = self.pool.forward(x);
            }
        }
        let x = x.flatten::<2>(1, 3);
        let x = self
            .dropout
            .forward(self.activation.forward(self.hidden.forward(x)));
        self.output.forward(x)
    }
}

impl super::Family for ImmNetConfig {
    fn name(&self) -> &'static str {
        "ImmNet"
    }
    fn options(&self) -> &'static [&'static str] {
        &["pooling", "batch_norm", "dropout"]
    }
    fn apply(&mut self, o: &super::ModelOverrides) {
        self.pooling = o.pooling.unwrap_or(self.pooling);
        self.batch_norm |= o.batch_norm;
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
    fn output_shape_with_either_pooling() {
        let device = Device::flex();
        for (pooling, batch_norm) in [(Pooling::Avg, true), (Pooling::Max, false)] {
            let config = ImmNetConfig {
                pooling,
                batch_norm,
                ..Default::default()
            };
            let net = config.init(&device);
            let out = net.forward(Tensor::zeros([2, 1, 120, 160], &device));
            assert_eq!(out.dims(), [2, 116]);
        }
    }
}
