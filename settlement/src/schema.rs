//! Diesel table definitions for the ledger (migrations/*/2026-11-23-000002_ledger) and the metering
//! cursors and gap settlements (migrations/*/2026-12-01-000005_metering_cursors). The registry and
//! market tables are in `exchange::schema`.

diesel::table! {
    ledger_head (id) {
        id -> BigInt,
        next_tx_id -> BigInt,
    }
}

diesel::table! {
    ledger_transactions (tx_id) {
        tx_id -> BigInt,
        zone_id -> Text,
        slot_start_ms -> BigInt,
        kind -> Text,
        reference -> Text,
        created_ms -> BigInt,
    }
}

diesel::table! {
    ledger_entries (tx_id, line) {
        tx_id -> BigInt,
        line -> BigInt,
        account_id -> Text,
        asset -> Text,
        kind -> Text,
        amount -> BigInt,
    }
}

diesel::table! {
    settlement_slots (zone_id, slot_start_ms) {
        zone_id -> Text,
        slot_start_ms -> BigInt,
        slot_len_ms -> BigInt,
        status -> Text,
        statements -> BigInt,
        trades -> BigInt,
        traded_wh -> BigInt,
        traded_value -> BigInt,
        delivered_p2p_wh -> BigInt,
        metered_import_wh -> BigInt,
        metered_export_wh -> BigInt,
        utility_supplied_wh -> BigInt,
        utility_absorbed_wh -> BigInt,
        utility_supplied_value -> BigInt,
        utility_absorbed_value -> BigInt,
        grid_fees -> BigInt,
        protocol_fees -> BigInt,
        household_savings -> BigInt,
        tokens_emitted -> BigInt,
        tokens_carry -> BigInt,
        no_data_accounts -> BigInt,
        first_tx_id -> BigInt,
        next_tx_id -> BigInt,
        entries -> BigInt,
        merkle_root -> Text,
        root_signature -> Text,
        operator -> Text,
        signed_root -> Text,
        closed_ms -> BigInt,
    }
}

diesel::table! {
    statements (zone_id, slot_start_ms, account_id) {
        zone_id -> Text,
        slot_start_ms -> BigInt,
        account_id -> Text,
        leaf_index -> BigInt,
        leaf_hash -> Text,
        statement -> Text,
    }
}

diesel::table! {
    reward_epochs (zone_id, epoch) {
        zone_id -> Text,
        epoch -> BigInt,
        scheduled -> BigInt,
        emitted -> BigInt,
    }
}

diesel::table! {
    /// Per device with an open gap: the boundary up to which its energy is settled from metered
    /// data, and its counters there (NULL: from its first reading since then). See `gaps`.
    metering_cursors (device_id) {
        device_id -> Text,
        zone_id -> Text,
        boundary_ms -> BigInt,
        import_wh -> Nullable<BigInt>,
        export_wh -> Nullable<BigInt>,
        slot_start_ms -> BigInt,
    }
}

diesel::table! {
    /// Per household and slot: the gap energy settled in that slot's close (see `rules::settle_gap`).
    gap_settlements (zone_id, slot_start_ms, account_id) {
        zone_id -> Text,
        slot_start_ms -> BigInt,
        account_id -> Text,
        gap_start_ms -> BigInt,
        import_wh -> BigInt,
        export_wh -> BigInt,
        bought_wh -> BigInt,
        retail_price_per_kwh -> BigInt,
        feed_in_price_per_kwh -> BigInt,
        charged -> BigInt,
        credited -> BigInt,
        tx_id -> BigInt,
    }
}

diesel::table! {
    /// Per zone: the first slot closed with metering cursors.
    metering_zones (zone_id) {
        zone_id -> Text,
        since_ms -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    metering_zones,
    metering_cursors,
    gap_settlements,
    ledger_head,
    ledger_transactions,
    ledger_entries,
    settlement_slots,
    statements,
    reward_epochs
);
