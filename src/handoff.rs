//! Binary upgrade (`portico -u`): find the running instance through its pid file and send it
//! SIGQUIT once this process listens for its sockets; the pid file of a foreground process;
//! and SIGUSR2, which makes the running process start its own successor (nginx's way).
//!
//! Order matters: the new process must listen on `upgrade_sock` before the old one sends its
//! listeners there (the reverse order is a known outage), so the signal waits for the socket.
//!
//! Why SIGUSR2: under systemd a successor started from a shell lives outside the service's
//! cgroup, and the service counts as stopped when its main process exits. A successor that is
//! the old process's child stays in the cgroup; it writes the pid file before the old process
//! exits, and systemd re-reads `PIDFile=` when the main process exits and adopts the new pid.

use crate::drain::DRAINING;
use async_trait::async_trait;
use log::{error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

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

/// SIGUSR2: start `program args` (this binary's path as started, read again now so that a file
/// replaced since is the new version, with the same `-c`, `-d`, and `-u`). The successor takes
/// the sockets over and sends this process SIGQUIT itself. One at a time: a second SIGUSR2
/// while a successor runs is ignored.
pub struct SuccessorService {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

#[async_trait]
impl BackgroundService for SuccessorService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut usr2 = match signal(SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot listen for SIGUSR2, upgrade by signal disabled: {e}");
                return;
            }
        };
        let running = Arc::new(AtomicBool::new(false));
        loop {
            tokio::select! {
                _ = usr2.recv() => self.spawn(&running),
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl SuccessorService {
    fn spawn(&self, running: &Arc<AtomicBool>) {
        if DRAINING.load(Ordering::SeqCst) {
            warn!("SIGUSR2 ignored: this process is already handing over or stopping");
            return;
        }
        if running.swap(true, Ordering::SeqCst) {
            warn!("SIGUSR2 ignored: a successor is already starting");
            return;
        }
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                running.store(false, Ordering::SeqCst);
                error!(
                    "SIGUSR2: cannot start {}: {e}; this process serves on",
                    self.program.display()
                );
                return;
            }
        };
        let pid = child.id();
        info!(
            "SIGUSR2: started the successor {} as pid {pid}",
            self.program.display()
        );
        let running = Arc::clone(running);
        // Reap it. If it exits while this process still serves, it failed (a bad config or
        // binary): say so and accept the next SIGUSR2. With -d its exit is the daemon's fork.
        std::thread::spawn(move || match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                running.store(false, Ordering::SeqCst);
                error!("upgrade failed: the successor {pid} exited with {status}; this process serves on");
            }
            Err(e) => error!("cannot wait for the successor {pid}: {e}"),
        });
    }
}

/// The successor's command line: `program -c CONF [-d] -u`. The program is argv[0] as given
/// (not /proc/self/exe, which names the old file once it is replaced, and which resolves the
/// symlink an installer may have re-pointed), made absolute.
pub fn successor_command(conf: &Path, daemon: bool) -> (PathBuf, Vec<OsString>) {
    let argv0 = PathBuf::from(std::env::args_os().next().unwrap_or_default());
    let program = if argv0.components().count() > 1 {
        std::path::absolute(&argv0).unwrap_or(argv0)
    } else {
        search_path(&argv0)
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or(argv0)
    };
    let mut args: Vec<OsString> = vec!["-c".into(), conf.into()];
    if daemon {
        args.push("-d".into());
    }
    args.push("-u".into());
    (program, args)
}

fn search_path(name: &Path) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
