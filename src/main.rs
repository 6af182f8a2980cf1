#[tokio::main]
async fn main() -> std::process::ExitCode {
    udim::cli::run().await
}
