//! ICC colour profiles, as the scrubbers keep them (JPEG APP2, WebP
//! `ICCP`, HEIF `colr` of type `prof` or `rICC`): a profile decides how the
//! pixels look, but its tags may carry free text (`desc`, `cprt`, `dmnd`,
//! `dmdd`, or any private tag), a place for a name or a location.
//!
//! A profile is checked before anything in it is read: its size field
//! equals its bytes, `acsp` stands at 36, and its tag table fits in it
//! (the count is checked against the bytes before it is looped over, and
//! every tag's data against the profile's end). Then, in place, nothing
//! moving but the tag table's entries: a tag is kept only under a
//! signature the ICC specification defines and in a type it allows there
//! ([`ALLOWED`]); any other (a private tag, `vcgt`, `mpet`, a colour tag
//! of a text type) leaves the table, the entries after it moving up, and
//! its data is zeroed with the bytes no tag covers. Text tags (`desc`,
//! `text`, `mluc`) keep their type signature and lengths and have their
//! characters zeroed; colour tags keep their numbers and have the bytes
//! past the length their type defines zeroed, that length computed from
//! the tag's own counts (one XYZNumber for `XYZ `, 9 numbers for `chad`, a
//! curve's count of entries, a `para` function's parameters, an
//! `mft1`/`mft2` lookup table's channels, grid and entries, ...), and a
//! tag shorter than that is malformed; `mAB ` and `mBA ` keep their
//! parts (curves, matrix, lookup table), each at the offset the tag gives
//! and the length its own counts define, and have every other byte
//! zeroed; every kept tag's 4 reserved bytes (after its type), a `para`'s
//! 2 and an `mft1`/`mft2`'s padding byte are zeroed; bytes no tag covers
//! are zeroed. The header keeps only what colour management reads
//! ([`HEADER_KEPT`]: size, version, class, colour spaces, `acsp`, the
//! illuminant, the 2 defined flag bits, a rendering intent of 0 to 3); the
//! fields a writer chooses (preferred CMM, date-time, platform, device
//! manufacturer, model and attributes, creator, reserved bytes) are
//! always zeroed, as is the profile ID (an MD5 of the bytes), which then
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

/// The tag signatures kept, each with the types the ICC specification
/// (v2 and v4) allows it; any other tag, or a kept one of another type, is
/// dropped from the tag table. `vcgt`, `mpet` (`D2B0`…`B2D3`) and the
/// private tags are not here: no image viewer needs them.
const ALLOWED: [(&[u8; 4], &[&[u8; 4]]); 36] = [
    (b"A2B0", LUT_A2B),
    (b"A2B1", LUT_A2B),
    (b"A2B2", LUT_A2B),
    (b"B2A0", LUT_B2A),
    (b"B2A1", LUT_B2A),
    (b"B2A2", LUT_B2A),
    (b"gamt", LUT_B2A),
    (b"pre0", LUT_ANY),
    (b"pre1", LUT_ANY),
    (b"pre2", LUT_ANY),
    (b"rXYZ", &[b"XYZ "]),
    (b"gXYZ", &[b"XYZ "]),
    (b"bXYZ", &[b"XYZ "]),
    (b"wtpt", &[b"XYZ "]),
    (b"bkpt", &[b"XYZ "]),
    (b"lumi", &[b"XYZ "]),
    (b"rTRC", CURVES),
    (b"gTRC", CURVES),
    (b"bTRC", CURVES),
    (b"kTRC", CURVES),
    (b"chad", &[b"sf32"]),
    (b"chrm", &[b"chrm"]),
    (b"cicp", &[b"cicp"]),
    (b"meas", &[b"meas"]),
    (b"view", &[b"view"]),
    (b"tech", &[b"sig "]),
    (b"rig0", &[b"sig "]),
    (b"rig2", &[b"sig "]),
    (b"ciis", &[b"sig "]),
    (b"calt", &[b"dtim"]),
    (b"desc", DESCRIPTION),
    (b"dmnd", DESCRIPTION),
    (b"dmdd", DESCRIPTION),
    (b"vued", DESCRIPTION),
    (b"cprt", DESCRIPTION),
    (b"targ", &[b"text"]),
];
const LUT_A2B: &[&[u8; 4]] = &[b"mft1", b"mft2", b"mAB "];
const LUT_B2A: &[&[u8; 4]] = &[b"mft1", b"mft2", b"mBA "];
const LUT_ANY: &[&[u8; 4]] = &[b"mft1", b"mft2", b"mAB ", b"mBA "];
const CURVES: &[&[u8; 4]] = &[b"curv", b"para"];
/// v4 `mluc`, v2 `desc`; `text` as some writers put it.
const DESCRIPTION: &[&[u8; 4]] = &[b"mluc", b"desc", b"text"];

/// Whether the tag `signature` may be of type `kind`.
fn allowed(signature: &[u8; 4], kind: &[u8; 4]) -> bool {
    ALLOWED
        .iter()
        .any(|(tag, kinds)| *tag == signature && kinds.contains(&kind))
}

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
    let mut changed = blank_header(profile);
    // Tag data ranges, as u32: 8 bytes per 12-byte entry.
    let mut covered: Vec<(u32, u32)> = Vec::with_capacity(count);
    // Entries kept so far, moved up over the dropped ones.
    let mut kept = 0;
    for tag in 0..count {
        let entry = TABLE + tag * 12;
        let offset = be32(profile, entry + 4) as usize;
        let size = be32(profile, entry + 8) as usize;
        let end = offset.checked_add(size).ok_or(Malformed)?;
        if offset < table_end || end > len {
            return Err(Malformed);
        }
        let signature = [
            profile[entry],
            profile[entry + 1],
            profile[entry + 2],
            profile[entry + 3],
        ];
        let data = &mut profile[offset..end];
        let kind: [u8; 4] = match data.get(..4) {
            Some(kind) if size >= 8 => kind.try_into().unwrap(),
            _ => [0; 4],
        };
        if !allowed(&signature, &kind) {
            // Dropped: its entry leaves the table, and its data, unless
            // a kept tag shares it, is zeroed with the bytes no tag
            // covers.
            continue;
        }
        covered.push((offset as u32, end as u32));
        // Every tag type's 4 reserved bytes, after its signature.
        changed |= zero(&mut data[4..8]);
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
            b"desc" | b"mluc" => return Err(Malformed),
            // All but the type signature and the reserved word.
            b"text" => zero(&mut data[8..]),
            b"mAB " | b"mBA " => blank_lut(&kind, data)?,
            _ => {
                let defined = colour_len(&kind, data)?;
                zero(&mut data[defined..]) | blank_reserved(data)
            }
        };
        if kept != tag {
            profile.copy_within(entry..entry + 12, TABLE + kept * 12);
        }
        kept += 1;
    }
    if kept != count {
        profile[HEADER..TABLE].copy_from_slice(&(kept as u32).to_be_bytes());
        profile[TABLE + kept * 12..table_end].fill(0);
        changed = true;
    }
    covered.sort_unstable();
    let ranges = covered.into_iter().map(|(s, e)| (s as usize, e as usize));
    changed |= zero_gaps(profile, table_end, ranges);
    Ok(changed)
}

/// The header fields a colour management module reads: size, version,
/// class, colour space, connection space, `acsp`, the illuminant, the
/// defined flags and rendering intent. The others are zeroed: the
/// preferred module, date-time, platform, device manufacturer, model and
/// attributes, creator, profile ID (zero: "not computed"), reserved
/// bytes, the version's reserved bytes.
const HEADER_KEPT: [(usize, usize); 6] = [(0, 4), (8, 10), (12, 24), (36, 40), (44, 48), (64, 80)];

/// Zeros, in place, every header byte [`HEADER_KEPT`] does not name, the
/// flags but their 2 defined bits (embedded, not independent) and a
/// rendering intent other than the 4 defined; whether any byte changed.
fn blank_header(profile: &mut [u8]) -> bool {
    let mut changed = zero_gaps(&mut profile[..HEADER], 0, HEADER_KEPT);
    let flags = be32(profile, 44);
    if flags & !3 != 0 {
        profile[44..48].copy_from_slice(&(flags & 3).to_be_bytes());
        changed = true;
    }
    if be32(profile, 64) > 3 {
        changed |= zero(&mut profile[64..68]);
    }
    changed
}

/// The length the colour tag `data` (of type `kind`) defines from its
/// own counts, checked against its size.
fn colour_len(kind: &[u8; 4], data: &[u8]) -> Result<usize, Malformed> {
    let byte = |at: usize| data.get(at).copied().map(usize::from).ok_or(Malformed);
    let u16_at = |at: usize| Ok::<_, Malformed>(byte(at)? << 8 | byte(at + 1)?);
    let defined = match kind {
        // One XYZNumber: white and black points, the colorants,
        // luminance.
        b"XYZ " => Some(20),
        // The chromatic adaptation matrix (`chad`) is 3 x 3.
        b"sf32" => Some(8 + 36),
        b"curv" | b"para" => Some(curve_len(data)?),
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
        _ => None,
    };
    match defined {
        Some(defined) if defined <= data.len() => Ok(defined),
        _ => Err(Malformed),
    }
}

/// Zeros the reserved bytes inside a colour tag or curve (`data`, its
/// type signature first) past the 4 after its signature: a `para`
/// function type's 2, an `mft1`/`mft2` lookup table's padding byte;
/// whether any was not zero.
fn blank_reserved(data: &mut [u8]) -> bool {
    let reserved = match data.get(..4) {
        Some(b"para") => 10..12,
        Some(b"mft1" | b"mft2") => 11..12,
        _ => return false,
    };
    data.get_mut(reserved).is_some_and(zero)
}

/// The length of the `curv` or `para` curve at the start of `data`, from
/// its own count or function type, checked against `data`'s length.
fn curve_len(data: &[u8]) -> Result<usize, Malformed> {
    let word = |at: usize| -> Result<usize, Malformed> {
        let bytes = data.get(at..at + 4).ok_or(Malformed)?;
        Ok(u32::from_be_bytes(bytes.try_into().unwrap()) as usize)
    };
    let defined = match data.get(..4).ok_or(Malformed)? {
        b"curv" => word(8)?.checked_mul(2).and_then(|n| n.checked_add(12)),
        b"para" => {
            let parameters = [1, 3, 4, 5, 7];
            let function = parameters.get(word(8)? >> 16).ok_or(Malformed)?;
            Some(12 + 4 * function)
        }
        _ => None,
    };
    defined.filter(|&n| n <= data.len()).ok_or(Malformed)
}

/// Blanks, in an `mAB ` or `mBA ` tag (`data`), everything its parts do
/// not define: the header's reserved bytes and padding, the gaps between
/// the parts and past them. Each part (B curves, matrix, M curves, colour
/// lookup table, A curves) lies at the offset the header gives, at the
/// length its own counts define; the curves at the padding between them
/// are zeroed too. Whether any byte changed, or [`Malformed`] for a part
/// that does not fit.
fn blank_lut(kind: &[u8; 4], data: &mut [u8]) -> Result<bool, Malformed> {
    const LUT_HEADER: usize = 32;
    if data.len() < LUT_HEADER {
        return Err(Malformed);
    }
    let (inputs, outputs) = (usize::from(data[8]), usize::from(data[9]));
    if !(1..=15).contains(&inputs) || !(1..=15).contains(&outputs) {
        return Err(Malformed);
    }
    // The B and M curves stand on the profile connection side's channels
    // in `mAB ` (its outputs), on the device side's in `mBA ` (its
    // inputs); the A curves on the other side.
    let (pcs_side, device_side) = if kind == b"mAB " {
        (outputs, inputs)
    } else {
        (inputs, outputs)
    };
    let mut parts = vec![(0, 4), (8, 10), (12, LUT_HEADER)];
    // Where each curve starts, for its `para` reserved bytes.
    let mut starts = Vec::new();
    let mut curves = |at: usize, count: usize, parts: &mut Vec<(usize, usize)>| {
        let mut at = at;
        for _ in 0..count {
            let len = curve_len(data.get(at..).ok_or(Malformed)?)?;
            // The signature, and the curve past its reserved bytes.
            parts.push((at, at + 4));
            parts.push((at + 8, at + len));
            starts.push(at);
            at = (at + len).next_multiple_of(4);
        }
        Ok::<_, Malformed>(())
    };
    for (field, count) in [(12, pcs_side), (20, pcs_side), (28, device_side)] {
        let at = be32(data, field) as usize;
        if at != 0 {
            curves(at, count, &mut parts)?;
        }
    }
    let matrix = be32(data, 16) as usize;
    if matrix != 0 {
        parts.push((matrix, matrix.checked_add(48).ok_or(Malformed)?));
    }
    let clut = be32(data, 24) as usize;
    if clut != 0 {
        let grid = data.get(clut..clut + 20).ok_or(Malformed)?;
        let points = grid[..inputs]
            .iter()
            .try_fold(outputs, |n, &points| n.checked_mul(usize::from(points)));
        let precision = usize::from(grid[16]);
        let entries = points
            .filter(|_| precision == 1 || precision == 2)
            .and_then(|n| n.checked_mul(precision))
            .ok_or(Malformed)?;
        parts.push((clut, clut + inputs));
        parts.push((clut + 16, clut + 17));
        parts.push((
            clut + 20,
            (clut + 20).checked_add(entries).ok_or(Malformed)?,
        ));
    }
    if parts.iter().any(|&(_, end)| end > data.len()) {
        return Err(Malformed);
    }
    parts.sort_unstable();
    let changed = zero_gaps(data, 0, parts);
    Ok(starts.into_iter().fold(changed, |changed, at| {
        changed | blank_reserved(&mut data[at..])
    }))
}

/// Zeros the bytes from `cursor` on that no range of `sorted` covers;
/// whether any was not zero.
fn zero_gaps(
    bytes: &mut [u8],
    mut cursor: usize,
    sorted: impl IntoIterator<Item = (usize, usize)>,
) -> bool {
    let mut changed = false;
    for (start, end) in sorted {
        if start > cursor {
            changed |= zero(&mut bytes[cursor..start]);
        }
        cursor = cursor.max(end);
    }
    changed | zero(&mut bytes[cursor..])
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
        for kept in [&b"desc\0\0\0\0\0\0\0\x17"[..], b"mluc", b"text", b"enUS"] {
            assert!(contains(&profile, kept), "{kept:?}");
        }
        // The private tag leaves the table, and its type with its data.
        assert!(!contains(&profile, b"priv") && !contains(&profile, b"zzzz"));
        assert_eq!(be32(&profile, HEADER), 5);
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
pub(super) mod attack5 {
    use super::super::tests::{contains, riff_webp, scrub, vp8l_chunk, write_to_corpus};
    use super::*;
    use crate::fixtures::riff_chunk;

    const MARKER: &[u8] = b"SERIALXYZ123;GPS48.8584N2.2945E";

    /// A display profile holding `tags` (signature, data), 4-byte aligned.
    pub(super) fn profile(tags: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
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

    pub(super) fn tag(kind: &[u8; 4], body: &[&[u8]]) -> Vec<u8> {
        [&kind[..], &[0; 4], &body.concat()].concat()
    }

    /// Colour tags with the marker past what their counts define, each
    /// with its numbers.
    pub(super) fn colour_tags() -> Vec<(&'static [u8; 4], Vec<u8>, Vec<u8>)> {
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
        webp_with_profile(&profile(&tags))
    }

    /// A 16 x 16 lossless WebP announcing and carrying `icc`, and its
    /// pixels.
    pub(super) fn webp_with_profile(icc: &[u8]) -> (Vec<u8>, image::RgbaImage) {
        let (vp8l, pixels) = vp8l_chunk(16, 16);
        let mut vp8x = vec![0x20, 0, 0, 0];
        vp8x.extend_from_slice(&15u32.to_le_bytes()[..3]);
        vp8x.extend_from_slice(&15u32.to_le_bytes()[..3]);
        let file = riff_webp(&[riff_chunk(b"VP8X", &vp8x), riff_chunk(b"ICCP", icc), vp8l]);
        (file, pixels)
    }

    /// `file`, a WebP with a profile, stored without `hidden`, its profile
    /// kept and its pixels the same.
    pub(super) fn assert_webp_loses(file: &[u8], pixels: &image::RgbaImage, hidden: &[u8]) {
        let (stored, report) = scrub(file, 11, false).unwrap();
        assert!(report.changed);
        assert!(!contains(&stored, hidden));
        assert!(contains(&stored, b"acsp"), "the profile stays");
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == *pixels);
    }

    #[test]
    fn colour_tag_text_leaves_a_webp_profile() {
        let (file, pixels) = webp_with_colour_tag_text();
        assert_webp_loses(&file, &pixels, &MARKER[..6]);
    }

    /// Writes the crafted file to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        let (file, _) = webp_with_colour_tag_text();
        write_to_corpus("", [("a5-webp-iccp-colour-tag-text", file)]);
    }
}

/// Tags keep only the types their signature allows; `mAB `/`mBA ` keep
/// only their parts.
#[cfg(test)]
mod attack6 {
    use super::super::tests::{contains, scrub, write_to_corpus};
    use super::attack5::{colour_tags, profile, tag, webp_with_profile};
    use super::*;

    const MARKER: &[u8] = b"NAME=John Q Public;SERIAL=XYZ123";

    fn white() -> Vec<u8> {
        tag(
            b"XYZ ",
            &[&[0, 0, 0xF6, 0xD6, 0, 1, 0, 0, 0, 0, 0xD3, 0x2D]],
        )
    }

    /// An `mAB ` with 3 inputs and outputs: B curves (identity `curv`,
    /// `para` gamma, `curv` with 2 entries), a matrix, and a 2-point
    /// 8-bit CLUT, with `gap` between the parts and after them.
    fn lut(gap: &[u8]) -> Vec<u8> {
        let padded = |part: Vec<u8>| {
            let mut part = [&part[..], gap].concat();
            part.resize(part.len().next_multiple_of(4), 0);
            part
        };
        let curves = padded(
            [
                tag(b"curv", &[&[0, 0, 0, 0]]),
                tag(b"para", &[&[0, 0, 0, 0, 0, 2, 0x33, 0x33]]),
                tag(b"curv", &[&[0, 0, 0, 2, 0, 0, 0xFF, 0xFF], &[0, 0]]),
            ]
            .concat(),
        );
        let matrix = padded((0..48).map(|i| i as u8 + 1).collect());
        let mut grid = vec![0u8; 20];
        grid[..3].fill(2);
        grid[16] = 1;
        let clut = padded([grid, (0..24).map(|i| i as u8 * 10).collect()].concat());
        let b_at = 32usize;
        let matrix_at = b_at + curves.len();
        let clut_at = matrix_at + matrix.len();
        let mut header = b"mAB \0\0\0\0\x03\x03\0\0".to_vec();
        for at in [b_at, matrix_at, 0, clut_at, 0] {
            header.extend_from_slice(&(at as u32).to_be_bytes());
        }
        [header, curves, matrix, clut, gap.to_vec()].concat()
    }

    #[test]
    fn tags_of_a_type_their_signature_does_not_allow_leave_the_table() {
        let big: Vec<u8> = MARKER.repeat(40);
        let mpet = tag(b"mpet", &[&[0, 3, 0, 3, 0, 0, 0, 0], &big]);
        for (signature, data) in [
            (b"desc", mpet.clone()),
            (b"D2B0", mpet),
            (b"vcgt", tag(b"vcgt", &[&big])),
            (b"zzzz", tag(b"vcgt", &[&big])),
            (b"rTRC", tag(b"mAB ", &[&[1, 1, 0, 0], &[0; 20], &big])),
            (b"wtpt", tag(b"text", &[&big])),
        ] {
            let mut scrubbed = profile(&[(b"wtpt", white()), (signature, data)]);
            let len = scrubbed.len();
            assert_eq!(blank_profile_text(&mut scrubbed), Ok(true));
            assert_eq!(scrubbed.len(), len);
            assert!(!contains(&scrubbed, &MARKER[..8]), "{signature:?}");
            if signature != b"wtpt" {
                assert_eq!(be32(&scrubbed, HEADER), 1, "{signature:?}");
                assert!(contains(&scrubbed, &white()), "{signature:?}");
            }
            let once = scrubbed.clone();
            assert_eq!(blank_profile_text(&mut scrubbed), Ok(false));
            assert_eq!(scrubbed, once);
        }
    }

    #[test]
    fn a_lut_keeps_its_parts_and_nothing_between_or_after_them() {
        let clean = lut(&[]);
        let mut kept = profile(&[(b"A2B0", clean.clone())]);
        assert_eq!(blank_profile_text(&mut kept), Ok(false), "a clean LUT");
        let mut scrubbed = profile(&[(b"A2B0", lut(MARKER))]);
        assert_eq!(blank_profile_text(&mut scrubbed), Ok(true));
        assert!(!contains(&scrubbed, &MARKER[..8]));
        for part in [&clean[32..80], &clean[80..128], &clean[128..]] {
            assert!(contains(&scrubbed, part));
        }
        // A CLUT past the tag's end, or an `mBA ` under `A2B0`: malformed,
        // dropped.
        let mut short = clean.clone();
        short.truncate(clean.len() - 4);
        let mut cut = profile(&[(b"A2B0", short)]);
        assert_eq!(blank_profile_text(&mut cut), Err(Malformed));
        let mut backwards = clean.clone();
        backwards[..4].copy_from_slice(b"mBA ");
        let mut wrong = profile(&[(b"wtpt", white()), (b"A2B0", backwards)]);
        assert_eq!(blank_profile_text(&mut wrong), Ok(true));
        assert_eq!(be32(&wrong, HEADER), 1);
    }

    /// A WebP whose profile carries the marker in an `mpet` `desc`, a
    /// `vcgt`, and between an `mAB `'s parts, with the colour tags a real
    /// display profile has.
    fn webp_with_marked_luts() -> (Vec<u8>, image::RgbaImage) {
        let big: Vec<u8> = MARKER.repeat(40);
        let mut tags: Vec<_> = colour_tags()
            .into_iter()
            .map(|(s, clean, _)| (s, clean))
            .collect();
        tags.push((b"desc", tag(b"mpet", &[&[0, 3, 0, 3, 0, 0, 0, 0], &big])));
        tags.push((b"vcgt", tag(b"vcgt", &[&big])));
        tags.push((b"A2B1", lut(&big)));
        webp_with_profile(&profile(&tags))
    }

    #[test]
    fn lut_and_gamma_table_text_leaves_a_webp_profile() {
        let (file, pixels) = webp_with_marked_luts();
        let (stored, report) = scrub(&file, 11, false).unwrap();
        assert!(report.changed);
        assert!(!contains(&stored, &MARKER[..8]));
        assert!(contains(&stored, b"acsp") && contains(&stored, b"mAB "));
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
    }

    /// Writes the crafted file to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        let (file, _) = webp_with_marked_luts();
        write_to_corpus("", [("a6-webp-iccp-lut-mpet-vcgt", file)]);
    }
}

/// The header keeps only what a colour management module reads; every
/// tag's reserved bytes are zeroed.
#[cfg(test)]
mod attack8 {
    use super::super::tests::{contains, write_to_corpus};
    use super::attack5::{assert_webp_loses, colour_tags, profile, tag, webp_with_profile};
    use super::*;

    const MARKER: &[u8] = b"GPS=48.858370N,2.294481E;NAME=John Q Public;SERIAL=XYZ123;";

    /// The header fields a writer chooses, each holding a piece of the
    /// marker: (offset, length).
    const CHOSEN: [(usize, usize); 8] = [
        (4, 4),   // preferred CMM
        (24, 12), // date-time
        (40, 4),  // primary platform
        (48, 8),  // device manufacturer and model
        (56, 8),  // device attributes
        (80, 4),  // creator
        (84, 16), // profile ID
        (100, 28),
    ];

    /// `profile` with the marker in every header field it does not need,
    /// its flags all set and its rendering intent text.
    fn marked_header(mut profile: Vec<u8>) -> Vec<u8> {
        for (at, len) in CHOSEN {
            profile[at..at + len].copy_from_slice(&MARKER[..len]);
        }
        profile[44..48].copy_from_slice(b"GPS\xFF");
        profile[64..68].copy_from_slice(b"NAM\x01");
        profile
    }

    #[test]
    fn header_fields_a_writer_chooses_are_zeroed() {
        let white = tag(
            b"XYZ ",
            &[&[0, 0, 0xF6, 0xD6, 0, 1, 0, 0, 0, 0, 0xD3, 0x2D]],
        );
        let clean = profile(&[(b"wtpt", white)]);
        let mut scrubbed = marked_header(clean.clone());
        scrubbed[68..80].copy_from_slice(&[0, 0, 0xF6, 0xD6, 0, 1, 0, 0, 0, 0, 0xD3, 0x2D]);
        let illuminant = scrubbed[68..80].to_vec();
        assert_eq!(blank_profile_text(&mut scrubbed), Ok(true));
        for (at, len) in CHOSEN {
            assert!(scrubbed[at..at + len].iter().all(|&b| b == 0), "{at}");
        }
        assert!(!contains(&scrubbed, &MARKER[..3]));
        // The defined flag bits stay; an intent past the 4 defined is 0.
        assert_eq!(be32(&scrubbed, 44), 3);
        assert_eq!(be32(&scrubbed, 64), 0);
        // Size, version, class, spaces, signature and illuminant stay.
        assert_eq!(scrubbed[..24], clean[..24]);
        assert_eq!(&scrubbed[36..40], b"acsp");
        assert_eq!(scrubbed[68..80], illuminant[..]);
        // A defined intent stays, and a clean header is left as it is.
        for intent in 0..=3u32 {
            let mut kept = clean.clone();
            kept[64..68].copy_from_slice(&intent.to_be_bytes());
            kept[44..48].copy_from_slice(&1u32.to_be_bytes());
            let once = kept.clone();
            assert_eq!(blank_profile_text(&mut kept), Ok(false), "{intent}");
            assert_eq!(kept, once);
        }
    }

    /// `tag` with the marker in its 4 reserved bytes.
    fn reserved_marked(tag: &[u8]) -> Vec<u8> {
        [&tag[..4], &MARKER[..4], &tag[8..]].concat()
    }

    #[test]
    fn every_tag_loses_its_reserved_bytes() {
        let mut tags: Vec<_> = colour_tags()
            .into_iter()
            .map(|(signature, clean, _)| (signature, clean))
            .collect();
        let text = crate::fixtures::icc_profile_with_text("");
        let mut blanked = text.clone();
        blank_profile_text(&mut blanked).unwrap();
        for (signature, kind) in [(b"desc", b"desc"), (b"cprt", b"mluc"), (b"dmdd", b"text")] {
            let (at, size) = (0..be32(&blanked, HEADER) as usize)
                .map(|n| TABLE + 12 * n)
                .map(|entry| (be32(&blanked, entry + 4), be32(&blanked, entry + 8)))
                .map(|(at, size)| (at as usize, size as usize))
                .find(|&(at, _)| &blanked[at..at + 4] == kind)
                .unwrap();
            tags.push((signature, blanked[at..at + size].to_vec()));
        }
        for (signature, clean) in tags {
            let mut scrubbed = profile(&[(signature, reserved_marked(&clean))]);
            assert_eq!(blank_profile_text(&mut scrubbed), Ok(true), "{signature:?}");
            assert!(!contains(&scrubbed, &MARKER[..4]), "{signature:?}");
            assert!(contains(&scrubbed, &clean), "{signature:?} keeps the rest");
        }
        // A `para` function type's 2 reserved bytes, an `mft2`'s padding
        // byte, the reserved bytes of a curve inside an `mAB `.
        let para = tag(b"para", &[&[0, 0, b'G', b'P', 0, 2, 0x33, 0x33]]);
        let mut lut = tag(b"mft2", &[&[1, 1, 2, b'S']]);
        lut.extend((0..9).flat_map(|i| if i % 4 == 0 { 0x10000u32 } else { 0 }.to_be_bytes()));
        lut.extend_from_slice(&[0, 2, 0, 2]);
        lut.extend((0..6u16).flat_map(|i| (i * 0x3333).to_be_bytes()));
        let curve = [&b"curv"[..], b"GPS=", &[0, 0, 0, 0]].concat();
        let mut mab = b"mAB \0\0\0\0\x01\x01\0\0".to_vec();
        for at in [32u32, 0, 0, 0, 0] {
            mab.extend_from_slice(&at.to_be_bytes());
        }
        mab.extend_from_slice(&curve);
        for (signature, marked, hidden) in [
            (b"rTRC", para, &b"GP"[..]),
            (b"A2B0", lut, b"S"),
            (b"A2B0", mab, b"GPS="),
        ] {
            let mut scrubbed = profile(&[(signature, marked.clone())]);
            assert_eq!(blank_profile_text(&mut scrubbed), Ok(true), "{signature:?}");
            assert!(!contains(&scrubbed, hidden), "{signature:?}");
            assert_eq!(be32(&scrubbed, HEADER), 1, "{signature:?} stays");
        }
    }

    /// Real sRGB and Display P3 profiles, as a device writes them (its
    /// maker, model, date and profile ID), transform colours exactly as
    /// before once scrubbed.
    #[test]
    fn real_profiles_colour_manage_the_same() {
        use moxcms::{ColorProfile, Layout, TransformOptions};
        let pixels: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255 - v, v / 2]).collect();
        let to_srgb = |icc: &[u8]| {
            let profile = ColorProfile::new_from_slice(icc).unwrap();
            let transform = profile
                .create_transform_8bit(
                    Layout::Rgb,
                    &ColorProfile::new_srgb(),
                    Layout::Rgb,
                    TransformOptions::default(),
                )
                .unwrap();
            let mut out = vec![0; pixels.len()];
            transform.transform(&pixels, &mut out).unwrap();
            (out, profile.rendering_intent, profile.white_point)
        };
        for real in [ColorProfile::new_srgb(), ColorProfile::new_display_p3()] {
            let mut original = real.encode().unwrap();
            original[4..8].copy_from_slice(b"appl");
            original[40..44].copy_from_slice(b"APPL");
            original[48..56].copy_from_slice(b"APPLiPh9");
            original[80..84].copy_from_slice(b"appl");
            original[84..100].copy_from_slice(&[0xA5; 16]);
            let mut scrubbed = original.clone();
            assert_eq!(blank_profile_text(&mut scrubbed), Ok(true));
            assert!(!contains(&scrubbed, b"APPL") && !contains(&scrubbed, b"appl"));
            assert_eq!(scrubbed.len(), original.len());
            assert_eq!(
                be32(&scrubbed, HEADER),
                be32(&original, HEADER),
                "every tag"
            );
            assert_eq!(to_srgb(&scrubbed), to_srgb(&original));
            // Scrubbed again, nothing changes.
            let once = scrubbed.clone();
            assert_eq!(blank_profile_text(&mut scrubbed), Ok(false));
            assert_eq!(scrubbed, once);
        }
    }

    /// A WebP whose profile holds the marker in its header and in its
    /// tags' reserved bytes.
    fn webp_with_marked_header() -> (Vec<u8>, image::RgbaImage) {
        let tags: Vec<_> = colour_tags()
            .into_iter()
            .map(|(signature, clean, _)| (signature, reserved_marked(&clean)))
            .collect();
        webp_with_profile(&marked_header(profile(&tags)))
    }

    #[test]
    fn header_text_leaves_a_webp_profile() {
        let (file, pixels) = webp_with_marked_header();
        assert_webp_loses(&file, &pixels, &MARKER[..3]);
    }

    /// Writes the crafted file to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        let (file, _) = webp_with_marked_header();
        write_to_corpus("", [("a8-webp-iccp-header-and-reserved", file)]);
    }
}
