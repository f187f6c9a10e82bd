//! The scheduler as a service: `aviary schedule start` runs `aviary schedule run` as a
//! background process of its own (its own session, so closing the terminal, the shell or the
//! TUI does not end it), logging to a size-bounded file in the home; `stop` asks it to stop
//! between steps and waits; `status` says whether it runs, since when, and its last log lines.
//! `install` writes a systemd user unit that starts it at login (or boot, with lingering).
//!
//! What runs is told by the posting lock (`posting.lock`, held by the process that posts and
//! freed by the system however it ends), not by the pid file, which only says which process
//! and since when: a pid file whose process no longer holds the lock (killed with -9, a
//! reboot) is stale, and is said so and removed.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::posting::PostingLock;
use super::Home;
use crate::{Error, Result};

/// The service's log in the home.
pub const LOG_FILE: &str = "scheduler.log";
/// Which process runs the service, and since when.
const PID_FILE: &str = "scheduler.pid";
/// The log is moved to `scheduler.log.1` (replacing the older one) past this size.
pub const LOG_LIMIT: u64 = 1 << 20;

/// Whether the scheduler runs for a home.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceStatus {
    /// It runs (some process holds the posting lock).
    pub running: bool,
    /// The service's process and start time, when it was started with `schedule start` (a
    /// scheduler run in a terminal holds the lock without them).
    pub pid: Option<(u32, DateTime<Utc>)>,
    /// A pid file was left by a service that ended without stopping (and is now removed).
    pub stale: Option<u32>,
    /// The last lines of the log.
    pub log_tail: Vec<String>,
}

fn pid_path(home: &Home) -> PathBuf {
    home.root().join(PID_FILE)
}

/// The log file of `home`'s service.
pub fn log_path(home: &Home) -> PathBuf {
    home.root().join(LOG_FILE)
}

fn read_pid(home: &Home) -> Option<(u32, DateTime<Utc>)> {
    let text = std::fs::read_to_string(pid_path(home)).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let since = it.next()?.parse().ok()?;
    Some((pid, since))
}

/// Where the service stands; a stale pid file is removed (and named in the answer).
pub fn status(home: &Home, log_lines: usize) -> Result<ServiceStatus> {
    let running = PostingLock::is_held(home);
    let mut pid = read_pid(home);
    let mut stale = None;
    if !running {
        if let Some((p, _)) = pid.take() {
            stale = Some(p);
            let path = pid_path(home);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(ServiceStatus {
        running,
        pid,
        stale,
        log_tail: log_tail(&log_path(home), log_lines),
    })
}

/// The last `n` lines of `path` (none when it is absent).
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in std::io::BufReader::new(f).lines().map_while(|l| l.ok()) {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    if n == 0 {
        lines.clear();
    }
    lines.into()
}

/// How the service's process is started: the `aviary` binary, and the global flags the
/// starting command had (the config file; the home when it was named).
#[derive(Clone, Debug)]
pub struct Launch {
    /// The binary (the running one).
    pub exe: PathBuf,
    /// `--config FILE`, when given.
    pub config: Option<PathBuf>,
    /// `--home DIR`, when the home was named (else the child finds the same default).
    pub home: Option<PathBuf>,
}

impl Launch {
    /// The running binary, with these flags.
    pub fn current(config: Option<&Path>, home: &Home) -> Result<Launch> {
        let exe = std::env::current_exe().map_err(|e| Error::io("<the aviary binary>", e))?;
        Ok(Launch {
            exe,
            config: config.map(Path::to_path_buf),
            home: home.is_explicit().then(|| home.root().to_path_buf()),
        })
    }

    /// The arguments of `aviary [--config F] [--home D] schedule run --log LOG`.
    fn args(&self, log: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(c) = &self.config {
            args.extend(["--config".to_string(), absolute(c).display().to_string()]);
        }
        if let Some(h) = &self.home {
            args.extend(["--home".to_string(), absolute(h).display().to_string()]);
        }
        args.extend(["schedule", "run", "--log"].map(String::from));
        args.push(absolute(log).display().to_string());
        args
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Starts the service for `home`, unless a scheduler already posts from it; waits until it
/// holds the posting lock (or says why it ended).
pub fn start(home: &Home, launch: &Launch) -> Result<ServiceStatus> {
    let now = status(home, 0)?;
    if now.running {
        let who = match now.pid {
            Some((pid, since)) => {
                format!("as process {pid} since {}", super::posting::stamp(since))
            }
            None => "in a terminal (`aviary schedule run`)".to_string(),
        };
        return Err(Error::invalid(
            format!("the scheduler already runs for this home, {who}"),
            "see it with `aviary schedule status`; `aviary schedule stop` stops it",
        ));
    }
    std::fs::create_dir_all(home.root()).map_err(|e| Error::io(home.root(), e))?;
    let log = log_path(home);
    let mut cmd = std::process::Command::new(&launch.exe);
    cmd.args(launch.args(&log))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // What goes wrong before the log is open (a bad config) still reaches the log.
        .stderr(open_log(&log)?);
    detach(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| Error::io(&launch.exe, e))?;
    let since = Utc::now();
    let path = pid_path(home);
    std::fs::write(&path, format!("{} {}\n", child.id(), since.to_rfc3339()))
        .map_err(|e| Error::io(&path, e))?;
    let started = Instant::now();
    loop {
        if PostingLock::is_held(home) {
            // Reaped by a thread, so it leaves no zombie while this process lives on (the TUI).
            std::thread::spawn(move || child.wait());
            return status(home, 5);
        }
        if let Ok(Some(code)) = child.try_wait() {
            let _ = std::fs::remove_file(&path);
            let tail = log_tail(&log, 5).join("\n");
            return Err(Error::invalid(
                format!(
                    "the scheduler ended at once ({code}); its log {} ends:\n{tail}",
                    log.display()
                ),
                "fix what the log says, then `aviary schedule start` again",
            ));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(Error::invalid(
                format!(
                    "the scheduler (process {}) did not start posting within 30 s",
                    child.id()
                ),
                format!("see its log {}", log.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log file opened for appending.
fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// A session of its own: no controlling terminal, so a closed terminal's hang-up does not
/// reach it, nor does Ctrl-C in the terminal that started it.
fn detach(cmd: &mut std::process::Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches nothing of this process's memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
}

/// Asks the service to stop between steps (SIGTERM) and waits up to `wait` for it to end.
/// Stopping a scheduler run in a terminal is refused: stop it there.
pub fn stop(home: &Home, wait: Duration) -> Result<ServiceStatus> {
    let now = status(home, 0)?;
    let Some((pid, _)) = now.pid else {
        if now.running {
            return Err(Error::invalid(
                "the scheduler for this home runs in a terminal, not as the service",
                "stop it there with Ctrl-C",
            ));
        }
        return Err(Error::invalid(
            "the scheduler is not running for this home",
            "start it with `aviary schedule start`",
        ));
    };
    #[cfg(unix)]
    // SAFETY: kill(2) with a pid read from our own pid file, which holds the posting lock.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let started = Instant::now();
    while PostingLock::is_held(home) {
        if started.elapsed() > wait {
            return Err(Error::invalid(
                format!(
                    "the scheduler (process {pid}) has not stopped within {} s",
                    wait.as_secs()
                ),
                "it stops between steps: a post in flight waits for X's answer; try again",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let path = pid_path(home);
    let _ = std::fs::remove_file(&path);
    status(home, 5)
}

/// A log that moves itself to `FILE.1` past [`LOG_LIMIT`] bytes, so it never grows past
/// twice that: what `schedule run --log FILE` writes.
pub struct RotatingLog {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
}

impl RotatingLog {
    /// Opens (appends to) `path`.
    pub fn open(path: &Path) -> Result<RotatingLog> {
        let file = open_log(path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            written,
        })
    }

    /// Appends one line, flushed.
    pub fn line(&mut self, line: &str) -> Result<()> {
        if self.written + line.len() as u64 + 1 > LOG_LIMIT && self.written > 0 {
            let old = self.path.with_extension("log.1");
            std::fs::rename(&self.path, &old).map_err(|e| Error::io(&self.path, e))?;
            self.file = open_log(&self.path)?;
            self.written = 0;
        }
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        self.written += line.len() as u64 + 1;
        Ok(())
    }
}

/// The systemd user unit that runs the service at login (at boot, with lingering on).
pub fn unit_text(launch: &Launch, home: &Home) -> String {
    let log = log_path(home);
    let args: Vec<String> = launch
        .args(&log)
        .into_iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a
            }
        })
        .collect();
    let mut env = String::new();
    if let Ok(c) = std::env::var("AVIARY_CREDENTIALS") {
        env.push_str(&format!(
            "Environment=AVIARY_CREDENTIALS={}\n",
            absolute(Path::new(&c)).display()
        ));
    }
    format!(
        "[Unit]\n\
         Description=aviary scheduler: posts the bots' queues in their slots\n\
         After=network-online.target\n\n\
         [Service]\n\
         ExecStart={} {}\n\
         {env}\
         Restart=on-failure\n\
         RestartSec=30\n\n\
         [Install]\n\
         WantedBy=default.target\n",
        absolute(&launch.exe).display(),
        args.join(" ")
    )
}

/// Where systemd looks for the user's units: `$XDG_CONFIG_HOME/systemd/user`, else
/// `~/.config/systemd/user`.
pub fn unit_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("systemd/user"));
    }
    directories::BaseDirs::new()
        .map(|d| d.home_dir().join(".config/systemd/user"))
        .ok_or_else(|| {
            Error::invalid(
                "cannot find the home directory for systemd's user units",
                "set XDG_CONFIG_HOME",
            )
        })
}

/// The unit's file name.
pub const UNIT_NAME: &str = "aviary-scheduler.service";

/// Writes the unit; returns its path.
pub fn install(launch: &Launch, home: &Home) -> Result<PathBuf> {
    let dir = unit_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(UNIT_NAME);
    std::fs::write(&path, unit_text(launch, home)).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Removes the unit; returns its path, or `None` when there was none.
pub fn uninstall() -> Result<Option<PathBuf>> {
    let path = unit_dir()?.join(UNIT_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_moves_aside_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = RotatingLog::open(&path).unwrap();
        let line = "x".repeat(999);
        for _ in 0..(LOG_LIMIT / 1000 + 10) {
            log.line(&line).unwrap();
        }
        let now = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("scheduler.log.1"))
            .unwrap()
            .len();
        assert!(now <= LOG_LIMIT && old <= LOG_LIMIT, "{now} {old}");
        assert_eq!(now + old, (LOG_LIMIT / 1000 + 10) * 1000);
        assert_eq!(log_tail(&path, 2), vec![line.clone(), line]);
    }
}
