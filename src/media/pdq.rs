//! Meta's PDQ perceptual hash (256 bits and a quality from 0 to 100), the
//! open standard hash-sharing programmes publish lists in.
//!
//! A port of the reference implementation (facebook/ThreatExchange,
//! `pdq/cpp`: `hashing/pdqhashing.cpp`, `downscaling/downscaling.cpp`,
//! `hashing/torben.cpp`, `common/pdqhashtypes.cpp`), step for step and in
//! the same `f32` arithmetic, so that the hashes it makes are the ones the
//! reference makes from the same pixels and compare with published lists:
//! luma from RGB, a two-pass Jarosz (box) filter, decimation to 64×64, the
//! gradient quality metric, the 16×16 corner of a 64×64 DCT, and one bit per
//! coefficient above their (Torben) median. The unit tests hold hashes the
//! reference printed for the same synthetic pixels.
//!
//! The reference's command-line hasher first shrinks any image larger than
//! [`REFERENCE_SIDE`] on a side (the filter is slow on large images);
//! [`hash`] does the same with the caller's resizer, see
//! [`crate::media::variants`].

use std::sync::LazyLock;

/// The largest side the reference hasher works on: larger images are
/// shrunk to it first (`DOWNSAMPLE_DIMS` in the reference's `pdqio.cpp`).
pub const REFERENCE_SIDE: u32 = 512;

/// Images smaller than this on a side get no hash (the reference's
/// `MIN_HASHABLE_DIM`: an all-zero hash of quality 0).
pub const MIN_HASHABLE_SIDE: u32 = 5;

/// The quality Meta recommends as the least for a hash to be matched on:
/// below it the image is too flat for its hash to mean much.
pub const RECOMMENDED_MIN_QUALITY: u32 = 50;

/// The distance Meta recommends as the most for two hashes to be taken as
/// the same image.
pub const RECOMMENDED_MAX_DISTANCE: u32 = 31;

/// Passes of the box filter along each axis: two make a tent filter.
const JAROSZ_PASSES: usize = 2;

/// The side of the image-domain downsample the DCT is taken of.
const SIDE: usize = 64;

/// The side of the DCT corner the bits come from.
const DCT_SIDE: usize = 16;

/// A 256-bit PDQ hash. Bit `k` (`i * 16 + j` for DCT coefficient `(i, j)`)
/// is bit `k % 16` of 16-bit word `k / 16`, as in the reference's
/// `Hash256`; the hexadecimal form prints the words from the last to the
/// first, which is this type's big-endian byte order.
///
/// The band index of similar images (`domain::similar`) splits it into its
/// 32 bytes: [`PdqHash::bands`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PdqHash([u8; 32]);

impl PdqHash {
    fn set_bit(&mut self, k: usize) {
        self.0[31 - k / 8] |= 1 << (k % 8);
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its bytes, in the order the hexadecimal form prints them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The value of band `band` (0 to 31): the byte at that place.
    pub fn band(&self, band: usize) -> u8 {
        self.0[band]
    }

    /// Every (band, value) the hash is indexed under.
    pub fn bands(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        self.0
            .iter()
            .enumerate()
            .map(|(band, &value)| (band as u8, value))
    }

    /// The number of bits in which the two hashes differ (0 to 256).
    pub fn distance(&self, other: &PdqHash) -> u32 {
        self.words()
            .iter()
            .zip(other.words())
            .map(|(a, b)| (a ^ b).count_ones())
            .sum()
    }

    /// The hash as four 64-bit words, for matching with `popcount`.
    pub fn words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, bytes) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(bytes);
            *word = u64::from_be_bytes(eight);
        }
        words
    }

    /// 64 lower-case hexadecimal digits, as the reference prints them.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads 64 hexadecimal digits (either case), as the reference prints
    /// them; anything else is `None`.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Self(bytes))
    }
}

impl std::fmt::Display for PdqHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A hash and its quality: 0 (a flat image, the hash means nothing) to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdq {
    pub hash: PdqHash,
    pub quality: u32,
}

/// The hash of `width × height` pixels of `channels` bytes each (RGB first;
/// a fourth, alpha, is ignored as the reference ignores it), row-major and
/// tightly packed. `None` when the image is smaller than the reference
/// hashes (5 pixels on a side) or the buffer does not hold the pixels.
///
/// The caller shrinks a larger image to [`REFERENCE_SIDE`] first, as the
/// reference does: this filters every pixel it is given, and holds two
/// `f32` copies of them.
pub fn hash(pixels: &[u8], width: u32, height: u32, channels: usize) -> Option<Pdq> {
    if width < MIN_HASHABLE_SIDE || height < MIN_HASHABLE_SIDE || channels < 3 {
        return None;
    }
    let (rows, cols) = (height as usize, width as usize);
    if pixels.len() != rows.checked_mul(cols)?.checked_mul(channels)? {
        return None;
    }
    let mut luma: Vec<f32> = pixels
        .chunks_exact(channels)
        .map(|p| {
            LUMA_FROM_R * f32::from(p[0])
                + LUMA_FROM_G * f32::from(p[1])
                + LUMA_FROM_B * f32::from(p[2])
        })
        .collect();
    Some(from_luma(&mut luma, rows, cols))
}

// Standard RGB to luminance, the reference's coefficients.
const LUMA_FROM_R: f32 = 0.299;
const LUMA_FROM_G: f32 = 0.587;
const LUMA_FROM_B: f32 = 0.114;

/// `pdqHash256FromFloatLuma`: `luma` (rows × cols, row-major) is filtered
/// in place.
fn from_luma(luma: &mut [f32], rows: usize, cols: usize) -> Pdq {
    let mut block = [[0f32; SIDE]; SIDE];
    if rows == SIDE && cols == SIDE {
        // Already the downsample's size: the reference takes it as it is.
        for (row, values) in block.iter_mut().zip(luma.chunks_exact(SIDE)) {
            row.copy_from_slice(values);
        }
    } else {
        let along_rows = jarosz_window(cols, SIDE);
        let along_cols = jarosz_window(rows, SIDE);
        let mut scratch = vec![0f32; luma.len()];
        for _ in 0..JAROSZ_PASSES {
            for (input, output) in luma.chunks_exact(cols).zip(scratch.chunks_exact_mut(cols)) {
                box_1d(input, output, cols, 1, along_rows);
            }
            for j in 0..cols {
                box_1d(&scratch[j..], &mut luma[j..], rows, cols, along_cols);
            }
        }
        decimate(luma, rows, cols, &mut block);
    }
    let quality = quality(&block);
    let dct = dct_64_to_16(&block);
    Pdq {
        hash: bits(&dct),
        quality,
    }
}

/// `computeJaroszFilterWindowSize`: half of a downsampled pixel's span per
/// pass, rounded up, so that two passes cover it all.
fn jarosz_window(old: usize, new: usize) -> usize {
    old.div_ceil(2 * new)
}

/// `box1DFloat`: a moving average of `window` values along a vector of
/// `length` values `stride` apart, with the shorter windows the reference
/// uses at both ends.
fn box_1d(input: &[f32], output: &mut [f32], length: usize, stride: usize, window: usize) {
    let half = (window + 2) / 2; // 7 -> 4, 8 -> 5
    let phase_1 = half - 1;
    let phase_2 = window - half + 1;
    let phase_3 = length.saturating_sub(window);
    let phase_4 = half - 1;
    let (mut left, mut right, mut out) = (0usize, 0usize, 0usize);
    let mut sum = 0f32;
    let mut size = 0u32;
    for _ in 0..phase_1 {
        sum += input[right];
        size += 1;
        right += stride;
    }
    for _ in 0..phase_2 {
        sum += input[right];
        size += 1;
        output[out] = sum / size as f32;
        right += stride;
        out += stride;
    }
    for _ in 0..phase_3 {
        sum += input[right];
        sum -= input[left];
        output[out] = sum / size as f32;
        left += stride;
        right += stride;
        out += stride;
    }
    for _ in 0..phase_4 {
        sum -= input[left];
        size -= 1;
        output[out] = sum / size as f32;
        left += stride;
        out += stride;
    }
}

/// `decimateFloat`: the pixel at the centre of each of the 64×64 cells.
fn decimate(input: &[f32], rows: usize, cols: usize, block: &mut [[f32; SIDE]; SIDE]) {
    for (i, row) in block.iter_mut().enumerate() {
        let source_row = (((i as f64 + 0.5) * rows as f64) / SIDE as f64) as usize;
        for (j, value) in row.iter_mut().enumerate() {
            let source_col = (((j as f64 + 0.5) * cols as f64) / SIDE as f64) as usize;
            *value = input[source_row * cols + source_col];
        }
    }
}

/// `pdqImageDomainQualityMetric`: the sum of the significant gradients
/// between neighbours, scaled to 0–100 by the reference's heuristic.
fn quality(block: &[[f32; SIDE]; SIDE]) -> u32 {
    // The reference truncates each difference to an int, as here.
    let step = |u: f32, v: f32| (((u - v) * 100.0) / 255.0) as i32;
    let mut sum: i64 = 0;
    for pair in block.windows(2) {
        for (u, v) in pair[0].iter().zip(&pair[1]) {
            sum += i64::from(step(*u, *v).abs());
        }
    }
    for row in block {
        for pair in row.windows(2) {
            sum += i64::from(step(pair[0], pair[1]).abs());
        }
    }
    (sum / 90).min(100) as u32
}

/// Rows 1 to 16 of the 64-point DCT-II matrix, computed in `f64` and kept
/// in `f32` as the reference keeps them.
static DCT_MATRIX: LazyLock<[[f32; SIDE]; DCT_SIDE]> = LazyLock::new(|| {
    let scale = (2.0 / SIDE as f64).sqrt() as f32;
    let mut matrix = [[0f32; SIDE]; DCT_SIDE];
    for (i, row) in matrix.iter_mut().enumerate() {
        for (j, value) in row.iter_mut().enumerate() {
            let angle =
                (std::f64::consts::PI / 2.0 / SIDE as f64) * (i + 1) as f64 * (2 * j + 1) as f64;
            // The product is taken in f64, as the reference's is.
            *value = (f64::from(scale) * angle.cos()) as f32;
        }
    }
    matrix
});

/// `dct64To16`: `D A Dᵀ`, summed in the reference's order.
fn dct_64_to_16(block: &[[f32; SIDE]; SIDE]) -> [[f32; DCT_SIDE]; DCT_SIDE] {
    let d = &*DCT_MATRIX;
    let mut partial = [[0f32; SIDE]; DCT_SIDE];
    for (i, row) in partial.iter_mut().enumerate() {
        for (j, value) in row.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (k, block_row) in block.iter().enumerate() {
                sum += d[i][k] * block_row[j];
            }
            *value = sum;
        }
    }
    let mut out = [[0f32; DCT_SIDE]; DCT_SIDE];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, value) in row.iter_mut().enumerate() {
            let mut sum = 0f32;
            for k in 0..SIDE {
                sum += partial[i][k] * d[j][k];
            }
            *value = sum;
        }
    }
    out
}

/// `pdqBuffer16x16ToBits`: a bit for each coefficient above the median.
fn bits(dct: &[[f32; DCT_SIDE]; DCT_SIDE]) -> PdqHash {
    let values: Vec<f32> = dct.iter().flatten().copied().collect();
    let median = torben_median(&values);
    let mut hash = PdqHash([0; 32]);
    for (k, value) in values.iter().enumerate() {
        if *value > median {
            hash.set_bit(k);
        }
    }
    hash
}

/// Torben Mogensen's median (`torben.cpp`), kept as it is so that ties
/// resolve as the reference resolves them: the lower median of an even
/// count.
fn torben_median(values: &[f32]) -> f32 {
    let half = values.len().div_ceil(2);
    let (mut min, mut max) = (values[0], values[0]);
    for &v in &values[1..] {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    loop {
        let guess = (min + max) / 2.0;
        let (mut less, mut greater, mut equal) = (0usize, 0usize, 0usize);
        let (mut max_below, mut min_above) = (min, max);
        for &v in values {
            if v < guess {
                less += 1;
                if v > max_below {
                    max_below = v;
                }
            } else if v > guess {
                greater += 1;
                if v < min_above {
                    min_above = v;
                }
            } else {
                equal += 1;
            }
        }
        if less <= half && greater <= half {
            return if less >= half {
                max_below
            } else if less + equal >= half {
                guess
            } else {
                min_above
            };
        }
        if less > greater {
            max = max_below;
        } else {
            min = min_above;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synthetic images the reference hashed for these tests.
    fn synthetic(kind: u8, width: usize, height: usize) -> Vec<u8> {
        let mut state: u32 = 12345;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let pixel = match kind {
                    0 => [
                        (x * 255 / (width - 1)) as u8,
                        (y * 255 / (height - 1)) as u8,
                        ((x * y) % 256) as u8,
                    ],
                    1 => {
                        let c = if ((x / 25) + (y / 25)) % 2 == 1 {
                            230
                        } else {
                            20
                        };
                        [c as u8, ((c + x) % 256) as u8, (255 - c) as u8]
                    }
                    _ => [next(), next(), next()],
                };
                rgb.extend_from_slice(&pixel);
            }
        }
        rgb
    }

    fn hex_of(kind: u8, width: usize, height: usize) -> (String, u32) {
        let rgb = synthetic(kind, width, height);
        let pdq = hash(&rgb, width as u32, height as u32, 3).expect("hashable");
        (pdq.hash.to_hex(), pdq.quality)
    }

    #[test]
    fn hashes_equal_the_reference_implementations_for_the_same_pixels() {
        // Printed by the reference C++ (pdqHash256FromFloatLuma after
        // fillFloatLumaFromRGB, Hash256::format) for the images above.
        let cases = [
            (
                0,
                200,
                150,
                "fe60fffcb6fcf5c8fff0f6c8fff9b240fef0f7e8b340ea40960066c080000000",
                77,
            ),
            (
                1,
                300,
                200,
                "a55ba55fa55ba57fa55ba57fa55ba57f52805280a55b5280a55f5280a55f5280",
                100,
            ),
            (
                2,
                97,
                61,
                "87c33dc23802e2759d02b5e41b1db937e25752a1ef89f6b84b51e1860dda645f",
                100,
            ),
            (
                2,
                64,
                64,
                "68e51cee23fa5bd033ecfb3094375badaf9035c996c68aa692538a1df684a2c0",
                100,
            ),
            (
                0,
                131,
                509,
                "bf785000f5fbf7f0fa7c0000f5ffffe1fe781000f5f951807c7c4000f4ffc000",
                50,
            ),
            (
                1,
                7,
                5,
                "309ee5ab6dc968dd392c292c6cd93cd84fc18a57c18f38dc913e36c834d8cf85",
                0,
            ),
        ];
        for (kind, width, height, expected, quality) in cases {
            assert_eq!(
                hex_of(kind, width, height),
                (expected.to_string(), quality),
                "image {kind} at {width}x{height}"
            );
        }
    }

    #[test]
    fn an_image_smaller_than_five_pixels_on_a_side_has_no_hash() {
        let rgb = synthetic(2, 4, 40);
        assert_eq!(hash(&rgb, 4, 40, 3), None);
    }

    #[test]
    fn a_buffer_that_does_not_hold_the_pixels_has_no_hash() {
        let rgb = synthetic(2, 40, 40);
        assert_eq!(hash(&rgb[..rgb.len() - 1], 40, 40, 3), None);
        assert_eq!(hash(&rgb, 40, 40, 4), None);
    }

    #[test]
    fn alpha_is_ignored_as_the_reference_ignores_it() {
        let rgb = synthetic(2, 97, 61);
        let rgba: Vec<u8> = rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 7])
            .collect();
        assert_eq!(hash(&rgb, 97, 61, 3), hash(&rgba, 97, 61, 4));
    }

    #[test]
    fn the_hex_form_reads_back_and_counts_distance_in_bits() {
        let text = "fe60fffcb6fcf5c8fff0f6c8fff9b240fef0f7e8b340ea40960066c080000000";
        let hash = PdqHash::from_hex(text).expect("64 hex digits");
        assert_eq!(hash.to_hex(), text);
        assert_eq!(PdqHash::from_hex(&text.to_uppercase()), Some(hash));
        assert_eq!(hash.distance(&hash), 0);
        let zero = PdqHash::from_hex(&"0".repeat(64)).expect("zeros");
        let ones = PdqHash::from_hex(&"f".repeat(64)).expect("ones");
        assert_eq!(zero.distance(&ones), 256);
        let one_bit = PdqHash::from_hex(&format!("{}1", "0".repeat(63))).expect("one bit");
        assert_eq!(zero.distance(&one_bit), 1);
        assert_eq!(PdqHash::from_hex(&"0".repeat(63)), None);
        assert_eq!(PdqHash::from_hex(&format!("{}g", "0".repeat(63))), None);
        assert_eq!(PdqHash::from_hex(&format!("{}é", "0".repeat(62))), None);
    }

    #[test]
    fn bit_k_is_bit_k_mod_16_of_word_k_div_16_printed_last_word_first() {
        // The reference's Hash256::setBit(0) prints as ...0001, setBit(255)
        // as 8000...
        let mut low = PdqHash([0; 32]);
        low.set_bit(0);
        assert_eq!(low.to_hex(), format!("{}1", "0".repeat(63)));
        let mut high = PdqHash([0; 32]);
        high.set_bit(255);
        assert_eq!(high.to_hex(), format!("8{}", "0".repeat(63)));
        let mut word_1 = PdqHash([0; 32]);
        word_1.set_bit(16);
        assert_eq!(word_1.to_hex(), format!("{}00010000", "0".repeat(56)));
    }

    #[test]
    fn the_median_is_the_lower_middle_value_as_torben_computes_it() {
        assert_eq!(torben_median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(torben_median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(torben_median(&[2.0, 2.0, 2.0, 2.0]), 2.0);
    }
}
