//! `swarmlm where`: the folder of a stored model, for scripts (`ls "$(swarmlm where NAME)"`) and
//! for other tools that want to read the weights swarmlm fetched.

use std::process::ExitCode;

use swarmlm_manifest::store;

const AFTER_HELP: &str = "\
Prints the folder and exits 0, or says on stderr that the model is not in the store and exits 1.

Examples:
  swarmlm where mixtral-8x7b-32kseqlen
  du -sh \"$(swarmlm where mixtral-8x7b-32kseqlen)\"";

/// Print the folder of a model in the local store.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The model's name in the store (see `swarmlm list`).
    pub name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(root) = store::models_root() else {
        eprintln!("error: no model store: none of SWARMLM_HOME, XDG_DATA_HOME, HOME is set");
        return Ok(ExitCode::from(1));
    };
    match store::stored_in(&root, &args.name) {
        Some(dir) => {
            println!("{}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "error: no model {:?} in the store {}",
                args.name,
                root.display()
            );
            if store::catalogue_entry(&args.name).is_some() {
                eprintln!(
                    "hint: it is in the catalogue: `swarmlm fetch {}`",
                    args.name
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}
