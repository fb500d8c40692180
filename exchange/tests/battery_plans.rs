//! Home battery plans (issue 15, PROTOCOL.md §4.7) through the real path: a `battery_plan` signed by
//! the household's account key, published on `gridex/v1/{zone}/plans/{account}` to a real broker
//! (embedded rumqttd, and Mosquitto when `MQTT_URL` is set), verified and stored by the exchange
//! (SQLite, and PostgreSQL when `DATABASE_URL` is set) as the account's latest plan. Forged,
//! replayed, oversized and misaligned plans are refused with a signed reject and change nothing.
//!
//! The plan stage answers plans in arrival order and sends nothing for a stored one, so a test
//! knows its earlier plans were handled when the reject of a later, deliberately refused plan
//! (the sentinel) arrives: an event, not a sleep.

mod support;

use ed25519_dalek::{Signer, SigningKey};
use exchange::queries::{latest_battery_plan, StoredPlan};
use protocol::plan::{BATTERY_PLAN_BYTES_MAX, BATTERY_PLAN_SLOTS_MAX};
use protocol::{topics, AccountId, BatteryPlan, PlannedSlot, Reason, Reject, Signed, SlotId, TimestampMs, Wh};
use support::*;

const NOW_MS: i64 = 1_790_000_000_000;
const SLOT_MS: i64 = 900_000;
const SETUP: DeviceSetup = DeviceSetup { zone_prefix: "p", seed: 31, nameplate_w: 5_000, now_ms: NOW_MS };

impl DeviceEnv {
    /// The household's account key ([`seed_household`]: the seed itself).
    fn account_key(&self) -> SigningKey {
        SigningKey::from_bytes(&[SETUP.seed; 32])
    }

    fn account_hex(&self) -> String {
        AccountId::from_verifying_key(&self.account_key().verifying_key()).to_hex()
    }

    /// A plan of `slots` slots from the next one, as the household's agent makes it now.
    fn plan(&self, nonce: u64, slots: usize) -> BatteryPlan {
        let next_ms = (NOW_MS / SLOT_MS + 1) * SLOT_MS;
        let slots = (0..slots)
            .map(|index| {
                let index = i64::try_from(index).expect("a small index");
                PlannedSlot {
                    slot: SlotId::new(next_ms + index * SLOT_MS).expect("a slot"),
                    charge_wh: Wh(if index < 2 { 500 } else { -250 }),
                    soc_permille_end: 500,
                }
            })
            .collect();
        BatteryPlan {
            account: AccountId::from_verifying_key(&self.account_key().verifying_key()),
            zone: self.zone.clone(),
            nonce,
            ts_ms: TimestampMs(NOW_MS),
            slots,
        }
    }

    fn signed(&self, plan: BatteryPlan) -> Vec<u8> {
        Signed::sign(plan, &self.account_key()).expect("signs").to_json()
    }

    async fn publish_plan(&self, bytes: Vec<u8>) {
        self.probe.publish(topics::plans(&self.zone, &self.account_hex()), bytes).await;
    }

    /// The next reject on the account's rejects topic.
    async fn next_reject(&mut self) -> Reject {
        let rejects = topics::rejects(&self.zone, &self.account_hex());
        decode::<Reject>(&self.probe.next_on(&rejects).await).expect("a signed reject")
    }

    /// Publishes `bytes` and returns the exchange's refusal.
    async fn refused(&mut self, bytes: Vec<u8>) -> Reject {
        self.publish_plan(bytes).await;
        let reject = self.next_reject().await;
        assert_eq!(reject.of, "battery_plan");
        reject
    }

    /// Publishes `bytes`, then a sentinel plan the exchange refuses: once the sentinel's reject
    /// is there, `bytes` was handled, and it was not refused (its reject would have come first).
    async fn handled_without_refusal(&mut self, bytes: Vec<u8>) {
        self.publish_plan(bytes).await;
        let mut sentinel = self.plan(0, 1);
        sentinel.slots[0].slot = SlotId::new(sentinel.slots[0].slot.start().0 + 1).expect("a slot");
        let reject = self.refused(self.signed(sentinel)).await;
        assert_eq!(reject.reason, Reason::SlotMisaligned, "the sentinel's reject came first: {}", reject.message);
    }

    fn latest(&self) -> Option<StoredPlan> {
        let account = AccountId::from_verifying_key(&self.account_key().verifying_key());
        let mut conn = self.test_db.db.get().expect("a connection");
        latest_battery_plan(&mut conn, &account).expect("reads")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_battery_plan_is_stored_and_a_newer_one_replaces_it() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        assert_eq!(env.latest(), None);
        let first = env.plan(1, BATTERY_PLAN_SLOTS_MAX);
        env.handled_without_refusal(env.signed(first.clone())).await;
        let stored = env.latest().expect("the plan is stored");
        assert_eq!(stored.plan, first);
        assert_eq!(stored.received_ms, NOW_MS);
        let second = env.plan(2, 4);
        env.handled_without_refusal(env.signed(second.clone())).await;
        assert_eq!(env.latest().expect("stored").plan, second, "the newer plan replaced it");
        // The very plan again (a broker's redelivery): nothing changes and nothing is refused.
        env.handled_without_refusal(env.signed(second.clone())).await;
        assert_eq!(env.latest().expect("stored").plan, second);
        env
    })
    .await;
}

/// A neighbour (or the household's own gateway, with its device key) signs a plan in the
/// account's name: its signature is not the account's, so it is refused and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_battery_plan_is_refused() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        let plan = env.plan(1, 4);
        let bytes =
            Signed::<BatteryPlan>::with_signature(plan.clone(), [0; 64]).expect("well-formed").signing_bytes().to_vec();
        for key in [env.device.clone(), SigningKey::from_bytes(&[77; 32])] {
            let forged = Signed::with_signature(plan.clone(), key.sign(&bytes).to_bytes()).expect("well-formed");
            let reject = env.refused(forged.to_json()).await;
            assert_eq!(reject.reason, Reason::BadSignature, "{}", reject.message);
            assert_eq!(reject.seq, None, "a plan that does not verify is nobody's");
        }
        // The device key signing a plan in its own name: the device is no account.
        let mut own = plan.clone();
        own.account = AccountId::from_verifying_key(&env.device.verifying_key());
        let device_topic = topics::plans(&env.zone, &own.account.to_hex());
        env.probe.publish(device_topic, Signed::sign(own, &env.device).expect("signs").to_json()).await;
        let rejects = topics::rejects(&env.zone, &device_hex(&env.device));
        let reject = decode::<Reject>(&env.probe.next_on(&rejects).await).expect("a signed reject");
        assert_eq!(reject.reason, Reason::UnknownKey, "{}", reject.message);
        assert_eq!(env.latest(), None, "nothing forged was stored");
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_battery_plan_is_refused() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        let stored = env.plan(5, 4);
        env.handled_without_refusal(env.signed(stored.clone())).await;
        // Another plan under the same nonce, and an older one: both replayed.
        for nonce in [5, 4] {
            let reject = env.refused(env.signed(env.plan(nonce, 3))).await;
            assert_eq!(reject.reason, Reason::Replayed, "{}", reject.message);
            assert_eq!(reject.seq, Some(nonce));
        }
        assert_eq!(env.latest().expect("stored").plan, stored, "the stored plan stands");
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_battery_plan_is_refused() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        // More slots than a plan may name, signed properly: refused for what it says.
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&env.signed(env.plan(1, 4))).expect("json");
        object.remove("sig");
        let too_many = env.plan(1, BATTERY_PLAN_SLOTS_MAX + 1);
        object.insert("slots".to_owned(), serde_json::to_value(&too_many.slots).expect("slots"));
        let canonical =
            protocol::canonical::canonical_bytes(&serde_json::Value::Object(object.clone())).expect("canonical");
        let mut signed_bytes = b"gridex/v1/battery_plan\n".to_vec();
        signed_bytes.extend_from_slice(&canonical);
        let sig: String =
            env.account_key().sign(&signed_bytes).to_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
        object.insert("sig".to_owned(), serde_json::Value::String(sig));
        let reject = env.refused(serde_json::to_vec(&object).expect("json")).await;
        assert_eq!(reject.reason, Reason::InvalidValue, "{}", reject.message);
        // Beyond the byte limit: refused before it is parsed.
        let mut padded = env.signed(env.plan(2, 4));
        padded.splice(1..1, std::iter::repeat_n(b' ', BATTERY_PLAN_BYTES_MAX));
        let reject = env.refused(padded).await;
        assert_eq!(reject.reason, Reason::TooLarge, "{}", reject.message);
        assert_eq!(env.latest(), None);
        env
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misaligned_or_stale_battery_plan_is_refused() {
    DeviceEnv::on_every_backend(SETUP, |mut env| async move {
        let mut misaligned = env.plan(1, 4);
        misaligned.slots[3].slot = SlotId::new(misaligned.slots[3].slot.start().0 + 60_000).expect("a slot");
        let reject = env.refused(env.signed(misaligned)).await;
        assert_eq!(reject.reason, Reason::SlotMisaligned, "{}", reject.message);
        let mut past = env.plan(2, 4);
        past.slots[0].slot = SlotId::new(past.slots[0].slot.start().0 - 3 * SLOT_MS).expect("a slot");
        let reject = env.refused(env.signed(past)).await;
        assert_eq!(reject.reason, Reason::SlotNotOpen, "{}", reject.message);
        let mut old = env.plan(3, 4);
        old.ts_ms = TimestampMs(NOW_MS - 3_600_000);
        let reject = env.refused(env.signed(old)).await;
        assert_eq!(reject.reason, Reason::TimestampTooOld, "{}", reject.message);
        assert_eq!(env.latest(), None);
        env
    })
    .await;
}
