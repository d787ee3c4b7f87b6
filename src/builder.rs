//! `portico::Builder`: portico as a library. A program of your own is portico plus your
//! filters, configured in the same YAML file (docs/filters.md):
//!
//! ```no_run
//! use portico::filters::{Build, Filter, Flow, Phases, Request};
//! use std::sync::Arc;
//!
//! struct Hello;
//! impl Filter for Hello {
//!     fn phases(&self) -> Phases {
//!         Phases::REQUEST
//!     }
//!     fn request(&self, req: &mut Request<'_>) -> Flow {
//!         req.vars.set("hello", "world");
//!         Flow::Continue
//!     }
//! }
//!
//! fn main() {
//!     portico::Builder::new()
//!         .filter("hello", |_settings: &serde_yaml::Value, _build: &mut Build<'_>| {
//!             Some(Arc::new(Hello) as Arc<dyn Filter>)
//!         })
//!         .run()
//! }
//! ```

use crate::cli::Cli;
use crate::filters::{Build, Filter, Registry};
use crate::snapshot::Snapshot;
use crate::{app, config};
use clap::Parser;
use std::process::exit;
use std::sync::Arc;

/// EX_USAGE: the configuration is invalid.
const EXIT_BAD_CONFIG: i32 = 64;

/// The portico binary, with filters of your own.
pub struct Builder {
    registry: Registry,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// portico with its built-in filters.
    pub fn new() -> Builder {
        Builder {
            registry: Registry::builtin(),
        }
    }

    /// Adds a filter that `routes[].filters` can name: `factory` builds it from its settings
    /// each time the file is loaded (at start and on every SIGHUP), or reports what is wrong
    /// through `Build` and returns `None` (the file is then refused). A built-in name is
    /// replaced.
    pub fn filter<F>(mut self, name: &str, factory: F) -> Builder
    where
        F: Fn(&serde_yaml::Value, &mut Build<'_>) -> Option<Arc<dyn Filter>>
            + Send
            + Sync
            + 'static,
    {
        self.registry.add(name, factory);
        self
    }

    /// Parses the command line (the same as the portico binary's), loads the file and runs
    /// until stopped; exits 64 for an invalid file, as `portico` does.
    pub fn run(self) -> ! {
        if !crate::filters::install(self.registry) {
            eprintln!("portico: Builder::run called twice");
            exit(1);
        }
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
}
