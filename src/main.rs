//! The portico binary: parse the command line, load and compile the config, run.

use clap::Parser;
use portico::cli::Cli;
use portico::snapshot::Snapshot;
use portico::{app, config};
use std::process::exit;

/// EX_USAGE: the configuration is invalid.
const EXIT_BAD_CONFIG: i32 = 64;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // SIGHUP's default action kills the process: neutralize it before anything else runs, so a
    // reload signal that arrives before the reload service listens is not fatal.
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, Default::default()) {
        eprintln!("portico: cannot install the SIGHUP handler: {e}");
    }

    let snapshot = config::load(&cli.conf).and_then(|loaded| Snapshot::build(&loaded, None));
    match snapshot {
        Err(errs) => {
            let n = errs.0.len();
            let plural = if n == 1 { "" } else { "s" };
            eprintln!(
                "portico: {}: invalid configuration ({n} error{plural})",
                cli.conf.display()
            );
            for e in &errs.0 {
                eprintln!("{e}");
            }
            exit(EXIT_BAD_CONFIG);
        }
        Ok(_) if cli.test => {
            println!("configuration ok");
            exit(0);
        }
        Ok(snapshot) => app::run(&cli, snapshot),
    }
}
