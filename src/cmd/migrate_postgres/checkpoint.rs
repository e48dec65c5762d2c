//! The checkpoint of a migration: the key of the last row whose chunk is durably written and the
//! report so far, in a JSON file replaced atomically (write a temporary file, then rename) after each
//! chunk. A run with the same file continues after that key; a file written for another source is
//! refused.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::report::Report;
use super::source::Key;
use super::MigrateError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The relation's SQL: a checkpoint only resumes the migration it was written for.
    pub source: String,
    pub after: Option<Key>,
    pub report: Report,
    pub complete: bool,
}

impl Checkpoint {
    pub fn new(source: String) -> Self {
        Self {
            source,
            after: None,
            report: Report::default(),
            complete: false,
        }
    }

    /// The checkpoint in `path`, or a fresh one if there is none.
    pub fn load(path: &Path, source: &str) -> Result<Self, MigrateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::new(source.to_string()))
            }
            Err(e) => return Err(problem(path, CheckpointError::Io(e))),
        };
        let checkpoint: Checkpoint =
            serde_json::from_str(&text).map_err(|e| problem(path, CheckpointError::Json(e)))?;
        if checkpoint.source != source {
            return Err(problem(path, CheckpointError::OtherSource));
        }
        Ok(checkpoint)
    }

    pub fn save(&self, path: &Path) -> Result<(), MigrateError> {
        let fail = |e: std::io::Error| problem(path, CheckpointError::Io(e));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serializes")).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// Why a checkpoint file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Io(std::io::Error),
    #[error("not a checkpoint")]
    Json(#[source] serde_json::Error),
    #[error("it was written for another table or query")]
    OtherSource,
}

fn problem(path: &Path, problem: CheckpointError) -> MigrateError {
    MigrateError::Checkpoint {
        path: path.to_path_buf(),
        problem,
    }
}
