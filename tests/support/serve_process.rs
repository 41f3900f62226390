//! `token-vendor serve` as a child process: the one harness for tests that need the
//! real binary (kill -9, SIGTERM, several replicas). Its JSON log lines are kept; it is
//! killed with SIGKILL when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct ServeProcess {
    child: Child,
    pub address: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServeProcess {
    /// Starts `serve` with only `PATH`, `RUST_LOG=info` and `env`, and waits until it
    /// logs the port it listens on.
    pub fn start(env: &[(&str, String)]) -> Self {
        Self::start_bin(env!("CARGO_BIN_EXE_token-vendor"), env)
    }

    /// Like [`ServeProcess::start`], with another build of the service (an older
    /// release, for the rollback test).
    pub fn start_bin(bin: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            // Tests that are not about signed checkpoints run without them.
            .env("AUDIT_ALLOW_UNSIGNED", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Built before the wait, so a service that never logs its port is still killed.
        let mut service = Self {
            child: cmd.spawn().expect("start token-vendor serve"),
            address: String::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let stdout = service.child.stdout.take().expect("piped stdout");
        let stderr = service.child.stderr.take().expect("piped stderr");
        let errors = service.log.clone();
        // A start-up failure is said on stderr; kept with the log for the panic below.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut log) = errors.lock() {
                    log.push(line);
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = service.log.clone();
        // Keeps reading to the end, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["port"].as_u64())
                {
                    let _ = tx.send(port);
                }
                if let Ok(mut log) = lines.lock() {
                    log.push(line);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(e) => {
                // The stderr reader may still be pushing the last line.
                std::thread::sleep(Duration::from_millis(200));
                let log = service.log.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("{bin} serve did not log its port ({e}):\n{log}");
            }
        };
        service.address = format!("http://127.0.0.1:{port}");
        service
    }

    /// The process's resident memory now (Linux), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        self.kill();
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// SIGHUP: re-read the deny list and every `_FILE` secret.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to end; `None` if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("wait for the service") {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether any log line so far contains `needle`.
    pub fn log_has(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|log| log.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
