//! Consent ledger benchmark: appends per second through the real append path (record
//! encoding, leaf hash, batching sequencer, one transaction and one signed checkpoint per
//! batch, inclusion proof per entry), inclusion-proof latency, and a full audit.
//!
//! `cargo run --release --example ledger_bench -- DB ENTRIES WRITERS [PROOF_SAMPLES]`
//! DB is `sqlite` (a fresh file) or a PostgreSQL admin URL (a fresh database is created), e.g.
//! `postgres://postgres@localhost/postgres?host=/var/run/postgresql` for the Unix socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use udim::consent::sequencer::Sequencer;
use udim::consent::signer::LedgerSigner;
use udim::consent::{ConsentService, Grant};
use udim::formats::input::{DataCategory, Label};

fn label(s: &str) -> Label {
    Label::parse(s).expect("a valid label")
}

fn category(s: &str) -> DataCategory {
    DataCategory::parse(s).expect("a valid data category")
}

fn grant() -> Grant {
    Grant {
        purposes: vec![label("model-training"), label("analytics")],
        data_categories: vec![category("audio"), category("documents")],
        recipients: vec![label("pipeline.example")],
        policy_version: label("2026-01"),
        policy_url: Some(label("https://example.test/privacy/2026-01")),
        jurisdiction: label("EU"),
        collection_method: label("api"),
        expires_at: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (db, entries, writers): (&str, usize, usize) = (&args[1], args[2].parse()?, args[3].parse()?);
    let samples: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let url = if db == "sqlite" {
        format!("sqlite://{}", dir.path().join("ledger.db").display())
    } else {
        use sqlx::Connection as _;
        let name = format!("udim_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(db).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let (base, query) = db
            .split_once('?')
            .map_or((db, String::new()), |(b, q)| (b, format!("?{q}")));
        format!(
            "{}/{name}{query}",
            base.rsplit_once('/').expect("an admin URL ends in /database").0
        )
    };
    let database = udim_sql::connect(&udim_sql::DbOptions {
        url: url.clone(),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(60),
    })
    .await?;
    database.migrate().await?;
    let key = udim::config::SigningKeySource::Generated(dir.path().join("key"));
    let signer = Arc::new(LedgerSigner::load("bench.test/ledger", &key)?);
    let service = ConsentService::new(
        database.ledger.clone(),
        Sequencer::start(database.ledger.clone(), signer.clone(), 256),
    );

    let started = Instant::now();
    let tasks = (0..writers).map(|w| {
        let service = service.clone();
        let share = entries / writers + usize::from(w < entries % writers);
        tokio::spawn(async move {
            for _ in 0..share {
                service.grant(&format!("user-{w}"), grant()).await.expect("append");
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task?;
    }
    let append_secs = started.elapsed().as_secs_f64();
    let ledger = database.ledger.as_ref();
    let size = ledger.size().await?;
    let checkpoints = ledger.checkpoints(1, u32::MAX).await?.len();

    let mut latencies = Vec::with_capacity(samples);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..samples {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let index = state % size;
        let t = Instant::now();
        udim::consent::proofs::inclusion(ledger, &[index], size).await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();

    let t = Instant::now();
    let report = udim::consent::audit::audit(database.ledger.clone(), signer.verifier()).await?;
    let audit_secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "db": if db == "sqlite" { "sqlite" } else { "postgres" },
            "entries": size,
            "writers": writers,
            "append_seconds": (append_secs * 100.0).round() / 100.0,
            "appends_per_second": (size as f64 / append_secs).round(),
            "checkpoints": checkpoints,
            "mean_batch": (size as f64 / checkpoints as f64 * 10.0).round() / 10.0,
            "proof_p50_ms": percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            "proof_p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            "audit_seconds": (audit_secs * 100.0).round() / 100.0,
            "audited_entries": report.entries,
        })
    );
    database.close().await;
    Ok(())
}
