//! Face detection on whole photos, in-process on the CPU: the SeetaFace frontal funnel cascade
//! through the `rustface` crate, with its model (`seeta_fd_frontal_v1.0.bin`, BSD-2-Clause,
//! VIPL/ICT CAS; copied from the rustface 0.1.7 package into `models/detector/`) compiled into the
//! library, so nothing is read or downloaded at run time. Chosen by measurement: see
//! results/detector.md.
//!
//! rustface scans one image with a 40-pixel window over a pyramid of bilinear copies (each 0.8 of
//! the one before), then its SURF-MLP stages re-score and refine the surviving windows, and a last
//! non-maximum suppression merges overlapping boxes, adding their scores. facemark builds the
//! pyramid itself instead (one scaled copy of the photo, then levels resampled from it with the
//! same bilinear rule as rustface's) and splits it: with levels 0.8 apart, the two largest go to
//! rustface as images of their own, each scanned at its one scale, and the third as an image
//! scanned from there down (rustface building the smaller levels). The groups are shared between
//! rayon's threads, largest first, and their boxes are merged as one rustface run would have
//! merged them (near-duplicates of different groups counted once, then overlap above 0.3: one
//! box, the surest, scoring the sum), before the score threshold. rustface is built without its
//! own rayon loops (one per neuron of its MLP: thread wake-ups cost more than they save).

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::GrayImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::FaceBox;

/// The SeetaFace frontal model, built in.
static SEETA_FRONTAL: &[u8] = include_bytes!("../../../models/detector/seeta_fd_frontal_v1.0.bin");

/// The cascade's window in pixels of the image it scans (rustface's `K_WND_SIZE`; its
/// `set_min_face_size` is not used by its detector).
const WINDOW: u32 = 40;

/// Boxes of different pyramid levels overlapping more than this are one face (rustface's last
/// non-maximum suppression).
const MERGE_IOU: f32 = 0.3;

/// Between its stages rustface keeps only the surest of candidates overlapping more than this.
const DUPLICATE_IOU: f32 = 0.8;

/// How faces are searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorConfig {
    /// Smallest face looked for, in pixels of the photo: the photo is scaled so that such a face
    /// fills the cascade's 40-pixel window (40: the photo as it is).
    pub min_face: u32,
    /// Longest side of the copy that is scanned: larger photos are scanned on a scaled copy.
    pub max_side: u32,
    /// Faces scoring below this are dropped (the cascade's own score, summed over the boxes
    /// merged into the face; 2.0 as in rustface's example).
    pub score_threshold: f64,
    /// Ratio between the sizes of adjacent pyramid levels.
    pub pyramid_scale: f32,
    /// Sliding-window step in pixels of each level.
    pub step: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            min_face: 40,
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

/// The built-in model, parsed once.
fn builtin_model() -> &'static rustface::Model {
    static MODEL: OnceLock<rustface::Model> = OnceLock::new();
    // The built-in model is known good: a failure here is a broken build, not user input.
    MODEL.get_or_init(|| {
        rustface::read_model(SEETA_FRONTAL)
            .unwrap_or_else(|e| unreachable!("the built-in SeetaFace model reads: {e}"))
    })
}

thread_local! {
    /// Each thread's cascade (its scratch buffers are not `Send`), built once from the model.
    static CASCADE: RefCell<Option<Box<dyn rustface::Detector>>> = const { RefCell::new(None) };
}

/// The face detector: a configuration over the built-in model. It holds no cascade (each thread
/// keeps its own), so one detector can be shared between threads and costs nothing to make.
#[derive(Debug, Clone)]
pub struct FaceDetector {
    config: DetectorConfig,
}

impl FaceDetector {
    /// A detector searching as `config` says. The built-in model is parsed here, once per process
    /// (each thread's cascade is built from it on the thread's first photo).
    pub fn new(config: DetectorConfig) -> Self {
        builtin_model();
        Self { config }
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

    /// The pyramid levels of a `width` x `height` scanned copy, largest first: as rustface's
    /// pyramid, each level's size is the copy's times the running product of `pyramid_scale`,
    /// truncated, down to the last level that still holds a window.
    pub fn pyramid(&self, width: u32, height: u32) -> Vec<(u32, u32)> {
        let factor = self.config.pyramid_scale.clamp(0.1, 0.99);
        let mut levels = Vec::new();
        let mut scale = 1.0f32;
        loop {
            let (w, h) = (
                (width as f32 * scale) as u32,
                (height as f32 * scale) as u32,
            );
            if w < WINDOW || h < WINDOW {
                return levels;
            }
            levels.push((w, h));
            scale *= factor;
        }
    }

    /// Every face in `gray`, surest first, in the photo's pixels.
    pub fn detect(&self, gray: &GrayImage) -> Vec<Detection> {
        let (w, h) = gray.dimensions();
        let scale = self.scan_scale(w, h);
        let (sw, sh) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        let levels = self.pyramid(sw, sh);
        if levels.is_empty() {
            return Vec::new();
        }
        let scaled;
        let base = if (sw, sh) == (w, h) {
            gray
        } else {
            scaled = scale_to(gray, sw, sh);
            &scaled
        };
        let groups = level_groups(&levels);
        // Groups go to whichever thread is free, largest first, so the threads end together.
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by(|&a, &b| groups[b].pixels.total_cmp(&groups[a].pixels));
        let next = AtomicUsize::new(0);
        let workers = rayon::current_num_threads().clamp(1, groups.len());
        let mut per_group: Vec<(usize, Vec<Detection>)> = (0..workers)
            .into_par_iter()
            .flat_map_iter(|_| {
                let mut mine = Vec::new();
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let group = groups[i];
                    mine.push((i, self.scan_levels(base, levels[group.start], group.len)));
                }
                mine
            })
            .collect();
        per_group.sort_by_key(|(i, _)| *i);
        let (fx, fy) = (w as f32 / sw as f32, h as f32 / sh as f32);
        merge_groups(per_group.into_iter().map(|(_, faces)| faces).collect())
            .into_iter()
            .filter(|d| d.score as f64 >= self.config.score_threshold)
            .map(|d| Detection {
                bbox: FaceBox {
                    left: d.bbox.left * fx,
                    top: d.bbox.top * fy,
                    width: d.bbox.width * fx,
                    height: d.bbox.height * fy,
                },
                score: d.score,
            })
            .collect()
    }

    /// The faces rustface finds in `base` resampled to `size` (a pyramid level) and the `count`
    /// levels from there (`None`: all the smaller levels), with no score threshold, in `base`'s
    /// pixels. rustface builds those levels itself and re-scores its candidates in the copy it
    /// was given, so the largest level of the group sets the resolution of its boxes.
    fn scan_levels(
        &self,
        base: &GrayImage,
        (w, h): (u32, u32),
        count: Option<usize>,
    ) -> Vec<Detection> {
        let resampled;
        let level = if (w, h) == base.dimensions() {
            base
        } else {
            resampled = bilinear(base, w, h);
            &resampled
        };
        let factor = self.config.pyramid_scale.clamp(0.1, 0.99);
        // rustface scans the scales down to WINDOW / max face. For `count` levels, half a level
        // past the last one keeps rounding away from the limit. For all of them, one pixel less
        // than the shorter side: with the side itself, a scale that passes its limit by a
        // rounding error gives a level one pixel narrower than the window, which rustface does
        // not check for (its window loop's bound would wrap around).
        let max_face = match count {
            Some(n) => (WINDOW as f32 / factor.powf(n as f32 - 0.5)).floor() as u32,
            None => (w.min(h) - 1).max(WINDOW),
        };
        let faces = CASCADE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let cascade = cell.get_or_insert_with(|| {
                rustface::create_detector_with_model(builtin_model().clone())
            });
            let step = self.config.step.max(1);
            cascade.set_slide_window_step(step, step);
            cascade.set_pyramid_scale_factor(factor);
            cascade.set_max_face_size(max_face);
            // Thresholded after merging across groups (rustface refuses 0).
            cascade.set_score_thresh(f64::MIN_POSITIVE);
            cascade.detect(&rustface::ImageData::new(level.as_raw(), w, h))
        });
        let (fx, fy) = (
            base.width() as f32 / w as f32,
            base.height() as f32 / h as f32,
        );
        faces
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
            .collect()
    }
}

/// Consecutive pyramid levels scanned together: `len` levels from `start` (`None`: all the rest),
/// holding `pixels` pixels (a level's work goes with its pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
struct LevelGroup {
    start: usize,
    len: Option<usize>,
    pixels: f64,
}

/// The pyramid split: the largest levels alone while the levels below them still hold more than
/// a third of the pixels, then the rest together. With levels 0.8 apart that is 0.36 and 0.23 of
/// the work alone and 0.41 together: taken largest first, two threads get 0.41 and 0.59. (A
/// finer split balances better, but the last group re-scores its candidates in its own first
/// level, and a coarser copy there let a dog's face through; see results/detector.md.) The split
/// does not depend on the number of threads, so neither do the faces found.
fn level_groups(levels: &[(u32, u32)]) -> Vec<LevelGroup> {
    let pixels: Vec<f64> = levels.iter().map(|&(w, h)| w as f64 * h as f64).collect();
    let total: f64 = pixels.iter().sum();
    let mut groups = Vec::new();
    let mut start = 0;
    while start + 1 < levels.len() && pixels[start + 1..].iter().sum::<f64>() > total / 3.0 {
        groups.push(LevelGroup {
            start,
            len: Some(1),
            pixels: pixels[start],
        });
        start += 1;
    }
    if start < levels.len() {
        groups.push(LevelGroup {
            start,
            len: None,
            pixels: pixels[start..].iter().sum(),
        });
    }
    groups
}

/// The faces of all groups as one rustface run would report them. Between its stages rustface
/// drops a candidate overlapping a surer one by more than 0.8, so only the surer one reaches the
/// last merge; candidates of different groups never met there, so such near-duplicates are
/// dropped here first (they would otherwise add their scores twice), then the rest merged as
/// rustface's last step merges them.
fn merge_groups(groups: Vec<Vec<Detection>>) -> Vec<Detection> {
    let mut all: Vec<(usize, Detection)> = groups
        .into_iter()
        .enumerate()
        .flat_map(|(g, faces)| faces.into_iter().map(move |d| (g, d)))
        .collect();
    all.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
    let mut dropped = vec![false; all.len()];
    for i in 0..all.len() {
        if dropped[i] {
            continue;
        }
        for j in i + 1..all.len() {
            if !dropped[j]
                && all[j].0 != all[i].0
                && iou(&all[i].1.bbox, &all[j].1.bbox) > DUPLICATE_IOU
            {
                dropped[j] = true;
            }
        }
    }
    let kept = all
        .into_iter()
        .zip(dropped)
        .filter(|(_, dropped)| !dropped)
        .map(|((_, d), _)| d)
        .collect();
    merge_overlapping(kept, MERGE_IOU)
}

/// Non-maximum suppression as rustface's: surest first, each box absorbs the later boxes that
/// overlap it by more than `min_iou` and scores the sum of their scores. Sorted surest first;
/// ties keep the input order.
pub fn merge_overlapping(mut boxes: Vec<Detection>, min_iou: f32) -> Vec<Detection> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut merged = vec![false; boxes.len()];
    let mut kept = Vec::new();
    for i in 0..boxes.len() {
        if merged[i] {
            continue;
        }
        let mut face = boxes[i];
        for j in i + 1..boxes.len() {
            if !merged[j] && iou(&boxes[i].bbox, &boxes[j].bbox) > min_iou {
                merged[j] = true;
                face.score += boxes[j].score;
            }
        }
        kept.push(face);
    }
    kept.sort_by(|a, b| b.score.total_cmp(&a.score));
    kept
}

/// `src` resampled to `width` x `height` with rustface's bilinear rule (source position
/// `x * src_width / width`, no half-pixel shift, truncated to u8), which its pyramid levels and
/// the model's training used; when enlarging, the last row and column hold the edge pixel where
/// that rule would extrapolate. Both images must be at least 2 x 2.
fn bilinear(src: &GrayImage, width: u32, height: u32) -> GrayImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let taps = |from: usize, to: u32| -> Vec<(usize, f32)> {
        let ratio = from as f64 / to as f64;
        (0..to)
            .map(|i| {
                let at = ratio * i as f64;
                let n = (at as usize).min(from - 2);
                // Past the last pair of pixels (enlarging only) hold the edge, not extrapolate.
                (n, (at - n as f64).min(1.0) as f32)
            })
            .collect()
    };
    let (xs, ys) = (taps(sw, width), taps(sh, height));
    let raw = src.as_raw();
    let mut out = Vec::with_capacity(width as usize * height as usize);
    let mut row = vec![0f32; sw];
    for &(n, wy) in &ys {
        let (r0, r1) = (&raw[n * sw..(n + 1) * sw], &raw[(n + 1) * sw..(n + 2) * sw]);
        for ((v, &a), &b) in row.iter_mut().zip(r0).zip(r1) {
            *v = (1.0 - wy) * a as f32 + wy * b as f32;
        }
        out.extend(
            xs.iter()
                .map(|&(n, wx)| ((1.0 - wx) * row[n] + wx * row[n + 1]) as u8),
        );
    }
    GrayImage::from_raw(width, height, out).unwrap_or_else(|| unreachable!("sized above"))
}

/// `src` at `width` x `height` for scanning: halved by 2x2 averages while the target is at most
/// half the size (so a large photo's pixels are all used, not skipped), then bilinear.
fn scale_to(src: &GrayImage, width: u32, height: u32) -> GrayImage {
    let mut halved: Option<GrayImage> = None;
    loop {
        let at = halved.as_ref().unwrap_or(src);
        if at.width() < 2 * width.max(1) || at.height() < 2 * height.max(1) {
            break;
        }
        halved = Some(halve(at));
    }
    let at = halved.as_ref().unwrap_or(src);
    if at.dimensions() == (width, height) {
        at.clone()
    } else {
        bilinear(at, width, height)
    }
}

/// 2x2 block averages (an odd last row or column is dropped).
fn halve(src: &GrayImage) -> GrayImage {
    let (w, h) = (src.width() / 2, src.height() / 2);
    let (sw, raw) = (src.width() as usize, src.as_raw());
    let mut out = Vec::with_capacity(w as usize * h as usize);
    for y in 0..h as usize {
        let (r0, r1) = (&raw[2 * y * sw..], &raw[(2 * y + 1) * sw..]);
        out.extend((0..w as usize).map(|x| {
            let sum =
                r0[2 * x] as u16 + r0[2 * x + 1] as u16 + r1[2 * x] as u16 + r1[2 * x + 1] as u16;
            ((sum + 2) / 4) as u8
        }));
    }
    GrayImage::from_raw(w, h, out).unwrap_or_else(|| unreachable!("sized above"))
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

    fn d(left: f32, top: f32, size: f32, score: f32) -> Detection {
        Detection {
            bbox: b(left, top, size, size),
            score,
        }
    }

    #[test]
    fn overlapping_boxes_merge_into_the_surest_scoring_their_sum() {
        let found = vec![
            d(100.0, 100.0, 40.0, 1.0),  // the face, as one level saw it
            d(300.0, 50.0, 60.0, 2.5),   // another face
            d(104.0, 98.0, 44.0, 3.0),   // the first face, from the next level: surest
            d(102.0, 103.0, 38.0, 0.5),  // and from a third
            d(130.0, 100.0, 40.0, 0.25), // beside it: IoU 0.14 with the surest, kept
        ];
        let merged = merge_overlapping(found, MERGE_IOU);
        assert_eq!(
            merged,
            vec![
                d(104.0, 98.0, 44.0, 4.5),
                d(300.0, 50.0, 60.0, 2.5),
                d(130.0, 100.0, 40.0, 0.25),
            ]
        );
        assert!(merge_overlapping(Vec::new(), MERGE_IOU).is_empty());
    }

    #[test]
    fn near_duplicates_of_different_groups_count_once() {
        let groups = vec![
            vec![d(100.0, 100.0, 40.0, 3.0), d(300.0, 50.0, 60.0, 1.0)],
            // The same face from another group (IoU 0.86): dropped, not added.
            vec![d(101.0, 101.0, 39.0, 2.0), d(104.0, 98.0, 50.0, 0.5)],
        ];
        assert_eq!(
            merge_groups(groups),
            vec![d(100.0, 100.0, 40.0, 3.5), d(300.0, 50.0, 60.0, 1.0)]
        );
        // Within a group rustface has already done it: the same boxes add up.
        let one = vec![vec![d(100.0, 100.0, 40.0, 3.0), d(101.0, 101.0, 39.0, 2.0)]];
        assert_eq!(merge_groups(one), vec![d(100.0, 100.0, 40.0, 5.0)]);
    }

    #[test]
    fn the_pyramid_follows_rustfaces_and_its_groups_cover_it_once() {
        let detector = FaceDetector::new(DetectorConfig::default());
        let levels = detector.pyramid(1024, 797);
        assert_eq!(levels[0], (1024, 797));
        assert_eq!(levels[1], (819, 637));
        // Down to the last level that holds a 40-pixel window: 797 * 0.8^13 = 43.7.
        assert_eq!(levels.len(), 14);
        assert!(levels.iter().all(|&(w, h)| w >= WINDOW && h >= WINDOW));
        assert!(detector.pyramid(39, 500).is_empty());
        assert_eq!(detector.pyramid(40, 40), vec![(40, 40)]);

        for n in [1, 2, 3, 4, 14] {
            let groups = level_groups(&levels[..n]);
            let mut next = 0;
            for (i, group) in groups.iter().enumerate() {
                assert_eq!(group.start, next, "{groups:?}");
                match group.len {
                    Some(len) => next += len,
                    None => {
                        assert_eq!(i, groups.len() - 1, "{groups:?}");
                        next = n;
                    }
                }
            }
            assert_eq!(next, n, "{groups:?}");
        }
        // Levels 0.8 apart: 0.36 and 0.23 of the pixels alone, the rest (0.41) together.
        let groups = level_groups(&levels);
        let total: f64 = groups.iter().map(|g| g.pixels).sum();
        let shares: Vec<f64> = groups
            .iter()
            .map(|g| (g.pixels / total * 100.0).round())
            .collect();
        assert_eq!(shares, vec![36.0, 23.0, 41.0], "{groups:?}");
        assert_eq!((groups[2].start, groups[2].len), (2, None));
    }

    #[test]
    fn resampling_follows_rustfaces_bilinear_rule() {
        let src = GrayImage::from_fn(37, 23, |x, y| image::Luma([((x * 7 + y * 13) % 256) as u8]));
        for (w, h) in [(29, 18), (37, 23), (50, 31), (2, 2)] {
            let ours = bilinear(&src, w, h);
            // rustface's resize_image, in f64 (with the edge held when enlarging).
            let (sx, sy) = (37.0 / w as f64, 23.0 / h as f64);
            for (x, y, p) in ours.enumerate_pixels() {
                let (fx, fy) = (sx * x as f64, sy * y as f64);
                let (nx, ny) = ((fx as u32).min(35), (fy as u32).min(21));
                let (wx, wy) = ((fx - nx as f64).min(1.0), (fy - ny as f64).min(1.0));
                let at = |x: u32, y: u32| src.get_pixel(x, y)[0] as f64;
                let want = (1.0 - wy) * ((1.0 - wx) * at(nx, ny) + wx * at(nx + 1, ny))
                    + wy * ((1.0 - wx) * at(nx, ny + 1) + wx * at(nx + 1, ny + 1));
                assert!(
                    (p[0] as f64 - want).abs() <= 1.0,
                    "({x}, {y}): {} vs {want}",
                    p[0]
                );
            }
        }
        let halved = halve(&GrayImage::from_raw(3, 2, vec![0, 10, 99, 20, 31, 99]).unwrap());
        assert_eq!(halved.as_raw(), &vec![15]);
        // A large photo is halved before the last bilinear step.
        assert_eq!(scale_to(&src, 9, 5).dimensions(), (9, 5));
    }

    /// dlib's example photos in the data folder, or `None` with a visible message when they
    /// are absent.
    fn example_faces() -> Option<std::path::PathBuf> {
        let dir = crate::test_data::data_root().join("dlib_example_faces");
        if dir.join("testing.xml").is_file() {
            Some(dir)
        } else {
            eprintln!("SKIPPED: no dlib example faces in {}", dir.display());
            None
        }
    }

    /// The pyramid's groups run on whichever threads are free: on real photos one thread and two
    /// find the same faces, every annotated face of dlib's testing photos once, and no face twice.
    #[test]
    fn faces_found_on_two_threads_are_those_of_one_each_kept_once() {
        let Some(dir) = example_faces() else { return };
        let labels = crate::dataset::read_labels(&dir.join("testing.xml")).unwrap();
        let mut photos: Vec<(GrayImage, Vec<FaceBox>)> = labels
            .iter()
            .map(|image| {
                let gray = crate::data::images::load_photo(&image.image_path)
                    .unwrap()
                    .into_luma8();
                (gray, image.faces.iter().map(|f| f.bbox).collect())
            })
            .collect();
        let bald = crate::data::images::load_photo(&dir.join("bald_guys.jpg")).unwrap();
        photos.push((bald.into_luma8(), Vec::new()));
        let detector = FaceDetector::new(DetectorConfig::default());
        let on = |threads: usize| -> Vec<Vec<Detection>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                photos
                    .iter()
                    .map(|(gray, _)| detector.detect(gray))
                    .collect()
            })
        };
        let (one, two) = (on(1), on(2));
        assert_eq!(one, two);
        let mut annotated = 0;
        for ((_, faces), found) in photos.iter().zip(&two) {
            let boxes: Vec<FaceBox> = found.iter().map(|d| d.bbox).collect();
            for (i, a) in boxes.iter().enumerate() {
                for b in &boxes[i + 1..] {
                    assert!(iou(a, b) <= MERGE_IOU, "one face twice: {a:?} {b:?}");
                }
            }
            let matched = match_detections(faces, &boxes, 0.3);
            assert!(matched.iter().all(Option::is_some), "{faces:?} {boxes:?}");
            annotated += faces.len();
        }
        assert_eq!(annotated, 25);
        // The collage's 24 faces, of many sizes.
        assert_eq!(two.last().unwrap().len(), 24);
    }

    #[test]
    fn a_blank_or_tiny_image_has_no_faces() {
        let detector = FaceDetector::new(DetectorConfig::default());
        assert!(detector.detect(&GrayImage::new(200, 150)).is_empty());
        assert!(detector.detect(&GrayImage::new(5, 5)).is_empty());
        // Pyramids ending at (or a rounding error from) the window: no level narrower than it.
        let texture =
            |w, h| GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 31) ^ (y * 17)) as u8]));
        for side in (39..=130).chain([250, 253, 512]) {
            for (w, h) in [(side, side), (side, 3 * side / 2), (5 * side / 3, side)] {
                detector.detect(&texture(w, h));
            }
        }
    }
}
