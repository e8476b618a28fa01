//! Knowledge distillation: a trained heatmap model (the teacher) draws its probability maps of
//! each training batch, and the student's targets mix them with the truth's maps
//! ([`crate::recipe::Distillation`]).
//!
//! The teacher sees the student's own augmented crops, drawn again at its input side (the same
//! box jitter and augmentation draws, which are fractions of the crop), and its maps are resized
//! to the student's side: its maps and the truth describe the same image, which the teacher sees
//! at the resolution it was trained at.
//!
//! Its validation faces must include the student's: a teacher that trained on them would pass
//! what it learnt of them on to the student, and the student's validation would flatter it.

use burn::prelude::*;

use crate::batch::images_tensor;
use crate::crop::CropConfig;
use crate::data::Example;
use crate::dataset::Sampling;
use crate::model::ensemble::resized_probabilities;
use crate::model::{Ensemble, EnsembleConfig, KeypointNet, ModelConfig};
use crate::recipe::{Distillation, TrainConfig};
use crate::run::{RunError, load_trained};

/// A trained heatmap model ready to draw maps for a student's training batches.
pub struct Teacher {
    /// The teacher as an ensemble (of itself alone, or its own members): an ensemble draws maps
    /// at whatever side its input has.
    net: Ensemble,
    /// The landmark mirror permutation (as a tensor index) when the teacher averages its maps
    /// with those of the mirrored image, as its inference contract does for its points.
    mirror: Option<Tensor<1, Int>>,
    /// The input side the teacher was trained at (its largest member's).
    side: usize,
    /// Share of each target taken from the teacher.
    pub weight: f32,
    device: Device,
}

impl Teacher {
    /// Loads `distill`'s teacher and checks that `student` can learn from it: the same
    /// landmarks and crop, and none of the student's validation faces among its training faces.
    pub fn load(distill: &Distillation, student: &TrainConfig) -> Result<Self, RunError> {
        let device = crate::backend::device();
        let loaded = load_trained(&distill.teacher, &device)?;
        let invalid = |reason: String| RunError::Invalid {
            path: loaded.source.clone(),
            reason: format!("teacher {}: {reason}", distill.teacher),
        };
        let side = loaded.contract.input_width;
        let net = match (&loaded.config.model, loaded.net.clone()) {
            (ModelConfig::Heatmap(config), KeypointNet::Heatmap(net)) => {
                let alone =
                    EnsembleConfig::new(vec![config.clone()], config.decoding).map_err(invalid)?;
                Ensemble::from_members(vec![net], &alone, &device)
            }
            (ModelConfig::Ensemble(_), KeypointNet::Ensemble(net)) => net,
            (config, _) => {
                return Err(invalid(format!(
                    "a teacher must be a heatmap model, not {}",
                    config.family_name()
                )));
            }
        };
        let (t, s) = (&loaded.config, student);
        if t.scheme() != s.scheme() {
            return Err(invalid(format!(
                "it predicts {} points of the {} markup, the student {} of {}",
                t.scheme().points,
                t.scheme().name,
                s.scheme().points,
                s.scheme().name
            )));
        }
        if t.faces.crop.enlarge != s.faces.crop.enlarge {
            return Err(invalid(format!(
                "it crops faces enlarged {} times, the student {} times",
                t.faces.crop.enlarge, s.faces.crop.enlarge
            )));
        }
        // Both splits hold out the first faces of the same seeded shuffle: the teacher's
        // held-out faces include the student's when its share is at least as large.
        let holds_out_students_faces =
            t.shares_validation_shuffle(s) && t.faces.val_fraction >= s.faces.val_fraction;
        if !holds_out_students_faces {
            return Err(invalid(format!(
                "it trained on faces the student validates on (its split: {} held out of {} \
                 with seed {}; the student's: {} of {} with seed {}); train the student with a \
                 validation share no larger than the teacher's, on the same labels and seed",
                t.faces.val_fraction,
                t.faces.labels.display(),
                t.seed,
                s.faces.val_fraction,
                s.faces.labels.display(),
                s.seed
            )));
        }
        let mirror = t
            .scheme()
            .mirror
            .filter(|_| loaded.contract.mirror_average)
            .map(|partners| {
                let n = partners.len();
                let partners: Vec<i64> = partners.into_iter().map(|p| p as i64).collect();
                Tensor::<1, Int>::from_data(TensorData::new(partners, [n]), &device)
            });
        Ok(Self {
            net: net.fold_batch_norm(),
            mirror,
            side,
            weight: distill.weight,
            device,
        })
    }

    /// How the teacher's view of a training batch is drawn: the student's `sampling` at the
    /// teacher's input side.
    pub fn sampling(&self, student: &Sampling) -> Sampling {
        Sampling {
            crop: CropConfig {
                size: self.side,
                ..student.crop.clone()
            },
            ..student.clone()
        }
    }

    /// The teacher's probability maps of `examples` (any square side), `[batch, K, side, side]`,
    /// on `device`.
    pub fn maps(&self, examples: &[Example], side: usize, device: &Device) -> Tensor<4> {
        let images = images_tensor(examples, &self.device);
        let maps = match &self.mirror {
            Some(partners) => {
                // Landmark k of the image is its partner's map in the mirrored image, flipped back.
                let mirrored = self.net.probabilities(images.clone().flip([3])).flip([3]);
                (self.net.probabilities(images) + mirrored.select(1, partners.clone()))
                    .div_scalar(2.0)
            }
            None => self.net.probabilities(images),
        };
        Tensor::from_data(resized_probabilities(maps, side).into_data(), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Task;

    /// The best heatmap recipe at face68-fast's side, learning from it at `weight`.
    fn student_of_face68_fast(val_fraction: f32) -> TrainConfig {
        let mut student = TrainConfig::best(Task::Heatmap);
        student.set_input_size(80);
        student.faces.val_fraction = val_fraction;
        student.distill = Some(Distillation {
            teacher: "face68-fast".into(),
            weight: 0.5,
        });
        student
    }

    /// The share of the training faces the shipped face68-fast held out.
    fn face68_fast_share() -> f32 {
        let config: TrainConfig =
            crate::run::read_json(&crate::run::models_dir().join("face68-fast/config.json"))
                .unwrap();
        config.faces.val_fraction
    }

    #[test]
    fn a_teacher_that_trained_on_the_students_validation_faces_is_refused() {
        // A student holding out the teacher's share or less validates on a subset of the
        // teacher's held-out faces; one holding out more also on faces the teacher trained on.
        let share = face68_fast_share();
        let student = student_of_face68_fast(share);
        Teacher::load(student.distill.as_ref().unwrap(), &student).unwrap();
        let student = student_of_face68_fast(share + 0.05);
        let err = Teacher::load(student.distill.as_ref().unwrap(), &student)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("validates on"), "{err}");

        let mut other_seed = student_of_face68_fast(share);
        other_seed.seed += 1;
        assert!(Teacher::load(other_seed.distill.as_ref().unwrap(), &other_seed).is_err());
    }

    #[test]
    fn only_heatmap_models_teach() {
        let student = Distillation {
            teacher: "ibug68".into(),
            weight: 0.5,
        };
        let err = Teacher::load(&student, &student_of_face68_fast(face68_fast_share()))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("must be a heatmap model"), "{err}");
    }

    #[test]
    fn a_teachers_maps_are_probability_maps_at_the_students_side() {
        let student = student_of_face68_fast(face68_fast_share());
        let teacher = Teacher::load(student.distill.as_ref().unwrap(), &student).unwrap();
        // A synthetic face-like crop: the maps' shape and mass do not depend on the picture.
        let side = 80;
        let pixels: Vec<f32> = (0..side * side)
            .map(|i| ((i % side) as f32 / side as f32 - 0.5).abs())
            .collect();
        let example = Example {
            pixels,
            width: side,
            height: side,
            points: vec![[0.5, 0.5]; 68],
        };
        let device = crate::backend::device();
        let maps = teacher.maps(&[example.clone(), example], 48, &device);
        assert_eq!(maps.dims(), [2, 68, 48, 48]);
        let sums: Vec<f32> = maps.sum_dim(3).sum_dim(2).into_data().try_to_vec().unwrap();
        // Bilinear resizing keeps each map's mass to within a few per cent (spread maps lose
        // or gain some at the borders).
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 3e-2), "{sums:?}");
        assert!(
            teacher.mirror.is_some(),
            "face68-fast averages over mirror images"
        );
    }
}
