//! Where a model named on the command line lives: a folder path, or the name of a fetched model
//! in the local store (`$SWARMLM_HOME/models/<name>`, else `$XDG_DATA_HOME/swarmlm/models/<name>`,
//! else `~/.local/share/swarmlm/models/<name>`).

use std::path::PathBuf;

use swarmlm_manifest::store;

use crate::error::{EngineError, Result};

/// The folder fetched models are stored under, from the environment. The rule itself lives in
/// `swarmlm_manifest::store` (one implementation for every crate); with none of its variables
/// set this falls back to a path relative to the working directory.
pub fn models_root() -> PathBuf {
    store::models_root().unwrap_or_else(|| PathBuf::from(".local/share/swarmlm/models"))
}

/// `arg` if it is a folder; otherwise the store entry of that name if it is a folder (the
/// folder cases of `swarmlm_manifest::store::resolve`; manifests, magnets and catalogue names are
/// for `fetch`, not for running).
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let root = models_root();
    match store::resolve_in(arg, Some(&root)) {
        store::Resolved::Folder(dir) => Ok(dir),
        _ => Err(EngineError::ModelNotFound {
            name: arg.to_string(),
            searched: root,
        }),
    }
}
