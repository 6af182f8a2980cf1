//! Resumable uploads speak tus 1.0.0: stock clients (tuspy from PyPI, tus-js-client from npm)
//! upload in chunks, are interrupted, the service restarts, the client resumes, and the stored
//! package's SHA-256 matches; concurrent PATCHes, expiry, termination and bad headers behave as the protocol
//! says and leave nothing behind.

mod common;

use std::time::Duration;

use common::tus_clients::StockClient;
use common::{Db, Options, TestApp};
use serde_json::Value;

fn tuspy(endpoint: &str, token: &str, file: &std::path::Path, stop_at: u64, url: Option<&str>) -> Value {
    StockClient::tuspy().run(endpoint, token, file, stop_at, url)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

fn tus(request: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    request.bearer_auth(token).header("tus-resumable", "1.0.0")
}

async fn head(app: &TestApp, token: &str, upload_url: &str) -> reqwest::Response {
    tus(app.http.head(upload_url), token).send().await.unwrap()
}

async fn a_stock_tus_client_resumes_across_a_restart(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["video"]).await;
    let data = common::distinctive_bytes(3 * 1024 * 1024 + 12_345);
    let file = app.data_dir().join("input.bin");
    std::fs::write(&file, &data).unwrap();

    let first = tuspy(&format!("{}/v1/uploads", app.base), &alice, &file, 1024 * 1024, None);
    assert_eq!(first["offset"], 1024 * 1024, "interrupted after 1 MiB");
    let path = reqwest::Url::parse(first["url"].as_str().unwrap())
        .unwrap()
        .path()
        .to_owned();

    let app = app.restart().await;
    let url = format!("{}{path}", app.base);
    let response = head(&app, &alice, &url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["upload-offset"],
        "1048576",
        "the offset survived the restart"
    );
    assert!(response.headers().contains_key("upload-expires"));
    let metadata = udim::formats::tus::parse_metadata(response.headers()["upload-metadata"].to_str().unwrap()).unwrap();
    assert_eq!(
        metadata["filename"], "recording.mp4",
        "HEAD repeats the creation's metadata"
    );

    let done = tuspy(
        &format!("{}/v1/uploads", app.base),
        &alice,
        &file,
        data.len() as u64,
        Some(&url),
    );
    assert_eq!(done["offset"], data.len() as u64);
    let response = head(&app, &alice, &url).await;
    let package_id = response.headers()["udim-package-id"].to_str().unwrap().to_owned();
    let (status, package) = app.get_json(&alice, &format!("/v1/packages/{package_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(package["status"], "stored");
    assert_eq!(package["sha256"], sha256_hex(&data));
    assert_eq!(package["size_bytes"], data.len() as u64);
    assert_eq!(package["original_name"], "recording.mp4");
    assert_eq!(package["content_type"], "video/mp4");
    let chunks: Vec<_> = app
        .object_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/uploads/"))
        .collect();
    assert!(
        chunks.is_empty(),
        "the upload's chunks are gone once it is a package: {chunks:?}"
    );
    app.stop().await;
}

fn tus_js_client(endpoint: &str, token: &str, file: &std::path::Path, stop_at: u64, url: Option<&str>) -> Value {
    StockClient::tus_js().run(endpoint, token, file, stop_at, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_resumes_across_a_restart() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let mut data = b"%PDF-1.7\n".to_vec();
    data.extend(common::distinctive_bytes(2 * 1024 * 1024 + 12_345));
    let file = app.data_dir().join("notes.pdf");
    std::fs::write(&file, &data).unwrap();
    let endpoint = format!("{}/v1/uploads", app.base);

    let first = tus_js_client(&endpoint, &alice, &file, 1024 * 1024, None);
    let offset = first["offset"].as_u64().unwrap();
    assert!(
        (1024 * 1024..data.len() as u64).contains(&offset),
        "interrupted part-way: {first}"
    );
    assert!(first["packageId"].is_null());
    let path = reqwest::Url::parse(first["url"].as_str().unwrap())
        .unwrap()
        .path()
        .to_owned();

    let app = app.restart().await;
    let url = format!("{}{path}", app.base);
    let done = tus_js_client(&format!("{}/v1/uploads", app.base), &alice, &file, u64::MAX, Some(&url));
    assert_eq!(done["offset"], data.len() as u64);
    let package_id = done["packageId"].as_str().expect("the last PATCH names the package");
    let (status, package) = app.get_json(&alice, &format!("/v1/packages/{package_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(package["status"], "stored");
    assert_eq!(package["sha256"], sha256_hex(&data));
    assert_eq!(package["original_name"], "notes.pdf");
    assert_eq!(package["sniffed_content_type"], "application/pdf");
    app.stop().await;
}

async fn create(app: &TestApp, token: &str, length: u64) -> String {
    let response = tus(app.http.post(format!("{}/v1/uploads", app.base)), token)
        .header("upload-length", length.to_string())
        .header("upload-metadata", "filename YS5iaW4=,data_category dmlkZW8=")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    format!("{}{}", app.base, response.headers()["location"].to_str().unwrap())
}

async fn patch(
    app: &TestApp,
    token: &str,
    url: &str,
    offset: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    tus(app.http.patch(url), token)
        .header("upload-offset", offset)
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Runs `statement` on the app's PostgreSQL database with the upload id at `url` as `$1`;
/// returns the rows it affected or found.
async fn on_upload_row(app: &TestApp, statement: &str, url: &str) -> u64 {
    use sqlx::Connection as _;
    let id = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(app.settings.database_url().expose_secret())
        .await
        .unwrap();
    sqlx::query(statement)
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_patches_never_interleave() {
    let app = TestApp::spawn(Db::Postgres).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["video"]).await;
    let url = create(&app, &alice, 1_000_000).await;
    // The first PATCH is in the middle of its body, holding the upload's lock, when the
    // second arrives.
    let (body, streaming) = common::body_in_flight();
    let first = common::status_of(
        tus(app.http.patch(&url), &alice)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(streaming),
    );
    body.send(Ok(vec![1u8; 10_000])).await.unwrap();
    common::eventually("the first PATCH holds the upload's lock", || async {
        on_upload_row(
            &app,
            "SELECT 1 FROM tus_uploads WHERE id::text = $1 AND locked_until > now()",
            &url,
        )
        .await
            == 1
    })
    .await;
    let second = patch(&app, &alice, &url, "0", vec![2u8; 1000]).await;
    assert!(matches!(second.status().as_u16(), 409 | 423), "got {}", second.status());
    for _ in 0..9 {
        body.send(Ok(vec![1u8; 10_000])).await.unwrap();
    }
    drop(body);
    assert_eq!(first.await.unwrap(), 204);
    assert_eq!(
        head(&app, &alice, &url).await.headers()["upload-offset"],
        "100000",
        "only the first PATCH landed"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_terminated_uploads_are_removed_with_their_chunks() {
    let app = TestApp::spawn_with(
        Db::Postgres,
        Options {
            configure: Some(Box::new(|s| s.upload.sweep_interval_secs = 1)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["video"]).await;
    let expiring = create(&app, &alice, 100_000).await;
    assert_eq!(
        patch(&app, &alice, &expiring, "0", vec![3u8; 40_000]).await.status(),
        204
    );
    assert_eq!(app.object_files().len(), 1, "one stored chunk");
    // What a process killed while writing the next chunk leaves: an object at the upload's
    // offset that no chunk row records.
    let id = expiring.rsplit('/').next().unwrap();
    let orphan = app.objects_dir().join(format!("uploads/{id}/{:020}", 40_000));
    std::fs::write(&orphan, b"half a chunk").unwrap();
    // Its time runs out (set in the row, so no PATCH above races a short expiry).
    assert_eq!(
        on_upload_row(
            &app,
            "UPDATE tus_uploads SET expires_at = now() - interval '1 second' WHERE id::text = $1",
            &expiring
        )
        .await,
        1
    );
    common::eventually("the expired upload is removed", || async {
        head(&app, &alice, &expiring).await.status() == 404
    })
    .await;
    common::eventually("with its stored chunk and the one a crash cut short", || async {
        app.object_files().is_empty()
    })
    .await;

    let terminated = create(&app, &alice, 100_000).await;
    assert_eq!(
        patch(&app, &alice, &terminated, "0", vec![3u8; 40_000]).await.status(),
        204
    );
    let response = tus(app.http.delete(&terminated), &alice).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(head(&app, &alice, &terminated).await.status(), 404);
    assert!(app.object_files().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tus_requests_get_the_protocols_errors_and_store_nothing() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    let bob = app.uploader("bob");
    app.grant(&alice, &["video"]).await;
    let options = app
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/uploads", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(options.headers()["tus-version"], "1.0.0");
    assert!(
        options.headers()["tus-extension"]
            .to_str()
            .unwrap()
            .contains("checksum")
    );

    let post = |headers: Vec<(&'static str, &'static str)>, token: String| {
        let mut request = app.http.post(format!("{}/v1/uploads", app.base)).bearer_auth(token);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    let ok_meta = ("upload-metadata", "data_category dmlkZW8=");
    for (headers, status) in [
        (vec![("upload-length", "10"), ok_meta], 412),
        (vec![("tus-resumable", "1.0.0"), ("upload-length", "-1"), ok_meta], 400),
        (vec![("tus-resumable", "1.0.0"), ("upload-length", "ten"), ok_meta], 400),
        (vec![("tus-resumable", "1.0.0"), ok_meta], 400),
        (
            vec![
                ("tus-resumable", "1.0.0"),
                ("upload-length", "10"),
                ("upload-metadata", "data_category !!!"),
            ],
            400,
        ),
        (vec![("tus-resumable", "1.0.0"), ("upload-length", "10")], 400),
        (
            vec![
                ("tus-resumable", "1.0.0"),
                ("upload-length", "10"),
                ("upload-length", "20"),
                ok_meta,
            ],
            400,
        ),
        (
            vec![
                ("tus-resumable", "1.0.0"),
                ("upload-length", "10"),
                ("upload-metadata", "data_category YXVkaW8="),
            ],
            403,
        ),
    ] {
        let response = post(headers.clone(), alice.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{headers:?}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert_eq!(
            response.headers()["tus-resumable"],
            "1.0.0",
            "every tus answer says its version"
        );
    }
    let unauthenticated = post(
        vec![("tus-resumable", "1.0.0"), ("upload-length", "10"), ok_meta],
        "x".into(),
    )
    .await
    .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(
        unauthenticated.headers()["tus-resumable"],
        "1.0.0",
        "refusals made before the handler too"
    );

    let url = create(&app, &alice, 1000).await;
    let wrong_type = tus(app.http.patch(&url), &alice)
        .header("upload-offset", "0")
        .header("content-type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    for offset in ["-1", "1x", ""] {
        assert_eq!(
            patch(&app, &alice, &url, offset, "x").await.status(),
            400,
            "offset {offset:?}"
        );
    }
    assert_eq!(
        patch(&app, &alice, &url, "5", "x").await.status(),
        409,
        "offset mismatch"
    );
    let theirs = patch(&app, &bob, &url, "0", "x").await;
    assert_eq!(theirs.status(), 404, "another user's upload");
    assert_eq!(theirs.headers()["tus-resumable"], "1.0.0");
    let with_checksum = |alg: &'static str, digest: &'static str| {
        tus(app.http.patch(&url), &alice)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-checksum", format!("{alg} {digest}"))
            .body("hello")
            .send()
    };
    assert_eq!(
        with_checksum("md5", "XUFAKrxLKna5cZ2REBfFkg==").await.unwrap().status(),
        400,
        "unknown algorithm"
    );
    assert_eq!(
        with_checksum("sha1", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .await
            .unwrap()
            .status(),
        460,
        "mismatch"
    );
    assert!(
        app.object_files().is_empty(),
        "nothing stored: {:?}",
        app.object_files()
    );
    let good = with_checksum("sha1", "qvTGHdzF6KLavt4PO0gs2a6pQ00=").await.unwrap();
    assert_eq!(good.status(), 204, "sha1 of `hello`");
    assert_eq!(good.headers()["upload-offset"], "5");
    assert_eq!(
        patch(&app, &alice, &url, "5", vec![0u8; 996]).await.status(),
        413,
        "past Upload-Length"
    );
    assert_eq!(head(&app, &alice, &url).await.headers()["upload-offset"], "5");
    app.stop().await;
}

common::on_both_databases!(a_stock_tus_client_resumes_across_a_restart);

/// A connection that drops in the middle of a PATCH keeps what arrived: the chunk is stored
/// encrypted (no plaintext at rest, not even in a resumable upload's chunks), HEAD says how
/// far it got, and the client resumes from there to a package with the SHA-256 of the whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_cut_off_midway_keeps_what_arrived_and_the_client_resumes() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["video"]).await;
    let data = common::distinctive_bytes(600_000);
    let url = create(&app, &alice, data.len() as u64).await;

    let (tx, body) = common::body_in_flight();
    let cut = tokio::spawn(
        tus(app.http.patch(&url), &alice)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(body)
            .send(),
    );
    tx.send(Ok(data[..250_000].to_vec())).await.unwrap();
    // Wait until the server has written some of it, then break the connection.
    let chunk_dir = app.objects_dir().join("uploads").join(url.rsplit('/').next().unwrap());
    for _ in 0..400 {
        if common::files_under(&chunk_dir)
            .iter()
            .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 100_000))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(Err(std::io::Error::other("the connection dropped")))
        .await
        .unwrap();
    assert!(cut.await.unwrap().is_err(), "the client saw its PATCH fail");

    let mut kept = 0;
    for _ in 0..200 {
        let response = head(&app, &alice, &url).await;
        if response.status() == 200 {
            kept = response.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
            if kept > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!((100_000..=250_000).contains(&kept), "what arrived is kept: {kept}");
    let window = &data[50_000..50_064];
    for chunk in common::files_under(&chunk_dir) {
        let stored = std::fs::read(&chunk).unwrap();
        assert!(
            !stored.windows(window.len()).any(|w| w == window),
            "a chunk at rest holds no plaintext: {}",
            chunk.display()
        );
    }

    let done = patch(&app, &alice, &url, &kept.to_string(), data[kept..].to_vec()).await;
    assert_eq!(done.status(), 204);
    let id = done.headers()["udim-package-id"].to_str().unwrap().to_owned();
    let (_, package) = app.get_json(&alice, &format!("/v1/packages/{id}")).await;
    assert_eq!(package["sha256"], sha256_hex(&data));
    app.stop().await;
}
