//! Typed errors of forging: a bad shape names the config field and what it must be; an I/O
//! failure names the file and the operation.

use std::path::PathBuf;

/// Everything that can stop a forge.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// A shape field (named as in `config.json`) has a value the model cannot have.
    #[error("invalid shape: {field} = {value}: {expected}")]
    InvalidShape {
        field: &'static str,
        value: String,
        expected: String,
    },
    /// Another forge setting (shard size) is out of range.
    #[error("invalid setting: {field} = {value}: {expected}")]
    InvalidSetting {
        field: &'static str,
        value: String,
        expected: String,
    },
    /// Byte or element counts overflow 64 bits (absurd shapes).
    #[error("shape too large: {what} overflows 64 bits")]
    TooLarge { what: String },
    /// The output directory already holds files; forge never overwrites.
    #[error(
        "output directory {path} is not empty ({entries} entries); forge never overwrites files"
    )]
    OutDirNotEmpty { path: PathBuf, entries: usize },
    /// The output path exists and is not a directory.
    #[error("output path {path} exists and is not a directory")]
    OutNotADirectory { path: PathBuf },
    /// A file that forge was about to publish appeared meanwhile.
    #[error("{path} appeared while forging; refusing to replace it")]
    WouldOverwrite { path: PathBuf },
    /// A shape the GGUF file cannot carry over to llama.cpp unchanged.
    #[error("cannot write GGUF: {field} = {value}: {expected}")]
    UnsupportedInGguf {
        field: &'static str,
        value: String,
        expected: String,
    },
    /// The GGUF output path names no file (e.g. it ends in `..` or is a root).
    #[error("GGUF output path {path} does not name a file")]
    OutNotAFile { path: PathBuf },
    /// The embedded tokenizer could not be trimmed (it is compiled in, so this means a broken build).
    #[error("embedded tokenizer.json: {reason}")]
    Tokenizer { reason: String },
    /// Reading or writing a file failed.
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ForgeError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ForgeError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
