//! A server in a process of its own, for tests that change what the whole
//! process may use, such as its open-file limit: `serve_alone CONFIG`
//! serves like `switchyard serve --config CONFIG`, prints
//! `listening on ws://ADDR` (then `admin on ADDR` when the config has an
//! admin listener), logs to stderr (`SWITCHYARD_LOG`, default
//! info) and stops when its standard input closes.

use anyhow::Context as _;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: serve_alone CONFIG")?;
    let config = switchyard::Config::load(path.as_ref())?;
    let listener = switchyard::bind(config.listen)?;
    let server = switchyard::Server::new(config).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    if let Some(admin) = server.admin_addr() {
        println!("admin on {admin}");
    }
    let stdin_closed = async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    };
    server.serve(listener, stdin_closed).await;
    Ok(())
}
