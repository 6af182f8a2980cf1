//! The settings of each port's providers: one enum per port, tagged by `type`, whose
//! variants carry their provider's whole settings struct.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

/// Object storage provider. Each variant carries its provider's whole settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StorageSettings {
    /// Local filesystem.
    Filesystem(FilesystemSettings),
    /// Amazon S3 or an S3-compatible store (feature `aws`).
    S3(S3Settings),
    /// Google Cloud Storage (feature `gcp`).
    Gcs(GcsSettings),
    /// Azure Blob Storage (feature `azure`).
    Azure(AzureBlobSettings),
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self::Filesystem(FilesystemSettings::default())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemSettings {
    /// The objects' root; unset means `<data_dir>/objects` (filled in at load).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    /// Also encrypt objects with S3 SSE-KMS under this key (on top of UDIM's own).
    pub sse_kms_key_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsSettings {
    pub bucket: String,
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobSettings {
    pub account: String,
    pub container: String,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub use_emulator: bool,
}

/// Key management provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KmsSettings {
    /// A local key file.
    Local(LocalKmsSettings),
    /// AWS KMS (feature `aws`).
    Aws(AwsKmsSettings),
    /// Google Cloud KMS (feature `gcp`).
    Gcp(GcpKmsSettings),
    /// Azure Key Vault (feature `azure`).
    Azure(AzureKmsSettings),
}

impl Default for KmsSettings {
    fn default() -> Self {
        Self::Local(LocalKmsSettings::default())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalKmsSettings {
    /// The key file; unset means `<data_dir>/keys/kek.keys` (filled in at load), the one file
    /// both `udim serve` and `udim admin rotate-key` use.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsSettings {
    /// Key id, ARN or alias; packages record the key's ARN.
    pub key_id: String,
    pub region: Option<String>,
    /// A custom endpoint (a local stand-in, a VPC endpoint).
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpKmsSettings {
    /// The full CryptoKey resource name.
    pub key_name: String,
    /// An emulator or private endpoint.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKmsSettings {
    pub vault_url: String,
    pub key_name: String,
    pub key_version: Option<String>,
}

/// Where outbox events are relayed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueueSettings {
    /// Events stay in the outbox (see `GET /v1/admin/outbox` and `udim admin outbox`).
    #[default]
    OutboxOnly,
    /// RabbitMQ with publisher confirms (feature `local`).
    Rabbitmq(RabbitMqSettings),
    /// Amazon SQS (feature `aws`).
    Sqs(SqsSettings),
    /// Google Pub/Sub (feature `gcp`).
    Pubsub(PubsubSettings),
    /// Azure Queue Storage (feature `azure`).
    AzureQueue(AzureQueueSettings),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSettings {
    /// `amqp://user:password@host:port/vhost`: a secret, since it holds the password.
    pub url: SecretString,
    #[serde(default = "defaults::exchange")]
    pub exchange: String,
    #[serde(default = "defaults::queue")]
    pub queue: String,
    #[serde(default = "defaults::binding_key")]
    pub binding_key: String,
    #[serde(default = "defaults::dead_letter_exchange")]
    pub dead_letter_exchange: String,
    #[serde(default = "defaults::dead_letter_queue")]
    pub dead_letter_queue: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsSettings {
    /// A `.fifo` URL makes the event id the deduplication id.
    pub queue_url: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubSettings {
    /// The full `projects/P/topics/T`.
    pub topic: String,
    /// An emulator or private endpoint.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureQueueSettings {
    /// The queue's URL; may carry a SAS token.
    pub queue_url: SecretString,
}

mod defaults {
    pub fn clamd_max_stream_bytes() -> u64 {
        100 * 1024 * 1024
    }
    pub fn clamd_timeout_secs() -> u64 {
        60
    }
    pub fn exchange() -> String {
        "udim.events".into()
    }
    pub fn queue() -> String {
        "udim.package-events".into()
    }
    pub fn binding_key() -> String {
        "package.#".into()
    }
    pub fn dead_letter_exchange() -> String {
        "udim.events.dead-letter".into()
    }
    pub fn dead_letter_queue() -> String {
        "udim.package-events.dead-letter".into()
    }
}

/// Malware scanner.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScannerSettings {
    /// No scanning: packages are recorded `not_scanned`.
    #[default]
    Disabled,
    /// ClamAV's clamd.
    Clamd(ClamdSettings),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClamdSettings {
    /// `tcp://host:port` or `unix:///path/to/clamd.sock`, parsed at load.
    pub address: udim_local::clamd::ClamdAddress,
    /// clamd's StreamMaxLength; longer uploads follow `admit_too_large`. ClamAV cannot scan
    /// one stream over 2 GB.
    #[serde(default = "defaults::clamd_max_stream_bytes")]
    pub max_stream_bytes: u64,
    /// Admit uploads unscanned while clamd is unreachable (default: refuse them).
    #[serde(default)]
    pub fail_open: bool,
    /// Admit files over `max_stream_bytes` unscanned, recorded as such (default: refuse).
    #[serde(default)]
    pub admit_too_large: bool,
    #[serde(default = "defaults::clamd_timeout_secs")]
    pub timeout_secs: u64,
}

/// Where the consent ledger is stored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerStore {
    /// The service's database (PostgreSQL; SQLite in the embedded default): the supported
    /// ledger of every build.
    #[default]
    Database,
    /// Amazon QLDB (feature `qldb`). LEGACY: QLDB reached end of support on 2025-07-31; it is
    /// here only for deployments migrating off the original stack.
    Qldb(QldbSettings),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QldbSettings {
    pub ledger_name: String,
    pub region: Option<String>,
    /// A custom endpoint (a VPC endpoint, or a test stand-in).
    pub endpoint: Option<String>,
}
