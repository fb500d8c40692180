DROP TABLE reward_epochs;
DROP TABLE statements;
DROP TABLE settlement_slots;
DROP TABLE ledger_entries;
DROP TABLE ledger_transactions;
DROP TABLE ledger_head;
