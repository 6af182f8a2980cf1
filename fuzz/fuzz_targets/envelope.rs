//! The encrypted-object format read back from storage, which anyone with write access to the
//! bucket controls. Arbitrary bytes: header decoding and decryption never panic and never
//! yield plaintext. A real object (sealed here with small segments so that one input spans
//! many): it decrypts to its plaintext in pieces cut anywhere, and with any one byte changed
//! or any tail cut off it does not decrypt at all. And the segment arithmetic for ranged reads
//! stays inside the object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udim::formats::envelope::{Binding, Decryptor, Encryptor, EnvelopeError, Header, Layout};
use udim_ports::kms::PlainKey;

const BINDING: Binding<'static> = Binding {
    package_id: uuid::Uuid::nil(),
    user_id: "fuzz",
};

/// Decrypts an object's body given in two pieces split at `cut`.
fn open(key: &PlainKey, header: &Header, body: &[u8], cut: usize) -> Result<Vec<u8>, EnvelopeError> {
    let mut decryptor = Decryptor::new(key, header, BINDING);
    let (first, second) = body.split_at(cut.min(body.len()));
    let mut out = decryptor.push(first)?;
    out.extend(decryptor.push(second)?);
    out.extend(decryptor.finish()?);
    Ok(out)
}

/// Decodes the header at the start of `object` and decrypts the rest.
fn open_object(key: &PlainKey, object: &[u8], cut: usize) -> Result<Vec<u8>, EnvelopeError> {
    match Header::decode(object)? {
        Some((header, used)) => open(key, &header, &object[used..], cut),
        None => Err(EnvelopeError::BadHeader("cut short")),
    }
}

fuzz_target!(|input: (&[u8], Vec<u8>, u8, u32, u8, u16, (u64, u64, u32))| {
    let (raw, plaintext, segment, change_at, change, cut, (start, end, range_segment)) = input;
    let key = PlainKey::from_bytes([7; 32]);
    let cut = usize::from(cut);

    assert!(open_object(&key, raw, cut).is_err(), "arbitrary bytes decrypted");

    let header = Header {
        segment_size: u32::from(segment.max(1)),
        nonce_prefix: std::array::from_fn(|i| segment.wrapping_add(i as u8)),
        key_id: "fuzz-key".to_owned(),
        legacy_wrapped_key: None,
    };
    let mut encryptor = Encryptor::new(&key, &header, BINDING);
    let mut object = header.encode();
    object.extend(encryptor.push(&plaintext).unwrap());
    object.extend(encryptor.finish().unwrap());
    assert_eq!(open_object(&key, &object, cut).unwrap(), plaintext);
    let layout = Layout {
        header_len: header.encode().len() as u64,
        segment_size: u64::from(header.segment_size),
        plaintext_len: plaintext.len() as u64,
    };
    assert_eq!(layout.object_len(), object.len() as u64);

    let mut truncated = object.clone();
    truncated.truncate(cut % object.len());
    assert!(
        open_object(&key, &truncated, cut).is_err(),
        "a cut-short object decrypted"
    );
    if change != 0 {
        let at = change_at as usize % object.len();
        object[at] ^= change;
        assert!(open_object(&key, &object, cut).is_err(), "a changed object decrypted");
    }

    // Ranged reads: any range within any plausible object (sizes up to 1 PiB).
    let layout = Layout {
        header_len: 64,
        segment_size: u64::from(range_segment.clamp(1, 16 << 20)),
        plaintext_len: end % (1 << 50),
    };
    if let Some(span) = layout.span(start % (1 << 50), layout.plaintext_len) {
        assert!(span.ciphertext.start < span.ciphertext.end);
        assert!(span.ciphertext.end <= layout.object_len());
        assert!(span.skip < layout.segment_size);
    }
});
