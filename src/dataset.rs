//! The data a task trains and validates on: model-ready examples split into training and
//! validation, plus what per-epoch sampling needs (decoded photos and boxes, so 300-W faces can be
//! re-cropped from a jittered box every epoch).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::GrayImage;
use rand::Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::sample_rng;
use crate::crop::{BoxJitter, CropConfig, CropTransform, crop_face};
use crate::data::ibug::IBUG_POINTS;
use crate::data::images::scale_points;
use crate::data::imm::{self, IMM_IMAGE_SIZE};
use crate::data::{AnnotatedFace, DataError, Example, FaceBox, LabeledImage, Point, load_gray};
use crate::train::{Task, TrainConfig};

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
}

impl Default for FaceDataConfig {
    fn default() -> Self {
        Self {
            labels: PathBuf::from("ibug_300w/labels_300w_train.xml"),
            val_fraction: 0.2,
            crop: CropConfig::default(),
            jitter: Some(BoxJitter::default()),
            training_boxes: Vec::new(),
        }
    }
}

/// A training face kept whole, to be cropped anew each epoch.
pub struct FaceSource {
    /// The decoded photo, shared by all faces in it.
    pub gray: Arc<GrayImage>,
    pub face: AnnotatedFace,
    /// The photo's file, to match boxes from other label files.
    pub photo: PathBuf,
    /// Boxes to crop from, one chosen per epoch; empty means `face.bbox`.
    pub boxes: Vec<FaceBox>,
}

/// A task's data, split and ready for the network.
#[derive(Default)]
pub struct TaskData {
    /// Training examples as cropped from the given boxes (IMM: the whole photo).
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub train_names: Vec<String>,
    pub val_names: Vec<String>,
    /// Training faces to re-crop per epoch (face-box tasks); empty for IMM.
    pub train_sources: Vec<FaceSource>,
    /// How each validation crop maps back to its photo; empty for IMM (whole photos).
    pub val_transforms: Vec<CropTransform>,
    /// The training photos' files, for the decoding benchmark.
    pub train_photos: Vec<PathBuf>,
    /// The labelled validation images (face-box tasks), to re-crop them from other boxes.
    pub val_images: Vec<LabeledImage>,
}

/// Reads a label set: a dlib XML file, or a folder of image + `.pts` pairs.
pub fn read_labels(path: &Path) -> Result<Vec<LabeledImage>, DataError> {
    if path.is_dir() {
        crate::data::pts::load_pts_folder(path)
    } else {
        crate::data::dlib_xml::read_dlib_xml(path)
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

impl TaskData {
    /// Loads `config`'s task from the data folder `data_root`.
    pub fn load(config: &TrainConfig, data_root: &Path) -> Result<Self, DataError> {
        match config.task {
            Task::Nose | Task::Imm58 => Self::load_imm(config, &imm_dir(data_root)),
            Task::Ibug68 | Task::Heatmap => {
                let labels_path = data_root.join(&config.faces.labels);
                if !labels_path.exists() {
                    return Err(DataError::MissingDataSet(format!(
                        "300-W labels not found at {}: expected the ibug_300w folder (face crops, .pts \
                         files and labels_300w_*.xml) in the data folder given by --data or FACEMARK_DATA",
                        labels_path.display()
                    )));
                }
                let mut images = read_labels(&labels_path)?;
                images.shuffle(&mut sample_rng(config.seed, 0, usize::MAX - 1));
                let n_val = ((images.len() as f32) * config.faces.val_fraction).round() as usize;
                let train_images = images.split_off(n_val);
                let mut data = Self::faces_for_validation(config, &images)?;
                data.val_images = images;
                data.add_training_faces(config, &train_images)?;
                if !config.faces.training_boxes.is_empty() {
                    let box_sets = config
                        .faces
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

    fn load_imm(config: &TrainConfig, dir: &Path) -> Result<Self, DataError> {
        let faces = imm::load_imm(dir)?;
        let [first, last] = config.train_persons;
        let (train_faces, val_faces) = imm::split_by_person(faces, &(first..=last));
        let points = config.task.point_indices();
        let (w, h) = config.model.input_size();
        Ok(Self {
            train: imm::examples(&train_faces, &points, w, h)?,
            val: imm::examples(&val_faces, &points, w, h)?,
            train_names: train_faces.iter().map(|f| f.name()).collect(),
            val_names: val_faces.iter().map(|f| f.name()).collect(),
            train_photos: train_faces.into_iter().map(|f| f.image_path).collect(),
            ..Self::default()
        })
    }

    /// Validation data made of every labelled face in `images` (for `facemark eval --labels`).
    pub fn faces_for_validation(
        config: &TrainConfig,
        images: &[LabeledImage],
    ) -> Result<Self, DataError> {
        let crops = crop_all(images, &config.faces.crop)?;
        let mut data = Self::default();
        for (name, _, example, transform) in crops {
            data.val_names.push(name);
            data.val.push(example);
            data.val_transforms.push(transform);
        }
        Ok(data)
    }

    fn add_training_faces(
        &mut self,
        config: &TrainConfig,
        images: &[LabeledImage],
    ) -> Result<(), DataError> {
        for (name, source, example, _) in crop_all(images, &config.faces.crop)? {
            self.train_names.push(name);
            self.train.push(example);
            self.train_sources.push(source);
        }
        self.train_photos = images.iter().map(|i| i.image_path.clone()).collect();
        Ok(())
    }

    /// Replaces each training face's box by the matching boxes of `box_sets` and drops the faces
    /// that no set has a box for (see [`FaceDataConfig::training_boxes`]).
    fn use_training_boxes(&mut self, box_sets: &[Vec<LabeledImage>]) {
        let by_photo = boxes_by_photo(box_sets.iter().flatten());
        for source in &mut self.train_sources {
            source.boxes = by_photo
                .get(source.photo.as_path())
                .map(|boxes| boxes_around(boxes, &source.face.points))
                .unwrap_or_default();
        }
        let keep: Vec<bool> = self
            .train_sources
            .iter()
            .map(|s| !s.boxes.is_empty())
            .collect();
        retain_where(&mut self.train_sources, &keep);
        retain_where(&mut self.train, &keep);
        retain_where(&mut self.train_names, &keep);
    }

    /// The validation faces cropped from the boxes of `boxes` instead (e.g. a detector's), matched
    /// by photo and position; faces it has no box for are left out.
    pub fn validation_with_boxes(
        &self,
        config: &TrainConfig,
        boxes: &[LabeledImage],
    ) -> Result<Self, DataError> {
        let by_photo = boxes_by_photo(boxes);
        let images: Vec<LabeledImage> = self
            .val_images
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
                            points: face.points.clone(),
                        })
                    })
                    .collect(),
                ..image.clone()
            })
            .filter(|image| !image.faces.is_empty())
            .collect();
        Self::faces_for_validation(config, &images)
    }

    /// The validation truth in pixels of the original photos.
    pub fn val_truth_px(&self) -> Vec<Vec<Point>> {
        self.val_predictions_px(
            &self
                .val
                .iter()
                .map(|e| e.points.clone())
                .collect::<Vec<_>>(),
        )
    }

    /// Maps predictions for the validation examples (fractions of the model input) to photo pixels.
    pub fn val_predictions_px(&self, predicted: &[Vec<Point>]) -> Vec<Vec<Point>> {
        if self.val_transforms.is_empty() {
            let (w, h) = (IMM_IMAGE_SIZE.0 as f32, IMM_IMAGE_SIZE.1 as f32);
            return predicted.iter().map(|p| scale_points(p, w, h)).collect();
        }
        predicted
            .iter()
            .zip(&self.val_transforms)
            .zip(&self.val)
            .map(|((p, t), e)| {
                scale_points(p, e.width as f32, e.height as f32)
                    .into_iter()
                    .map(|q| t.to_image(q))
                    .collect()
            })
            .collect()
    }

    /// A training example for `index` in `epoch`: re-cropped from a jittered box when the task
    /// crops faces, then augmented if the recipe says so.
    pub fn training_example(&self, config: &TrainConfig, index: usize, epoch: usize) -> Example {
        let mut rng = sample_rng(config.seed, epoch, index);
        let base = match (self.train_sources.get(index), &config.faces.jitter) {
            (Some(source), Some(jitter)) => {
                let given = match source.boxes.len() {
                    0 => source.face.bbox,
                    n => source.boxes[rng.random_range(0..n)],
                };
                let bbox = jitter.apply(given, &mut rng);
                crop_face(&source.gray, bbox, &source.face.points, &config.faces.crop).0
            }
            _ => self.train[index].clone(),
        };
        match &config.augment {
            Some(augment) => augment.apply(&base, &mut rng),
            None => base,
        }
    }
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

/// Keeps the items whose flag is set.
fn retain_where<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    items.retain(|_| flags.next().copied().unwrap_or(false));
}

/// The face-box tasks' metrics and mirroring assume the 68-point iBUG scheme: other markups are
/// refused by name rather than mis-scored.
fn require_ibug_points(image: &LabeledImage) -> Result<(), DataError> {
    match image
        .faces
        .iter()
        .position(|face| face.points.len() != IBUG_POINTS)
    {
        Some(i) => Err(DataError::Malformed {
            path: image.image_path.clone(),
            reason: format!(
                "face {} is labelled with {} points; 300-W models need the 68-point iBUG scheme",
                i + 1,
                image.faces[i].points.len()
            ),
        }),
        None => Ok(()),
    }
}

/// Decodes each image once (in parallel) and crops every face in it.
fn crop_all(
    images: &[LabeledImage],
    crop: &CropConfig,
) -> Result<Vec<(String, FaceSource, Example, CropTransform)>, DataError> {
    let per_image: Vec<Vec<_>> = images
        .par_iter()
        .map(|image| {
            require_ibug_points(image)?;
            let gray = Arc::new(load_gray(&image.image_path)?);
            let name = file_stem(&image.image_path);
            Ok(image
                .faces
                .iter()
                .enumerate()
                .map(|(i, face)| {
                    let (example, transform) = crop_face(&gray, face.bbox, &face.points, crop);
                    let label = if image.faces.len() > 1 {
                        format!("{name}#{i}")
                    } else {
                        name.clone()
                    };
                    let source = FaceSource {
                        gray: Arc::clone(&gray),
                        face: face.clone(),
                        photo: image.image_path.clone(),
                        boxes: Vec::new(),
                    };
                    (label, source, example, transform)
                })
                .collect())
        })
        .collect::<Result<_, DataError>>()?;
    Ok(per_image.into_iter().flatten().collect())
}
