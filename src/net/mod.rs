//! Networking shared by the listeners, the client and the mirror's links.
//!
//! | module | job |
//! |---|---|
//! | [`tls`] | TLS (rustls, ring): server and client configs, certificates and client certificates, streams |

pub mod tls;
