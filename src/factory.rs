//! The provider factory: turns settings into port implementations, one function per port.
//!
//! Each function is one `match` on the port's settings: an arm per provider, compiled in only
//! with its Cargo feature, and one fallback arm that names the feature a build lacks, so a
//! setting for a provider that is not compiled in is a clear start-up error, never a
//! compile error or a panic. Every arm hands its provider the whole settings struct.

use std::sync::Arc;

use anyhow::Context;
use udim_ports::kms::KeyService;
use udim_ports::ledger::ConsentLedger;
use udim_ports::queue::Notifier;
use udim_ports::scanner::{MalwareScanner, ScanningDisabled};
use udim_ports::storage::BlobStore;

use crate::config::{KmsSettings, LedgerStore, QueueSettings, ScannerSettings, Settings, StorageSettings};
use crate::pipeline::ingest::ScanPolicy;

/// The error for a setting whose provider this build does not include.
fn not_enabled(setting: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "configuration error: `{setting}` needs the `{feature}` feature, which this build does not include \
         (cargo build --features {feature})"
    )
}

/// The setting naming a provider and the Cargo feature that compiles it in.
trait Provider {
    fn setting(&self) -> (&'static str, &'static str);
}

impl Provider for StorageSettings {
    fn setting(&self) -> (&'static str, &'static str) {
        match self {
            Self::Filesystem(_) => ("storage.type = \"filesystem\"", "default"),
            Self::S3(_) => ("storage.type = \"s3\"", "aws"),
            Self::Gcs(_) => ("storage.type = \"gcs\"", "gcp"),
            Self::Azure(_) => ("storage.type = \"azure\"", "azure"),
        }
    }
}

impl Provider for KmsSettings {
    fn setting(&self) -> (&'static str, &'static str) {
        match self {
            Self::Local(_) => ("kms.type = \"local\"", "default"),
            Self::Aws(_) => ("kms.type = \"aws\"", "aws"),
            Self::Gcp(_) => ("kms.type = \"gcp\"", "gcp"),
            Self::Azure(_) => ("kms.type = \"azure\"", "azure"),
        }
    }
}

impl Provider for QueueSettings {
    fn setting(&self) -> (&'static str, &'static str) {
        match self {
            Self::OutboxOnly => ("queue.type = \"outbox_only\"", "default"),
            Self::Rabbitmq(_) => ("queue.type = \"rabbitmq\"", "local"),
            Self::Sqs(_) => ("queue.type = \"sqs\"", "aws"),
            Self::Pubsub(_) => ("queue.type = \"pubsub\"", "gcp"),
            Self::AzureQueue(_) => ("queue.type = \"azure_queue\"", "azure"),
        }
    }
}

impl Provider for LedgerStore {
    fn setting(&self) -> (&'static str, &'static str) {
        match self {
            Self::Database => ("ledger.store.type = \"database\"", "default"),
            Self::Qldb(_) => ("ledger.store.type = \"qldb\"", "qldb"),
        }
    }
}

/// A provider the build does not include, or one whose feature is compiled in but whose
/// implementation has not landed yet (the gcp and azure key services and queues, issue 10).
fn unavailable(settings: &impl Provider) -> anyhow::Error {
    let (setting, feature) = settings.setting();
    let compiled_in = match feature {
        "local" => cfg!(feature = "local"),
        "aws" => cfg!(feature = "aws"),
        "gcp" => cfg!(feature = "gcp"),
        "azure" => cfg!(feature = "azure"),
        "qldb" => cfg!(feature = "qldb"),
        _ => true,
    };
    if compiled_in {
        anyhow::anyhow!("configuration error: `{setting}` is not implemented yet in the `{feature}` build")
    } else {
        not_enabled(setting, feature)
    }
}

/// Object storage from `storage.*`.
pub fn storage(settings: &Settings) -> anyhow::Result<Arc<dyn BlobStore>> {
    match &settings.storage {
        StorageSettings::Filesystem(fs) => {
            let store = udim_local::fs::build(&fs.path)
                .with_context(|| format!("cannot use {} for object storage", fs.path.display()))?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "aws")]
        StorageSettings::S3(s3) => Ok(Arc::new(udim_aws::s3_storage(&udim_aws::S3Config {
            bucket: s3.bucket.clone(),
            region: s3.region.clone(),
            endpoint: s3.endpoint.clone(),
            allow_http: s3.allow_http,
            sse_kms_key_id: s3.sse_kms_key_id.clone(),
            credentials: settings.aws_credentials.clone(),
        })?)),
        #[cfg(feature = "gcp")]
        StorageSettings::Gcs(gcs) => Ok(Arc::new(udim_gcp::gcs_storage(&gcs.bucket, gcs.base_url.as_deref())?)),
        #[cfg(feature = "azure")]
        StorageSettings::Azure(azure) => Ok(Arc::new(udim_azure::blob_storage(
            &azure.account,
            &azure.container,
            azure.endpoint.as_deref(),
            azure.use_emulator,
        )?)),
        #[allow(unreachable_patterns, reason = "reachable in builds without every feature")]
        other => Err(unavailable(other)),
    }
}

/// Key management from `kms.*`.
pub async fn kms(settings: &Settings) -> anyhow::Result<Arc<dyn KeyService>> {
    match &settings.kms {
        KmsSettings::Local(local) => {
            let kms = udim_local::keyfile::LocalKeyFile::open_or_create(&local.key_file)
                .with_context(|| format!("cannot use the key file {}", local.key_file.display()))?;
            Ok(Arc::new(kms))
        }
        #[cfg(feature = "aws")]
        KmsSettings::Aws(aws) => {
            let config = udim_aws::sdk_config(
                aws.region.as_deref(),
                aws.endpoint.as_deref(),
                settings.aws_credentials.as_ref(),
            )
            .await;
            let kms = udim_aws::AwsKms::new(&config, &aws.key_id)
                .await
                .with_context(|| format!("cannot use AWS KMS key `{}` (`kms.key_id`)", aws.key_id))?;
            Ok(Arc::new(kms))
        }
        other => Err(unavailable(other)),
    }
}

/// The notifier from `queue.*`; `None` when events stay in the outbox.
pub async fn notifier(settings: &Settings) -> anyhow::Result<Option<Arc<dyn Notifier>>> {
    match &settings.queue {
        QueueSettings::OutboxOnly => Ok(None),
        #[cfg(feature = "local")]
        QueueSettings::Rabbitmq(rabbitmq) => {
            use secrecy::ExposeSecret;
            use udim_local::rabbitmq::{RabbitMqConfig, RabbitMqNotifier};
            Ok(Some(Arc::new(RabbitMqNotifier::new(RabbitMqConfig {
                url: rabbitmq.url.expose_secret().to_owned(),
                exchange: rabbitmq.exchange.clone(),
                queue: rabbitmq.queue.clone(),
                binding_key: rabbitmq.binding_key.clone(),
                dead_letter_exchange: rabbitmq.dead_letter_exchange.clone(),
                dead_letter_queue: rabbitmq.dead_letter_queue.clone(),
            }))))
        }
        #[cfg(feature = "aws")]
        QueueSettings::Sqs(sqs) => {
            let config = udim_aws::sdk_config(
                sqs.region.as_deref(),
                sqs.endpoint.as_deref(),
                settings.aws_credentials.as_ref(),
            )
            .await;
            Ok(Some(Arc::new(udim_aws::SqsNotifier::new(&config, &sqs.queue_url))))
        }
        other => Err(unavailable(other)),
    }
}

/// The malware scanner from `scanner.*`, and what to do when it cannot decide.
pub fn scanner(settings: &Settings) -> (Arc<dyn MalwareScanner>, ScanPolicy) {
    match &settings.scanner {
        ScannerSettings::Disabled => (Arc::new(ScanningDisabled), ScanPolicy::default()),
        ScannerSettings::Clamd(clamd) => {
            let scanner = udim_local::clamd::Clamd::new(
                clamd.address.clone(),
                clamd.max_stream_bytes,
                std::time::Duration::from_secs(clamd.timeout_secs),
            );
            let policy = ScanPolicy {
                fail_open: clamd.fail_open,
                admit_too_large: clamd.admit_too_large,
            };
            (Arc::new(scanner), policy)
        }
    }
}

/// The consent ledger from `ledger.store`: the database's, or a legacy QLDB ledger.
pub async fn ledger(settings: &Settings, database: &udim_sql::Database) -> anyhow::Result<Arc<dyn ConsentLedger>> {
    match &settings.ledger.store {
        LedgerStore::Database => Ok(database.ledger.clone()),
        #[cfg(feature = "qldb")]
        LedgerStore::Qldb(qldb) => {
            tracing::warn!(
                ledger_name = qldb.ledger_name,
                "the consent ledger is on Amazon QLDB, which reached end of support on 2025-07-31; \
                 move it to the PostgreSQL ledger (docs/ledger.md)"
            );
            let config = udim_aws::sdk_config(
                qldb.region.as_deref(),
                qldb.endpoint.as_deref(),
                settings.aws_credentials.as_ref(),
            )
            .await;
            let client = udim_qldb::aws_sdk_qldbsession::Client::new(&config);
            let ledger = udim_qldb::QldbLedger::connect(client, &qldb.ledger_name)
                .await
                .with_context(|| format!("cannot use the QLDB ledger {}", qldb.ledger_name))?;
            Ok(Arc::new(ledger))
        }
        #[allow(unreachable_patterns, reason = "reachable in builds without the qldb feature")]
        other => Err(unavailable(other)),
    }
}
