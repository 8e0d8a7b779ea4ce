//! `leasegate`: the gateway daemon (`run`) and the operator's command line.
//!
//! A thin shell over the library: it parses arguments, loads the config,
//! installs signal handling and maps results to exit codes (78 for bad
//! configuration). It holds no pipeline logic of its own.

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
        Command::Enroll { .. } => not_yet(
            "enroll",
            "the gateway lease lifecycle (ticket drop-in and enrollment)",
        ),
        Command::Lease { .. } => not_yet("lease", "the gateway's lease lifecycle"),
        Command::Status { .. } => {
            not_yet("status", "the gateway's lease lifecycle and service status")
        }
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
    match agent::run(&config, shutdown) {
        Ok(_) => exit::OK,
        Err(e) => {
            log::error!("{}", error_chain(&e));
            exit::FAILURE
        }
    }
}

fn not_yet(command: &str, capability: &str) -> i32 {
    eprintln!("leasegate {command}: not available in this version; it comes with {capability}");
    exit::USAGE
}
