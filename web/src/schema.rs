//! Diesel table definitions of the tables `web` owns (migrations/*/…_webhooks). The registry,
//! market and ledger tables are declared by `exchange` and `settlement`.

diesel::table! {
    webhooks (webhook_id) {
        webhook_id -> Text,
        url -> Text,
        secret -> Text,
        registered_by -> Text,
        created_ms -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (webhook_id, event_id) {
        webhook_id -> Text,
        event_id -> Text,
        body -> Text,
        attempts -> BigInt,
        next_attempt_ms -> BigInt,
        created_ms -> BigInt,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_cursor (id) {
        id -> BigInt,
        closed_ms -> BigInt,
        zone_id -> Text,
        slot_start_ms -> BigInt,
    }
}

diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::allow_tables_to_appear_in_same_query!(webhooks, webhook_deliveries);
