//! The inference contract: what a trained model needs besides its weights to turn a photo into
//! points. It is written beside the weights of every run and shipped model (`inference.json`), so
//! any caller (the CLI, the library, bindings) reproduces the model's test-time behaviour from it
//! alone: which part of the photo the network sees and at what size, how pixels are scaled, which
//! landmark scheme comes out, whether predictions are averaged with the mirrored face, and how
//! maps are decoded.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::batch::images_tensor;
use crate::crop::CropConfig;
use crate::data::{Example, Point};
use crate::decode::Decoding;
use crate::model::KeypointNet;
use crate::scheme::LandmarkScheme;

/// Which part of a photo the network sees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputFrame {
    /// The whole photo, resized to the input (the IMM models).
    WholeImage,
    /// A square around a face box, its side `enlarge` times the box's longer side, resized to the
    /// input; what lies outside the photo is filled with the photo's mean grey.
    FaceCrop { enlarge: f32 },
}

/// How 8-bit grey values become network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelScale {
    /// `v / 255 - 0.5`, so inputs lie in `[-0.5, 0.5]` (any per-image standardisation happens
    /// inside the network).
    #[default]
    UnitCentred,
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceContract {
    pub input_width: usize,
    pub input_height: usize,
    pub frame: InputFrame,
    pub pixels: PixelScale,
    pub scheme: LandmarkScheme,
    /// Average each prediction with that on the mirrored input (needs the scheme's mirror pairs).
    pub mirror_average: bool,
    /// How heatmaps become points (regression networks ignore it).
    pub decoding: Decoding,
    /// Added to every predicted point, in photo pixels: how far the labels sit from where a model
    /// trained on mirrored faces puts them. Mirroring teaches a net the position halfway between
    /// a label and its mirrored twin's, so labels that are not mirror-symmetric to the pixel
    /// (300-W's sit ~0.8 px right of it) leave a constant error that this gives back. Measured
    /// on the training faces (`facemark calibrate`); zero in contracts from before it.
    #[serde(default)]
    pub point_offset: Point,
}

impl InferenceContract {
    /// The crop settings of a face-box model; `None` for whole-image models.
    pub fn crop(&self) -> Option<CropConfig> {
        match self.frame {
            InputFrame::FaceCrop { enlarge } => Some(CropConfig {
                enlarge,
                size: self.input_width,
            }),
            InputFrame::WholeImage => None,
        }
    }

    /// Whether the model needs a face box (rather than the whole photo).
    pub fn needs_face_box(&self) -> bool {
        matches!(self.frame, InputFrame::FaceCrop { .. })
    }

    /// The mirror permutation used for test-time averaging, if any.
    pub fn mirror(&self) -> Option<&[usize]> {
        self.scheme
            .mirror
            .as_deref()
            .filter(|_| self.mirror_average)
    }

    /// `points` (photo pixels, as the network placed them) moved by [`Self::point_offset`].
    pub fn offset_points(&self, points: Vec<Point>) -> Vec<Point> {
        let [dx, dy] = self.point_offset;
        points.into_iter().map(|[x, y]| [x + dx, y + dy]).collect()
    }

    /// Runs `net` (validation mode) over model-ready `examples` in batches and returns each one's
    /// points as fractions of the input: forward, decode and, when the contract says so, the
    /// average with the prediction on the mirrored input.
    pub fn predict(
        &self,
        net: &KeypointNet,
        examples: &[Example],
        device: &Device,
    ) -> Vec<Vec<Point>> {
        predict_examples(net, examples, device, self.decoding, self.mirror())
    }
}

/// Like [`InferenceContract::predict`], with the decoding and mirror permutation given.
pub fn predict_examples(
    net: &KeypointNet,
    examples: &[Example],
    device: &Device,
    decoding: Decoding,
    mirror: Option<&[usize]>,
) -> Vec<Vec<Point>> {
    let Some(mirror) = mirror else {
        return forward_points(net, examples, device, decoding);
    };
    let points = if let [face] = examples {
        // A single face: it and its mirror image as two passes side by side, one per thread,
        // each with no hand-over between threads inside it (one face's layers are too small
        // for their products to split well over two threads).
        let (direct, mirrored) = rayon::join(
            || forward_points(net, examples, device, decoding),
            || forward_points(net, &[mirror_example(face)], device, decoding),
        );
        direct.into_iter().chain(mirrored).collect()
    } else {
        // Each face and its mirror image in the same batch: one forward pass instead of two.
        let both: Vec<Example> = examples
            .iter()
            .flat_map(|e| [e.clone(), mirror_example(e)])
            .collect();
        forward_points(net, &both, device, decoding)
    };
    points
        .chunks(2)
        .map(|pair| {
            let (d, m) = (&pair[0], &pair[1]);
            d.iter()
                .zip(mirror)
                .map(|(p, &partner)| {
                    let q = m[partner];
                    [(p[0] + 1.0 - q[0]) / 2.0, (p[1] + q[1]) / 2.0]
                })
                .collect()
        })
        .collect()
}

/// Points (fractions) of every example, in batches of 32.
fn forward_points(
    net: &KeypointNet,
    examples: &[Example],
    device: &Device,
    decoding: Decoding,
) -> Vec<Vec<Point>> {
    // On one of rayon's threads: the kernels' parallel loops then start from inside the pool,
    // where idle threads steal work, instead of each loop being handed over from outside it and
    // waited for (a wake-up and a sleep per loop, for a single face a tenth of its time).
    rayon::scope(|_| {
        examples
            .chunks(32)
            .flat_map(|chunk| {
                net.forward(images_tensor(chunk, device))
                    .into_point_lists(decoding)
            })
            .collect()
    })
}

/// The example's image mirrored left-right (points are left as they are).
fn mirror_example(example: &Example) -> Example {
    let mut pixels = example.pixels.clone();
    for row in pixels.chunks_mut(example.width.max(1)) {
        row.reverse();
    }
    Example {
        pixels,
        ..example.clone()
    }
}
