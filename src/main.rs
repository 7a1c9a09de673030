//! kommo-sync: see `kommo-sync --help` and README.md.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kommo_sync::cli::main().await
}
