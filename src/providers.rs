//! The provider factory: turns settings into port implementations. Each cloud arm exists
//! only when its Cargo feature is compiled in; otherwise it answers with an error that names
//! the feature to enable.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use udim_ports::kms::KeyService;
use udim_ports::ledger::ConsentLedger;
use udim_ports::queue::Notifier;
use udim_ports::scanner::{MalwareScanner, ScanningDisabled};
use udim_ports::storage::BlobStore;

use crate::config::{KmsSettings, LedgerStore, QueueSettings, ScannerSettings, Settings, StorageSettings};
use crate::ingest::ScanPolicy;

fn not_enabled(setting: &str, feature: &str) -> anyhow::Error {
    anyhow!(
        "configuration error: `{setting}` needs the `{feature}` feature, which this build does not include (cargo build --features {feature})"
    )
}

/// A provider whose feature may be compiled in but whose implementation has not landed yet.
fn not_available(setting: &str, feature: &str, compiled_in: bool) -> anyhow::Error {
    if compiled_in {
        anyhow!("configuration error: `{setting}` is not implemented yet in the `{feature}` build")
    } else {
        not_enabled(setting, feature)
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "aws")] {
        fn s3(bucket: &str, region: Option<&String>, endpoint: Option<&String>, allow_http: bool, sse_kms_key_id: Option<&String>) -> anyhow::Result<Arc<dyn BlobStore>> {
            let config = udim_aws::S3Config {
                bucket: bucket.to_owned(),
                region: region.cloned(),
                endpoint: endpoint.cloned(),
                allow_http,
                sse_kms_key_id: sse_kms_key_id.cloned(),
            };
            Ok(Arc::new(udim_aws::s3_storage(&config)?))
        }
    } else {
        fn s3(_: &str, _: Option<&String>, _: Option<&String>, _: bool, _: Option<&String>) -> anyhow::Result<Arc<dyn BlobStore>> {
            Err(not_enabled("storage.type = \"s3\"", "aws"))
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "gcp")] {
        fn gcs(bucket: &str, base_url: Option<&String>) -> anyhow::Result<Arc<dyn BlobStore>> {
            Ok(Arc::new(udim_gcp::gcs_storage(bucket, base_url.map(String::as_str))?))
        }
    } else {
        fn gcs(_: &str, _: Option<&String>) -> anyhow::Result<Arc<dyn BlobStore>> {
            Err(not_enabled("storage.type = \"gcs\"", "gcp"))
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "azure")] {
        fn azure_blob(account: &str, container: &str, endpoint: Option<&String>, use_emulator: bool) -> anyhow::Result<Arc<dyn BlobStore>> {
            Ok(Arc::new(udim_azure::blob_storage(account, container, endpoint.map(String::as_str), use_emulator)?))
        }
    } else {
        fn azure_blob(_: &str, _: &str, _: Option<&String>, _: bool) -> anyhow::Result<Arc<dyn BlobStore>> {
            Err(not_enabled("storage.type = \"azure\"", "azure"))
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "local")] {
        fn rabbitmq(s: &crate::config::RabbitMqSettings) -> anyhow::Result<Arc<dyn Notifier>> {
            use secrecy::ExposeSecret;
            Ok(Arc::new(udim_local::rabbitmq::RabbitMqNotifier::new(udim_local::rabbitmq::RabbitMqConfig {
                url: s.url.expose_secret().to_owned(),
                exchange: s.exchange.clone(),
                queue: s.queue.clone(),
                binding_key: s.binding_key.clone(),
                dead_letter_exchange: s.dead_letter_exchange.clone(),
                dead_letter_queue: s.dead_letter_queue.clone(),
            })))
        }
    } else {
        fn rabbitmq(_: &crate::config::RabbitMqSettings) -> anyhow::Result<Arc<dyn Notifier>> {
            Err(not_enabled("queue.type = \"rabbitmq\"", "local"))
        }
    }
}

/// Object storage from `storage.*`.
pub fn storage(settings: &Settings) -> anyhow::Result<Arc<dyn BlobStore>> {
    match &settings.storage {
        StorageSettings::Filesystem { path } => {
            let root = path.clone().unwrap_or_else(|| settings.data_dir.join("objects"));
            let store = udim_local::fs::build(&root)
                .with_context(|| format!("cannot use {} for object storage", root.display()))?;
            Ok(Arc::new(store))
        }
        StorageSettings::S3 {
            bucket,
            region,
            endpoint,
            allow_http,
            sse_kms_key_id,
        } => s3(
            bucket,
            region.as_ref(),
            endpoint.as_ref(),
            *allow_http,
            sse_kms_key_id.as_ref(),
        ),
        StorageSettings::Gcs { bucket, base_url } => gcs(bucket, base_url.as_ref()),
        StorageSettings::Azure {
            account,
            container,
            endpoint,
            use_emulator,
        } => azure_blob(account, container, endpoint.as_ref(), *use_emulator),
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "aws")] {
        async fn aws_kms(key_id: &str, region: Option<&str>, endpoint: Option<&str>) -> anyhow::Result<Arc<dyn KeyService>> {
            let config = udim_aws::sdk_config(region, endpoint).await;
            let kms = udim_aws::AwsKms::new(&config, key_id)
                .await
                .with_context(|| format!("cannot use AWS KMS key `{key_id}` (`kms.key_id`)"))?;
            Ok(Arc::new(kms))
        }

        async fn sqs(queue_url: &str, region: Option<&str>, endpoint: Option<&str>) -> anyhow::Result<Arc<dyn Notifier>> {
            let config = udim_aws::sdk_config(region, endpoint).await;
            Ok(Arc::new(udim_aws::SqsNotifier::new(&config, queue_url)))
        }
    } else {
        async fn aws_kms(_: &str, _: Option<&str>, _: Option<&str>) -> anyhow::Result<Arc<dyn KeyService>> {
            Err(not_enabled("kms.type = \"aws\"", "aws"))
        }

        async fn sqs(_: &str, _: Option<&str>, _: Option<&str>) -> anyhow::Result<Arc<dyn Notifier>> {
            Err(not_enabled("queue.type = \"sqs\"", "aws"))
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "qldb")] {
        async fn qldb(ledger_name: &str, region: Option<&str>, endpoint: Option<&str>) -> anyhow::Result<Arc<dyn ConsentLedger>> {
            tracing::warn!(
                ledger_name,
                "the consent ledger is on Amazon QLDB, which reached end of support on 2025-07-31; \
                 move it to the PostgreSQL ledger (docs/ledger.md)"
            );
            let config = udim_aws::sdk_config(region, endpoint).await;
            let client = udim_qldb::aws_sdk_qldbsession::Client::new(&config);
            let ledger = udim_qldb::QldbLedger::connect(client, ledger_name)
                .await
                .with_context(|| format!("cannot use the QLDB ledger {ledger_name}"))?;
            Ok(Arc::new(ledger))
        }
    } else {
        async fn qldb(_: &str, _: Option<&str>, _: Option<&str>) -> anyhow::Result<Arc<dyn ConsentLedger>> {
            Err(not_enabled("ledger.store.type = \"qldb\"", "qldb"))
        }
    }
}

/// The consent ledger from `ledger.store`: the database's, or a legacy QLDB ledger.
pub async fn ledger(settings: &Settings, database: &udim_sql::Database) -> anyhow::Result<Arc<dyn ConsentLedger>> {
    match &settings.ledger.store {
        LedgerStore::Database => Ok(database.ledger.clone()),
        LedgerStore::Qldb {
            ledger_name,
            region,
            endpoint,
        } => qldb(ledger_name, region.as_deref(), endpoint.as_deref()).await,
    }
}

/// Key management from `kms.*`.
pub async fn kms(settings: &Settings) -> anyhow::Result<Arc<dyn KeyService>> {
    match &settings.kms {
        KmsSettings::Local { key_file } => {
            let path = key_file
                .clone()
                .unwrap_or_else(|| settings.data_dir.join("keys").join("kek.keys"));
            let kms = udim_local::keyfile::LocalKeyFile::open_or_create(&path)
                .with_context(|| format!("cannot use the key file {}", path.display()))?;
            Ok(Arc::new(kms))
        }
        KmsSettings::Aws {
            key_id,
            region,
            endpoint,
        } => aws_kms(key_id, region.as_deref(), endpoint.as_deref()).await,
        KmsSettings::Gcp { .. } => Err(not_available("kms.type = \"gcp\"", "gcp", cfg!(feature = "gcp"))),
        KmsSettings::Azure { .. } => Err(not_available("kms.type = \"azure\"", "azure", cfg!(feature = "azure"))),
    }
}

/// The notifier from `queue.*`; `None` when events stay in the outbox.
pub async fn notifier(settings: &Settings) -> anyhow::Result<Option<Arc<dyn Notifier>>> {
    match &settings.queue {
        QueueSettings::OutboxOnly => Ok(None),
        QueueSettings::Rabbitmq(s) => rabbitmq(s).map(Some),
        QueueSettings::Sqs {
            queue_url,
            region,
            endpoint,
        } => sqs(queue_url, region.as_deref(), endpoint.as_deref()).await.map(Some),
        QueueSettings::Pubsub { .. } => Err(not_available("queue.type = \"pubsub\"", "gcp", cfg!(feature = "gcp"))),
        QueueSettings::AzureQueue { .. } => Err(not_available(
            "queue.type = \"azure_queue\"",
            "azure",
            cfg!(feature = "azure"),
        )),
    }
}

/// The malware scanner from `scanner.*`, and what to do when it cannot decide.
pub fn scanner(settings: &Settings) -> anyhow::Result<(Arc<dyn MalwareScanner>, ScanPolicy)> {
    match &settings.scanner {
        ScannerSettings::Disabled => Ok((Arc::new(ScanningDisabled), ScanPolicy::default())),
        ScannerSettings::Clamd {
            address,
            max_stream_bytes,
            fail_open,
            admit_too_large,
            timeout_secs,
        } => {
            use udim_local::clamd::{Clamd, ClamdAddress};
            let address = match (address.strip_prefix("tcp://"), address.strip_prefix("unix://")) {
                (Some(tcp), _) => ClamdAddress::Tcp(tcp.to_owned()),
                (_, Some(path)) => ClamdAddress::Unix(path.into()),
                _ => anyhow::bail!("configuration error: `scanner.address` must be tcp://… or unix://…"),
            };
            let clamd = Clamd::new(
                address,
                *max_stream_bytes,
                std::time::Duration::from_secs(*timeout_secs),
            );
            let policy = ScanPolicy {
                fail_open: *fail_open,
                admit_too_large: *admit_too_large,
            };
            Ok((Arc::new(clamd), policy))
        }
    }
}
