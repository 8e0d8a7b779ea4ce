//! The way out to InfluxDB: the `writer` thread (`writer`) that reads
//! the spool in batches and writes them ([`sink`]) with the current
//! credential, reads what a refusal says about a batch ([`refusal`]) and
//! splits a batch the server dies on (`poison`). Nothing here touches
//! the MQTT session, and a point leaves the spool only once InfluxDB has
//! it or it is dead-lettered.

pub(crate) mod poison;
pub mod refusal;
pub mod sink;
pub(crate) mod writer;
