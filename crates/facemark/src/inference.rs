//! Running a trained model on new photos, as its inference contract says, and writing the
//! predictions (JSON, CSV, .pts, dlib XML, overlays).

use std::path::{Path, PathBuf};

use burn::module::Module;
use image::{GrayImage, Rgb};
use imageproc::drawing::draw_filled_circle_mut;
use serde::Serialize;

use crate::crop::crop_face;
use crate::data::images::scale_points;
use crate::data::{AnnotatedFace, DataError, Example, FaceBox, LabeledImage, Point, load_gray};
use crate::dataset::tight_box;
use crate::run::{LoadedModel, RunError, load_trained};

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
    /// The face box `[left, top, width, height]` the points were found in (face-box models).
    pub bbox: Option<[f32; 4]>,
    pub points: Vec<Point>,
}

impl Predictor {
    /// Loads `--model NAME_OR_DIR` (see [`load_trained`]).
    pub fn load(name_or_dir: &str) -> Result<Self, RunError> {
        let device = crate::backend::device();
        let mut model = load_trained(name_or_dir, &device)?;
        model.net = model.net.valid();
        Ok(Self { model, device })
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

    /// Finds the landmarks in one image file: in each of `boxes` for a face-box model, else in the
    /// whole image (as the IMM models were trained; `boxes` are then not used).
    pub fn predict_file(
        &self,
        path: &Path,
        boxes: &[FaceBox],
    ) -> Result<Vec<Prediction>, DataError> {
        let gray = load_gray(path)?;
        Ok(self.predict_gray(&gray, boxes, path))
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
            points,
        };
        let contract = &self.model.contract;
        let Some(crop) = contract.crop() else {
            let (w, h) = (contract.input_width, contract.input_height);
            let example = Example::from_gray(gray, &[], w, h);
            let fractions = self.predict_examples(&[example]).pop().unwrap_or_default();
            let points = scale_points(&fractions, gray.width() as f32, gray.height() as f32);
            return vec![prediction(None, points)];
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
                let points = scale_points(&fractions, example.width as f32, example.height as f32)
                    .into_iter()
                    .map(|p| transform.to_image(p))
                    .collect();
                prediction(Some(bbox), points)
            })
            .collect()
    }
}

/// Predictions grouped into labelled images (for writing a dlib XML).
pub fn to_labeled_images(predictions: &[Prediction]) -> Vec<LabeledImage> {
    let mut images: Vec<LabeledImage> = Vec::new();
    for p in predictions {
        let face = AnnotatedFace {
            bbox: p.bbox.map_or_else(
                || tight_box(&p.points),
                |[left, top, width, height]| FaceBox {
                    left,
                    top,
                    width,
                    height,
                },
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

/// Writes a copy of the image with the predicted points drawn on it.
pub fn draw_prediction(prediction: &Prediction, out: &Path) -> Result<(), DataError> {
    let image = image::open(&prediction.image).map_err(|source| DataError::Image {
        path: prediction.image.clone(),
        source,
    })?;
    let mut rgb = image.into_rgb8();
    let radius = (rgb.width().max(rgb.height()) / 160).max(2) as i32;
    for p in &prediction.points {
        draw_filled_circle_mut(
            &mut rgb,
            (p[0] as i32, p[1] as i32),
            radius,
            Rgb([255, 40, 40]),
        );
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|source| DataError::Image {
            path: out.to_owned(),
            source,
        })?;
    crate::run::write_atomic(out, bytes.get_ref()).map_err(|e| DataError::Io {
        path: out.to_owned(),
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

/// Predicts every `(image, boxes)` job and writes `outputs`; an image that cannot be read is
/// reported in the second list (with its error) and does not stop the others.
pub fn predict_jobs(
    predictor: &Predictor,
    jobs: &[(PathBuf, Vec<FaceBox>)],
    outputs: &PredictOutputs,
) -> Result<(Vec<Prediction>, Vec<DataError>), DataError> {
    let mut predictions = Vec::new();
    let mut failures = Vec::new();
    let write = |path: &Path, bytes: &[u8]| {
        crate::run::write_atomic(path, bytes).map_err(|e| DataError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })
    };
    for (path, boxes) in jobs {
        let found = match predictor.predict_file(path, boxes) {
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
        for (i, p) in found.iter().enumerate() {
            let stem = if found.len() > 1 {
                format!("{name}_{i}")
            } else {
                name.clone()
            };
            if let Some(dir) = &outputs.draw {
                draw_prediction(p, &dir.join(format!("{stem}.png")))?;
            }
            if let Some(dir) = &outputs.pts {
                let text = crate::data::pts::format_pts(&p.points);
                write(&dir.join(format!("{stem}.pts")), text.as_bytes())?;
            }
        }
        predictions.extend(found);
    }
    if let Some(path) = &outputs.xml {
        let base = path.parent().unwrap_or(Path::new("."));
        let images = to_labeled_images(&predictions);
        let text = crate::data::dlib_xml::format_dlib_xml(&images, base, "facemark predictions");
        write(path, text.as_bytes())?;
    }
    Ok((predictions, failures))
}
