//! InfluxDB line protocol: the point model, a writer and a validating parser.
//!
//! This module owns the exact text form of a point as InfluxDB reads it
//! (`../shared/influxdb-api.md`, "Line protocol"). Everything that turns
//! points into bytes or bytes into points goes through here, so there is one
//! place that knows the escaping rules.
//!
//! It must never do I/O, never allocate unboundedly on hostile input beyond
//! the input's own size, and never panic on any input: payloads come from
//! sensors and the network.

mod parse;
mod point;
mod write;

pub use parse::{ParseError, ParseErrorKind, parse_line, parse_payload};
pub use point::{FieldValue, InvalidPoint, Point};
pub use write::{write_line, write_point};

/// Largest series key (measurement plus tag set) InfluxDB accepts, in bytes.
pub const MAX_SERIES_KEY_BYTES: usize = 65_535;
/// Largest string field value InfluxDB 2.x accepts, in bytes.
pub const MAX_STRING_FIELD_BYTES: usize = 1 << 20;
