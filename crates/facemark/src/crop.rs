//! Face crops: a square region around a face box, enlarged and optionally jittered, resized to the
//! model's input with the landmarks mapped exactly (and back again for predictions).

use image::GrayImage;
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

    /// Points given as fractions of a `width` x `height` crop (a network's output), in the
    /// photo's pixels.
    pub fn fractions_to_image(
        &self,
        fractions: &[Point],
        width: usize,
        height: usize,
    ) -> Vec<Point> {
        let (w, h) = (width as f32, height as f32);
        fractions
            .iter()
            .map(|p| self.to_image([p[0] * w, p[1] * h]))
            .collect()
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
    let resized = resize_square(gray, [left, top], side, config.size as u32);
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
    // Sums of at most 2^16 pixels fit in a u32, which vectorises where a u64 per pixel does not.
    let sum: u64 = gray
        .as_raw()
        .chunks(1 << 16)
        .map(|chunk| chunk.iter().map(|&v| v as u32).sum::<u32>() as u64)
        .sum();
    (sum / n) as u8
}

/// The square of `side` pixels at `origin` (left, top) in `gray`, with what lies outside the
/// photo filled with its mean grey, resized to `size` x `size`: pixel for pixel what
/// `imageops::resize(.., FilterType::Triangle)` makes of that square (the same weights, the same
/// order of sums, the same rounding), without building the square or working on four channels.
/// For a large face in a large photo this is most of what a crop costs.
fn resize_square(gray: &GrayImage, origin: [i64; 2], side: u32, size: u32) -> GrayImage {
    let [left, top] = origin;
    let (width, height) = (gray.width() as i64, gray.height() as i64);
    let inside =
        left >= 0 && top >= 0 && left + side as i64 <= width && top + side as i64 <= height;
    // The fill is only needed (and only computed) when the square leaves the photo.
    let fill = if inside { 0 } else { mean_grey(gray) };
    let row_of_square = |y: u32, buffer: &mut Vec<u8>| {
        buffer.clear();
        let sy = top + y as i64;
        if !(0..height).contains(&sy) {
            buffer.resize(side as usize, fill);
            return;
        }
        let row = &gray.as_raw()[sy as usize * width as usize..][..width as usize];
        let (x0, x1) = (left.clamp(0, width), (left + side as i64).clamp(0, width));
        buffer.resize((x0 - left).clamp(0, side as i64) as usize, fill);
        if x1 > x0 {
            buffer.extend_from_slice(&row[x0 as usize..x1 as usize]);
        }
        buffer.resize(side as usize, fill);
    };
    if side == size {
        let mut out = Vec::with_capacity((side * side) as usize);
        let mut row = Vec::new();
        for y in 0..side {
            row_of_square(y, &mut row);
            out.extend_from_slice(&row);
        }
        return GrayImage::from_raw(side, side, out).expect("side x side pixels");
    }
    // Vertical pass first, into f32, as `imageops::resize` does.
    let taps = TriangleTaps::new(side, size);
    let n = side as usize;
    let mut columns = vec![0.0f32; size as usize * n];
    let mut row = Vec::new();
    for (out_row, (first, weights)) in columns.chunks_exact_mut(n).zip(taps.iter()) {
        for (i, &w) in weights.iter().enumerate() {
            row_of_square(first + i as u32, &mut row);
            for (t, &v) in out_row.iter_mut().zip(&row) {
                *t += v as f32 * w;
            }
        }
    }
    // Then across, rounding to the nearest grey level (halves away from zero).
    let mut out = Vec::with_capacity((size * size) as usize);
    for column in columns.chunks_exact(n) {
        for (first, weights) in taps.iter() {
            let mut t = 0.0f32;
            for (&v, &w) in column[first as usize..].iter().zip(weights) {
                t += v * w;
            }
            let t = t.clamp(0.0, 255.0);
            let whole = t as u32;
            out.push((whole + (t - whole as f32 >= 0.5) as u32) as u8);
        }
    }
    GrayImage::from_raw(size, size, out).expect("size x size pixels")
}

/// The triangle filter's taps for resampling `from` pixels to `to`: for each output pixel the
/// first input pixel and the normalised weights, computed as `imageops::resize` computes them.
struct TriangleTaps {
    first: Vec<u32>,
    /// Every output pixel's weights, `stride` apart (zero-padded).
    weights: Vec<f32>,
    counts: Vec<usize>,
    stride: usize,
}

impl TriangleTaps {
    fn new(from: u32, to: u32) -> Self {
        let ratio = from as f32 / to as f32;
        let sratio = if ratio < 1.0 { 1.0 } else { ratio };
        let support = sratio;
        let stride = 2 * support.ceil() as usize + 2;
        let mut taps = Self {
            first: Vec::with_capacity(to as usize),
            weights: vec![0.0; to as usize * stride],
            counts: Vec::with_capacity(to as usize),
            stride,
        };
        for (out, weights) in taps.weights.chunks_exact_mut(stride).enumerate() {
            let centre = (out as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, from as i64 - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, from as i64);
            let centre = centre - 0.5;
            let count = (right - left) as usize;
            let mut sum = 0.0;
            for (i, w) in weights[..count].iter_mut().enumerate() {
                let x = ((left + i as i64) as f32 - centre) / sratio;
                *w = if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 };
                sum += *w;
            }
            weights[..count].iter_mut().for_each(|w| *w /= sum);
            taps.first.push(left as u32);
            taps.counts.push(count);
        }
        taps
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &[f32])> {
        self.first
            .iter()
            .zip(&self.counts)
            .zip(self.weights.chunks_exact(self.stride))
            .map(|((&first, &count), weights)| (first, &weights[..count]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

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
        // A network's output (fractions of the crop) maps back the same way.
        let back = transform.fractions_to_image(&example.points, example.width, example.height);
        assert!(
            (back[0][0] - p[0]).abs() < 1e-3 && (back[0][1] - p[1]).abs() < 1e-3,
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

    /// The crop as `crop_face` made it before `resize_square`: the square built with the mean
    /// grey around the photo, then `imageops::resize` with the triangle filter.
    fn reference_square(gray: &GrayImage, left: i64, top: i64, side: u32, size: u32) -> GrayImage {
        use image::imageops::{self, FilterType};
        let fill = mean_grey(gray);
        let mut canvas = GrayImage::from_pixel(side, side, Luma([fill]));
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
        if side == size {
            canvas
        } else {
            imageops::resize(&canvas, size, size, FilterType::Triangle)
        }
    }

    #[test]
    fn resized_squares_equal_image_crates_resize_pixel_for_pixel() {
        let photo = |w: u32, h: u32, seed: u32| {
            let mut state = seed;
            GrayImage::from_fn(w, h, |x, y| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                // Smooth structure plus noise, so the rounding sees every fraction.
                Luma([((x * 3 + y * 5) % 200) as u8 + (state >> 28) as u8 * 3])
            })
        };
        let cases = [
            // Inside; down by a large and a small factor; up; the same size.
            (640, 480, 100, 50, 400, 112),
            (640, 480, 200, 100, 150, 112),
            (300, 200, 120, 60, 70, 112),
            (300, 200, 10, 10, 112, 112),
            // Past every border, and wholly outside.
            (300, 200, -40, -30, 260, 112),
            (300, 200, 150, 120, 260, 80),
            (120, 90, -200, -200, 500, 160),
            (50, 50, 60, 60, 30, 112),
        ];
        for (i, &(w, h, left, top, side, size)) in cases.iter().enumerate() {
            let gray = photo(w, h, i as u32);
            let ours = resize_square(&gray, [left, top], side, size);
            let reference = reference_square(&gray, left, top, side, size);
            assert_eq!(ours.dimensions(), reference.dimensions(), "case {i}");
            let differing = ours
                .as_raw()
                .iter()
                .zip(reference.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 0, "case {i}: {differing} pixels differ");
        }
    }
}
