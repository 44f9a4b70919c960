//! Limits shared by the scrubber and the decoders, so a file one accepts
//! the other does not refuse for the same reason.
use super::MediaError;

/// Largest ICC profile carried into variants (the scrubber keeps a PNG's
/// up to this size too). Real profiles are a few KiB to a few hundred;
/// larger ones are left out.
pub const MAX_ICC_PROFILE: usize = 1024 * 1024;

/// Most scans a JPEG may have. Every progressive scan is a pass over all
/// the image's coefficients: cameras write about ten, a file with
/// thousands is built to spend CPU (libjpeg-turbo's own tools stop at
/// 500). The scrubber refuses more on upload, whatever the build's
/// decoder; the libjpeg-turbo decode checks it again.
pub const MAX_JPEG_SCANS: u32 = 500;

/// Default of `--max-jpeg-decode-passes`: most passes over its
/// coefficients ([`JpegDecodeWork`]) a JPEG may take to decode. A
/// baseline JPEG takes 1; progressive files of libjpeg's, mozjpeg's,
/// Pillow's and phone cameras' scan scripts take 2 to 7 (BENCHMARKS.md:
/// JPEG decode work), so 24 leaves them a wide margin while a file built
/// to spend CPU with the most scans allowed takes hundreds.
pub const DEFAULT_MAX_JPEG_DECODE_PASSES: u32 = 24;

/// What a block costs a decoder each scan that visits it, besides its
/// coefficients, in coefficients: jpeg-decoder spent about 100 ns a block
/// visit in scans of end-of-band runs and about 16 ns a coefficient in
/// whole-band refinements (BENCHMARKS.md: JPEG decode work), about 6
/// coefficients a visit; 16 counts visits high, so files of many narrow
/// scans are refused sooner than wide ones.
const BLOCK_VISIT: u64 = 16;

/// The work of decoding a JPEG's scans, counted from its frame and scan
/// headers as they go by. A scan visits every block of its components
/// (every block of an MCU, padding included, when it interleaves them)
/// and, in each, every coefficient of its band: a progressive
/// refinement scans the band for the coefficients it refines even where
/// an end-of-band run codes the block in no bits, so that work is not
/// bounded by the file's size, while a whole pass is. A pass is every
/// coefficient of every block once: what a baseline file costs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JpegDecodeWork {
    /// The frame's components: id, blocks a scan of it alone visits,
    /// and blocks its MCUs hold in an interleaved scan.
    components: Vec<(u8, u64, u64)>,
    /// The frame is progressive: a scan codes the band its header gives
    /// (a sequential scan codes all 64 coefficients).
    progressive: bool,
    /// The work of one pass.
    pass: u64,
    /// The work of the scans so far.
    done: u64,
}

impl JpegDecodeWork {
    /// A frame header (SOFn `marker`) with `payload`, the bytes after
    /// its length: precision, height, width, components.
    pub fn frame(&mut self, marker: u8, payload: &[u8]) {
        let (Some(size), Some(&count)) = (payload.get(1..5), payload.get(5)) else {
            return;
        };
        let height = u64::from(u16::from_be_bytes([size[0], size[1]]));
        let width = u64::from(u16::from_be_bytes([size[2], size[3]]));
        let components = payload.get(6..).unwrap_or_default();
        let components = &components[..components.len().min(3 * usize::from(count))];
        let factors = |c: &[u8]| (u64::from(c[1] >> 4).max(1), u64::from(c[1] & 15).max(1));
        let (hmax, vmax) = components
            .chunks_exact(3)
            .map(factors)
            .fold((1, 1), |(h, v), (ch, cv)| (h.max(ch), v.max(cv)));
        let (mcus_x, mcus_y) = (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax));
        self.progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
        self.components = components
            .chunks_exact(3)
            .map(|c| {
                let (h, v) = factors(c);
                let alone = (width * h).div_ceil(8 * hmax) * (height * v).div_ceil(8 * vmax);
                (c[0], alone, mcus_x * mcus_y * h * v)
            })
            .collect();
        self.pass = self.components.iter().map(|c| c.1).sum::<u64>() * (64 + BLOCK_VISIT);
    }

    /// A scan header's `payload`: its components, band and successive
    /// approximation. A component the frame does not have counts as its
    /// largest (decoders refuse such a scan anyway).
    pub fn scan(&mut self, payload: &[u8]) {
        let count = usize::from(payload.first().copied().unwrap_or(0));
        let Some(band) = payload.get(1 + 2 * count..3 + 2 * count) else {
            return;
        };
        let coefficients = match (self.progressive, band[0], band[1]) {
            (true, start, end) if start <= end && end < 64 => u64::from(end - start) + 1,
            _ => 64,
        };
        let largest =
            |pick: fn(&(u8, u64, u64)) -> u64| self.components.iter().map(pick).max().unwrap_or(0);
        let blocks: u64 = payload[1..1 + 2 * count]
            .chunks_exact(2)
            .map(|selector| {
                let component = self.components.iter().find(|c| c.0 == selector[0]);
                match (count, component) {
                    (1, Some(c)) => c.1,
                    (1, None) => largest(|c| c.1),
                    (_, Some(c)) => c.2,
                    (_, None) => largest(|c| c.2),
                }
            })
            .sum();
        self.done = self
            .done
            .saturating_add(blocks.saturating_mul(coefficients + BLOCK_VISIT));
    }

    /// Passes over the image's coefficients the scans so far take,
    /// rounded down to hundredths.
    pub fn passes(&self) -> f64 {
        if self.pass == 0 {
            return 0.0;
        }
        (u128::from(self.done) * 100 / u128::from(self.pass)) as f64 / 100.0
    }

    /// Refuses the file once its scans take more than `max_passes`
    /// passes (`--max-jpeg-decode-passes`).
    pub fn check(&self, max_passes: u32) -> Result<(), MediaError> {
        if self.done > self.pass.saturating_mul(u64::from(max_passes)) {
            return Err(MediaError::TooLarge(format!(
                "the JPEG's scans take more than {max_passes} passes over its coefficients \
                 to decode (--max-jpeg-decode-passes)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::JpegDecodeWork;

    /// A 4:2:0 frame of 100 × 60: luma 13 × 8 blocks alone, chroma 7 × 4
    /// each; MCUs of 16 × 16 pixels, 7 × 4 of them.
    fn frame() -> JpegDecodeWork {
        let mut work = JpegDecodeWork::default();
        let mut sof = vec![8, 0, 60, 0, 100, 3];
        sof.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        work.frame(0xC2, &sof);
        work
    }

    /// A scan's work is its blocks (an interleaved scan's MCUs whole, a
    /// scan of one component its own blocks) times its band and the
    /// per-block cost; a pass is every block of every component once,
    /// whole.
    #[test]
    fn scans_count_their_blocks_times_their_band() {
        let mut work = frame();
        let blocks = 13 * 8 + 2 * 7 * 4;
        assert_eq!(work.pass, blocks * (64 + super::BLOCK_VISIT));
        // DC of all three, interleaved: 28 MCUs of 4 + 1 + 1 blocks.
        work.scan(&[3, 1, 0, 2, 0, 3, 0, 0, 0, 0]);
        assert_eq!(work.done, 28 * 6 * (1 + super::BLOCK_VISIT));
        // Luma's AC band 1 to 5, alone.
        work.scan(&[1, 1, 0, 1, 5, 0]);
        assert_eq!(
            work.done,
            28 * 6 * (1 + super::BLOCK_VISIT) + 13 * 8 * (5 + super::BLOCK_VISIT)
        );
    }

    /// A sequential scan codes all 64 coefficients whatever its band says,
    /// and a band no decoder takes counts as whole; a component the frame
    /// lacks counts as its largest.
    #[test]
    fn what_decoders_read_otherwise_counts_whole() {
        let mut work = frame();
        work.scan(&[1, 9, 0, 1, 0, 0]);
        work.scan(&[1, 2, 0, 9, 3, 0]);
        assert_eq!(work.done, (13 * 8 + 7 * 4) * (64 + super::BLOCK_VISIT));
        let mut baseline = JpegDecodeWork::default();
        let mut sof = vec![8, 0, 60, 0, 100, 1];
        sof.extend_from_slice(&[1, 0x11, 0]);
        baseline.frame(0xC0, &sof);
        baseline.scan(&[1, 1, 0, 0, 0, 0]);
        assert_eq!(baseline.passes(), 1.0);
        assert!(baseline.check(1).is_ok());
    }
}
