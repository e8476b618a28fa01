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
