//! The lease tables (`zone_leases`, `exchange_instances`, migration …_command_sequence): which
//! exchange instance owns which zone on PostgreSQL, and the fencing check every group commit runs.
//! Times are the database's clock ([`NOW_MS`]), never an instance's: instances' clocks may disagree,
//! and tests drive the market's clock by hand. SQLite takes no leases (one exchange owns every zone).

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use gridex_store::{DbConnection, DbError};
use protocol::ZoneId;
use std::collections::HashMap;

/// The database's clock in milliseconds since the epoch (`clock_timestamp`, not the transaction's
/// start time, so a long transaction does not renew with a stale time).
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn postgres(conn: &mut DbConnection) -> Result<&mut diesel::PgConnection, DbError> {
    match conn {
        DbConnection::Postgres(pg) => Ok(pg),
        DbConnection::Sqlite(_) => Err(DbError::Invalid("zone leases are taken on PostgreSQL only".to_owned())),
    }
}

fn to_i64(value: u64) -> Result<i64, DbError> {
    i64::try_from(value).map_err(|_| DbError::Invalid(format!("{value} does not fit a BIGINT")))
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Token {
    #[diesel(sql_type = BigInt)]
    token: i64,
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Text)]
    zone_id: String,
    #[diesel(sql_type = Text)]
    owner: String,
    #[diesel(sql_type = BigInt)]
    token: i64,
}

#[derive(QueryableByName)]
struct ZoneName {
    #[diesel(sql_type = Text)]
    zone_id: String,
}

/// Records that `instance` is alive for `ttl_ms` more, forgets instances whose heartbeat expired,
/// and returns how many instances are alive (this one included): the divisor of the fair share.
pub fn heartbeat(conn: &mut DbConnection, instance: &str, ttl_ms: u64) -> Result<u64, DbError> {
    let pg = postgres(conn)?;
    let ttl_ms = to_i64(ttl_ms)?;
    diesel::sql_query(format!(
        "INSERT INTO exchange_instances (instance_id, expires_ms) VALUES ($1, {NOW_MS} + $2) \
         ON CONFLICT (instance_id) DO UPDATE SET expires_ms = excluded.expires_ms"
    ))
    .bind::<Text, _>(instance)
    .bind::<BigInt, _>(ttl_ms)
    .execute(pg)?;
    diesel::sql_query(format!("DELETE FROM exchange_instances WHERE expires_ms < {NOW_MS}")).execute(pg)?;
    let live: Vec<Count> =
        diesel::sql_query(format!("SELECT count(*) AS count FROM exchange_instances WHERE expires_ms >= {NOW_MS}"))
            .load(pg)?;
    Ok(live.first().map_or(1, |live| u64::try_from(live.count).unwrap_or(1).max(1)))
}

/// Extends the lease of `zone` held by `instance` with `token`; `false` when the lease is no longer
/// this instance's with this token (taken over: the zone is lost), or was released (`expires_ms` 0:
/// never brought back, so a release racing a renewal still frees the zone). A lease that expired
/// but that nobody took is still this instance's token, so renewing it is safe.
pub fn renew(conn: &mut DbConnection, zone: &ZoneId, instance: &str, token: i64, ttl_ms: u64) -> Result<bool, DbError> {
    let renewed = diesel::sql_query(format!(
        "UPDATE zone_leases SET expires_ms = {NOW_MS} + $4 \
         WHERE zone_id = $1 AND owner = $2 AND token = $3 AND expires_ms > 0"
    ))
    .bind::<Text, _>(zone.as_str())
    .bind::<Text, _>(instance)
    .bind::<BigInt, _>(token)
    .bind::<BigInt, _>(to_i64(ttl_ms)?)
    .execute(postgres(conn)?)?;
    Ok(renewed == 1)
}

/// Takes the lease of `zone` if it is free (never leased, expired or released) or held under this
/// very instance id (the same instance restarted: it takes its zones back at once rather than after
/// the time to live), returning the new fencing token: one more than the last holder's, so that
/// holder can never commit for the zone again. `None` while another instance holds it. One
/// statement: of two instances trying at once, one wins.
pub fn acquire(conn: &mut DbConnection, zone: &ZoneId, instance: &str, ttl_ms: u64) -> Result<Option<i64>, DbError> {
    let taken: Vec<Token> = diesel::sql_query(format!(
        "INSERT INTO zone_leases (zone_id, owner, token, expires_ms) VALUES ($1, $2, 1, {NOW_MS} + $3) \
         ON CONFLICT (zone_id) DO UPDATE SET owner = excluded.owner, token = zone_leases.token + 1, \
         expires_ms = excluded.expires_ms \
         WHERE zone_leases.expires_ms < {NOW_MS} OR zone_leases.owner = excluded.owner RETURNING token"
    ))
    .bind::<Text, _>(zone.as_str())
    .bind::<Text, _>(instance)
    .bind::<BigInt, _>(to_i64(ttl_ms)?)
    .load(postgres(conn)?)?;
    Ok(taken.first().map(|taken| taken.token))
}

/// Lets the lease of `zone` go at once (it expires now), if `instance` still holds it with `token`.
pub fn release(conn: &mut DbConnection, zone: &ZoneId, instance: &str, token: i64) -> Result<(), DbError> {
    diesel::sql_query("UPDATE zone_leases SET expires_ms = 0 WHERE zone_id = $1 AND owner = $2 AND token = $3")
        .bind::<Text, _>(zone.as_str())
        .bind::<Text, _>(instance)
        .bind::<BigInt, _>(token)
        .execute(postgres(conn)?)?;
    Ok(())
}

/// Lets every lease of `instance` go and removes its heartbeat (a clean shutdown): the others take
/// its zones on their next round instead of after the leases' time to live.
pub fn release_all(conn: &mut DbConnection, instance: &str) -> Result<(), DbError> {
    let pg = postgres(conn)?;
    diesel::sql_query("UPDATE zone_leases SET expires_ms = 0 WHERE owner = $1")
        .bind::<Text, _>(instance)
        .execute(pg)?;
    diesel::sql_query("DELETE FROM exchange_instances WHERE instance_id = $1").bind::<Text, _>(instance).execute(pg)?;
    Ok(())
}

/// The zones whose lease an instance other than `instance` holds now (not expired).
pub fn held_zones(conn: &mut DbConnection, instance: &str) -> Result<Vec<ZoneId>, DbError> {
    let rows: Vec<ZoneName> =
        diesel::sql_query(format!("SELECT zone_id FROM zone_leases WHERE expires_ms >= {NOW_MS} AND owner <> $1"))
            .bind::<Text, _>(instance)
            .load(postgres(conn)?)?;
    Ok(rows.into_iter().filter_map(|row| ZoneId::parse(&row.zone_id).ok()).collect())
}

/// The fencing check, run inside a group commit's transaction: of `zones` (with the token this
/// instance holds each with, `None` for a zone it no longer holds), the ones whose rows must not be
/// stored because another instance owns the zone now (or it never held it). It takes a shared lock
/// on each lease row until the transaction ends, so a takeover (an `UPDATE` of the row) waits for
/// this commit, and a commit that comes after a takeover sees the new owner: the new owner recovers
/// the zone's books from a log that holds every command this instance committed for it.
pub fn fence(
    conn: &mut DbConnection,
    instance: &str,
    zones: &HashMap<ZoneId, Option<i64>>,
) -> Result<Vec<ZoneId>, DbError> {
    let mut lost: Vec<ZoneId> =
        zones.iter().filter(|(_, token)| token.is_none()).map(|(zone, _)| zone.clone()).collect();
    let mut asked: Vec<String> =
        zones.iter().filter(|(_, token)| token.is_some()).map(|(zone, _)| zone.as_str().to_owned()).collect();
    if !asked.is_empty() {
        // One order for every transaction that locks several rows, so two commits never deadlock.
        asked.sort();
        let holders: Vec<Holder> = diesel::sql_query(
            "SELECT zone_id, owner, token FROM zone_leases WHERE zone_id = ANY($1) ORDER BY zone_id FOR SHARE",
        )
        .bind::<Array<Text>, _>(&asked)
        .load(postgres(conn)?)?;
        for name in &asked {
            let Ok(zone) = ZoneId::parse(name) else { continue };
            let ours = zones.get(&zone).copied().flatten();
            let held = holders
                .iter()
                .any(|holder| holder.zone_id == *name && holder.owner == instance && Some(holder.token) == ours);
            if !held {
                lost.push(zone);
            }
        }
    }
    lost.sort();
    Ok(lost)
}
