//! InfluxDB line protocol: the point model, a writer and a validating parser.
//! It owns the exact text form of a point as InfluxDB reads it
//! (`docs/influxdb-api.md`, "Line protocol"): every conversion between
//! points and bytes goes through here, the one place that knows escaping.
//!
//! It must never do I/O, never allocate unboundedly on hostile input beyond
//! the input's own size, and never panic on any input: payloads come from
//! sensors and the network.

mod lines;
mod parse;
mod point;
mod write;

pub use lines::{count_lines, split_lines, without_lines};
pub use parse::{ParseError, ParseErrorKind, parse_line, parse_payload, parse_payload_with};
pub use point::{FieldValue, InvalidPoint, Point};
pub use write::{write_line, write_point};

/// Largest series key (measurement plus tag set) InfluxDB accepts, in bytes.
pub const MAX_SERIES_KEY_BYTES: usize = 65_535;
/// Largest string field value InfluxDB 2.x accepts, in bytes.
pub const MAX_STRING_FIELD_BYTES: usize = 1 << 20;

/// How many tags and fields one point may carry. A sensor can send a line
/// with 100,000 fields inside any size limit; InfluxDB 3 refuses a table of
/// more than 500 columns by default and no sensor reading needs more, so the
/// gateway refuses such a point at once (`mqtt.max_tags_per_point`,
/// `mqtt.max_fields_per_point`) instead of paying for it downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_tags: usize,
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tags: 256,
            max_fields: 1024,
        }
    }
}
