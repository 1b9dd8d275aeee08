//! What a test run created outside its own memory (processes, namespaces, links, mounts), so a
//! Ctrl-C or SIGTERM still tears it down: [`on_signal`] installs a thread that does it and exits.
//! Normal exits and panics tear down through `Drop`.

use std::process::Command;
use std::sync::Mutex;

/// Something to remove at exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A child process (killed with SIGKILL; SIGCONT first in case it is stopped).
    Pid(u32),
    /// A network namespace.
    Netns(String),
    /// A network link (the lab's bridge).
    Link(String),
    /// A mount point (a small tmpfs).
    Mount(String),
}

static LIVE: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

/// Remembers `r` for the signal handler.
pub fn register(r: Resource) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(r);
}

/// Forgets `r` (it was removed normally).
pub fn forget(r: &Resource) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|x| x != r);
}

/// Removes everything registered, processes first, then mounts, namespaces and links.
pub fn remove_all() {
    let all = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for r in &all {
        if let Resource::Pid(p) = r {
            // SAFETY: plain kill(2) on a pid this process started.
            unsafe {
                libc::kill(*p as i32, libc::SIGCONT);
                libc::kill(*p as i32, libc::SIGKILL);
            }
        }
    }
    for r in all.iter().rev() {
        let _ = match r {
            Resource::Pid(_) => continue,
            Resource::Mount(m) => Command::new("umount").arg("-l").arg(m).output(),
            Resource::Netns(n) => Command::new("ip").args(["netns", "del", n]).output(),
            Resource::Link(l) => Command::new("ip").args(["link", "del", l]).output(),
        };
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later) and starts a
/// thread that waits for them, removes everything registered and exits with 130. Call first in
/// `main`, before other threads exist.
pub fn on_signal() {
    // SAFETY: sigset manipulation and pthread_sigmask/sigwait on a zeroed, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("signal {sig}: tearing the lab down");
            remove_all();
            std::process::exit(130);
        });
    }
}
