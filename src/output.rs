//! What the command prints besides its results: errors in the command line's terms, and
//! photos that could not be read.

use anyhow::{Result, bail};
use facemark::recipe::RecipeError;
use facemark::run::RunError;
use facemark::study::StudyError;

use crate::args::flag;

/// The error chain as a user of the command line reads it: library option names become flags.
pub fn in_flag_terms(error: &anyhow::Error) -> String {
    let recipe = error.chain().find_map(|e| {
        e.downcast_ref::<RecipeError>()
            .or_else(|| match e.downcast_ref::<StudyError>() {
                Some(StudyError::Recipe(r)) => Some(r),
                _ => None,
            })
    });
    match recipe {
        Some(RecipeError::NotApplicable(n)) => {
            let accepted: Vec<String> = n.accepted.iter().map(|o| flag(o)).collect();
            let accepted = if accepted.is_empty() {
                "no options".to_string()
            } else {
                accepted.join(", ")
            };
            return format!(
                "{} does not apply to {}: it takes {accepted}",
                flag(n.option),
                n.family
            );
        }
        Some(RecipeError::FaceBoxOnly { option, task }) => {
            return format!(
                "{} applies to the face-box tasks (ibug68, heatmap), not to {task}",
                flag(option)
            );
        }
        Some(RecipeError::FixedInputSize { family }) => {
            return format!("--size does not apply to {family}: it has a fixed input size");
        }
        _ => {}
    }
    let exists = error
        .chain()
        .find_map(|e| match e.downcast_ref::<RunError>() {
            Some(RunError::Exists(dir)) => Some(dir.clone()),
            _ => e.downcast_ref::<StudyError>().and_then(|s| match s {
                StudyError::Run(RunError::Exists(dir)) => Some(dir.clone()),
                _ => None,
            }),
        });
    if let Some(dir) = exists {
        return format!(
            "{} already holds a run; pass --resume to continue it or --force to start over",
            dir.display()
        );
    }
    format!("{error:#}")
}

/// Prints each photo that could not be read; fails if any could not.
pub fn report_failures(failures: &[facemark::data::DataError], total: usize) -> Result<()> {
    for failure in failures {
        eprintln!("error: {failure}");
    }
    if !failures.is_empty() {
        bail!("{} of {total} images failed", failures.len());
    }
    Ok(())
}
