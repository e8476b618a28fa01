//! Data sets and their file formats.
//!
//! Each reader returns samples with landmarks in the pixel coordinates of the original image, so
//! every later stage (cropping, resizing, augmentation, metrics) works from one convention:
//! continuous coordinates where pixel `i` covers `[i, i + 1)`.

pub mod images;
pub mod imm;

use std::path::PathBuf;

pub use images::{Example, load_gray};

/// A 2-D point `[x, y]`.
pub type Point = [f32; 2];

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
    #[error("{0}")]
    MissingDataSet(String),
}
