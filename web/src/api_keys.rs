//! API keys: each belongs to a utility and acts only on that utility's zones; only their SHA-256
//! is held, in memory (keys from the settings, hashed at start) and in the `api_keys` table (keys
//! made by `gridex api-key create`, revocable while the server runs).
//!
//! **A zone belongs to a utility** when its `zones.utility_account` is `utility:<utility>`
//! (`settlement::registry`): a zone created with a utility's key is that utility's; a zone
//! created without one (`gridex zone create` without `--utility`, the demo, older releases) has
//! the account `utility:<zone id>`, so it belongs to the utility named like the zone.
//!
//! SHA-256 and not a slow password hash: keys made here are 32 random bytes (256 bits), and keys
//! from the settings must pass [`check_api_key`]; guessing a preimage of such a key is out of reach
//! however fast the hash, while a slow hash would cost every request.
//!
//! Created and revoked keys take effect from the next request: the table is read on every request
//! that a key from the settings does not answer (no cache to go stale).

use crate::error::ApiError;
use crate::settings::{check_api_key, ApiKey, Role, Secret, UtilityName};
use diesel::prelude::*;
use gridex_store::schema::api_keys;
use gridex_store::{Database, DbConnection, DbError};
use protocol::ZoneId;
use rand::RngExt as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// Random bytes of a created key: 256 bits, far beyond guessing.
pub const KEY_BYTES: usize = 32;

/// The SHA-256 of a key: what is kept and compared instead of the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(…)")
    }
}

/// Who a valid key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// For audit logs: the settings' key name, or `key:<key id>` for a key from the table.
    pub key: String,
    pub role: Role,
    /// `None` only for an observer key from the settings without a utility.
    pub utility: Option<UtilityName>,
    /// The zones the key is limited to; `None`: every zone of its utility.
    pub zones: Option<Vec<ZoneId>>,
}

/// A key from the settings, hashed.
#[derive(Debug)]
struct ConfiguredKey {
    name: String,
    role: Role,
    utility: Option<UtilityName>,
    hash: KeyHash,
}

/// Every key the server accepts: the settings' (hashed at start) and the table's.
pub struct ApiKeys {
    configured: Vec<ConfiguredKey>,
    db: Option<Database>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.configured.iter().map(|key| key.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("configured", &names).finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// Hashes the settings' keys and reads the others from `db`. A key too weak for
    /// [`check_api_key`], or a utility key without a valid utility, never matches, even one that
    /// reached here without `Settings::validate` (settings built in code).
    pub fn new(configured: &[ApiKey], db: Option<Database>) -> ApiKeys {
        let configured = configured
            .iter()
            .filter(|key| check_api_key(key.key.expose()).is_ok())
            .filter_map(|key| {
                let utility = key.utility.as_deref().map(UtilityName::parse).transpose().ok()?;
                if key.role == Role::Utility && utility.is_none() {
                    tracing::warn!(key = key.name, "API key without a utility is ignored");
                    return None;
                }
                Some(ConfiguredKey {
                    name: key.name.clone(),
                    role: key.role,
                    utility,
                    hash: KeyHash::of(key.key.expose()),
                })
            })
            .collect();
        ApiKeys { configured, db }
    }

    /// The owner of `token`, or `None` for an unknown, revoked or weak key.
    pub async fn find(&self, token: &str) -> Result<Option<Caller>, DbError> {
        if check_api_key(token).is_err() {
            return Ok(None);
        }
        let hash = KeyHash::of(token);
        let mut found = None;
        // Every configured key is compared, in constant time, so timing tells nothing of which.
        for key in &self.configured {
            if constant_time_eq(&key.hash.0, &hash.0) {
                found =
                    Some(Caller { key: key.name.clone(), role: key.role, utility: key.utility.clone(), zones: None });
            }
        }
        if found.is_some() {
            return Ok(found);
        }
        let Some(db) = &self.db else { return Ok(None) };
        db.run(move |conn| find_by_hash(conn, hash)).await
    }
}

/// Compares in time independent of where the inputs first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The unrevoked key whose hash is `hash`. Looked up by the hash (an index); the stored hash is
/// compared again in constant time, so a lookup that matched loosely cannot let a key through.
pub fn find_by_hash(conn: &mut DbConnection, hash: KeyHash) -> Result<Option<Caller>, DbError> {
    let hex = hash.to_hex();
    let row: Option<(String, String, String, String, Option<String>)> = api_keys::table
        .filter(api_keys::key_hash.eq(&hex))
        .filter(api_keys::revoked_ms.is_null())
        .select((api_keys::key_id, api_keys::utility, api_keys::role, api_keys::key_hash, api_keys::zones))
        .first(conn)
        .optional()?;
    let Some((key_id, utility, role, stored, zones)) = row else { return Ok(None) };
    if !constant_time_eq(stored.as_bytes(), hex.as_bytes()) {
        return Ok(None);
    }
    let role = Role::parse(&role).ok_or_else(|| DbError::Invalid(format!("API key {key_id} has role `{role}`")))?;
    let utility =
        UtilityName::parse(&utility).map_err(|_| DbError::Invalid(format!("API key {key_id} has a bad utility")))?;
    let zones = zones
        .map(|list| list.split(',').map(ZoneId::parse).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|_| DbError::Invalid(format!("API key {key_id} has a bad zone list")))?;
    Ok(Some(Caller { key: format!("key:{key_id}"), role, utility: Some(utility), zones }))
}

/// A key just created: shown once, then only its hash exists.
#[derive(Debug)]
pub struct CreatedKey {
    pub key_id: String,
    pub key: Secret,
}

/// Creates a random key for `utility` (limited to `zones` when given) and stores its hash.
pub fn create(
    conn: &mut DbConnection,
    utility: &UtilityName,
    role: Role,
    zones: Option<&[ZoneId]>,
    now_ms: i64,
) -> Result<CreatedKey, DbError> {
    let mut rng = rand::rng();
    let key = loop {
        let bytes: [u8; KEY_BYTES] = rng.random();
        let key = hex::encode(bytes);
        // The same rule as every other source; a random key fails it with negligible chance.
        if check_api_key(&key).is_ok() {
            break key;
        }
    };
    let id: [u8; 8] = rng.random();
    let key_id = hex::encode(id);
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::key_id.eq(&key_id),
            api_keys::utility.eq(utility.as_str()),
            api_keys::role.eq(role.as_str()),
            api_keys::key_hash.eq(KeyHash::of(&key).to_hex()),
            api_keys::zones.eq(zones.map(|zones| zones.iter().map(ZoneId::as_str).collect::<Vec<_>>().join(","))),
            api_keys::created_ms.eq(now_ms),
        ))
        .execute(conn)?;
    Ok(CreatedKey { key_id, key: Secret::new(key) })
}

/// Revokes a key; `false` if there is no such key or it was revoked already.
pub fn revoke(conn: &mut DbConnection, key_id: &str, now_ms: i64) -> Result<bool, DbError> {
    let updated = diesel::update(api_keys::table.find(key_id).filter(api_keys::revoked_ms.is_null()))
        .set(api_keys::revoked_ms.eq(Some(now_ms)))
        .execute(conn)?;
    Ok(updated > 0)
}

/// A stored key as `gridex api-key list` shows it: never the key, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyListing {
    pub key_id: String,
    pub utility: String,
    pub role: String,
    /// Comma separated; `None`: every zone of the utility.
    pub zones: Option<String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// Every stored key, oldest first.
pub fn list(conn: &mut DbConnection) -> Result<Vec<KeyListing>, DbError> {
    type Row = (String, String, String, Option<String>, i64, Option<i64>);
    let rows: Vec<Row> = api_keys::table
        .order((api_keys::created_ms.asc(), api_keys::key_id.asc()))
        .select((
            api_keys::key_id,
            api_keys::utility,
            api_keys::role,
            api_keys::zones,
            api_keys::created_ms,
            api_keys::revoked_ms,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(key_id, utility, role, zones, created_ms, revoked_ms)| KeyListing {
            key_id,
            utility,
            role,
            zones,
            created_ms,
            revoked_ms,
        })
        .collect())
}

/// Requires `Authorization: Bearer <key>` of a known key with `role`.
pub async fn require_role(request: &actix_web::HttpRequest, keys: &ApiKeys, role: Role) -> Result<Caller, ApiError> {
    let value = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing_api_key", "send Authorization: Bearer <api key>"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|text| text.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("bad_api_key", "send Authorization: Bearer <api key>"))?;
    if token.trim().is_empty() {
        return Err(ApiError::unauthorized("bad_api_key", "send Authorization: Bearer <api key>"));
    }
    let caller = keys.find(token).await?.ok_or_else(|| ApiError::unauthorized("bad_api_key", "unknown API key"))?;
    if caller.role != role {
        return Err(ApiError::forbidden("forbidden", "this API key does not have the required role"));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{check_configured, KeySettingError, UTILITY_NAME_LEN_MAX};

    #[test]
    fn a_utility_name_uses_the_zone_id_alphabet() {
        assert!(UtilityName::parse("north-grid_2").is_ok());
        for bad in ["", "North", "a b", "utility:x", &"x".repeat(UTILITY_NAME_LEN_MAX + 1)] {
            assert!(UtilityName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(UtilityName::parse("acme").expect("valid").account(), "utility:acme");
    }

    #[test]
    fn a_utility_key_from_the_settings_needs_a_utility() {
        let key = |role, utility: Option<&str>| ApiKey {
            name: "k".into(),
            role,
            utility: utility.map(str::to_owned),
            key: Secret::new("9f86d081884c7d659a2feaa0c55ad015"),
        };
        assert_eq!(check_configured(&key(Role::Utility, None)), Err(KeySettingError::NoUtility));
        assert!(check_configured(&key(Role::Utility, Some("acme"))).is_ok());
        assert!(check_configured(&key(Role::Observer, None)).is_ok());
        assert!(matches!(check_configured(&key(Role::Utility, Some("Acme"))), Err(KeySettingError::BadUtility(_))));
    }

    #[tokio::test]
    async fn a_configured_key_is_found_by_its_hash_and_a_weak_one_never() {
        let strong = "9f86d081884c7d659a2feaa0c55ad015";
        let keys = ApiKeys::new(
            &[
                ApiKey {
                    name: "ops".into(),
                    role: Role::Utility,
                    utility: Some("acme".into()),
                    key: Secret::new(strong),
                },
                ApiKey {
                    name: "weak".into(),
                    role: Role::Utility,
                    utility: Some("acme".into()),
                    key: Secret::new("x"),
                },
                ApiKey {
                    name: "anon".into(),
                    role: Role::Utility,
                    utility: None,
                    key: Secret::new("Xk3pQ9vLm2Tz7RwB"),
                },
            ],
            None,
        );
        let caller = keys.find(strong).await.expect("no database needed").expect("found");
        assert_eq!(caller.utility.as_ref().map(UtilityName::as_str), Some("acme"));
        assert_eq!(keys.find("x").await.expect("ok"), None);
        assert_eq!(keys.find("Xk3pQ9vLm2Tz7RwB").await.expect("ok"), None, "a utility key needs a utility");
        assert!(!format!("{keys:?}").contains(strong));
    }
}
