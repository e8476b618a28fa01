//! An ensemble of trained heatmap networks: each member draws its maps, and the decoder reads the
//! mean of their per-map probabilities. Members may differ in width or input size (a member of
//! another size sees the input resized and its maps resized back), but not in landmarks.
//!
//! Averaging probabilities rather than points keeps every caller unchanged: the ensemble is one
//! [`super::KeypointNet`] with one inference contract (crop, mirror averaging, decoding), so
//! evaluation, benchmarks, the CLI and the Python bindings run it as they run any heatmap model.
//! It is built from finished runs (`facemark ensemble`), never trained as a whole.

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use serde::{Deserialize, Serialize};

use super::Family;
use super::heatmap_net::{HeatmapLoss, HeatmapNet, HeatmapNetConfig};
use crate::data::Example;
use crate::decode::{Decoding, Output, map_probabilities};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleConfig {
    /// The members' own settings, in the order their weights are stored.
    pub members: Vec<HeatmapNetConfig>,
    /// The side of the square input the ensemble is fed (its largest member's).
    pub input_size: usize,
    pub decoding: Decoding,
}

impl EnsembleConfig {
    /// An ensemble of `members` (at least one, all trained with cross-entropy on the same
    /// landmarks), fed at the largest member's input size.
    pub fn new(members: Vec<HeatmapNetConfig>, decoding: Decoding) -> Result<Self, String> {
        let Some(first) = members.first() else {
            return Err("an ensemble needs at least one member".into());
        };
        if let Some(m) = members.iter().find(|m| m.loss != HeatmapLoss::CrossEntropy) {
            return Err(format!(
                "ensemble members must be trained with cross-entropy (their maps are averaged as \
                 probabilities); one was trained with {:?}",
                m.loss
            ));
        }
        let points = first.unet.points;
        if let Some(m) = members.iter().find(|m| m.unet.points != points) {
            return Err(format!(
                "ensemble members must predict the same landmarks: {points} and {} points",
                m.unet.points
            ));
        }
        let input_size = members.iter().map(|m| m.unet.input_size).max().unwrap_or(0);
        Ok(Self {
            members,
            input_size,
            decoding,
        })
    }

    pub fn init(&self, device: &Device) -> Ensemble {
        Ensemble::from_members(self.members.iter().map(|m| m.init(device)).collect(), self)
    }
}

#[derive(Module, Debug)]
pub struct Ensemble {
    pub members: Vec<HeatmapNet>,
    /// Each member's input side.
    #[module(skip)]
    sides: Vec<usize>,
}

/// `x` resized to `side` x `side` (bilinear, pixel centres aligned), or `x` itself at that size.
fn resized(x: Tensor<4>, side: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if (h, w) == (side, side) {
        return x;
    }
    let mut options = InterpolateOptions::new(InterpolateMode::Bilinear);
    options.align_corners = false;
    options.output_size = Some([side, side]);
    interpolate(x, options)
}

/// Probability maps resized to `side` x `side`, each still summing to 1: resizing spreads a map's
/// mass over (side / h)^2 times the pixels, so it is scaled back.
pub fn resized_probabilities(maps: Tensor<4>, side: usize) -> Tensor<4> {
    let [_, _, h, _] = maps.dims();
    if h == side {
        return maps;
    }
    resized(maps, side).mul_scalar((h * h) as f32 / (side * side) as f32)
}

impl Ensemble {
    /// Assembles trained members (their order must match `config.members`).
    pub fn from_members(members: Vec<HeatmapNet>, config: &EnsembleConfig) -> Self {
        Self {
            members,
            sides: config.members.iter().map(|m| m.unet.input_size).collect(),
        }
    }

    pub fn fold_batch_norm(self) -> Self {
        Self {
            members: self
                .members
                .into_iter()
                .map(HeatmapNet::fold_batch_norm)
                .collect(),
            sides: self.sides,
        }
    }

    /// `[batch, 1, S, S] -> [batch, K, S, S]`: the mean of the members' probability maps.
    pub fn output(&self, images: Tensor<4>) -> Output {
        Output::Heatmaps(self.probabilities(images))
    }

    /// The mean of the members' probability maps, at the input's side.
    pub fn probabilities(&self, images: Tensor<4>) -> Tensor<4> {
        let [_, _, h, _] = images.dims();
        let mut sum: Option<Tensor<4>> = None;
        for (member, &side) in self.members.iter().zip(&self.sides) {
            let probabilities = resized_probabilities(
                map_probabilities(member.logits(resized(images.clone(), side))),
                h,
            );
            sum = Some(match sum {
                Some(total) => total + probabilities,
                None => probabilities,
            });
        }
        match sum {
            Some(total) => total.div_scalar(self.members.len() as f32),
            None => images,
        }
    }

    /// The mean of the members' training losses (an ensemble is not trained, but its validation
    /// loss is still reported beside its members').
    pub fn loss(&self, images: Tensor<4>, examples: &[Example]) -> Tensor<1> {
        let losses = self
            .members
            .iter()
            .zip(&self.sides)
            .map(|(member, &side)| member.loss(resized(images.clone(), side), examples));
        let n = self.members.len().max(1) as f32;
        losses
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([1], &images.device()))
            .div_scalar(n)
    }

    /// The first member's first filters (for filter figures).
    pub fn first_filters(&self) -> Tensor<4> {
        match self.members.first() {
            Some(member) => member.unet.first_filters(),
            None => Tensor::zeros([1, 1, 1, 1], &crate::backend::device()),
        }
    }
}

impl Family for EnsembleConfig {
    fn name(&self) -> &'static str {
        "an ensemble of heatmap U-Nets"
    }
    fn options(&self) -> &'static [&'static str] {
        &["decoding"]
    }
    fn apply(&mut self, o: &super::ModelOverrides) {
        self.decoding = o.decoding.unwrap_or(self.decoding);
    }
    fn input_size(&self) -> (usize, usize) {
        (self.input_size, self.input_size)
    }
    fn set_points(&mut self, points: usize) {
        for member in &mut self.members {
            member.set_points(points);
        }
    }
    fn loss_name(&self) -> &'static str {
        "heatmap cross-entropy (members' mean)"
    }
    fn validation_metric(&self) -> super::ValidationMetric {
        super::ValidationMetric::TrainingLoss
    }
    fn decoding(&self) -> Decoding {
        self.decoding
    }
    fn outputs_maps(&self) -> bool {
        true
    }
    fn validate(&self) -> Result<(), String> {
        Err("an ensemble is assembled from trained runs (`facemark ensemble`), not trained".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UNetConfig;

    fn member(side: usize) -> HeatmapNetConfig {
        HeatmapNetConfig {
            unet: UNetConfig {
                points: 3,
                base_width: 4,
                depth: 2,
                input_size: side,
            },
            ..Default::default()
        }
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec().unwrap()
    }

    fn random_images(side: usize) -> Tensor<4> {
        Tensor::random(
            [2, 1, side, side],
            burn::tensor::Distribution::Uniform(-0.5, 0.5),
            &Device::flex(),
        )
    }

    #[test]
    fn one_member_gives_that_members_probabilities() {
        let config = EnsembleConfig::new(vec![member(32)], Decoding::LocalMean).unwrap();
        let ensemble = config.init(&Device::flex());
        let images = random_images(32);
        let alone = ensemble.members[0].heatmaps(images.clone());
        let together = ensemble.output(images).into_maps().unwrap();
        let gap = values(alone)
            .iter()
            .zip(values(together))
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(gap < 1e-6, "{gap}");
    }

    #[test]
    fn members_of_other_sizes_are_fed_and_read_at_the_ensembles_size() {
        let config =
            EnsembleConfig::new(vec![member(32), member(64)], Decoding::LocalMean).unwrap();
        assert_eq!(config.input_size, 64);
        let maps = config
            .init(&Device::flex())
            .output(random_images(64))
            .into_maps()
            .unwrap();
        assert_eq!(maps.dims(), [2, 3, 64, 64]);
        // Each map is a mean of probability maps: it still sums to about 1.
        let sums = values(maps.reshape([6, 64 * 64]).sum_dim(1).reshape([6, 1, 1, 1]));
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 0.02), "{sums:?}");
    }

    #[test]
    fn members_must_share_landmarks_and_loss() {
        let mut other = member(32);
        other.unet.points = 5;
        let err = EnsembleConfig::new(vec![member(32), other], Decoding::LocalMean).unwrap_err();
        assert!(err.contains("same landmarks"), "{err}");
        let mse = HeatmapNetConfig {
            loss: HeatmapLoss::Mse,
            ..member(32)
        };
        let err = EnsembleConfig::new(vec![mse], Decoding::LocalMean).unwrap_err();
        assert!(err.contains("cross-entropy"), "{err}");
        assert!(EnsembleConfig::new(vec![], Decoding::LocalMean).is_err());
    }
}
