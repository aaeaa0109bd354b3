//! The demo's lifecycle (`make run`): SIGINT (Ctrl-C), SIGTERM and SIGHUP
//! stop it with its children (Envoy, three upstreams), and a demo killed
//! with SIGKILL leaves none behind either (the kernel kills them:
//! PR_SET_PDEATHSIG). The demo runs with `--free-ports`; its children are
//! read from /proc before the signal.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A process by pid and start time (so a reused pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Proc {
    pid: u32,
    start: u64,
}

/// State and start time from /proc/PID/stat, if the process exists.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields after its ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?; // field 22: starttime
    Some((state, start))
}

/// Running: exists, not a zombie waiting for its reaper, same start time.
fn alive(p: Proc) -> bool {
    stat(p.pid).is_some_and(|(state, start)| start == p.start && !matches!(state, 'Z' | 'X'))
}

/// The children of `pid`, from every thread's children list.
fn children(pid: u32) -> Vec<Proc> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let list = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap();
        for c in list.split_whitespace() {
            let pid: u32 = c.parse().unwrap();
            if let Some((_, start)) = stat(pid) {
                out.push(Proc { pid, start });
            }
        }
    }
    out
}

/// Kills and reaps the demo if a test fails half way.
struct Demo {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the demo and waits for its banner (its children all started).
fn start_demo() -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--free-ports")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let demo = Demo { child, stdout: rx };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match demo.stdout.recv_timeout(left) {
            Ok(l) if l.starts_with("Ctrl-C (or SIGTERM, SIGHUP) stops") => return demo,
            Ok(_) => {}
            Err(e) => panic!("the demo did not start: {e}"),
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child of this process, which we have not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Waits up to `secs` for the demo to exit; its exit status.
fn wait_exit(demo: &mut Demo, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = demo.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the demo is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 10 s for every one of `procs` to be gone; on failure kills
/// those left (by pid) before failing, so a failed run leaves nothing.
fn assert_all_gone(procs: &[Proc], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs.iter().any(|p| alive(*p)) {
        if Instant::now() > deadline {
            let left: Vec<Proc> = procs.iter().copied().filter(|p| alive(*p)).collect();
            for p in &left {
                // SAFETY: kill(2); the pid was checked against its start time.
                unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
            }
            panic!("{what}: still running: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigint_sigterm_and_sighup_stop_the_demo_and_its_children() {
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
    ] {
        let mut demo = start_demo();
        let kids = children(demo.child.id());
        assert_eq!(kids.len(), 4, "Envoy and three upstreams: {kids:?}");
        signal(demo.child.id(), sig);
        let status = wait_exit(&mut demo, 20);
        assert_eq!(status.code(), Some(0), "{name}: {status:?}");
        let said: Vec<String> = demo.stdout.try_iter().collect();
        assert!(
            said.contains(&format!("stopping ({name}): Envoy and the upstreams")),
            "{name}: {said:?}"
        );
        // The demo reaped them: gone already, not just dying.
        assert_all_gone(&kids, name);
    }
}

#[test]
fn a_killed_demo_takes_its_children_with_it() {
    let mut demo = start_demo();
    let kids = children(demo.child.id());
    assert_eq!(kids.len(), 4, "Envoy and three upstreams: {kids:?}");
    signal(demo.child.id(), libc::SIGKILL);
    let status = wait_exit(&mut demo, 20);
    assert_eq!(status.code(), None, "killed by a signal");
    assert_all_gone(&kids, "after SIGKILL of the demo");
}
