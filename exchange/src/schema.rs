//! Diesel table definitions for the registry and market tables (migrations/*/…_registry_and_market,
//! …_meter_integrity).
//! The ledger's tables are declared by `settlement`.

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

diesel::joinable!(devices -> accounts (account_id));
diesel::joinable!(meter_replacements -> devices (device_id));
diesel::joinable!(reading_rejections -> devices (device_id));
diesel::joinable!(devices -> zones (zone_id));
diesel::joinable!(tariffs -> zones (zone_id));
diesel::allow_tables_to_appear_in_same_query!(
    zones,
    tariffs,
    accounts,
    devices,
    reward_schedule,
    readings,
    order_commands,
    trades,
    meter_replacements,
    reading_rejections
);
