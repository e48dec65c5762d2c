//! Detached server processes: started in a session of their own with a pid file, found again through
//! that file, frozen or stopped with signals. Linux only (`/proc`).

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{io, Error};

/// How long a server has to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The state letter of a `stat` file of `/proc` (R, S, D, T, t, Z, X...).
fn stat_state(stat: &Path) -> Option<char> {
    let stat = fs::read_to_string(stat).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The state letter of `/proc/PID/stat`.
fn state(pid: u32) -> Option<char> {
    stat_state(Path::new(&format!("/proc/{pid}/stat")))
}

/// The process exists and is not a zombie (PID 1 here may not reap orphans). A zombie main thread whose
/// other threads still run (a JVM part-way through its shutdown hooks) is still alive.
pub fn alive(pid: u32) -> bool {
    match state(pid) {
        None | Some('X') => false,
        Some('Z') => fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1),
        Some(_) => true,
    }
}

/// The process is stopped by SIGSTOP (a test froze it).
pub fn stopped(pid: u32) -> bool {
    matches!(state(pid), Some('T' | 't'))
}

/// Sends SIGSTOP to `pid` and waits (at most `timeout`) until every one of its threads is stopped:
/// kill(2) only queues the stop, and a thread of a busy JVM already on a CPU can still answer a request
/// sent right after it. False if there is no such process or it is not stopped in time.
pub fn freeze(pid: u32, timeout: Duration) -> bool {
    if !signal(pid, libc::SIGSTOP) {
        return false;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        let mut tasks = tasks.filter_map(Result::ok);
        if tasks.all(|t| matches!(stat_state(&t.path().join("stat")), Some('T' | 't'))) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid in `pidfile`, if that process is alive and its command line contains `pattern`.
pub fn pidfile_pid(pidfile: &Path, pattern: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    (alive(pid) && cmdline.contains(pattern)).then_some(pid)
}

/// The pid of whatever listens on TCP `port` (asks `ss`), for servers this tool did not start.
pub fn listener_pid(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Htlnp", &format!("sport = :{port}")])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The resident memory of `pid`, e.g. "812 MiB".
pub fn rss(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| format!("{} MiB", kb / 1024))
        .unwrap_or_else(|| "?".into())
}

/// Sends `signal` to `pid`; false when there is no such process.
pub fn signal(pid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) has no memory effects on this process.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Makes every descriptor above 2 close-on-exec in the child (a make jobserver pipe, a test harness's,
/// our lock), so the program run holds none of them. Close-on-exec rather than closed: std's pipe that
/// reports a failed exec must stay open until the exec, or `spawn` returns before the program runs.
pub fn inherit_no_fds(cmd: &mut Command) {
    // SAFETY: close_range(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}

/// Starts `cmd` detached: its own session, stdin from /dev/null, stdout and stderr to `log` (the previous
/// log kept as `log.prev`), no inherited descriptor above 2 (a make jobserver pipe, a test harness's),
/// and writes its pid to `pidfile`. A thread reaps it if it exits while this process still runs.
pub fn launch(mut cmd: Command, log: &Path, pidfile: &Path) -> Result<u32, Error> {
    if fs::metadata(log).is_ok_and(|m| m.len() > 0) {
        let _ = fs::rename(log, log.with_extension("log.prev"));
    }
    let out = File::create(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    inherit_no_fds(&mut cmd);
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().map_err(io(Path::new(&program)))?;
    let pid = child.id();
    fs::write(pidfile, format!("{pid}\n")).map_err(io(pidfile))?;
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// Waits until every pid has exited or `timeout` passes; the ones still alive.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How a stop went.
pub struct Stopped {
    pub pid: u32,
    /// "SIGTERM", "SIGKILL", or "SIGKILL after SIGTERM".
    pub how: &'static str,
    pub took: Duration,
}

/// Stops `pid` with `sig` (SIGTERM: also SIGCONT, in case a test left it frozen), then SIGKILL after
/// [`STOP_TIMEOUT`]; fails only if it survives SIGKILL.
pub fn stop(name: &str, pid: u32, sig: i32) -> Result<Stopped, Error> {
    let t0 = Instant::now();
    signal(pid, sig);
    if sig != libc::SIGKILL {
        signal(pid, libc::SIGCONT);
    }
    let mut how = if sig == libc::SIGKILL {
        "SIGKILL"
    } else {
        "SIGTERM"
    };
    if !wait_gone(&[pid], STOP_TIMEOUT).is_empty() {
        super::log(&format!(
            "{name} (pid {pid}) still running after {}s; sending SIGKILL",
            STOP_TIMEOUT.as_secs()
        ));
        signal(pid, libc::SIGKILL);
        how = "SIGKILL after SIGTERM";
        if !wait_gone(&[pid], Duration::from_secs(10)).is_empty() {
            return Err(Error::Failed(format!(
                "{name} (pid {pid}) survived SIGKILL"
            )));
        }
    }
    Ok(Stopped {
        pid,
        how,
        took: t0.elapsed(),
    })
}

/// An exclusive lock on `path` (created), held until the file is dropped; waits up to 10 minutes.
/// Serialises the commands that start and stop a set's servers (two `make test` at once must not
/// start two Cassandras).
pub fn lock(path: &Path) -> Result<File, Error> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let file = File::create(path).map_err(io(path))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Failed(format!(
                    "another cargo xtask holds {} for 10 minutes",
                    path.display()
                )))
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(path)(e)),
        }
    }
}

/// The last 40 lines of a server log (long lines cut), to stderr.
pub fn show_tail(log: &Path) {
    let Ok(text) = fs::read_to_string(log) else {
        return;
    };
    eprintln!("--- last lines of {} ---", log.display());
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(40)..] {
        eprintln!("{}", line.chars().take(300).collect::<String>());
    }
    eprintln!("---");
}
