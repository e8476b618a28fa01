//! Running a trained model on new photos.

use std::path::{Path, PathBuf};

use burn::module::Module;
use image::Rgb;
use imageproc::drawing::draw_filled_circle_mut;
use serde::Serialize;

use crate::data::images::scale_points;
use crate::data::{DataError, Example, Point, load_gray};
use crate::eval::predict_with_mirror;
use crate::run::{LoadedModel, RunError, load_trained};

/// A model loaded for inference on the inference device.
pub struct Predictor {
    pub model: LoadedModel,
    device: burn::tensor::Device,
}

/// The landmarks found in one image, in that image's pixel coordinates.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
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

    /// Finds the landmarks in one image file. The whole image is the model's input, as in training.
    pub fn predict_file(&self, path: &Path) -> Result<Prediction, DataError> {
        let gray = load_gray(path)?;
        let (w, h) = self.model.config.model.input_size();
        let example = Example::from_gray(&gray, &[], w, h);
        let mirror = self.model.config.test_time_mirror();
        let fractions = predict_with_mirror(
            &self.model.net,
            std::slice::from_ref(&example),
            &self.device,
            mirror,
        )
        .pop()
        .unwrap_or_default();
        Ok(Prediction {
            image: path.to_owned(),
            width: gray.width(),
            height: gray.height(),
            points: scale_points(&fractions, gray.width() as f32, gray.height() as f32),
        })
    }
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
