//! facemark: train, evaluate and run facial-keypoint networks.
//!
//! The pipeline, one module per stage (each depends only on those listed before it):
//!
//! | stage | modules |
//! |---|---|
//! | data formats | [`data`] (IMM .asf, 300-W .pts, dlib XML, images), [`scheme`] (landmark markups) |
//! | transforms | [`crop`] (face crops), [`augment`] (affine + photometric, seeded) |
//! | samples | [`dataset`] (one [`dataset::FaceSample`] per face, splits, per-epoch sampling), [`batch`] |
//! | models | [`heatmap`] (targets, loss, prior), [`decode`] (outputs to points), [`model`] (the families) |
//! | recipes | [`contract`] (what inference needs beside the weights), [`recipe`] (run settings, overrides) |
//! | runs | [`run`] (run directories, checkpoints, shipped models) |
//! | metrics | [`eval`], [`calibrate`] (the labels' offset from a trained model's points) |
//! | training | [`train`] (the resumable loop), [`distill`] (a teacher's maps as targets) |
//! | figures and reports | [`figures`], [`report`] |
//! | use | [`detect`] (faces in whole photos), [`inference`] (new photos, the whole-photo pipeline), [`study`] (experiments), [`bench`] (throughput) |
//!
//! [`backend`] picks the compute device once for all of them.

pub mod augment;
pub mod backend;
pub mod batch;
pub mod bench;
pub mod calibrate;
pub mod contract;
pub mod crop;
pub mod data;
pub mod dataset;
pub mod decode;
pub mod detect;
pub mod distill;
pub mod eval;
pub mod figures;
pub mod heatmap;
pub mod inference;
pub mod kernels;
pub mod model;
pub mod recipe;
pub mod report;
pub mod run;
pub mod scheme;
pub mod study;
#[cfg(test)]
mod test_data;
pub mod train;
