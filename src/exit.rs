//! Process exit codes shared by both binaries (sysexits.h where one fits).
//!
//! Only the binaries exit; library code returns errors and never calls
//! `std::process::exit`.

/// Success.
pub const OK: i32 = 0;
/// A runtime failure.
pub const FAILURE: i32 = 1;
/// Bad usage: arguments or a request the command refuses.
pub const USAGE: i32 = 2;
/// EX_CONFIG: the configuration is invalid.
pub const CONFIG: i32 = 78;
