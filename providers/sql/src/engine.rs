//! Everything that differs between PostgreSQL and SQLite, in one place.
//!
//! - The pool: [`Pool`] holds either engine's, and [`on_pool!`] runs one body of query code
//!   on whichever it is. The body is written once and type-checked for each engine, so the
//!   two cannot drift apart and every fix lands on both.
//! - The SQL texts that differ: [`Dialect`] (only the outbox claim, today: PostgreSQL locks
//!   the rows it claims, SQLite has one writer at a time).
//! - The column types: UUIDs are `UUID` on PostgreSQL and 16-byte `BLOB`s on SQLite, times
//!   `TIMESTAMPTZ` and RFC 3339 `TEXT`, JSON `JSONB` and `TEXT`; sqlx maps both to the same
//!   Rust types, so the queries do not see it (see the migrations).
//! - Durability: SQLite runs in WAL mode with `synchronous = FULL` (see `connect`);
//!   PostgreSQL commits durably by default.

use udim_ports::PortError;

use crate::Engine;

/// A connection pool on one of the two engines.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// Runs `$body` with `$pool` bound to the engine's own pool type.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::engine::Pool::Postgres($p) => $body,
            $crate::engine::Pool::Sqlite($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// The statements whose text differs between engines.
pub(crate) struct Dialect {
    /// Leases due outbox rows; `$1` now, `$2` lease end, `$3` limit.
    pub claim_outbox: &'static str,
    /// Whether user `$1`'s package `$2` is still of the user's current erasure epoch, read
    /// inside the transaction that stores or quarantines it.
    pub erasure_fence: &'static str,
}

/// Leases due outbox rows. A package's events go out in order: none is handed out while an
/// earlier one of the same package is still unsent (failed and waiting, or leased to another
/// relay). `$lock` ends the sub-select.
macro_rules! claim_outbox {
    ($lock:literal) => {
        concat!(
            "UPDATE outbox SET lease_until = $2, attempts = attempts + 1 \
             WHERE seq IN (SELECT seq FROM outbox o \
                 WHERE sent_at IS NULL AND next_attempt_at <= $1 \
                   AND (lease_until IS NULL OR lease_until <= $1) \
                   AND NOT EXISTS (SELECT 1 FROM outbox e \
                       WHERE e.aggregate_id = o.aggregate_id AND e.sent_at IS NULL AND e.seq < o.seq) \
                 ORDER BY seq LIMIT $3",
            $lock,
            ") RETURNING seq, id, event_type, schema_version, aggregate_id, payload, created_at, attempts, \
             last_error, next_attempt_at, sent_at"
        )
    };
}

// PostgreSQL: claimers on other connections skip the rows this one locked; the fence is read
// under a share lock, so it waits for an erasure raising it right now (and the erasure for it).
const POSTGRES: Dialect = Dialect {
    claim_outbox: claim_outbox!(" FOR UPDATE SKIP LOCKED"),
    erasure_fence: "SELECT u.erasure_epoch = p.erasure_epoch FROM users u JOIN packages p ON p.user_id = u.id \
                    WHERE u.id = $1 AND p.id = $2 FOR SHARE OF u",
};

// SQLite has one writer at a time: read after the transaction's first write, the fence is
// the latest.
const SQLITE: Dialect = Dialect {
    claim_outbox: claim_outbox!(""),
    erasure_fence: "SELECT u.erasure_epoch = p.erasure_epoch FROM users u JOIN packages p ON p.user_id = u.id \
                    WHERE u.id = $1 AND p.id = $2",
};

impl Pool {
    pub(crate) fn dialect(&self) -> &'static Dialect {
        match self {
            Self::Postgres(_) => &POSTGRES,
            Self::Sqlite(_) => &SQLITE,
        }
    }
}

/// After an erasure commits: on SQLite, checkpoint the WAL and truncate it, so the frames
/// written before the erasure (which still hold the destroyed wrapped key) leave the WAL;
/// with `secure_delete` on, the database pages themselves hold zeros where the key was.
/// Best effort: a reader still holding an old snapshot makes the checkpoint partial, and the
/// next erasure's (or the restart's) checkpoint finishes it. PostgreSQL keeps dead tuples
/// until VACUUM and WAL until it is recycled: docs/erasure.md says what an operator bounds.
pub(crate) async fn after_erasure(pool: &Pool) {
    if let Pool::Sqlite(pool) = pool {
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await
        {
            Ok((0, _, _)) => {}
            Ok((_, log, done)) => {
                tracing::info!(
                    log,
                    done,
                    "the WAL checkpoint after an erasure was partial; the next one finishes it"
                )
            }
            Err(e) => tracing::warn!(error = %e, "the WAL checkpoint after an erasure failed"),
        }
    }
}

/// A database error as a port error: trouble that passes — the connection, the server
/// shutting down or short of resources, a serialization failure or deadlock, a lock not
/// granted in time — is `Unavailable` (retry later), a unique violation `AlreadyExists`,
/// anything else `Generic`.
pub(crate) fn db_err(e: sqlx::Error) -> PortError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
            PortError::unavailable("database", e)
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => PortError::AlreadyExists(db.message().to_owned()),
        sqlx::Error::Database(db) if passes(db.as_ref()) => PortError::unavailable("database", e),
        _ => PortError::generic("database", e),
    }
}

/// Whether a database error names a condition that passes by itself.
fn passes(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    let engine = if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        Engine::Sqlite
    } else {
        Engine::Postgres
    };
    code_passes(engine, &code)
}

/// SQLite reports (extended) result codes as numbers, PostgreSQL SQLSTATEs as five
/// characters (which may be all digits).
fn code_passes(engine: Engine, code: &str) -> bool {
    const SQLITE_BUSY: u32 = 5;
    const SQLITE_LOCKED: u32 = 6;
    match engine {
        Engine::Sqlite => code
            .parse::<u32>()
            .is_ok_and(|extended| matches!(extended & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        // 08: connection exception; 40001, 40P01: serialization failure, deadlock; 53200,
        // 53300: out of memory, too many connections; 57P01-57P03: shutdown, crash, not yet
        // accepting connections; 57014: statement timeout; 55P03: lock not available. Not a
        // full disk (53100) or a constraint failing at commit (40002): those last.
        Engine::Postgres => {
            code.starts_with("08")
                || matches!(
                    code,
                    "40001" | "40P01" | "53200" | "53300" | "57P01" | "57P02" | "57P03" | "57014" | "55P03"
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Engine, code_passes};

    #[test]
    fn conditions_that_pass_are_told_from_lasting_ones() {
        for code in ["5", "517", "6", "262"] {
            assert!(code_passes(Engine::Sqlite, code), "{code}");
        }
        for code in ["19", "2067", "1", "11", "40001"] {
            assert!(!code_passes(Engine::Sqlite, code), "{code}");
        }
        for code in ["08006", "40001", "40P01", "53300", "57P01", "57014", "55P03"] {
            assert!(code_passes(Engine::Postgres, code), "{code}");
        }
        for code in [
            "23505", "23514", "42P01", "42501", "P0001", "22P02", "00005", "40002", "53100",
        ] {
            assert!(!code_passes(Engine::Postgres, code), "{code}");
        }
    }
}
