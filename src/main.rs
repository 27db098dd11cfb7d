//! `tollgate`: the gateway binary.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: Pingora and the gateway make many small short-lived allocations per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An LLM gateway: an OpenAI-compatible endpoint in front of many providers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. SIGHUP (or editing the rules file) reloads the rules; SIGTERM drains
    /// in-flight requests for the configured grace period, then exits.
    Run {
        /// The gateway config; its `rules` entry names the rules file, relative to it.
        #[arg(long, default_value = "conf/gateway.yaml")]
        config: PathBuf,
        /// Listen on this address instead of the configured one, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config and its rules file: print every error with its YAML path and line, and
    /// exit 1 if there is any.
    Check {
        /// The gateway config to check, with the rules file it names.
        #[arg(long, default_value = "conf/gateway.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run { config, listen } => match tollgate::server::run(&config, listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match tollgate::server::load(&config, false) {
            Ok(live) => {
                println!(
                    "{}: ok ({} providers, {} models)",
                    config.display(),
                    live.providers.len(),
                    live.gateway.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    println!("{e}");
                }
                println!("{} error(s)", errors.len());
                ExitCode::FAILURE
            }
        },
    }
}
