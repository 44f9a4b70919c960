//! What one user holds, as the metadata store keeps it: one usage item per
//! user with the bytes and images held (settled and reserved together, so
//! that one conditional update checks a quota), the reservations of the
//! uploads in progress, the user's quota override, and the user's erasure
//! (its marker while it runs, its audit entry after).

use super::UserId;
use super::image::Timestamp;

/// A user's usage item. Absent from the store, it reads as
/// [`UsageRecord::default`]: nothing held, no override.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// Bytes of stored objects (originals, every encoding of every
    /// variant) plus those reserved by uploads in progress.
    pub held_bytes: u64,
    /// Images stored plus those reserved by uploads in progress.
    pub held_images: u64,
    /// The uploads in progress: each is also counted in the two totals.
    pub reservations: Vec<UsageReservation>,
    /// The user's quota when an admin set one (`SetUserQuota`).
    pub quota: QuotaOverride,
    /// Grows with every change, so a recomputation (the repair pass) is
    /// written only if nothing changed since it read the item.
    pub revision: u64,
    /// The user's latest erasure (`DeleteUserData`): while it runs, the
    /// marker that refuses every new reservation (see
    /// [`UsageRecord::apply`]); once done, its audit entry.
    #[serde(default)]
    pub erasure: Option<ErasureRecord>,
}

/// An erasure of a user's data: ids, times and counts only, never what the
/// user stored (no title, tag or filename), so it may outlive the data as
/// the record that the erasure happened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErasureRecord {
    /// Who asked: the user, or an admin (`--admins`).
    pub requested_by: UserId,
    pub requested: Timestamp,
    /// `None` while it runs.
    pub finished: Option<Timestamp>,
    /// Images deleted so far.
    pub images_deleted: u64,
    /// Upload sessions removed so far.
    pub sessions_deleted: u64,
}

impl ErasureRecord {
    pub fn is_running(&self) -> bool {
        self.finished.is_none()
    }
}

impl UsageRecord {
    /// Bytes reserved by uploads in progress.
    pub fn reserved_bytes(&self) -> u64 {
        self.reservations.iter().map(|r| r.bytes).sum()
    }

    /// Images reserved by uploads in progress.
    pub fn reserved_images(&self) -> u64 {
        self.reservations.iter().map(|r| r.images).sum()
    }

    /// Applies `change` if the totals after it stay within `ceiling`:
    /// what every store does in one step (a transaction, a lock, a
    /// conditional update). `false` (and nothing changed) when it would
    /// pass the ceiling, when it removes a reservation the item does not
    /// hold, or when it adds one while the user's data is being erased.
    pub fn apply(&mut self, change: &UsageChange, ceiling: Option<UsageCeiling>) -> bool {
        if change.add.is_some() && self.is_being_erased() {
            return false;
        }
        if let Some(removed) = &change.remove
            && !self.reservations.contains(removed)
        {
            return false;
        }
        let bytes = add_signed(self.held_bytes, change.bytes);
        let images = add_signed(self.held_images, change.images);
        if let Some(ceiling) = ceiling
            && (bytes > ceiling.max_bytes || images > ceiling.max_images)
        {
            return false;
        }
        self.held_bytes = bytes;
        self.held_images = images;
        if let Some(removed) = &change.remove {
            self.reservations.retain(|r| r != removed);
        }
        if let Some(added) = &change.add {
            self.reservations.push(added.clone());
        }
        self.revision += 1;
        true
    }
}

impl UsageRecord {
    /// Whether an erasure of the user's data runs: no upload may start.
    pub fn is_being_erased(&self) -> bool {
        self.erasure.as_ref().is_some_and(ErasureRecord::is_running)
    }

    /// The item after [`MetadataStore::set_erasure`] with `erasure`: a
    /// finished erasure also resets the totals and reservations (the user
    /// holds nothing any more), leaving the quota override and the audit.
    ///
    /// [`MetadataStore::set_erasure`]: super::ports::MetadataStore::set_erasure
    pub fn with_erasure(&self, erasure: &ErasureRecord) -> UsageRecord {
        let mut next = if erasure.is_running() {
            self.clone()
        } else {
            UsageRecord {
                quota: self.quota,
                ..UsageRecord::default()
            }
        };
        next.erasure = Some(erasure.clone());
        next.revision = self.revision + 1;
        next
    }

    /// The item after [`MetadataStore::replace_usage`] with `recomputed`:
    /// its totals and reservations, this item's quota override, the next
    /// revision.
    ///
    /// [`MetadataStore::replace_usage`]: super::ports::MetadataStore::replace_usage
    pub fn replaced_by(&self, recomputed: &UsageRecord) -> UsageRecord {
        UsageRecord {
            held_bytes: recomputed.held_bytes,
            held_images: recomputed.held_images,
            reservations: recomputed.reservations.clone(),
            quota: self.quota,
            revision: self.revision + 1,
            erasure: self.erasure.clone(),
        }
    }
}

/// `value + delta`, never below zero (a drift the repair pass corrects).
pub fn add_signed(value: u64, delta: i64) -> u64 {
    if delta >= 0 {
        value.saturating_add(delta.unsigned_abs())
    } else {
        value.saturating_sub(delta.unsigned_abs())
    }
}

/// An upload in progress, counted in its user's usage from its start to
/// its commit (or failure, cancel, expiry).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageReservation {
    /// Unique per upload (a UUID).
    pub id: String,
    pub bytes: u64,
    pub images: u64,
    pub started: Timestamp,
}

impl UsageReservation {
    /// The reservation as one string (`id/bytes/images/micros`): how a
    /// store that keeps sets of strings (DynamoDB) keeps it.
    pub fn encode(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.id,
            self.bytes,
            self.images,
            self.started.as_micros()
        )
    }

    /// The reservation [`UsageReservation::encode`] made; `None` for any
    /// other text.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let reservation = Self {
            id: parts.next()?.to_owned(),
            bytes: parts.next()?.parse().ok()?,
            images: parts.next()?.parse().ok()?,
            started: Timestamp::from_micros(parts.next()?.parse().ok()?),
        };
        parts.next().is_none().then_some(reservation)
    }
}

/// A change to a user's usage, applied at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageChange {
    pub bytes: i64,
    pub images: i64,
    /// A reservation that starts with this change.
    pub add: Option<UsageReservation>,
    /// A reservation that ends with this change: the change is refused if
    /// the item does not hold it (ended already, or dropped by the repair
    /// pass).
    pub remove: Option<UsageReservation>,
}

/// The most a change may leave a user holding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageCeiling {
    pub max_bytes: u64,
    pub max_images: u64,
}

/// A user's own quota, set by an admin; `None` keeps the default
/// (`--quota-bytes-per-user`, `--quota-images-per-user`). `Some(0)` means
/// no limit, as for the flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaOverride {
    pub max_bytes: Option<u64>,
    pub max_images: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(bytes: u64) -> UsageReservation {
        UsageReservation {
            id: uuid::Uuid::new_v4().to_string(),
            bytes,
            images: 1,
            started: Timestamp::from_micros(1_700_000_000_000_000),
        }
    }

    #[test]
    fn a_reservation_reads_back_from_its_text() {
        let r = reservation(42);
        assert_eq!(UsageReservation::decode(&r.encode()), Some(r));
        assert_eq!(UsageReservation::decode("a/1/1"), None);
        assert_eq!(UsageReservation::decode("a/1/1/1/1"), None);
    }

    #[test]
    fn a_change_past_the_ceiling_changes_nothing() {
        let mut usage = UsageRecord::default();
        let ceiling = Some(UsageCeiling {
            max_bytes: 100,
            max_images: 10,
        });
        let first = reservation(60);
        let reserve = |r: &UsageReservation| UsageChange {
            bytes: r.bytes as i64,
            images: 1,
            add: Some(r.clone()),
            remove: None,
        };
        assert!(usage.apply(&reserve(&first), ceiling));
        assert!(!usage.apply(&reserve(&reservation(60)), ceiling));
        assert_eq!((usage.held_bytes, usage.revision), (60, 1));
        let settle = UsageChange {
            bytes: -20,
            images: 0,
            add: None,
            remove: Some(first.clone()),
        };
        assert!(usage.apply(&settle, None));
        assert!(!usage.apply(&settle, None), "a reservation ends once");
        assert_eq!((usage.held_bytes, usage.held_images), (40, 1));
        assert!(usage.reservations.is_empty());
    }

    #[test]
    fn no_reservation_starts_while_the_data_is_erased_and_the_end_resets_the_usage() {
        let mut usage = UsageRecord::default();
        let before = reservation(10);
        let reserve = |r: &UsageReservation| UsageChange {
            bytes: r.bytes as i64,
            images: 1,
            add: Some(r.clone()),
            remove: None,
        };
        assert!(usage.apply(&reserve(&before), None));
        let mut erasure = ErasureRecord {
            requested_by: UserId::parse("ops").unwrap(),
            requested: Timestamp::from_micros(1_700_000_000_000_000),
            finished: None,
            images_deleted: 0,
            sessions_deleted: 0,
        };
        usage = usage.with_erasure(&erasure);
        assert!(usage.is_being_erased());
        assert!(!usage.apply(&reserve(&reservation(1)), None));
        let settle = UsageChange {
            bytes: -2,
            images: 0,
            add: None,
            remove: Some(before),
        };
        assert!(usage.apply(&settle, None), "an earlier upload still ends");
        erasure.finished = Some(Timestamp::from_micros(1_700_000_001_000_000));
        let ended = usage.with_erasure(&erasure);
        assert_eq!((ended.held_bytes, ended.held_images), (0, 0));
        assert_eq!(ended.erasure, Some(erasure));
        assert_eq!(ended.revision, usage.revision + 1);
    }
}
