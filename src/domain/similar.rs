//! PDQ hashes as the band index of similar images sees them.
//!
//! A PDQ hash is 256 bits; two images look alike when their hashes differ
//! in few bits (their Hamming distance: PDQ's authors recommend at most 31).
//! The index splits each hash into [`BANDS`] bands of 8 bits and keeps one
//! entry per band, keyed by the band's number and value. Two hashes within
//! a distance of at most 31 differ in at most 31 of the 32 bands, so they
//! agree exactly on at least one (the pigeonhole principle): reading the
//! 32 entries' buckets of a hash finds every hash within
//! [`MAX_DISTANCE`] of it, and no scan of the images is needed. At a
//! distance of 32 or more two hashes may differ in every band, and the
//! index could miss them: that is why the distance is bounded.
//!
//! Each entry carries the whole hash, so a query computes the exact
//! distance of every candidate from the entries alone, and reads only the
//! records of the matches.
//!
//! A search's cost follows the size of its 32 buckets, and anyone who
//! uploads many copies of one image (or many flat images, whose hashes
//! agree) fills the buckets of that hash. So a search reads at most
//! `--max-similar-candidates` entries, an even share of it in each bucket
//! ([`band_share`]): one crowded bucket cannot take the reads of the other
//! 31, which still find every match that agrees with the query on one of
//! their bands. A bucket holding more than its share is read in the
//! store's index order up to the share and the search says it was cut
//! short ([`SimilarFound::truncated`]): matches may then be missing.
use super::ImageRecord;

/// The bands a hash is split into.
pub const BANDS: usize = 32;
/// Bytes of a hash.
pub const HASH_BYTES: usize = 32;
/// The largest distance the band index finds every match within
/// ([`BANDS`] − 1). PDQ's recommended threshold.
pub const MAX_DISTANCE: u32 = BANDS as u32 - 1;

pub use crate::media::pdq::PdqHash;

/// The hash `record` was indexed under: `None` when it has none (or a
/// malformed one, which no query could match either).
pub fn hash_of(record: &ImageRecord) -> Option<PdqHash> {
    PdqHash::from_hex(&record.pdq_hash)
}

/// The hash `record` is in the band index under: its hash, unless it is
/// `Removed`. A removed image (a tombstone) keeps its hash on the record,
/// and may be the query of a search, but no longer takes a place in the
/// buckets: purging a flood of copies frees the share of a search that
/// they took (`--max-similar-candidates`), and tombstones, kept for good,
/// do not make every later search read them.
pub fn indexed_hash(record: &ImageRecord) -> Option<PdqHash> {
    if record.state == super::image::ImageState::Removed {
        return None;
    }
    hash_of(record)
}

/// An image found by its hash, with the distance of its hash from the
/// query's.
#[derive(Clone, Debug)]
pub struct SimilarImage {
    pub record: ImageRecord,
    pub distance: u32,
}

/// What one search found.
#[derive(Clone, Debug, Default)]
pub struct SimilarFound {
    /// The matches, nearest first (then by id).
    pub images: Vec<SimilarImage>,
    /// Some bucket of the query's held more entries than its share
    /// ([`band_share`]), and the rest of it was not read: matches may be
    /// missing.
    pub truncated: bool,
}

/// The entries a search reads of each of its [`BANDS`] buckets when it
/// reads at most `max_candidates` in all: an even share (at least one), so
/// that one crowded bucket cannot take the reads of the others.
pub fn band_share(max_candidates: usize) -> usize {
    (max_candidates / BANDS).max(1)
}

/// The matches among `candidates` (an image's id and indexed hash, as a
/// band index returns them, an image possibly under several bands): each
/// image once, within `max_distance` of `query`, nearest first (then by
/// id), at most `limit`.
pub fn nearest<I>(
    query: &PdqHash,
    candidates: impl IntoIterator<Item = (I, PdqHash)>,
    max_distance: u32,
    limit: usize,
) -> Vec<(I, PdqHash, u32)>
where
    I: Ord + Copy,
{
    let mut found: Vec<(u32, I, PdqHash)> = candidates
        .into_iter()
        .filter_map(|(id, hash)| {
            let distance = query.distance(&hash);
            (distance <= max_distance).then_some((distance, id, hash))
        })
        .collect();
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    found.truncate(limit);
    found
        .into_iter()
        .map(|(distance, id, hash)| (id, hash, distance))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flipped(hash: &PdqHash, bits: impl IntoIterator<Item = usize>) -> PdqHash {
        let mut bytes = *hash.as_bytes();
        for bit in bits {
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        PdqHash::from_bytes(bytes)
    }

    #[test]
    fn hashes_parse_from_hex_and_print_back_lower_case() {
        let text = "0123456789abcdef".repeat(4);
        let hash = PdqHash::from_hex(&text.to_uppercase()).expect("hex parses");
        assert_eq!(hash.to_hex(), text);
        for bad in [
            "",
            "0",
            &"g".repeat(64),
            &"0".repeat(63),
            &"0".repeat(66),
            &"é".repeat(32),
        ] {
            assert_eq!(PdqHash::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_distance_counts_the_bits_that_differ() {
        let hash = PdqHash::from_bytes([0x5a; HASH_BYTES]);
        assert_eq!(hash.distance(&hash), 0);
        assert_eq!(hash.distance(&flipped(&hash, [0, 9, 255])), 3);
        assert_eq!(hash.distance(&flipped(&hash, 0..256)), 256);
    }

    #[test]
    fn hashes_within_the_bound_share_a_band_and_beyond_it_may_not() {
        let hash = PdqHash::from_bytes([0x33; HASH_BYTES]);
        // The worst case: the 31 bits spread over 31 bands, one each.
        let near = flipped(&hash, (0..31).map(|band| band * 8));
        assert_eq!(hash.distance(&near), MAX_DISTANCE);
        assert!(hash.bands().zip(near.bands()).any(|(a, b)| a == b));
        // One more bit, in the last band: no band is shared.
        let far = flipped(&near, [31 * 8]);
        assert!(hash.bands().zip(far.bands()).all(|(a, b)| a != b));
    }

    #[test]
    fn each_band_gets_an_even_share_of_the_candidates() {
        assert_eq!(band_share(20_000), 625);
        assert_eq!(band_share(64), 2);
        assert_eq!(band_share(BANDS), 1);
        // Never nothing: a search always reads something of each bucket.
        assert_eq!(band_share(1), 1);
        assert!(band_share(1_000_000) * BANDS <= 1_000_000);
    }

    #[test]
    fn the_nearest_come_first_once_each_within_the_distance() {
        let query = PdqHash::from_bytes([0; HASH_BYTES]);
        let one = flipped(&query, [3]);
        let five = flipped(&query, 0..5);
        let forty = flipped(&query, 0..40);
        let candidates = [(3, five), (1, one), (3, five), (2, forty), (1, one)];
        let found = nearest(&query, candidates, MAX_DISTANCE, 10);
        assert_eq!(found, [(1, one, 1), (3, five, 5)]);
        assert_eq!(nearest(&query, candidates, 4, 10), [(1, one, 1)]);
        assert_eq!(nearest(&query, candidates, MAX_DISTANCE, 1), [(1, one, 1)]);
    }
}
