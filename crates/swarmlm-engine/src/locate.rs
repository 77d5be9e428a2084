//! Where a model named on the command line lives: a folder path, or the name of a fetched model
//! in the local store (`$SWARMLM_HOME/models/<name>`, else `$XDG_DATA_HOME/swarmlm/models/<name>`,
//! else `~/.local/share/swarmlm/models/<name>`).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// The folder fetched models are stored under, from the environment.
pub fn models_root() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = env("SWARMLM_HOME") {
        return home.join("models");
    }
    if let Some(data) = env("XDG_DATA_HOME") {
        return data.join("swarmlm").join("models");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local/share/swarmlm/models")
}

/// `arg` if it is a folder; otherwise the store entry of that name if it is a folder.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let direct = Path::new(arg);
    if direct.is_dir() {
        return Ok(direct.to_path_buf());
    }
    let root = models_root();
    // A bare name only: never let "../x" or "/abs" escape the store.
    let is_name = !arg.is_empty()
        && !arg.contains('/')
        && !arg.contains(std::path::MAIN_SEPARATOR)
        && arg != "."
        && arg != "..";
    if is_name {
        let stored = root.join(arg);
        if stored.is_dir() {
            return Ok(stored);
        }
    }
    Err(EngineError::ModelNotFound {
        name: arg.to_string(),
        searched: root,
    })
}
