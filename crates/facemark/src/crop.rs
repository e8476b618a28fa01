//! Face crops: a square region around a face box, enlarged and optionally jittered, resized to the
//! model's input with the landmarks mapped exactly (and back again for predictions).

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Example, FaceBox, Point};

/// How a face box becomes the model's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CropConfig {
    /// Side of the square crop as a multiple of the box's longer side.
    pub enlarge: f32,
    /// Output side in pixels (224 as in the study; 160 or 112 for CPU budgets).
    pub size: usize,
}

impl Default for CropConfig {
    fn default() -> Self {
        Self {
            enlarge: 1.3,
            size: 224,
        }
    }
}

/// Random changes to the box before cropping, so a model tolerates a detector's boxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoxJitter {
    /// Largest shift of the box centre, as a fraction of the box's longer side.
    pub shift: f32,
    /// Largest relative change of the box size (0.1 draws a factor in `[0.9, 1.1]`).
    pub scale: f32,
}

impl Default for BoxJitter {
    fn default() -> Self {
        Self {
            shift: 0.08,
            scale: 0.1,
        }
    }
}

impl BoxJitter {
    /// A jittered copy of `bbox`.
    pub fn apply(&self, bbox: FaceBox, rng: &mut impl Rng) -> FaceBox {
        let side = bbox.width.max(bbox.height);
        let mut draw = |max: f32| {
            if max > 0.0 {
                rng.random_range(-max..=max)
            } else {
                0.0
            }
        };
        let (dx, dy) = (draw(self.shift) * side, draw(self.shift) * side);
        let factor = 1.0 + draw(self.scale);
        let (cx, cy) = (
            bbox.left + bbox.width / 2.0 + dx,
            bbox.top + bbox.height / 2.0 + dy,
        );
        let (w, h) = (bbox.width * factor, bbox.height * factor);
        FaceBox {
            left: cx - w / 2.0,
            top: cy - h / 2.0,
            width: w,
            height: h,
        }
    }
}

/// The mapping between image pixels and crop pixels: `crop = (image - origin) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropTransform {
    pub origin: Point,
    pub scale: f32,
}

impl CropTransform {
    pub fn to_crop(&self, p: Point) -> Point {
        [
            (p[0] - self.origin[0]) * self.scale,
            (p[1] - self.origin[1]) * self.scale,
        ]
    }

    pub fn to_image(&self, p: Point) -> Point {
        [
            p[0] / self.scale + self.origin[0],
            p[1] / self.scale + self.origin[1],
        ]
    }
}

/// The integer square region (left, top, side) cropped for `bbox`.
pub fn crop_region(bbox: FaceBox, enlarge: f32) -> (i64, i64, u32) {
    let side = (bbox.width.max(bbox.height) * enlarge).round().max(1.0);
    let (cx, cy) = (bbox.left + bbox.width / 2.0, bbox.top + bbox.height / 2.0);
    (
        (cx - side / 2.0).round() as i64,
        (cy - side / 2.0).round() as i64,
        side as u32,
    )
}

/// Crops the square around `bbox`, pads what lies outside the image with the image's mean grey,
/// resizes it to `config.size` and maps `points` (image pixels) into the crop as fractions.
pub fn crop_face(
    gray: &GrayImage,
    bbox: FaceBox,
    points: &[Point],
    config: &CropConfig,
) -> (Example, CropTransform) {
    let (left, top, side) = crop_region(bbox, config.enlarge);
    let fill = mean_grey(gray);
    let mut canvas = GrayImage::from_pixel(side, side, Luma([fill]));
    // Copy the part of the square that lies inside the image.
    let x0 = left.max(0);
    let y0 = top.max(0);
    let x1 = (left + side as i64).min(gray.width() as i64);
    let y1 = (top + side as i64).min(gray.height() as i64);
    if x1 > x0 && y1 > y0 {
        let part = imageops::crop_imm(
            gray,
            x0 as u32,
            y0 as u32,
            (x1 - x0) as u32,
            (y1 - y0) as u32,
        )
        .to_image();
        imageops::replace(&mut canvas, &part, x0 - left, y0 - top);
    }
    let resized = if side as usize == config.size {
        canvas
    } else {
        imageops::resize(
            &canvas,
            config.size as u32,
            config.size as u32,
            FilterType::Triangle,
        )
    };
    let transform = CropTransform {
        origin: [left as f32, top as f32],
        scale: config.size as f32 / side as f32,
    };
    let crop_points: Vec<Point> = points.iter().map(|&p| transform.to_crop(p)).collect();
    (
        Example::from_gray(&resized, &crop_points, config.size, config.size),
        transform,
    )
}

fn mean_grey(gray: &GrayImage) -> u8 {
    let n = gray.as_raw().len().max(1) as u64;
    (gray.as_raw().iter().map(|&v| v as u64).sum::<u64>() / n) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_maps_into_the_crop_and_back() {
        let gray = GrayImage::new(300, 200);
        let bbox = FaceBox {
            left: 100.0,
            top: 50.0,
            width: 80.0,
            height: 100.0,
        };
        let p = [130.25, 97.5];
        let config = CropConfig {
            enlarge: 1.3,
            size: 112,
        };
        let (example, transform) = crop_face(&gray, bbox, &[p], &config);
        let back = transform.to_image(example.points_in(112.0, 112.0)[0]);
        assert!(
            (back[0] - p[0]).abs() < 1e-3 && (back[1] - p[1]).abs() < 1e-3,
            "{back:?}"
        );
    }

    #[test]
    fn a_bright_pixel_lands_where_its_point_maps() {
        // A bright 4x4 square centred on (150, 100), a box around it, crop at scale 1.
        let mut gray = GrayImage::new(300, 200);
        for y in 98..102 {
            for x in 148..152 {
                gray.put_pixel(x, y, Luma([255]));
            }
        }
        let bbox = FaceBox {
            left: 110.0,
            top: 60.0,
            width: 80.0,
            height: 80.0,
        };
        let config = CropConfig {
            enlarge: 1.0,
            size: 80,
        };
        let (example, _) = crop_face(&gray, bbox, &[[150.0, 100.0]], &config);
        let [px, py] = example.points_in(80.0, 80.0)[0];
        assert_eq!([px, py], [40.0, 40.0]);
        // Pixels (38..42) of the crop are the bright ones, centred on 40.0 in continuous coordinates.
        assert_eq!(example.pixels[39 * 80 + 39], 0.5);
        assert_eq!(example.pixels[38 * 80 + 37], -0.5);
    }

    #[test]
    fn crops_past_the_border_are_padded() {
        let gray = GrayImage::from_pixel(50, 50, Luma([200]));
        let bbox = FaceBox {
            left: -20.0,
            top: -20.0,
            width: 40.0,
            height: 40.0,
        };
        let (example, _) = crop_face(
            &gray,
            bbox,
            &[],
            &CropConfig {
                enlarge: 1.0,
                size: 40,
            },
        );
        assert_eq!(example.pixels.len(), 1600);
        assert!(example.pixels.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn jitter_stays_within_its_ranges() {
        let bbox = FaceBox {
            left: 0.0,
            top: 0.0,
            width: 100.0,
            height: 100.0,
        };
        let jitter = BoxJitter {
            shift: 0.1,
            scale: 0.2,
        };
        let mut rng = crate::augment::sample_rng(1, 0, 0);
        for _ in 0..50 {
            let b = jitter.apply(bbox, &mut rng);
            let (cx, cy) = (b.left + b.width / 2.0, b.top + b.height / 2.0);
            assert!((cx - 50.0).abs() <= 10.0 + 1e-3 && (cy - 50.0).abs() <= 10.0 + 1e-3);
            assert!((80.0 - 1e-3..=120.0 + 1e-3).contains(&b.width));
        }
    }
}
