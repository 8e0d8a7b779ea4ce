//! `leasegate`: the gateway daemon (`run`) and the operator's command line.
//!
//! A thin shell over the library: it parses arguments, loads the config,
//! installs signal handling and maps results to exit codes (78 for bad
//! configuration). It holds no pipeline logic of its own.
#![forbid(unsafe_code)]
// The binary decides the exit code, and a second signal ends it at once.
#![allow(clippy::exit)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leasegate::config::{Config, DEFAULT_CONFIG_PATH, EXAMPLE};
use leasegate::shutdown::Shutdown;
use leasegate::{agent, error_chain, exit, logging};

#[derive(Parser)]
#[command(
    name = "leasegate",
    version,
    about = "Forwards MQTT sensor readings to InfluxDB with short-lived leased credentials",
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
    /// Run the daemon: MQTT in, InfluxDB out, until SIGTERM or SIGINT.
    Run,
    /// Enroll this gateway with a ticket file from the authority.
    Enroll {
        /// The ticket file (one line, from `leasegate-authority ticket create`).
        file: PathBuf,
    },
    /// Ask the authority for leases, list, show and revoke them.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Show the running daemon's state.
    Status {
        /// Print JSON instead of text.
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
enum LeaseCommand {
    /// Get a new lease.
    Create {
        /// Requested lifetime, such as "15m" (capped by the role's max_ttl).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<humantime::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// List this gateway's leases.
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
    /// Revoke one lease.
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
        Command::Run => run(&cli.config),
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{EXAMPLE}");
            exit::OK
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => match load(&cli.config) {
            Some(_) => {
                println!("{}: ok", cli.config.display());
                exit::OK
            }
            None => exit::CONFIG,
        },
        Command::Enroll { file } => enroll(&cli.config, &file),
        Command::Lease { command } => lease(&cli.config, command),
        Command::Status { json } => status(&cli.config, json),
    };
    ExitCode::from(code as u8)
}

/// Loads the config, printing every problem; `None` means exit 78.
fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            for line in e.lines() {
                eprintln!("leasegate: {line}");
            }
            None
        }
    }
}

fn run(path: &Path) -> i32 {
    let Some(config) = load(path) else {
        return exit::CONFIG;
    };
    logging::init(config.log_level);
    let shutdown = Shutdown::new();
    // A second signal exits at once: nothing acked is lost, because
    // unwritten messages are still unacked at the broker.
    let second = |signal| std::process::exit(128 + signal);
    if let Err(e) = leasegate::shutdown::on_termination_signals(
        shutdown.clone(),
        config.shutdown_timeout,
        second,
    ) {
        log::error!("cannot install signal handlers: {e}");
        return exit::FAILURE;
    }
    log::info!("leasegate {} starting", env!("CARGO_PKG_VERSION"));
    let reload = agent::Reload {
        path: path.to_owned(),
    };
    match agent::run(&config, shutdown, Some(reload)) {
        Ok(_) => exit::OK,
        Err(e) => {
            log::error!("{}", error_chain(&e));
            exit::FAILURE
        }
    }
}

/// The lease settings of a config that writes with leases; prints why not.
fn leased(path: &Path) -> Option<(Config, leasegate::config::LeaseConfig)> {
    let config = load(path)?;
    match config.writing.lease().cloned() {
        Some(l) => Some((config, l)),
        None => {
            eprintln!(
                "leasegate: {} writes with static credentials ([influxdb] has them); enrollment and leases need a config without them",
                path.display()
            );
            None
        }
    }
}

fn enroll(path: &Path, file: &Path) -> i32 {
    let Some((config, l)) = leased(path) else {
        return exit::CONFIG;
    };
    logging::init(Some(config.log_level.unwrap_or(log::LevelFilter::Warn)));
    if let Err(e) = leasegate::lifecycle::files::private_dir(&config.state_dir) {
        eprintln!(
            "leasegate: cannot create {}: {e}",
            config.state_dir.display()
        );
        return exit::FAILURE;
    }
    // The same as a drop-in: a used ticket is deleted (it is a secret), a
    // rejected one renamed .rejected with its reason beside it.
    use agent::credential::identity::TicketOutcome;
    match agent::credential::identity::process_ticket(
        file,
        &config.state_dir,
        &l.identity_name,
        l.system_trust,
    ) {
        TicketOutcome::Enrolled(i) => {
            give_to_state_dir_owner(&config.state_dir);
            println!(
                "enrolled as {} ({}), role {}, with the authority at {}; {} deleted",
                i.identity_name,
                i.identity_id,
                i.role,
                i.authority_url,
                file.display()
            );
            exit::OK
        }
        TicketOutcome::Rejected(e) => {
            eprintln!(
                "leasegate: the ticket was rejected ({}): {}; renamed .rejected",
                e.reason_code(),
                error_chain(&e)
            );
            exit::FAILURE
        }
        TicketOutcome::Kept(e) => {
            eprintln!(
                "leasegate: could not enroll now, try again ({}): {}",
                e.reason_code(),
                error_chain(&e)
            );
            exit::FAILURE
        }
    }
}

/// Run as root (`sudo leasegate enroll`), the identity file would be
/// root's and unreadable to the daemon's user: it goes to the owner of the
/// state dir, as the daemon's own files are.
fn give_to_state_dir_owner(state_dir: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(dir) = std::fs::metadata(state_dir) else {
        return;
    };
    let file = state_dir.join(agent::credential::identity::IDENTITY_FILE);
    let owned = std::fs::metadata(&file).is_ok_and(|m| m.uid() == dir.uid());
    if !owned && let Err(e) = std::os::unix::fs::chown(&file, Some(dir.uid()), Some(dir.gid())) {
        eprintln!(
            "leasegate: {} is not owned by the daemon's user and cannot be given to it: {e}",
            file.display()
        );
    }
}

fn lease(path: &Path, command: LeaseCommand) -> i32 {
    use leasegate::render;
    let Some((config, l)) = leased(path) else {
        return exit::CONFIG;
    };
    logging::init(Some(config.log_level.unwrap_or(log::LevelFilter::Warn)));
    let Some(identity) = agent::credential::identity::load_identity(&config.state_dir) else {
        eprintln!(
            "leasegate: not enrolled (no identity in {}): drop a ticket into {} or run `leasegate enroll FILE`",
            config.state_dir.display(),
            config.ticket_dir.display()
        );
        return exit::FAILURE;
    };
    let client = match identity.client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leasegate: {}", error_chain(&e));
            return exit::FAILURE;
        }
    };
    let cred = &identity.credential;
    let now = leasegate::now_ms();
    let result = match command {
        LeaseCommand::Create { ttl, json } => client
            .create_lease(cred, ttl.map(Into::into).or(l.ttl), None)
            .map(|g| {
                if json {
                    // Scripts asked for the credential: it is in the JSON.
                    print_json(&g);
                } else {
                    print!("{}", render::lease_detail(&g.lease, now));
                    println!("(the secret is shown only with --json)");
                }
            }),
        LeaseCommand::List { json } => client.leases(cred).map(|list| {
            if json {
                print_json(&list);
            } else {
                print!("{}", render::lease_table(&list, now));
            }
        }),
        LeaseCommand::Show { id, json } => client.lease(cred, &id).map(|info| {
            if json {
                print_json(&info);
            } else {
                print!("{}", render::lease_detail(&info, now));
            }
        }),
        LeaseCommand::Revoke { id } => client
            .revoke(cred, &id)
            .map(|info| println!("lease {id} {}", info.status.as_str())),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("leasegate: {}", error_chain(&e));
            exit::FAILURE
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data always serializes")
    );
}

fn status(path: &Path, json: bool) -> i32 {
    let Some(config) = load(path) else {
        return exit::CONFIG;
    };
    match agent::report::status::fetch(&config.status_dirs(), &config.state_dir) {
        Ok(report) => {
            let now = leasegate::now_ms();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("plain data always serializes")
                );
            } else {
                print!("{}", agent::report::status::render(&report, now));
            }
            let fresh = !report.stopped
                && now - report.updated_ms <= agent::report::status::STALE.as_millis() as i64;
            if fresh { exit::OK } else { exit::FAILURE }
        }
        Err(e) => {
            eprintln!("leasegate: {e}");
            exit::FAILURE
        }
    }
}
