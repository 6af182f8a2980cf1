//! The encrypted object format (pure: bytes in, bytes out; no I/O).
//!
//! ```text
//! object  = header || segment*            (at least one segment: the last)
//! header  = "UDIM" || version:u8 (=2) || algorithm:u8 (=1, AES-256-GCM)
//!           || segment_size:u32be || nonce_prefix:[u8; 7]
//!           || key_id_len:u16be || key_id
//! segment = AES-256-GCM(data key, nonce, plaintext[..segment_size], aad) || tag:[u8; 16]
//! nonce   = nonce_prefix || counter:u32be || last:u8   (last = 1 only on the final segment)
//! aad     = SHA-256("udim-envelope-v2" || header || package_id:[u8; 16]
//!                   || user_id_len:u32be || user_id)
//! ```
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): the counter
//! makes reordered or dropped segments fail, the last-segment flag makes truncation fail,
//! and the associated data binds every segment to this header (format, segment size, nonce
//! material, key id) and to the package and user it belongs to. Every segment but the last
//! holds exactly `segment_size` plaintext bytes; the last holds 0..=`segment_size`.
//!
//! The object carries no key material: its wrapped data key lives only in the metadata
//! database, so destroying that one copy (erasure) leaves every copy of the object — an old
//! object version, a backup, a failed delete — undecryptable by anyone, the KMS's holder
//! included. Format 1 also put the wrapped key in the header (`|| wrapped_len:u16be ||
//! wrapped_key`, AAD label `udim-envelope-v1`); it is still read, its header copy ignored,
//! and never written.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest;
use udim_ports::kms::PlainKey;
use uuid::Uuid;

const MAGIC: &[u8; 4] = b"UDIM";
/// The format written; format 1 is only read.
const VERSION: u8 = 2;
const LEGACY_VERSION: u8 = 1;
const ALG_AES_256_GCM_STREAM: u8 = 1;
/// Bytes of a GCM tag appended to every segment.
pub const TAG_LEN: usize = 16;
const NONCE_PREFIX_LEN: usize = 7;
const FIXED_HEADER_LEN: usize = 4 + 1 + 1 + 4 + NONCE_PREFIX_LEN;
/// Default plaintext bytes per segment.
pub const DEFAULT_SEGMENT_SIZE: u32 = 64 * 1024;
/// At least the size of the object that holds `plaintext` bytes in default segments: a tag
/// per segment, and a header under 4 KiB for any key id under 4,000 bytes (KMS key ARNs and
/// resource names are a few hundred). What a storage writer is told to expect.
pub fn stored_size_bound(plaintext: u64) -> u64 {
    let per_segment = u64::from(DEFAULT_SEGMENT_SIZE) / TAG_LEN as u64;
    plaintext.saturating_add(plaintext / per_segment).saturating_add(4096)
}

/// Segments larger than this are refused when reading, so a hostile header cannot make the
/// reader allocate without bound.
const MAX_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;

/// Why an encrypted object could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a UDIM encrypted object")]
    BadMagic,
    #[error("unsupported envelope version {0} or algorithm {1}")]
    Unsupported(u8, u8),
    #[error("malformed envelope header: {0}")]
    BadHeader(&'static str),
    #[error("segment {0} failed authentication (tampered, reordered, truncated or wrong key)")]
    Authentication(u32),
    #[error("the object ends before its last segment (truncated)")]
    Truncated,
    #[error("too many segments for one object")]
    TooManySegments,
}

/// The object header: how the body is sealed and under which key. Decrypting needs the
/// package's wrapped data key from the metadata database as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub segment_size: u32,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// The key (id, ARN, resource name) that wraps the data key.
    pub key_id: String,
    /// What a format-1 header carried after the key id: a copy of the wrapped data key.
    /// Never used to decrypt (the database's copy is the only one), kept so the header
    /// re-encodes byte for byte, as its segments' associated data requires. `None` for
    /// format 2, the only format written.
    pub legacy_wrapped_key: Option<Vec<u8>>,
}

impl Header {
    /// A format-2 header with a random nonce prefix and the default segment size.
    pub fn new(key_id: String) -> Self {
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        aws_lc_rs::rand::fill(&mut nonce_prefix).expect("the system random generator failed");
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            nonce_prefix,
            key_id,
            legacy_wrapped_key: None,
        }
    }

    /// The format version: 2, or 1 for a legacy header.
    pub fn version(&self) -> u8 {
        if self.legacy_wrapped_key.is_some() {
            LEGACY_VERSION
        } else {
            VERSION
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let legacy = self.legacy_wrapped_key.as_deref();
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + 4 + self.key_id.len() + legacy.map_or(0, <[u8]>::len));
        out.extend_from_slice(MAGIC);
        out.push(self.version());
        out.push(ALG_AES_256_GCM_STREAM);
        out.extend_from_slice(&self.segment_size.to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        let key_id = self.key_id.as_bytes();
        out.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
        out.extend_from_slice(key_id);
        if let Some(wrapped) = legacy {
            out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
            out.extend_from_slice(wrapped);
        }
        out
    }

    /// Parses a header from the start of `bytes`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((header, n)))` means the header took the first `n` bytes.
    pub fn decode(bytes: &[u8]) -> Result<Option<(Header, usize)>, EnvelopeError> {
        if bytes.len() < MAGIC.len() {
            return if MAGIC.starts_with(bytes) {
                Ok(None)
            } else {
                Err(EnvelopeError::BadMagic)
            };
        }
        if &bytes[..4] != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        if bytes.len() < FIXED_HEADER_LEN {
            return Ok(None);
        }
        let (version, algorithm) = (bytes[4], bytes[5]);
        if !matches!(version, VERSION | LEGACY_VERSION) || algorithm != ALG_AES_256_GCM_STREAM {
            return Err(EnvelopeError::Unsupported(version, algorithm));
        }
        let segment_size = u32::from_be_bytes(bytes[6..10].try_into().expect("4 bytes"));
        if segment_size == 0 || segment_size > MAX_SEGMENT_SIZE {
            return Err(EnvelopeError::BadHeader("segment size out of range"));
        }
        let nonce_prefix: [u8; NONCE_PREFIX_LEN] = bytes[10..17].try_into().expect("7 bytes");
        let mut at = FIXED_HEADER_LEN;
        let Some((key_id, next)) = length_prefixed(bytes, at) else {
            return Ok(None);
        };
        let key_id = String::from_utf8(key_id.to_vec()).map_err(|_| EnvelopeError::BadHeader("key id is not UTF-8"))?;
        at = next;
        let legacy_wrapped_key = if version == LEGACY_VERSION {
            let Some((wrapped_key, next)) = length_prefixed(bytes, at) else {
                return Ok(None);
            };
            at = next;
            Some(wrapped_key.to_vec())
        } else {
            None
        };
        let header = Header {
            segment_size,
            nonce_prefix,
            key_id,
            legacy_wrapped_key,
        };
        Ok(Some((header, at)))
    }
}

fn length_prefixed(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
    let start = at + 2;
    Some((bytes.get(start..start + len)?, start + len))
}

/// What an object is bound to besides its header.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub package_id: Uuid,
    pub user_id: &'a str,
}

struct SegmentCipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    aad: [u8; 32],
    counter: u32,
    exhausted: bool,
}

impl SegmentCipher {
    fn new(key: &PlainKey, header: &Header, binding: Binding<'_>) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(match header.version() {
            LEGACY_VERSION => b"udim-envelope-v1",
            _ => b"udim-envelope-v2",
        });
        ctx.update(&header.encode());
        ctx.update(binding.package_id.as_bytes());
        ctx.update(&(binding.user_id.len() as u32).to_be_bytes());
        ctx.update(binding.user_id.as_bytes());
        let aad = ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes");
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("a 32-byte key is valid");
        Self {
            key: LessSafeKey::new(unbound),
            nonce_prefix: header.nonce_prefix,
            aad,
            counter: 0,
            exhausted: false,
        }
    }

    fn next_nonce(&mut self, last: bool) -> Result<(Nonce, u32), EnvelopeError> {
        if self.exhausted {
            return Err(EnvelopeError::TooManySegments);
        }
        let counter = self.counter;
        let mut nonce = [0u8; 12];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
        nonce[11] = u8::from(last);
        match self.counter.checked_add(1) {
            Some(next) => self.counter = next,
            None => self.exhausted = true,
        }
        Ok((Nonce::assume_unique_for_key(nonce), counter))
    }
}

/// Encrypts a plaintext stream pushed in arbitrary pieces.
pub struct Encryptor {
    cipher: SegmentCipher,
    segment_size: usize,
    pending: Vec<u8>,
}

impl Encryptor {
    pub fn new(key: &PlainKey, header: &Header, binding: Binding<'_>) -> Self {
        Self {
            cipher: SegmentCipher::new(key, header, binding),
            segment_size: header.segment_size as usize,
            pending: Vec::with_capacity(header.segment_size as usize),
        }
    }

    fn seal(&mut self, plaintext_len: usize, last: bool, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let (nonce, _) = self.cipher.next_nonce(last)?;
        let start = out.len();
        out.extend_from_slice(&self.pending[..plaintext_len]);
        let tag = self
            .cipher
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(self.cipher.aad), &mut out[start..])
            .map_err(|_| EnvelopeError::TooManySegments)?;
        out.extend_from_slice(tag.as_ref());
        self.pending.drain(..plaintext_len);
        Ok(())
    }

    /// Takes more plaintext; returns the ciphertext of every segment now known not to be
    /// the last (a full segment is held back until more data or [`finish`](Self::finish)).
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.pending.len() == self.segment_size {
                self.seal(self.segment_size, false, &mut out)?;
            }
            let take = (self.segment_size - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(out)
    }

    /// Seals the held-back data as the last segment.
    pub fn finish(mut self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(self.pending.len() + TAG_LEN);
        self.seal(self.pending.len(), true, &mut out)?;
        Ok(out)
    }
}

/// Decrypts the segments that follow a header, pushed in arbitrary pieces. Plaintext is
/// released only for segments that authenticated.
pub struct Decryptor {
    cipher: SegmentCipher,
    sealed_segment_len: usize,
    pending: Vec<u8>,
    /// The object's last segment index, when known: a stream that stops before it is a
    /// range read, not a truncation.
    final_segment: Option<u32>,
}

impl Decryptor {
    pub fn new(key: &PlainKey, header: &Header, binding: Binding<'_>) -> Self {
        let sealed_segment_len = header.segment_size as usize + TAG_LEN;
        Self {
            cipher: SegmentCipher::new(key, header, binding),
            sealed_segment_len,
            pending: Vec::with_capacity(sealed_segment_len),
            final_segment: None,
        }
    }

    /// A decryptor for a stream that starts at segment `first` of an object whose last
    /// segment is `final_segment`: what a range read fetches (see [`Layout::span`]).
    pub fn starting_at(key: &PlainKey, header: &Header, binding: Binding<'_>, first: u32, final_segment: u32) -> Self {
        let mut decryptor = Self::new(key, header, binding);
        decryptor.cipher.counter = first;
        decryptor.final_segment = Some(final_segment);
        decryptor
    }

    fn open_front(&mut self, len: usize, last: bool, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let (nonce, counter) = self.cipher.next_nonce(last)?;
        let mut segment: Vec<u8> = self.pending.drain(..len).collect();
        let plaintext = self
            .cipher
            .key
            .open_in_place(nonce, Aad::from(self.cipher.aad), &mut segment)
            .map_err(|_| EnvelopeError::Authentication(counter))?;
        out.extend_from_slice(plaintext);
        Ok(())
    }

    /// Takes more ciphertext; returns the plaintext of every segment that is complete,
    /// known not to be the last, and authentic.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.pending.len() == self.sealed_segment_len {
                self.open_front(self.sealed_segment_len, false, &mut out)?;
            }
            let take = (self.sealed_segment_len - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(out)
    }

    /// Opens the held-back data as the stream's final segment (the object's last one,
    /// unless [`Decryptor::starting_at`] said the object goes on).
    pub fn finish(mut self) -> Result<Vec<u8>, EnvelopeError> {
        if self.pending.len() < TAG_LEN {
            return Err(EnvelopeError::Truncated);
        }
        let last = self.final_segment.is_none_or(|f| f == self.cipher.counter);
        let mut out = Vec::with_capacity(self.pending.len());
        self.open_front(self.pending.len(), last, &mut out)?;
        Ok(out)
    }
}

/// Where plaintext bytes live in an encrypted object (pure arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub header_len: u64,
    pub segment_size: u64,
    pub plaintext_len: u64,
}

/// The part of an object to fetch for a plaintext range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub first_segment: u32,
    pub final_segment: u32,
    /// Ciphertext bytes to fetch: whole segments from `first_segment` on.
    pub ciphertext: std::ops::Range<u64>,
    /// Plaintext bytes to drop from the front of the first segment.
    pub skip: u64,
    /// Plaintext bytes to deliver.
    pub len: u64,
}

impl Layout {
    /// Segments in the object (an empty object still has one, empty, last segment).
    pub fn segments(&self) -> u64 {
        self.plaintext_len.div_ceil(self.segment_size).max(1)
    }

    pub fn object_len(&self) -> u64 {
        self.header_len + self.plaintext_len + self.segments() * TAG_LEN as u64
    }

    /// The segments holding plaintext bytes `start..end` (`start < end <= plaintext_len`).
    pub fn span(&self, start: u64, end: u64) -> Option<Span> {
        if start >= end || end > self.plaintext_len {
            return None;
        }
        let sealed = self.segment_size + TAG_LEN as u64;
        let first = start / self.segment_size;
        let last_needed = (end - 1) / self.segment_size;
        let final_segment = self.segments() - 1;
        let ciphertext_end = if last_needed == final_segment {
            self.object_len()
        } else {
            self.header_len + (last_needed + 1) * sealed
        };
        Some(Span {
            first_segment: u32::try_from(first).ok()?,
            final_segment: u32::try_from(final_segment).ok()?,
            ciphertext: self.header_len + first * sealed..ciphertext_end,
            skip: start - first * self.segment_size,
            len: end - start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u32 = 16;

    fn header() -> Header {
        Header {
            segment_size: SEG,
            nonce_prefix: [7; NONCE_PREFIX_LEN],
            key_id: "local:test".into(),
            legacy_wrapped_key: None,
        }
    }

    fn key() -> PlainKey {
        PlainKey::from_bytes([42; 32])
    }

    fn binding() -> Binding<'static> {
        Binding {
            package_id: Uuid::from_u128(1),
            user_id: "alice",
        }
    }

    fn encrypt(plain: &[u8], piece: usize) -> Vec<u8> {
        let mut enc = Encryptor::new(&key(), &header(), binding());
        let mut out = Vec::new();
        for chunk in plain.chunks(piece.max(1)) {
            out.extend(enc.push(chunk).unwrap());
        }
        out.extend(enc.finish().unwrap());
        out
    }

    fn decrypt_with(body: &[u8], piece: usize, binding: Binding<'_>) -> Result<Vec<u8>, EnvelopeError> {
        let mut dec = Decryptor::new(&key(), &header(), binding);
        let mut out = Vec::new();
        for chunk in body.chunks(piece.max(1)) {
            out.extend(dec.push(chunk)?);
        }
        out.extend(dec.finish()?);
        Ok(out)
    }

    fn decrypt(body: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        decrypt_with(body, 5, binding())
    }

    #[test]
    fn round_trips_every_length_around_segment_boundaries_in_any_piece_size() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for piece in [1, 3, 16, 64] {
                let body = encrypt(&plain, piece);
                let segments = (len as usize).div_ceil(SEG as usize).max(1);
                assert_eq!(body.len(), len as usize + segments * TAG_LEN, "len {len}");
                assert_eq!(decrypt_with(&body, piece, binding()).unwrap(), plain);
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails() {
        let body = encrypt(&[9u8; 40], 7);
        for i in 0..body.len() {
            let mut bad = body.clone();
            bad[i] ^= 0x01;
            assert!(decrypt(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn swapped_segments_fail() {
        let plain: Vec<u8> = (0..48u8).collect();
        let body = encrypt(&plain, 48);
        let s = (SEG as usize) + TAG_LEN;
        let mut swapped = body.clone();
        swapped[..s].copy_from_slice(&body[s..2 * s]);
        swapped[s..2 * s].copy_from_slice(&body[..s]);
        assert_eq!(decrypt(&swapped), Err(EnvelopeError::Authentication(0)));
    }

    #[test]
    fn a_cut_last_segment_or_a_cut_tail_fails() {
        let plain: Vec<u8> = (0..40u8).collect();
        let body = encrypt(&plain, 40);
        let s = (SEG as usize) + TAG_LEN;
        // Dropping the whole final segment leaves a non-last segment at the end.
        assert!(decrypt(&body[..2 * s]).is_err());
        assert!(decrypt(&body[..body.len() - 1]).is_err());
        assert_eq!(decrypt(&[]), Err(EnvelopeError::Truncated));
    }

    #[test]
    fn another_package_or_user_cannot_open_it() {
        let body = encrypt(b"hello world, this is more than one segment", 4);
        let other_package = Binding {
            package_id: Uuid::from_u128(2),
            user_id: "alice",
        };
        let other_user = Binding {
            package_id: Uuid::from_u128(1),
            user_id: "mallory",
        };
        assert!(decrypt_with(&body, 4, other_package).is_err());
        assert!(decrypt_with(&body, 4, other_user).is_err());
    }

    #[test]
    fn any_plaintext_range_decrypts_from_just_its_segments() {
        let plain: Vec<u8> = (0..100u8).collect();
        let body = encrypt(&plain, 100);
        let layout = Layout {
            header_len: 0,
            segment_size: SEG as u64,
            plaintext_len: plain.len() as u64,
        };
        assert_eq!(layout.object_len(), body.len() as u64);
        for start in 0..plain.len() as u64 {
            for end in start + 1..=plain.len() as u64 {
                let span = layout.span(start, end).unwrap();
                let fetched = &body[span.ciphertext.start as usize..span.ciphertext.end as usize];
                let mut dec =
                    Decryptor::starting_at(&key(), &header(), binding(), span.first_segment, span.final_segment);
                let mut out = dec.push(fetched).unwrap();
                out.extend(dec.finish().unwrap());
                let got = &out[span.skip as usize..(span.skip + span.len) as usize];
                assert_eq!(got, &plain[start as usize..end as usize], "{start}..{end}");
            }
        }
        assert_eq!(layout.span(5, 5), None);
        assert_eq!(layout.span(0, 101), None);
    }

    #[test]
    fn a_range_cut_short_or_moved_fails() {
        let plain: Vec<u8> = (0..100u8).collect();
        let body = encrypt(&plain, 100);
        let layout = Layout {
            header_len: 0,
            segment_size: SEG as u64,
            plaintext_len: 100,
        };
        let span = layout.span(20, 40).unwrap();
        let fetched = &body[span.ciphertext.start as usize..span.ciphertext.end as usize];
        let mut shifted =
            Decryptor::starting_at(&key(), &header(), binding(), span.first_segment + 1, span.final_segment);
        assert!(
            shifted.push(fetched).and_then(|_| shifted.finish()).is_err(),
            "segments at the wrong position"
        );
        let tail = layout.span(90, 100).unwrap();
        let fetched = &body[tail.ciphertext.start as usize..tail.ciphertext.end as usize - 1];
        let mut cut = Decryptor::starting_at(&key(), &header(), binding(), tail.first_segment, tail.final_segment);
        assert!(
            cut.push(fetched).and_then(|_| cut.finish()).is_err(),
            "a truncated last segment"
        );
    }

    #[test]
    fn header_round_trips_and_reports_when_it_needs_more_bytes() {
        let h = header();
        let bytes = h.encode();
        for cut in 0..bytes.len() {
            assert_eq!(Header::decode(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        let mut with_body = bytes.clone();
        with_body.extend_from_slice(b"body");
        assert_eq!(Header::decode(&with_body), Ok(Some((h, bytes.len()))));
    }

    #[test]
    fn header_rejects_garbage() {
        assert_eq!(Header::decode(b"NOPE-and-more"), Err(EnvelopeError::BadMagic));
        let mut bytes = header().encode();
        bytes[4] = 9;
        assert_eq!(Header::decode(&bytes), Err(EnvelopeError::Unsupported(9, 1)));
        let mut bytes = header().encode();
        bytes[6..10].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(Header::decode(&bytes), Err(EnvelopeError::BadHeader(_))));
    }

    #[test]
    fn a_format_2_header_holds_only_format_segment_size_nonce_material_and_key_id() {
        let h = Header::new("arn:aws:kms:eu-west-1:1:key/k".into());
        let bytes = h.encode();
        assert_eq!(bytes[4], 2, "format 2 is written");
        assert_eq!(
            bytes.len(),
            FIXED_HEADER_LEN + 2 + h.key_id.len(),
            "nothing after the key id"
        );
        assert_eq!(Header::decode(&bytes), Ok(Some((h, bytes.len()))));
    }

    #[test]
    fn format_1_objects_still_decrypt_and_cannot_pass_as_format_2() {
        let legacy = Header {
            legacy_wrapped_key: Some(vec![9; 40]),
            ..header()
        };
        let bytes = legacy.encode();
        assert_eq!(bytes[4], 1);
        for cut in 0..bytes.len() {
            assert_eq!(Header::decode(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        let (decoded, len) = Header::decode(&bytes).unwrap().unwrap();
        assert_eq!((&decoded, len), (&legacy, bytes.len()));

        let plain = b"written before format 2".repeat(3);
        let mut enc = Encryptor::new(&key(), &legacy, binding());
        let mut body = enc.push(&plain).unwrap();
        body.extend(enc.finish().unwrap());
        let mut dec = Decryptor::new(&key(), &decoded, binding());
        let mut out = dec.push(&body).unwrap();
        out.extend(dec.finish().unwrap());
        assert_eq!(out, plain);

        // The same segments under a format-2 header (the wrapped key stripped) fail: the
        // format is bound into every segment.
        let mut dec = Decryptor::new(&key(), &header(), binding());
        let opened = dec.push(&body).and_then(|mut out| {
            out.extend(dec.finish()?);
            Ok(out)
        });
        assert!(matches!(opened, Err(EnvelopeError::Authentication(0))), "{opened:?}");
    }
}
