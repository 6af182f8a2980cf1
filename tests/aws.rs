//! The whole upload path on the `aws` build against moto (S3, KMS, SQS) and real PostgreSQL:
//! consent → upload → ciphertext object in S3 → metadata → event on SQS.

mod common;

use common::{Db, Options, TestApp};
use serde_json::Value;
use udim::config::{AwsKmsSettings, KmsSettings, QueueSettings, S3Settings, SqsSettings, StorageSettings};
use udim_testkit::moto;

/// moto with a bucket, a KMS key and a queue, and the service on PostgreSQL using them.
struct OnAws {
    app: TestApp,
    endpoint: String,
    bucket: String,
    queue_url: String,
    config: udim_aws::aws_config::SdkConfig,
    _moto: moto::Moto,
}

async fn on_aws(versioned_bucket: bool) -> OnAws {
    let moto = moto::start().await;
    let endpoint = moto.endpoint.clone();
    let bucket = format!("udim-{}", uuid::Uuid::new_v4().simple());
    let http = reqwest::Client::new();
    http.put(format!("{endpoint}/{bucket}")).send().await.unwrap();
    if versioned_bucket {
        let enabled = http
            .put(format!("{endpoint}/{bucket}?versioning"))
            .body(
                "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <Status>Enabled</Status></VersioningConfiguration>",
            )
            .send()
            .await
            .unwrap();
        assert!(enabled.status().is_success(), "versioning on");
    }
    let credentials = udim_aws::static_credentials(moto::ACCESS_KEY_ID, moto::SECRET_ACCESS_KEY);
    let config = udim_aws::sdk_config(Some(moto::REGION), Some(&endpoint), Some(&credentials)).await;
    let key_id = udim_aws::aws_sdk_kms::Client::new(&config)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    let queue_url = udim_aws::aws_sdk_sqs::Client::new(&config)
        .create_queue()
        .queue_name("udim-events")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let (b, e, q) = (bucket.clone(), endpoint.clone(), queue_url.clone());
    let app = TestApp::spawn_with(
        Db::Postgres,
        Options {
            configure: Some(Box::new(move |s| {
                s.aws_credentials = Some(credentials);
                s.storage = StorageSettings::S3(S3Settings {
                    bucket: b,
                    region: Some("us-east-1".into()),
                    endpoint: Some(e.clone()),
                    allow_http: true,
                    sse_kms_key_id: None,
                });
                s.kms = KmsSettings::Aws(AwsKmsSettings {
                    key_id,
                    region: Some("us-east-1".into()),
                    endpoint: Some(e.clone()),
                });
                s.queue = QueueSettings::Sqs(SqsSettings {
                    queue_url: q,
                    region: Some("us-east-1".into()),
                    endpoint: Some(e),
                });
            })),
            ..Options::default()
        },
    )
    .await;
    OnAws {
        app,
        endpoint,
        bucket,
        queue_url,
        config,
        _moto: moto,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_upload_s3_ciphertext_and_sqs_event_on_the_aws_build() {
    let OnAws {
        app,
        endpoint,
        bucket,
        queue_url,
        config,
        _moto,
    } = on_aws(false).await;
    let sqs = udim_aws::aws_sdk_sqs::Client::new(&config);
    let ready: Value = reqwest::get(format!("{}/readyz", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ["status", "database", "storage", "kms", "queue"].map(|name| ready[name].as_str()),
        [Some("ok"); 5],
        "S3, KMS (DescribeKey) and SQS each answer their readiness probe: {ready}"
    );
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let plaintext = common::distinctive_bytes(500_000);
    let response = app.upload(&alice, "audio", plaintext.clone()).await;
    assert_eq!(response.status(), 201);
    let package: Value = response.json().await.unwrap();
    let id = package["id"].as_str().unwrap();
    assert!(
        package["storage_uri"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/packages/"))
    );
    assert!(
        package["encryption_key_id"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:")
    );

    let s3 = udim_aws::s3_storage(&udim_aws::S3Config {
        bucket: bucket.clone(),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.clone()),
        allow_http: true,
        sse_kms_key_id: None,
        credentials: app.settings.aws_credentials.clone(),
    })
    .unwrap();
    use futures::TryStreamExt as _;
    use udim_ports::storage::BlobStore as _;
    let chunks: Vec<bytes::Bytes> = s3
        .get(&format!("packages/{id}"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let object = chunks.concat();
    assert!(object.len() > plaintext.len());
    for offset in (0..plaintext.len() - 32).step_by(4096) {
        assert!(
            memchr::memmem::find(&object, &plaintext[offset..offset + 32]).is_none(),
            "plaintext at {offset} in S3"
        );
    }

    let mut event = None;
    for _ in 0..20 {
        let got = sqs
            .receive_message()
            .queue_url(&queue_url)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = got.messages().first() {
            event = Some(m.clone());
            break;
        }
    }
    let event = event.expect("the package.stored event reaches SQS");
    let body: Value = serde_json::from_str(event.body().unwrap()).unwrap();
    assert_eq!(body["package_id"], id);
    assert_eq!(body["sha256"], package["sha256"]);
    assert_eq!(body["encryption_key_id"], package["encryption_key_id"]);
    assert_eq!(
        event.message_attributes().unwrap()["event_type"].string_value(),
        Some("package.stored")
    );

    let reader = app.token("pipeline", &["udim:read"]);
    let read = app
        .http
        .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.bytes().await.unwrap().as_ref(),
        plaintext.as_slice(),
        "decrypted through AWS KMS"
    );
    app.stop().await;
}

/// With versioning on, erasing a package leaves its object's old version in S3 (until a
/// lifecycle rule expires it): that version must be undecryptable, by the service and by
/// direct AWS KMS calls with the package's encryption context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_s3_version_of_an_erased_package_cannot_be_decrypted() {
    let OnAws {
        app,
        endpoint,
        bucket,
        config,
        _moto,
        ..
    } = on_aws(true).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let response = app.upload(&alice, "audio", common::distinctive_bytes(300_000)).await;
    assert_eq!(response.status(), 201);
    let package: Value = response.json().await.unwrap();
    let id: uuid::Uuid = package["id"].as_str().unwrap().parse().unwrap();
    let key_id = package["encryption_key_id"].as_str().unwrap().to_owned();
    let wrapped_key = app
        .wrapped_key("alice", id)
        .await
        .expect("the wrapped key, before the erasure");
    app.erase_package(&alice, id).await;

    let http = reqwest::Client::new();
    let listing = http
        .get(format!("{endpoint}/{bucket}?versions&prefix=packages/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let version = listing
        .split("<Version>")
        .nth(1)
        .and_then(|v| v.split("<VersionId>").nth(1))
        .and_then(|v| v.split("</VersionId>").next())
        .unwrap_or_else(|| panic!("the erased object's old version is still listed: {listing}"))
        .to_owned();
    let old = http
        .get(format!("{endpoint}/{bucket}/packages/{id}?versionId={version}"))
        .send()
        .await
        .unwrap();
    assert!(old.status().is_success(), "the old version is readable from S3");
    let old = old.bytes().await.unwrap();
    assert!(old.starts_with(b"UDIM"), "it is the package's envelope");

    let read = app
        .http
        .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
        .bearer_auth(app.token("pipeline", &["udim:read"]))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 404);
    let kms = udim_aws::AwsKms::new(&config, &key_id).await.unwrap();
    let ctx = udim_ports::kms::KeyContext {
        package_id: id,
        user_id: "alice".into(),
    };
    common::assert_no_key_in_object(&old, &wrapped_key, &kms, &key_id, &ctx, 512).await;
    app.stop().await;
}
