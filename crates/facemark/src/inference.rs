//! Running a trained model on new photos, as its inference contract says, and writing the
//! predictions (JSON, CSV, .pts, dlib XML, overlays).

use std::path::{Path, PathBuf};

use burn::module::Module;
use image::{GrayImage, Rgb};
use imageproc::drawing::draw_filled_circle_mut;
use serde::Serialize;

use crate::crop::crop_face;
use crate::data::images::load_photo;
use crate::data::images::scale_points;
use crate::data::{AnnotatedFace, DataError, Example, FaceBox, LabeledImage, Point, tight_box};
use crate::detect::{Detection, DetectorConfig, FaceDetector};
use crate::run::{LoadedModel, RunError, load_trained_in, models_dir};

/// A model loaded for inference on the inference device.
pub struct Predictor {
    pub model: LoadedModel,
    device: burn::tensor::Device,
}

/// The landmarks found in one face of an image, in that image's pixel coordinates (continuous:
/// pixel `i` covers `[i, i + 1)`).
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
    /// The face box `[left, top, width, height]` the points were found in (face-box models): the
    /// given box, or the detector's.
    pub bbox: Option<[f32; 4]>,
    /// The detector's score, when the face was found by the detector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub points: Vec<Point>,
}

impl Predictor {
    /// Loads `--model NAME_OR_DIR` (see [`crate::run::load_trained`]).
    pub fn load(name_or_dir: &str) -> Result<Self, RunError> {
        Self::load_in(name_or_dir, &models_dir())
    }

    /// [`Predictor::load`] with shipped models looked up in `models`.
    pub fn load_in(name_or_dir: &str, models: &Path) -> Result<Self, RunError> {
        let device = crate::backend::device();
        let mut model = load_trained_in(name_or_dir, models, &device)?;
        model.net = model.net.valid().fold_batch_norm();
        Ok(Self { model, device })
    }

    /// A predictor for a network in memory (validation mode is set here), with its recipe's
    /// contract.
    pub fn new(config: crate::recipe::TrainConfig, net: crate::model::KeypointNet) -> Self {
        let contract = config.contract();
        let model = LoadedModel {
            config,
            contract,
            net: net.valid().fold_batch_norm(),
            source: PathBuf::from("(in memory)"),
        };
        Self {
            model,
            device: crate::backend::device(),
        }
    }

    /// Whether the model works on a face box (300-W models) rather than the whole photo (IMM).
    pub fn needs_face_box(&self) -> bool {
        self.model.contract.needs_face_box()
    }

    /// Points (fractions of the input) of model-ready examples, in one batched pass.
    fn predict_examples(&self, examples: &[Example]) -> Vec<Vec<Point>> {
        self.model
            .contract
            .predict(&self.model.net, examples, &self.device)
    }

    /// [`Predictor::predict_gray`] and then `refine` more passes, each from the tight box of the
    /// points the pass before found (for a face-box model); the reported boxes stay `boxes`.
    pub fn predict_refined(
        &self,
        gray: &GrayImage,
        boxes: &[FaceBox],
        source: &Path,
        refine: usize,
    ) -> Vec<Prediction> {
        let mut predictions = self.predict_gray(gray, boxes, source);
        if !self.needs_face_box() {
            return predictions;
        }
        for _ in 0..refine {
            let own_boxes: Vec<FaceBox> = predictions
                .iter()
                .zip(boxes)
                .map(|(p, given)| tight_box(&p.points).unwrap_or(*given))
                .collect();
            predictions = self.predict_gray(gray, &own_boxes, source);
        }
        predictions
            .into_iter()
            .zip(boxes)
            .map(|(p, b)| Prediction {
                bbox: Some([b.left, b.top, b.width, b.height]),
                ..p
            })
            .collect()
    }

    /// Finds the landmarks in a decoded grey image (all its faces in one batched pass); `source`
    /// names it in the predictions.
    pub fn predict_gray(
        &self,
        gray: &GrayImage,
        boxes: &[FaceBox],
        source: &Path,
    ) -> Vec<Prediction> {
        let prediction = |bbox: Option<&FaceBox>, points| Prediction {
            image: source.to_owned(),
            width: gray.width(),
            height: gray.height(),
            bbox: bbox.map(|b| [b.left, b.top, b.width, b.height]),
            score: None,
            points,
        };
        let contract = &self.model.contract;
        let Some(crop) = contract.crop() else {
            let (w, h) = (contract.input_width, contract.input_height);
            let example = Example::from_gray(gray, &[], w, h);
            let fractions = self.predict_examples(&[example]).pop().unwrap_or_default();
            let points = scale_points(&fractions, gray.width() as f32, gray.height() as f32);
            return vec![prediction(None, contract.offset_points(points))];
        };
        let (examples, transforms): (Vec<Example>, Vec<_>) = boxes
            .iter()
            .map(|bbox| crop_face(gray, *bbox, &[], &crop))
            .unzip();
        let fractions = self.predict_examples(&examples);
        boxes
            .iter()
            .zip(&examples)
            .zip(transforms.iter().zip(fractions))
            .map(|((bbox, example), (transform, fractions))| {
                let points =
                    transform.fractions_to_image(&fractions, example.width, example.height);
                prediction(Some(bbox), contract.offset_points(points))
            })
            .collect()
    }
}

/// Refuses a box that cannot be a face in `gray` (not finite, empty, outside the photo or far
/// larger than it), naming the box and the photo.
pub fn check_boxes(gray: &GrayImage, boxes: &[FaceBox], source: &Path) -> Result<(), DataError> {
    for b in boxes {
        b.validate(gray.width(), gray.height())
            .map_err(|e| DataError::Malformed {
                path: source.to_owned(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// The whole-photo pipeline: the face detector finds every face (unless boxes are given), the
/// landmark model finds its points; with `refine`, the points found in the box give a tight
/// landmark box (the kind of box the 300-W models were trained on) and the model looks again
/// from there. A detector's or a user's box frames a face differently from those the model
/// learned from; its own landmark box does not.
pub struct FacePipeline {
    pub detector: FaceDetector,
    pub landmarker: Predictor,
    /// Passes after the first, each from the previous pass's landmark box (0: the box only).
    pub refine: usize,
}

impl FacePipeline {
    /// A pipeline around a face-box landmark model (run directory or shipped name).
    pub fn load(model: &str, detector: DetectorConfig) -> Result<Self, RunError> {
        Self::load_in(model, &models_dir(), detector)
    }

    /// [`FacePipeline::load`] with shipped models looked up in `models`.
    pub fn load_in(model: &str, models: &Path, detector: DetectorConfig) -> Result<Self, RunError> {
        let landmarker = Predictor::load_in(model, models)?;
        Ok(Self {
            detector: FaceDetector::new(detector),
            landmarker,
            refine: 1,
        })
    }

    /// The faces of a decoded photo, as `facemark predict` finds them: in `boxes` when given
    /// (checked against the photo first), else in every face the detector finds; refined as
    /// `refine` says either way. A whole-image model (IMM) ignores boxes and answers once for the
    /// whole photo.
    pub fn predict(
        &self,
        gray: &GrayImage,
        boxes: Option<&[FaceBox]>,
        source: &Path,
    ) -> Result<Vec<Prediction>, DataError> {
        match boxes {
            None if self.landmarker.needs_face_box() => Ok(self.run(gray, source)),
            None => Ok(self.landmarker.predict_gray(gray, &[], source)),
            Some(boxes) => {
                check_boxes(gray, boxes, source)?;
                Ok(self.landmarks_from(gray, boxes, source))
            }
        }
    }

    /// [`FacePipeline::predict`] of the photo at `path`.
    pub fn predict_file(
        &self,
        path: &Path,
        boxes: Option<&[FaceBox]>,
    ) -> Result<Vec<Prediction>, DataError> {
        self.predict(&load_photo(path)?.into_luma8(), boxes, path)
    }

    /// Every face of a decoded photo with its points (one batched landmark pass per refinement).
    pub fn run(&self, gray: &GrayImage, source: &Path) -> Vec<Prediction> {
        let detections = self.detector.detect(gray);
        let boxes: Vec<FaceBox> = detections.iter().map(|d| d.bbox).collect();
        self.landmarks_from(gray, &boxes, source)
            .into_iter()
            .zip(&detections)
            .map(|(p, d)| Prediction {
                score: Some(d.score),
                ..p
            })
            .collect()
    }

    /// The points in each of `boxes` (detected or given), refined as the pipeline says; the
    /// reported box stays the one given.
    pub fn landmarks_from(
        &self,
        gray: &GrayImage,
        boxes: &[FaceBox],
        source: &Path,
    ) -> Vec<Prediction> {
        self.landmarker
            .predict_refined(gray, boxes, source, self.refine)
    }
}

/// Predictions grouped into labelled images (for writing a dlib XML).
pub fn to_labeled_images(predictions: &[Prediction]) -> Vec<LabeledImage> {
    let mut images: Vec<LabeledImage> = Vec::new();
    for p in predictions {
        let face = AnnotatedFace {
            bbox: p.bbox.map_or_else(
                || tight_box(&p.points).unwrap_or(FaceBox::new(0.0, 0.0, 0.0, 0.0)),
                |[left, top, width, height]| FaceBox::new(left, top, width, height),
            ),
            points: p.points.clone(),
            source: crate::data::PointSource::Labels,
        };
        match images.last_mut() {
            Some(last) if last.image_path == p.image => last.faces.push(face),
            _ => images.push(LabeledImage {
                image_path: p.image.clone(),
                size: Some((p.width, p.height)),
                faces: vec![face],
            }),
        }
    }
    images
}

/// Predictions for every face of a label set in the course's competition format: `Id,Predicted`,
/// one row per coordinate (x then y of each point, faces in the label file's order), coordinates
/// 0-based with pixel centres at integers (the dlib XML convention).
pub fn competition_csv(predictions: &[Prediction]) -> String {
    let mut csv = String::from("Id,Predicted\n");
    let mut id = 1;
    for p in predictions {
        for xy in &p.points {
            for v in xy {
                csv.push_str(&format!("{id},{:.4}\n", v - 0.5));
                id += 1;
            }
        }
    }
    csv
}

/// Writes a copy of the photo with every face's box and points drawn on it: markers and lines
/// sized to each face (not to the photo), the scheme's contours joined as dlib's viewer draws them.
pub fn draw_overlay(
    photo: &image::DynamicImage,
    faces: &[Prediction],
    contours: &[Vec<usize>],
    out: &Path,
) -> Result<(), DataError> {
    let mut rgb = photo.to_rgb8();
    for face in faces {
        let size = face
            .bbox
            .map(|b| b[2].max(b[3]))
            .or_else(|| tight_box(&face.points).map(|b| b.width.max(b.height)))
            .unwrap_or(1.0)
            .max(1.0);
        let thickness = (size / 120.0).round().max(1.0) as i32;
        if let Some([left, top, width, height]) = face.bbox {
            let corners = [
                [left, top],
                [left + width, top],
                [left + width, top + height],
                [left, top + height],
                [left, top],
            ];
            for pair in corners.windows(2) {
                thick_line(&mut rgb, pair[0], pair[1], thickness, Rgb([40, 160, 255]));
            }
        }
        for contour in contours {
            let points: Vec<Point> = contour
                .iter()
                .filter_map(|&i| face.points.get(i).copied())
                .collect();
            for pair in points.windows(2) {
                thick_line(&mut rgb, pair[0], pair[1], thickness, Rgb([60, 220, 60]));
            }
        }
        let radius = (size / 90.0).round().max(1.0) as i32;
        for p in &face.points {
            draw_filled_circle_mut(
                &mut rgb,
                (p[0] as i32, p[1] as i32),
                radius,
                Rgb([255, 40, 40]),
            );
        }
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|source| DataError::Image {
            path: out.to_owned(),
            source,
        })?;
    write_output(out, bytes.get_ref())
}

/// A line `thickness` pixels wide (parallel one-pixel lines).
fn thick_line(image: &mut image::RgbImage, a: Point, b: Point, thickness: i32, colour: Rgb<u8>) {
    let half = thickness / 2;
    for dy in -half..=(thickness - 1 - half) {
        for dx in -half..=(thickness - 1 - half) {
            let shift = |p: Point| (p[0] + dx as f32, p[1] + dy as f32);
            imageproc::drawing::draw_line_segment_mut(image, shift(a), shift(b), colour);
        }
    }
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::run::write_atomic(path, bytes).map_err(|e| DataError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Predictions as CSV: `image,point,x,y`.
pub fn predictions_csv(predictions: &[Prediction]) -> String {
    let mut csv = String::from("image,point,x,y\n");
    for p in predictions {
        for (i, xy) in p.points.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},{:.2},{:.2}\n",
                p.image.display(),
                i,
                xy[0],
                xy[1]
            ));
        }
    }
    csv
}

/// Where predictions go besides the returned list.
#[derive(Debug, Clone, Default)]
pub struct PredictOutputs {
    /// Each image with its points drawn, as PNG, into this folder.
    pub draw: Option<PathBuf>,
    /// One .pts file per face into this folder.
    pub pts: Option<PathBuf>,
    /// All predictions as one dlib XML file.
    pub xml: Option<PathBuf>,
}

/// Predicts every `(photo, boxes)` job and writes `outputs`: in the given boxes, or, for a
/// face-box model given none, in every face the pipeline's detector finds. A photo that cannot be
/// read is reported in the second list (with its error) and does not stop the others.
pub fn predict_jobs(
    pipeline: &FacePipeline,
    jobs: &[(PathBuf, Vec<FaceBox>)],
    outputs: &PredictOutputs,
) -> Result<(Vec<Prediction>, Vec<DataError>), DataError> {
    let mut predictions = Vec::new();
    let mut failures = Vec::new();
    let contours = pipeline.landmarker.model.contract.scheme.contours.clone();
    for (path, boxes) in jobs {
        let photo = match load_photo(path) {
            Ok(photo) => photo,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let gray = photo.to_luma8();
        // A job without boxes asks the detector.
        let given = (!boxes.is_empty()).then_some(boxes.as_slice());
        let found = match pipeline.predict(&gray, given, path) {
            Ok(found) => found,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(dir) = &outputs.draw {
            draw_overlay(&photo, &found, &contours, &dir.join(format!("{name}.png")))?;
        }
        if let Some(dir) = &outputs.pts {
            for (i, p) in found.iter().enumerate() {
                let stem = if found.len() > 1 {
                    format!("{name}_{i}")
                } else {
                    name.clone()
                };
                let text = crate::data::pts::format_pts(&p.points);
                write_output(&dir.join(format!("{stem}.pts")), text.as_bytes())?;
            }
        }
        predictions.extend(found);
    }
    if let Some(path) = &outputs.xml {
        let base = path.parent().unwrap_or(Path::new("."));
        let images = to_labeled_images(&predictions);
        let text = crate::data::dlib_xml::format_dlib_xml(&images, base, "facemark predictions");
        write_output(path, text.as_bytes())?;
    }
    Ok((predictions, failures))
}

/// The faces found in one photo.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoFaces {
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<Detection>,
    /// Time the detector took, in milliseconds.
    pub detection_ms: f64,
}

/// Detects the faces of every photo and writes `outputs` (`pts` is not used: boxes have no
/// points). Unreadable photos are reported in the second list.
pub fn detect_photos(
    detector: &FaceDetector,
    photos: &[PathBuf],
    outputs: &PredictOutputs,
) -> Result<(Vec<PhotoFaces>, Vec<DataError>), DataError> {
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for path in photos {
        let photo = match load_photo(path) {
            Ok(photo) => photo,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let gray = photo.to_luma8();
        let started = std::time::Instant::now();
        let faces = detector.detect(&gray);
        let detection_ms = started.elapsed().as_secs_f64() * 1e3;
        let as_predictions: Vec<Prediction> = faces
            .iter()
            .map(|d| Prediction {
                image: path.clone(),
                width: gray.width(),
                height: gray.height(),
                bbox: Some([d.bbox.left, d.bbox.top, d.bbox.width, d.bbox.height]),
                score: Some(d.score),
                points: Vec::new(),
            })
            .collect();
        if let Some(dir) = &outputs.draw {
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            draw_overlay(
                &photo,
                &as_predictions,
                &[],
                &dir.join(format!("{name}.png")),
            )?;
        }
        found.push(PhotoFaces {
            image: path.clone(),
            width: gray.width(),
            height: gray.height(),
            faces,
            detection_ms,
        });
    }
    if let Some(path) = &outputs.xml {
        let base = path.parent().unwrap_or(Path::new("."));
        let images: Vec<LabeledImage> = found
            .iter()
            .map(|photo| LabeledImage {
                image_path: photo.image.clone(),
                size: Some((photo.width, photo.height)),
                faces: photo
                    .faces
                    .iter()
                    .map(|d| AnnotatedFace {
                        bbox: d.bbox,
                        points: Vec::new(),
                        source: crate::data::PointSource::Labels,
                    })
                    .collect(),
            })
            .collect();
        let text = crate::data::dlib_xml::format_dlib_xml(&images, base, "facemark detections");
        write_output(path, text.as_bytes())?;
    }
    Ok((found, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_boxes_are_refined_from_the_models_own_landmark_box() {
        let image = crate::test_data::data_root().join("ibug_300w/lfpw/testset/image_0001.jpg");
        if !image.is_file() {
            eprintln!("SKIPPED: no {}", image.display());
            return;
        }
        let gray = load_photo(&image).unwrap().into_luma8();
        let mut pipeline = FacePipeline::load("face68-fast", DetectorConfig::default()).unwrap();
        // dlib's HOG box of this face (labels_300w_test_hogbox.xml).
        let given = [FaceBox::new(118.0, 77.0, 187.0, 187.0)];
        let in_box = |boxes: &[FaceBox]| pipeline.landmarker.predict_gray(&gray, boxes, &image);

        pipeline.refine = 0;
        let once = pipeline.predict(&gray, Some(&given), &image).unwrap();
        assert_eq!(once[0].points, in_box(&given)[0].points);

        pipeline.refine = 1;
        let refined = pipeline.predict(&gray, Some(&given), &image).unwrap();
        let own_box = tight_box(&once[0].points).unwrap();
        assert_eq!(refined[0].points, in_box(&[own_box])[0].points);
        assert_ne!(refined[0].points, once[0].points);
        // The reported box stays the one given.
        assert_eq!(refined[0].bbox, Some([118.0, 77.0, 187.0, 187.0]));
    }
}
