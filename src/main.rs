//! `devicegate --config PATH [--check] [--upgrade]`, and `devicegate --config PATH admin …`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// OAuth 2.0 Device Authorization Grant (RFC 8628) gateway in front of an OpenID Connect provider.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The YAML configuration file.
    #[arg(short, long, default_value = "conf/devicegate.yaml")]
    config: PathBuf,
    /// Validate the configuration, print every error, and exit.
    #[arg(long)]
    check: bool,
    /// Take the listeners over from the running gateway (zero-downtime upgrade): start the new
    /// binary with this flag, then send SIGQUIT to the old one.
    #[arg(short, long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Call the admin API of the gateway this configuration describes.
    Admin {
        #[command(subcommand)]
        call: devicegate::cli::AdminCommand,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match devicegate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: {} error(s):", args.config.display(), errors.0.len());
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Admin { call }) = &args.command {
        return match devicegate::cli::run(&config, call) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("devicegate admin: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // RUST_LOG, when set, overrides log.level. Dropped last: every queued line is written.
    let flush = devicegate::logging::init(&config.log);
    // The pages are built (and their templates tried) once logging is set up.
    let prepared = match devicegate::server::with_pages(config) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{}: {} error(s):", args.config.display(), errors.0.len());
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    let config = &prepared.config;
    let bound = config.brute_force_bound();
    if args.check {
        println!("{}: OK", args.config.display());
        println!(
            "user-code brute force: at most {bound:.1e} expected correct guesses a day for the whole deployment \
             ({} wrong codes a minute × {} pending grants ÷ 20^8)",
            config.limits.code_failures_global_per_minute, config.store.max_pending
        );
        println!("store: {}", config.store.backend.describe());
        match (config.admin_listen, &config.admin_token) {
            (Some(addr), Some(_)) => println!("admin: {addr} (health, metrics and the admin API)"),
            (Some(addr), None) => {
                println!("admin: {addr} (health and metrics; the admin API is off: no admin.token)")
            }
            (None, _) => println!("admin: off (no admin.listen)"),
        }
        for (i, hook) in config.events.webhooks.iter().enumerate() {
            println!(
                "webhook {i}: {}{} gets {}",
                hook.url.origin().ascii_serialization(),
                hook.url.path(),
                hook.events.join(", ")
            );
        }
        for client in config.clients.values() {
            let state = if client.enabled { "" } else { " (disabled)" };
            println!(
                "client {}{state}:\n{}",
                client.client_id,
                client.policy.describe()
            );
        }
    }
    if bound > 1e-3 {
        eprintln!(
            "warning: user-code brute force allows {bound:.1e} expected correct guesses a day \
             (above 1e-3): lower limits.code_failures_global_per_minute or store.max_pending"
        );
    }
    if args.check {
        return ExitCode::SUCCESS;
    }
    tracing::info!(listen = %config.listen, upstream = %config.upstream.address, issuer = %config.upstream.issuer, "starting devicegate");
    match devicegate::server::build(prepared, args.upgrade) {
        Ok(server) => {
            // Not `run_forever`, which calls `exit` and so would drop the audit lines still
            // queued for the log writer: `run` returns once the server has stopped.
            server.run(pingora::server::RunArgs::default());
            // The last line before the queue is written out: its presence shows nothing queued
            // was cut off at exit.
            tracing::info!("devicegate stopped");
            drop(flush);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
