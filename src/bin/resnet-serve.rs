//! `resnet-serve`: parse the configuration, set up logging, run the server until SIGTERM/SIGINT.

use clap::Parser;
use resnet_serve::config::{self, LogFormat, ServeConfig};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = ServeConfig::parse();
    config.validate().map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads(config::available_cores()))
        .enable_all()
        .build()?
        .block_on(serve(config))
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let server = resnet_serve::server::start(config).await?;
    wait_for_signal().await?;
    server.shutdown();
    server.wait().await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
