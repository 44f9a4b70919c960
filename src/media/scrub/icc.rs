//! ICC colour profiles, as the scrubbers keep them (JPEG APP2, WebP
//! `ICCP`, HEIF `colr` of type `prof` or `rICC`): a profile decides how the
//! pixels look, but its tags may carry free text (`desc`, `cprt`, `dmnd`,
//! `dmdd`, or any private tag), a place for a name or a location.
//!
//! A profile is checked before anything in it is read: its size field
//! equals its bytes, `acsp` stands at 36, and its tag table fits in it
//! (the count is checked against the bytes before it is looped over, and
//! every tag's data against the profile's end). Then, in place, nothing
//! moving: tags of a text type (`desc`, `text`, `mluc`, `utf8`, `utf16`,
//! `zut8`) keep their type signature and lengths and have their characters
//! zeroed; tags of a type that carries no colour (anything not in
//! [`COLOUR_TYPES`]) keep their type signature and have the rest zeroed;
//! bytes no tag covers, and the header's reserved bytes, are zeroed; the
//! profile ID (an MD5 of the bytes) is zeroed when anything changed, which
//! means "not computed". A profile that fails the checks is dropped whole
//! by the caller, and the image renders as sRGB.
//!
//! Memory: 8 bytes per tag (each takes 12 bytes of the profile); CPU
//! linear in the profile's length (the tag ranges are sorted once).

/// A profile whose header or tag table does not hold: to be dropped.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed;

/// The header's length, and its tag count's.
const HEADER: usize = 128;
const TABLE: usize = HEADER + 4;

/// Tag types whose data is colour: kept as they are.
const COLOUR_TYPES: [&[u8; 4]; 21] = [
    b"curv", b"para", b"XYZ ", b"sf32", b"uf32", b"mft1", b"mft2", b"mAB ", b"mBA ", b"mpet",
    b"chrm", b"meas", b"view", b"sig ", b"dtim", b"vcgt", b"cicp", b"ui08", b"ui16", b"ui32",
    b"ui64",
];

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Blanks, in place, the free text of a whole ICC profile: whether any
/// byte changed, or [`Malformed`].
pub(super) fn blank_profile_text(profile: &mut [u8]) -> Result<bool, Malformed> {
    let len = profile.len();
    if len < TABLE || be32(profile, 0) as usize != len || &profile[36..40] != b"acsp" {
        return Err(Malformed);
    }
    let count = be32(profile, HEADER) as usize;
    if count > (len - TABLE) / 12 {
        return Err(Malformed);
    }
    let table_end = TABLE + count * 12;
    let mut changed = zero(&mut profile[100..HEADER]);
    // Tag data ranges, as u32: 8 bytes per 12-byte entry.
    let mut covered: Vec<(u32, u32)> = Vec::with_capacity(count);
    for tag in 0..count {
        let entry = TABLE + tag * 12;
        let offset = be32(profile, entry + 4) as usize;
        let size = be32(profile, entry + 8) as usize;
        let end = offset.checked_add(size).ok_or(Malformed)?;
        if offset < table_end || end > len {
            return Err(Malformed);
        }
        covered.push((offset as u32, end as u32));
        if size < 8 {
            changed |= zero(&mut profile[offset..end]);
            continue;
        }
        let data = &mut profile[offset..end];
        let kind: [u8; 4] = [data[0], data[1], data[2], data[3]];
        changed |= match &kind {
            b"desc" if size >= 12 => zero(&mut data[12..]),
            b"mluc" if size >= 16 => {
                let records = be32(data, 8) as usize;
                let record_size = be32(data, 12) as usize;
                let strings = records
                    .checked_mul(record_size)
                    .and_then(|n| n.checked_add(16))
                    .filter(|&at| at <= size)
                    .ok_or(Malformed)?;
                zero(&mut data[strings..])
            }
            _ if COLOUR_TYPES.contains(&&kind) => false,
            // `text`, `utf8`, `utf16`, `zut8`, and every type that says
            // nothing about colour: all but the type signature and the
            // reserved word.
            _ => zero(&mut data[8..]),
        };
    }
    covered.sort_unstable();
    let mut cursor = table_end;
    for (start, end) in covered {
        let (start, end) = (start as usize, end as usize);
        if start > cursor {
            changed |= zero(&mut profile[cursor..start]);
        }
        cursor = cursor.max(end);
    }
    changed |= zero(&mut profile[cursor..]);
    if changed {
        profile[84..100].fill(0);
    }
    Ok(changed)
}

/// Zeros `bytes`; whether any was not zero.
fn zero(bytes: &mut [u8]) -> bool {
    let held = bytes.iter().any(|&b| b != 0);
    bytes.fill(0);
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::icc_profile_with_text as profile_with_text;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn text_tags_lose_their_characters_and_keep_their_lengths() {
        let secret = "GPS 48.8584 N 2.2945 E";
        let original = profile_with_text(secret);
        let mut profile = original.clone();
        assert_eq!(blank_profile_text(&mut profile), Ok(true));
        assert_eq!(profile.len(), original.len());
        assert!(!contains(&profile, secret.as_bytes()));
        let utf16: Vec<u8> = secret.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert!(!contains(&profile, &utf16));
        // Type signatures, lengths, the colour tags stay; the ID goes.
        for kept in [
            &b"desc\0\0\0\0\0\0\0\x17"[..],
            b"mluc",
            b"text",
            b"priv",
            b"enUS",
        ] {
            assert!(contains(&profile, kept), "{kept:?}");
        }
        assert!(contains(
            &profile,
            &[0, 0, 0xF6, 0xD6, 0, 1, 0, 0, 0, 0, 0xD3, 0x2D]
        ));
        assert!(contains(&profile, b"curv\0\0\0\0\0\0\0\x01\x01\xCD"));
        assert!(profile[84..100].iter().all(|&b| b == 0));
        // Blanked again, nothing changes.
        let once = profile.clone();
        assert_eq!(blank_profile_text(&mut profile), Ok(false));
        assert_eq!(profile, once);
    }

    #[test]
    fn a_malformed_profile_is_refused_before_its_tags_are_read() {
        let good = profile_with_text("x");
        let mut cases = Vec::new();
        let mut wrong_size = good.clone();
        wrong_size[3] ^= 1;
        cases.push(wrong_size);
        let mut no_signature = good.clone();
        no_signature[36] = b'b';
        cases.push(no_signature);
        let mut many_tags = good.clone();
        many_tags[HEADER..TABLE].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(many_tags);
        let mut past_end = good.clone();
        past_end[TABLE + 8..TABLE + 12].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(past_end);
        let mut bad_mluc = good.clone();
        let mluc = bad_mluc.windows(4).position(|w| w == b"mluc").unwrap();
        bad_mluc[mluc + 8..mluc + 12].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(bad_mluc);
        cases.push(good[..100].to_vec());
        for mut case in cases {
            assert_eq!(blank_profile_text(&mut case), Err(Malformed));
        }
    }
}
