//! Malware scanning with ClamAV's clamd over TCP or a Unix socket, using `zINSTREAM`: the
//! upload is streamed to clamd while it arrives, never stored in plaintext for a second pass.
//!
//! Protocol: `zINSTREAM\0`, then chunks each prefixed by a 4-byte big-endian length, then a
//! zero length; clamd answers `stream: OK\0`, `stream: <signature> FOUND\0`, or
//! `INSTREAM size limit exceeded. ERROR\0` past its StreamMaxLength.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use udim_ports::scanner::{MalwareScanner, ScanSession, Verdict};
use udim_ports::{PortError, Result};

const PROVIDER: &str = "clamd";
/// clamd's default StreamMaxLength is 100 MB and it can never scan more than 2 GB in one
/// stream; chunks stay well under its per-chunk expectations.
const CHUNK: usize = 64 * 1024;
const CONNECT_ATTEMPTS: u32 = 3;

/// Where clamd listens: `tcp://host:port` or `unix:///path/to/clamd.sock`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum ClamdAddress {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl TryFrom<String> for ClamdAddress {
    type Error = &'static str;

    fn try_from(address: String) -> std::result::Result<Self, Self::Error> {
        match (address.strip_prefix("tcp://"), address.strip_prefix("unix://")) {
            (Some(tcp), _) if !tcp.is_empty() => Ok(Self::Tcp(tcp.to_owned())),
            (_, Some(path)) if !path.is_empty() => Ok(Self::Unix(path.into())),
            _ => Err("`scanner.address` must be tcp://host:port or unix:///path"),
        }
    }
}

/// [`MalwareScanner`] on clamd.
#[derive(Debug, Clone)]
pub struct Clamd {
    address: ClamdAddress,
    /// The largest stream clamd will scan (its StreamMaxLength); more is `TooLarge`.
    max_stream_bytes: u64,
    timeout: Duration,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Clamd {
    pub fn new(address: ClamdAddress, max_stream_bytes: u64, timeout: Duration) -> Self {
        Self {
            address,
            max_stream_bytes,
            timeout,
        }
    }

    async fn connect_once(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match &self.address {
            ClamdAddress::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
            ClamdAddress::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }

    /// Connects with a few quick retries: a clamd that is reloading its signatures refuses
    /// connections for a moment.
    async fn connect(&self) -> Result<Box<dyn Stream>> {
        let mut last = None;
        for attempt in 0..CONNECT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match tokio::time::timeout(self.timeout, self.connect_once()).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("connect timed out".into()),
            }
        }
        Err(PortError::unavailable(PROVIDER, last.unwrap_or_default()))
    }
}

/// Writes all of `bytes` within `timeout`: a clamd that stops reading holds no upload.
async fn send(stream: &mut Box<dyn Stream>, bytes: &[u8], timeout: Duration) -> Result<()> {
    tokio::time::timeout(timeout, stream.write_all(bytes))
        .await
        .map_err(|_| PortError::unavailable(PROVIDER, "clamd stopped reading"))?
        .map_err(|e| PortError::unavailable(PROVIDER, e))
}

async fn read_reply(stream: &mut Box<dyn Stream>, timeout: Duration) -> Result<String> {
    let mut reply = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        loop {
            if stream.read(&mut byte).await? == 0 || byte[0] == 0 {
                return Ok::<_, std::io::Error>(());
            }
            reply.push(byte[0]);
            if reply.len() > 4096 {
                return Err(std::io::Error::other("clamd reply too long"));
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| PortError::unavailable(PROVIDER, "no reply from clamd"))?
        .map_err(|e| PortError::unavailable(PROVIDER, e))?;
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

/// Turns clamd's answer into a verdict (pure, for testing).
pub fn parse_reply(reply: &str, limit: u64) -> Result<Verdict> {
    if let Some(rest) = reply.strip_prefix("stream: ") {
        if rest == "OK" {
            return Ok(Verdict::Clean);
        }
        if let Some(signature) = rest.strip_suffix(" FOUND") {
            return Ok(Verdict::Infected {
                signature: signature.to_owned(),
            });
        }
    }
    if reply.contains("size limit exceeded") {
        return Ok(Verdict::TooLarge { limit });
    }
    Err(PortError::generic(PROVIDER, format!("scan failed: {reply}")))
}

struct Session {
    stream: Box<dyn Stream>,
    sent: u64,
    limit: u64,
    over_limit: bool,
    timeout: Duration,
}

#[async_trait]
impl ScanSession for Session {
    async fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        if self.over_limit {
            return Ok(());
        }
        if self.sent + chunk.len() as u64 > self.limit {
            // Stop feeding: clamd would refuse the stream anyway, and the policy decides.
            self.over_limit = true;
            return Ok(());
        }
        for piece in chunk.chunks(CHUNK) {
            let mut frame = Vec::with_capacity(4 + piece.len());
            frame.extend_from_slice(&(piece.len() as u32).to_be_bytes());
            frame.extend_from_slice(piece);
            send(&mut self.stream, &frame, self.timeout).await?;
        }
        self.sent += chunk.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Verdict> {
        if self.over_limit {
            return Ok(Verdict::TooLarge { limit: self.limit });
        }
        send(&mut self.stream, &0u32.to_be_bytes(), self.timeout).await?;
        let reply = read_reply(&mut self.stream, self.timeout).await?;
        parse_reply(&reply, self.limit)
    }
}

#[async_trait]
impl MalwareScanner for Clamd {
    async fn start(&self) -> Result<Box<dyn ScanSession>> {
        let mut stream = self.connect().await?;
        send(&mut stream, b"zINSTREAM\0", self.timeout).await?;
        Ok(Box::new(Session {
            stream,
            sent: 0,
            limit: self.max_stream_bytes,
            over_limit: false,
            timeout: self.timeout,
        }))
    }

    /// `PING` → `PONG`.
    async fn ping(&self) -> Result<()> {
        let mut stream = self.connect().await?;
        send(&mut stream, b"zPING\0", self.timeout).await?;
        let reply = read_reply(&mut stream, self.timeout).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(PortError::generic(PROVIDER, format!("unexpected reply {reply:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_verdicts() {
        assert_eq!(parse_reply("stream: OK", 1).unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply("stream: Custom.EICAR-Test-File-hdb.UNOFFICIAL FOUND", 1).unwrap(),
            Verdict::Infected {
                signature: "Custom.EICAR-Test-File-hdb.UNOFFICIAL".into()
            }
        );
        assert_eq!(
            parse_reply("INSTREAM size limit exceeded. ERROR", 7).unwrap(),
            Verdict::TooLarge { limit: 7 }
        );
        assert!(parse_reply("stream: Can't allocate memory ERROR", 1).is_err());
        assert!(parse_reply("", 1).is_err());
    }
}
