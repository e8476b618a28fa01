//! The faces a model trains and validates on: one [`FaceSample`] per face (its photo, true points,
//! boxes and model-ready crop), split into training and validation, plus per-epoch sampling
//! (300-W faces are re-cropped from a jittered box every epoch, then augmented).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::GrayImage;
use rand::Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, sample_rng};
use crate::crop::{BoxJitter, CropConfig, CropTransform, crop_face};
use crate::data::imm;
use crate::data::{
    AnnotatedFace, DataError, Example, FaceBox, LabeledImage, Point, PointSource, load_gray,
    tight_box,
};
use crate::scheme::LandmarkScheme;

/// 300-W's training faces with the boxes dlib's HOG detector found (1883 of 2012), relative to the
/// data folder.
pub const DETECTOR_TRAIN_LABELS: &str = "ibug_300w/labels_300w_train_hogbox.xml";

/// Where a face-box task (300-W) finds its faces and how it crops them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaceDataConfig {
    /// Labels (dlib XML, or a folder of image + .pts pairs), relative to the data folder.
    pub labels: PathBuf,
    /// Share of the labelled faces held out for validation (a seeded shuffle).
    pub val_fraction: f32,
    pub crop: CropConfig,
    /// Random box changes before each training crop; `None` crops the given box.
    pub jitter: Option<BoxJitter>,
    /// Label files (relative to the data folder) whose boxes the training crops start from, matched
    /// to the faces of `labels` by image and position: each epoch a face is cropped from one of its
    /// boxes at random, and a face that none of them has is left out of training. Empty: the boxes
    /// of `labels`. Validation always uses the boxes of `labels`.
    pub training_boxes: Vec<PathBuf>,
    /// Subtracted from every label (photo pixels) before training on it, and added back to the
    /// predictions (the inference contract's `point_offset`): labels that sit off
    /// the mirror-symmetric position would otherwise disagree with their mirrored twins by twice
    /// this. `facemark calibrate` measures it.
    pub label_offset: Point,
}

impl Default for FaceDataConfig {
    fn default() -> Self {
        Self {
            labels: PathBuf::from("ibug_300w/labels_300w_train.xml"),
            val_fraction: 0.2,
            crop: CropConfig::default(),
            jitter: Some(BoxJitter::default()),
            training_boxes: Vec::new(),
            label_offset: [0.0, 0.0],
        }
    }
}

/// Which faces to load (see [`Dataset::load`]); made from a recipe by
/// `TrainConfig::data_source`.
pub enum DataSource<'a> {
    /// The IMM photos, whole: persons in `train_persons` train, the others validate.
    Imm {
        train_persons: [u32; 2],
        /// The IMM landmark indices kept, in this order.
        points: Vec<usize>,
        scheme: LandmarkScheme,
        input: (usize, usize),
    },
    /// Labelled faces cropped from their boxes, a seeded share held out for validation.
    Faces {
        config: &'a FaceDataConfig,
        seed: u64,
        /// The markup the labels must have; `None` measures it from the labels.
        scheme: Option<LandmarkScheme>,
    },
}

/// How a sample's model input sits in its photo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Frame {
    /// The whole photo, resized.
    Whole,
    /// A crop (see [`crate::crop`]).
    Crop(CropTransform),
}

/// One labelled face.
#[derive(Debug, Clone)]
pub struct FaceSample {
    /// The photo's file stem, with `#i` when the photo holds several faces.
    pub name: String,
    pub photo: PathBuf,
    /// The photo's `(width, height)`.
    pub photo_size: (u32, u32),
    /// The decoded photo, shared by its faces, for faces re-cropped every epoch (training
    /// face-box samples only).
    pub gray: Option<Arc<GrayImage>>,
    /// True landmarks in photo pixels.
    pub truth: Vec<Point>,
    /// Where `truth` was read from.
    pub source: PointSource,
    /// The box `example` was cropped from; `None` for whole photos.
    pub bbox: Option<FaceBox>,
    /// Boxes training crops start from, one drawn per epoch; empty means `bbox`.
    pub training_boxes: Vec<FaceBox>,
    /// The model-ready input with its points as fractions.
    pub example: Example,
    pub frame: Frame,
}

impl FaceSample {
    /// Maps points given as fractions of the model input to photo pixels.
    pub fn to_photo(&self, fractions: &[Point]) -> Vec<Point> {
        match self.frame {
            Frame::Whole => {
                let (w, h) = (self.photo_size.0 as f32, self.photo_size.1 as f32);
                fractions.iter().map(|p| [p[0] * w, p[1] * h]).collect()
            }
            Frame::Crop(transform) => {
                transform.fractions_to_image(fractions, self.example.width, self.example.height)
            }
        }
    }

    /// The model-ready input with its labels moved by `-offset` photo pixels (see
    /// [`FaceDataConfig::label_offset`]).
    pub fn example_with_labels_moved(&self, offset: Point) -> Example {
        if offset == [0.0, 0.0] {
            return self.example.clone();
        }
        Example {
            points: self.labels_moved(offset),
            ..self.example.clone()
        }
    }

    /// The labels as fractions of the input, moved by `-offset` photo pixels.
    pub fn labels_moved(&self, offset: Point) -> Vec<Point> {
        // One photo pixel is this fraction of the input across and down.
        let (per_px_x, per_px_y) = match self.frame {
            Frame::Whole => (
                1.0 / self.photo_size.0.max(1) as f32,
                1.0 / self.photo_size.1.max(1) as f32,
            ),
            Frame::Crop(transform) => (
                transform.scale / self.example.width.max(1) as f32,
                transform.scale / self.example.height.max(1) as f32,
            ),
        };
        self.example
            .points
            .iter()
            .map(|p| [p[0] - offset[0] * per_px_x, p[1] - offset[1] * per_px_y])
            .collect()
    }

    /// The diagonal of the face box (of the true points' tight box for whole photos): the
    /// normaliser of schemes that name none.
    pub fn box_diagonal(&self) -> f32 {
        self.bbox
            .or_else(|| tight_box(&self.truth))
            .map_or(0.0, |b| b.width.hypot(b.height))
    }
}

/// A task's faces, split.
pub struct Dataset {
    pub train: Vec<FaceSample>,
    pub val: Vec<FaceSample>,
    /// The markup of every face here.
    pub scheme: LandmarkScheme,
    /// The labelled validation images (face-box data), to re-crop them from other boxes.
    pub val_images: Vec<LabeledImage>,
}

/// What per-epoch sampling needs from a recipe.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub seed: u64,
    pub crop: CropConfig,
    pub jitter: Option<BoxJitter>,
    pub augment: Option<AugmentConfig>,
    /// The mirror permutation augmentation flips with, if it flips.
    pub mirror: Option<Vec<usize>>,
    /// Subtracted from the labels (photo pixels) before they become targets (see
    /// [`FaceDataConfig::label_offset`]).
    pub label_offset: Point,
}

/// Reads a label set: a dlib XML file, or a folder of image + `.pts` pairs. An XML face whose
/// image has a `.pts` file beside it that agrees with it takes the file's sub-pixel points (see
/// [`crate::data::pts::prefer_pts_points`]).
pub fn read_labels(path: &Path) -> Result<Vec<LabeledImage>, DataError> {
    if path.is_dir() {
        crate::data::pts::load_pts_folder(path)
    } else {
        let mut images = crate::data::dlib_xml::read_dlib_xml(path)?;
        crate::data::pts::prefer_pts_points(&mut images);
        Ok(images)
    }
}

/// How many faces' true points came from each source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// Faces whose points are the `.pts` files' sub-pixel coordinates.
    pub pts: usize,
    /// Faces whose points are the label file's own (dlib XML: whole pixels; IMM: .asf).
    pub labels: usize,
}

impl GroundTruth {
    /// Counts the sources of `samples`.
    pub fn of(samples: &[FaceSample]) -> Self {
        let pts = samples
            .iter()
            .filter(|s| s.source == PointSource::Pts)
            .count();
        Self {
            pts,
            labels: samples.len() - pts,
        }
    }

    /// `pts`, `labels` or `mixed`.
    pub fn name(&self) -> &'static str {
        match (self.pts, self.labels) {
            (_, 0) if self.pts > 0 => "pts",
            (0, _) => "labels",
            _ => "mixed",
        }
    }
}

/// The IMM folder inside the data folder (or the folder itself if it holds the `.asf` files).
pub fn imm_dir(data_root: &Path) -> PathBuf {
    let nested = data_root.join("imm_face_db");
    if nested.is_dir() {
        nested
    } else {
        data_root.to_owned()
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Dataset {
    /// Loads `source` from the data folder `data_root` (relative label paths are resolved there).
    pub fn load(source: DataSource, data_root: &Path) -> Result<Self, DataError> {
        match source {
            DataSource::Imm {
                train_persons,
                points,
                scheme,
                input,
            } => Self::load_imm(&imm_dir(data_root), train_persons, &points, scheme, input),
            DataSource::Faces {
                config,
                seed,
                scheme,
            } => {
                let labels_path = data_root.join(&config.labels);
                if !labels_path.exists() {
                    return Err(DataError::MissingDataSet(format!(
                        "labels not found at {}: 300-W expects the ibug_300w folder (face crops, \
                         .pts files and labels_300w_*.xml) in the data folder",
                        labels_path.display()
                    )));
                }
                let mut images = read_labels(&labels_path)?;
                images.shuffle(&mut sample_rng(seed, 0, usize::MAX - 1));
                let n_val = ((images.len() as f32) * config.val_fraction).round() as usize;
                let train_images = images.split_off(n_val.min(images.len()));
                let scheme = match scheme {
                    Some(scheme) => scheme,
                    None => measure_scheme(&labels_path, &train_images)?,
                };
                let mut data = Self::for_evaluation(&images, &config.crop, &scheme)?;
                data.val_images = images;
                data.train = crop_all(&train_images, &config.crop, &scheme, true)?;
                if !config.training_boxes.is_empty() {
                    let box_sets = config
                        .training_boxes
                        .iter()
                        .map(|path| read_labels(&data_root.join(path)))
                        .collect::<Result<Vec<_>, _>>()?;
                    data.use_training_boxes(&box_sets);
                }
                Ok(data)
            }
        }
    }

    fn load_imm(
        dir: &Path,
        [first, last]: [u32; 2],
        points: &[usize],
        scheme: LandmarkScheme,
        (w, h): (usize, usize),
    ) -> Result<Self, DataError> {
        let faces = imm::load_imm(dir)?;
        let (train, val) = imm::split_by_person(faces, &(first..=last));
        let samples = |faces: Vec<imm::ImmFace>| -> Result<Vec<FaceSample>, DataError> {
            faces
                .into_par_iter()
                .map(|face| {
                    let gray = load_gray(&face.image_path)?;
                    let truth: Vec<Point> = points.iter().map(|&i| face.points[i]).collect();
                    Ok(FaceSample {
                        name: face.name(),
                        photo_size: gray.dimensions(),
                        example: Example::from_gray(&gray, &truth, w, h),
                        photo: face.image_path,
                        gray: None,
                        truth,
                        source: PointSource::Labels,
                        bbox: None,
                        training_boxes: Vec::new(),
                        frame: Frame::Whole,
                    })
                })
                .collect()
        };
        Ok(Self {
            train: samples(train)?,
            val: samples(val)?,
            scheme,
            val_images: Vec::new(),
        })
    }

    /// Validation data made of every labelled face in `images`, which must all have the
    /// `scheme`'s point count (for `facemark eval --labels`).
    pub fn for_evaluation(
        images: &[LabeledImage],
        crop: &CropConfig,
        scheme: &LandmarkScheme,
    ) -> Result<Self, DataError> {
        Ok(Self {
            train: Vec::new(),
            val: crop_all(images, crop, scheme, false)?,
            scheme: scheme.clone(),
            val_images: Vec::new(),
        })
    }

    /// Replaces each training face's box by the matching boxes of `box_sets` and drops the faces
    /// that no set has a box for (see [`FaceDataConfig::training_boxes`]).
    fn use_training_boxes(&mut self, box_sets: &[Vec<LabeledImage>]) {
        let by_photo = boxes_by_photo(box_sets.iter().flatten());
        for sample in &mut self.train {
            sample.training_boxes = by_photo
                .get(sample.photo.as_path())
                .map(|boxes| boxes_around(boxes, &sample.truth))
                .unwrap_or_default();
        }
        self.train.retain(|s| !s.training_boxes.is_empty());
    }

    /// The validation faces cropped from the boxes of `boxes` instead (e.g. a detector's), matched
    /// by photo and position; faces it has no box for are left out.
    pub fn validation_with_boxes(
        &self,
        crop: &CropConfig,
        boxes: &[LabeledImage],
    ) -> Result<Self, DataError> {
        Self::for_evaluation(&self.validation_in_boxes(boxes), crop, &self.scheme)
    }

    /// The validation faces (photos and points) with the boxes of `boxes` instead, matched by
    /// photo and position; faces it has no box for are left out.
    pub fn validation_in_boxes(&self, boxes: &[LabeledImage]) -> Vec<LabeledImage> {
        let by_photo = boxes_by_photo(boxes);
        self.val_images
            .iter()
            .map(|image| LabeledImage {
                faces: image
                    .faces
                    .iter()
                    .filter_map(|face| {
                        let candidates = by_photo.get(image.image_path.as_path())?;
                        let bbox = *boxes_around(candidates, &face.points).first()?;
                        Some(AnnotatedFace {
                            bbox,
                            ..face.clone()
                        })
                    })
                    .collect(),
                ..image.clone()
            })
            .filter(|image| !image.faces.is_empty())
            .collect()
    }

    /// The model-ready validation inputs.
    pub fn val_examples(&self) -> Vec<Example> {
        self.val.iter().map(|s| s.example.clone()).collect()
    }

    /// The validation inputs with their labels moved as training moves them (for the
    /// validation loss; see [`FaceDataConfig::label_offset`]).
    pub fn val_targets(&self, sampling: &Sampling) -> Vec<Example> {
        self.val
            .iter()
            .map(|s| s.example_with_labels_moved(sampling.label_offset))
            .collect()
    }

    /// The mean training shape (fractions of the model input); `None` without training faces.
    pub fn mean_shape(&self) -> Option<Vec<Point>> {
        let first = self.train.first()?;
        let k = first.example.points.len();
        let mut mean = vec![[0.0f32; 2]; k];
        for s in &self.train {
            for (m, p) in mean.iter_mut().zip(&s.example.points) {
                m[0] += p[0];
                m[1] += p[1];
            }
        }
        let n = self.train.len() as f32;
        Some(mean.iter().map(|m| [m[0] / n, m[1] / n]).collect())
    }

    /// Training example `index` in `epoch`: re-cropped from a jittered box when the face was
    /// cropped from a box, then augmented if the recipe says so; reproducible from the seed.
    pub fn training_example(&self, sampling: &Sampling, index: usize, epoch: usize) -> Example {
        let mut rng = sample_rng(sampling.seed, epoch, index);
        let sample = &self.train[index];
        let base = match (&sample.gray, sample.bbox, &sampling.jitter) {
            (Some(gray), Some(bbox), Some(jitter)) => {
                let given = match sample.training_boxes.len() {
                    0 => bbox,
                    n => sample.training_boxes[rng.random_range(0..n)],
                };
                let jittered = jitter.apply(given, &mut rng);
                let [dx, dy] = sampling.label_offset;
                let labels: Vec<Point> = sample
                    .truth
                    .iter()
                    .map(|p| [p[0] - dx, p[1] - dy])
                    .collect();
                crop_face(gray, jittered, &labels, &sampling.crop).0
            }
            _ => sample.example_with_labels_moved(sampling.label_offset),
        };
        match &sampling.augment {
            Some(augment) => augment.apply(&base, sampling.mirror.as_deref(), &mut rng),
            None => base,
        }
    }

    /// The training examples of one batch, re-cropped and augmented (in parallel).
    pub fn training_batch(
        &self,
        sampling: &Sampling,
        indices: &[usize],
        epoch: usize,
    ) -> Vec<Example> {
        indices
            .par_iter()
            .map(|&i| self.training_example(sampling, i, epoch))
            .collect()
    }
}

/// The scheme of labels that bring their own markup: every face must have the same point count;
/// mirror pairs are derived from the mean shape in box-relative coordinates.
fn measure_scheme(path: &Path, images: &[LabeledImage]) -> Result<LandmarkScheme, DataError> {
    let faces: Vec<&AnnotatedFace> = images.iter().flat_map(|i| &i.faces).collect();
    let Some(first) = faces.first() else {
        return Err(DataError::Malformed {
            path: path.to_owned(),
            reason: "no labelled faces to train on".into(),
        });
    };
    let k = first.points.len();
    if let Some(image) = images
        .iter()
        .find(|i| i.faces.iter().any(|f| f.points.len() != k))
    {
        return Err(DataError::Malformed {
            path: image.image_path.clone(),
            reason: format!("its faces do not all have the {k} points of the other faces"),
        });
    }
    let mut mean = vec![[0.0f32; 2]; k];
    for face in &faces {
        let b = face.bbox;
        let side = b.width.max(b.height).max(1e-6);
        for (m, p) in mean.iter_mut().zip(&face.points) {
            m[0] += (p[0] - b.left) / side / faces.len() as f32;
            m[1] += (p[1] - b.top) / side / faces.len() as f32;
        }
    }
    Ok(LandmarkScheme::for_labels(k, &mean))
}

/// Every face box of `images`, by photo.
fn boxes_by_photo<'a>(
    images: impl IntoIterator<Item = &'a LabeledImage>,
) -> HashMap<&'a Path, Vec<FaceBox>> {
    let mut by_photo: HashMap<&Path, Vec<FaceBox>> = HashMap::new();
    for image in images {
        let boxes = by_photo.entry(image.image_path.as_path()).or_default();
        boxes.extend(image.faces.iter().map(|face| face.bbox));
    }
    by_photo
}

/// The boxes among `boxes` that hold the centre of `points` (the same face, when a photo shows
/// several).
fn boxes_around(boxes: &[FaceBox], points: &[Point]) -> Vec<FaceBox> {
    let n = points.len().max(1) as f32;
    let cx = points.iter().map(|p| p[0]).sum::<f32>() / n;
    let cy = points.iter().map(|p| p[1]).sum::<f32>() / n;
    boxes
        .iter()
        .filter(|b| {
            (b.left..b.left + b.width).contains(&cx) && (b.top..b.top + b.height).contains(&cy)
        })
        .copied()
        .collect()
}

/// Faces labelled in another markup than `scheme` are refused by name rather than mis-scored.
fn require_scheme(image: &LabeledImage, scheme: &LandmarkScheme) -> Result<(), DataError> {
    match image
        .faces
        .iter()
        .position(|face| face.points.len() != scheme.points)
    {
        Some(i) => Err(DataError::Malformed {
            path: image.image_path.clone(),
            reason: format!(
                "face {} is labelled with {} points; the model's {} markup has {}",
                i + 1,
                image.faces[i].points.len(),
                scheme.name,
                scheme.points
            ),
        }),
        None => Ok(()),
    }
}

/// Decodes each image once (in parallel) and crops every face in it; `keep_photo` keeps the
/// decoded photo for re-cropping.
fn crop_all(
    images: &[LabeledImage],
    crop: &CropConfig,
    scheme: &LandmarkScheme,
    keep_photo: bool,
) -> Result<Vec<FaceSample>, DataError> {
    let per_image: Vec<Vec<FaceSample>> = images
        .par_iter()
        .map(|image| {
            require_scheme(image, scheme)?;
            let gray = Arc::new(load_gray(&image.image_path)?);
            let name = file_stem(&image.image_path);
            Ok(image
                .faces
                .iter()
                .enumerate()
                .map(|(i, face)| {
                    let (example, transform) = crop_face(&gray, face.bbox, &face.points, crop);
                    FaceSample {
                        name: if image.faces.len() > 1 {
                            format!("{name}#{i}")
                        } else {
                            name.clone()
                        },
                        photo: image.image_path.clone(),
                        photo_size: gray.dimensions(),
                        gray: keep_photo.then(|| Arc::clone(&gray)),
                        truth: face.points.clone(),
                        source: face.source,
                        bbox: Some(face.bbox),
                        training_boxes: Vec::new(),
                        example,
                        frame: Frame::Crop(transform),
                    }
                })
                .collect())
        })
        .collect::<Result<_, DataError>>()?;
    Ok(per_image.into_iter().flatten().collect())
}
