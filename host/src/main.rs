//! The `switchyard` command line: `serve`, `build`, `up` and `token`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use switchyard::config::LogFormat;
use switchyard::{Config, ConfigError, Server};

#[derive(Parser)]
#[command(
    version,
    about = "WebSocket application server with WebAssembly controllers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the controllers in the controllers folder.
    Serve(ServeArgs),
    /// Build every controller crate in the controllers folder to <name>.wasm.
    Build(BuildArgs),
    /// Build the controllers, serve them, and rebuild on source changes.
    Up(ServeArgs),
    /// Print a development token signed with the configured HS256 secret.
    Token(TokenArgs),
    /// Create a controller in the controllers folder, ready to build: a
    /// Rust crate, or with --lang a Python or JavaScript project.
    New(NewArgs),
    /// Load modules as the server would and say what each would serve or
    /// exactly why it would be refused (exit status 1 if any would be).
    Check(CheckArgs),
    /// Print the routing table the server would serve from the
    /// controllers folder (exit status 1 if a module would be refused).
    Routes(BuildArgs),
}

#[derive(Args)]
struct NewArgs {
    /// The controller's name: its crate, its route name and NAME.wasm.
    name: String,
    /// The route it serves (default: /NAME).
    #[arg(long)]
    route: Option<String>,
    /// The language to write it in.
    #[arg(long, value_enum, default_value_t)]
    lang: switchyard::scaffold::Lang,
    /// Folder of controllers.
    #[arg(long)]
    controllers: Option<PathBuf>,
    /// Config file (default: ./switchyard.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct CheckArgs {
    /// Module files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Config file (default: ./switchyard.toml when it exists): its route
    /// settings and sandbox apply.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// The subject (`sub` claim): who the token speaks for.
    #[arg(long)]
    sub: String,
    /// A role to grant; repeat for several.
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Lifetime, e.g. 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = switchyard::auth::parse_ttl)]
    ttl: std::time::Duration,
    /// Config file (default: ./switchyard.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080; port 0 picks a free port.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Folder of controller modules (*.wasm).
    #[arg(long)]
    controllers: Option<PathBuf>,
    /// Config file (default: ./switchyard.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How log lines look (default: the config's `log_format`, else text).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Where the admin listener (metrics, health) listens, e.g.
    /// 127.0.0.1:9090 (default: the config's `[admin] listen`, else off).
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Join a cluster through this Redis server, e.g.
    /// redis://127.0.0.1:6379/ (default: the config's `[cluster]`, else
    /// one node on its own).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// This node's id in the cluster (default: the config's
    /// `cluster.node_id`, else derived from the host name and process).
    #[arg(long)]
    node_id: Option<String>,
}

#[derive(Args)]
struct BuildArgs {
    /// Folder of controller crates.
    #[arg(long)]
    controllers: Option<PathBuf>,
    /// Config file (default: ./switchyard.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::load(path),
        None => {
            let default = PathBuf::from("switchyard.toml");
            if default.is_file() {
                Config::load(&default)
            } else {
                Ok(Config::default())
            }
        }
    }
}

fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = &args.controllers {
        config.controllers = dir.clone();
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(addr) = args.admin_listen {
        config.admin.listen = Some(addr);
    }
    if let Some(url) = &args.redis {
        config.cluster.get_or_insert_default().redis_url = url.clone();
    }
    if let Some(node) = &args.node_id {
        let cluster = config.cluster.as_mut().context(
            "--node-id names this node in a cluster: pass --redis URL too, or add a [cluster] section",
        )?;
        cluster.node_id = node.clone();
    }
    config.controllers = config.controllers_dir()?;
    Ok(config)
}

fn build(dir: &std::path::Path) -> anyhow::Result<()> {
    let placed = switchyard::build_controllers(dir)?;
    for file in &placed {
        eprintln!("switchyard: built {}", file.display());
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = switchyard::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public = config.public().map(std::path::Path::to_owned);
    let dashboard = config.admin.clone();
    let server = Server::new(config).await?;
    for route in server.routes() {
        tracing::info!(route = %route.name, pattern = %route.pattern, "serving ws://{addr}{}", route.pattern);
    }
    if let Some(admin) = server.admin_addr() {
        tracing::info!("admin: http://{admin}/metrics, /healthz, /readyz");
    }
    let page = public.inspect(|dir| {
        tracing::info!(folder = %dir.display(), "files: http://{addr}/");
    });
    match (dashboard.dashboard, server.admin_addr()) {
        (false, _) => {}
        (true, Some(admin)) => tracing::info!("dashboard: http://{admin}/_switchyard/"),
        (true, None) => tracing::info!(
            "dashboard: http://{addr}/_switchyard/ (its feed needs a token with one of {:?})",
            dashboard.dashboard_roles
        ),
    }
    println!("listening on ws://{addr}");
    if page.is_some() {
        println!("open http://{addr}/ in a browser for the demo page");
    }
    server.serve(listener, shutdown_signal()).await;
    Ok(())
}

/// Runs the command; a failure prints its message and causes on one line,
/// never a backtrace (even with `RUST_BACKTRACE` set): what goes wrong
/// here is almost always the user's to fix, and a stack says nothing to
/// them.
/// Checks each of `files`, printing what it would serve or why it would be
/// refused; returns how many would be refused.
async fn check(config: Config, files: &[PathBuf]) -> usize {
    let mut refused = 0;
    for file in files {
        match switchyard::check_module(config.clone(), file).await {
            Ok(route) => println!(
                "{}: ok: route {} at {} (roles: {}; instances: {})",
                file.display(),
                route.name,
                route.pattern,
                roles(&route.is_granted),
                route.instance
            ),
            Err(err) => {
                refused += 1;
                println!("{}: refused: {err}", file.display());
            }
        }
    }
    refused
}

fn roles(roles: &[String]) -> String {
    if roles.is_empty() {
        "anyone".to_owned()
    } else {
        roles.join(" or ")
    }
}

/// Prints the routing table `config` makes, most specific first.
async fn routes(config: Config) -> anyhow::Result<()> {
    let server = Server::new(config).await?;
    let rows: Vec<[String; 5]> = server
        .routes()
        .iter()
        .map(|route| {
            [
                route.pattern.clone(),
                route.name.clone(),
                roles(&route.is_granted),
                route.instance.clone(),
                route.file.display().to_string(),
            ]
        })
        .collect();
    let header = ["PATTERN", "NAME", "ROLES", "INSTANCES", "FILE"].map(str::to_owned);
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    for err in server.rejected() {
        eprintln!("switchyard: refused: {err}");
    }
    if !server.rejected().is_empty() {
        anyhow::bail!(
            "{} module(s) would be refused (see above)",
            server.rejected().len()
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, at the level `SWITCHYARD_LOG` says (default `info`
/// when serving, `warn` for the other commands, whose output is their
/// answer), as text or one JSON object per line.
fn init_logs(format: LogFormat, serving: bool) {
    let level = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Fields (route, conn, peer, …) at the top level of each object,
        // beside `timestamp`, `level`, `target` and `message`.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let serving = match &cli.command {
        Command::Serve(args) | Command::Up(args) => Some(serve_config(args)?),
        _ => None,
    };
    init_logs(
        serving
            .as_ref()
            .map_or(LogFormat::Text, |config| config.log_format),
        serving.is_some(),
    );
    match cli.command {
        Command::Serve(_) => runtime.block_on(serve(serving.expect("loaded above"))),
        Command::Build(args) => {
            let mut config = load_config(args.config.as_ref())?;
            if let Some(dir) = args.controllers {
                config.controllers = dir;
            }
            build(&config.controllers_dir()?)
        }
        Command::New(args) => {
            let mut config = load_config(args.config.as_ref())?;
            if let Some(dir) = args.controllers {
                config.controllers = dir;
            }
            let route = args.route.unwrap_or_else(|| format!("/{}", args.name));
            let made = switchyard::scaffold::new_controller(
                &config.controllers_dir()?,
                &args.name,
                &route,
                args.lang,
            )?;
            println!(
                "created {}: `switchyard up` builds it and serves it at {route}",
                made.display()
            );
            Ok(())
        }
        Command::Check(args) => {
            let config = load_config(args.config.as_ref())?;
            let refused = runtime.block_on(check(config, &args.files));
            if refused > 0 {
                anyhow::bail!("{refused} of {} modules would be refused", args.files.len());
            }
            Ok(())
        }
        Command::Routes(args) => {
            let mut config = load_config(args.config.as_ref())?;
            if let Some(dir) = args.controllers {
                config.controllers = dir;
            }
            config.hot_reload = false;
            config.admin.listen = None;
            runtime.block_on(routes(config))
        }
        Command::Token(args) => {
            let config = load_config(args.config.as_ref())?;
            let token = switchyard::auth::mint(&config, &args.sub, &args.roles, args.ttl)?;
            println!("{token}");
            Ok(())
        }
        Command::Up(_) => {
            let config = serving.expect("loaded above");
            build(&config.controllers)?;
            // Edits to a controller's sources rebuild it; the module watcher
            // then swaps the new version in.
            switchyard::reload::watch_sources(config.controllers.clone())?;
            runtime.block_on(serve(config))
        }
    }
}
