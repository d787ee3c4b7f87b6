//! The portico binary: parse the command line, load and compile the config, run.

use clap::Parser;
use portico::cli::Cli;
use portico::snapshot::Snapshot;
use portico::{app, config};
use std::process::exit;

/// jemalloc: an idle WebSocket costs about 0.7 KiB less RSS than with glibc's malloc (less
/// fragmentation between long-lived tunnel allocations and short-lived request ones;
/// measured with tests/bench/ws_memory.py, docs/performance.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// EX_USAGE: the configuration is invalid.
const EXIT_BAD_CONFIG: i32 = 64;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut cli = Cli::parse();
    // Reloads and a successor read the file again, possibly after a daemon's chdir.
    if let Ok(abs) = std::path::absolute(&cli.conf) {
        cli.conf = abs;
    }
    // SIGHUP's and SIGUSR2's default action kills the process: neutralize them before anything
    // else runs, so a signal that arrives before its service listens is not fatal.
    for sig in [signal_hook::consts::SIGHUP, signal_hook::consts::SIGUSR2] {
        if let Err(e) = signal_hook::flag::register(sig, Default::default()) {
            eprintln!("portico: cannot install the handler of signal {sig}: {e}");
        }
    }

    // A file that cannot be read is not an invalid configuration: say which, plainly.
    if let Err(e) = std::fs::File::open(&cli.conf) {
        eprintln!(
            "portico: cannot read {}: {}",
            cli.conf.display(),
            config::os_message(&e)
        );
        exit(EXIT_BAD_CONFIG);
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
