//! One module per subcommand: each defines its clap `Args` and a `run` that returns the exit code.

pub mod completions;
pub mod create;
pub mod demo;
pub mod fetch;
pub mod forge;
pub mod list;
pub mod perplexity;
pub mod rm;
pub mod run;
pub mod seed;
pub mod serve;
pub mod verify;
pub mod where_;
