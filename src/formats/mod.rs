//! Pure cores: bytes or strings in, values out, no I/O. The easiest code to trust, test and
//! fuzz; everything that parses untrusted input lives here.

pub mod archive;
pub mod content;
pub mod envelope;
pub mod input;
pub mod range;
pub mod tus;
