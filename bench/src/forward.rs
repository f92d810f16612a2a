//! The forwarded-call rows: the Django project of the forwarding tests
//! (tests/django-forward) behind gunicorn, `tether serve --forward` in
//! front of it, and the same Django view called directly over HTTP (a
//! keep-alive client signing like the server) to show what the hop adds.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tether_core::method::{self, builtin::Echo};
use tether_server::forward::{ForwardSecret, Origin};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::{Samples, Window};
use crate::load::{ARG, Throughput};
use crate::run::Proc;

/// The secret both sides use.
pub const SECRET: &str = "tether-bench forwarding secret";

/// gunicorn serving tests/django-forward on `port`: `workers` processes of
/// 4 threads each (gthread keeps connections alive; the sync worker closes
/// every one).
pub fn gunicorn(
    python: &Path,
    project: &Path,
    workdir: &Path,
    port: u16,
    workers: usize,
) -> Result<Proc, String> {
    let log = std::fs::File::create(workdir.join("gunicorn.log")).map_err(|e| e.to_string())?;
    // Its tables (the deliveries of the session events).
    let migrate = Command::new(python)
        .current_dir(project)
        .env("FORWARD_DB", workdir.join("forward.sqlite3"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["manage.py", "migrate", "--verbosity", "0"])
        .status()
        .map_err(|e| format!("manage.py migrate: {e}"))?;
    if !migrate.success() {
        return Err(format!("manage.py migrate: {migrate}"));
    }
    let child = Command::new(python)
        .current_dir(project)
        .env("FORWARD_DB", workdir.join("forward.sqlite3"))
        .env("TETHER_FORWARD_SECRET", SECRET)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "gunicorn", "forwardsite.wsgi"])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--workers", &workers.to_string()])
        .args(["--worker-class", "gthread", "--threads", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn gunicorn ({}): {e}", python.display()))?;
    Ok(Proc::new(
        child,
        format!("gunicorn (log {})", workdir.join("gunicorn.log").display()),
    ))
}

/// Sequential signed `POST /tether/call/echo` on one keep-alive
/// connection, straight to gunicorn: Django's own cost per call.
pub async fn direct_sequential(addr: SocketAddr, window: Window) -> Result<Throughput, String> {
    let secret = ForwardSecret::new(SECRET)?;
    let origin = Origin {
        user_id: "1".into(),
        username: "bench-0".into(),
        session: "1".into(),
        peer: "127.0.0.1:1".into(),
    };
    let mut args = [0u8; 64];
    let body = method::encode_args::<Echo>(&ARG, &mut args)
        .map_err(|e| e.to_string())?
        .to_vec();
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to gunicorn: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut samples = Samples::default();
    let mut buf = Vec::with_capacity(4096);
    let mut n: u64 = 0;
    loop {
        let began = Instant::now();
        if began >= window.stop {
            break;
        }
        n += 1;
        let request_id = format!("{n:032x}");
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let signed = secret.sign(unix, "call/echo", &request_id, &origin, &body);
        let head = format!(
            "POST /tether/call/echo HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
             X-Tether-Timestamp: {}\r\nX-Tether-Request-Id: {request_id}\r\n\
             X-Tether-User-Id: {}\r\nX-Tether-Username: {}\r\nX-Tether-Session: {}\r\n\
             X-Tether-Peer: {}\r\nX-Tether-Signature: {}\r\n\r\n",
            body.len(),
            signed.timestamp,
            origin.user_id,
            origin.username,
            origin.session,
            origin.peer,
            signed.signature,
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("write to gunicorn: {e}"))?;
        let reply = read_response(&mut stream, &mut buf).await?;
        if reply != body {
            return Err(format!("direct echo: wrong reply {reply:?}"));
        }
        let now = Instant::now();
        if window.counts(began, now) {
            samples.push(now - began);
        }
    }
    Ok(Throughput::from_samples(samples, window.secs()))
}

/// One HTTP/1.1 response with a Content-Length body; its body (200 only).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read from gunicorn: {e}"))?;
        if n == 0 {
            return Err("gunicorn closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "direct echo: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or("direct echo: no Content-Length")?;
    while buf.len() < head_end + length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read from gunicorn: {e}"))?;
        if n == 0 {
            return Err("gunicorn closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf[head_end..head_end + length].to_vec())
}

/// Waits until gunicorn answers (its workers have booted).
pub async fn wait_ready(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = Window::new(Duration::ZERO, Duration::from_millis(1));
        match direct_sequential(addr, w).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("gunicorn: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// CPU time of a process and its children (gunicorn's master and workers).
pub fn tree_cpu(pid: u32) -> Result<Duration, String> {
    let mut total = crate::common::cpu_time(pid)?;
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent is the second field after the command name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            total += crate::common::cpu_time(child).unwrap_or_default();
        }
    }
    Ok(total)
}

/// The CPU time `pids` (each with its children) use inside `window`.
pub async fn cpu_in(pids: Vec<u32>, window: Window) -> Result<Vec<Duration>, String> {
    tokio::time::sleep_until(window.start.into()).await;
    let before = pids
        .iter()
        .map(|p| tree_cpu(*p))
        .collect::<Result<Vec<_>, _>>()?;
    tokio::time::sleep_until(window.stop.into()).await;
    pids.iter()
        .zip(before)
        .map(|(p, b)| Ok(tree_cpu(*p)?.saturating_sub(b)))
        .collect()
}
