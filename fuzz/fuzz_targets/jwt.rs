//! Bearer tokens, which anyone can send: header decoding, algorithm choice and claim checks.
//! Never a panic, and nothing the fuzzer makes is accepted (it does not know the secret).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use udim::auth::Authenticator;

fn auth() -> &'static (Authenticator, tokio::runtime::Runtime) {
    static AUTH: OnceLock<(Authenticator, tokio::runtime::Runtime)> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut settings = udim::config::Settings::default();
        settings.auth.hs256_secret = Some("a fuzzing secret of thirty-two bytes or more".to_owned().into());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (Authenticator::from_settings(&settings).unwrap(), runtime)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let (auth, runtime) = auth();
    assert!(
        runtime.block_on(auth.verify(token)).is_err(),
        "a forged token was accepted"
    );
});
