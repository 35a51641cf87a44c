//! The configuration: read the YAML file, validate it, and hand out the typed model.

pub mod bounds;
pub mod discovery;
pub mod edge;
pub mod locate;
pub mod model;
pub mod raw;
pub mod raw_edge;
pub mod schema;
pub mod validate;

pub use edge::*;
pub use model::*;
pub use validate::{ConfigErrors, Problem};

use std::path::Path;

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Read(String),
    /// The file was read but is not valid.
    Invalid(ConfigErrors),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read(msg) => f.write_str(msg),
            LoadError::Invalid(errors) => errors.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

/// Read and validate the file at `path` (reading at most one byte past `bounds::MAX_BYTES`,
/// so that an oversized file is refused without being read whole).
pub fn load(path: &Path) -> Result<Config, LoadError> {
    use std::io::Read;
    let cannot =
        |e: std::io::Error| LoadError::Read(format!("{}: cannot read: {e}", path.display()));
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(bounds::MAX_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(cannot)?;
    parse(path, &text)
}

/// Validate `text` as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, LoadError> {
    validate::validate(path, text).map_err(LoadError::Invalid)
}
