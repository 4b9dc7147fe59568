//! The command line: parse, load settings, run. The work happens in the library.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use token_broker::public_tokens::SigningKey;
use token_broker::settings::{process_env, Settings};
use token_broker::startup::{self, Application};
use token_broker::telemetry::{self, LogFormat};
use token_broker::{demo, identity};

/// mimalloc instead of the system allocator: a request makes a few dozen small allocations, and
/// glibc's malloc/free were a sixth of the instructions on the token route.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "token-broker",
    version,
    about = "Hands browser apps OAuth2 client-credentials tokens without the client secret"
)]
struct Cli {
    /// Configuration file (TOML); environment overrides are TOKEN_BROKER__<SECTION>__<KEY>.
    #[arg(long, global = true, env = "TOKEN_BROKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve,
    /// Validate the configuration: one line per problem, naming the key.
    Check,
    /// Read an API key on stdin and print the `sha256:<hex>` form for the configuration.
    HashKey,
    /// Write a new Ed25519 signing key (PKCS#8 PEM) for [public_tokens]; prints its kid.
    Keygen {
        /// Where to write it (mode 0600); stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Each upstream's state and the cached tokens, from a running broker's admin API; exits 1
    /// when an upstream is failing, 2 when the admin API cannot be read.
    Status {
        /// The admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// `server.admin_token`, when the broker has one.
        #[arg(long, env = "TOKEN_BROKER_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print JSON (`{"upstreams": [...], "tokens": [...]}`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the admin listener answers 200 (for container health checks).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Run the broker with a stand-in token endpoint and a demo API key, on loopback.
    Demo {
        /// Public listener; a free port is chosen when this one is taken.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener; a free port is chosen when this one is taken.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::Check => check(cli.config),
        Command::HashKey => hash_key(),
        Command::Keygen { out } => keygen(out.as_deref()),
        Command::Healthcheck { url } => healthcheck(&url),
        Command::Status { admin, token, json } => {
            ExitCode::from(small_runtime().block_on(token_broker::status::run(&admin, token.as_deref(), json)))
        }
        Command::Demo { listen, admin_listen } => run_demo(listen, admin_listen),
    }
}

fn load(config: Option<&Path>) -> Result<Settings, ExitCode> {
    if config.is_none() {
        eprintln!("--config: no configuration file given (pass --config FILE or set TOKEN_BROKER_CONFIG)");
        return Err(ExitCode::from(2));
    }
    Settings::load(config, &process_env()).map_err(|problems| {
        for problem in &problems.0 {
            eprintln!("{problem}");
        }
        ExitCode::from(2)
    })
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let settings = match load(config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => {
            eprintln!("token-broker: invalid configuration, not starting");
            return code;
        }
    };
    let _logs = telemetry::init(LogFormat::Json);
    let mut settings = settings;
    run(async move {
        let path = config.expect("load() refused a missing --config");
        match startup::discover(&mut settings, None).await {
            Ok(remarks) => startup::warn_remarks(&remarks),
            Err(problems) => {
                for problem in &problems {
                    eprintln!("{}: {}", problem.key, problem.message);
                }
                return Err(std::io::Error::other(
                    "an issuer's metadata is not usable, not starting",
                ));
            }
        }
        let app = Application::build(settings)?.reload_from(path, process_env());
        tracing::info!(listen = %app.address(), admin_listen = %app.admin_address(), "token-broker listening");
        app.run_until_stopped().await
    })
}

fn check(config: Option<PathBuf>) -> ExitCode {
    match load(config.as_deref()) {
        Ok(mut settings) => {
            // Issuers are asked for their metadata, as `serve` would.
            match small_runtime().block_on(startup::discover(&mut settings, None)) {
                Ok(remarks) => {
                    for remark in remarks {
                        println!("warning: {}: {}", remark.key, remark.message);
                    }
                }
                Err(problems) => {
                    for problem in problems {
                        eprintln!("{}: {}", problem.key, problem.message);
                    }
                    return ExitCode::from(2);
                }
            }
            println!(
                "configuration valid: {} upstream(s), {} authenticator(s), {} grant(s)",
                settings.upstreams.len(),
                settings.authenticators.len(),
                settings.grants.len()
            );
            // What shapes each upstream's tokens, so an operator can see what a change or a
            // rotation of credentials changed (the fingerprint is a hash prefix, never a secret).
            for (name, upstream) in &settings.upstreams {
                println!(
                    "upstream {name}: token endpoint {}, {}, credentials {}{}",
                    describe_endpoint(upstream),
                    upstream.auth_method,
                    upstream
                        .credential_fingerprints()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" then "),
                    upstream
                        .proxy
                        .as_ref()
                        .map_or(String::new(), |p| format!(", proxy to {}", p.url)),
                );
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The token endpoint, and for an issuer where it was found.
fn describe_endpoint(upstream: &token_broker::upstream::config::UpstreamSettings) -> String {
    use token_broker::upstream::config::Endpoint;
    match &upstream.endpoint {
        Endpoint::Fixed(url) => url.to_string(),
        Endpoint::Discovered {
            issuer,
            metadata: Some(metadata),
        } => format!(
            "{} (issuer {issuer}, metadata {})",
            metadata.token_endpoint_for(upstream.auth_method.uses_certificate()),
            metadata.document
        ),
        Endpoint::Discovered { issuer, metadata: None } => format!("unknown (issuer {issuer})"),
    }
}

fn hash_key() -> ExitCode {
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("hash-key: the key on stdin is not UTF-8 text");
        return ExitCode::FAILURE;
    }
    let key = input.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        eprintln!("hash-key: no key on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", identity::hash_key(key));
    ExitCode::SUCCESS
}

fn keygen(out: Option<&Path>) -> ExitCode {
    let pem = SigningKey::generate_pem();
    let kid = SigningKey::from_pem(&pem)
        .expect("a generated key parses")
        .verifying
        .kid;
    match out {
        None => print!("{pem}"),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut file| file.write_all(pem.as_bytes()));
            if let Err(e) = written {
                eprintln!("keygen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("kid: {kid}");
    ExitCode::SUCCESS
}

fn healthcheck(url: &str) -> ExitCode {
    run(async move {
        let response = reqwest::Client::new()
            .get(url)
            .timeout(std::time::Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| std::io::Error::other(format!("{url}: {e}")))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("{url} answered {}", response.status())))
        }
    })
}

fn run_demo(listen: SocketAddr, admin_listen: SocketAddr) -> ExitCode {
    let _logs = telemetry::init(LogFormat::Text);
    run(async move {
        let client_secret = demo::random_secret();
        let stand_in = demo::start_stand_in(client_secret.clone())?;
        let settings = demo::settings(
            &stand_in.url,
            &client_secret,
            demo::free_address(listen),
            demo::free_address(admin_listen),
        );
        let app = Application::build(settings)?;
        let url = format!("http://{}", app.address());
        println!("token-broker demo");
        println!("  broker:                  {url}");
        println!("  admin:                   http://{}/healthz", app.admin_address());
        println!(
            "  stand-in token endpoint: {} (60-second tokens, served for 45 s)",
            stand_in.url
        );
        println!("try:");
        println!("  curl -s -H 'X-API-Key: {}' {url}/v1/token/demo", demo::DEMO_API_KEY);
        println!(
            "  curl -s -H 'X-API-Key: {}' '{url}/v1/token/demo?scope=read'",
            demo::DEMO_API_KEY
        );
        tokio::select! {
            result = app.run_until_stopped() => result,
            result = stand_in.server => result,
        }
    })
}

/// A one-thread runtime for the short commands that make a few requests.
fn small_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

fn run(future: impl std::future::Future<Output = std::io::Result<()>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("token-broker: {error}");
            ExitCode::FAILURE
        }
    }
}
