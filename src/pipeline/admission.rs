//! Who may start work now: per-user and global bounds on uploads in flight, and per-user and
//! global rates of uploads and consent changes, so one caller (or a crowd) cannot take the
//! service's memory, connections, key service or ledger for itself. A refusal says when to try again (429 with
//! `Retry-After`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitSettings;

/// Why work was not admitted, and when to ask again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("{user_limit} uploads of yours are already in progress; finish or end one first")]
    UserUploads { user_limit: usize },
    #[error("the service has {global_limit} uploads in progress, its limit; retry shortly")]
    GlobalUploads { global_limit: usize },
    #[error("too many {what} per second; slow down")]
    Rate { what: &'static str, retry_after: Duration },
}

impl Refused {
    /// When the caller may try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Rate { retry_after, .. } => *retry_after,
            // An upload in progress ends when it ends: a second is a polite guess.
            Self::UserUploads { .. } | Self::GlobalUploads { .. } => Duration::from_secs(1),
        }
    }
}

/// The admission bounds (`limits.*`), shared by every request of a replica.
pub struct Admission {
    user_uploads: usize,
    global_uploads: usize,
    in_flight: Arc<Mutex<InFlight>>,
    upload_rate: Option<UserRate>,
    consent_rate: Option<UserRate>,
    /// All users' together.
    all_uploads_rate: Option<DefaultDirectRateLimiter>,
    all_consents_rate: Option<DefaultDirectRateLimiter>,
}

/// A token bucket per user.
struct UserRate {
    limiter: DefaultKeyedRateLimiter<String>,
    /// The number of buckets at which the full ones are next forgotten.
    prune_at: AtomicUsize,
}

/// Buckets kept before the first pass that forgets full ones.
const PRUNE_AT: usize = 10_000;

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("user_uploads", &self.user_uploads)
            .field("global_uploads", &self.global_uploads)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct InFlight {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// An upload in flight; dropping it (the request ending in any way) frees its place.
#[must_use = "the upload counts as in flight only while its slot is held"]
pub struct UploadSlot {
    user: String,
    in_flight: Arc<Mutex<InFlight>>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.total -= 1;
        if let Some(count) = in_flight.per_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                in_flight.per_user.remove(&self.user);
            }
        }
    }
}

// Each bucket holds a burst of a second's worth, refilled evenly; 0 is no limit.
fn limiter(per_second: u32) -> Option<UserRate> {
    NonZeroU32::new(per_second).map(|rate| UserRate {
        limiter: RateLimiter::keyed(Quota::per_second(rate)),
        prune_at: AtomicUsize::new(PRUNE_AT),
    })
}

fn shared_limiter(per_second: u32) -> Option<DefaultDirectRateLimiter> {
    NonZeroU32::new(per_second).map(|rate| RateLimiter::direct(Quota::per_second(rate)))
}

fn check_shared(rate: Option<&DefaultDirectRateLimiter>, what: &'static str) -> Result<(), Refused> {
    let Some(limiter) = rate else { return Ok(()) };
    limiter.check().map_err(|not_until| Refused::Rate {
        what,
        retry_after: not_until.wait_time_from(DefaultClock::default().now()),
    })
}

impl Admission {
    pub fn new(limits: &LimitSettings) -> Self {
        Self {
            user_uploads: limits.uploads_in_flight_per_user,
            global_uploads: limits.uploads_in_flight,
            in_flight: Arc::default(),
            upload_rate: limiter(limits.uploads_per_second_per_user),
            consent_rate: limiter(limits.consent_changes_per_second_per_user),
            all_uploads_rate: shared_limiter(limits.uploads_per_second),
            all_consents_rate: shared_limiter(limits.consent_changes_per_second),
        }
    }

    fn check_rate(rate: Option<&UserRate>, user: &str, what: &'static str) -> Result<(), Refused> {
        let Some(rate) = rate else { return Ok(()) };
        let limiter = &rate.limiter;
        let checked = limiter.check_key(&user.to_owned());
        // Forget callers whose buckets are full again, so the map stays as large as the set
        // of recent callers; only once it has doubled since the last pass, so a crowd of
        // distinct callers does not make every request scan the map.
        if limiter.len() > rate.prune_at.load(Ordering::Relaxed) {
            limiter.retain_recent();
            rate.prune_at
                .store((limiter.len() * 2).max(PRUNE_AT), Ordering::Relaxed);
        }
        checked.map_err(|not_until| Refused::Rate {
            what,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }

    /// Admits an upload (a simple one, or a tus PATCH or creation with data) by `user`. The
    /// places in flight are taken before the rates are charged, so an upload refused for want
    /// of a place uses up none of the rates.
    pub fn upload(&self, user: &str) -> Result<UploadSlot, Refused> {
        let slot = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if in_flight.total >= self.global_uploads {
                return Err(Refused::GlobalUploads {
                    global_limit: self.global_uploads,
                });
            }
            let mine = in_flight.per_user.entry(user.to_owned()).or_default();
            if *mine >= self.user_uploads {
                return Err(Refused::UserUploads {
                    user_limit: self.user_uploads,
                });
            }
            *mine += 1;
            in_flight.total += 1;
            UploadSlot {
                user: user.to_owned(),
                in_flight: self.in_flight.clone(),
            }
        };
        // A refusal here drops the slot, giving its place back.
        Self::check_rate(self.upload_rate.as_ref(), user, "uploads")?;
        check_shared(self.all_uploads_rate.as_ref(), "uploads (of all users)")?;
        Ok(slot)
    }

    /// Admits a consent change (grant, update, withdrawal) by `user`.
    pub fn consent_change(&self, user: &str) -> Result<(), Refused> {
        Self::check_rate(self.consent_rate.as_ref(), user, "consent changes")?;
        check_shared(self.all_consents_rate.as_ref(), "consent changes (of all users)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_user: usize, global: usize) -> LimitSettings {
        LimitSettings {
            uploads_in_flight_per_user: per_user,
            uploads_in_flight: global,
            uploads_per_second_per_user: 0,
            consent_changes_per_second_per_user: 3,
            ..LimitSettings::default()
        }
    }

    #[test]
    fn uploads_in_flight_are_bounded_per_user_and_in_all_and_freed_on_drop() {
        let admission = Admission::new(&limits(2, 3));
        let a1 = admission.upload("alice").unwrap();
        let _a2 = admission.upload("alice").unwrap();
        assert!(matches!(
            admission.upload("alice"),
            Err(Refused::UserUploads { user_limit: 2 })
        ));
        let _b1 = admission.upload("bob").unwrap();
        assert!(matches!(
            admission.upload("carol"),
            Err(Refused::GlobalUploads { global_limit: 3 })
        ));
        drop(a1);
        let _c1 = admission.upload("carol").expect("a place was freed");
        assert!(admission.upload("alice").is_err(), "and taken");
    }

    #[test]
    fn an_upload_refused_for_want_of_a_place_uses_none_of_the_rate() {
        let admission = Admission::new(&LimitSettings {
            uploads_per_second_per_user: 2,
            uploads_per_second: 2,
            ..limits(1, 10)
        });
        let first = admission.upload("alice").unwrap();
        assert!(matches!(admission.upload("alice"), Err(Refused::UserUploads { .. })));
        drop(first);
        let _second = admission
            .upload("alice")
            .expect("the refusal took no token: a second's burst of two still has one");
    }

    #[test]
    fn rates_of_all_users_together_are_limited_too() {
        let admission = Admission::new(&LimitSettings {
            uploads_per_second_per_user: 0,
            consent_changes_per_second_per_user: 0,
            uploads_per_second: 2,
            consent_changes_per_second: 2,
            ..LimitSettings::default()
        });
        let _slots = [admission.upload("alice").unwrap(), admission.upload("bob").unwrap()];
        let Err(refused) = admission.upload("carol") else {
            panic!("a third upload in the second is past the rate of all users")
        };
        assert!(matches!(refused, Refused::Rate { .. }), "{refused:?}");
        assert!(refused.retry_after() > Duration::ZERO && refused.retry_after() <= Duration::from_secs(1));
        admission.consent_change("alice").unwrap();
        admission.consent_change("bob").unwrap();
        assert!(admission.consent_change("carol").is_err(), "consent changes too");
    }

    #[test]
    fn consent_changes_are_rate_limited_per_user_with_a_wait() {
        let admission = Admission::new(&limits(1, 1));
        for _ in 0..3 {
            admission.consent_change("alice").unwrap();
        }
        let refused = admission.consent_change("alice").unwrap_err();
        assert!(refused.retry_after() > Duration::ZERO && refused.retry_after() <= Duration::from_secs(1));
        admission
            .consent_change("bob")
            .expect("another user has a bucket of their own");
    }
}
