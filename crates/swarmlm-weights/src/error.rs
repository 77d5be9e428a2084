//! One error type for everything that can go wrong while opening or reading a checkpoint.
//!
//! Every variant names the file (and where it applies the tensor, field, opcode or global) and
//! what was expected, so a user looking at a half-downloaded or hostile model folder can tell
//! exactly which byte range is at fault without a debugger.

use std::fmt;
use std::path::PathBuf;

/// A tensor that the config implies but the checkpoint does not provide as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    /// The config implies this tensor but no file holds it.
    Missing { name: String, expected: Vec<usize> },
    /// The tensor exists with another shape.
    WrongShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorProblem::Missing { name, expected } => {
                write!(f, "{name}: missing (expected shape {expected:?})")
            }
            TensorProblem::WrongShape {
                name,
                expected,
                actual,
            } => write!(f, "{name}: shape {actual:?}, expected {expected:?}"),
        }
    }
}

fn list_problems(problems: &[TensorProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("\n  {p}"))
        .collect::<String>()
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a regular file (weights are only mapped from regular files)")]
    NotRegularFile { path: PathBuf },

    #[error(
        "{dir}: no checkpoint found (expected config.json with model.safetensors or \
         model.safetensors.index.json, or params.json with consolidated.00.pth)"
    )]
    NoCheckpoint { dir: PathBuf },

    #[error("{dir}: {reason}")]
    UnsupportedLayout { dir: PathBuf, reason: String },

    #[error("{file}: invalid JSON: {reason}")]
    ConfigJson { file: PathBuf, reason: String },

    #[error("{file}: field `{field}`: {reason}")]
    ConfigField {
        file: PathBuf,
        field: String,
        reason: String,
    },

    #[error("config: `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    // ---- safetensors ----
    #[error(
        "{file}: file is {file_len} bytes, too short for the 8-byte safetensors header length"
    )]
    FileTooShort { file: PathBuf, file_len: u64 },

    #[error("{file}: safetensors header claims {header_len} bytes but the file is only {file_len} bytes")]
    HeaderBeyondFile {
        file: PathBuf,
        header_len: u64,
        file_len: u64,
    },

    #[error("{file}: safetensors header is {header_len} bytes, above the {limit}-byte limit")]
    HeaderTooLarge {
        file: PathBuf,
        header_len: u64,
        limit: u64,
    },

    #[error("{file}: safetensors header is not valid JSON of the expected form: {reason}")]
    HeaderJson { file: PathBuf, reason: String },

    #[error(
        "{file}: tensor `{tensor}`: dtype {dtype} is not supported (expected BF16, F16 or F32)"
    )]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error(
        "{file}: tensor `{tensor}`: data bytes {begin}..{end} lie outside the data area of {data_len} bytes"
    )]
    TensorOutOfBounds {
        file: PathBuf,
        tensor: String,
        begin: u64,
        end: u64,
        data_len: u64,
    },

    #[error("{file}: tensors `{first}` and `{second}` overlap in the data area")]
    TensorOverlap {
        file: PathBuf,
        first: String,
        second: String,
    },

    #[error(
        "{file}: tensor `{tensor}`: holds {actual} bytes but shape {shape:?} of {dtype} needs {expected}"
    )]
    TensorByteLength {
        file: PathBuf,
        tensor: String,
        shape: Vec<usize>,
        dtype: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "{file}: tensor `{tensor}`: data starts at file offset {offset}, not a multiple of its {align}-byte element size"
    )]
    Misaligned {
        file: PathBuf,
        tensor: String,
        offset: u64,
        align: usize,
    },

    #[error("{file}: tensor `{tensor}` appears more than once (also in {other})")]
    DuplicateTensor {
        file: PathBuf,
        tensor: String,
        other: PathBuf,
    },

    // ---- sharded index ----
    #[error("{index}: {reason}")]
    IndexJson { index: PathBuf, reason: String },

    #[error("{index}: names shard `{shard}` but {path} does not exist")]
    MissingShard {
        index: PathBuf,
        shard: String,
        path: PathBuf,
    },

    #[error("{index}: maps tensor `{tensor}` to shard `{shard}`, but that shard does not hold it")]
    IndexMismatch {
        index: PathBuf,
        tensor: String,
        shard: String,
    },

    #[error("{dir}: {} tensor(s) missing or of the wrong shape for the config:{}", problems.len(), list_problems(problems))]
    TensorsMismatch {
        dir: PathBuf,
        problems: Vec<TensorProblem>,
    },

    // ---- lookups ----
    #[error("no tensor named `{name}` in the checkpoint")]
    UnknownTensor { name: String },

    #[error("tensor `{tensor}` is {actual}, not {expected}")]
    DtypeMismatch {
        tensor: String,
        expected: Dtype,
        actual: Dtype,
    },

    #[error("tensor `{tensor}`: its bytes are not aligned for a {dtype} view")]
    ViewMisaligned { tensor: String, dtype: Dtype },

    // ---- zip / .pth ----
    #[error("{file}: zip archive: {reason}")]
    Zip { file: PathBuf, reason: String },

    #[error("{file}: zip entry `{entry}` is compressed (method {method}); only stored entries can be mapped")]
    ZipCompressed {
        file: PathBuf,
        entry: String,
        method: u16,
    },

    #[error(
        "{file}: data.pkl at byte {pos}: opcode {opcode} is not allowed in a state dict pickle"
    )]
    PickleOpcode {
        file: PathBuf,
        pos: usize,
        opcode: String,
    },

    #[error("{file}: data.pkl at byte {pos}: global `{global}` is not allowed (only OrderedDict, _rebuild_tensor_v2 and torch storage/dtype types)")]
    PickleGlobal {
        file: PathBuf,
        pos: usize,
        global: String,
    },

    #[error("{file}: data.pkl at byte {pos}: {reason}")]
    Pickle {
        file: PathBuf,
        pos: usize,
        reason: String,
    },

    #[error("{file}: tensor `{tensor}`: {reason}")]
    PthTensor {
        file: PathBuf,
        tensor: String,
        reason: String,
    },

    #[error("{file}: tensor name `{name}` is not a Mixtral tensor name")]
    UnknownPthName { file: PathBuf, name: String },

    // ---- resident-memory helpers ----
    #[error("tensor `{tensor}`: {op} failed: {source}")]
    Syscall {
        tensor: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

use crate::Dtype;

impl WeightsError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
