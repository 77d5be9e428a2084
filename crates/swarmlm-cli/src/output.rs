//! How the binary talks to people: tracing on stderr, and errors as one readable message.

use std::process::ExitCode;

/// Log to stderr; `-v` raises the level, `-q` keeps only errors. `RUST_LOG` overrides both.
pub fn init_tracing(verbose: u8, quiet: bool) {
    let level = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// An error with a "what to do next" line, printed after the error and its causes.
#[derive(Debug)]
pub struct Hinted {
    pub error: anyhow::Error,
    pub hint: String,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Hinted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Attach a hint (what the user can do next) to an error.
pub fn hint(err: impl Into<anyhow::Error>, hint: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        error: err.into(),
        hint: hint.to_string(),
    })
}

/// Print an error with its chain of causes and its hint, if any, then return exit code 1.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    let inner = err.downcast_ref::<Hinted>();
    let chain = match inner {
        Some(h) => h.error.chain().skip(1),
        None => err.chain().skip(1),
    };
    for cause in chain {
        eprintln!("  caused by: {cause}");
    }
    if let Some(h) = inner {
        eprintln!("hint: {}", h.hint);
    }
    ExitCode::from(1)
}
