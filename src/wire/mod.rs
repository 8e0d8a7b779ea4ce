//! What both binaries speak: the ticket format ([`ticket`]), the
//! authority's API types with the InfluxDB API names ([`api`]) and the
//! gateway's client for that API ([`client`]). Nothing here knows the
//! agent's pipeline or the authority's store.

pub mod api;
pub mod client;
pub mod ticket;
