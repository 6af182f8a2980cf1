//! Settings, layered with figment: built-in defaults → `config/default.toml` → the profile
//! file named by `UDIM_PROFILE` (`config/<profile>.toml`) → `UDIM_*` environment variables
//! (`__` separates nested keys: `UDIM_SERVER__LISTEN` is `server.listen`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

mod providers;
pub use providers::*;

/// All settings. Every field has a default, so an empty configuration runs the embedded
/// profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded default keeps all its state (database, objects, keys, secrets).
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub kms: KmsSettings,
    pub queue: QueueSettings,
    pub scanner: ScannerSettings,
    pub auth: AuthSettings,
    pub upload: UploadSettings,
    pub outbox: OutboxSettings,
    pub ledger: LedgerSettings,
    pub log: LogSettings,
    pub limits: LimitSettings,
    /// Credentials every AWS provider signs with instead of the standard chain. Set by code
    /// (tests against moto, an embedding application), never read from configuration, so
    /// no secret can sit in a configuration file.
    #[cfg(feature = "aws")]
    #[serde(skip)]
    pub aws_credentials: Option<udim_aws::SharedCredentialsProvider>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            storage: StorageSettings::default(),
            kms: KmsSettings::default(),
            queue: QueueSettings::default(),
            scanner: ScannerSettings::default(),
            auth: AuthSettings::default(),
            upload: UploadSettings::default(),
            outbox: OutboxSettings::default(),
            ledger: LedgerSettings::default(),
            log: LogSettings::default(),
            limits: LimitSettings::default(),
            #[cfg(feature = "aws")]
            aws_credentials: None,
        }
    }
}

/// A century: a longer retention (of packages or sent events) is a typo, not a policy.
const MAX_RETENTION_DAYS: u32 = 36_500;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// How long shutdown waits for in-flight requests (uploads) to finish.
    pub shutdown_grace_secs: u64,
    /// Browser origins allowed to call the API (CORS), e.g. a web app running Uppy. Empty:
    /// no cross-origin access.
    pub cors_allowed_origins: Vec<String>,
    /// Serve Prometheus metrics at `GET /metrics` (no authentication: restrict it to the
    /// scraper at the network layer).
    pub metrics: bool,
    /// A connection must send a whole request head within this long (from the moment it
    /// opens, and between requests on a kept-alive connection), or it is closed.
    pub header_read_timeout_secs: u64,
    /// The largest request head (request line and headers) accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// The most header fields a request may carry; more get 431.
    pub max_headers: usize,
    /// A request body may pause this long between reads, and a client this long between
    /// reading parts of a response; a stalled upload or download is cut.
    pub body_idle_timeout_secs: u64,
    /// A request body must bring at least this many bytes per second over each
    /// `body_idle_timeout_secs` the service spends waiting for it (time the service spends
    /// elsewhere does not count), so a trickle cannot hold an upload for ever; 0: any moving
    /// body is kept.
    pub body_min_bytes_per_sec: u64,
    /// Every read that does not stream (uploads, tus PATCH and HEAD, content reads and
    /// exports stream) must be answered within this long, or it gets 503 `request-timeout`.
    /// Changes (consents, deletions, erasure) are not cut: they run to completion.
    pub request_timeout_secs: u64,
    /// Connections open at once; beyond it new ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_secs: 30,
            cors_allowed_origins: Vec::new(),
            metrics: true,
            header_read_timeout_secs: 10,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            body_idle_timeout_secs: 30,
            body_min_bytes_per_sec: 500,
            request_timeout_secs: 30,
            max_connections: 2048,
        }
    }
}

/// Admission bounds per replica (`limits.*`): refusals are 429 with `Retry-After`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Uploads (simple ones, tus PATCHes and creations with data) one user may have in
    /// progress at once.
    pub uploads_in_flight_per_user: usize,
    /// Uploads in progress at once, all users together.
    pub uploads_in_flight: usize,
    /// Uploads one user may start per second (a burst of as many); 0: unlimited.
    pub uploads_per_second_per_user: u32,
    /// Consent grants, updates and withdrawals one user may make per second; 0: unlimited.
    pub consent_changes_per_second_per_user: u32,
    /// Uploads started per second by all users together (per replica); 0 is no limit.
    pub uploads_per_second: u32,
    /// Consent changes per second by all users together (per replica); 0 is no limit.
    pub consent_changes_per_second: u32,
    /// Unfinished tus uploads one user may have at once.
    pub open_uploads_per_user: usize,
    /// Bytes one user's unfinished tus uploads may declare together (`Upload-Length`s).
    pub staged_bytes_per_user: u64,
    /// Memory for upload buffers (storage parts being filled and in flight, each upload's
    /// own buffers), shared by all uploads of the process. An upload that would pass it waits,
    /// unread, for at most `server.body_idle_timeout_secs`, then gets 503.
    pub upload_buffer_bytes: u64,
    /// What one user's uploads may hold of `upload_buffer_bytes` together.
    pub upload_buffer_bytes_per_user: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            uploads_in_flight_per_user: 8,
            uploads_in_flight: 512,
            uploads_per_second_per_user: 50,
            consent_changes_per_second_per_user: 20,
            uploads_per_second: 0,
            consent_changes_per_second: 0,
            open_uploads_per_user: 100,
            staged_bytes_per_user: 64 * 1024 * 1024 * 1024,
            upload_buffer_bytes: 256 * 1024 * 1024,
            upload_buffer_bytes_per_user: 128 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`; unset means `sqlite://<data_dir>/udim.db`. May hold a
    /// password, so it is a secret.
    pub url: Option<DatabaseUrl>,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
    /// Apply pending migrations when `udim serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            acquire_timeout_secs: 10,
            migrate_on_start: true,
        }
    }
}

/// A database URL, its engine checked at load. It may hold a password: never logged.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct DatabaseUrl {
    url: SecretString,
    engine: udim_sql::Engine,
}

impl DatabaseUrl {
    pub fn sqlite_file(path: &Path) -> Self {
        Self {
            url: SecretString::from(format!("sqlite://{}", path.display())),
            engine: udim_sql::Engine::Sqlite,
        }
    }

    pub fn expose_secret(&self) -> &str {
        use secrecy::ExposeSecret;
        self.url.expose_secret()
    }

    pub fn engine(&self) -> udim_sql::Engine {
        self.engine
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = &'static str;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        let engine = udim_sql::Engine::of(&url).ok_or("must start with postgres://, postgresql:// or sqlite:")?;
        Ok(Self {
            url: SecretString::from(url),
            engine,
        })
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({}, [REDACTED])", self.engine.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// HS256 secret. Unset with no `jwks_url`: generated into `<data_dir>/secrets/jwt-hs256`.
    pub hs256_secret: Option<SecretString>,
    /// JWKS URL for RS256/ES256 tokens from an identity provider.
    pub jwks_url: Option<String>,
    /// The fetched key set is refreshed in the background once it is this old (known keys
    /// keep working meanwhile, and while the identity provider is down).
    pub jwks_refresh_secs: u64,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Lifetime of tokens minted by `udim token`.
    pub token_ttl_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "udim-local".into(),
            audience: "udim".into(),
            hs256_secret: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            leeway_secs: 30,
            token_ttl_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadSettings {
    /// Largest accepted upload, in bytes.
    pub max_bytes: u64,
    /// Uploads still receiving after this long are treated as abandoned and cleaned up.
    pub abandon_after_secs: u64,
    /// A resumable (tus) upload expires this long after its last write (`Upload-Expires`).
    pub resumable_expire_after_secs: u64,
    /// How often abandoned and expired uploads are looked for and removed.
    pub sweep_interval_secs: u64,
    /// Per data category: the media types admitted (checked against the type sniffed from
    /// the content) and an optional size cap. Categories not listed admit any type.
    pub categories: std::collections::BTreeMap<String, crate::formats::content::CategoryPolicy>,
    /// `record` (admit, keep both types) or `reject` (415) when the declared type and the
    /// sniffed type differ.
    pub type_mismatch: crate::formats::content::MismatchPolicy,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024 * 1024,
            abandon_after_secs: 24 * 3600,
            resumable_expire_after_secs: 24 * 3600,
            sweep_interval_secs: 60,
            categories: Default::default(),
            type_mismatch: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// How often the relay looks for due events when nothing wakes it.
    pub poll_interval_ms: u64,
    pub batch_size: u32,
    /// First retry delay; doubles per failed attempt up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long publishing one batch may take; past it, the events not yet confirmed are
    /// given back and retried.
    pub batch_timeout_secs: u64,
    /// Days a sent event stays in the outbox (for `udim admin outbox`) before the sweeper
    /// deletes it; 0 keeps them forever.
    pub keep_sent_days: u32,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            batch_size: 64,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            batch_timeout_secs: 30,
            keep_sent_days: 30,
        }
    }
}

/// The most `outbox.batch_timeout_secs` may be: well inside the relay's 60 s lease on a batch
/// (the relay checks it at compile time).
pub const MAX_BATCH_TIMEOUT_SECS: u64 = 45;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSettings {
    /// The log's name: the checkpoint origin line and the signing key's name.
    pub origin: String,
    /// The Ed25519 checkpoint signing key, `PRIVATE+KEY+<origin>+<id>+<base64>` (make one with
    /// `udim ledger keygen`). Required on PostgreSQL, unless `signing_key_file` is set: every
    /// replica must sign with the same key. On SQLite, unset means one is generated into
    /// `<data_dir>/secrets/ledger-signing-key` on first start.
    pub signing_key: Option<SecretString>,
    /// A file holding the signing key (a mounted secret); it must exist, mode 0600.
    pub signing_key_file: Option<PathBuf>,
    /// Most entries appended (and signed) in one transaction.
    pub max_batch: usize,
    /// Where the log is stored.
    pub store: LedgerStore,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            origin: "udim.local/consent-ledger".into(),
            signing_key: None,
            signing_key_file: None,
            max_batch: 256,
            store: LedgerStore::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info,udim=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the ledger's checkpoint signing key comes from.
#[derive(Debug, Clone)]
pub enum SigningKeySource {
    /// `ledger.signing_key`.
    Configured(SecretString),
    /// `ledger.signing_key_file`: must exist.
    File(PathBuf),
    /// Generated into this file on first start (SQLite only).
    Generated(PathBuf),
}

/// A configuration problem, as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

fn one_line(error: figment::Error) -> ConfigError {
    let parts: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("`{key}`: {}{source}", e.kind)
            }
        })
        .collect();
    ConfigError(parts.join("; ").split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Settings {
    /// Loads settings from `config_dir` and the environment, as the module docs describe.
    pub fn load(config_dir: &Path) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        let defaults = config_dir.join("default.toml");
        // Optional: the binary must start with no configuration at all (embedded default).
        if defaults.is_file() {
            figment = figment.merge(Toml::file_exact(defaults));
        }
        if let Ok(profile) = std::env::var("UDIM_PROFILE") {
            let file = config_dir.join(format!("{profile}.toml"));
            if !file.is_file() {
                return Err(ConfigError(format!(
                    "`UDIM_PROFILE` is `{profile}` but {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("UDIM_").ignore(&["profile", "config_dir"]).split("__"));
        let mut settings: Settings = figment.extract().map_err(one_line)?;
        settings.validate()?;
        settings.resolve();
        Ok(settings)
    }

    /// Fills in the paths derived from `data_dir`, once, so every reader (the service, the
    /// CLI) sees the same ones (the database URL's default is [`Settings::database_url`]'s).
    /// Idempotent; [`Settings::load`] calls it, and so does the application builder for
    /// settings made in code.
    pub fn resolve(&mut self) {
        if let StorageSettings::Filesystem(fs) = &mut self.storage
            && fs.path.as_os_str().is_empty()
        {
            fs.path = self.data_dir.join("objects");
        }
        if let KmsSettings::Local(local) = &mut self.kms
            && local.key_file.as_os_str().is_empty()
        {
            local.key_file = self.data_dir.join("keys").join("kek.keys");
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // The identity provider's tokens never carry the issuer of locally minted ones: left
        // at it, every token would be refused, or, worse, checked against nothing meant.
        if self.auth.jwks_url.is_some() && self.auth.issuer == AuthSettings::default().issuer {
            return Err(ConfigError::new(
                "`auth.issuer` must be set to the identity provider's issuer when `auth.jwks_url` is",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::new("`database.max_connections` must be at least 1"));
        }
        if self.upload.max_bytes == 0 {
            return Err(ConfigError::new("`upload.max_bytes` must be at least 1"));
        }
        if let ScannerSettings::Clamd(clamd) = &self.scanner
            && (clamd.max_stream_bytes == 0 || clamd.max_stream_bytes >= 2 * 1024 * 1024 * 1024)
        {
            return Err(ConfigError::new(
                "`scanner.max_stream_bytes` must be 1 byte to just under 2 GiB",
            ));
        }
        if self.ledger.max_batch == 0 || self.ledger.max_batch > 4096 {
            return Err(ConfigError::new("`ledger.max_batch` must be 1-4096"));
        }
        if let Some((category, _)) = self
            .upload
            .categories
            .iter()
            .find(|(_, policy)| policy.retention_days.is_some_and(|d| d == 0 || d > MAX_RETENTION_DAYS))
        {
            return Err(ConfigError::new(format!(
                "`upload.categories.{category}.retention_days` must be 1-{MAX_RETENTION_DAYS}"
            )));
        }
        if self.outbox.keep_sent_days > MAX_RETENTION_DAYS {
            return Err(ConfigError::new(format!(
                "`outbox.keep_sent_days` must be 0 (forever) to {MAX_RETENTION_DAYS}"
            )));
        }
        if self.outbox.batch_size == 0 {
            return Err(ConfigError::new("`outbox.batch_size` must be at least 1"));
        }
        // A zero back-off would make every failing pass start the next at once.
        if self.outbox.initial_backoff_ms == 0 || self.outbox.max_backoff_ms < self.outbox.initial_backoff_ms {
            return Err(ConfigError::new(
                "`outbox.initial_backoff_ms` must be at least 1, and `outbox.max_backoff_ms` at least that",
            ));
        }
        if !(1..=MAX_BATCH_TIMEOUT_SECS).contains(&self.outbox.batch_timeout_secs) {
            return Err(ConfigError::new(format!(
                "`outbox.batch_timeout_secs` must be 1-{MAX_BATCH_TIMEOUT_SECS}: a batch must be published \
                 well inside the relay's lease on it"
            )));
        }
        Ok(())
    }

    /// The database URL (SQLite under `data_dir` unless configured).
    pub fn database_url(&self) -> DatabaseUrl {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| DatabaseUrl::sqlite_file(&self.data_dir.join("udim.db")))
    }

    /// Where the ledger's signing key comes from. A generated key is refused on PostgreSQL:
    /// replicas sharing the database would each generate their own and refuse each other's
    /// checkpoints. The key is never kept in the database, whose tampering its signatures
    /// exist to expose.
    pub fn signing_key_source(&self) -> Result<SigningKeySource, ConfigError> {
        match (&self.ledger.signing_key, &self.ledger.signing_key_file) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "set one of `ledger.signing_key` and `ledger.signing_key_file`, not both",
            )),
            (Some(key), None) => Ok(SigningKeySource::Configured(key.clone())),
            (None, Some(file)) => Ok(SigningKeySource::File(file.clone())),
            (None, None) if self.database_url().engine() == udim_sql::Engine::Postgres => Err(ConfigError::new(
                "`ledger.signing_key` (or `ledger.signing_key_file`) is required on PostgreSQL, so that every \
                 replica signs with the same key: a deployment that ran with a generated key configures that one \
                 (`<data_dir>/secrets/ledger-signing-key`, or `udim ledger verify` refuses its checkpoints); a new \
                 one is made with `udim ledger keygen`",
            )),
            (None, None) => Ok(SigningKeySource::Generated(
                self.data_dir.join("secrets").join("ledger-signing-key"),
            )),
        }
    }

    pub fn hs256_secret_file(&self) -> PathBuf {
        self.data_dir.join("secrets").join("jwt-hs256")
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment::Jail fixes its closures' error type")]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_the_embedded_profile() {
        Jail::expect_with(|_| {
            let s = Settings::load(Path::new(".")).unwrap();
            assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(s.data_dir, PathBuf::from("./data"));
            assert!(matches!(s.queue, QueueSettings::OutboxOnly));
            assert!(matches!(&s.storage, StorageSettings::Filesystem(fs) if fs.path == Path::new("./data/objects")));
            Ok(())
        });
    }

    #[test]
    fn profile_file_then_environment_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("default.toml", "[server]\nlisten = \"127.0.0.1:1\"\n")?;
            jail.create_file(
                "local.toml",
                "[server]\nlisten = \"127.0.0.1:2\"\n[queue]\ntype = \"rabbitmq\"\nurl = \"amqp://x\"\n",
            )?;
            jail.set_env("UDIM_PROFILE", "local");
            jail.set_env("UDIM_SERVER__LISTEN", "127.0.0.1:3");
            jail.set_env("UDIM_DATA_DIR", "/tmp/udim-x");
            let s = Settings::load(Path::new(".")).unwrap();
            assert_eq!(s.server.listen.to_string(), "127.0.0.1:3");
            assert_eq!(s.data_dir, PathBuf::from("/tmp/udim-x"));
            assert!(matches!(s.queue, QueueSettings::Rabbitmq(_)));
            Ok(())
        });
    }

    #[test]
    fn a_bad_setting_is_one_line_naming_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("UDIM_SERVER__LISTEN", "not-an-address");
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("`server.listen`"), "{err}");
            assert!(!err.contains('\n'), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_or_missing_profile_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("default.toml", "[server]\nlisen = \"127.0.0.1:1\"\n")?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("lisen"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("UDIM_PROFILE", "nope");
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("UDIM_PROFILE"), "{err}");
            Ok(())
        });
    }

    /// The `kubernetes.toml` block of `deploy/kubernetes/udim.yaml`'s ConfigMap.
    fn kubernetes_profile() -> String {
        let manifest = include_str!("../deploy/kubernetes/udim.yaml");
        manifest
            .lines()
            .skip_while(|line| line.trim() != "kubernetes.toml: |")
            .skip(1)
            .take_while(|line| line.starts_with("    "))
            .map(|line| format!("{}\n", &line[4..]))
            .collect()
    }

    #[test]
    fn the_kubernetes_manifest_adds_its_profile_to_the_images_defaults() {
        let profile = kubernetes_profile();
        assert!(profile.contains("[server]"), "the ConfigMap's profile: {profile}");
        Jail::expect_with(|jail| {
            // The image's /etc/udim is the repository's config/; the ConfigMap adds one file.
            jail.create_file("default.toml", include_str!("../config/default.toml"))?;
            jail.create_file("kubernetes.toml", &profile)?;
            jail.set_env("UDIM_PROFILE", "kubernetes");
            jail.set_env("UDIM_AUTH__JWKS_URL", "https://idp.example/.well-known/jwks.json");
            let settings = Settings::load(Path::new(".")).unwrap();
            assert_eq!(
                settings.server.listen.to_string(),
                "0.0.0.0:8080",
                "the profile applies"
            );
            assert!(
                ["documents", "audio", "video", "images"]
                    .iter()
                    .all(|category| settings.upload.categories.contains_key(*category)),
                "and the image's category allow-lists are still there: {:?}",
                settings.upload.categories.keys().collect::<Vec<_>>()
            );
            Ok(())
        });
    }

    #[test]
    fn an_identity_provider_without_its_issuer_is_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("UDIM_AUTH__JWKS_URL", "https://idp.example/.well-known/jwks.json");
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("`auth.issuer`"), "{err}");
            jail.set_env("UDIM_AUTH__ISSUER", "https://idp.example");
            Settings::load(Path::new(".")).expect("with its issuer");
            Ok(())
        });
    }

    #[test]
    fn relay_timings_that_would_spin_or_outlive_the_lease_are_refused() {
        for (key, value) in [
            ("UDIM_OUTBOX__BATCH_TIMEOUT_SECS", "0"),
            ("UDIM_OUTBOX__BATCH_TIMEOUT_SECS", "46"),
            ("UDIM_OUTBOX__INITIAL_BACKOFF_MS", "0"),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(key, value);
                let err = Settings::load(Path::new(".")).unwrap_err().to_string();
                let setting = key.trim_start_matches("UDIM_OUTBOX__").to_lowercase();
                assert!(err.contains(&format!("`outbox.{setting}`")), "{key}={value}: {err}");
                Ok(())
            });
        }
        Jail::expect_with(|jail| {
            jail.set_env("UDIM_OUTBOX__BATCH_TIMEOUT_SECS", "45");
            assert_eq!(Settings::load(Path::new(".")).unwrap().outbox.batch_timeout_secs, 45);
            Ok(())
        });
    }

    #[test]
    fn a_zero_day_retention_would_erase_everything_and_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "default.toml",
                "[upload.categories.audio]\nallowed_types = [\"audio/*\"]\nretention_days = 0\n",
            )?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("upload.categories.audio.retention_days"), "{err}");
            jail.create_file(
                "default.toml",
                "[upload.categories.audio]\nallowed_types = [\"audio/*\"]\nretention_days = 30\n",
            )?;
            let s = Settings::load(Path::new(".")).unwrap();
            assert_eq!(s.upload.categories["audio"].retention_days, Some(30));
            Ok(())
        });
    }

    #[test]
    fn provider_settings_are_parsed_whole_at_load_and_their_typos_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "default.toml",
                "[storage]\ntype = \"s3\"\nbucket = \"b\"\n[scanner]\ntype = \"clamd\"\naddress = \"unix:///run/clamd.sock\"\n",
            )?;
            let s = Settings::load(Path::new(".")).unwrap();
            assert!(matches!(&s.storage, StorageSettings::S3(s3) if s3.bucket == "b" && !s3.allow_http));
            assert!(matches!(
                &s.scanner,
                ScannerSettings::Clamd(c) if c.address == udim_local::clamd::ClamdAddress::Unix("/run/clamd.sock".into())
            ));
            jail.create_file(
                "default.toml",
                "[storage]\ntype = \"s3\"\nbucket = \"b\"\nbukcet = \"c\"\n",
            )?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("bukcet"), "{err}");
            jail.create_file(
                "default.toml",
                "[scanner]\ntype = \"clamd\"\naddress = \"127.0.0.1:3310\"\n",
            )?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("`scanner`") && err.contains("tcp://"), "{err}");
            jail.create_file("default.toml", "[database]\nurl = \"mysql://x\"\n")?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("database.url") && err.contains("postgres://"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn paths_derived_from_data_dir_are_resolved_once_for_every_reader() {
        Jail::expect_with(|jail| {
            jail.set_env("UDIM_DATA_DIR", "/srv/udim");
            let s = Settings::load(Path::new(".")).unwrap();
            assert!(matches!(&s.kms, KmsSettings::Local(k) if k.key_file == Path::new("/srv/udim/keys/kek.keys")));
            assert!(matches!(&s.storage, StorageSettings::Filesystem(f) if f.path == Path::new("/srv/udim/objects")));
            assert_eq!(s.database_url().expose_secret(), "sqlite:///srv/udim/udim.db");
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        Jail::expect_with(|jail| {
            jail.set_env("UDIM_AUTH__HS256_SECRET", "s3cr3t-value");
            jail.set_env("UDIM_DATABASE__URL", "postgres://u:hunter2@localhost/db");
            let s = Settings::load(Path::new(".")).unwrap();
            let debug = format!("{s:?}");
            assert!(!debug.contains("s3cr3t-value") && !debug.contains("hunter2"), "{debug}");
            Ok(())
        });
    }
}
