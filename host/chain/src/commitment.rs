//! `Commitments::CommitmentOf` values, decoded by hand (spec §5.3, notes/chain.md §1.4):
//! `Registration { deposit: u64, block: u32, info: { fields: BoundedVec<Data> } }`, where `Data` has a custom SCALE
//! encoding (tag 0 = None, 1..=129 = Raw of tag-1 bytes, 130..=133 = a 32-byte hash, 134 = TimelockEncrypted,
//! 135 = ResetBondsFlag, 136 = BigRaw). Decoding the bytes is simpler and more robust than matching the 130 `Raw*`
//! variants of a dynamic value. Nothing here trusts the chain: every length is checked.

use parity_scale_codec::{Compact, Decode};
use thiserror::Error;

/// Why a commitment is skipped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommitmentError {
    /// The SCALE bytes are malformed.
    #[error("malformed registration: {0}")]
    Malformed(String),
    /// A `Data` tag this decoder does not know.
    #[error("unknown Data tag {0}")]
    UnknownTag(u8),
    /// No field, or the first field is not raw bytes.
    #[error("the first field is not raw data ({0})")]
    NotRaw(&'static str),
    /// Not UTF-8.
    #[error("the commitment is not UTF-8")]
    NotUtf8,
    /// Not Templar's 128 characters.
    #[error("the commitment has {0} characters, Templar's rule needs exactly 128")]
    WrongLength(usize),
}

/// One field of a commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Tag 0.
    None,
    /// Tags 1..=129: raw bytes.
    Raw(Vec<u8>),
    /// Tags 130..=133: a hash.
    Hash([u8; 32]),
    /// Tag 134.
    TimelockEncrypted {
        /// Ciphertext.
        encrypted: Vec<u8>,
        /// Drand round.
        reveal_round: u64,
    },
    /// Tag 135.
    ResetBondsFlag,
    /// Tag 136.
    BigRaw(Vec<u8>),
}

/// A decoded `Registration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Deposit.
    pub deposit: u64,
    /// Block of the commitment.
    pub block: u32,
    /// Fields.
    pub fields: Vec<Data>,
}

/// Upper bound on fields decoded (the runtime bounds them far lower).
const MAX_FIELDS: u32 = 64;
/// Upper bound on a variable-length field.
const MAX_FIELD_BYTES: u32 = 1 << 16;

fn malformed(e: impl std::fmt::Display) -> CommitmentError {
    CommitmentError::Malformed(e.to_string())
}

fn bytes(input: &mut &[u8]) -> Result<Vec<u8>, CommitmentError> {
    let len = Compact::<u32>::decode(input).map_err(malformed)?.0;
    if len > MAX_FIELD_BYTES || len as usize > input.len() {
        return Err(malformed(format!("field of {len} bytes")));
    }
    let (head, tail) = input.split_at(len as usize);
    *input = tail;
    Ok(head.to_vec())
}

fn data(input: &mut &[u8]) -> Result<Data, CommitmentError> {
    let tag = u8::decode(input).map_err(malformed)?;
    Ok(match tag {
        0 => Data::None,
        1..=129 => {
            let n = (tag - 1) as usize;
            if input.len() < n {
                return Err(malformed(format!("Raw{n} with {} bytes left", input.len())));
            }
            let (head, tail) = input.split_at(n);
            *input = tail;
            Data::Raw(head.to_vec())
        }
        130..=133 => Data::Hash(<[u8; 32]>::decode(input).map_err(malformed)?),
        134 => Data::TimelockEncrypted {
            encrypted: bytes(input)?,
            reveal_round: u64::decode(input).map_err(malformed)?,
        },
        135 => Data::ResetBondsFlag,
        136 => Data::BigRaw(bytes(input)?),
        other => return Err(CommitmentError::UnknownTag(other)),
    })
}

impl Registration {
    /// Decodes the SCALE bytes of a `CommitmentOf` value; every byte must be used.
    pub fn decode(mut input: &[u8]) -> Result<Self, CommitmentError> {
        let deposit = u64::decode(&mut input).map_err(malformed)?;
        let block = u32::decode(&mut input).map_err(malformed)?;
        let n = Compact::<u32>::decode(&mut input).map_err(malformed)?.0;
        if n > MAX_FIELDS {
            return Err(malformed(format!("{n} fields")));
        }
        let fields = (0..n).map(|_| data(&mut input)).collect::<Result<Vec<_>, _>>()?;
        if !input.is_empty() {
            return Err(malformed(format!("{} trailing bytes", input.len())));
        }
        Ok(Self { deposit, block, fields })
    }

    /// Templar's rule: the first field's bytes as UTF-8, exactly 128 characters.
    pub fn bucket_string(&self) -> Result<String, CommitmentError> {
        let raw = match self.fields.first() {
            Some(Data::Raw(b)) | Some(Data::BigRaw(b)) => b,
            Some(Data::None) => return Err(CommitmentError::NotRaw("None")),
            Some(Data::Hash(_)) => return Err(CommitmentError::NotRaw("a hash")),
            Some(Data::TimelockEncrypted { .. }) => return Err(CommitmentError::NotRaw("timelock-encrypted")),
            Some(Data::ResetBondsFlag) => return Err(CommitmentError::NotRaw("reset-bonds flag")),
            None => return Err(CommitmentError::NotRaw("no fields")),
        };
        let s = String::from_utf8(raw.clone()).map_err(|_| CommitmentError::NotUtf8)?;
        match s.chars().count() {
            128 => Ok(s),
            n => Err(CommitmentError::WrongLength(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parity_scale_codec::Encode;

    fn registration(fields: &[Vec<u8>]) -> Vec<u8> {
        let mut out = 5u64.encode();
        out.extend(77u32.encode());
        out.extend(Compact(fields.len() as u32).encode());
        for f in fields {
            out.extend(f);
        }
        out
    }

    fn raw(b: &[u8]) -> Vec<u8> {
        let mut v = vec![b.len() as u8 + 1];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn templar_commitments_decode() {
        let s = "a".repeat(32) + &"b".repeat(32) + &"c".repeat(64);
        let r = Registration::decode(&registration(&[raw(s.as_bytes())])).unwrap();
        assert_eq!((r.deposit, r.block), (5, 77));
        assert_eq!(r.bucket_string().unwrap(), s);
        let mut timelock = vec![134];
        timelock.extend(vec![9u8; 3].encode());
        timelock.extend(42u64.encode());
        let r = Registration::decode(&registration(&[
            raw(s.as_bytes()),
            vec![0],
            vec![130; 33],
            timelock,
            vec![135],
        ]))
        .unwrap();
        assert_eq!(r.fields[4], Data::ResetBondsFlag);
        assert_eq!(
            r.fields[3],
            Data::TimelockEncrypted {
                encrypted: vec![9; 3],
                reveal_round: 42
            }
        );
    }

    #[test]
    fn malformed_commitments_are_errors() {
        let short = Registration::decode(&registration(&[raw(b"short")])).unwrap();
        assert_eq!(short.bucket_string(), Err(CommitmentError::WrongLength(5)));
        let bad_utf8 = Registration::decode(&registration(&[raw(&[0xff; 128])])).unwrap();
        assert_eq!(bad_utf8.bucket_string(), Err(CommitmentError::NotUtf8));
        assert_eq!(
            Registration::decode(&registration(&[vec![200]])),
            Err(CommitmentError::UnknownTag(200))
        );
        assert!(matches!(
            Registration::decode(&registration(&[vec![129, 1, 2]])),
            Err(CommitmentError::Malformed(_))
        ));
        assert!(matches!(
            Registration::decode(&[1, 2, 3]),
            Err(CommitmentError::Malformed(_))
        ));
        let mut trailing = registration(&[raw(b"x")]);
        trailing.push(0);
        assert!(matches!(
            Registration::decode(&trailing),
            Err(CommitmentError::Malformed(_))
        ));
        let none = Registration::decode(&registration(&[])).unwrap();
        assert_eq!(none.bucket_string(), Err(CommitmentError::NotRaw("no fields")));
        // 128 characters but more bytes (non-ASCII): Templar counts characters.
        let wide = "é".repeat(128);
        let big = {
            let mut v = vec![136];
            v.extend(wide.as_bytes().to_vec().encode());
            v
        };
        assert_eq!(
            Registration::decode(&registration(&[big]))
                .unwrap()
                .bucket_string()
                .unwrap(),
            wide
        );
    }
}
