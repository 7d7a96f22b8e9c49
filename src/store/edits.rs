//! Row edits: changes to rows other than a stream's events that the writer applies in
//! its batches, after everything else of the batch — a session's rename, metadata,
//! delete or truncation ([`SessionEdit`]), a Durable Stream's soft delete, and a
//! Durable Streams subscription created, its state rewritten, or deleted. Each is
//! answered with whether the last statement of the edit changed a row (for most: the
//! row existed).

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use super::ds::SubscriptionRow;
use super::sessions::SessionEdit;

/// One change the writer applies.
#[derive(Debug, Clone)]
pub enum RowEdit {
    Session(SessionEdit),
    /// Marks the Durable Stream `name` deleted while forks still read through it.
    DsSoftDelete {
        name: String,
    },
    /// Inserts a new subscription; changes nothing (answered `false`) when its id is
    /// taken — by another node, say.
    SubscriptionCreate(SubscriptionRow),
    /// Rewrites a subscription's state (`false`: it is gone).
    SubscriptionState {
        id: String,
        state: String,
    },
    /// Deletes a subscription.
    SubscriptionDelete {
        id: String,
    },
}

impl From<SessionEdit> for RowEdit {
    fn from(edit: SessionEdit) -> Self {
        RowEdit::Session(edit)
    }
}

/// A statement's bound value.
pub(super) enum Bind<'a> {
    Flag(bool),
    Int(i64),
    Text(Option<&'a str>),
}

/// The statements of one edit, in order; the last is the one on the edit's row.
fn edit_sql(edit: &RowEdit) -> Vec<(&'static str, Vec<Bind<'_>>)> {
    match edit {
        RowEdit::Session(edit) => session_sql(edit),
        RowEdit::DsSoftDelete { name } => vec![(
            "UPDATE ds_streams SET soft_deleted = TRUE WHERE name = ?",
            vec![Bind::Text(Some(name))],
        )],
        RowEdit::SubscriptionCreate(row) => vec![(
            "INSERT INTO ds_subscriptions (id, owner, config, config_hash, created_at, state) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            vec![
                Bind::Text(Some(&row.id)),
                Bind::Text(row.owner.as_deref()),
                Bind::Text(Some(&row.config)),
                Bind::Text(Some(&row.config_hash)),
                Bind::Int(row.created_at),
                Bind::Text(Some(&row.state)),
            ],
        )],
        RowEdit::SubscriptionState { id, state } => vec![(
            "UPDATE ds_subscriptions SET state = ? WHERE id = ?",
            vec![Bind::Text(Some(state)), Bind::Text(Some(id))],
        )],
        RowEdit::SubscriptionDelete { id } => vec![(
            "DELETE FROM ds_subscriptions WHERE id = ?",
            vec![Bind::Text(Some(id))],
        )],
    }
}

/// Applies `edits` on the writer's SQLite connection, inside its transaction; returns
/// whether each one's row existed.
pub(super) async fn edit_sqlite(
    conn: &mut SqliteConnection,
    edits: &[&RowEdit],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut found = Vec::with_capacity(edits.len());
    for edit in edits {
        let mut existed = false;
        for (sql, binds) in edit_sql(edit) {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = match b {
                    Bind::Flag(f) => q.bind(f),
                    Bind::Int(i) => q.bind(i),
                    Bind::Text(t) => q.bind(t),
                };
            }
            existed = q.execute(&mut *conn).await?.rows_affected() > 0;
        }
        found.push(existed);
    }
    Ok(found)
}

/// [`edit_sqlite`] on the writer's PostgreSQL transaction.
pub(super) async fn edit_postgres(
    conn: &mut PgConnection,
    edits: &[&RowEdit],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut found = Vec::with_capacity(edits.len());
    for edit in edits {
        let mut existed = false;
        for (sql, binds) in edit_sql(edit) {
            let sql = super::dialect::postgres(sql);
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = match b {
                    Bind::Flag(f) => q.bind(f),
                    Bind::Int(i) => q.bind(i),
                    Bind::Text(t) => q.bind(t),
                };
            }
            existed = q.execute(&mut *conn).await?.rows_affected() > 0;
        }
        found.push(existed);
    }
    Ok(found)
}

/// A session edit's statements.
fn session_sql(edit: &SessionEdit) -> Vec<(&'static str, Vec<Bind<'_>>)> {
    match edit {
        SessionEdit::Update {
            id,
            title,
            metadata,
        } => vec![(
            "UPDATE sessions SET \
             title = CASE WHEN ? THEN ? ELSE title END, \
             metadata = CASE WHEN ? THEN ? ELSE metadata END \
             WHERE id = ?",
            vec![
                Bind::Flag(title.is_some()),
                Bind::Text(title.as_ref().and_then(|t| t.as_deref())),
                Bind::Flag(metadata.is_some()),
                Bind::Text(metadata.as_ref().and_then(|m| m.as_deref())),
                Bind::Text(Some(id)),
            ],
        )],
        SessionEdit::Delete { id } => vec![
            (
                "DELETE FROM turns WHERE session_id = ?",
                vec![Bind::Text(Some(id))],
            ),
            (
                "DELETE FROM sessions WHERE id = ?",
                vec![Bind::Text(Some(id))],
            ),
        ],
        SessionEdit::Truncate { id, idx } => vec![
            (
                "DELETE FROM turns WHERE session_id = ? AND idx >= ?",
                vec![Bind::Text(Some(id)), Bind::Int(*idx)],
            ),
            (
                "UPDATE sessions SET id = id WHERE id = ?",
                vec![Bind::Text(Some(id))],
            ),
        ],
    }
}
