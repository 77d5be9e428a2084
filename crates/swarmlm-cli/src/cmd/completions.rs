//! `swarmlm completions`: shell completion scripts generated from the same clap definition the
//! binary parses with, so they never drift from the real flags.

use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  swarmlm completions bash > ~/.local/share/bash-completion/completions/swarmlm
  swarmlm completions zsh > ~/.zfunc/_swarmlm
  swarmlm completions fish > ~/.config/fish/completions/swarmlm.fish")]
pub struct Args {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "swarmlm", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
