//! Byte pieces gathered into chunks. Stores and the scrubber hand bytes on
//! in pieces of whatever size they had (what the socket read, one JPEG
//! segment), and every piece passed on costs a call: a write (on the
//! embedded store, a trip to the blocking pool; an entry in an S3 part
//! body) or a gRPC message (framing and a wake-up). So small pieces are
//! copied together, once, into a buffer of the final size; large ones pass
//! without a copy.
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::DomainError;
use super::ports::{ByteStream, StorageError};

/// Pieces smaller than this are gathered before they reach a store (an
/// upload's scrubbed bytes, an upload session's segments) or the kept
/// copy: an upload cut into tiny pieces would otherwise cost per piece
/// rather than per byte. Pieces at least this large pass without a copy.
pub const MIN_PIECE: usize = 64 * 1024;

/// Download messages smaller than this are gathered into one: stores
/// deliver what the socket had (often 16 KiB), and a gRPC message per
/// piece costs more CPU in framing and wake-ups than copying the pieces
/// together.
pub const MIN_DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Largest chunk of a download message.
pub const MAX_DOWNLOAD_CHUNK: usize = 1024 * 1024;

/// Gathers pieces of any size into chunks of `min` to `max` bytes, in
/// order. A piece of at least `min` bytes passes without a copy (cut at
/// `max`); smaller ones are copied together, and when a larger piece
/// follows them only what completes their chunk is copied from it. Only
/// the last chunk, from [`Gatherer::finish`], may be shorter than `min`.
pub struct Gatherer {
    min: usize,
    max: usize,
    /// Pieces waiting to make up a chunk: always fewer than `min` bytes.
    small: Vec<Bytes>,
    small_len: usize,
}

impl Gatherer {
    /// Chunks of `min` (at least 1) to `max` bytes.
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1);
        Self {
            min,
            max: max.max(min),
            small: Vec::new(),
            small_len: 0,
        }
    }

    /// Pieces for a store's write calls: at least [`MIN_PIECE`] bytes,
    /// large pieces whole.
    pub fn for_writes() -> Self {
        Self::new(MIN_PIECE, usize::MAX)
    }

    /// Takes `piece`; returns the chunks it completes, in order.
    pub fn push(&mut self, mut piece: Bytes) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        while !piece.is_empty() {
            if self.small.is_empty() && piece.len() >= self.min {
                chunks.push(piece.split_to(piece.len().min(self.max)));
                continue;
            }
            let fill_to = if piece.len() >= self.min {
                self.min
            } else {
                self.max
            };
            let take = piece.len().min(fill_to - self.small_len);
            self.small.push(piece.split_to(take));
            self.small_len += take;
            if self.small_len >= self.min {
                chunks.push(self.take_small());
            }
        }
        chunks
    }

    /// What is left, as the last chunk.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.small.is_empty()).then(|| self.take_small())
    }

    /// All of `pieces` as chunks, the last one possibly short.
    pub fn gather_all(mut self, pieces: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
        let mut chunks: Vec<Bytes> = pieces
            .into_iter()
            .flat_map(|piece| self.push(piece))
            .collect();
        chunks.extend(self.finish());
        chunks
    }

    fn take_small(&mut self) -> Bytes {
        self.small_len = 0;
        gather(std::mem::take(&mut self.small))
    }
}

/// Pieces as one, copied once into a buffer of the final size (a single
/// piece is returned as it is).
fn gather(pieces: Vec<Bytes>) -> Bytes {
    if let [piece] = pieces.as_slice() {
        return piece.clone();
    }
    let len = pieces.iter().map(Bytes::len).sum();
    let mut gathered = BytesMut::with_capacity(len);
    pieces
        .iter()
        .for_each(|piece| gathered.extend_from_slice(piece));
    gathered.freeze()
}

/// Turns a store's stream of `length` bytes into messages of
/// [`MIN_DOWNLOAD_CHUNK`] to [`MAX_DOWNLOAD_CHUNK`] bytes (the last may be
/// shorter; see [`Gatherer`]) and fails if the store delivers more or fewer
/// bytes than `length`, so a truncated read never looks complete.
pub fn exact_chunks(
    stream: ByteStream,
    length: u64,
) -> BoxStream<'static, Result<Bytes, DomainError>> {
    struct State {
        stream: ByteStream,
        left: u64,
        gatherer: Gatherer,
        ready: VecDeque<Bytes>,
        done: bool,
    }
    let state = State {
        stream,
        left: length,
        gatherer: Gatherer::new(MIN_DOWNLOAD_CHUNK, MAX_DOWNLOAD_CHUNK),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.ready.pop_front() {
                return Some((Ok(chunk), state));
            }
            if state.done {
                return None;
            }
            let failure = match state.stream.next().await {
                Some(Ok(bytes)) if bytes.len() as u64 > state.left => {
                    DomainError::Internal("the store returned more bytes than asked".into())
                }
                Some(Ok(bytes)) => {
                    state.left -= bytes.len() as u64;
                    let chunks = state.gatherer.push(bytes);
                    state.ready.extend(chunks);
                    continue;
                }
                Some(Err(StorageError::NotFound)) => DomainError::image_not_found(),
                Some(Err(other)) => other.into(),
                None if state.left > 0 => {
                    DomainError::Internal("the stored object is shorter than its metadata".into())
                }
                None => {
                    // The last message; the store's stream must not be
                    // polled again.
                    state.done = true;
                    let last = state.gatherer.finish();
                    state.ready.extend(last);
                    continue;
                }
            };
            state.done = true;
            return Some((Err(failure), state));
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of these sizes, each byte telling its place in the whole.
    fn pieces(sizes: &[usize]) -> Vec<Bytes> {
        let mut at = 0usize;
        sizes
            .iter()
            .map(|&n| {
                let piece: Vec<u8> = (at..at + n).map(|i| (i % 251) as u8).collect();
                at += n;
                Bytes::from(piece)
            })
            .collect()
    }

    fn lengths(chunks: &[Bytes]) -> Vec<usize> {
        chunks.iter().map(Bytes::len).collect()
    }

    fn chunk_sizes(pieces: Vec<usize>, length: u64) -> Vec<Result<usize, String>> {
        let stream = futures::stream::iter(
            pieces
                .into_iter()
                .map(|n| Ok::<_, StorageError>(Bytes::from(vec![7u8; n]))),
        )
        .boxed();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(
            exact_chunks(stream, length)
                .map(|r| r.map(|b| b.len()).map_err(|e| e.to_string()))
                .collect(),
        )
    }

    #[test]
    fn odd_sized_pieces_make_chunks_of_exactly_n_with_the_remainder_last() {
        let input = pieces(&[1, 7, 1000, 3, 4101, 2, 9000, 17, 1024, 600]);
        let total: usize = input.iter().map(Bytes::len).sum();
        let chunks = Gatherer::new(1024, 1024).gather_all(input.clone());
        assert_eq!(chunks.concat(), input.concat(), "every byte, in order");
        let (last, whole) = chunks.split_last().unwrap();
        assert!(
            whole.iter().all(|chunk| chunk.len() == 1024),
            "{:?}",
            lengths(&chunks)
        );
        assert_eq!(last.len(), total % 1024);
    }

    #[test]
    fn a_large_piece_completes_the_small_ones_before_it_then_passes_uncopied() {
        let input = pieces(&[1000, 200_000]);
        let large = input[1].clone();
        let chunks = Gatherer::for_writes().gather_all(input.clone());
        assert_eq!(lengths(&chunks), [MIN_PIECE, 1000 + 200_000 - MIN_PIECE]);
        assert_eq!(chunks.concat(), input.concat());
        assert_eq!(
            chunks[1].as_ptr(),
            large[MIN_PIECE - 1000..].as_ptr(),
            "the rest of the large piece is not copied"
        );
    }

    #[test]
    fn small_pieces_are_gathered_and_large_ones_pass() {
        let small = Bytes::from(vec![1u8; 1000]);
        let large = Bytes::from(vec![2u8; 100_000]);
        let mut input = vec![large.clone()];
        input.extend(std::iter::repeat_n(small, 70));
        let chunks = Gatherer::for_writes().gather_all(input.clone());
        assert_eq!(chunks.concat(), input.concat());
        assert_eq!(
            lengths(&chunks),
            [100_000, 66_000, 4000],
            "the large piece, 66 small ones gathered, the other 4"
        );
        assert_eq!(chunks[0].as_ptr(), large.as_ptr(), "not copied");
    }

    #[test]
    fn chunks_stay_within_their_bounds_whatever_the_pieces() {
        let sizes = [
            5, 300, 70_000, 1, 65_535, 65_536, 200_000, 9, 131_072, 40_000,
        ];
        for (min, max) in [(MIN_PIECE, usize::MAX), (1000, 4096), (4096, 4096)] {
            let input = pieces(&sizes);
            let chunks = Gatherer::new(min, max).gather_all(input.clone());
            assert_eq!(chunks.concat(), input.concat());
            let (_, whole) = chunks.split_last().unwrap();
            assert!(
                whole.iter().all(|c| (min..=max).contains(&c.len())),
                "{min}..={max}: {:?}",
                lengths(&chunks)
            );
        }
    }

    #[test]
    fn small_store_pieces_are_gathered_and_large_ones_split() {
        // 100 pieces of 16 KiB: gathered into 256 KiB messages.
        let sizes = chunk_sizes(vec![16 * 1024; 100], 1_638_400);
        let mut expected: Vec<Result<usize, String>> = vec![Ok(262_144); 6];
        expected.push(Ok(65_536));
        assert_eq!(sizes, expected);
        // Pieces that do not add up to the message size: whole pieces
        // until a message has enough.
        let sizes = chunk_sizes(vec![100 * 1024; 10], 1_024_000);
        assert_eq!(sizes, [Ok(307_200), Ok(307_200), Ok(307_200), Ok(102_400)]);
        // One 2.5 MiB piece: split into 1 MiB messages.
        let sizes = chunk_sizes(vec![2_621_440], 2_621_440);
        assert_eq!(sizes, [Ok(1_048_576), Ok(1_048_576), Ok(524_288)]);
    }

    #[test]
    fn a_short_or_long_store_stream_fails_instead_of_ending() {
        let sizes = chunk_sizes(vec![16 * 1024; 4], 100_000);
        assert!(matches!(sizes.last(), Some(Err(_))), "{sizes:?}");
        let sizes = chunk_sizes(vec![16 * 1024; 4], 20_000);
        assert!(matches!(sizes.last(), Some(Err(_))), "{sizes:?}");
    }
}
