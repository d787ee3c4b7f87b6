//! Binary upgrade (`portico -u`): find the running instance through its pid file and send it
//! SIGQUIT once this process listens for its sockets; and the pid file of a foreground process.
//!
//! Order matters: the new process must listen on `upgrade_sock` before the old one sends its
//! listeners there (the reverse order is a known outage), so the signal waits for the socket.

use log::{error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the new process waits for its own upgrade socket before giving up on signalling.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// Called before Pingora's bootstrap in `-u` mode. Returns the old pid it will signal, if any.
pub fn signal_old_when_ready(pid_file: &str, upgrade_sock: &str) -> Option<i32> {
    let Some(pid) = read_pid(Path::new(pid_file)) else {
        warn!(
            "-u: no running instance's pid in {pid_file}; send SIGQUIT to the old process yourself"
        );
        return None;
    };
    if !is_portico(pid) {
        warn!("-u: pid {pid} from {pid_file} is not a running portico process; not signalled");
        return None;
    }
    // Pingora unlinks and re-binds the socket; removing a stale one first means "the file
    // exists" can only be our own bind, whatever inode numbers the filesystem reuses.
    let sock = PathBuf::from(upgrade_sock);
    let _ = std::fs::remove_file(&sock);
    std::thread::spawn(move || {
        let deadline = Instant::now() + SOCKET_WAIT;
        while Instant::now() < deadline {
            if sock.exists() {
                match kill(Pid::from_raw(pid), Signal::SIGQUIT) {
                    Ok(()) => info!(
                        "-u: listening on {}; sent SIGQUIT to the old process {pid}",
                        sock.display()
                    ),
                    Err(e) => error!("-u: cannot signal the old process {pid}: {e}"),
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        error!(
            "-u: {} never appeared; the old process {pid} was not signalled",
            sock.display()
        );
    });
    Some(pid)
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// A pid from a stale file may belong to anything by now: only signal a portico.
fn is_portico(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = Path::new(std::str::from_utf8(argv0).unwrap_or_default()).file_name();
    name.and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("portico"))
}

/// The pid file of a foreground process (Pingora writes it only when daemonizing). Removed on
/// drop if it still names this process: after a hand-off it names the new one.
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn write(path: &str) -> Option<PidFile> {
        let pid = std::process::id();
        match std::fs::write(path, format!("{pid}\n")) {
            Ok(()) => Some(PidFile {
                path: path.into(),
                pid,
            }),
            Err(e) => {
                warn!("cannot write the pid file {path}: {e}");
                None
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path) == i32::try_from(self.pid).ok() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
