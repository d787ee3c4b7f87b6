//! The command line: `-c FILE`, `-t`, `-u`, `-d` (docs/operations.md: Command line), and its mapping to
//! Pingora's `Opt`.

use clap::Parser;
use pingora::server::configuration::Opt;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Signals:
  SIGHUP   reload the configuration in place (an invalid file keeps the running one)
  SIGQUIT  hand the listening sockets to a new process started with -u, then drain
  SIGTERM  drain (server.grace_period) and exit
  SIGINT   exit at once
  SIGUSR2  start a successor (portico -u) as a child, for systemd (deploy/portico-upgrade)

Environment:
  RUST_LOG  log level and filters (default info), e.g. RUST_LOG=debug or RUST_LOG=portico=debug

Exit codes:
  0   ran and stopped, or -t found the configuration ok
  1   a start-up failure that is not the file's (a busy port, an unwritable log)
  64  the configuration cannot be read or is invalid (every error is printed with its line and YAML path)

Documentation: README.md (a tour), conf/examples/, docs/configuration.md (every key),
docs/filters.md (the filter pipeline), docs/behaviour.md, docs/operations.md (signals, reload,
upgrade), docs/security.md";

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    version,
    about = "A programmable edge proxy on Pingora",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The YAML configuration file.
    #[arg(short = 'c', long = "conf", default_value = "conf/portico.yaml")]
    pub conf: PathBuf,
    /// Validate the configuration and exit: 0 and "configuration ok", or 64 and every error.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Take the listening sockets over from the running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
    /// Run in the background (pid file from server.pid_file).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
}

impl Cli {
    /// Pingora's own options. `-t` and `-c` stay ours: Pingora's `-t` exits inside
    /// `bootstrap()` without knowing our YAML, and its `-c` is its own file format.
    pub fn pingora_opt(&self) -> Opt {
        Opt {
            upgrade: self.upgrade,
            daemon: self.daemon,
            nocapture: false,
            test: false,
            conf: None,
        }
    }
}
