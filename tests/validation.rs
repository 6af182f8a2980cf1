//! Content validation: the real type is sniffed and checked against the data category's
//! allow-list, per-category size caps, hostile file names, and `Idempotency-Key` retries.
//! Every refusal is a problem response and leaves nothing stored.

mod common;

use common::{Db, Options, TestApp};
use serde_json::Value;
use udim::formats::content::{CategoryPolicy, MismatchPolicy};

const PNG: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R',
];
const PDF: &[u8] = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n";

async fn app(mismatch: MismatchPolicy) -> TestApp {
    TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(move |s| {
                s.upload.categories.insert(
                    "images".into(),
                    CategoryPolicy {
                        allowed_types: vec!["image/*".into()],
                        max_bytes: Some(4096),
                        retention_days: None,
                    },
                );
                s.upload.categories.insert(
                    "photos".into(),
                    CategoryPolicy {
                        allowed_types: vec!["image/*".into()],
                        max_bytes: Some(1024 * 1024),
                        retention_days: None,
                    },
                );
                s.upload.type_mismatch = mismatch;
            })),
            ..Options::default()
        },
    )
    .await
}

async fn upload(app: &TestApp, token: &str, query: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/packages?{query}", app.base))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

fn padded(magic: &[u8], len: usize) -> Vec<u8> {
    let mut body = magic.to_vec();
    body.resize(len, 0x20);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sniffed_type_must_be_allowed_for_the_category() {
    let app = app(MismatchPolicy::Record).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["images", "documents"]).await;

    let png = upload(
        &app,
        &alice,
        "data_category=images&filename=a.png",
        "image/png",
        padded(PNG, 2000),
    )
    .await;
    assert_eq!(png.status(), 201);
    let png: Value = png.json().await.unwrap();
    assert_eq!(png["sniffed_content_type"], "image/png");

    for (declared, body) in [("image/png", padded(PDF, 2000)), ("application/pdf", padded(PDF, 2000))] {
        let response = upload(&app, &alice, "data_category=images&filename=x.png", declared, body).await;
        assert_eq!(response.status(), 415, "a PDF is not an image, whatever it is called");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:udim:problem:unsupported-content");
    }
    let recorded = upload(
        &app,
        &alice,
        "data_category=documents&filename=x.png",
        "image/png",
        padded(PDF, 2000),
    )
    .await;
    assert_eq!(
        recorded.status(),
        201,
        "unconfigured categories admit any type, recording both"
    );
    let recorded: Value = recorded.json().await.unwrap();
    assert_eq!(
        (
            recorded["content_type"].as_str(),
            recorded["sniffed_content_type"].as_str()
        ),
        (Some("image/png"), Some("application/pdf"))
    );

    assert_eq!(
        app.packages(&alice).await.len(),
        2,
        "only the two admitted uploads exist"
    );
    assert_eq!(app.object_files().len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_type_that_lies_is_refused_under_the_reject_policy() {
    let app = app(MismatchPolicy::Reject).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let response = upload(&app, &alice, "data_category=documents", "text/plain", padded(PNG, 100)).await;
    assert_eq!(response.status(), 415);
    let octet = upload(
        &app,
        &alice,
        "data_category=documents",
        "application/octet-stream",
        padded(PNG, 100),
    )
    .await;
    assert_eq!(octet.status(), 201, "octet-stream declares nothing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_size_caps_apply_to_declared_and_streamed_bodies() {
    let app = app(MismatchPolicy::Record).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["images"]).await;
    let declared = upload(&app, &alice, "data_category=images", "image/png", padded(PNG, 5000)).await;
    assert_eq!(declared.status(), 413);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..5)
        .map(|i| {
            Ok(bytes::Bytes::from(if i == 0 {
                padded(PNG, 1000)
            } else {
                vec![0x20; 1000]
            }))
        })
        .collect();
    let streamed = app
        .http
        .post(format!("{}/v1/packages?data_category=images", app.base))
        .bearer_auth(&alice)
        .header("content-type", "image/png")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    assert!(app.packages(&alice).await.is_empty() && app.object_files().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_are_sanitized_before_they_are_stored_or_echoed() {
    let app = app(MismatchPolicy::Record).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    for (raw, expected) in [
        ("..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("C%3A%5CWindows%5Cevil.dll", "evil.dll"),
        ("a%00b%0Ac.txt", "abc.txt"),
        ("invoice%E2%80%AEfdp.exe", "invoicefdp.exe"),
        ("cafe%CC%81.txt", "caf\u{e9}.txt"),
        ("..", "upload"),
    ] {
        let response = upload(
            &app,
            &alice,
            &format!("data_category=documents&filename={raw}"),
            "text/plain",
            b"x".to_vec(),
        )
        .await;
        assert_eq!(response.status(), 201, "{raw}");
        let package: Value = response.json().await.unwrap();
        assert_eq!(package["original_name"], expected, "{raw}");
    }
    let long = "%C3%A9".repeat(300);
    let response = upload(
        &app,
        &alice,
        &format!("data_category=documents&filename={long}"),
        "text/plain",
        b"x".to_vec(),
    )
    .await;
    let package: Value = response.json().await.unwrap();
    assert!(package["original_name"].as_str().unwrap().len() <= 255);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_result_instead_of_a_second_package() {
    let app = app(MismatchPolicy::Record).await;
    let alice = app.uploader("alice");
    let bob = app.uploader("bob");
    app.grant(&alice, &["documents"]).await;
    app.grant(&bob, &["documents"]).await;
    let send = |token: String, key: &'static str, body: &'static str| {
        app.http
            .post(format!("{}/v1/packages?data_category=documents", app.base))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let first: Value = send(alice.clone(), "retry-1", "first")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = send(alice.clone(), "retry-1", "first").await.unwrap();
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"], "the retry gets the first package");
    assert_eq!(app.packages(&alice).await.len(), 1);
    let bobs: Value = send(bob.clone(), "retry-1", "bob's")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(bobs["id"], first["id"], "keys are per user");
    // A control character in the key: reqwest refuses to send one, so the raw request goes
    // over a socket, and the server must answer 400 without creating anything.
    let raw = format!(
        "POST /v1/packages?data_category=documents HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Bearer {alice}\r\nContent-Type: text/plain\r\nIdempotency-Key: bad\x07key\r\n\
         Content-Length: 1\r\nConnection: close\r\n\r\nx",
        app.addr
    );
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut socket, raw.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(app.packages(&alice).await.len(), 1, "nothing was created");
    app.stop().await;
}

/// A resumable upload is refused at its creation when its declared length passes the
/// category's cap or its declared type is not on the category's allow-list: nobody stages
/// gigabytes into a category capped at kilobytes. Nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_upload_that_cannot_fit_its_category_is_refused_at_creation() {
    let app = app(MismatchPolicy::Record).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["images"]).await;
    let create = |length: u64, metadata: &'static str| {
        app.http
            .post(format!("{}/v1/uploads", app.base))
            .bearer_auth(&alice)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .header("upload-metadata", metadata)
            .send()
    };
    // data_category "images"; filetype "application/pdf" / "image/png".
    let too_large = create(64 * 1024 * 1024 * 1024, "data_category aW1hZ2Vz,filetype aW1hZ2UvcG5n")
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    let wrong_type = create(100, "data_category aW1hZ2Vz,filetype YXBwbGljYXRpb24vcGRm")
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    let problem: Value = wrong_type.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:unsupported-content");
    let fits = create(100, "data_category aW1hZ2Vz,filetype aW1hZ2UvcG5n")
        .await
        .unwrap();
    assert_eq!(fits.status(), 201, "within the cap and on the list");
    let undeclared = create(100, "data_category aW1hZ2Vz").await.unwrap();
    assert_eq!(undeclared.status(), 201, "no declared type: the bytes decide later");
    let open = app.database().await.uploads.open_uploads("alice").await.unwrap();
    assert_eq!(open.len(), 2, "the refused ones left nothing");
    app.stop().await;
}

/// A resumable upload whose first bytes (the 8 KiB the type is sniffed from) are of a type its
/// category does not take is refused by the PATCH that completes them, not after the rest has
/// arrived, however the client cut them: the upload ends and leaves no chunk behind. With an
/// `Upload-Checksum`, bytes damaged on the way get 460 instead, and the upload stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_upload_is_refused_as_soon_as_its_first_bytes_show_the_wrong_type() {
    let app = app(MismatchPolicy::Record).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["photos"]).await;
    // A PDF; where a client cut after 1,000 bytes, what follows starts like a PNG, so only a
    // sniff of the upload's true first bytes refuses it.
    let pdf = [padded(PDF, 1_000), padded(PNG, 99_000)].concat();
    let tus_patch = |url: &str, offset: usize, bytes: &[u8], checksum: Option<&str>| {
        let mut request = app
            .http
            .patch(url)
            .bearer_auth(&alice)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bytes.to_vec());
        if let Some(checksum) = checksum {
            request = request.header("upload-checksum", checksum);
        }
        request.send()
    };
    let head = async |url: &str| {
        app.http
            .head(url)
            .bearer_auth(&alice)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap()
    };
    // Declared an image (data_category "photos", filetype "image/png"); the bytes are a PDF.
    let metadata = "data_category cGhvdG9z,filetype aW1hZ2UvcG5n";
    for cut in [10_000, 1_000] {
        let url = app.create_upload(&alice, pdf.len() as u64, metadata).await;
        let mut offset = 0;
        if cut < 8192 {
            let first = tus_patch(&url, 0, &pdf[..cut], None).await.unwrap();
            assert_eq!(first.status(), 204, "{cut} bytes cannot be judged yet");
            offset = cut;
        }
        let refused = tus_patch(&url, offset, &pdf[offset..10_000], None).await.unwrap();
        assert_eq!(
            refused.status(),
            415,
            "refused once 8 KiB are here (first PATCH {cut} bytes)"
        );
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["type"], "urn:udim:problem:unsupported-content");
        assert_eq!(head(&url).await.status(), 404, "the upload has ended");
        assert!(
            app.object_files().is_empty(),
            "no chunk is left: {:?}",
            app.object_files()
        );
    }
    assert!(
        app.database()
            .await
            .uploads
            .open_uploads("alice")
            .await
            .unwrap()
            .is_empty()
    );

    // A checksum that does not match: the bytes are not the client's, so nothing is judged.
    let url = app.create_upload(&alice, pdf.len() as u64, metadata).await;
    let damaged = tus_patch(
        &url,
        0,
        &pdf[..10_000],
        Some("sha256 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
    )
    .await
    .unwrap();
    assert_eq!(damaged.status(), 460);
    let still = head(&url).await;
    assert_eq!(still.status(), 200, "the upload stays");
    assert_eq!(still.headers()["upload-offset"], "0");
    // The same bytes with their true checksum: now they are the client's, and refused.
    use base64::Engine as _;
    let sum = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &pdf[..10_000]).as_ref());
    let vouched = tus_patch(&url, 0, &pdf[..10_000], Some(&format!("sha256 {sum}")))
        .await
        .unwrap();
    assert_eq!(vouched.status(), 415, "a wrong type behind a good checksum is refused");
    assert_eq!(head(&url).await.status(), 404, "and the upload ends");
    assert!(
        app.object_files().is_empty(),
        "nothing of it was written: {:?}",
        app.object_files()
    );

    // The right type goes through the same first PATCH.
    let png = padded(PNG, 100_000);
    let url = app.create_upload(&alice, png.len() as u64, metadata).await;
    assert_eq!(tus_patch(&url, 0, &png[..10_000], None).await.unwrap().status(), 204);
    app.stop().await;
}

/// A simple upload's `metadata` is held to the 4 KiB tus `Upload-Metadata` has: past it the
/// answer is 400 `invalid-metadata` and nothing is stored; at it, the upload is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_upload_metadata_past_4_kib_is_refused() {
    let app = app(MismatchPolicy::Record).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let with_note = |bytes: usize| {
        // `{"n":"…"}`: eight bytes around the note.
        let metadata = serde_json::json!({ "n": "x".repeat(bytes - 8) }).to_string();
        assert_eq!(metadata.len(), bytes);
        app.http
            .post(format!("{}/v1/packages", app.base))
            .query(&[("data_category", "documents"), ("metadata", metadata.as_str())])
            .bearer_auth(&alice)
            .header("content-type", "text/plain")
            .body("notes")
            .send()
    };
    let refused = with_note(4097).await.unwrap();
    assert_eq!(refused.status(), 400);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:invalid-metadata");
    assert!(app.packages(&alice).await.is_empty(), "nothing stored");
    assert_eq!(with_note(4096).await.unwrap().status(), 201);
    app.stop().await;
}
