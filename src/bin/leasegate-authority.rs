//! `leasegate-authority`: the lease authority server and its admin command
//! line.
//!
//! A thin shell over `leasegate::authority`: argument parsing, config
//! loading and exit codes (78 for bad configuration), nothing else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leasegate::authority::config::{AuthorityConfig, DEFAULT_CONFIG_PATH, EXAMPLE};
use leasegate::exit;

#[derive(Parser)]
#[command(
    name = "leasegate-authority",
    version,
    about = "Issues tickets and short-lived InfluxDB credentials (leases) to leasegate gateways",
    propagate_version = true
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "LEASEGATE_CONFIG", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve enrollment and lease requests over HTTPS.
    Serve,
    /// Create, list and revoke enrollment tickets.
    Ticket {
        #[command(subcommand)]
        command: TicketCommand,
    },
    /// List and revoke enrolled identities.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// List, show and revoke leases.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Print an example configuration, or check one.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum TicketCommand {
    /// Create a ticket and print it (one line) on standard output.
    Create {
        /// An attribute the ticket carries, KEY=VALUE; roles match on these.
        #[arg(long = "attribute", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
        /// How many enrollments the ticket allows.
        #[arg(long, default_value_t = 1)]
        usage_count: u32,
        /// How long the ticket stays valid.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        expires_in: humantime::Duration,
        /// Pin the role instead of matching it from the attributes.
        #[arg(long)]
        role: Option<String>,
    },
    /// List tickets (never their secrets).
    List,
    /// Revoke a ticket.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// List enrolled identities.
    List,
    /// Revoke an identity and every lease it holds.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// List leases.
    List,
    /// Show one lease.
    Show { id: String },
    /// Revoke a lease and delete its InfluxDB credential.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a complete, commented configuration.
    Example,
    /// Check the configuration file; report every problem with its key.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{EXAMPLE}");
            exit::OK
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => check(&cli.config),
        Command::Serve => not_yet("serve"),
        Command::Ticket { .. } => not_yet("ticket"),
        Command::Identity { .. } => not_yet("identity"),
        Command::Lease { .. } => not_yet("lease"),
    };
    ExitCode::from(code as u8)
}

fn check(path: &Path) -> i32 {
    match AuthorityConfig::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            exit::OK
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("leasegate-authority: {line}");
            }
            exit::CONFIG
        }
    }
}

fn not_yet(command: &str) -> i32 {
    eprintln!(
        "leasegate-authority {command}: not available in this version; it comes with the lease authority (tickets, identities, leases)"
    );
    exit::USAGE
}
