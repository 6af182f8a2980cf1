//! Downstream reads: a `udim:read` principal fetches a stored package's plaintext. Consent
//! is checked again, for the stated purpose, at read time; the data key is unwrapped through
//! the key service; segments are decrypted and authenticated as they stream, and no
//! segment's plaintext leaves before it authenticates. Every read is recorded.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use udim_ports::PortError;
use udim_ports::kms::{KeyContext, KeyService};
use udim_ports::metadata::{PackageRead, PackageRecord, PackageStore};
use udim_ports::storage::BlobStore;
use uuid::Uuid;

use crate::consent::{Access, ConsentService, now_micros};
use crate::formats::envelope::{Binding, Decryptor, EnvelopeError, Header, Layout, Span};
use crate::formats::range::ByteRange;

/// Why a read was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("package {0} not found")]
    NotFound(Uuid),
    #[error(
        "the owner's consent does not cover purpose `{purpose}` for this package's data category, or does not name \
         this reader among its recipients"
    )]
    NoConsent { purpose: String },
    #[error("the range is outside the package's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("the stored object is not readable: {0}")]
    Envelope(#[from] EnvelopeError),
}

/// An open read: the package and the plaintext stream of the requested bytes.
pub struct Content {
    pub package: PackageRecord,
    /// `Some((start, end))` (half-open) for a range read.
    pub range: Option<(u64, u64)>,
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, ReadError>>,
}

/// Serves downstream reads.
#[derive(Debug, Clone)]
pub struct ContentReader {
    pub blobs: Arc<dyn BlobStore>,
    pub kms: Arc<dyn KeyService>,
    pub packages: Arc<dyn PackageStore>,
    pub consents: ConsentService,
}

struct Decrypting {
    ciphertext: udim_ports::storage::ByteStream,
    decryptor: Option<Decryptor>,
    skip: u64,
    remaining: u64,
}

impl Decrypting {
    /// Trims authenticated plaintext to the requested bytes.
    fn take(&mut self, plaintext: Vec<u8>) -> Option<Bytes> {
        let mut bytes = Bytes::from(plaintext);
        let skip = self.skip.min(bytes.len() as u64);
        self.skip -= skip;
        bytes = bytes.slice(skip as usize..);
        let keep = self.remaining.min(bytes.len() as u64);
        self.remaining -= keep;
        bytes.truncate(keep as usize);
        (!bytes.is_empty()).then_some(bytes)
    }
}

impl ContentReader {
    /// Opens `id` for `reader` and `purpose`; records the read before any byte is served.
    pub async fn open(
        &self,
        id: Uuid,
        reader: &str,
        purpose: &str,
        range: Option<ByteRange>,
    ) -> Result<Content, ReadError> {
        let package = self.packages.get_stored(id).await?.ok_or(ReadError::NotFound(id))?;
        let state = self.consents.state(&package.user_id).await?;
        if state
            .admitting(
                &package.data_category,
                Access::Read { purpose, reader },
                chrono::Utc::now(),
            )
            .is_none()
        {
            return Err(ReadError::NoConsent {
                purpose: purpose.to_owned(),
            });
        }
        self.open_package(package, reader, purpose, range).await
    }

    /// Opens a stored `package` whose access the caller has already decided (a consented
    /// read, or its owner's export); records the read before any byte is served.
    pub async fn open_package(
        &self,
        package: PackageRecord,
        reader: &str,
        purpose: &str,
        range: Option<ByteRange>,
    ) -> Result<Content, ReadError> {
        let id = package.id;
        let size = package
            .size_bytes
            .ok_or_else(|| PortError::Integrity("stored package without size".into()))?;
        let requested = match range {
            Some(r) => r.resolve(size).map_err(|_| ReadError::RangeNotSatisfiable { size })?,
            None => None,
        };
        let key_name = package
            .object_key
            .clone()
            .ok_or_else(|| PortError::Integrity("stored package without object".into()))?;

        let (header, header_len) = self.read_header(&key_name).await?;
        if Some(&header.key_id) != package.encryption_key_id.as_ref() {
            return Err(PortError::Integrity("the object's key id differs from the package's".into()).into());
        }
        let ctx = KeyContext {
            package_id: id,
            user_id: package.user_id.clone(),
        };
        // The database's copy is the only one: a format-1 header's copy is ignored, so
        // erasing the row's key shreds every copy of the object.
        let wrapped_key = package
            .wrapped_key
            .as_deref()
            .ok_or_else(|| PortError::Integrity("stored package without a wrapped data key".into()))?;
        let data_key = self.kms.unwrap_data_key(&header.key_id, wrapped_key, &ctx).await?;
        let layout = Layout {
            header_len: header_len as u64,
            segment_size: u64::from(header.segment_size),
            plaintext_len: size,
        };
        let (start, end) = requested.unwrap_or((0, size));
        let span = if size == 0 {
            Span {
                first_segment: 0,
                final_segment: 0,
                ciphertext: layout.header_len..layout.object_len(),
                skip: 0,
                len: 0,
            }
        } else {
            layout.span(start, end).ok_or(ReadError::RangeNotSatisfiable { size })?
        };
        let binding = Binding {
            package_id: id,
            user_id: &package.user_id,
        };
        let decryptor = Decryptor::starting_at(&data_key, &header, binding, span.first_segment, span.final_segment);
        drop(data_key);

        self.packages
            .record_read(&PackageRead {
                package_id: id,
                reader: reader.to_owned(),
                purpose: purpose.to_owned(),
                range: requested,
                read_at: now_micros(),
            })
            .await?;
        let ciphertext = self.blobs.get_range(&key_name, span.ciphertext.clone()).await?;
        Ok(Content {
            package,
            range: requested,
            size,
            stream: decrypt_stream(ciphertext, decryptor, span.skip, span.len),
        })
    }

    /// Reads just enough of the object to parse its header.
    async fn read_header(&self, key: &str) -> Result<(Header, usize), ReadError> {
        let (header, header_len, _) = open_envelope(self.blobs.get(key).await?).await?;
        Ok((header, header_len))
    }
}

/// Reads an object stream up to the end of its header; returns the header, its length and
/// the rest of the stream (the ciphertext body).
pub async fn open_envelope(
    mut stream: udim_ports::storage::ByteStream,
) -> Result<(Header, usize, udim_ports::storage::ByteStream), ReadError> {
    let mut buf = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        buf.extend_from_slice(&chunk);
        if let Some((header, len)) = Header::decode(&buf)? {
            let rest = Bytes::from(buf).slice(len..);
            let body = futures::stream::once(async move { Ok(rest) }).chain(stream).boxed();
            return Ok((header, len, body));
        }
    }
    Err(EnvelopeError::Truncated.into())
}

/// A stored object failed authentication: tampering or corruption at rest, worth an alert.
fn unauthentic(error: &EnvelopeError) {
    metrics::counter!(crate::ops::metrics::READ_INTEGRITY_FAILURES).increment(1);
    tracing::error!(%error, "a stored object failed authentication while streaming; the read was cut");
}

/// Decrypts a ciphertext stream as it flows, releasing each segment's plaintext only after
/// it authenticates; delivers `len` bytes after skipping `skip`.
pub fn decrypt_stream(
    ciphertext: udim_ports::storage::ByteStream,
    decryptor: Decryptor,
    skip: u64,
    len: u64,
) -> BoxStream<'static, Result<Bytes, ReadError>> {
    let state = Decrypting {
        ciphertext,
        decryptor: Some(decryptor),
        skip,
        remaining: len,
    };
    futures::stream::try_unfold(state, |mut st| async move {
        loop {
            match st.ciphertext.next().await {
                Some(chunk) => {
                    let decryptor = st.decryptor.as_mut().expect("present until the end");
                    let plaintext = decryptor.push(&chunk?).inspect_err(unauthentic)?;
                    if let Some(out) = st.take(plaintext) {
                        return Ok(Some((out, st)));
                    }
                }
                None => {
                    let Some(decryptor) = st.decryptor.take() else {
                        return Ok(None);
                    };
                    let plaintext = decryptor.finish().inspect_err(unauthentic)?;
                    return Ok(st.take(plaintext).map(|out| (out, st)));
                }
            }
        }
    })
    .boxed()
}
