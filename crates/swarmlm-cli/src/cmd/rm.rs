//! `swarmlm rm`: delete a model from the local store. Models are tens of GB, so this asks first,
//! and it can only ever delete `<store>/<name>` itself (the checks live in
//! `swarmlm_manifest::store::remove_in`).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use swarmlm_manifest::store;

use crate::output::hint;

const AFTER_HELP: &str = "\
Asks for confirmation on a terminal unless --yes is given; refuses (exit 2) without --yes when
stdin is not a terminal, so a script never deletes by accident. Only folders directly inside the
store are removed; a link there is removed as a link, its target is left alone.

Examples:
  swarmlm rm mixtral-8x7b-32kseqlen
  swarmlm rm mixtral-8x7b-32kseqlen --yes";

/// Delete a model from the local store.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The model's name in the store (see `swarmlm list`).
    pub name: String,
    /// Do not ask.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = store::models_root().ok_or(store::StoreError::NoRoot)?;
    let Some(dir) = store::stored_in(&root, &args.name) else {
        return Err(hint(
            store::StoreError::NotStored {
                name: args.name.clone(),
                root,
            },
            "`swarmlm list` shows what is in the store",
        ));
    };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error: refusing to delete {} without --yes: stdin is not a terminal",
                dir.display()
            );
            return Ok(ExitCode::from(2));
        }
        let entry = store::inspect(&args.name, &dir);
        eprint!(
            "delete {} ({})? [y/N] ",
            dir.display(),
            super::list::human(entry.size)
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("not deleted");
            return Ok(ExitCode::from(1));
        }
    }
    let removed = store::remove_in(&root, &args.name)?;
    eprintln!("deleted {}", removed.display());
    Ok(ExitCode::SUCCESS)
}
