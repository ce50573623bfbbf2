//! Server starts, recorded in the database (`server_starts`).

use rusqlite::Connection;

/// When this data dir was opened by a server, and by which version.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS server_starts (
    started_at INTEGER NOT NULL,
    version TEXT NOT NULL
);
"#;

/// Most start records kept.
const MAX_STARTS: i64 = 100;

/// Record this start (keeping the last [`MAX_STARTS`]). Called on the
/// writer's connection when the database is opened: besides the record, it
/// makes that connection's first commit happen now — SQLite creates the WAL
/// file (deleted at the last clean close) and fsyncs its directory on a
/// connection's first sync, ~2-10 ms that the first request after a restart
/// paid before.
pub fn record_start(conn: &mut Connection, now_ms: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO server_starts (started_at, version) VALUES (?1, ?2)",
        rusqlite::params![now_ms, env!("CARGO_PKG_VERSION")],
    )?;
    tx.execute(
        "DELETE FROM server_starts WHERE rowid <= (SELECT MAX(rowid) FROM server_starts) - ?1",
        [MAX_STARTS],
    )?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    #[test]
    fn starts_are_recorded_and_bounded() {
        use super::{MAX_STARTS, record_start};
        use crate::store::schema::create;
        let mut conn = rusqlite::Connection::open_in_memory().expect("open");
        create(&mut conn).expect("schema");
        for t in 0..MAX_STARTS + 5 {
            record_start(&mut conn, 1_000 + t).expect("record");
        }
        let (n, first, last): (i64, i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), MIN(started_at), MAX(started_at) FROM server_starts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("count");
        assert_eq!(
            (n, first, last),
            (MAX_STARTS, 1_005, 1_000 + MAX_STARTS + 4)
        );
    }
}
