//! Portability (GDPR Art. 20): everything a person gave, as one tar archive that standard
//! tools unpack — their files decrypted, their metadata, their consent history with record
//! proofs, the signed checkpoint those proofs are against, and a manifest with the SHA-256 and
//! size of every other file.
//!
//! The archive streams: each file's plaintext is decrypted segment by segment as the client
//! reads, so memory stays bounded whatever the files' sizes (it grows only with the number of
//! packages, whose metadata the manifest and `packages.json` list). Its length is known
//! before the first byte. A file that fails to decrypt, or whose package was erased before its
//! file begins, cuts the stream, so a client never gets a well-formed archive with a wrong file
//! in it (nor one erased by then); asking again gives an archive without it.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;
use udim_ports::PortError;
use udim_ports::metadata::{PackageRecord, PackageStatus};
use uuid::Uuid;

use crate::formats::archive;
use crate::pipeline::read::{ContentReader, ReadError};

/// The path of the manifest, the archive's first file.
pub const MANIFEST: &str = "manifest.json";

/// One file as the manifest lists it.
#[derive(Debug, Serialize)]
struct ManifestFile {
    path: String,
    size: u64,
    /// Lowercase hex.
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_id: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    format: &'static str,
    subject: &'a str,
    exported_at: DateTime<Utc>,
    files: Vec<ManifestFile>,
}

/// A small document of the archive, held in memory.
#[derive(Debug)]
pub struct Document {
    pub path: String,
    pub bytes: Bytes,
}

/// A planned archive: the documents (manifest first) and the stored packages whose plaintext
/// follows them.
#[derive(Debug)]
pub struct Archive {
    documents: Vec<Document>,
    packages: Vec<(String, PackageRecord)>,
    mtime: u64,
    /// The archive's exact length in bytes.
    pub len: u64,
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

impl Archive {
    /// Plans the archive of `subject`'s `documents` and `packages` (those not `stored` carry no
    /// content and are left out; the documents describe them).
    pub fn plan(
        subject: &str,
        exported_at: DateTime<Utc>,
        documents: Vec<Document>,
        packages: Vec<PackageRecord>,
    ) -> Result<Self, PortError> {
        let packages: Vec<(String, PackageRecord)> = packages
            .into_iter()
            .filter(|p| p.status == PackageStatus::Stored)
            .map(|p| (archive::package_path(p.id, &p.original_name), p))
            .collect();
        let mut files: Vec<ManifestFile> = documents
            .iter()
            .map(|d| ManifestFile {
                path: d.path.clone(),
                size: d.bytes.len() as u64,
                sha256: hex_sha256(&d.bytes),
                package_id: None,
            })
            .collect();
        for (path, package) in &packages {
            let (Some(size), Some(sha256)) = (package.size_bytes, package.sha256.as_ref()) else {
                return Err(PortError::Integrity(format!(
                    "stored package {} has no size or hash",
                    package.id
                )));
            };
            files.push(ManifestFile {
                path: path.clone(),
                size,
                sha256: hex::encode(sha256),
                package_id: Some(package.id),
            });
        }
        let manifest = Manifest {
            format: "udim-export/1",
            subject,
            exported_at,
            files,
        };
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| PortError::generic("export", e))?;
        let mut all = vec![Document {
            path: MANIFEST.to_owned(),
            bytes: manifest.into(),
        }];
        all.extend(documents);
        let len = all
            .iter()
            .map(|d| archive::framed_len(d.bytes.len() as u64))
            .sum::<u64>()
            + packages
                .iter()
                .map(|(_, p)| archive::framed_len(p.size_bytes.unwrap_or(0)))
                .sum::<u64>()
            + archive::END.len() as u64;
        Ok(Self {
            documents: all,
            packages,
            mtime: exported_at.timestamp().max(0) as u64,
            len,
        })
    }

    /// The archive's bytes: documents, then each package decrypted as it is read (the read is
    /// recorded with `reader` and purpose `portability`), then the end blocks.
    pub fn stream(self, reader: ContentReader, reader_name: String) -> BoxStream<'static, Result<Bytes, ReadError>> {
        let mtime = self.mtime;
        let mut frames: Vec<Result<Bytes, ReadError>> = Vec::new();
        for document in self.documents {
            match archive::header(&document.path, document.bytes.len() as u64, mtime) {
                Ok(header) => frames.push(Ok(Bytes::copy_from_slice(&header))),
                Err(why) => frames.push(Err(PortError::generic("export", why).into())),
            }
            let padding = archive::padding(document.bytes.len() as u64);
            frames.push(Ok(document.bytes));
            frames.push(Ok(Bytes::from_static(padding)));
        }
        let documents = stream::iter(frames);
        let packages = stream::iter(self.packages)
            .then(move |(path, package)| {
                let (reader, reader_name) = (reader.clone(), reader_name.clone());
                async move {
                    let size = package.size_bytes.unwrap_or(0);
                    let mtime = package.created_at.timestamp().max(0) as u64;
                    let header =
                        archive::header(&path, size, mtime).map_err(|why| PortError::generic("export", why))?;
                    // Read again just before its bytes: a package erased since the archive
                    // was planned is never decrypted (the stream is cut instead).
                    let current = reader
                        .packages
                        .get_package(&package.user_id, package.id)
                        .await?
                        .filter(|p| p.status == PackageStatus::Stored)
                        .ok_or(ReadError::NotFound(package.id))?;
                    let content = reader.open_package(current, &reader_name, "portability", None).await?;
                    Ok::<_, ReadError>(
                        stream::once(async move { Ok(Bytes::copy_from_slice(&header)) })
                            .chain(content.stream)
                            .chain(stream::once(
                                async move { Ok(Bytes::from_static(archive::padding(size))) },
                            )),
                    )
                }
            })
            .try_flatten();
        documents
            .chain(packages)
            .chain(stream::once(async { Ok(Bytes::from_static(&archive::END)) }))
            .boxed()
    }
}
