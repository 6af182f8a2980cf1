//! The key-management suite ([`KeyService`]).

use uuid::Uuid;

use crate::PortError;
use crate::kms::{KeyContext, KeyService};

/// Key management: fresh keys, context binding, tamper detection, unknown key ids.
pub async fn key_service(kms: &dyn KeyService) {
    let ctx = KeyContext {
        package_id: Uuid::new_v4(),
        user_id: "alice".into(),
    };
    let a = kms.generate_data_key(&ctx).await.expect("generate");
    let b = kms.generate_data_key(&ctx).await.expect("generate");
    assert_ne!(
        a.plaintext.as_bytes(),
        b.plaintext.as_bytes(),
        "data keys must be fresh"
    );
    assert_eq!(
        a.key_id,
        kms.current_key_id(),
        "new keys are wrapped under the current key"
    );

    let unwrapped = kms.unwrap_data_key(&a.key_id, &a.wrapped, &ctx).await.expect("unwrap");
    assert_eq!(
        unwrapped.as_bytes(),
        a.plaintext.as_bytes(),
        "unwrap returns the data key"
    );

    let other_package = KeyContext {
        package_id: Uuid::new_v4(),
        ..ctx.clone()
    };
    let other_user = KeyContext {
        user_id: "mallory".into(),
        ..ctx.clone()
    };
    for wrong in [other_package, other_user] {
        assert!(
            matches!(
                kms.unwrap_data_key(&a.key_id, &a.wrapped, &wrong).await,
                Err(PortError::Integrity(_))
            ),
            "a different context must not unwrap"
        );
    }
    let mut tampered = a.wrapped.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(
        matches!(
            kms.unwrap_data_key(&a.key_id, &tampered, &ctx).await,
            Err(PortError::Integrity(_))
        ),
        "a modified wrapped key must not unwrap"
    );
    assert!(
        kms.unwrap_data_key("no-such-key", &a.wrapped, &ctx).await.is_err(),
        "an unknown key id must not unwrap"
    );
}
