//! The V2 binary tensor encodings: little-endian FP32 values, and Triton's BYTES elements
//! (each a 4-byte little-endian length followed by that many bytes).

use bytes::{Buf, Bytes};

use super::{BYTES, FP32, InputData, OutputData};
use crate::error::ServiceError;
use crate::values::Fp32Values;

/// Number of elements of `shape`, refusing negative dimensions and overflow.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, ServiceError> {
    shape
        .iter()
        .try_fold(1usize, |count, &dim| {
            usize::try_from(dim)
                .ok()
                .and_then(|dim| count.checked_mul(dim))
        })
        .ok_or_else(|| {
            ServiceError::InvalidTensor(format!(
                "input `{name}` has an invalid shape {shape:?} (dimensions must be non-negative)"
            ))
        })
}

/// Decodes the raw bytes of input `name` (declared `datatype` and `shape`).
pub fn decode(
    name: &str,
    datatype: &str,
    shape: &[i64],
    raw: Bytes,
) -> Result<InputData, ServiceError> {
    let count = element_count(name, shape)?;
    match datatype {
        FP32 => {
            let expected = count.checked_mul(4).ok_or_else(|| {
                ServiceError::InvalidTensor(format!("input `{name}` shape {shape:?} is too large"))
            })?;
            if raw.len() != expected {
                return Err(ServiceError::InvalidTensor(format!(
                    "input `{name}` has {} bytes of data; FP32 shape {shape:?} needs {expected}",
                    raw.len()
                )));
            }
            Ok(InputData::Fp32(Fp32Values::from_le_bytes(raw)))
        }
        BYTES => decode_bytes(name, shape, count, raw).map(InputData::Bytes),
        other => Err(unsupported_datatype(name, other)),
    }
}

/// The error for an input datatype we do not take.
pub fn unsupported_datatype(name: &str, datatype: &str) -> ServiceError {
    ServiceError::InvalidTensor(format!(
        "input `{name}` has datatype {datatype}; expected FP32 (a [N, C, H, W] tensor) or BYTES (N encoded images)"
    ))
}

fn decode_bytes(
    name: &str,
    shape: &[i64],
    count: usize,
    mut raw: Bytes,
) -> Result<Vec<Bytes>, ServiceError> {
    let mut elements = Vec::with_capacity(count.min(raw.len() / 4));
    while raw.has_remaining() {
        if raw.remaining() < 4 {
            return Err(ServiceError::InvalidTensor(format!(
                "input `{name}`: BYTES element {} has a truncated 4-byte length prefix",
                elements.len()
            )));
        }
        let length = raw.get_u32_le() as usize;
        if length > raw.remaining() {
            return Err(ServiceError::InvalidTensor(format!(
                "input `{name}`: BYTES element {} claims {length} bytes but only {} remain",
                elements.len(),
                raw.remaining()
            )));
        }
        elements.push(raw.split_to(length));
    }
    if elements.len() != count {
        return Err(ServiceError::InvalidTensor(format!(
            "input `{name}` has {} BYTES elements; shape {shape:?} needs {count}",
            elements.len()
        )));
    }
    Ok(elements)
}

/// Encodes output elements as raw bytes.
pub fn encode(data: &OutputData) -> Vec<u8> {
    match data {
        OutputData::Fp32(values) => values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect(),
        OutputData::Bytes(strings) => {
            let mut raw = Vec::with_capacity(strings.iter().map(|text| text.len() + 4).sum());
            for text in strings {
                raw.extend_from_slice(&(text.len() as u32).to_le_bytes());
                raw.extend_from_slice(text.as_bytes());
            }
            raw
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_errors() {
        let raw = encode(&OutputData::Bytes(vec![
            "ab".into(),
            String::new(),
            "xyz".into(),
        ]));
        let InputData::Bytes(elements) =
            decode("in", BYTES, &[3], Bytes::from(raw.clone())).unwrap()
        else {
            panic!("not bytes")
        };
        assert_eq!(
            elements,
            vec![Bytes::from("ab"), Bytes::new(), Bytes::from("xyz")]
        );
        assert!(decode("in", BYTES, &[2], Bytes::from(raw.clone())).is_err());
        assert!(
            decode(
                "in",
                BYTES,
                &[3],
                Bytes::from(raw[..raw.len() - 1].to_vec())
            )
            .is_err()
        );
        assert!(decode("in", BYTES, &[1], Bytes::from_static(&[1, 0])).is_err());
    }

    #[test]
    fn fp32_needs_exact_length() {
        let raw = encode(&OutputData::Fp32(vec![1.0, -2.5]));
        assert_eq!(
            decode("in", FP32, &[1, 2], Bytes::from(raw.clone())).unwrap(),
            InputData::Fp32(vec![1.0, -2.5].into())
        );
        let error = decode("in", FP32, &[1, 3], Bytes::from(raw)).unwrap_err();
        assert!(error.to_string().contains("has 8 bytes"), "{error}");
        assert!(decode("in", FP32, &[-1, 2], Bytes::new()).is_err());
        assert!(decode("in", "INT8", &[1], Bytes::new()).is_err());
    }
}
