//! A streaming walk over a GIF's blocks that finds the area its frames
//! really cover. The header's "logical screen" is only a hint: a frame may
//! be far larger than the screen, and decoders allocate for the frame. So
//! every frame descriptor counts against the pixel limit, and the size an
//! image reports is the box that holds the screen and every frame.
//!
//! Bounds: 13 bytes are held (a screen or image descriptor), nothing is
//! allocated after that, and each byte is looked at once; colour tables
//! (at most 768 bytes) and data sub-blocks (at most 255) are skipped by
//! count, never read into memory.
use super::MediaError;

/// Where the walk is in the block structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Collecting the 13 bytes of signature and logical screen descriptor.
    Screen,
    /// Skipping a colour table.
    Table { left: usize },
    /// Expecting a block introducer: extension, image, or trailer.
    Block,
    /// After `0x21`: the extension's label.
    Label,
    /// Collecting an image descriptor's 9 bytes (after `0x2C`).
    Descriptor,
    /// The LZW minimum code size byte before an image's data.
    CodeSize,
    /// Expecting a data sub-block's size byte (0 ends the sub-blocks).
    SubBlock,
    /// Skipping a sub-block's data.
    Data { left: usize },
    /// After the trailer, or stopped: nothing more is read.
    Done,
}

/// Walks a GIF's bytes as they arrive (no more than 13 held at a time).
#[derive(Debug)]
pub struct GifFrames {
    max_pixels: u64,
    step: Step,
    /// Where a colour table being skipped leads.
    after_table: Step,
    held: Vec<u8>,
    /// The box holding the logical screen and every frame seen.
    width: u32,
    height: u32,
    frames: u64,
}

impl GifFrames {
    pub fn new(max_pixels: u64) -> Self {
        Self {
            max_pixels,
            step: Step::Screen,
            after_table: Step::Block,
            held: Vec::with_capacity(13),
            width: 0,
            height: 0,
            frames: 0,
        }
    }

    /// The box that holds the screen and every frame so far.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Frames seen so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Takes the next bytes of the file.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), MediaError> {
        while !bytes.is_empty() {
            match self.step {
                Step::Done => return Ok(()),
                Step::Screen | Step::Descriptor => {
                    let need = if self.step == Step::Screen { 13 } else { 9 };
                    let take = (need - self.held.len()).min(bytes.len());
                    self.held.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.held.len() == need {
                        let held = std::mem::take(&mut self.held);
                        if self.step == Step::Screen {
                            self.screen(&held)?;
                        } else {
                            self.descriptor(&held)?;
                        }
                    }
                }
                Step::Table { left } | Step::Data { left } => {
                    let take = left.min(bytes.len());
                    bytes = &bytes[take..];
                    let left = left - take;
                    self.step = match (self.step, left) {
                        (Step::Table { .. }, 0) => self.after_table,
                        (Step::Table { .. }, left) => Step::Table { left },
                        (_, 0) => Step::SubBlock,
                        (_, left) => Step::Data { left },
                    };
                }
                Step::Block | Step::Label | Step::CodeSize | Step::SubBlock => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    self.step = match (self.step, byte) {
                        (Step::Block, 0x21) => Step::Label,
                        (Step::Block, 0x2C) => Step::Descriptor,
                        (Step::Block, 0x3B) => Step::Done,
                        (Step::Block, _) => {
                            return Err(MediaError::invalid(
                                "the GIF's block structure is corrupt",
                            ));
                        }
                        (Step::Label, _) | (Step::CodeSize, _) => Step::SubBlock,
                        (Step::SubBlock, 0) => Step::Block,
                        (_, size) => Step::Data {
                            left: usize::from(size),
                        },
                    };
                }
            }
        }
        Ok(())
    }

    fn screen(&mut self, held: &[u8]) -> Result<(), MediaError> {
        self.width = u32::from(u16::from_le_bytes([held[6], held[7]]));
        self.height = u32::from(u16::from_le_bytes([held[8], held[9]]));
        self.after_table = Step::Block;
        self.step = table_then(held[10], Step::Block);
        self.check()
    }

    fn descriptor(&mut self, held: &[u8]) -> Result<(), MediaError> {
        let field = |at: usize| u32::from(u16::from_le_bytes([held[at], held[at + 1]]));
        let (left, top, width, height) = (field(0), field(2), field(4), field(6));
        self.frames += 1;
        self.width = self.width.max(left + width);
        self.height = self.height.max(top + height);
        self.after_table = Step::CodeSize;
        self.step = table_then(held[8], Step::CodeSize);
        self.check()
    }

    fn check(&self) -> Result<(), MediaError> {
        let pixels = u64::from(self.width) * u64::from(self.height);
        if pixels > self.max_pixels {
            return Err(MediaError::TooLarge(format!(
                "the GIF's frames cover {pixels} pixels ({}x{}); the limit is {}",
                self.width, self.height, self.max_pixels
            )));
        }
        Ok(())
    }
}

/// The step after a descriptor whose packed field is `packed`: its colour
/// table when it has one, else `next`.
fn table_then(packed: u8, next: Step) -> Step {
    if packed & 0x80 == 0 {
        return next;
    }
    Step::Table {
        left: 3 << ((packed & 0x07) + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::gif_with_frame as gif;

    fn walk(bytes: &[u8], chunk: usize, max_pixels: u64) -> Result<GifFrames, MediaError> {
        let mut frames = GifFrames::new(max_pixels);
        for piece in bytes.chunks(chunk) {
            frames.feed(piece)?;
        }
        Ok(frames)
    }

    #[test]
    fn a_frame_larger_than_the_screen_counts_with_its_real_size() {
        let bytes = gif((1, 1), (11_000, 11_000));
        for chunk in [1, 3, bytes.len()] {
            let error = walk(&bytes, chunk, 100_000_000).unwrap_err();
            assert!(matches!(error, MediaError::TooLarge(_)), "{error:?}");
        }
        let frames = walk(&gif((1, 1), (300, 200)), 1, 100_000_000).unwrap();
        assert_eq!(frames.dimensions(), (300, 200));
        assert_eq!(frames.frames(), 1);
    }

    #[test]
    fn real_gifs_walk_to_their_trailer() {
        let picture =
            image::RgbaImage::from_fn(67, 41, |x, y| image::Rgba([x as u8, y as u8, 9, 255]));
        let mut out = std::io::Cursor::new(Vec::new());
        picture.write_to(&mut out, image::ImageFormat::Gif).unwrap();
        let bytes = out.into_inner();
        for chunk in [1, 5, bytes.len()] {
            let frames = walk(&bytes, chunk, 1 << 20).unwrap();
            assert_eq!(frames.dimensions(), (67, 41));
            assert_eq!(frames.step, Step::Done);
        }
    }

    #[test]
    fn a_corrupt_block_structure_is_refused() {
        let mut bytes = gif((4, 4), (4, 4));
        let trailer = bytes.len() - 1;
        bytes[trailer] = 0x99;
        assert!(matches!(
            walk(&bytes, 7, 1 << 20),
            Err(MediaError::Invalid(_))
        ));
    }
}
