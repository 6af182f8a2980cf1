//! Local providers: filesystem object storage, a local key file for key management and,
//! with feature `rabbitmq`, a RabbitMQ notifier. Used by the embedded default and the
//! `local` profile.

pub mod clamd;
pub mod fs;
pub mod keyfile;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
pub mod secret_file;
