//! Fresh databases for tests (cargo feature `testing`): a temporary SQLite file always, and a new
//! PostgreSQL database (`gridex_test_<unique>`, dropped afterwards) when `DATABASE_URL` names a
//! PostgreSQL server.
//!
//! Test code: a database that cannot be made fails the test with a panic.

use crate::{redact, Database};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A database that exists for the life of this value.
pub struct TestDb {
    pub db: Database,
    pub url: String,
    cleanup: Cleanup,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("url", &redact(&self.url)).finish_non_exhaustive()
    }
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("gridex_test_{}_{}_{}", std::process::id(), nanos % 1_000_000_000, COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl TestDb {
    /// A fresh SQLite database in a temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary directory for the test database");
        let url = format!("sqlite://{}", dir.path().join("gridex.sqlite").display());
        let db = Database::open(&url, 4).expect("a fresh SQLite database opens");
        TestDb { db, url, cleanup: Cleanup::Sqlite(dir) }
    }

    /// A fresh PostgreSQL database when `DATABASE_URL` is a postgres URL; `None` when it is unset.
    /// Panics (failing the test) when it is set but the server does not answer.
    pub fn postgres() -> Option<TestDb> {
        let admin_url = std::env::var("DATABASE_URL").ok().filter(|url| url.starts_with("postgres"))?;
        let name = unique_name();
        let mut admin = PgConnection::establish(&admin_url)
            .unwrap_or_else(|error| panic!("DATABASE_URL is set but PostgreSQL is unreachable: {error}"));
        admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("CREATE DATABASE for the test");
        let url = replace_database_name(&admin_url, &name);
        let db = Database::open(&url, 8).expect("the fresh PostgreSQL test database opens");
        Some(TestDb { db, url, cleanup: Cleanup::Postgres { admin_url, name } })
    }

    /// Every backend available here: SQLite, and PostgreSQL when `DATABASE_URL` is set.
    pub fn all() -> Vec<TestDb> {
        let mut databases = vec![TestDb::sqlite()];
        databases.extend(TestDb::postgres());
        databases
    }

    /// The backend's default: PostgreSQL when `DATABASE_URL` is set, else SQLite.
    pub fn any() -> TestDb {
        TestDb::postgres().unwrap_or_else(TestDb::sqlite)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            if let Ok(mut admin) = PgConnection::establish(admin_url) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// `postgres://user@host:5432/test?x` with the database name replaced.
pub fn replace_database_name(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::zones;
    use crate::DbError;
    use diesel::prelude::*;

    #[test]
    fn a_test_url_names_the_fresh_database() {
        assert_eq!(
            replace_database_name("postgres://u@h:5432/test?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
    }

    #[test]
    fn migrations_apply_and_a_row_round_trips_on_every_backend() {
        for test_db in TestDb::all() {
            let inserted = test_db
                .db
                .write_blocking(|connection| {
                    diesel::insert_into(zones::table)
                        .values((
                            zones::zone_id.eq("north"),
                            zones::name.eq("North"),
                            zones::slot_len_ms.eq(900_000_i64),
                            zones::utility_account.eq("utility:north"),
                            zones::created_ms.eq(0_i64),
                        ))
                        .execute(connection)
                        .map_err(DbError::from)
                })
                .expect("insert");
            assert_eq!(inserted, 1);
            let mut connection = test_db.db.get().expect("a connection");
            let names: Vec<String> = zones::table.select(zones::name).load(&mut connection).expect("select");
            assert_eq!(names, vec!["North".to_owned()], "{:?}", test_db.db.backend());
            assert!(test_db.db.ping());
        }
    }
}
