//! `udim upload`: a resumable upload client for people and scripts. It speaks tus 1.0.0 to
//! `/v1/uploads` (creation, checksum), sends the file in chunks with a SHA-256 per chunk,
//! shows a progress bar on a terminal, survives dropped connections and server restarts by
//! asking the server for its offset and going on from there, and can resume an upload a
//! previous run left (`--resume URL`). Memory stays at one chunk.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};

const TUS_VERSION: &str = "1.0.0";
/// Consecutive failed attempts at one chunk before giving up.
const MAX_ATTEMPTS: u32 = 8;

/// What to upload, and where.
#[derive(Debug, Clone)]
pub struct UploadJob {
    /// The service's base URL, e.g. `https://udim.example.org`.
    pub server: String,
    pub token: String,
    pub file: PathBuf,
    pub data_category: String,
    pub content_type: String,
    pub chunk_bytes: usize,
    /// An upload URL a previous run printed, to continue instead of starting anew.
    pub resume: Option<String>,
}

fn tus_headers(token: &str) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    headers.insert(
        reqwest::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).context("the token is not a valid header value")?,
    );
    Ok(headers)
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs.
fn metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", B64.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn offset_of(headers: &HeaderMap) -> anyhow::Result<u64> {
    headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("the server sent no Upload-Offset"))
}

/// Explains an error response (RFC 9457 problem details when the server sends them).
async fn refusal(what: &str, response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|p| p["detail"].as_str().map(str::to_owned))
        .unwrap_or(body);
    anyhow!("{what}: {status}: {detail}")
}

fn progress_bar(length: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Identifies the file an upload was started for, so `--resume` with another file is
/// refused instead of splicing two files into one package: SHA-256 over the length and the
/// first and last MiB (reading all of a many-GB file first would double the work).
fn fingerprint(file: &mut std::fs::File, length: u64) -> anyhow::Result<String> {
    const EDGE: u64 = 1024 * 1024;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&length.to_be_bytes());
    let head = length.min(EDGE);
    ctx.update(&read_chunk(file, 0, head as usize)?);
    let tail_start = length.saturating_sub(EDGE).max(head);
    ctx.update(&read_chunk(file, tail_start, (length - tail_start) as usize)?);
    Ok(hex::encode(&ctx.finish().as_ref()[..16]))
}

fn read_chunk(file: &mut std::fs::File, offset: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut chunk = vec![0u8; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut chunk)?;
    Ok(chunk)
}

/// Uploads the job's file; returns the stored package as the service describes it.
pub async fn upload(job: &UploadJob) -> anyhow::Result<serde_json::Value> {
    let mut file = std::fs::File::open(&job.file).with_context(|| format!("cannot open {}", job.file.display()))?;
    let length = file.metadata()?.len();
    if length == 0 {
        bail!("{} is empty: there is nothing to upload", job.file.display());
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // A stalled connection counts as a dropped one; a whole chunk may take long.
        .read_timeout(Duration::from_secs(120))
        .build()?;
    let headers = tus_headers(&job.token)?;
    let base = reqwest::Url::parse(&job.server).context("--server is not a URL")?;
    let fingerprint = fingerprint(&mut file, length)?;

    let url = match &job.resume {
        Some(url) => base.join(url)?,
        None => {
            let name = file_name(&job.file);
            let response = client
                .post(base.join("/v1/uploads")?)
                .headers(headers.clone())
                .header("upload-length", length.to_string())
                .header(
                    "upload-metadata",
                    metadata(&[
                        ("filename", &name),
                        ("filetype", &job.content_type),
                        ("data_category", &job.data_category),
                        ("fingerprint", &fingerprint),
                    ]),
                )
                .send()
                .await?;
            if response.status() != StatusCode::CREATED {
                return Err(refusal("creating the upload failed", response).await);
            }
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| anyhow!("the server sent no Location"))?;
            base.join(location)?
        }
    };
    eprintln!("upload URL (continue an interrupted run with --resume): {url}");

    let bar = progress_bar(length);
    let mut offset = server_offset(&client, &headers, &url, length, &fingerprint).await?;
    let mut package_id = None;
    let mut failures = 0;
    while offset < length {
        bar.set_position(offset);
        let len = usize::try_from(length - offset)
            .unwrap_or(usize::MAX)
            .min(job.chunk_bytes);
        let chunk = read_chunk(&mut file, offset, len)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &chunk);
        let sent = client
            .patch(url.clone())
            .headers(headers.clone())
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .header("upload-checksum", format!("sha256 {}", B64.encode(digest.as_ref())))
            .body(chunk)
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => {
                offset = offset_of(response.headers())?;
                package_id = response
                    .headers()
                    .get("udim-package-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                failures = 0;
            }
            // The connection dropped, the server restarted or is busy with this upload, or
            // the chunk was damaged on the way: ask where the server is, and go on from there.
            Ok(response)
                if response.status().is_server_error()
                    || response.status() == StatusCode::LOCKED
                    || response.status() == StatusCode::CONFLICT
                    || response.status().as_u16() == 460 =>
            {
                failures += 1;
                if failures >= MAX_ATTEMPTS {
                    return Err(refusal("the upload keeps failing", response).await);
                }
                let resumed_at = retry_offset(&client, &headers, &url, length, &fingerprint, failures).await?;
                // Progress despite the failure (e.g. a dropped reply): not a failure streak.
                if resumed_at > offset {
                    failures = 0;
                }
                offset = resumed_at;
            }
            Ok(response) => return Err(refusal("the server refused the upload", response).await),
            Err(e) => {
                failures += 1;
                if failures >= MAX_ATTEMPTS {
                    return Err(anyhow!(e).context("the upload keeps failing"));
                }
                let resumed_at = retry_offset(&client, &headers, &url, length, &fingerprint, failures).await?;
                if resumed_at > offset {
                    failures = 0;
                }
                offset = resumed_at;
            }
        }
    }
    bar.finish_and_clear();
    let package_id = match package_id {
        Some(id) => id,
        // A resumed upload that was already complete: the server names its package on HEAD.
        None => client
            .head(url.clone())
            .headers(headers.clone())
            .send()
            .await?
            .headers()
            .get("udim-package-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the upload is complete but the server names no package"))?,
    };
    let package = client
        .get(base.join(&format!("/v1/packages/{package_id}"))?)
        .bearer_auth(&job.token)
        .send()
        .await?;
    if !package.status().is_success() {
        return Err(refusal("reading the stored package failed", package).await);
    }
    Ok(package.json().await?)
}

/// The server's offset for the upload at `url`, after checking that the upload is for this
/// file: its length, and the fingerprint this client puts in its metadata (an upload some
/// other client started carries none and is taken on the length alone), so a resume never
/// splices another file of the same size onto it.
async fn server_offset(
    client: &reqwest::Client,
    headers: &HeaderMap,
    url: &reqwest::Url,
    length: u64,
    fingerprint: &str,
) -> anyhow::Result<u64> {
    let response = client.head(url.clone()).headers(headers.clone()).send().await?;
    if response.status() != StatusCode::OK {
        return Err(refusal("the upload cannot be resumed", response).await);
    }
    let declared = response
        .headers()
        .get("upload-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared != Some(length) {
        bail!("the upload on the server is for a file of {declared:?} bytes, this one has {length}");
    }
    let metadata = response
        .headers()
        .get("upload-metadata")
        .and_then(|v| v.to_str().ok())
        .map(crate::formats::tus::parse_metadata)
        .transpose()
        .map_err(|e| anyhow!("the server's Upload-Metadata: {e}"))?
        .unwrap_or_default();
    if metadata.get("fingerprint").is_some_and(|theirs| theirs != fingerprint) {
        bail!("the upload at {url} was started for another file of the same size; not resuming it");
    }
    offset_of(response.headers())
}

/// Waits (1, 2, 4 … 30 s) and asks the server for the offset, waiting longer while it is
/// unreachable.
async fn retry_offset(
    client: &reqwest::Client,
    headers: &HeaderMap,
    url: &reqwest::Url,
    length: u64,
    fingerprint: &str,
    failures: u32,
) -> anyhow::Result<u64> {
    let mut wait = Duration::from_secs(1 << (failures - 1).min(5)).min(Duration::from_secs(30));
    for _ in 0..MAX_ATTEMPTS {
        tokio::time::sleep(wait).await;
        match server_offset(client, headers, url, length, fingerprint).await {
            Ok(offset) => return Ok(offset),
            Err(e) if e.downcast_ref::<reqwest::Error>().is_some() => wait = (wait * 2).min(Duration::from_secs(30)),
            Err(e) => return Err(e),
        }
    }
    bail!("the server stayed unreachable")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_comma_separated_base64_pairs() {
        assert_eq!(
            metadata(&[("filename", "a b.txt"), ("data_category", "text")]),
            "filename YSBiLnR4dA==,data_category dGV4dA=="
        );
    }
}
