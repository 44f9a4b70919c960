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
//! colour tags keep their numbers and have the bytes past the length
//! their type defines zeroed, that length computed from the tag's own
//! counts (one XYZNumber for `XYZ `, 9 numbers for `chad`, a curve's
//! count of entries, a `para` function's parameters, an `mft1`/`mft2`
//! lookup table's channels, grid and entries, whole elements of an
//! array, ...), and a tag shorter than that is malformed (`mAB `, `mBA `,
//! `mpet` and `vcgt`, whose parts lie at offsets of their own, are kept
//! as they are); bytes no tag covers, and the header's reserved bytes,
//! are zeroed; the
//! profile ID (an MD5 of the bytes) is zeroed when anything changed, which
//! means "not computed". A profile that fails the checks is dropped whole
//! by the caller, and the image renders as sRGB. The numbers themselves
//! stay: a profile is numbers by design, and a curve or a matrix can hold
//! any bytes as its values; what a caller can hide in them is bounded by
//! the tags' defined lengths.
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
        let signature = [
            profile[entry],
            profile[entry + 1],
            profile[entry + 2],
            profile[entry + 3],
        ];
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
            _ if COLOUR_TYPES.contains(&&kind) => match colour_len(&signature, &kind, data)? {
                Some(defined) => zero(&mut data[defined..]),
                None => false,
            },
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

/// The length the colour tag `data` (of type `kind`, under the tag
/// `signature`) defines from its own counts, checked against its size;
/// `None` for the types whose elements lie at offsets of their own
/// (`mAB `, `mBA `, `mpet`) or that have several layouts (`vcgt`).
fn colour_len(
    signature: &[u8; 4],
    kind: &[u8; 4],
    data: &[u8],
) -> Result<Option<usize>, Malformed> {
    let size = data.len();
    let byte = |at: usize| data.get(at).copied().map(usize::from).ok_or(Malformed);
    let u16_at = |at: usize| Ok::<_, Malformed>(byte(at)? << 8 | byte(at + 1)?);
    // Arrays whose count is their size: whole elements.
    let array = |element: usize| Some(8 + (size - 8) / element * element);
    let defined = match kind {
        // One XYZNumber: white and black points, the colorants,
        // luminance.
        b"XYZ " => Some(20),
        // The chromatic adaptation matrix is 3 x 3.
        b"sf32" if signature == b"chad" => Some(8 + 36),
        b"sf32" | b"uf32" | b"ui32" => array(4),
        b"ui16" => array(2),
        b"ui64" => array(8),
        b"ui08" => array(1),
        b"curv" => {
            let count = u32::from_be_bytes(data.get(8..12).ok_or(Malformed)?.try_into().unwrap());
            (count as usize)
                .checked_mul(2)
                .and_then(|n| n.checked_add(12))
        }
        b"para" => {
            let parameters = [1, 3, 4, 5, 7];
            let function = parameters.get(u16_at(8)?).ok_or(Malformed)?;
            Some(12 + 4 * function)
        }
        b"chrm" => Some(12 + 8 * u16_at(8)?),
        b"mft1" | b"mft2" => {
            let (inputs, outputs, grid) = (byte(8)?, byte(9)?, byte(10)?);
            let clut = u32::try_from(inputs)
                .ok()
                .and_then(|inputs| grid.checked_pow(inputs))
                .and_then(|points| points.checked_mul(outputs));
            let (head, unit, input_entries, output_entries) = if kind == b"mft1" {
                (48, 1, 256, 256)
            } else {
                (52, 2, u16_at(48)?, u16_at(50)?)
            };
            clut.and_then(|clut| {
                let entries = input_entries * inputs + clut + output_entries * outputs;
                entries.checked_mul(unit)?.checked_add(head)
            })
        }
        b"sig " | b"cicp" => Some(12),
        b"dtim" => Some(20),
        b"meas" | b"view" => Some(36),
        _ => return Ok(None),
    };
    match defined {
        Some(defined) if defined <= size => Ok(Some(defined)),
        _ => Err(Malformed),
    }
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

/// Colour tags keep their numbers and nothing past their defined length.
#[cfg(test)]
mod attack5 {
    use super::super::tests::{contains, riff_webp, scrub, vp8l_chunk};
    use super::*;
    use crate::fixtures::riff_chunk;

    const MARKER: &[u8] = b"SERIALXYZ123;GPS48.8584N2.2945E";

    /// A display profile holding `tags` (signature, data), 4-byte aligned.
    fn profile(tags: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        let data_at = TABLE + 12 * tags.len();
        let mut table = (tags.len() as u32).to_be_bytes().to_vec();
        let mut data = Vec::new();
        for (signature, bytes) in tags {
            table.extend_from_slice(*signature);
            table.extend_from_slice(&((data_at + data.len()) as u32).to_be_bytes());
            table.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            data.extend_from_slice(bytes);
            data.resize(data.len().next_multiple_of(4), 0);
        }
        let mut header = vec![0u8; HEADER];
        header[8..12].copy_from_slice(&[4, 0x30, 0, 0]);
        header[12..24].copy_from_slice(b"mntrRGB XYZ ");
        header[36..40].copy_from_slice(b"acsp");
        let mut profile = [header, table, data].concat();
        let len = profile.len() as u32;
        profile[..4].copy_from_slice(&len.to_be_bytes());
        profile
    }

    fn tag(kind: &[u8; 4], body: &[&[u8]]) -> Vec<u8> {
        [&kind[..], &[0; 4], &body.concat()].concat()
    }

    /// Colour tags with the marker past what their counts define, each
    /// with its numbers.
    fn colour_tags() -> Vec<(&'static [u8; 4], Vec<u8>, Vec<u8>)> {
        let white = [0, 0, 0xF6, 0xD6, 0, 1, 0, 0, 0, 0, 0xD3, 0x2D];
        let curve = [0, 0, 0, 1, 1, 0xCD];
        let gamma = [0, 0, 0, 0, 0, 2, 0x33, 0x33];
        let chad: Vec<u8> = (0..36).map(|i| i as u8).collect();
        // mft2: 1 input, 1 output, 2 grid points, identity matrix, 2
        // input and 2 output entries: 2 x (2 + 2 + 2) bytes of tables.
        let mut lut = vec![1, 1, 2, 0];
        lut.extend((0..9).flat_map(|i| if i % 4 == 0 { 0x10000u32 } else { 0 }.to_be_bytes()));
        lut.extend_from_slice(&[0, 2, 0, 2]);
        lut.extend((0..6u16).flat_map(|i| (i * 0x3333).to_be_bytes()));
        let primaries = [&[0, 3, 0, 1][..], &[0x55; 24]].concat();
        vec![
            (
                b"wtpt",
                tag(b"XYZ ", &[&white]),
                tag(b"XYZ ", &[&white, MARKER]),
            ),
            (
                b"rTRC",
                tag(b"curv", &[&curve]),
                tag(b"curv", &[&curve, MARKER]),
            ),
            (
                b"gTRC",
                tag(b"para", &[&gamma]),
                tag(b"para", &[&gamma, MARKER]),
            ),
            (
                b"chad",
                tag(b"sf32", &[&chad]),
                tag(b"sf32", &[&chad, MARKER]),
            ),
            (
                b"A2B0",
                tag(b"mft2", &[&lut]),
                tag(b"mft2", &[&lut, MARKER]),
            ),
            (
                b"chrm",
                tag(b"chrm", &[&primaries]),
                tag(b"chrm", &[&primaries, MARKER]),
            ),
            (
                b"tech",
                tag(b"sig ", &[b"dcam"]),
                tag(b"sig ", &[b"dcam", MARKER]),
            ),
        ]
    }

    #[test]
    fn colour_tags_keep_their_numbers_and_nothing_past_them() {
        for (signature, clean, marked) in colour_tags() {
            let mut scrubbed = profile(&[(signature, marked.clone())]);
            assert_eq!(blank_profile_text(&mut scrubbed), Ok(true));
            assert!(!contains(&scrubbed, &MARKER[..6]), "{signature:?}");
            assert!(
                contains(&scrubbed, &clean),
                "{signature:?} keeps its numbers"
            );
            let mut once = profile(&[(signature, clean)]);
            assert_eq!(blank_profile_text(&mut once), Ok(false), "{signature:?}");
            // Shorter than its counts say: malformed, the profile goes.
            let short = &marked[..8 + (marked.len() - MARKER.len() - 8) / 2];
            let mut cut = profile(&[(signature, short.to_vec())]);
            assert_eq!(
                blank_profile_text(&mut cut),
                Err(Malformed),
                "{signature:?}"
            );
        }
    }

    /// A WebP whose announced `ICCP` profile has text past its colour
    /// tags.
    fn webp_with_colour_tag_text() -> (Vec<u8>, image::RgbaImage) {
        let tags: Vec<_> = colour_tags()
            .into_iter()
            .map(|(s, _, marked)| (s, marked))
            .collect();
        let (vp8l, pixels) = vp8l_chunk(16, 16);
        let mut vp8x = vec![0x20, 0, 0, 0];
        vp8x.extend_from_slice(&15u32.to_le_bytes()[..3]);
        vp8x.extend_from_slice(&15u32.to_le_bytes()[..3]);
        let file = riff_webp(&[
            riff_chunk(b"VP8X", &vp8x),
            riff_chunk(b"ICCP", &profile(&tags)),
            vp8l,
        ]);
        (file, pixels)
    }

    #[test]
    fn colour_tag_text_leaves_a_webp_profile() {
        let (file, pixels) = webp_with_colour_tag_text();
        let (stored, report) = scrub(&file, 11, false).unwrap();
        assert!(report.changed);
        assert!(!contains(&stored, &MARKER[..6]));
        assert!(contains(&stored, b"acsp"), "the profile stays");
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
    }

    /// Writes the crafted file to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/scrub");
        let (file, _) = webp_with_colour_tag_text();
        std::fs::write(format!("{dir}/a5-webp-iccp-colour-tag-text"), file).unwrap();
    }
}
