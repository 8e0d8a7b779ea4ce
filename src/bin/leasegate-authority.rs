//! `leasegate-authority`: the lease authority server and its admin command
//! line.
//!
//! A thin shell over `leasegate::authority`: argument parsing, config
//! loading, printing and exit codes (78 for bad configuration), nothing
//! else. The admin commands open the same store as a running server.
#![forbid(unsafe_code)]
// The binary decides the exit code, and a second signal ends it at once.
#![allow(clippy::exit)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leasegate::authority::config::{AuthorityConfig, DEFAULT_CONFIG_PATH, EXAMPLE};
use leasegate::authority::service::{Authority, now_ms};
use leasegate::authority::{admin, run};
use leasegate::shutdown::Shutdown;
use leasegate::wire::api::{ApiError, ErrorCode};
use leasegate::{error_chain, exit, logging};

/// Who the audit trail names for a change made with this command.
const BY_CLI: &str = "the command line";

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
    /// Add, list and remove the web page's admins.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// List the gateways with the state their lease calls and health
    /// reports show: ok, late, missing, refused, backlog, clock, revoked.
    Fleet {
        #[arg(long)]
        json: bool,
        /// Only the gateways in this state.
        #[arg(long, value_name = "STATE", value_parser = ["ok", "late", "missing", "refused", "backlog", "clock", "revoked"])]
        state: Option<String>,
    },
    /// Print the audit trail, newest first, a page at a time.
    Audit {
        #[arg(long)]
        json: bool,
        /// Rows to print.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only rows older than this one (the SEQ column of a row printed
        /// before): the next page.
        #[arg(long, value_name = "SEQ")]
        before: Option<i64>,
    },
    /// Show this replica, the replicas seen lately, claims held and the
    /// store's health; exit 1 unless this replica serves and the store
    /// answers.
    Status {
        #[arg(long)]
        json: bool,
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
        /// The one identity name the ticket may enroll (required for a role
        /// whose bucket or database names {identity}).
        #[arg(long, value_name = "NAME")]
        identity_name: Option<String>,
    },
    /// List tickets (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a ticket.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// List enrolled identities.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an identity and every lease it holds.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// List leases, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one lease.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a lease and delete its InfluxDB credential.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add an admin; the password is the first line of standard input
    /// (12 characters at least), kept only as an Argon2id hash.
    Add {
        name: String,
        /// Set a new password for an admin that exists.
        #[arg(long)]
        replace: bool,
    },
    /// List admins (never their passwords or hashes).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an admin.
    Remove { name: String },
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
        Command::Serve => serve(&cli.config),
        Command::Status { json } => status(&cli.config, json),
        Command::Ticket { command } => admin_command(&cli.config, |a| ticket(a, command)),
        Command::Identity { command } => admin_command(&cli.config, |a| identity(a, command)),
        Command::Lease { command } => admin_command(&cli.config, |a| lease(a, command)),
        Command::Fleet { json, state } => admin_command(&cli.config, |a| fleet(a, json, state)),
        Command::Audit {
            json,
            limit,
            before,
        } => admin_command(&cli.config, |a| audit(a, json, limit, before)),
        Command::Admin { command } => admin_command(&cli.config, |a| admin(a, command)),
    };
    ExitCode::from(code as u8)
}

fn load(path: &Path) -> Option<AuthorityConfig> {
    match AuthorityConfig::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            for line in e.lines() {
                eprintln!("leasegate-authority: {line}");
            }
            None
        }
    }
}

fn check(path: &Path) -> i32 {
    match load(path) {
        Some(_) => {
            println!("{}: ok", path.display());
            exit::OK
        }
        None => exit::CONFIG,
    }
}

fn serve(path: &Path) -> i32 {
    let Some(config) = load(path) else {
        return exit::CONFIG;
    };
    logging::init(config.log_level);
    let shutdown = Shutdown::new();
    let bound = leasegate::authority::server::DRAIN * 3;
    let second = |signal| std::process::exit(128 + signal);
    if let Err(e) = leasegate::shutdown::on_termination_signals(shutdown.clone(), bound, second) {
        log::error!("cannot install signal handlers: {e}");
        return exit::FAILURE;
    }
    log::info!("leasegate-authority {} starting", env!("CARGO_PKG_VERSION"));
    match run(config, shutdown) {
        Ok(()) => exit::OK,
        Err(e) => {
            log::error!("{}", error_chain(&e));
            exit::FAILURE
        }
    }
}

fn status(path: &Path, json: bool) -> i32 {
    let Some(config) = load(path) else {
        return exit::CONFIG;
    };
    logging::init(Some(config.log_level.unwrap_or(log::LevelFilter::Warn)));
    let now = now_ms();
    let status = leasegate::authority::status::gather(
        &config,
        now,
        leasegate::authority::reaper::REPLICA_DEAD_AFTER,
    );
    if json {
        print_json(&status);
    } else {
        print!("{}", leasegate::authority::status::render(&status, now));
    }
    if status.healthy() {
        exit::OK
    } else {
        exit::FAILURE
    }
}

/// Opens the authority's store and backends and runs one admin command;
/// its errors go to stderr with an exit code that tells usage from
/// failure.
fn admin_command(path: &Path, f: impl FnOnce(&Authority) -> Result<(), ApiError>) -> i32 {
    let Some(config) = load(path) else {
        return exit::CONFIG;
    };
    logging::init(Some(config.log_level.unwrap_or(log::LevelFilter::Warn)));
    let authority = match leasegate::authority::open(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("leasegate-authority: {}", error_chain(&e));
            return exit::FAILURE;
        }
    };
    match f(&authority) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("leasegate-authority: {}", e.message);
            match e.code {
                ErrorCode::InvalidRequest
                | ErrorCode::NoRoleMatches
                | ErrorCode::LeaseUnknown
                | ErrorCode::IdentityUnknown => exit::USAGE,
                _ => exit::FAILURE,
            }
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data always serializes")
    );
}

fn ticket(a: &Authority, command: TicketCommand) -> Result<(), ApiError> {
    match command {
        TicketCommand::Create {
            attributes,
            usage_count,
            expires_in,
            role,
            identity_name,
        } => {
            let mut map = BTreeMap::new();
            for pair in &attributes {
                match pair.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        map.insert(k.trim().to_owned(), v.trim().to_owned());
                    }
                    _ => {
                        return Err(ApiError::new(
                            ErrorCode::InvalidRequest,
                            format!("--attribute {pair:?}: expected KEY=VALUE"),
                        ));
                    }
                }
            }
            let ticket = a.create_ticket(
                map,
                usage_count,
                expires_in.into(),
                role,
                identity_name,
                BY_CLI,
            )?;
            eprintln!(
                "ticket {} ({} use(s), expires {}); the line below is a secret, hand it over as a file",
                ticket.id,
                usage_count,
                admin::expiry(ticket.expires as i64 * 1000, now_ms())
            );
            println!("{}", ticket.encode());
        }
        TicketCommand::List { json } => {
            let tickets = a.tickets()?;
            if json {
                print_json(&admin::ticket_views(&tickets, now_ms()));
            } else {
                print!("{}", admin::ticket_table(&tickets, now_ms()));
            }
        }
        TicketCommand::Revoke { id } => {
            a.revoke_ticket(&id, BY_CLI)?;
            println!("ticket {id} revoked");
        }
    }
    Ok(())
}

fn identity(a: &Authority, command: IdentityCommand) -> Result<(), ApiError> {
    match command {
        IdentityCommand::List { json } => {
            let identities = a.identities()?;
            if json {
                print_json(&admin::identity_views(&identities));
            } else {
                print!("{}", admin::identity_table(&identities, now_ms()));
            }
        }
        IdentityCommand::Revoke { id } => {
            let n = a.revoke_identity(&id, BY_CLI)?;
            println!("identity {id} revoked; {n} lease(s) revoked with it");
            let stuck: Vec<_> = a
                .leases(None)?
                .into_iter()
                .filter(|l| l.identity_id == id && l.last_error.is_some())
                .collect();
            for l in stuck {
                eprintln!(
                    "lease {}: deletion failed, the server retries it: {}",
                    l.id,
                    l.last_error.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn admin(a: &Authority, command: AdminCommand) -> Result<(), ApiError> {
    match command {
        AdminCommand::Add { name, replace } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("reading the password: {e}"),
                )
            })?;
            let password = leasegate::secret::Secret::new(line.trim_end_matches(['\r', '\n']));
            a.add_admin(&name, &password, replace)?;
            println!(
                "admin {name} {}",
                if replace {
                    "has a new password"
                } else {
                    "added"
                }
            );
        }
        AdminCommand::List { json } => {
            let admins = a.admins()?;
            if json {
                let rows: Vec<_> = admins
                    .iter()
                    .map(|(name, created)| serde_json::json!({"name": name, "created_ms": created}))
                    .collect();
                print_json(&rows);
            } else {
                for (name, created) in &admins {
                    println!("{name}\tadded {}", admin::relative(*created, now_ms()));
                }
            }
        }
        AdminCommand::Remove { name } => {
            a.remove_admin(&name)?;
            println!("admin {name} removed");
        }
    }
    Ok(())
}

fn fleet(a: &Authority, json: bool, state: Option<String>) -> Result<(), ApiError> {
    let wanted = state
        .as_deref()
        .and_then(leasegate::authority::fleet::State::parse);
    let mut gateways = a.fleet()?;
    gateways.retain(|g| wanted.is_none_or(|w| g.state == w));
    if json {
        print_json(&gateways);
    } else {
        print!("{}", admin::fleet_table(&gateways, now_ms()));
    }
    Ok(())
}

fn audit(a: &Authority, json: bool, limit: u32, before: Option<i64>) -> Result<(), ApiError> {
    let rows = a.audit_page(before, limit)?;
    if json {
        print_json(&rows);
    } else {
        print!("{}", admin::audit_table(&rows));
    }
    Ok(())
}

fn lease(a: &Authority, command: LeaseCommand) -> Result<(), ApiError> {
    match command {
        LeaseCommand::List { json } => {
            let leases = a.leases(None)?;
            if json {
                print_json(&leases);
            } else {
                print!("{}", admin::lease_table(&leases, now_ms()));
            }
        }
        LeaseCommand::Show { id, json } => {
            let l = a.lease(&id, None)?;
            if json {
                print_json(&l);
            } else {
                print!("{}", admin::lease_detail(&l, now_ms()));
            }
        }
        LeaseCommand::Revoke { id } => {
            let l = a.revoke_lease(&id, None, BY_CLI)?;
            match &l.last_error {
                None => println!("lease {id} {}", l.status.as_str()),
                Some(e) => {
                    println!(
                        "lease {id} revoking: deleting its credential failed, the server retries it: {e}"
                    );
                }
            }
        }
    }
    Ok(())
}
