//! A real `swarmstate serve` process on a free loopback port, killed when dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `swarmstate serve`.
#[derive(Debug)]
pub struct Served {
    pub child: Child,
    pub url: String,
}

impl Served {
    /// Starts `swarmstate serve --listen 127.0.0.1:0` with `args`, and waits for the line that
    /// names its address.
    pub fn start(args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start swarmstate serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's first line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from swarmstate serve: {line:?}"))
            .to_owned();
        Served { child, url }
    }

    /// Sends `signal` (SIGTERM, SIGKILL, SIGSTOP, SIGCONT) to the server process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
