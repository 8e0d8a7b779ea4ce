//! What both binaries speak: the ticket format ([`ticket`]), the
//! authority's API types with the InfluxDB API names ([`api`]), the
//! health report of each lease call ([`health`]) and the gateway's client
//! for that API ([`client`]). Nothing here knows the
//! agent's pipeline or the authority's store.

pub mod api;
pub mod client;
pub mod health;
pub mod ticket;
