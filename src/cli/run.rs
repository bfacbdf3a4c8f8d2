//! `litefs-py run`: the arguments to [`crate::run`], which does the work.

use crate::config::Config;
use crate::run::{self as supervisor, RunOptions};

use super::args::RunArgs;

/// Runs until the app, LiteFS or the shim ends or a signal stops it; the exit status to leave
/// with. An error is a start-up failure (one line, exit status 1), with nothing left running.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let config = Config::find_and_load(args.config.as_deref())?;
    config.secret()?;
    let mut opts = RunOptions::new(config, args.command)?;
    if let Some(grace) = args.grace {
        opts.grace = grace;
    }
    if let Some(path) = args.litefs_config {
        opts.litefs_config = path;
    }
    opts.allow_other = args.allow_other;
    if let Some(m) = args.migrate {
        if m.trim().is_empty() {
            anyhow::bail!(
                "--migrate is empty: give the command, e.g. --migrate \"python manage.py migrate --no-input\""
            );
        }
        opts.migrate = Some(m);
    }
    if args.no_handoff {
        opts.handoff_on_stop = false;
    }
    Ok(supervisor::run(opts)?)
}
