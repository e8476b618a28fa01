//! Image decoding and the model-ready form of a face: a small grayscale image in `[-0.5, 0.5]`
//! with its landmarks as fractions of width and height.

use std::path::Path;

use image::GrayImage;
use image::imageops::{self, FilterType};

use super::{DataError, Point};

/// Decodes an image file to 8-bit grayscale.
pub fn load_gray(path: &Path) -> Result<GrayImage, DataError> {
    let reader = image::ImageReader::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader = reader
        .with_guessed_format()
        .map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
    let image = reader.decode().map_err(|source| DataError::Image {
        path: path.to_owned(),
        source,
    })?;
    Ok(image.into_luma8())
}

/// A model-ready face: grayscale pixels in `[-0.5, 0.5]`, row-major, and landmarks as fractions of
/// the image's width and height (so they survive any resize unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
    pub points: Vec<Point>,
}

impl Example {
    /// Resizes `gray` to `width` x `height` (an area-weighted filter, so small sizes do not alias)
    /// and maps `points_px`, given in pixels of `gray`, to fractions.
    pub fn from_gray(gray: &GrayImage, points_px: &[Point], width: usize, height: usize) -> Self {
        let resized = if gray.dimensions() == (width as u32, height as u32) {
            gray.clone()
        } else {
            imageops::resize(gray, width as u32, height as u32, FilterType::Triangle)
        };
        let (gw, gh) = (gray.width() as f32, gray.height() as f32);
        Self {
            width,
            height,
            pixels: resized
                .as_raw()
                .iter()
                .map(|&v| normalize_pixel(v))
                .collect(),
            points: points_px.iter().map(|p| [p[0] / gw, p[1] / gh]).collect(),
        }
    }

    /// Landmarks in pixels of an image of the given size.
    pub fn points_in(&self, width: f32, height: f32) -> Vec<Point> {
        scale_points(&self.points, width, height)
    }

    /// The image as 8-bit grayscale, for drawing.
    pub fn to_gray(&self) -> GrayImage {
        let raw = self
            .pixels
            .iter()
            .map(|&v| ((v + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        GrayImage::from_raw(self.width as u32, self.height as u32, raw)
            .expect("pixel count matches size")
    }
}

/// Maps an 8-bit intensity to the network's input range `[-0.5, 0.5]`.
pub fn normalize_pixel(v: u8) -> f32 {
    v as f32 / 255.0 - 0.5
}

/// Scales fractional points to pixels of a `width` x `height` image.
pub fn scale_points(points: &[Point], width: f32, height: f32) -> Vec<Point> {
    points
        .iter()
        .map(|p| [p[0] * width, p[1] * height])
        .collect()
}

/// Decodes a photo as a person sees it: the EXIF orientation a phone wrote is applied (a
/// portrait taken with the phone on its side comes out upright), colour or grey.
pub fn load_photo(path: &Path) -> Result<image::DynamicImage, DataError> {
    use image::ImageDecoder;
    let image_error = |source| DataError::Image {
        path: path.to_owned(),
        source,
    };
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = image::DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_pixels_map_to_known_values() {
        assert_eq!(normalize_pixel(0), -0.5);
        assert_eq!(normalize_pixel(255), 0.5);
        assert!((normalize_pixel(51) - (-0.3)).abs() < 1e-6);
    }

    #[test]
    fn resize_keeps_a_flat_image_flat_and_maps_points_to_fractions() {
        let gray = GrayImage::from_pixel(640, 480, image::Luma([255]));
        let ex = Example::from_gray(&gray, &[[320.0, 120.0]], 80, 60);
        assert_eq!((ex.width, ex.height, ex.pixels.len()), (80, 60, 4800));
        assert!(ex.pixels.iter().all(|&v| (v - 0.5).abs() < 1e-6));
        assert_eq!(ex.points, vec![[0.5, 0.25]]);
        assert_eq!(ex.points_in(640.0, 480.0), vec![[320.0, 120.0]]);
    }

    #[test]
    fn unreadable_image_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-an-image.jpg");
        std::fs::write(&path, b"this is text").unwrap();
        let err = load_gray(&path).unwrap_err();
        assert!(err.to_string().contains("not-an-image.jpg"), "{err}");
    }
}
