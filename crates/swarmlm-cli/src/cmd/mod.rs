//! One module per subcommand: each defines its clap `Args` and a `run` that returns the exit code.

pub mod completions;
pub mod create;
pub mod forge;
pub mod perplexity;
pub mod run;
pub mod list;
pub mod rm;
pub mod where_;
pub mod verify;
