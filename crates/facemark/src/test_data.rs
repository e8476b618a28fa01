//! Where the library's tests find the real data.
//!
//! `FACEMARK_DATA` is read from the workspace's folder when it is relative: cargo runs a crate's
//! tests in the crate's own folder, while the README's command (`FACEMARK_DATA=../shared/data
//! cargo nextest run --workspace`) names it from the workspace's. Without the variable, the data
//! is `../shared/data` beside the workspace, as in CI.

use std::path::{Path, PathBuf};

pub fn data_root() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // `join` keeps an absolute path as it is.
    match std::env::var_os("FACEMARK_DATA") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("../shared/data"),
    }
}
