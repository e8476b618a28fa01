//! ResNet18, torchvision layout, 1-channel stem: a standard residual network regressing a whole
//! face of landmarks.
//!
//! Stem: Conv(1→w, 7, stride 2, pad 3, no bias) + BatchNorm + ReLU, MaxPool(3, stride 2, pad 1).
//! Then four stages of two [`BasicBlock`]s with w, 2w, 4w and 8w channels (w = 64 as in
//! torchvision); the first block of stages 2 to 4 halves the map with stride 2 and projects its
//! shortcut with a [`Downsample`] (1x1 conv, stride 2, no bias + BatchNorm). Finally an adaptive
//! average pool to 1x1, flatten, and Linear(8w, 2K) with no final activation. Thanks to the
//! adaptive pool the network accepts any input size of at least 32x32; `input_size` only tells
//! the data pipeline what to feed it. Convolutions start from torchvision's initialisation
//! (Kaiming normal, fan-out, ReLU gain).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;

use crate::kernels::{conv_norm, fold_norm};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResNetConfig {
    /// Number of landmarks predicted.
    pub points: usize,
    /// Side of the square input image.
    pub input_size: usize,
    /// Channels of the first stage; the stages have width, 2x, 4x and 8x as many. 64 is the
    /// torchvision ResNet18; smaller values give a slimmer net for CPU budgets.
    pub width: usize,
    /// Scale each image to zero mean and unit variance first, so lighting matters less.
    pub standardize_input: bool,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            points: 68,
            input_size: 224,
            width: 64,
            standardize_input: false,
        }
    }
}

/// Projection shortcut of a block that changes the map size or channel count: 1x1 convolution
/// (no bias) + BatchNorm.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    norm: BatchNorm,
}

impl Downsample {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv_norm(&self.conv, &self.norm, false, x)
    }

    fn fold_batch_norm(self) -> Self {
        let (conv, norm) = fold_norm(self.conv, self.norm);
        Self { conv, norm }
    }
}

/// Residual block: conv3x3(stride) + BN + ReLU, conv3x3 + BN, add the shortcut, ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    /// Present when the block strides or changes the channel count.
    downsample: Option<Downsample>,
    activation: Relu,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, device),
            norm: BatchNormConfig::new(cout).init(device),
        });
        BasicBlock {
            conv1: conv(cin, cout, 3, stride, device),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv(cout, cout, 3, 1, device),
            bn2: BatchNormConfig::new(cout).init(device),
            downsample,
            activation: Relu::new(),
        }
    }

    /// `[batch, cin, H, W] -> [batch, cout, H / stride, W / stride]`.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        let out = conv_norm(&self.conv1, &self.bn1, true, x);
        let out = conv_norm(&self.conv2, &self.bn2, false, out);
        self.activation.forward(out + identity)
    }

    fn fold_batch_norm(self) -> Self {
        let (conv1, bn1) = fold_norm(self.conv1, self.bn1);
        let (conv2, bn2) = fold_norm(self.conv2, self.bn2);
        Self {
            conv1,
            bn1,
            conv2,
            bn2,
            downsample: self.downsample.map(Downsample::fold_batch_norm),
            ..self
        }
    }
}

/// Convolution without bias, padded by `k / 2`, with torchvision's initialisation.
fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

#[derive(Module, Debug)]
pub struct ResNet {
    /// The 7x7 stem convolution, `[width, 1, 7, 7]`; public so its filters can be drawn.
    pub stem_conv: Conv2d,
    stem_norm: BatchNorm,
    stem_pool: MaxPool2d,
    /// The eight residual blocks, two per stage.
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    output: Linear,
    activation: Relu,
    standardize_input: bool,
}

impl ResNetConfig {
    pub fn init(&self, device: &Device) -> ResNet {
        assert!(self.width > 0, "width must be positive");
        let w = self.width;
        let mut blocks = Vec::with_capacity(8);
        let mut cin = w;
        for (stage, cout) in [w, 2 * w, 4 * w, 8 * w].into_iter().enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            blocks.push(BasicBlock::new(cin, cout, stride, device));
            blocks.push(BasicBlock::new(cout, cout, 1, device));
            cin = cout;
        }
        ResNet {
            stem_conv: conv(1, w, 7, 2, device),
            stem_norm: BatchNormConfig::new(w).init(device),
            stem_pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            output: LinearConfig::new(cin, 2 * self.points).init(device),
            activation: Relu::new(),
            standardize_input: self.standardize_input,
        }
    }
}

impl ResNet {
    /// The same net with each batch norm folded into its convolution, for inference only
    /// ([`fold_norm`]).
    pub fn fold_batch_norm(self) -> Self {
        let (stem_conv, stem_norm) = fold_norm(self.stem_conv, self.stem_norm);
        Self {
            stem_conv,
            stem_norm,
            blocks: self
                .blocks
                .into_iter()
                .map(BasicBlock::fold_batch_norm)
                .collect(),
            ..self
        }
    }

    /// `[batch, 1, H, W] -> [batch, 2K]`, coordinates as fractions of width and height.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let images = if self.standardize_input {
            super::standardize(images)
        } else {
            images
        };
        let x = conv_norm(&self.stem_conv, &self.stem_norm, true, images);
        let mut x = self.stem_pool.forward(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.pool.forward(x).flatten::<2>(1, 3);
        self.output.forward(x)
    }
}

impl super::Family for ResNetConfig {
    fn name(&self) -> &'static str {
        "ResNet18"
    }
    fn options(&self) -> &'static [&'static str] {
        &[]
    }
    fn apply(&mut self, _: &super::ModelOverrides) {}
    fn input_size(&self) -> (usize, usize) {
        (self.input_size, self.input_size)
    }
    fn set_input_size(&mut self, side: usize) -> bool {
        self.input_size = side;
        true
    }
    fn set_points(&mut self, points: usize) {
        self.points = points;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::loss::{MseLoss, Reduction};
    use burn::tensor::Distribution;

    #[test]
    fn output_shape_default_width_at_112() {
        let device = Device::flex();
        let net = ResNetConfig::default().init(&device);
        let out = net.forward(Tensor::zeros([2, 1, 112, 112], &device));
        assert_eq!(out.dims(), [2, 136]);
    }

    #[test]
    fn output_shape_slim_net_at_224() {
        let device = Device::flex();
        let config = ResNetConfig {
            width: 16,
            standardize_input: true,
            ..Default::default()
        };
        let net = config.init(&device);
        let images = Tensor::random([2, 1, 224, 224], Distribution::Default, &device);
        let out = net.forward(images);
        assert_eq!(out.dims(), [2, 136]);
        assert_eq!(net.stem_conv.weight.dims(), [16, 1, 7, 7]);
    }

    #[test]
    fn parameter_count_matches_torchvision_resnet18() {
        let net = ResNetConfig::default().init(&Device::flex());
        // torchvision resnet18: 11,689,512 parameters with a 3-channel stem and 1000 classes.
        // A 1-channel stem has 64 * 1 * 49 = 3,136 weights instead of 9,408 (-6,272), and
        // Linear(512, 136) has 69,768 instead of 513,000 (-443,232): 11,240,008 trainable.
        let trainable = 11_689_512 - 6_272 - 443_232;
        assert_eq!(trainable, 11_240_008);
        // burn's `num_params` also counts the BatchNorm running mean and variance (they are
        // `RunningState` tensors visited like parameters; PyTorch keeps them as buffers). The
        // network has 4,800 BatchNorm channels: stem 64, stage 1 4 * 64, stage 2 4 * 128 + 128,
        // stage 3 4 * 256 + 256, stage 4 4 * 512 + 512; two running statistics each.
        let bn_channels = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512;
        assert_eq!(bn_channels, 4_800);
        assert_eq!(net.num_params(), trainable + 2 * bn_channels);
        assert_eq!(net.num_params(), 11_249_608);
    }

    #[test]
    fn gradients_reach_the_stem() {
        let device = Device::flex().autodiff();
        let config = ResNetConfig {
            width: 8,
            input_size: 64,
            ..Default::default()
        };
        let net = config.init(&device);
        let images = Tensor::random([2, 1, 64, 64], Distribution::Default, &device);
        let out = net.forward(images);
        let loss = MseLoss::new().forward(out.clone(), out.zeros_like(), Reduction::Mean);
        let grads = loss.backward();
        let grad = net
            .stem_conv
            .weight
            .val()
            .grad(&grads)
            .expect("stem convolution has a gradient");
        assert_eq!(grad.dims(), [8, 1, 7, 7]);
    }
}
