//! The stored object is ciphertext in the envelope format: no plaintext run survives, the
//! object carries no key material, the wrapped key kept in the database unwraps through the
//! key service and decrypts it back, and tampering with the stored bytes (a flipped byte,
//! swapped segments, a cut last segment, the header) fails decryption.

mod common;

use common::{Db, TestApp};
use serde_json::Value;
use udim::formats::envelope::{Binding, Decryptor, Header, TAG_LEN};
use udim_local::keyfile::LocalKeyFile;
use udim_ports::kms::{KeyContext, KeyService};
use uuid::Uuid;

struct Stored {
    raw: Vec<u8>,
    header: Header,
    wrapped_key: Vec<u8>,
    body_start: usize,
    package_id: Uuid,
    plaintext: Vec<u8>,
    kms: LocalKeyFile,
}

async fn upload_and_read_raw(db: Db) -> (TestApp, Stored) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    // Not a multiple of the 64 KiB segment, so there is a short last segment.
    let plaintext = common::distinctive_bytes(1024 * 1024 + 12_345);
    let response = app.upload(&alice, "documents", plaintext.clone()).await;
    assert_eq!(response.status(), 201);
    let package: Value = response.json().await.unwrap();
    let package_id: Uuid = package["id"].as_str().unwrap().parse().unwrap();
    let path = app.objects_dir().join("packages").join(package_id.to_string());
    let raw = std::fs::read(&path).unwrap();
    let (header, body_start) = Header::decode(&raw).unwrap().expect("a complete header");
    assert_eq!(header.key_id, package["encryption_key_id"].as_str().unwrap());
    assert_eq!(header.version(), 2, "objects are written in format 2");
    assert_eq!(header.legacy_wrapped_key, None, "the object carries no wrapped key");
    let wrapped_key = app
        .database()
        .await
        .packages
        .get_package("alice", package_id)
        .await
        .unwrap()
        .and_then(|p| p.wrapped_key)
        .expect("the database holds the wrapped key");
    let kms = LocalKeyFile::open_or_create(&app.data_dir().join("keys/kek.keys")).unwrap();
    (
        app,
        Stored {
            raw,
            header,
            wrapped_key,
            body_start,
            package_id,
            plaintext,
            kms,
        },
    )
}

impl Stored {
    async fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, udim::formats::envelope::EnvelopeError> {
        let ctx = KeyContext {
            package_id: self.package_id,
            user_id: "alice".into(),
        };
        let key = self
            .kms
            .unwrap_data_key(&self.header.key_id, &self.wrapped_key, &ctx)
            .await
            .unwrap();
        let mut decryptor = Decryptor::new(
            &key,
            &self.header,
            Binding {
                package_id: self.package_id,
                user_id: "alice",
            },
        );
        let mut out = Vec::new();
        for chunk in body.chunks(10_000) {
            out.extend(decryptor.push(chunk)?);
        }
        out.extend(decryptor.finish()?);
        Ok(out)
    }

    fn body(&self) -> &[u8] {
        &self.raw[self.body_start..]
    }

    fn sealed_segment(&self) -> usize {
        self.header.segment_size as usize + TAG_LEN
    }
}

async fn the_object_is_ciphertext_that_only_the_key_service_opens(db: Db) {
    let (app, stored) = upload_and_read_raw(db).await;
    for offset in (0..stored.plaintext.len() - 32).step_by(4096) {
        let run = &stored.plaintext[offset..offset + 32];
        assert!(
            memchr::memmem::find(&stored.raw, run).is_none(),
            "plaintext bytes {offset}..{} appear in the stored object",
            offset + 32
        );
    }
    assert_eq!(stored.decrypt(stored.body()).await.unwrap(), stored.plaintext);

    let ctx_of_other_user = KeyContext {
        package_id: stored.package_id,
        user_id: "mallory".into(),
    };
    assert!(
        stored
            .kms
            .unwrap_data_key(&stored.header.key_id, &stored.wrapped_key, &ctx_of_other_user)
            .await
            .is_err(),
        "the wrapped key is bound to its user"
    );
    app.stop().await;
}

/// Tampering is a property of the object format, not of the database: SQLite is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_stored_object_fails_decryption() {
    let (app, stored) = upload_and_read_raw(Db::Sqlite).await;
    let body = stored.body().to_vec();
    let s = stored.sealed_segment();

    let mut flipped = body.clone();
    flipped[s + 100] ^= 0x80;
    assert!(stored.decrypt(&flipped).await.is_err(), "a flipped byte is detected");

    let mut swapped = body.clone();
    swapped[..s].copy_from_slice(&body[s..2 * s]);
    swapped[s..2 * s].copy_from_slice(&body[..s]);
    assert!(stored.decrypt(&swapped).await.is_err(), "swapped segments are detected");

    let full_segments = body.len() / s;
    let cut = &body[..full_segments * s];
    assert!(stored.decrypt(cut).await.is_err(), "a cut last segment is detected");
    app.stop().await;
}

common::on_both_databases!(the_object_is_ciphertext_that_only_the_key_service_opens);
