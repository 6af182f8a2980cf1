//! The `udim` command line: the service's subcommands here, the upload client in
//! [`upload`] and the offline ledger verifiers in [`ledger`].

pub mod ledger;
pub mod upload;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::startup::{Application, connect_database};

#[derive(Debug, Parser)]
#[command(name = "udim", version, about = "User Data Ingestion Module")]
struct Cli {
    /// Directory holding default.toml and the profile files.
    #[arg(long, env = "UDIM_CONFIG_DIR", default_value = "config", global = true)]
    config_dir: PathBuf,
    /// Defaults to `serve`, so a bare `cargo run` starts the service.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Mint a bearer token with the local HS256 secret (prints only the token).
    Token {
        /// The subject (`sub`): the user the token acts for.
        #[arg(long)]
        sub: String,
        /// A scope to grant (udim:upload, udim:read, udim:admin); repeat or space-separate.
        #[arg(long, required = true)]
        scope: Vec<String>,
    },
    /// Upload a file to a running service, resumably (tus), with a progress bar; prints the
    /// stored package as JSON.
    Upload {
        file: PathBuf,
        /// The service's base URL.
        #[arg(long, env = "UDIM_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// A bearer token with the `udim:upload` scope.
        #[arg(long, env = "UDIM_TOKEN", hide_env_values = true)]
        token: String,
        /// The data category; an active consent must cover it.
        #[arg(long)]
        category: String,
        /// The file's media type.
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
        /// Bytes per PATCH, in MiB.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
        chunk_mib: u16,
        /// Continue the upload at this URL (printed by an earlier, interrupted run).
        #[arg(long)]
        resume: Option<String>,
    },
    /// Operator tasks.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The verifiable consent ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Print a new checkpoint signing key (`PRIVATE+KEY+…`) for `ledger.signing_key`: keep it
    /// secret, give every replica the same one, and never lose it.
    Keygen,
    /// Print the log's verifier key (`name+keyid+base64(0x01 || public key)`).
    Key,
    /// Print the latest signed checkpoint.
    Checkpoint,
    /// Print the record proof (JSON) of the entry at INDEX, against the latest checkpoint.
    Proof {
        #[arg(long)]
        index: u64,
    },
    /// Audit the whole stored log; exits non-zero naming the first bad index.
    Verify,
    /// Verify a record proof (JSON file, `-` for stdin) offline against a verifier key.
    VerifyProof {
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: String,
        proof: PathBuf,
    },
    /// Verify a consistency proof (JSON file with both checkpoints) offline.
    VerifyConsistency {
        #[arg(long)]
        key: String,
        proof: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Print outbox events as JSON lines, newest first.
    Outbox {
        /// Include events already delivered.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Add a new local key-encryption key; earlier keys keep decrypting.
    RotateKey,
}

/// Parses arguments, runs the command, and turns errors into one line on stderr.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udim: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    // Offline verification needs no settings, database or key files.
    match &cli.command {
        Some(Command::Ledger(LedgerCommand::VerifyProof { key, proof })) => {
            return ledger::verify_proof(key, proof);
        }
        Some(Command::Ledger(LedgerCommand::VerifyConsistency { key, proof })) => {
            return ledger::verify_consistency(key, proof);
        }
        // A client of a service somewhere: no settings of its own.
        Some(Command::Upload {
            file,
            server,
            token,
            category,
            content_type,
            chunk_mib,
            resume,
        }) => {
            let package = upload::upload(&upload::UploadJob {
                server: server.clone(),
                token: token.clone(),
                file: file.clone(),
                data_category: category.clone(),
                content_type: content_type.clone(),
                chunk_bytes: usize::from(*chunk_mib) * 1024 * 1024,
                resume: resume.clone(),
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&package)?);
            return Ok(());
        }
        _ => {}
    }
    let settings = Settings::load(&cli.config_dir)?;
    crate::ops::telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            let db = connect_database(&settings).await?;
            db.migrate().await?;
            tracing::info!(engine = db.engine().as_str(), "migrations applied");
            Ok(())
        }
        Command::Token { sub, scope } => {
            let scopes: Vec<String> = scope
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned)
                .collect();
            let auth = Authenticator::from_settings(&settings)?;
            println!("{}", auth.mint(&sub, &scopes)?);
            Ok(())
        }
        Command::Admin(AdminCommand::Outbox { all, limit }) => {
            let db = connect_database(&settings).await?;
            for entry in db.outbox.list(!all, limit).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
            Ok(())
        }
        Command::Ledger(command) => ledger(settings, command).await,
        Command::Upload { .. } => unreachable!("handled before any settings are loaded"),
        Command::Admin(AdminCommand::RotateKey) => match &settings.kms {
            crate::config::KmsSettings::Local(local) => {
                let id = udim_local::keyfile::LocalKeyFile::rotate(&local.key_file)?;
                println!("{id}");
                Ok(())
            }
            _ => anyhow::bail!("`kms.type` is not `local`: rotate keys in the key management service"),
        },
    }
}

async fn ledger(settings: Settings, command: LedgerCommand) -> anyhow::Result<()> {
    use crate::consent::signer::LedgerSigner;
    if let LedgerCommand::Keygen = command {
        let signer = udim_ledger::note::Signer::generate(&settings.ledger.origin)
            .map_err(|e| anyhow::anyhow!("cannot generate a signing key: {e}"))?;
        println!("{}", signer.to_secret_string());
        return Ok(());
    }
    let signer = LedgerSigner::load(&settings.ledger.origin, &settings.signing_key_source()?)?;
    if let LedgerCommand::Key = command {
        println!("{}", signer.verifier());
        return Ok(());
    }
    let db = connect_database(&settings).await?;
    let store = crate::factory::ledger(&settings, &db).await?;
    let ledger = store.as_ref();
    match command {
        LedgerCommand::Checkpoint => {
            let checkpoint = ledger.latest_checkpoint().await?.context("the ledger is empty")?;
            print!("{}", checkpoint.note);
        }
        LedgerCommand::Proof { index } => {
            let checkpoint = ledger.latest_checkpoint().await?.context("the ledger is empty")?;
            let rows = ledger.audit_rows(index, 1).await?;
            let row = rows
                .first()
                .filter(|r| r.index == index)
                .context("no entry at that index")?;
            let proof = crate::consent::proofs::inclusion(ledger, &[index], checkpoint.size).await?;
            let proof = udim_ledger::proof::RecordProof::new(index, &row.leaf_hash, &proof[0], checkpoint.note);
            println!("{}", serde_json::to_string_pretty(&proof)?);
        }
        LedgerCommand::Verify => {
            let report = crate::consent::audit::audit(store.clone(), signer.verifier()).await?;
            println!(
                "ledger sound: {} entries ({} redacted), {} checkpoints verified",
                report.entries, report.redacted, report.checkpoints
            );
        }
        LedgerCommand::Keygen
        | LedgerCommand::Key
        | LedgerCommand::VerifyProof { .. }
        | LedgerCommand::VerifyConsistency { .. } => {
            unreachable!("handled before any settings are loaded")
        }
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let embedded = settings.database.url.is_none();
    let app = Application::build(settings).await?;
    let addr = app.local_addr();
    tracing::info!(%addr, "udim is listening");
    if embedded {
        tracing::info!(
            "embedded default: get a token with `udim token --sub alice --scope udim:upload`, grant consent with \
             POST http://{addr}/v1/consents, then upload with `curl -T FILE -H 'Authorization: Bearer $TOKEN' \
             'http://{addr}/v1/packages?data_category=documents&filename=FILE'`"
        );
    }
    app.run_until_stopped(shutdown_signal()).await.context("serve")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
