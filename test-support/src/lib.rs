//! Test support shared by the crates' integration tests: free loopback ports, one embedded rumqttd
//! configuration (or the machine's Mosquitto when `MQTT_URL` is set), test certificates made with
//! the openssl command line, unique names for tests that share a broker, a scenario run once per
//! broker, and the output of a child process a test starts.
//!
//! It owns nothing of the product. It must never be a normal (non-dev) dependency of any crate, and
//! it never hides a missing service: a service that is configured but unreachable fails the test.

pub mod broker;
pub mod certs;
pub mod child;
pub mod net;
pub mod proxy;

pub use broker::{brokers, embedded_broker, external_broker, on_each_broker, BrokerAddr};
pub use child::follow_output;
pub use net::{free_port, unique, wait_listening};
pub use proxy::Proxy;
