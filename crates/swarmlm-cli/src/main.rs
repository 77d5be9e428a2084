//! The `swarmlm` command: one binary, one subcommand per job.
//!
//! The library crates return typed errors; this binary turns them into one readable message
//! with its causes and a hint, and into the exit codes other tools rely on:
//! 0 success, 1 failure, 2 usage error (clap's own code for bad arguments).

mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fetch open-weight mixture-of-experts models over BitTorrent, verify every byte, seed them
/// back, and run them from memory-mapped weights.
#[derive(Parser, Debug)]
#[command(name = "swarmlm", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Try it offline: fetch a bundled model by magnet from a local seeder, verify, generate.
    Demo(cmd::demo::Args),
    /// Download a model over BitTorrent (magnet, .torrent or manifest) and verify every byte.
    Fetch(cmd::fetch::Args),
    /// Serve a verified model folder to the swarm.
    Seed(cmd::seed::Args),
    /// Make a reproducible .torrent and manifest for a model folder.
    Create(cmd::create::Args),
    /// Check every file of a model folder against its manifest.
    Verify(cmd::verify::Args),
    /// Generate text from a prompt with a local model.
    Run(cmd::run::Args),
    /// Serve a model over an OpenAI-compatible HTTP API, seeding it meanwhile.
    Serve(cmd::serve::Args),
    /// Measure a model's perplexity on a text file.
    Perplexity(cmd::perplexity::Args),
    /// Write a synthetic Mixtral checkpoint in the Hugging Face hub layout (tests, benchmarks).
    Forge(cmd::forge::Args),
    /// List the model catalogue and the models in the local store.
    List(cmd::list::Args),
    /// Delete a model from the local store.
    Rm(cmd::rm::Args),
    /// Print the folder of a model in the local store.
    Where(cmd::where_::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_tracing(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Fetch(args) => cmd::fetch::run(args),
        Command::Seed(args) => cmd::seed::run(args),
        Command::Create(args) => cmd::create::run(args),
        Command::Verify(args) => cmd::verify::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Perplexity(args) => cmd::perplexity::run(args),
        Command::Forge(args) => cmd::forge::run(args),
        Command::List(args) => cmd::list::run(args),
        Command::Rm(args) => cmd::rm::run(args),
        Command::Where(args) => cmd::where_::run(args),
        Command::Completions(args) => cmd::completions::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => output::report_error(&err),
    }
}
