//! Data sets and their file formats.
//!
//! Each reader returns samples with landmarks in the pixel coordinates of the original image, so
//! every later stage (cropping, resizing, augmentation, metrics) works from one convention:
//! continuous coordinates where pixel `i` covers `[i, i + 1)`.

pub mod dlib_xml;
pub mod ibug;
pub mod images;
pub mod imm;
pub mod pts;

use std::path::PathBuf;

pub use images::{DecodeOptions, DecodedImage, Example, load_gray, load_gray_with};

/// A 2-D point `[x, y]`.
pub type Point = [f32; 2];

/// An axis-aligned face box in continuous pixel coordinates: it covers `[left, left + width)` x
/// `[top, top + height)`. A dlib box `top='t' left='l' width='w' height='h'` (inclusive integer
/// pixels) is `FaceBox { left: l, top: t, width: w, height: h }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
}

/// How many times the image's longer side a face box's side may be: far beyond any real face (a
/// face filling a photo is about 1x; detectors' loose boxes reach 2x), yet a box of 10^6 pixels
/// from a unit mix-up is caught.
pub const MAX_BOX_TO_IMAGE: f32 = 10.0;

/// Why a face box does not fit its image. Each message names the box as `(left, top, width,
/// height)`; the caller adds the image's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaceBoxError {
    #[error("face box {0} has a value that is not a finite number")]
    NotFinite(BoxText),
    #[error("face box {0} is empty: its width and height must be positive")]
    Empty(BoxText),
    #[error("face box {box_text} lies outside the {width}x{height} image")]
    Outside {
        box_text: BoxText,
        width: u32,
        height: u32,
    },
    #[error(
        "face box {box_text} is more than {MAX_BOX_TO_IMAGE} times the {width}x{height} image's \
         longer side"
    )]
    TooLarge {
        box_text: BoxText,
        width: u32,
        height: u32,
    },
}

/// A face box as its message shows it: `(left,top,width,height)`, as `--box` takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxText(pub FaceBox);

impl std::fmt::Display for BoxText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(f, "({},{},{},{})", b.left, b.top, b.width, b.height)
    }
}

impl FaceBox {
    pub const fn new(left: f32, top: f32, width: f32, height: f32) -> Self {
        Self {
            left,
            top,
            width,
            height,
        }
    }

    /// Checks the box alone: finite numbers and a positive width and height. What an image size
    /// cannot be checked against (a label file that does not state it) still gets this.
    pub fn validate_shape(&self) -> Result<(), FaceBoxError> {
        let values = [self.left, self.top, self.width, self.height];
        if !values.iter().all(|v| v.is_finite()) {
            return Err(FaceBoxError::NotFinite(BoxText(*self)));
        }
        if self.width <= 0.0 || self.height <= 0.0 {
            return Err(FaceBoxError::Empty(BoxText(*self)));
        }
        Ok(())
    }

    /// Checks that the box can be a face in a `image_width` x `image_height` image: finite, with
    /// a positive width and height ([`FaceBox::validate_shape`]), overlapping the image by some
    /// area, and no side more than [`MAX_BOX_TO_IMAGE`] times the image's longer side. A box may
    /// stick out of the image (a face at the border, or a detector's loose box): cropping pads.
    pub fn validate(&self, image_width: u32, image_height: u32) -> Result<(), FaceBoxError> {
        self.validate_shape()?;
        let (w, h) = (image_width as f32, image_height as f32);
        let overlaps = self.left < w
            && self.left + self.width > 0.0
            && self.top < h
            && self.top + self.height > 0.0;
        if !overlaps {
            return Err(FaceBoxError::Outside {
                box_text: BoxText(*self),
                width: image_width,
                height: image_height,
            });
        }
        if self.width.max(self.height) > MAX_BOX_TO_IMAGE * w.max(h) {
            return Err(FaceBoxError::TooLarge {
                box_text: BoxText(*self),
                width: image_width,
                height: image_height,
            });
        }
        Ok(())
    }
}

/// One annotated face: its box and landmarks (continuous pixel coordinates of the image; may be
/// empty when only a box is known).
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotatedFace {
    pub bbox: FaceBox,
    pub points: Vec<Point>,
    /// Where the points were read from.
    pub source: PointSource,
}

/// Where a face's points were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PointSource {
    /// The label file itself (dlib XML parts are whole pixels).
    #[default]
    Labels,
    /// A `.pts` file beside the image (the annotators' sub-pixel coordinates).
    Pts,
}

/// An image with its annotated faces, as a dlib XML `<image>` entry or an image + `.pts` pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledImage {
    /// Absolute, or relative to the current folder (XML paths are resolved against the XML's folder).
    pub image_path: PathBuf,
    /// Image size if the label file states it.
    pub size: Option<(u32, u32)>,
    pub faces: Vec<AnnotatedFace>,
}

/// Errors from reading data sets and images. Each names the file (and line, for text formats).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    MalformedLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot decode image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error(
        "{path}: truncated JPEG (its data ends before the end-of-image marker): refused; the \
         file was probably cut short by an interrupted copy or download"
    )]
    TruncatedImage { path: PathBuf },
    #[error(
        "{path}: the image is {width}x{height} pixels, more than the {max} per side facemark decodes"
    )]
    ImageTooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        max: u32,
    },
    #[error("{path}: the file holds {bytes} bytes, more than the {max} facemark reads as an image")]
    ImageFileTooLarge { path: PathBuf, bytes: u64, max: u64 },
    #[error("{0}")]
    MissingDataSet(String),
}

/// The smallest box holding all points; `None` for no points.
pub fn tight_box(points: &[Point]) -> Option<FaceBox> {
    let (first, rest) = points.split_first()?;
    let (mut lo, mut hi) = (*first, *first);
    for p in rest {
        for axis in 0..2 {
            lo[axis] = lo[axis].min(p[axis]);
            hi[axis] = hi[axis].max(p[axis]);
        }
    }
    Some(FaceBox {
        left: lo[0],
        top: lo[1],
        width: hi[0] - lo[0],
        height: hi[1] - lo[1],
    })
}

/// Each point's left/right partner, derived from a mean shape: mirrored about its own vertical
/// midline, each point's partner is the nearest point. `None` unless that pairing is a consistent
/// involution (partner of partner is self), which is how dlib-style markups without a stated
/// symmetry still get mirror augmentation when their shape is symmetric.
pub fn derive_mirror(mean_shape: &[Point]) -> Option<Vec<usize>> {
    let k = mean_shape.len();
    if k == 0 {
        return None;
    }
    let midline = mean_shape.iter().map(|p| p[0]).sum::<f32>() / k as f32;
    let partner: Vec<usize> = mean_shape
        .iter()
        .map(|p| {
            let mirrored = [2.0 * midline - p[0], p[1]];
            let d =
                |i: usize| (mean_shape[i][0] - mirrored[0]).hypot(mean_shape[i][1] - mirrored[1]);
            (0..k).min_by(|&a, &b| d(a).total_cmp(&d(b))).unwrap_or(0)
        })
        .collect();
    partner
        .iter()
        .enumerate()
        .all(|(i, &j)| partner[j] == i)
        .then_some(partner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(left: f32, top: f32, width: f32, height: f32) -> FaceBox {
        FaceBox::new(left, top, width, height)
    }

    #[test]
    fn boxes_that_fit_their_image_pass() {
        assert_eq!(bbox(10.0, 20.0, 100.0, 120.0).validate(640, 480), Ok(()));
        // Sticking out of the image, even starting left of it, is fine (`--box -50,...`).
        assert_eq!(bbox(-50.0, -20.0, 200.0, 200.0).validate(640, 480), Ok(()));
        assert_eq!(bbox(600.0, 400.0, 100.0, 100.0).validate(640, 480), Ok(()));
        // Ten times the longer side is the most allowed.
        assert_eq!(bbox(0.0, 0.0, 6400.0, 10.0).validate(640, 480), Ok(()));
    }

    #[test]
    fn nan_and_infinite_boxes_are_refused_by_value() {
        for b in [
            bbox(f32::NAN, 0.0, 10.0, 10.0),
            bbox(0.0, f32::INFINITY, 10.0, 10.0),
            bbox(0.0, 0.0, f32::NAN, 10.0),
            bbox(0.0, 0.0, 10.0, f32::NEG_INFINITY),
        ] {
            let err = b.validate(640, 480).unwrap_err();
            assert!(matches!(err, FaceBoxError::NotFinite(_)), "{err}");
            assert!(b.validate_shape().is_err());
        }
        let text = bbox(f32::NAN, 1.0, 2.0, 3.0)
            .validate(9, 9)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("(NaN,1,2,3)") && text.contains("finite"),
            "{text}"
        );
    }

    #[test]
    fn empty_and_negative_size_boxes_are_refused() {
        for b in [
            bbox(0.0, 0.0, 0.0, 10.0),
            bbox(0.0, 0.0, 10.0, 0.0),
            bbox(50.0, 50.0, -10.0, 10.0),
            bbox(50.0, 50.0, 10.0, -0.5),
        ] {
            let err = b.validate(640, 480).unwrap_err();
            assert!(matches!(err, FaceBoxError::Empty(_)), "{b:?}: {err}");
        }
        let text = bbox(50.0, 50.0, -10.0, 10.0)
            .validate(640, 480)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("(50,50,-10,10)") && text.contains("positive"),
            "{text}"
        );
    }

    #[test]
    fn boxes_outside_the_image_are_refused() {
        for b in [
            bbox(640.0, 10.0, 50.0, 50.0),
            bbox(10.0, 480.0, 50.0, 50.0),
            bbox(-50.0, 10.0, 50.0, 50.0),
            bbox(10.0, -60.0, 50.0, 50.0),
            bbox(1e6, 1e6, 10.0, 10.0),
        ] {
            let err = b.validate(640, 480).unwrap_err();
            assert!(matches!(err, FaceBoxError::Outside { .. }), "{b:?}: {err}");
        }
        let text = bbox(700.0, 10.0, 50.0, 50.0)
            .validate(640, 480)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("(700,10,50,50)") && text.contains("640x480"),
            "{text}"
        );
        // A zero-sized image has nothing to overlap.
        assert!(bbox(0.0, 0.0, 1.0, 1.0).validate(0, 0).is_err());
    }

    #[test]
    fn absurdly_large_boxes_are_refused() {
        for b in [bbox(0.0, 0.0, 6401.0, 100.0), bbox(-1e6, -1e6, 2e6, 2e6)] {
            let err = b.validate(640, 480).unwrap_err();
            assert!(matches!(err, FaceBoxError::TooLarge { .. }), "{b:?}: {err}");
        }
        let text = bbox(0.0, 0.0, 1e5, 10.0)
            .validate(640, 480)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("(0,0,100000,10)") && text.contains("10 times"),
            "{text}"
        );
    }
}
