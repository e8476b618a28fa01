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
    /// The distinct trained nets' own settings, in the order their weights are stored.
    pub members: Vec<HeatmapNetConfig>,
    /// Which member runs at which input side; the passes' maps are averaged. Empty (as stored
    /// before passes existed) means each member once at its own side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<EnsemblePass>,
    /// The side of the square input the ensemble is fed (its largest pass's).
    pub input_size: usize,
    pub decoding: Decoding,
}

/// One run of a member: several passes of one member at different sides average its maps over
/// scales (test-time augmentation) while its weights are stored once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsemblePass {
    /// Index into [`EnsembleConfig::members`].
    pub member: usize,
    /// The input side the member sees (its fully convolutional net sees the face larger or
    /// smaller than it was trained at).
    pub side: usize,
}

impl EnsembleConfig {
    /// An ensemble of `members` (at least one, all trained with cross-entropy on the same
    /// landmarks), each run once at its own side.
    pub fn new(members: Vec<HeatmapNetConfig>, decoding: Decoding) -> Result<Self, String> {
        let passes = each_at_its_side(&members);
        Self::with_passes(members, passes, decoding)
    }

    /// An ensemble of `members` run as `passes` (at least one), fed at the largest pass's side.
    pub fn with_passes(
        members: Vec<HeatmapNetConfig>,
        passes: Vec<EnsemblePass>,
        decoding: Decoding,
    ) -> Result<Self, String> {
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
        for pass in &passes {
            let Some(member) = members.get(pass.member) else {
                return Err(format!(
                    "a pass runs member {} of {}",
                    pass.member + 1,
                    members.len()
                ));
            };
            let mut at_side = member.clone();
            at_side.unet.input_size = pass.side;
            Family::validate(&at_side).map_err(|e| format!("a pass at side {}: {e}", pass.side))?;
        }
        let Some(input_size) = passes.iter().map(|p| p.side).max() else {
            return Err("an ensemble needs at least one pass".into());
        };
        Ok(Self {
            members,
            passes,
            input_size,
            decoding,
        })
    }

    /// The passes, including the implicit ones of an ensemble stored before passes existed.
    pub fn passes(&self) -> Vec<EnsemblePass> {
        if self.passes.is_empty() {
            each_at_its_side(&self.members)
        } else {
            self.passes.clone()
        }
    }

    pub fn init(&self, device: &Device) -> Ensemble {
        let members = self.members.iter().map(|m| m.init(device)).collect();
        Ensemble::from_members(members, self, device)
    }
}

/// One pass per member, at the side it was trained at.
fn each_at_its_side(members: &[HeatmapNetConfig]) -> Vec<EnsemblePass> {
    (members.iter().enumerate())
        .map(|(member, m)| EnsemblePass {
            member,
            side: m.unet.input_size,
        })
        .collect()
}

#[derive(Module, Debug)]
pub struct Ensemble {
    pub members: Vec<HeatmapNet>,
    #[module(skip)]
    passes: Vec<Pass>,
}

/// A pass with the shape prior drawn at its side.
#[derive(Debug, Clone)]
struct Pass {
    member: usize,
    side: usize,
    log_prior: Option<Tensor<4>>,
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
/// mass over (side / h)^2 times the pixels, so it is scaled back. The resize is [`resized`]'s
/// bilinear one computed separably (rows, then columns): burn's per-pixel loop took a quarter of
/// a three-side ensemble's time for its 68 maps per face.
pub fn resized_probabilities(maps: Tensor<4>, side: usize) -> Tensor<4> {
    let [b, k, h, w] = maps.dims();
    if (h, w) == (side, side) {
        return maps;
    }
    let device = maps.device();
    let values = maps.into_data().convert::<f32>();
    let values = values.as_slice::<f32>().unwrap_or_default();
    let scale = (h * w) as f32 / (side * side) as f32;
    let resized = bilinear_planes(values, [h, w], [side, side], scale);
    Tensor::from_data(TensorData::new(resized, [b, k, side, side]), &device)
}

/// Where output pixel `o` of `out` samples an axis of `len` pixels (pixel centres aligned, as
/// burn's bilinear interpolation without `align_corners`): the lower and upper source pixels and
/// the upper one's weight.
fn bilinear_taps(len: usize, out: usize) -> Vec<(usize, usize, f32)> {
    let ratio = len as f64 / out as f64;
    (0..out)
        .map(|o| {
            let x = (o as f64 + 0.5) * ratio - 0.5;
            let low = x.floor().max(0.0) as usize;
            let high = (low + 1).min(len - 1);
            (low, high, (x - low as f64).max(0.0) as f32)
        })
        .collect()
}

/// Every `[h, w]` plane of `values` resized to `[out_h, out_w]` (bilinear) and multiplied by
/// `scale`, planes in parallel.
fn bilinear_planes(
    values: &[f32],
    [h, w]: [usize; 2],
    [out_h, out_w]: [usize; 2],
    scale: f32,
) -> Vec<f32> {
    use rayon::prelude::*;
    let (rows, columns) = (bilinear_taps(h, out_h), bilinear_taps(w, out_w));
    let mut out = vec![0.0f32; values.len() / (h * w) * out_h * out_w];
    out.par_chunks_mut(out_h * out_w)
        .zip(values.par_chunks(h * w))
        .for_each(|(out, plane)| {
            // Each source row resized across once, then pairs of them blended down.
            let mut across = vec![0.0f32; h * out_w];
            for (resized, row) in across.chunks_mut(out_w).zip(plane.chunks(w)) {
                for (o, &(l, r, t)) in resized.iter_mut().zip(&columns) {
                    *o = row[l] + (row[r] - row[l]) * t;
                }
            }
            for (out_row, &(top, bottom, t)) in out.chunks_mut(out_w).zip(&rows) {
                let (top, bottom) = (
                    &across[top * out_w..][..out_w],
                    &across[bottom * out_w..][..out_w],
                );
                for ((o, &a), &b) in out_row.iter_mut().zip(top).zip(bottom) {
                    *o = (a + (b - a) * t) * scale;
                }
            }
        });
    out
}

impl Ensemble {
    /// Assembles trained members (their order must match `config.members`).
    pub fn from_members(
        members: Vec<HeatmapNet>,
        config: &EnsembleConfig,
        device: &Device,
    ) -> Self {
        let passes = (config.passes().into_iter())
            .map(|pass| Pass {
                member: pass.member,
                side: pass.side,
                log_prior: config.members[pass.member].log_prior_at(pass.side, device),
            })
            .collect();
        Self { members, passes }
    }

    pub fn fold_batch_norm(self) -> Self {
        Self {
            members: self
                .members
                .into_iter()
                .map(HeatmapNet::fold_batch_norm)
                .collect(),
            passes: self.passes,
        }
    }

    /// `[batch, 1, S, S] -> [batch, K, S, S]`: the mean of the passes' probability maps.
    pub fn output(&self, images: Tensor<4>) -> Output {
        Output::Heatmaps(self.probabilities(images))
    }

    /// Each pass's logits, for `images` resized to its side.
    fn pass_logits<'a>(
        &'a self,
        images: &'a Tensor<4>,
    ) -> impl Iterator<Item = (&'a HeatmapNet, Tensor<4>)> + 'a {
        self.passes.iter().map(move |pass| {
            let member = &self.members[pass.member];
            let logits = member
                .logits_with_prior(resized(images.clone(), pass.side), pass.log_prior.as_ref());
            (member, logits)
        })
    }

    /// The mean of the passes' probability maps, at the input's side.
    pub fn probabilities(&self, images: Tensor<4>) -> Tensor<4> {
        let [_, _, h, _] = images.dims();
        let sum = (self.pass_logits(&images))
            .map(|(_, logits)| resized_probabilities(map_probabilities(logits), h))
            .reduce(|total, probabilities| total + probabilities);
        match sum {
            Some(total) => total.div_scalar(self.passes.len() as f32),
            None => images,
        }
    }

    /// The mean of the passes' training losses (an ensemble is not trained, but its validation
    /// loss is still reported beside its members').
    pub fn loss(&self, images: Tensor<4>, examples: &[Example]) -> Tensor<1> {
        let n = self.passes.len().max(1) as f32;
        (self.pass_logits(&images))
            .map(|(member, logits)| member.loss_of_logits(logits, examples, None))
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
    fn one_member_at_two_sides_averages_its_maps_over_scales() {
        let passes = vec![
            EnsemblePass {
                member: 0,
                side: 32,
            },
            EnsemblePass {
                member: 0,
                side: 64,
            },
        ];
        let config =
            EnsembleConfig::with_passes(vec![member(32)], passes, Decoding::LocalMean).unwrap();
        assert_eq!(config.input_size, 64);
        let ensemble = config.init(&Device::flex());
        assert_eq!(ensemble.members.len(), 1);
        let images = random_images(64);
        let at_64 = ensemble.members[0].heatmaps(images.clone());
        let at_32 = resized_probabilities(
            ensemble.members[0].heatmaps(resized(images.clone(), 32)),
            64,
        );
        let expected = values((at_64 + at_32).div_scalar(2.0));
        let together = values(ensemble.output(images).into_maps().unwrap());
        let gap = (expected.iter().zip(&together)).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(gap < 1e-6, "{gap}");

        let out_of_range = vec![EnsemblePass {
            member: 1,
            side: 32,
        }];
        let err = EnsembleConfig::with_passes(vec![member(32)], out_of_range, Decoding::LocalMean)
            .unwrap_err();
        assert!(err.contains("member 2 of 1"), "{err}");
    }

    #[test]
    fn probability_maps_resize_as_burns_bilinear_interpolation() {
        let maps = map_probabilities(random_images(24).repeat_dim(1, 3));
        for side in [32, 40, 17] {
            let expected =
                resized(maps.clone(), side).mul_scalar((24 * 24) as f32 / (side * side) as f32);
            let got = resized_probabilities(maps.clone(), side);
            assert_eq!(got.dims(), [2, 3, side, side]);
            let gap = (values(expected).iter().zip(values(got)))
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(gap < 1e-7, "side {side}: {gap}");
        }
    }

    #[test]
    fn an_ensemble_stored_before_passes_runs_each_member_at_its_side() {
        let config =
            EnsembleConfig::new(vec![member(32), member(64)], Decoding::LocalMean).unwrap();
        let mut stored = serde_json::to_value(&config).unwrap();
        stored.as_object_mut().unwrap().remove("passes");
        let read: EnsembleConfig = serde_json::from_value(stored).unwrap();
        assert!(read.passes.is_empty());
        assert_eq!(read.passes(), config.passes());
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
