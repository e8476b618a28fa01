//! Keypoint networks. Every model maps a batch of grayscale images `[batch, 1, H, W]` to an
//! [`Output`]: landmark coordinates `[batch, 2K]` (x0, y0, x1, y1, ... as fractions of width and
//! height) for regression networks, one map per landmark for heatmap networks.
//!
//! Each network family answers for itself through [`Family`] (its options, input size, loss and
//! validation metric). This file is the one registration point: adding a family means a module
//! here, a variant in [`ModelConfig`] and [`KeypointNet`], and their match arms below.

pub mod ensemble;
pub mod heatmap_net;
pub mod imm_net;
pub mod nose_net;
pub mod resnet;
pub mod unet;

use burn::nn::loss::{MseLoss, Reduction};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::batch::targets_tensor;
use crate::data::{Example, Point};
use crate::decode::{Decoding, Output};
use crate::heatmap::TargetKind;

pub use ensemble::{Ensemble, EnsembleConfig, EnsemblePass};
pub use heatmap_net::{HeatmapLoss, HeatmapNet, HeatmapNetConfig};
pub use imm_net::{ImmNet, ImmNetConfig, Pooling};
pub use nose_net::{NoseNet, NoseNetConfig};
pub use resnet::{ResNet, ResNetConfig};
pub use unet::{UNet, UNetConfig};

/// Changes to a network's settings that a user may ask for; each family accepts some of them
/// ([`Family::options`]) and refuses the rest by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOverrides {
    /// Channels of the first layers (NoseNet's first convolutions, the U-Net's first level).
    pub width: Option<usize>,
    pub pooling: Option<Pooling>,
    /// Batch normalisation after each convolution.
    pub batch_norm: bool,
    /// Dropout probability before the output layer.
    pub dropout: Option<f64>,
    /// U-Net depth (number of poolings).
    pub depth: Option<usize>,
    pub target: Option<TargetKind>,
    /// Gaussian target's sigma in pixels at 224 (scaled with the map size).
    pub sigma: Option<f32>,
    /// Binary target's disc radius in map pixels.
    pub radius: Option<f32>,
    pub heatmap_loss: Option<HeatmapLoss>,
    /// Add the training faces' mean shape as a log-prior to the heatmap logits.
    pub shape_prior: Option<bool>,
    /// How maps become points.
    pub decoding: Option<Decoding>,
}

impl ModelOverrides {
    /// Names of the options that are set.
    pub fn set_options(&self) -> Vec<&'static str> {
        [
            ("width", self.width.is_some()),
            ("pooling", self.pooling.is_some()),
            ("batch_norm", self.batch_norm),
            ("dropout", self.dropout.is_some()),
            ("depth", self.depth.is_some()),
            ("target", self.target.is_some()),
            ("sigma", self.sigma.is_some()),
            ("radius", self.radius.is_some()),
            ("heatmap_loss", self.heatmap_loss.is_some()),
            ("shape_prior", self.shape_prior.is_some()),
            ("decoding", self.decoding.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// An option that a network family does not take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{option} does not apply to {family}: it takes {}",
    list_or_none(accepted)
)]
pub struct NotApplicable {
    pub option: &'static str,
    pub family: &'static str,
    /// The options it takes.
    pub accepted: Vec<&'static str>,
}

/// `a, b, c`, or `no options`.
pub fn list_or_none(options: &[&str]) -> String {
    if options.is_empty() {
        "no options".into()
    } else {
        options.join(", ")
    }
}

/// What the best epoch is chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationMetric {
    /// Mean squared error of the (mirror-averaged) coordinates, as fractions.
    CoordinateMse,
    /// The training loss itself on the validation faces (so the two loss curves compare).
    TrainingLoss,
}

/// What each network family's settings answer for themselves.
pub trait Family {
    /// The family's name in messages.
    fn name(&self) -> &'static str;
    /// The [`ModelOverrides`] options it takes.
    fn options(&self) -> &'static [&'static str];
    /// Applies the options it takes (the others were refused before).
    fn apply(&mut self, overrides: &ModelOverrides);
    /// Input `(width, height)`.
    fn input_size(&self) -> (usize, usize);
    /// Sets a square input side; `false` for fixed-size networks.
    fn set_input_size(&mut self, _side: usize) -> bool {
        false
    }
    /// Sets the number of landmarks predicted.
    fn set_points(&mut self, points: usize);
    /// The training loss, for axis labels.
    fn loss_name(&self) -> &'static str {
        "MSE"
    }
    fn validation_metric(&self) -> ValidationMetric {
        ValidationMetric::CoordinateMse
    }
    /// How its output becomes points (heatmap families).
    fn decoding(&self) -> Decoding {
        Decoding::default()
    }
    /// Checks settings that only make sense together.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Whether it measures something on the training shapes before training starts.
    fn needs_training_shapes(&self) -> bool {
        false
    }
    /// Takes what it measures from one epoch's training shapes (fractions of the input).
    fn fit_training_shapes(&mut self, _shapes: &[Vec<Point>]) {}
    /// Whether its output is maps (decoded by [`crate::decode`]) rather than coordinates.
    fn outputs_maps(&self) -> bool {
        false
    }
}

/// Which network to build, with its settings. Stored in every run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    NoseNet(NoseNetConfig),
    ImmNet(ImmNetConfig),
    ResNet(ResNetConfig),
    Heatmap(HeatmapNetConfig),
    Ensemble(EnsembleConfig),
}

impl ModelConfig {
    pub fn nose() -> Self {
        ModelConfig::NoseNet(NoseNetConfig::default())
    }
    pub fn imm() -> Self {
        ModelConfig::ImmNet(ImmNetConfig::default())
    }
    pub fn resnet() -> Self {
        ModelConfig::ResNet(ResNetConfig::default())
    }
    pub fn heatmap() -> Self {
        ModelConfig::Heatmap(HeatmapNetConfig::default())
    }

    pub fn init(&self, device: &Device) -> KeypointNet {
        match self {
            ModelConfig::NoseNet(c) => KeypointNet::Nose(c.init(device)),
            ModelConfig::ImmNet(c) => KeypointNet::Imm(c.init(device)),
            ModelConfig::ResNet(c) => KeypointNet::ResNet(c.init(device)),
            ModelConfig::Heatmap(c) => KeypointNet::Heatmap(c.init(device)),
            ModelConfig::Ensemble(c) => KeypointNet::Ensemble(c.init(device)),
        }
    }

    /// The family's own answers.
    pub fn family(&self) -> &dyn Family {
        match self {
            ModelConfig::NoseNet(c) => c,
            ModelConfig::ImmNet(c) => c,
            ModelConfig::ResNet(c) => c,
            ModelConfig::Heatmap(c) => c,
            ModelConfig::Ensemble(c) => c,
        }
    }

    fn family_mut(&mut self) -> &mut dyn Family {
        match self {
            ModelConfig::NoseNet(c) => c,
            ModelConfig::ImmNet(c) => c,
            ModelConfig::ResNet(c) => c,
            ModelConfig::Heatmap(c) => c,
            ModelConfig::Ensemble(c) => c,
        }
    }

    /// Applies `overrides`, refusing any option the family does not take.
    pub fn apply(&mut self, overrides: &ModelOverrides) -> Result<(), NotApplicable> {
        let family = self.family_mut();
        let accepted = family.options();
        if let Some(option) = overrides
            .set_options()
            .into_iter()
            .find(|o| !accepted.contains(o))
        {
            return Err(NotApplicable {
                option,
                family: family.name(),
                accepted: accepted.to_vec(),
            });
        }
        family.apply(overrides);
        Ok(())
    }

    pub fn family_name(&self) -> &'static str {
        self.family().name()
    }
    pub fn input_size(&self) -> (usize, usize) {
        self.family().input_size()
    }
    pub fn set_input_size(&mut self, side: usize) -> bool {
        self.family_mut().set_input_size(side)
    }
    pub fn set_points(&mut self, points: usize) {
        self.family_mut().set_points(points)
    }
    pub fn loss_name(&self) -> &'static str {
        self.family().loss_name()
    }
    /// Whether training fits probability maps (cross-entropy heatmaps), which a teacher's maps
    /// can join (knowledge distillation).
    pub fn learns_probability_maps(&self) -> bool {
        matches!(self, ModelConfig::Heatmap(c) if c.loss == HeatmapLoss::CrossEntropy)
    }
    pub fn validation_metric(&self) -> ValidationMetric {
        self.family().validation_metric()
    }
    pub fn decoding(&self) -> Decoding {
        self.family().decoding()
    }
    pub fn validate(&self) -> Result<(), String> {
        self.family().validate()
    }
    pub fn needs_training_shapes(&self) -> bool {
        self.family().needs_training_shapes()
    }
    pub fn fit_training_shapes(&mut self, shapes: &[Vec<Point>]) {
        self.family_mut().fit_training_shapes(shapes)
    }
    pub fn outputs_maps(&self) -> bool {
        self.family().outputs_maps()
    }
}

/// Any of facemark's keypoint networks.
// Moved once per optimizer step; boxing would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum KeypointNet {
    Nose(NoseNet),
    Imm(ImmNet),
    ResNet(ResNet),
    Heatmap(HeatmapNet),
    Ensemble(Ensemble),
}

impl KeypointNet {
    /// `[batch, 1, H, W]` -> coordinates or maps (see [`Output`]).
    pub fn forward(&self, images: Tensor<4>) -> Output {
        match self {
            KeypointNet::Nose(m) => Output::Coordinates(m.forward(images)),
            KeypointNet::Imm(m) => Output::Coordinates(m.forward(images)),
            KeypointNet::ResNet(m) => Output::Coordinates(m.forward(images)),
            KeypointNet::Heatmap(m) => m.output(images),
            KeypointNet::Ensemble(m) => m.output(images),
        }
    }

    /// The same net with each batch norm folded into its convolution, computing the same
    /// outputs at inference with less work per pass (a predictor folds once at load). Not for
    /// training: the folded norms no longer learn.
    pub fn fold_batch_norm(self) -> Self {
        match self {
            KeypointNet::ResNet(m) => KeypointNet::ResNet(m.fold_batch_norm()),
            KeypointNet::Heatmap(m) => KeypointNet::Heatmap(m.fold_batch_norm()),
            KeypointNet::Ensemble(m) => KeypointNet::Ensemble(m.fold_batch_norm()),
            // Their batch norms (optional in ImmNet) run as burn's own layers.
            other @ (KeypointNet::Nose(_) | KeypointNet::Imm(_)) => other,
        }
    }

    /// The training loss on `images` made from `examples`: MSE of the coordinates for regression
    /// networks, the heatmap loss for heatmap networks.
    pub fn loss(&self, images: Tensor<4>, examples: &[Example]) -> Tensor<1> {
        let device = images.device();
        let coords = match self {
            KeypointNet::Heatmap(m) => return m.loss(images, examples),
            KeypointNet::Ensemble(m) => return m.loss(images, examples),
            KeypointNet::Nose(m) => m.forward(images),
            KeypointNet::Imm(m) => m.forward(images),
            KeypointNet::ResNet(m) => m.forward(images),
        };
        MseLoss::new().forward(coords, targets_tensor(examples, &device), Reduction::Mean)
    }

    /// The training loss against targets that mix the truth's maps with `teacher_maps`
    /// (probability maps the shape of the net's output), the teacher's share being `weight`.
    /// Only heatmap networks learn from maps; the others get their plain loss.
    pub fn loss_with_teacher(
        &self,
        images: Tensor<4>,
        examples: &[Example],
        teacher_maps: Tensor<4>,
        weight: f32,
    ) -> Tensor<1> {
        match self {
            KeypointNet::Heatmap(m) => {
                m.loss_toward(images, examples, Some((teacher_maps, weight)))
            }
            _ => self.loss(images, examples),
        }
    }

    /// Weights of the first convolution, `[out_channels, 1, k, k]`, for filter images.
    pub fn first_filters(&self) -> Tensor<4> {
        match self {
            KeypointNet::Nose(m) => m.conv1.weight.val(),
            KeypointNet::Imm(m) => m.convs[0].weight.val(),
            KeypointNet::ResNet(m) => m.stem_conv.weight.val(),
            KeypointNet::Heatmap(m) => m.unet.first_filters(),
            KeypointNet::Ensemble(m) => m.first_filters(),
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

    /// Largest difference between two outputs relative to the largest reference value.
    fn output_gap(a: Output, b: Output) -> f32 {
        let values = |o: Output| -> Vec<f32> {
            match o {
                Output::Coordinates(t) => t.into_data().try_to_vec().unwrap(),
                other => other.into_maps().unwrap().into_data().try_to_vec().unwrap(),
            }
        };
        let (a, b) = (values(a), values(b));
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn folding_batch_norms_keeps_every_output() {
        use burn::tensor::Distribution;
        let train = crate::backend::training_device();
        let mut resnet = ResNetConfig::default();
        (resnet.width, resnet.input_size, resnet.points) = (8, 32, 5);
        let mut heatmap = HeatmapNetConfig::default();
        (
            heatmap.unet.base_width,
            heatmap.unet.input_size,
            heatmap.unet.points,
        ) = (4, 32, 5);
        heatmap.unet.depth = 2;
        for config in [ModelConfig::ResNet(resnet), ModelConfig::Heatmap(heatmap)] {
            let net = config.init(&train);
            // Training passes move every norm's running statistics away from 0 and 1.
            for _ in 0..3 {
                let x = Tensor::<4>::random([4, 1, 32, 32], Distribution::Normal(0.3, 1.5), &train);
                let _ = net.forward(x);
            }
            let net = net.valid();
            let x = Tensor::<4>::random(
                [2, 1, 32, 32],
                Distribution::Normal(0.3, 1.5),
                &crate::backend::device(),
            );
            let reference = net.forward(x.clone());
            let folded = net.fold_batch_norm().forward(x);
            let gap = output_gap(folded, reference);
            assert!(gap < 1e-5, "{config:?}: {gap}");
        }
    }

    #[test]
    fn conv_arithmetic() {
        assert_eq!(conv_out(60, 3, 2, 1), 30);
        assert_eq!(conv_out(80, 3, 2, 1), 40);
        assert_eq!(conv_out(15, 2, 2, 0), 7);
    }

    #[test]
    fn a_refused_option_names_the_family_and_what_it_takes() {
        let mut config = ModelConfig::resnet();
        let err = config
            .apply(&ModelOverrides {
                dropout: Some(0.1),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "dropout does not apply to ResNet18: it takes no options"
        );
    }
}
