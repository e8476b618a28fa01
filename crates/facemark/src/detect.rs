//! Face detection on whole photos, in-process on the CPU: the SeetaFace frontal funnel cascade
//! through the `rustface` crate, with its model (`seeta_fd_frontal_v1.0.bin`, BSD-2-Clause,
//! VIPL/ICT CAS; copied from the rustface 0.1.7 package into `models/detector/`) compiled into the
//! library, so nothing is read or downloaded at run time. Chosen by measurement: see
//! results/detector.md.

use image::GrayImage;
use image::imageops::{self, FilterType};
use serde::{Deserialize, Serialize};

use crate::data::FaceBox;

/// The SeetaFace frontal model, built in.
static SEETA_FRONTAL: &[u8] = include_bytes!("../../../models/detector/seeta_fd_frontal_v1.0.bin");

/// The cascade's smallest window in pixels of the image it scans.
const WINDOW: u32 = 20;

/// How faces are searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorConfig {
    /// Smallest face looked for, in pixels of the photo (the photo is scaled so that such a face
    /// fills the cascade's 20-pixel window).
    pub min_face: u32,
    /// Longest side of the copy that is scanned: larger photos are scanned on a scaled copy.
    pub max_side: u32,
    /// Detections scoring below this are dropped (the cascade's own score; 2.0 as in rustface's
    /// example).
    pub score_threshold: f64,
    /// Ratio between the sizes of adjacent pyramid levels.
    pub pyramid_scale: f32,
    /// Sliding-window step in pixels.
    pub step: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            min_face: 24,
            max_side: 1024,
            score_threshold: 2.0,
            pyramid_scale: 0.8,
            step: 4,
        }
    }
}

/// A face found in a photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    /// The face box in the photo's pixels, `[left, top, width, height]` continuous coordinates.
    #[serde(serialize_with = "box_as_array")]
    pub bbox: FaceBox,
    /// The detector's confidence (higher is surer; comparable between faces, not a probability).
    pub score: f32,
}

fn box_as_array<S: serde::Serializer>(b: &FaceBox, s: S) -> Result<S::Ok, S::Error> {
    [b.left, b.top, b.width, b.height].serialize(s)
}

/// The face detector. It holds the parsed model and builds the cascade (whose scratch state is
/// not `Send`) for each photo, so one detector can be shared between threads.
#[derive(Clone)]
pub struct FaceDetector {
    model: rustface::Model,
    config: DetectorConfig,
}

impl FaceDetector {
    pub fn new(config: DetectorConfig) -> Self {
        // The built-in model is known good: a failure here is a broken build, not user input.
        let model = rustface::read_model(SEETA_FRONTAL)
            .unwrap_or_else(|e| unreachable!("the built-in SeetaFace model reads: {e}"));
        Self { model, config }
    }

    fn cascade(&self) -> Box<dyn rustface::Detector> {
        let config = &self.config;
        let mut cascade = rustface::create_detector_with_model(self.model.clone());
        cascade.set_min_face_size(WINDOW);
        cascade.set_score_thresh(config.score_threshold.max(1e-6));
        cascade.set_pyramid_scale_factor(config.pyramid_scale.clamp(0.1, 0.99));
        cascade.set_slide_window_step(config.step.max(1), config.step.max(1));
        cascade
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The scale at which `gray` is scanned: a `min_face` face fills the window, and the copy's
    /// longest side is at most `max_side`.
    pub fn scan_scale(&self, width: u32, height: u32) -> f32 {
        let for_faces = WINDOW as f32 / self.config.min_face.max(1) as f32;
        let for_size = self.config.max_side as f32 / width.max(height).max(1) as f32;
        for_faces.min(for_size)
    }

    /// Every face in `gray`, surest first, in the photo's pixels.
    pub fn detect(&self, gray: &GrayImage) -> Vec<Detection> {
        let (w, h) = gray.dimensions();
        let scale = self.scan_scale(w, h);
        let (sw, sh) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        // The cascade cannot scan an image smaller than its window (it would panic).
        if sw < WINDOW || sh < WINDOW {
            return Vec::new();
        }
        let scanned = if (sw, sh) == (w, h) {
            gray.clone()
        } else {
            imageops::resize(gray, sw, sh, FilterType::Triangle)
        };
        let data = rustface::ImageData::new(scanned.as_raw(), sw, sh);
        let (fx, fy) = (w as f32 / sw as f32, h as f32 / sh as f32);
        let mut found: Vec<Detection> = self
            .cascade()
            .detect(&data)
            .into_iter()
            .map(|face| {
                let r = face.bbox();
                Detection {
                    bbox: FaceBox {
                        left: r.x() as f32 * fx,
                        top: r.y() as f32 * fy,
                        width: r.width() as f32 * fx,
                        height: r.height() as f32 * fy,
                    },
                    score: face.score() as f32,
                }
            })
            .collect();
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        found
    }
}

/// Intersection over union of two boxes (0 when either is empty).
pub fn iou(a: &FaceBox, b: &FaceBox) -> f32 {
    let x0 = a.left.max(b.left);
    let y0 = a.top.max(b.top);
    let x1 = (a.left + a.width).min(b.left + b.width);
    let y1 = (a.top + a.height).min(b.top + b.height);
    let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
    let union = a.width * a.height + b.width * b.height - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Matches detections to annotated boxes, greedily by overlap: each annotated face takes the
/// unclaimed detection of highest IoU at or above `min_iou`. Returns, per annotated face, the
/// index of its detection; detections left unmatched are not errors (photos may show faces
/// nobody annotated).
pub fn match_detections(
    annotated: &[FaceBox],
    detected: &[FaceBox],
    min_iou: f32,
) -> Vec<Option<usize>> {
    let mut pairs: Vec<(f32, usize, usize)> = annotated
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            detected
                .iter()
                .enumerate()
                .map(move |(j, d)| (iou(a, d), i, j))
        })
        .filter(|(overlap, _, _)| *overlap >= min_iou)
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut matched = vec![None; annotated.len()];
    let mut taken = vec![false; detected.len()];
    for (_, i, j) in pairs {
        if matched[i].is_none() && !taken[j] {
            matched[i] = Some(j);
            taken[j] = true;
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detector_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<FaceDetector>();
    }

    fn b(left: f32, top: f32, width: f32, height: f32) -> FaceBox {
        FaceBox::new(left, top, width, height)
    }

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou(&b(0.0, 0.0, 10.0, 10.0), &b(0.0, 0.0, 10.0, 10.0)), 1.0);
        assert_eq!(
            iou(&b(0.0, 0.0, 10.0, 10.0), &b(20.0, 0.0, 10.0, 10.0)),
            0.0
        );
        // Half overlap: 50 / 150.
        let v = iou(&b(0.0, 0.0, 10.0, 10.0), &b(5.0, 0.0, 10.0, 10.0));
        assert!((v - 1.0 / 3.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn matching_prefers_the_best_overlap_and_leaves_extra_detections_alone() {
        let annotated = [
            b(0.0, 0.0, 10.0, 10.0),
            b(100.0, 100.0, 20.0, 20.0),
            b(300.0, 0.0, 5.0, 5.0),
        ];
        let detected = [
            b(101.0, 99.0, 20.0, 20.0), // face 1
            b(1.0, 0.0, 10.0, 10.0),    // face 0, better than the next
            b(3.0, 2.0, 10.0, 10.0),
            b(500.0, 500.0, 30.0, 30.0), // nobody's face
        ];
        assert_eq!(
            match_detections(&annotated, &detected, 0.3),
            vec![Some(1), Some(0), None]
        );
    }

    #[test]
    fn a_blank_or_tiny_image_has_no_faces() {
        let detector = FaceDetector::new(DetectorConfig::default());
        assert!(detector.detect(&GrayImage::new(200, 150)).is_empty());
        assert!(detector.detect(&GrayImage::new(5, 5)).is_empty());
    }
}
