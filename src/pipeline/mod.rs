//! What happens to a package: [`ingest`] (a simple upload), [`resumable`] (tus uploads on top
//! of it), [`read`] (downstream reads), [`erasure`] (deletion and retention), the outbox
//! [`relay`], and the versioned [`events`] the downstream pipeline consumes.

pub mod admission;
pub mod budget;
pub mod erasure;
pub mod events;
pub mod export;
pub mod ingest;
pub mod read;
pub mod relay;
pub mod resumable;
