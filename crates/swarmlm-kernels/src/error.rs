//! The typed error for mismatched kernel arguments.
//!
//! The plain kernel functions (the engine's hot path) treat a shape mismatch as a caller bug and
//! panic with this error's message; the `try_*` variants return it so a caller that builds shapes
//! from untrusted files can report which argument was wrong instead.

use std::fmt;

/// A kernel argument whose length (or value) does not fit the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// `arg` of `kernel` has `got` elements where `expected` were required.
    Length {
        kernel: &'static str,
        arg: &'static str,
        expected: usize,
        got: usize,
    },
    /// `arg` of `kernel` is invalid for another reason, described by `what`.
    Invalid {
        kernel: &'static str,
        arg: &'static str,
        what: String,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Length {
                kernel,
                arg,
                expected,
                got,
            } => write!(
                f,
                "{kernel}: argument `{arg}` has {got} elements, expected {expected}"
            ),
            KernelError::Invalid { kernel, arg, what } => {
                write!(f, "{kernel}: argument `{arg}` is invalid: {what}")
            }
        }
    }
}

impl std::error::Error for KernelError {}

pub(crate) fn check_len(
    kernel: &'static str,
    arg: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Length {
            kernel,
            arg,
            expected,
            got,
        })
    }
}

pub(crate) fn check_min_len(
    kernel: &'static str,
    arg: &'static str,
    min: usize,
    got: usize,
) -> Result<(), KernelError> {
    if got >= min {
        Ok(())
    } else {
        Err(KernelError::Invalid {
            kernel,
            arg,
            what: format!("has {got} elements, needs at least {min}"),
        })
    }
}

/// `a * b` or an error naming the product that overflowed.
pub(crate) fn mul(
    kernel: &'static str,
    arg: &'static str,
    a: usize,
    b: usize,
) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or_else(|| KernelError::Invalid {
        kernel,
        arg,
        what: format!("size {a} x {b} overflows usize"),
    })
}

/// Panics with the error's message; the plain kernels' contract for caller bugs.
#[track_caller]
pub(crate) fn or_panic(r: Result<(), KernelError>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}
