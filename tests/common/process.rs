//! The real `spool` binary as a child process on port 0 (shared by the test binaries
//! that kill it or read its logs): started with a clean environment, its address read
//! from its log, waited for until it is ready, its stderr kept line by line, and killed
//! when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Every line the server has written to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// The log lines written so far.
    #[allow(dead_code)] // not every test binary reads logs
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts spool on `db` with the mock backend at 100 tokens/s; `env` adds or overrides.
pub fn start(db: &std::path::Path, env: &[(&str, &str)], deadline: Duration) -> Server {
    start_url(&format!("sqlite://{}", db.display()), env, deadline)
}

/// [`start`] on any `DATABASE_URL` (a PostgreSQL one, for several nodes). Returns once
/// the server is ready (`/readyz`), all within `deadline`.
pub fn start_url(database_url: &str, env: &[(&str, &str)], deadline: Duration) -> Server {
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spool"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPOOL_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", database_url)
        .env("SPOOL_BACKEND", "mock")
        .env("SPOOL_MOCK_RATE", "100")
        .env("SPOOL_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http") {
                // The URL ends at a space or, in a JSON log line, at its closing quote.
                let url = line[at + "listening on ".len()..]
                    .split(|c: char| c.is_whitespace() || c == '"')
                    .next()
                    .unwrap_or_default();
                let _ = tx.send(url.to_owned());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let base = rx
        .recv_timeout(deadline)
        .expect("the server did not report its address");
    let server = Server { child, base, log };
    crate::ready::wait_ready(&server.base, deadline.saturating_sub(started.elapsed()));
    server
}
