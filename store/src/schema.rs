//! The diesel schema of every gridex table, one section per owning crate. Each table is written by
//! its owner only; the others read it or call the owner's functions (ARCHITECTURE.md, "Persistence").
//!
//! - Registry (written by `settlement::registry`): `zones`, `tariffs`, `tariff_bands`, `accounts`, `devices`
//!   (`role`: …_device_roles), `reward_schedule`, `meter_replacements` (migrations/*/…_registry_and_market,
//!   …_meter_integrity, …_tariff_bands).
//! - Market (written by `exchange`): `readings`, `order_commands`, `trades`, `reading_rejections`,
//!   `zone_leases`, `exchange_instances` (…_command_sequence: zone ownership by lease),
//!   `battery_plans` (…_battery_plans: each account's latest signed battery plan).
//! - Ledger (written by `settlement`): `ledger_*`, `settlement_slots`, `statements`, `reward_epochs`,
//!   `metering_cursors`, `gap_settlements`, `metering_zones` (…_ledger, …_metering_cursors).
//! - Webhooks (written by `web`): `webhooks`, `webhook_deliveries`, `webhook_cursor` (…_webhooks).
//! - Authentication (written by `web`): `api_keys`, hashes only (…_api_keys).
//!
//! One module rather than one per owner: diesel's `joinable!` and
//! `allow_tables_to_appear_in_same_query!` need the tables they relate in one place, and callers
//! import every table from one path. The groups below keep the join permissions each owner had.

// ---- Registry and market tables -------------------------------------------------------------

diesel::table! {
    zones (zone_id) {
        zone_id -> Text,
        name -> Text,
        slot_len_ms -> BigInt,
        utility_account -> Text,
        created_ms -> BigInt,
    }
}

diesel::table! {
    tariffs (zone_id, effective_from_ms) {
        zone_id -> Text,
        effective_from_ms -> BigInt,
        retail_price_per_kwh -> BigInt,
        feed_in_price_per_kwh -> BigInt,
        grid_fee_per_kwh -> BigInt,
        protocol_fee_bps -> BigInt,
        utc_offset_minutes -> BigInt,
    }
}

diesel::table! {
    tariff_bands (zone_id, effective_from_ms, position) {
        zone_id -> Text,
        effective_from_ms -> BigInt,
        position -> BigInt,
        days_mask -> BigInt,
        start_minute -> BigInt,
        end_minute -> BigInt,
        retail_price_per_kwh -> BigInt,
        feed_in_price_per_kwh -> BigInt,
        grid_fee_per_kwh -> BigInt,
    }
}

diesel::table! {
    accounts (account_id) {
        account_id -> Text,
        kind -> Text,
        display_name -> Text,
        zone_id -> Nullable<Text>,
        created_ms -> BigInt,
    }
}

diesel::table! {
    devices (device_id) {
        device_id -> Text,
        account_id -> Text,
        zone_id -> Text,
        meter_serial -> Text,
        nameplate_w -> BigInt,
        registered_ms -> BigInt,
        role -> Text,
    }
}

diesel::table! {
    reward_schedule (id) {
        id -> BigInt,
        genesis_ms -> BigInt,
        epoch_len_ms -> BigInt,
        initial_emission_per_epoch -> BigInt,
        halving_epochs -> BigInt,
        max_supply -> BigInt,
    }
}

diesel::table! {
    readings (device_id, seq) {
        device_id -> Text,
        seq -> BigInt,
        ts_ms -> BigInt,
        import_wh -> BigInt,
        export_wh -> BigInt,
        pv_wh -> Nullable<BigInt>,
        power_w -> BigInt,
        received_ms -> BigInt,
        payload -> Text,
        /// Version 2 readings only (a home battery, migration 000007); NULL otherwise.
        battery_charge_wh -> Nullable<BigInt>,
        battery_discharge_wh -> Nullable<BigInt>,
        battery_soc_permille -> Nullable<BigInt>,
        battery_capacity_wh -> Nullable<BigInt>,
    }
}

diesel::table! {
    order_commands (command_seq) {
        command_seq -> BigInt,
        zone_id -> Text,
        slot_start_ms -> BigInt,
        account_id -> Text,
        nonce -> BigInt,
        kind -> Text,
        payload -> Text,
        received_ms -> BigInt,
    }
}

diesel::table! {
    zone_leases (zone_id) {
        zone_id -> Text,
        owner -> Text,
        token -> BigInt,
        expires_ms -> BigInt,
    }
}

diesel::table! {
    exchange_instances (instance_id) {
        instance_id -> Text,
        expires_ms -> BigInt,
    }
}

diesel::table! {
    trades (trade_id) {
        trade_id -> BigInt,
        zone_id -> Text,
        slot_start_ms -> BigInt,
        price_per_kwh -> BigInt,
        qty_wh -> BigInt,
        buyer_id -> Text,
        buy_nonce -> BigInt,
        seller_id -> Text,
        sell_nonce -> BigInt,
        aggressor -> Text,
        ts_ms -> BigInt,
        command_seq -> BigInt,
    }
}

diesel::table! {
    meter_replacements (device_id, replaced_at_ms) {
        device_id -> Text,
        replaced_at_ms -> BigInt,
        old_import_wh -> BigInt,
        old_export_wh -> BigInt,
        old_pv_wh -> Nullable<BigInt>,
        new_import_wh -> BigInt,
        new_export_wh -> BigInt,
        new_pv_wh -> Nullable<BigInt>,
        new_meter_serial -> Text,
        reference -> Text,
        registered_ms -> BigInt,
    }
}

diesel::table! {
    reading_rejections (device_id, seq, received_ms) {
        device_id -> Text,
        seq -> BigInt,
        ts_ms -> BigInt,
        reason -> Text,
        message -> Text,
        received_ms -> BigInt,
    }
}

diesel::table! {
    battery_plans (account_id) {
        account_id -> Text,
        zone_id -> Text,
        nonce -> BigInt,
        ts_ms -> BigInt,
        first_slot_ms -> Nullable<BigInt>,
        last_slot_ms -> Nullable<BigInt>,
        payload -> Text,
        received_ms -> BigInt,
    }
}

diesel::joinable!(devices -> accounts (account_id));
diesel::joinable!(meter_replacements -> devices (device_id));
diesel::joinable!(reading_rejections -> devices (device_id));
diesel::joinable!(devices -> zones (zone_id));
diesel::joinable!(tariffs -> zones (zone_id));
diesel::allow_tables_to_appear_in_same_query!(
    zones,
    tariffs,
    tariff_bands,
    accounts,
    devices,
    reward_schedule,
    readings,
    order_commands,
    trades,
    meter_replacements,
    reading_rejections
);

// ---- Ledger tables (settlement) -------------------------------------------------------------

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

// ---- Webhook tables (web) ---------------------------------------------------------------------

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

// ---- Authentication tables (web) --------------------------------------------------------------

diesel::table! {
    api_keys (key_id) {
        key_id -> Text,
        utility -> Text,
        role -> Text,
        key_hash -> Text,
        zones -> Nullable<Text>,
        created_ms -> BigInt,
        revoked_ms -> Nullable<BigInt>,
    }
}
