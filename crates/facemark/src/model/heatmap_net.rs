//! Heatmap keypoints (Part 4): a [`UNet`] draws one map per landmark, trained against rendered
//! target maps. Its forward pass returns the maps; [`crate::decode`] turns them into points.

use burn::nn::loss::{MseLoss, Reduction};
use burn::prelude::*;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::unet::{UNet, UNetConfig};
use crate::data::Example;
use crate::decode::{Decoding, Output, map_probabilities};
use crate::heatmap::{HeatmapTarget, ShapePrior, TargetKind, heatmap_cross_entropy};

/// What the maps are trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeatmapLoss {
    /// The study's: softmax over each map's pixels, cross-entropy against the target normalised to
    /// sum 1 ([`heatmap_cross_entropy`]).
    #[default]
    CrossEntropy,
    /// Mean squared error between the raw maps and the target scaled to peak 1.
    Mse,
}

impl std::str::FromStr for HeatmapLoss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cross-entropy" | "cross_entropy" => Ok(Self::CrossEntropy),
            "mse" => Ok(Self::Mse),
            _ => Err(format!("unknown heatmap loss {s:?} (cross-entropy, mse)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HeatmapNetConfig {
    pub unet: UNetConfig,
    pub target: HeatmapTarget,
    pub loss: HeatmapLoss,
    /// How the maps become points at inference (part of the model's inference contract).
    pub decoding: Decoding,
    /// Add the training faces' [`ShapePrior`] to the logits (cross-entropy only).
    pub use_shape_prior: bool,
    /// The prior itself, measured on the training crops when training starts.
    pub shape_prior: Option<ShapePrior>,
}

impl HeatmapNetConfig {
    pub fn init(&self, device: &Device) -> HeatmapNet {
        HeatmapNet {
            unet: self.unet.init(device),
            target: self.target,
            loss: self.loss,
            log_prior: self.log_prior_at(self.unet.input_size, device),
        }
    }

    /// The `[1, K, side, side]` log shape prior added to the logits of a `side` x `side` input,
    /// if the recipe uses one (the net is size-free, its prior is not).
    pub fn log_prior_at(&self, side: usize, device: &Device) -> Option<Tensor<4>> {
        match (&self.shape_prior, self.use_shape_prior, self.loss) {
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
    /// `[1, K, H, W]` log-prior added to the logits, if the recipe uses one.
    #[module(skip)]
    log_prior: Option<Tensor<4>>,
}

impl HeatmapNet {
    /// The same net with each batch norm folded into its convolution, for inference only.
    pub fn fold_batch_norm(self) -> Self {
        Self {
            unet: self.unet.fold_batch_norm(),
            ..self
        }
    }

    /// `[batch, 1, H, W] -> [batch, K, H, W]`: the maps as the decoder sees them (probabilities
    /// per map for cross-entropy training, raw values for MSE training).
    pub fn heatmaps(&self, images: Tensor<4>) -> Tensor<4> {
        let logits = self.logits(images);
        match self.loss {
            HeatmapLoss::CrossEntropy => map_probabilities(logits),
            HeatmapLoss::Mse => logits,
        }
    }

    /// What the decoder reads: the logits themselves for cross-entropy nets (log-probabilities up
    /// to each map's constant, so no softmax is computed), the raw maps for MSE nets.
    pub fn output(&self, images: Tensor<4>) -> Output {
        match self.loss {
            HeatmapLoss::CrossEntropy => Output::LogHeatmaps(self.logits(images)),
            HeatmapLoss::Mse => Output::Heatmaps(self.logits(images)),
        }
    }

    /// The U-Net's maps plus the shape prior, if any.
    pub(crate) fn logits(&self, images: Tensor<4>) -> Tensor<4> {
        self.logits_with_prior(images, self.log_prior.as_ref())
    }

    /// The U-Net's maps plus `log_prior` (drawn at the input's side), if any: how an ensemble
    /// runs one net at several sides.
    pub(crate) fn logits_with_prior(
        &self,
        images: Tensor<4>,
        log_prior: Option<&Tensor<4>>,
    ) -> Tensor<4> {
        match log_prior {
            // At inference the prior is added as the head's sums are stored.
            Some(prior) => crate::kernels::forward_conv_plus_map(
                self.unet.head(),
                self.unet.features(images),
                prior.clone(),
            ),
            None => self.unet.forward(images),
        }
    }

    /// The training loss of `images` against the landmarks of `examples` (the same faces).
    pub fn loss(&self, images: Tensor<4>, examples: &[Example]) -> Tensor<1> {
        self.loss_toward(images, examples, None)
    }

    /// [`Self::loss`] against targets that are `(1 - weight) * truth + weight * teacher` where a
    /// teacher's probability maps (shaped as the output) are given.
    pub fn loss_toward(
        &self,
        images: Tensor<4>,
        examples: &[Example],
        teacher: Option<(Tensor<4>, f32)>,
    ) -> Tensor<1> {
        self.loss_of_logits(self.logits(images), examples, teacher)
    }

    /// [`Self::loss_toward`] of logits already computed.
    pub(crate) fn loss_of_logits(
        &self,
        logits: Tensor<4>,
        examples: &[Example],
        teacher: Option<(Tensor<4>, f32)>,
    ) -> Tensor<1> {
        let device = logits.device();
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
        let targets = match teacher {
            Some((maps, weight)) => targets.mul_scalar(1.0 - weight) + maps.mul_scalar(weight),
            None => targets,
        };
        match self.loss {
            HeatmapLoss::CrossEntropy => heatmap_cross_entropy(logits, targets),
            HeatmapLoss::Mse => MseLoss::new().forward(logits, targets, Reduction::Mean),
        }
    }
}

impl super::Family for HeatmapNetConfig {
    fn name(&self) -> &'static str {
        "the heatmap U-Net"
    }
    fn options(&self) -> &'static [&'static str] {
        &[
            "width",
            "depth",
            "target",
            "sigma",
            "radius",
            "heatmap_loss",
            "shape_prior",
            "decoding",
        ]
    }
    fn apply(&mut self, o: &super::ModelOverrides) {
        self.unet.base_width = o.width.unwrap_or(self.unet.base_width);
        self.unet.depth = o.depth.unwrap_or(self.unet.depth);
        self.loss = o.heatmap_loss.unwrap_or(self.loss);
        self.use_shape_prior = o.shape_prior.unwrap_or(self.use_shape_prior);
        self.decoding = o.decoding.unwrap_or(self.decoding);
        let kind = o.target.or(match self.target {
            // A size alone resizes the recipe's own target kind.
            HeatmapTarget::Gaussian { .. } if o.sigma.is_some() => Some(TargetKind::Gaussian),
            HeatmapTarget::Binary { .. } if o.radius.is_some() => Some(TargetKind::Binary),
            _ => None,
        });
        if let Some(kind) = kind {
            self.target = kind.target(o.sigma, o.radius);
        }
    }
    fn input_size(&self) -> (usize, usize) {
        (self.unet.input_size, self.unet.input_size)
    }
    fn set_input_size(&mut self, side: usize) -> bool {
        self.unet.input_size = side;
        true
    }
    fn set_points(&mut self, points: usize) {
        self.unet.points = points;
        // A prior measured for another markup does not fit.
        if self
            .shape_prior
            .as_ref()
            .is_some_and(|p| p.mean.len() != points)
        {
            self.shape_prior = None;
        }
    }
    fn loss_name(&self) -> &'static str {
        match self.loss {
            HeatmapLoss::CrossEntropy => "heatmap cross-entropy",
            HeatmapLoss::Mse => "heatmap MSE",
        }
    }
    fn validation_metric(&self) -> super::ValidationMetric {
        super::ValidationMetric::TrainingLoss
    }
    fn decoding(&self) -> Decoding {
        self.decoding
    }
    fn needs_training_shapes(&self) -> bool {
        self.needs_shape_prior()
    }
    fn fit_training_shapes(&mut self, shapes: &[Vec<crate::data::Point>]) {
        self.shape_prior = Some(ShapePrior::from_shapes(shapes, 0.02));
    }
    fn outputs_maps(&self) -> bool {
        true
    }
    fn validate(&self) -> Result<(), String> {
        let step = 1usize << self.unet.depth.min(16);
        if self.unet.input_size == 0 || !self.unet.input_size.is_multiple_of(step) {
            return Err(format!(
                "the U-Net's input side {} must be a multiple of 2^depth = {step}",
                self.unet.input_size
            ));
        }
        Ok(())
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
    fn maps_decode_to_fractions_inside_the_image() {
        let device = Device::flex();
        let net = tiny().init(&device);
        let maps = net.heatmaps(Tensor::random(
            [2, 1, 32, 32],
            burn::tensor::Distribution::Uniform(-0.5, 0.5),
            &device,
        ));
        assert_eq!(maps.dims(), [2, 3, 32, 32]);
        let points = crate::decode::decode_maps(maps, Decoding::Subpixel);
        let values: Vec<f32> = points.into_data().try_to_vec().unwrap();
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
