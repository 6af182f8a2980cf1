//! Malware scanning, fed while an upload streams.

use async_trait::async_trait;

use crate::Result;

/// The scanner's finding for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected {
        signature: String,
    },
    /// The stream was not scanned (scanning disabled); the reason is recorded with the
    /// package.
    NotScanned {
        reason: String,
    },
    /// The stream was longer than the scanner can scan (`limit` bytes); what happens to the
    /// file is the service's configured policy.
    TooLarge {
        limit: u64,
    },
}

/// One scan in progress.
#[async_trait]
pub trait ScanSession: Send {
    async fn feed(&mut self, chunk: &[u8]) -> Result<()>;
    async fn finish(self: Box<Self>) -> Result<Verdict>;
}

/// Malware scanner port.
///
/// # Contract
/// - A session sees every byte of the upload in order, as it streams; the verdict is known
///   when `finish` returns and before the package can become `stored`.
/// - A scanner that cannot be reached gives [`crate::PortError::Unavailable`]; the caller
///   fails closed unless configured otherwise.
#[async_trait]
pub trait MalwareScanner: Send + Sync + std::fmt::Debug {
    async fn start(&self) -> Result<Box<dyn ScanSession>>;
    /// Checks that the scanner answers now (for readiness probes).
    async fn ping(&self) -> Result<()>;
}

/// Scanning switched off by configuration: every stream is `NotScanned`.
#[derive(Debug, Default)]
pub struct ScanningDisabled;

struct DisabledSession;

#[async_trait]
impl ScanSession for DisabledSession {
    async fn feed(&mut self, _chunk: &[u8]) -> Result<()> {
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<Verdict> {
        Ok(Verdict::NotScanned {
            reason: "scanning disabled by configuration".into(),
        })
    }
}

#[async_trait]
impl MalwareScanner for ScanningDisabled {
    async fn start(&self) -> Result<Box<dyn ScanSession>> {
        Ok(Box::new(DisabledSession))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
