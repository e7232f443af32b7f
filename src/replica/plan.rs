//! What to do with the master's answer: follow, stay, or report.
//!
//! A version number alone identifies nothing: a master whose state was lost
//! numbers from 1 again, and a confused one may claim any number (even
//! 18446744073709551615). So the replica compares epochs first (the random
//! id of the master's state) and then info-hashes, and uses numbers only
//! within one epoch:
//!
//! | epoch | master's latest vs live | decision |
//! |---|---|---|
//! | new, or none recorded | any | follow the latest, by info-hash (same bytes: adopt its number, no download) |
//! | same | newer | replicate |
//! | same | same number | up to date, unless the info-hash differs (then follow it) |
//! | same | older, live version still listed | stay, and report "master is behind this replica" |
//! | same | older, live version no longer listed | report, and follow the latest |
//!
//! "Listed" means the same number with the same info-hash: a replica that
//! once took a bogus version number is not listed under it, so it is not
//! pinned there. Nothing here does arithmetic on numbers from the network.

use crate::metainfo::InfoHash;

/// A master's version object, as the replica reads it.
pub use crate::api::VersionRef as RemoteVersion;

/// What is live: its number and its info-hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveId {
    pub version: u64,
    pub info_hash: InfoHash,
}

/// The first decision, from the latest version alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum First {
    UpToDate,
    /// Fetch (or adopt) the latest version.
    Follow,
    /// The master's latest is older than the live version in the same
    /// epoch: look at its list before deciding ([`behind`]).
    Behind,
}

/// Is the master's state the one the live version came from?
fn same_epoch(ours: Option<&str>, theirs: Option<&str>) -> bool {
    match (ours, theirs) {
        (Some(a), Some(b)) => a == b,
        // A master from before epochs: numbers are all we have.
        (None, None) => true,
        // None recorded (a replica from before epochs), or a master that
        // lost its epoch: compare by info-hash.
        _ => false,
    }
}

pub fn first(live: Option<&LiveId>, our_epoch: Option<&str>, latest: &RemoteVersion) -> First {
    let Some(live) = live else {
        return First::Follow;
    };
    let same_bytes = live.info_hash == latest.info_hash;
    if !same_epoch(our_epoch, latest.epoch.as_deref()) {
        // A new epoch: its newest version is what to serve.
        return if same_bytes && live.version == latest.version {
            First::UpToDate
        } else {
            First::Follow
        };
    }
    match latest.version.cmp(&live.version) {
        std::cmp::Ordering::Greater => First::Follow,
        std::cmp::Ordering::Equal if same_bytes => First::UpToDate,
        std::cmp::Ordering::Equal => First::Follow,
        std::cmp::Ordering::Less => First::Behind,
    }
}

/// The decision when the master is behind: stay (with a report) while it
/// still lists the live version, else follow its latest (with a report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behind {
    Stay(String),
    Follow(String),
}

pub fn behind(live: &LiveId, latest: &RemoteVersion, listed: &[RemoteVersion]) -> Behind {
    let still = listed
        .iter()
        .any(|v| v.version == live.version && v.info_hash == live.info_hash);
    if still {
        Behind::Stay(format!(
            "master is behind this replica: its latest is version {} but this replica has \
             version {} ({}), which the master still lists; staying",
            latest.version, live.version, live.info_hash
        ))
    } else {
        Behind::Follow(format!(
            "master is behind this replica: its latest is version {} and it no longer lists \
             version {} ({}); following the master",
            latest.version, live.version, live.info_hash
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: u64, hash: u8, epoch: Option<&str>) -> RemoteVersion {
        RemoteVersion {
            version,
            info_hash: InfoHash([hash; 20]),
            torrent_url: String::new(),
            epoch: epoch.map(str::to_string),
        }
    }

    fn live(version: u64, hash: u8) -> LiveId {
        LiveId {
            version,
            info_hash: InfoHash([hash; 20]),
        }
    }

    #[test]
    fn same_epoch_compares_numbers() {
        let e = Some("e1");
        assert_eq!(first(None, None, &v(1, 1, e)), First::Follow);
        assert_eq!(first(Some(&live(1, 1)), e, &v(2, 2, e)), First::Follow);
        assert_eq!(first(Some(&live(2, 2)), e, &v(2, 2, e)), First::UpToDate);
        assert_eq!(first(Some(&live(2, 2)), e, &v(2, 3, e)), First::Follow);
        assert_eq!(first(Some(&live(3, 3)), e, &v(2, 2, e)), First::Behind);
        // Masters and replicas from before epochs.
        assert_eq!(
            first(Some(&live(2, 2)), None, &v(2, 2, None)),
            First::UpToDate
        );
        assert_eq!(
            first(Some(&live(2, 2)), None, &v(3, 3, None)),
            First::Follow
        );
    }

    #[test]
    fn a_new_epoch_is_followed_by_info_hash() {
        let (old, new) = (Some("old"), Some("new"));
        // Restarted at 1 with other bytes: followed although 1 < 2.
        assert_eq!(first(Some(&live(2, 2)), old, &v(1, 9, new)), First::Follow);
        // Republished as 2 with other bytes: followed although 2 == 2.
        assert_eq!(first(Some(&live(2, 2)), old, &v(2, 9, new)), First::Follow);
        // The same bytes under another number: adopted (Follow, no download).
        assert_eq!(first(Some(&live(2, 2)), old, &v(1, 2, new)), First::Follow);
        // The same bytes and number: nothing to do but remember the epoch.
        assert_eq!(
            first(Some(&live(2, 2)), old, &v(2, 2, new)),
            First::UpToDate
        );
        // No epoch recorded yet (a replica from before epochs).
        assert_eq!(first(Some(&live(5, 5)), None, &v(1, 1, new)), First::Follow);
    }

    #[test]
    fn a_master_behind_is_obeyed_only_if_it_no_longer_lists_the_live_version() {
        let e = Some("e");
        let l = live(3, 3);
        let latest = v(2, 2, e);
        match behind(&l, &latest, &[v(3, 3, e), v(2, 2, e)]) {
            Behind::Stay(m) => assert!(m.starts_with("master is behind this replica"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            behind(&l, &latest, &[v(2, 2, e)]),
            Behind::Follow(_)
        ));
    }

    #[test]
    fn a_bogus_huge_version_does_not_pin() {
        let e = Some("e");
        let bogus = live(u64::MAX, 1);
        // The real master lists those bytes as version 1, not u64::MAX.
        assert_eq!(first(Some(&bogus), e, &v(2, 2, e)), First::Behind);
        assert!(matches!(
            behind(&bogus, &v(2, 2, e), &[v(2, 2, e), v(1, 1, e)]),
            Behind::Follow(_)
        ));
    }

    #[test]
    fn hostile_epochs_are_refused() {
        assert!(v(1, 1, Some("0123abcd")).check().is_ok());
        assert!(v(1, 1, None).check().is_ok());
        for bad in ["", "../x", &"a".repeat(65), "ép"] {
            assert!(v(1, 1, Some(bad)).check().is_err(), "{bad:?}");
        }
    }
}
