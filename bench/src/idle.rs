//! Idle sessions: many authenticated tether-firmware sessions that only
//! keep their heartbeat, spread over several client processes and source
//! addresses (one process may hold only `ulimit -Hn` sockets, one source
//! address only ~28,000 ports), while the server's RSS and CPU are read
//! from /proc.

use std::io::{BufRead as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tether_core::scram::ClientCredentials;
use tether_firmware::{BufferStore, Session, TokioClock, host};
use tokio::sync::{Mutex, Semaphore};

use crate::common::{Users, rng, v1_config};
use crate::load::connect;

/// One client process: logs in `count` sessions (users `first..`) from
/// `source`, prints `ready OK FAILED [first error]`, keeps them serving
/// (heartbeats) until stdin closes.
pub async fn client(
    addr: SocketAddr,
    users: Arc<Users>,
    first: usize,
    count: usize,
    source: IpAddr,
    concurrency: usize,
) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for k in 0..count {
        let (gate, ok, failed, first_error, users, done_tx) = (
            gate.clone(),
            ok.clone(),
            failed.clone(),
            first_error.clone(),
            users.clone(),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let (name, keys) = users.get(first + k);
            let mut store: BufferStore = BufferStore::new();
            let result = async {
                let stream = connect(addr, Some(source))
                    .await
                    .map_err(|e| format!("connect from {source}: {e}"))?;
                let mut rng = rng();
                Session::login(
                    host::transport(stream),
                    store.buffers(),
                    TokioClock::new(),
                    name,
                    ClientCredentials::Keys(keys),
                    &mut rng,
                    &v1_config().with_handshake_timeout(Duration::from_secs(60)),
                )
                .await
                .map_err(|e| format!("login as {name}: {e}"))
            }
            .await;
            drop(permit);
            match result {
                Ok(login) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    let _ = done_tx.send(());
                    let mut session = login.session;
                    // Heartbeats until the process ends.
                    let _ = session.serve(&mut ()).await;
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().await.get_or_insert(e);
                    let _ = done_tx.send(());
                }
            }
        });
    }
    drop(done_tx);
    for _ in 0..count {
        if done_rx.recv().await.is_none() {
            break;
        }
    }
    let err = first_error.lock().await.clone().unwrap_or_default();
    println!(
        "ready {} {} {}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        err
    );
    let _ = std::io::stdout().flush();
    // Hold the sessions until the parent closes our stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    })
    .await;
    std::process::exit(0);
}

/// Client processes holding sessions; dropped: their stdin closes and they exit.
pub struct Clients {
    children: Vec<Child>,
}

impl Clients {
    /// Starts `procs` client processes holding `sessions` in total, process
    /// k from source address 127.0.0.(10 + k), and waits until each has
    /// logged in all of its sessions.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        exe: &std::path::Path,
        addr: SocketAddr,
        manifest: &std::path::Path,
        sessions: usize,
        procs: usize,
        timeout: Duration,
    ) -> Result<(Self, Duration), String> {
        let began = Instant::now();
        let mut children = Vec::new();
        let per = sessions.div_ceil(procs);
        let mut first = 0;
        for k in 0..procs {
            let count = per.min(sessions - first);
            if count == 0 {
                break;
            }
            let child = Command::new(exe)
                .args(["idle-client", "--addr", &addr.to_string(), "--manifest"])
                .arg(manifest)
                .args([
                    "--first",
                    &first.to_string(),
                    "--count",
                    &count.to_string(),
                    "--source",
                    &format!("127.0.0.{}", 10 + k),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn idle client: {e}"))?;
            children.push(child);
            first += count;
        }
        let mut clients = Self { children };
        // Each child prints one `ready` line.
        let (tx, rx) = std::sync::mpsc::channel();
        for child in &mut clients.children {
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
        }
        let mut ok = 0;
        for _ in 0..clients.children.len() {
            let line = rx
                .recv_timeout(timeout.saturating_sub(began.elapsed()))
                .map_err(|_| format!("idle clients not ready within {} s", timeout.as_secs()))?;
            let mut parts = line.trim().splitn(4, ' ');
            if parts.next() != Some("ready") {
                return Err(format!("idle client failed: {line:?}"));
            }
            let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let failed: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
            if failed > 0 {
                return Err(format!(
                    "idle client: {failed} logins failed: {}",
                    parts.next().unwrap_or("")
                ));
            }
            ok += n;
        }
        if ok != sessions {
            return Err(format!("only {ok} of {sessions} idle sessions logged in"));
        }
        Ok((clients, began.elapsed()))
    }

    /// Checks that every client process is still alive (its sessions up).
    pub fn alive(&mut self) -> Result<(), String> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("an idle client exited early: {status}"));
            }
        }
        Ok(())
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.children {
            drop(c.stdin.take());
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}
