//! 1-bit sign packing, LSB first (spec §3.2): element `e` sets bit `e % 8` of byte `e / 8` when its value is `> 0`.
//! Zero, -0 and NaN give 0; padding bits after the last element are always 0. Unpacking gives `2 * bit - 1`.

use crate::KernelError;

/// Sign bits of up to 64 values: bit `j` is `row[j] > 0`.
#[inline(always)]
pub(crate) fn sign_bits(row: &[f32]) -> u64 {
    debug_assert!(row.len() <= 64);
    let mut m = 0u64;
    let mut chunks = row.chunks_exact(8);
    for (c, chunk) in (&mut chunks).enumerate() {
        m |= (byte_of(chunk) as u64) << (8 * c);
    }
    let done = row.len() - chunks.remainder().len();
    for (j, &v) in chunks.remainder().iter().enumerate() {
        m |= ((v > 0.0) as u64) << (done + j);
    }
    m
}

/// Sign bits of exactly 8 values (a fixed-size loop LLVM turns into a compare and a mask move).
#[inline(always)]
fn byte_of(chunk: &[f32]) -> u8 {
    let mut b = 0u8;
    for (j, &v) in chunk[..8].iter().enumerate() {
        b |= ((v > 0.0) as u8) << j;
    }
    b
}

/// ORs the low `nbits` bits of `bits` into `out`, starting at bit offset `bit_off` (LSB-first order).
#[inline(always)]
pub(crate) fn or_bits(out: &mut [u8], bit_off: usize, bits: u64, nbits: usize) {
    let (byte, shift) = (bit_off / 8, bit_off % 8);
    if shift == 0 && nbits == 64 {
        // The common case (64-wide blocks): eight whole bytes owned by this row segment.
        let dst = &mut out[byte..byte + 8];
        let old = u64::from_le_bytes(dst.try_into().expect("8 bytes"));
        dst.copy_from_slice(&(old | bits).to_le_bytes());
        return;
    }
    let wide = (bits as u128) << shift;
    for (b, o) in out[byte..byte + (shift + nbits).div_ceil(8)].iter_mut().enumerate() {
        *o |= (wide >> (8 * b)) as u8;
    }
}

/// Packs the signs of `values` into `out` (`ceil(len / 8)` bytes).
pub fn pack_signs(values: &[f32], out: &mut [u8]) -> Result<(), KernelError> {
    let expected = values.len().div_ceil(8);
    if out.len() != expected {
        return Err(KernelError::Length {
            field: "packed",
            expected,
            actual: out.len(),
        });
    }
    for (o, chunk) in out.iter_mut().zip(values.chunks(8)) {
        *o = if chunk.len() == 8 {
            byte_of(chunk)
        } else {
            sign_bits(chunk) as u8
        };
    }
    Ok(())
}

/// Unpacks `out.len()` elements from `packed` as +1.0 / -1.0; bits past the last element are ignored.
pub fn unpack_signs(packed: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
    let expected = out.len().div_ceil(8);
    if packed.len() != expected {
        return Err(KernelError::Length {
            field: "packed",
            expected,
            actual: packed.len(),
        });
    }
    for (chunk, &byte) in out.chunks_mut(8).zip(packed) {
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = if byte >> j & 1 == 1 { 1.0 } else { -1.0 };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_golden_vector() {
        let v = [
            1., -1., -1., -1., -1., -1., -1., -1., -1., 1., -1., -1., -1., -1., -1., 1.,
        ];
        let mut out = [0u8; 2];
        pack_signs(&v, &mut out).unwrap();
        assert_eq!(out, [0x01, 0x82]);
    }

    #[test]
    fn or_bits_spans_bytes() {
        let mut out = [0u8; 3];
        or_bits(&mut out, 5, 0b1_1111, 5);
        assert_eq!(out, [0b1110_0000, 0b0000_0011, 0]);
    }
}
