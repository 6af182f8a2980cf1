//! Portability: `GET /v1/me/export/archive` is a tar archive that the standard `tar` unpacks,
//! holding the person's files decrypted (byte for byte what they uploaded), their metadata,
//! their consent history with record proofs that verify against the archived checkpoint and
//! key, and a manifest whose SHA-256 of every file `sha256sum -c` accepts; nobody else's data
//! is in it. A stored object that fails to decrypt, or a package erased while the archive
//! streams, cuts the archive short instead of delivering a wrong or erased file; and a large
//! file's archive streams through the real binary in bounded memory.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{Db, TestApp};
use futures::StreamExt;
use serde_json::Value;
use udim_ledger::entry::ConsentRecord;
use udim_ledger::note::VerifierKey;
use udim_ledger::proof::RecordProof;

async fn upload_named(app: &TestApp, token: &str, category: &str, name: &str, body: Vec<u8>) -> String {
    let response = app
        .http
        .post(
            reqwest::Url::parse_with_params(
                &format!("{}/v1/packages", app.base),
                &[("data_category", category), ("filename", name)],
            )
            .unwrap(),
        )
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Downloads the archive into `path`; returns the declared length, or the error that cut it.
async fn download(app: &TestApp, token: &str, path: &Path) -> (u64, Result<(), String>) {
    let response = app
        .http
        .get(format!("{}/v1/me/export/archive", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"udim-export-")
    );
    let declared = response.content_length().expect("a Content-Length");
    let mut file = std::fs::File::create(path).unwrap();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => std::io::Write::write_all(&mut file, &bytes).unwrap(),
            Err(e) => return (declared, Err(e.to_string())),
        }
    }
    (declared, Ok(()))
}

fn files_under(root: &Path) -> BTreeSet<String> {
    common::files_under(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

async fn the_archive_holds_everything_and_tar_and_sha256sum_accept_it(db: Db) {
    let app = TestApp::spawn(db).await;
    let (alice, bob) = (app.uploader("alice"), app.uploader("bob"));
    app.grant(&alice, &["audio"]).await;
    app.grant(&alice, &["text"]).await;
    app.grant(&bob, &["audio"]).await;
    let big = common::distinctive_bytes(3_000_000 + 17);
    let small = b"hello, portable world\n".to_vec();
    let big_id = upload_named(&app, &alice, "audio", "voice memo (1).wav", big.clone()).await;
    let small_id = upload_named(&app, &alice, "text", "../../etc/ré sumé.txt", small.clone()).await;
    let empty_id = upload_named(&app, &alice, "text", "empty.txt", Vec::new()).await;
    let erased_id = upload_named(&app, &alice, "audio", "gone.bin", common::distinctive_bytes(1000)).await;
    app.erase_package(&alice, erased_id.parse().unwrap()).await;
    let bobs_id = upload_named(&app, &bob, "audio", "bobs.bin", common::distinctive_bytes(5000)).await;

    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("export.tar");
    let (declared, finished) = download(&app, &alice, &tarball).await;
    finished.expect("the whole archive arrives");
    assert_eq!(
        std::fs::metadata(&tarball).unwrap().len(),
        declared,
        "Content-Length is exact"
    );

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        untar.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&untar.stderr)
    );

    // The manifest lists every other file, and sha256sum agrees with every hash in it.
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["subject"], "alice");
    let listed: BTreeSet<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    let mut unpacked = files_under(&out);
    assert!(unpacked.remove("manifest.json"));
    assert_eq!(unpacked, listed, "the manifest lists exactly the archive's other files");
    let sums: String = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}  {}\n", f["sha256"].as_str().unwrap(), f["path"].as_str().unwrap()))
        .collect();
    std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    let check = Command::new("sha256sum")
        .arg("--check")
        .arg("--strict")
        .arg(dir.path().join("SHA256SUMS"))
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sha256sum: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for file in manifest["files"].as_array().unwrap() {
        let size = std::fs::metadata(out.join(file["path"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(file["size"].as_u64(), Some(size), "{file}");
    }

    // Alice's files, decrypted, byte for byte; the erased one and bob's are not there.
    let content = |id: &str| -> Vec<u8> {
        let entry = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["package_id"] == id)
            .unwrap_or_else(|| panic!("package {id} is in the manifest"));
        std::fs::read(out.join(entry["path"].as_str().unwrap())).unwrap()
    };
    assert!(content(&big_id) == big, "the large file is what alice uploaded");
    assert_eq!(content(&small_id), small);
    assert!(content(&empty_id).is_empty());
    let with_content: Vec<&Value> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["package_id"].is_null())
        .collect();
    assert_eq!(with_content.len(), 3, "stored packages only: {with_content:?}");
    assert!(
        listed.iter().all(|p| !p.contains("..") && !p.starts_with('/')),
        "no path escapes the archive: {listed:?}"
    );

    // Metadata of every package of alice's, the erased one as a tombstone, none of bob's.
    let packages: Vec<Value> = serde_json::from_slice(&std::fs::read(out.join("packages.json")).unwrap()).unwrap();
    let ids: BTreeSet<&str> = packages.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([
            big_id.as_str(),
            small_id.as_str(),
            empty_id.as_str(),
            erased_id.as_str()
        ])
    );
    assert!(!ids.contains(bobs_id.as_str()));
    let tombstone = packages.iter().find(|p| p["id"] == erased_id.as_str()).unwrap();
    assert_eq!(tombstone["status"], "deleted");

    // The consent history, each entry proven against the archived checkpoint and key.
    let key = VerifierKey::parse(std::fs::read_to_string(out.join("ledger/key.txt")).unwrap().trim()).unwrap();
    let checkpoint = std::fs::read_to_string(out.join("ledger/checkpoint.txt")).unwrap();
    let consents: Vec<Value> = serde_json::from_slice(&std::fs::read(out.join("consents.json")).unwrap()).unwrap();
    assert_eq!(consents.len(), 2, "alice's two grants, not bob's");
    for entry in &consents {
        let proof: RecordProof = serde_json::from_value(entry["record_proof"].clone()).unwrap();
        assert_eq!(proof.checkpoint, checkpoint, "against the archived checkpoint");
        let mut record = entry.clone();
        record["record_id"] = entry["id"].clone();
        record["subject"] = "alice".into();
        let record: ConsentRecord = serde_json::from_value(record).unwrap();
        use base64::Engine as _;
        let salt: [u8; 16] = base64::engine::general_purpose::STANDARD
            .decode(entry["salt"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        proof
            .verify(&key, Some(&record.leaf_hash(&salt)))
            .expect("every consent in the archive is proven");
    }
    let archive = std::fs::read(&tarball).unwrap();
    assert!(
        !archive.windows(bobs_id.len()).any(|w| w == bobs_id.as_bytes()),
        "nothing of bob's package is in alice's archive"
    );
    app.stop().await;
}

common::on_both_databases!(the_archive_holds_everything_and_tar_and_sha256sum_accept_it);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_fails_to_decrypt_cuts_the_archive_short() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let id = upload_named(&app, &alice, "audio", "a.bin", common::distinctive_bytes(500_000)).await;
    let object = app.objects_dir().join("packages").join(&id);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("export.tar");
    let (declared, finished) = download(&app, &alice, &tarball).await;
    assert!(finished.is_err(), "the download fails");
    assert!(
        std::fs::metadata(&tarball).unwrap().len() < declared,
        "short of its declared length"
    );
    let list = Command::new("tar").arg("-tf").arg(&tarball).output().unwrap();
    assert!(!list.status.success(), "and tar refuses the truncated archive");
    app.stop().await;
}

/// A package erased while an export streams is never decrypted into it, even while its object
/// is still there (its deletion failed; the sweeper will retry): the archive is cut before its
/// file, and the next export leaves it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_erased_during_the_export_is_not_in_it() {
    let objects = tempfile::tempdir().unwrap();
    let faults = common::faults::Faults::new();
    faults.refuse_deletes(true);
    let app = TestApp::spawn_with(
        Db::Sqlite,
        common::Options {
            storage: Some(common::faults::FaultyStore::on(objects.path(), &faults)),
            ..common::Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    // Unlike the other file's bytes anywhere (distinctive_bytes repeats from the start).
    let erased: Vec<u8> = common::distinctive_bytes(200_000).iter().map(|b| b ^ 0x5a).collect();
    let erased_id = upload_named(&app, &alice, "audio", "erased.bin", erased.clone()).await;
    // The newest package comes first, and is large enough that the export waits on the
    // client's reading inside it.
    let big = common::distinctive_bytes(24 * 1024 * 1024 + 3);
    upload_named(&app, &alice, "audio", "big.bin", big).await;

    let response = app
        .http
        .get(format!("{}/v1/me/export/archive", app.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    while received.len() < 64 * 1024 {
        received.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    app.erase_package(&alice, erased_id.parse().unwrap()).await;
    assert!(
        objects.path().join("packages").join(&erased_id).exists(),
        "its object is still there"
    );
    let mut cut = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "the archive is cut");
    let probe = &erased[100_000..100_064];
    assert!(
        !received.windows(probe.len()).any(|w| w == probe),
        "none of the erased package's bytes were sent"
    );

    let dir = tempfile::tempdir().unwrap();
    let (_, finished) = download(&app, &alice, &dir.path().join("again.tar")).await;
    finished.expect("the next export is whole");
    let list = Command::new("tar")
        .arg("-tf")
        .arg(dir.path().join("again.tar"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(names.contains("big.bin") && !names.contains("erased.bin"), "{names}");
    app.stop().await;
}

/// The archive streams: exporting a file far larger than what the process may hold leaves the
/// real binary's peak resident memory well below the file's size (uploading it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_of_a_large_file_streams_in_bounded_memory() {
    const SIZE: usize = 192 * 1024 * 1024;
    const SECRET: &str = "portability-memory-test-hs256-secret-32+b";
    let dir = tempfile::tempdir().unwrap();
    let process = common::process::Process::serve(|| {
        let mut command = common::process::udim();
        command
            .env("UDIM_CONFIG_DIR", dir.path().join("no-config"))
            .env("UDIM_DATA_DIR", dir.path())
            .env("UDIM_AUTH__HS256_SECRET", SECRET);
        command
    })
    .await;
    let token = common::uploader_token(SECRET, "alice");
    let http = reqwest::Client::new();
    common::grant_on(&http, &process.base, &token, &["video"]).await;
    // The upload streams from here too, a mebibyte at a time.
    let piece = common::distinctive_bytes(1024 * 1024);
    let pieces = futures::stream::iter((0..SIZE / piece.len()).map(move |_| Ok::<_, std::io::Error>(piece.clone())));
    let uploaded = http
        .post(format!(
            "{}/v1/packages?data_category=video&filename=long.bin",
            process.base
        ))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .header("content-length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);

    let response = http
        .get(format!("{}/v1/me/export/archive", process.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = 0usize;
    while let Some(chunk) = body.next().await {
        received += chunk.unwrap().len();
    }
    assert!(received > SIZE, "the whole archive arrived: {received} bytes");
    let peak = process.peak_resident_bytes();
    assert!(
        peak < (SIZE / 3) as u64,
        "peak resident memory {} MiB for a {} MiB file",
        peak >> 20,
        SIZE >> 20
    );
}
