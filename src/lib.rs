//! facemark: train, evaluate and run facial-keypoint networks.
//!
//! The pipeline, one module per stage:
//! [`data`] reads data sets into images and landmarks, [`augment`] transforms both together,
//! [`model`] holds the networks, [`train`] fits them into a [`run`] directory, [`eval`] measures
//! them, [`figures`] draws the results, [`inference`] runs a trained model on new photos, and
//! [`bench`] measures throughput. [`backend`] picks the compute device once for all of them.

pub mod augment;
pub mod backend;
pub mod bench;
pub mod crop;
pub mod data;
pub mod dataset;
pub mod eval;
pub mod figures;
pub mod heatmap;
pub mod inference;
pub mod model;
pub mod report;
pub mod run;
pub mod train;
