//! The command line (CONTRACT.md): `-c FILE`, `-t`, `-u`, `-d`, and its mapping to Pingora's `Opt`.

use clap::Parser;
use pingora::server::configuration::Opt;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    version,
    about = "A programmable edge proxy on Pingora"
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
