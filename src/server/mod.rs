//! The front ends: one module per listener kind, each given its own config section and the
//! broker by [`crate::serve`], which opens the broker, binds the listeners and runs the
//! housekeeping.
//!
//! | front end | module | default address |
//! |---|---|---|
//! | native protocol | [`native`] | 127.0.0.1:7420 |
//! | HTTP (status page, metrics, health, JSON API) | [`http`] | 127.0.0.1:7421 |
//! | MQTT 3.1.1 and 5.0 | [`mqtt`] | 127.0.0.1:1883 |
//! | Kafka API | [`kafka`] | 127.0.0.1:9092 |
//! | native, MQTT, Kafka, HTTP over TLS ([`crate::net::tls`]) | the same modules | off (`listeners.*_tls`) |
//! | MQTT over WebSockets, plain and TLS ([`mqtt::ws`]) | [`mqtt`] | off (`listeners.mqtt_ws`, `mqtt_wss`) |
//!
//! Any listener is turned off with `""` (in brook.toml or on the command line).
//!
//! Every listener asks [`crate::auth`] who a client is and what it may do; SIGHUP re-reads the
//! users, ACL and HTTP token files.
//!
//! Under systemd ([`systemd`]), `READY=1` is sent once the log is open and the listeners are
//! bound, `WATCHDOG=1` while housekeeping runs, `STOPPING=1` on shutdown.

pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod native;
pub mod systemd;
