//! Upgrade in place across the event log v2 (issue 16): a database written with the
//! previous schema (its migrations only, an `events` row per event) opens on this
//! release, is converted, and serves its streams back byte for byte — SSE replay in
//! every format, status text, session history — and a stream it left running is
//! continued from its stored token ids. For SQLite and PostgreSQL.
//!
//! The old database's rows are made authentic by generating the streams on this
//! release first, reading everything a client sees, and writing the same rows in the
//! old shape (the stored event data is what every format renders, so it moves as is).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use spool::store::chunk;
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::helpers::*;
use crate::pg::TestDb;

/// A `streams` row in the columns both schemas have.
type StreamCols = (
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
);
const STREAM_COLS: &str = "id, owner, status, model, params, created_at, started_at, \
    finished_at, finish_reason, error_code, error_message, prompt_tokens, \
    completion_tokens, last_seq";

/// An old `events` row: stream id, seq, kind, data, token ids (little-endian u32s).
type EventCols = (String, i64, String, String, Option<Vec<u8>>);
type SessionCols = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);
type TurnCols = (String, i64, String, Option<String>, Option<String>, i64);

#[derive(Default)]
struct Rows {
    streams: Vec<StreamCols>,
    events: Vec<EventCols>,
    sessions: Vec<SessionCols>,
    turns: Vec<TurnCols>,
}

impl Rows {
    /// Leaves `id` as a process that died after `k` events would have: running, its
    /// later events never written.
    fn cut_off(&mut self, id: &str, k: i64) {
        self.events.retain(|e| e.0 != id || e.1 <= k);
        let s = self.streams.iter_mut().find(|s| s.0 == id).unwrap();
        s.2 = "running".into();
        (s.7, s.8, s.9, s.10, s.11, s.12) = (None, None, None, None, None, None);
        s.13 = k;
    }
}

/// The chunks of a new-layout database as old `events` rows.
fn events_of(chunks: Vec<(String, i64, Vec<u8>)>) -> Vec<EventCols> {
    let mut out = Vec::new();
    for (id, first, data) in chunks {
        for e in chunk::read(&data, first as u64).unwrap() {
            let ids = e.ids();
            let ids = (!ids.is_empty()).then(|| ids.iter().flat_map(|i| i.to_le_bytes()).collect());
            out.push((
                id.clone(),
                e.seq as i64,
                e.kind.as_str().to_owned(),
                e.data.to_owned(),
                ids,
            ));
        }
    }
    out
}

const CHUNKS: &str = "SELECT s.id, c.first_seq, c.data FROM chunks c \
    JOIN streams s ON s.key = c.stream_key ORDER BY s.id, c.last_seq";

/// The versions of the event log v2 migration, SQLite's and PostgreSQL's.
const V2_PREFIX: [&str; 2] = ["20261215000001", "20261215100001"];

/// The previous release's migrations of `dialect`, alone in a directory.
async fn old_migrator(dialect: &str, dir: &Path) -> Migrator {
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        // Everything before the event log v2 (versions sort as their names do).
        if name.as_str() < V2_PREFIX[usize::from(dialect == "postgres")] {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    Migrator::new(dir.to_path_buf()).await.unwrap()
}

/// What a client sees of the streams and the session.
#[derive(Debug, PartialEq)]
struct Seen {
    bodies: Vec<String>,
    texts: Vec<Value>,
    history: Value,
}

struct Made {
    /// The stream to cut off, then the rest.
    ids: Vec<String>,
    session: String,
    seen: Seen,
}

/// Generates the streams on this release and reads what a client sees.
async fn make(app: &TestApp) -> Made {
    let long = app
        .create(json!({"prompt": "a longer one", "max_tokens": 40}))
        .await;
    let short = app
        .create(json!({"prompt": "quote \" and é ✓", "max_tokens": 3}))
        .await;
    for id in [&long, &short] {
        app.wait_terminal(id).await;
    }
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .send()
        .await
        .unwrap();
    let session: Value = r.json().await.unwrap();
    let session = session["id"].as_str().unwrap().to_owned();
    let r = app
        .client
        .post(app.url(&format!("/v1/sessions/{session}/messages")))
        .json(&json!({"content": "hello", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let turn: Value = r.json().await.unwrap();
    let turn = turn["id"].as_str().unwrap().to_owned();
    app.wait_terminal(&turn).await;
    let ids = vec![long, short, turn];
    let seen = see(app, &ids, &session).await;
    Made { ids, session, seen }
}

async fn see(app: &TestApp, ids: &[String], session: &str) -> Seen {
    let mut bodies = Vec::new();
    let mut texts = Vec::new();
    for id in ids {
        for format in ["", "?format=openai"] {
            let r = app
                .client
                .get(app.url(&format!("/v1/streams/{id}/events{format}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            bodies.push(r.text().await.unwrap());
        }
        // Resumed halfway: the rest, exactly.
        bodies.push(app.read_events(id, Some(2)).await.1);
        texts.push(app.status(id).await["text"].clone());
    }
    let history: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{session}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Seen {
        bodies,
        texts,
        history,
    }
}

fn continuable(config: &mut spool::ServeConfig) {
    config.mock.continuable = true;
}

#[tokio::test]
async fn a_sqlite_database_of_the_previous_release_is_converted_and_reads_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let new_db = dir.path().join("new.db");
    let mut app = spawn_on(&new_db, continuable).await;
    let made = make(&app).await;
    app.shutdown().await;

    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", new_db.display()))
        .await
        .unwrap();
    let mut rows = Rows {
        streams: sqlx::query_as(&format!("SELECT {STREAM_COLS} FROM streams"))
            .fetch_all(&mut conn)
            .await
            .unwrap(),
        events: events_of(sqlx::query_as(CHUNKS).fetch_all(&mut conn).await.unwrap()),
        sessions: sqlx::query_as(
            "SELECT id, owner, model, system, metadata, created_at FROM sessions",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap(),
        turns: sqlx::query_as(
            "SELECT session_id, idx, role, content, stream_id, created_at FROM turns",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap(),
    };
    conn.close().await.unwrap();
    rows.cut_off(&made.ids[0], 9);

    let old_db = dir.path().join("old.db");
    let migrations = tempfile::tempdir().unwrap();
    let mut old = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", old_db.display()))
        .await
        .unwrap();
    old_migrator("sqlite", migrations.path())
        .await
        .run(&mut old)
        .await
        .unwrap();
    for s in &rows.streams {
        sqlx::query(&format!(
            "INSERT INTO streams ({STREAM_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&s.0)
        .bind(&s.1)
        .bind(&s.2)
        .bind(&s.3)
        .bind(&s.4)
        .bind(s.5)
        .bind(s.6)
        .bind(s.7)
        .bind(&s.8)
        .bind(&s.9)
        .bind(&s.10)
        .bind(s.11)
        .bind(s.12)
        .bind(s.13)
        .execute(&mut old)
        .await
        .unwrap();
    }
    for e in &rows.events {
        sqlx::query("INSERT INTO events (stream_id, seq, kind, data, ids) VALUES (?, ?, ?, ?, ?)")
            .bind(&e.0)
            .bind(e.1)
            .bind(&e.2)
            .bind(&e.3)
            .bind(&e.4)
            .execute(&mut old)
            .await
            .unwrap();
    }
    for s in &rows.sessions {
        sqlx::query("INSERT INTO sessions (id, owner, model, system, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&s.0).bind(&s.1).bind(&s.2).bind(&s.3).bind(&s.4).bind(s.5)
            .execute(&mut old).await.unwrap();
    }
    for t in &rows.turns {
        sqlx::query("INSERT INTO turns (session_id, idx, role, content, stream_id, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&t.0).bind(t.1).bind(&t.2).bind(&t.3).bind(&t.4).bind(t.5)
            .execute(&mut old).await.unwrap();
    }
    old.close().await.unwrap();

    let app = spawn_on(&old_db, continuable).await;
    check(&app, &made).await;

    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", old_db.display()))
        .await
        .unwrap();
    let legacy: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'events'")
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    assert_eq!(legacy, None, "the old table is dropped once converted");
}

#[tokio::test]
async fn a_postgres_database_of_the_previous_release_is_converted_and_reads_back_byte_for_byte() {
    let new_db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let on = |url: String| {
        move |c: &mut spool::ServeConfig| {
            c.store.database_url = url;
            c.cluster.node_id = Some("a".into());
            continuable(c);
        }
    };
    let mut app = spawn_on(&dir.path().join("unused.db"), on(new_db.url.clone())).await;
    let made = make(&app).await;
    app.shutdown().await;

    let mut conn = PgConnection::connect(&new_db.url).await.unwrap();
    let mut rows = Rows {
        streams: sqlx::query_as(&format!("SELECT {STREAM_COLS} FROM streams"))
            .fetch_all(&mut conn)
            .await
            .unwrap(),
        events: events_of(sqlx::query_as(CHUNKS).fetch_all(&mut conn).await.unwrap()),
        sessions: sqlx::query_as(
            "SELECT id, owner, model, system, metadata, created_at FROM sessions",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap(),
        turns: sqlx::query_as(
            "SELECT session_id, idx, role, content, stream_id, created_at FROM turns",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap(),
    };
    conn.close().await.unwrap();
    rows.cut_off(&made.ids[0], 9);

    let old_db = TestDb::create().await;
    let migrations = tempfile::tempdir().unwrap();
    let mut old = PgConnection::connect(&old_db.url).await.unwrap();
    old_migrator("postgres", migrations.path())
        .await
        .run(&mut old)
        .await
        .unwrap();
    for s in &rows.streams {
        sqlx::query(&format!(
            "INSERT INTO streams ({STREAM_COLS}, node) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'a')"
        ))
        .bind(&s.0)
        .bind(&s.1)
        .bind(&s.2)
        .bind(&s.3)
        .bind(&s.4)
        .bind(s.5)
        .bind(s.6)
        .bind(s.7)
        .bind(&s.8)
        .bind(&s.9)
        .bind(&s.10)
        .bind(s.11)
        .bind(s.12)
        .bind(s.13)
        .execute(&mut old)
        .await
        .unwrap();
    }
    for e in &rows.events {
        sqlx::query(
            "INSERT INTO events (stream_id, seq, kind, data, ids) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&e.0)
        .bind(e.1)
        .bind(&e.2)
        .bind(&e.3)
        .bind(&e.4)
        .execute(&mut old)
        .await
        .unwrap();
    }
    for s in &rows.sessions {
        sqlx::query("INSERT INTO sessions (id, owner, model, system, metadata, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&s.0).bind(&s.1).bind(&s.2).bind(&s.3).bind(&s.4).bind(s.5)
            .execute(&mut old).await.unwrap();
    }
    for t in &rows.turns {
        sqlx::query("INSERT INTO turns (session_id, idx, role, content, stream_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&t.0).bind(t.1).bind(&t.2).bind(&t.3).bind(&t.4).bind(t.5)
            .execute(&mut old).await.unwrap();
    }
    // A node of the previous release still holding its lease: the upgrade waits for
    // every node to be stopped.
    sqlx::query(
        "INSERT INTO nodes (id, incarnation, expires_at) VALUES ('old', 'x', now() + interval '1 hour')",
    )
    .execute(&mut old)
    .await
    .unwrap();
    let mut config = spool::ServeConfig::defaults();
    on(old_db.url.clone())(&mut config);
    let refused = match spool::Spool::start(config).await {
        Ok(_) => panic!("started beside a live node of the previous release"),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("stop every node first"), "{refused}");
    sqlx::query("DELETE FROM nodes")
        .execute(&mut old)
        .await
        .unwrap();
    old.close().await.unwrap();

    let app = spawn_on(&dir.path().join("unused.db"), on(old_db.url.clone())).await;
    check(&app, &made).await;
    let pool = old_db.pool().await;
    let legacy: bool = sqlx::query_scalar("SELECT to_regclass('events') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!legacy, "the old table is dropped once converted");
}

/// The upgraded server continues the stream that was cut off and then shows exactly
/// what the original showed.
async fn check(app: &TestApp, made: &Made) {
    let status = app.wait_terminal(&made.ids[0]).await;
    assert_eq!(status["status"], "completed", "{status}");
    let seen = see(app, &made.ids, &made.session).await;
    for (i, (got, want)) in seen.bodies.iter().zip(&made.seen.bodies).enumerate() {
        assert_eq!(got, want, "body {i}");
    }
    assert_eq!(seen, made.seen);
}
