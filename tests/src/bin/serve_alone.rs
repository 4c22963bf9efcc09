//! A server in a process of its own, for tests that change what the whole
//! process may use, such as its open-file limit: `serve_alone CONFIG`
//! serves like `switchyard serve --config CONFIG`, prints
//! `listening on ws://ADDR`, logs to stderr (`SWITCHYARD_LOG`, default
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
    println!("listening on ws://{}", listener.local_addr()?);
    let stdin_closed = async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    };
    switchyard::serve(listener, config, stdin_closed).await?;
    Ok(())
}
