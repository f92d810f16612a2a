//! `tether serve` as a process (faults.rs, hostile.rs, security.rs): its
//! stderr read line by line, its address and admin URL from its log.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::Db;
use super::tether_bin;

/// `tether serve` as a process; its stderr lines arrive on a channel.
pub struct ServeProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl ServeProcess {
    pub fn start(db: &Db, extra: &[&str], rust_log: &str) -> Self {
        Self::start_limited(db, extra, rust_log, None)
    }

    /// With `ulimit`: the shell's `ulimit` arguments (e.g. `-n 64`: soft
    /// and hard `RLIMIT_NOFILE`; `-Sn 100`: the soft one) applied by a
    /// shell that then becomes `tether serve` (same process id).
    pub fn start_limited(db: &Db, extra: &[&str], rust_log: &str, ulimit: Option<&str>) -> Self {
        let mut command = match ulimit {
            None => Command::new(tether_bin()),
            Some(limit) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit {limit} && exec \"$0\" \"$@\"")])
                    .arg(tether_bin());
                c
            }
        };
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url()])
            .args(extra)
            .current_dir(db.dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("TETHER_SECRET")
            .env_remove("TETHER_ADMIN_TOKEN")
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The first line of the log containing `needle`, waiting for it (30 s
    /// at most) if it has not come yet.
    pub fn find(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        self.wait_for(needle)
    }

    /// Reads the log until a line contains `needle` (30 s at most).
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no {needle:?} in the log:\n{}", self.log.join("\n")),
            }
        }
    }

    /// The value after `key=` in a log line.
    pub fn field(line: &str, key: &str) -> String {
        line.split(&format!("{key}="))
            .nth(1)
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit (30 s at most) and collects the rest of the log.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tether serve did not exit:\n{}", self.log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.log.push(line);
        }
        (status, self.log.join("\n"))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// The process id (the shell of [`Self::start_limited`] became it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The device address it listens on.
    pub fn addr(&mut self) -> std::net::SocketAddr {
        let line = self.find("listening addr=");
        Self::field(&line, "addr").parse().unwrap()
    }

    /// The admin API's `host:port` (with `--admin`).
    pub fn admin(&mut self) -> String {
        let line = self.find("admin API listening");
        Self::field(&line, "url")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// Every line logged so far (what has arrived within `settle`).
    pub fn log_after(&mut self, settle: Duration) -> &[String] {
        let deadline = Instant::now() + settle;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line);
        }
        &self.log
    }
}

/// One `GET` to an admin API (`host:port`, no token): (status, body).
pub async fn http_get(admin: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the admin API answers")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3; utime and stime are fields 14 and 15, in
    // clock ticks (100 per second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}
