//! Turns a `/classify` request body (raw image, multipart or JSON base64) into images.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;

use super::error::ApiError;

/// The images of a request and whether the response uses the multi-image form.
#[derive(Debug)]
pub struct ParsedBody {
    /// Encoded images, in request order.
    pub images: Vec<Bytes>,
    /// `results` (JSON `images`, multipart) rather than `predictions`.
    pub multi: bool,
}

/// After the limit, how much more of an oversized body is read and discarded, so the 413 reaches
/// a client still sending instead of a connection reset.
const DRAIN_BYTES: usize = 16 << 20;

/// The most a body's buffer is sized to up front from its declared length: a batch of eight
/// 224² FP32 tensors (4.8 MB) fits.
const PRESIZE_BYTES: usize = 8 << 20;

/// The boundary [`read_limited_aligned`] puts its chosen byte on: a cache line.
const ALIGNMENT: usize = 64;

/// How long draining an oversized body may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// `--max-body-bytes` and `--body-read-timeout-ms`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body.
    pub max_bytes: usize,
    /// Time for the whole body to arrive.
    pub read_timeout: Duration,
}

/// Reads at most `limits.max_bytes` of `body`, within `limits.read_timeout`.
pub async fn read_limited(body: Body, limits: BodyLimits) -> Result<Bytes, ApiError> {
    read_limited_aligned(body, limits, 0).await
}

/// [`read_limited`], with the body's byte `offset` at a 64-byte aligned address whenever the
/// declared length let the buffer be sized up front: the binary tensor data behind a V2
/// request's JSON header is then read in place instead of copied ([`crate::values`]).
pub async fn read_limited_aligned(
    body: Body,
    limits: BodyLimits,
    offset: usize,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(
        limits.read_timeout,
        read_at_most(body, limits.max_bytes, offset),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout {
        timeout_ms: limits.read_timeout.as_millis(),
    })?
}

async fn read_at_most(body: Body, limit: usize, aligned_offset: usize) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody as _;
    use bytes::Buf as _;
    use futures::StreamExt;
    // Sized once from a `Content-Length` within the limit instead of reallocated as chunks
    // arrive, but never more than `PRESIZE_BYTES` before the bytes are there: a client that
    // declares much and sends little reserves nothing large. A length past the limit gets 413.
    let declared = body.size_hint().lower();
    let expected = if declared <= limit as u64 {
        declared.min(PRESIZE_BYTES as u64) as usize
    } else {
        0
    };
    let mut stream = body.into_data_stream();
    let mut buffer = bytes::BytesMut::with_capacity(expected + ALIGNMENT);
    // Start the body `pad` bytes in, so that its byte `aligned_offset` lands on the boundary.
    let address = (buffer.as_ptr() as usize).wrapping_add(aligned_offset);
    let pad = (ALIGNMENT - address % ALIGNMENT) % ALIGNMENT;
    buffer.resize(pad, 0);
    buffer.advance(pad);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::bad_request("bad_body", format!("cannot read the request body: {error}"))
        })?;
        if buffer.len() + chunk.len() > limit {
            // Bounded in bytes and time: a client sending forever is cut off either way.
            let drain = async {
                let mut drained = 0usize;
                while let Some(Ok(chunk)) = stream.next().await {
                    drained += chunk.len();
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(ApiError::BodyTooLarge { limit });
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// The media type without parameters, lower-case.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Parses a `/classify` body according to its content type.
pub async fn parse(request: Request, limits: BodyLimits) -> Result<ParsedBody, ApiError> {
    let media = media_type(request.headers());
    match media.as_deref() {
        Some("multipart/form-data") => parse_multipart(request, limits).await,
        Some("application/json") => {
            let bytes = read_limited(request.into_body(), limits).await?;
            parse_json(&bytes)
        }
        None | Some("application/octet-stream") => raw(request, limits).await,
        Some(media) if media.starts_with("image/") => raw(request, limits).await,
        Some(media) => Err(ApiError::UnsupportedContentType(media.to_string())),
    }
}

async fn raw(request: Request, limits: BodyLimits) -> Result<ParsedBody, ApiError> {
    let bytes = read_limited(request.into_body(), limits).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request body is empty; send an image",
        ));
    }
    Ok(ParsedBody {
        images: vec![bytes],
        multi: false,
    })
}

async fn parse_multipart(request: Request, limits: BodyLimits) -> Result<ParsedBody, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = read_limited(body, limits).await?;
    let request = Request::from_parts(parts, Body::from(bytes));
    let bad = |message: String| ApiError::bad_request("bad_multipart", message);
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| {
            bad(format!(
                "invalid multipart request: {}",
                rejection.body_text()
            ))
        })?;
    let mut images = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|error| bad(format!("invalid multipart body: {}", error.body_text())))?
    {
        // File parts carry a filename; plain text fields (form metadata) are skipped.
        let is_file = field.file_name().is_some()
            || field
                .content_type()
                .is_some_and(|media| !media.starts_with("text/"));
        if !is_file {
            continue;
        }
        let data = field
            .bytes()
            .await
            .map_err(|error| bad(format!("invalid multipart part: {}", error.body_text())))?;
        images.push(data);
    }
    if images.is_empty() {
        return Err(bad(
            "the multipart body has no file part; attach images as files".into(),
        ));
    }
    Ok(ParsedBody {
        images,
        multi: true,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    image: Option<String>,
    images: Option<Vec<String>>,
}

/// Parses `{"image": "<base64>"}` or `{"images": ["<base64>", ...]}`.
pub fn parse_json(bytes: &[u8]) -> Result<ParsedBody, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request body is empty; send JSON with `image` or `images`",
        ));
    }
    let body: JsonBody = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(
            "bad_json",
            format!("invalid JSON body: {error}; expected {{\"image\": \"<base64>\"}} or {{\"images\": [\"<base64>\", ...]}}"),
        )
    })?;
    match (body.image, body.images) {
        (Some(image), None) => Ok(ParsedBody {
            images: vec![decode_base64(&image, None)?],
            multi: false,
        }),
        (None, Some(images)) if !images.is_empty() => {
            let images = images
                .iter()
                .enumerate()
                .map(|(index, image)| decode_base64(image, Some(index)))
                .collect::<Result<_, _>>()?;
            Ok(ParsedBody {
                images,
                multi: true,
            })
        }
        (None, Some(_)) => Err(ApiError::bad_request("bad_json", "`images` is empty")),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "bad_json",
            "give either `image` or `images`, not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "bad_json",
            "the JSON body needs `image` or `images`",
        )),
    }
}

/// Decodes standard or URL-safe base64, padded or not, with an optional `data:` URL prefix.
pub fn decode_base64(text: &str, index: Option<usize>) -> Result<Bytes, ApiError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let payload = match text.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((meta, data)) if meta.ends_with(";base64") => data,
            _ => {
                return Err(base64_error(
                    index,
                    "a data URL must have the form data:<type>;base64,<data>".into(),
                ));
            }
        },
        None => text,
    };
    let cleaned: Vec<u8> = payload
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    let url_safe = cleaned.iter().any(|&byte| byte == b'-' || byte == b'_');
    let alphabet = if url_safe {
        &base64::alphabet::URL_SAFE
    } else {
        &base64::alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config)
        .decode(&cleaned)
        .map(Bytes::from)
        .map_err(|error| base64_error(index, error.to_string()))
}

fn base64_error(index: Option<usize>, detail: String) -> ApiError {
    let position = index
        .map(|index| format!("image {index}: "))
        .unwrap_or_default();
    ApiError::bad_request("bad_base64", format!("{position}invalid base64: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_read_whole_with_or_without_a_declared_length_and_refused_past_the_limit() {
        let data = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let declared = || Body::from(data.clone());
        let streamed = || {
            let chunks: Vec<Result<Bytes, std::io::Error>> = data
                .chunks(7_000)
                .map(|chunk| Ok(data.slice_ref(chunk)))
                .collect();
            Body::from_stream(futures::stream::iter(chunks))
        };
        for body in [declared(), streamed()] {
            assert_eq!(read_at_most(body, data.len(), 0).await.unwrap(), data);
        }
        for body in [declared(), streamed()] {
            let error = read_at_most(body, data.len() - 1, 0).await.unwrap_err();
            assert!(matches!(error, ApiError::BodyTooLarge { limit } if limit == data.len() - 1));
        }
    }

    #[tokio::test]
    async fn a_declared_body_has_the_chosen_byte_on_a_cache_line() {
        let data = Bytes::from((0..700_000u32).map(|i| i as u8).collect::<Vec<_>>());
        for offset in [0, 1, 63, 64, 1_000, 600_000] {
            let read = read_at_most(Body::from(data.clone()), data.len(), offset)
                .await
                .unwrap();
            assert_eq!(read, data);
            assert_eq!(
                (read.as_ptr() as usize + offset) % ALIGNMENT,
                0,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn base64_variants_decode() {
        assert_eq!(
            decode_base64("aGVsbG8=", None).unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            decode_base64("aGVsbG8", None).unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            decode_base64("data:image/png;base64,aGVs\nbG8=", None).unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            decode_base64("-_-_", None).unwrap(),
            Bytes::from_static(&[0xfb, 0xff, 0xbf])
        );
        assert_eq!(
            decode_base64("+/+/", None).unwrap(),
            Bytes::from_static(&[0xfb, 0xff, 0xbf])
        );
    }

    #[test]
    fn bad_base64_names_the_image() {
        let error = decode_base64("not base64!", Some(2)).unwrap_err();
        assert!(
            error.to_string().starts_with("image 2: invalid base64"),
            "{error}"
        );
        assert!(decode_base64("data:image/png,abc", None).is_err());
    }

    #[test]
    fn json_shapes() {
        assert!(!parse_json(br#"{"image": "aGk="}"#).unwrap().multi);
        assert_eq!(
            parse_json(br#"{"images": ["aGk=", "aGk="]}"#)
                .unwrap()
                .images
                .len(),
            2
        );
        for bad in [
            &br#"{"image": 1}"#[..],
            br#"{"img": "aGk="}"#,
            br#"[]"#,
            br#"{"images": []}"#,
            b"{",
            br#"{"image":"aGk=","images":["aGk="]}"#,
        ] {
            assert_eq!(
                parse_json(bad).unwrap_err().status(),
                axum::http::StatusCode::BAD_REQUEST
            );
        }
    }
}
