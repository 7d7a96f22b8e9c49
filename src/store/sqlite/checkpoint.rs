//! The WAL checkpointer: copies committed pages from the write-ahead log into the
//! database file on its own connection, so the group-commit writer never stalls on
//! that I/O (or its `fsync`).
//!
//! The writer's connection has automatic checkpoints turned off. This task runs a
//! `PASSIVE` checkpoint every [`EVERY`]: it never blocks the writer or a reader, and
//! copies whatever no reader still needs. The writer stops it and runs a last
//! `TRUNCATE` checkpoint itself when it closes.

use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the log is checkpointed.
pub const EVERY: Duration = Duration::from_millis(500);

/// The running checkpointer; [`Checkpointer::stop`] ends it.
pub struct Checkpointer {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Checkpointer {
    pub fn start(mut conn: SqliteConnection) -> Self {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Logged when checkpoints start failing and when they work again, not at
            // every try (a full disk fails them twice a second).
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut conn)
                    .await
                {
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                    }
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("WAL checkpoints work again");
                    }
                    _ => {}
                }
            }
        });
        Checkpointer { cancel, task }
    }

    /// Stops the task and waits for it (a checkpoint in progress finishes first).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Checkpoints everything and truncates the log, on the writer's connection.
pub async fn truncate(conn: &mut SqliteConnection) {
    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await
    {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
}
