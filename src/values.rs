//! FP32 input values that are read where they were received when they can be: a V2 tensor's
//! little-endian bytes become the model's input without a conversion copy when they sit on a
//! 4-byte boundary, and are copied when they do not. The V2 REST reader aligns the binary data
//! when the body declares its length (up to 8 MiB); over gRPC it depends on tonic's buffer.
//! Values read in place keep the received buffer (JSON header included) until their job is
//! done, where a copy would have let it go after parsing: the same size, held a little longer.

use std::ops::Deref;

use bytes::Bytes;

/// FP32 values, row-major: an owned buffer, or received little-endian bytes read in place.
#[derive(Clone)]
pub struct Fp32Values(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<f32>),
    /// Little-endian FP32 bytes at a 4-byte aligned address, length a multiple of 4, on a
    /// little-endian machine.
    InPlace(Bytes),
}

impl Fp32Values {
    /// The values of little-endian FP32 `bytes`; a trailing partial value is dropped (callers
    /// check the length first). No copy when the bytes are aligned on a little-endian machine.
    pub fn from_le_bytes(bytes: Bytes) -> Self {
        let whole = bytes.len() - bytes.len() % 4;
        let bytes = bytes.slice(..whole);
        if cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, f32>(&bytes).is_ok() {
            return Self(Repr::InPlace(bytes));
        }
        Self(Repr::Owned(
            bytes
                .chunks_exact(4)
                // Always 4 bytes; NaN (refused as not finite) if that ever broke.
                .map(|chunk| <[u8; 4]>::try_from(chunk).map_or(f32::NAN, f32::from_le_bytes))
                .collect(),
        ))
    }

    /// Whether the values are read in place from received bytes (no copy was made).
    pub fn is_in_place(&self) -> bool {
        matches!(self.0, Repr::InPlace(_))
    }

    /// Consecutive pieces of at most `values` values each (at least one piece); received
    /// bytes are shared, not copied, and a single piece is the buffer itself. (Tensor requests
    /// are refused past `max_batch_size`, so today only preprocessed images get split.)
    pub fn split(self, values: usize) -> Vec<Self> {
        let values = values.max(1);
        if self.len() <= values {
            return vec![self];
        }
        match self.0 {
            Repr::Owned(owned) => owned
                .chunks(values)
                .map(|piece| Self(Repr::Owned(piece.to_vec())))
                .collect(),
            Repr::InPlace(bytes) => bytes
                .chunks(values * 4)
                .map(|piece| Self(Repr::InPlace(bytes.slice_ref(piece))))
                .collect(),
        }
    }
}

impl Deref for Fp32Values {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.0 {
            Repr::Owned(values) => values,
            // Aligned and whole by construction, so the cast cannot fail; were it to, the
            // empty slice fails the batch's length check instead of panicking.
            Repr::InPlace(bytes) => {
                let values = bytemuck::try_cast_slice(bytes);
                debug_assert!(values.is_ok(), "in-place FP32 bytes lost their alignment");
                values.unwrap_or_default()
            }
        }
    }
}

impl From<Vec<f32>> for Fp32Values {
    fn from(values: Vec<f32>) -> Self {
        Self(Repr::Owned(values))
    }
}

impl PartialEq for Fp32Values {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Fp32Values {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Fp32Values")
            .field("len", &self.len())
            .field("in_place", &self.is_in_place())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `values` as little-endian bytes starting `offset` bytes into a 64-byte aligned buffer.
    fn received(values: &[f32], offset: usize) -> Bytes {
        let mut buffer = bytes::BytesMut::with_capacity(values.len() * 4 + 128);
        let pad = (64 - buffer.as_ptr() as usize % 64) % 64 + offset;
        buffer.resize(pad, 0);
        for value in values {
            buffer.extend_from_slice(&value.to_le_bytes());
        }
        buffer.freeze().slice(pad..)
    }

    #[test]
    fn aligned_bytes_are_read_in_place_and_misaligned_ones_copied_alike() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.25).collect();
        for offset in 0..8 {
            let decoded = Fp32Values::from_le_bytes(received(&values, offset));
            assert_eq!(&*decoded, values.as_slice(), "offset {offset}");
            let aligned = offset % 4 == 0 && cfg!(target_endian = "little");
            assert_eq!(decoded.is_in_place(), aligned, "offset {offset}");
        }
    }

    #[test]
    fn a_partial_trailing_value_is_dropped() {
        let mut bytes = received(&[1.5, -2.0], 0).to_vec();
        bytes.push(7);
        let decoded = Fp32Values::from_le_bytes(Bytes::from(bytes));
        assert_eq!(&*decoded, &[1.5, -2.0]);
    }

    #[test]
    fn split_keeps_order_and_shares_received_bytes() {
        let values: Vec<f32> = (0..10).map(|i| i as f32).collect();
        for source in [
            Fp32Values::from_le_bytes(received(&values, 0)),
            Fp32Values::from(values.clone()),
        ] {
            let in_place = source.is_in_place();
            let pieces = source.split(4);
            let lengths: Vec<usize> = pieces.iter().map(|piece| piece.len()).collect();
            assert_eq!(lengths, [4, 4, 2]);
            assert!(pieces.iter().all(|piece| piece.is_in_place() == in_place));
            let joined: Vec<f32> = pieces
                .iter()
                .flat_map(|piece| piece.iter().copied())
                .collect();
            assert_eq!(joined, values);
        }
        let whole = Fp32Values::from(values.clone()).split(10);
        assert_eq!(whole.len(), 1);
        assert_eq!(&*whole[0], values.as_slice());
    }
}
