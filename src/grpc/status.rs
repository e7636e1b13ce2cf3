//! The one mapping from service errors to gRPC status codes (DESIGN §4.2).

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::batcher::DEADLINE_BOUND;
use crate::error::ServiceError;
use crate::preprocess::PreprocessError;

/// The status for a service error; every variant named, so a new one must be mapped.
pub fn status(error: &ServiceError) -> Status {
    let code = match error {
        ServiceError::ModelNotFound { .. } | ServiceError::VersionNotFound { .. } => Code::NotFound,
        ServiceError::ModelNotReady { .. } | ServiceError::ShuttingDown => Code::Unavailable,
        ServiceError::NoImages
        | ServiceError::InvalidTopK { .. }
        | ServiceError::InvalidPriority { .. }
        | ServiceError::InvalidTensor(_)
        | ServiceError::LoadFailed { .. } => Code::InvalidArgument,
        ServiceError::Image { source, .. } => match source {
            PreprocessError::Internal(_) => Code::Internal,
            PreprocessError::NoData
            | PreprocessError::UnsupportedFormat(_)
            | PreprocessError::UnknownFormat
            | PreprocessError::TooManyPixels { .. }
            | PreprocessError::EmptyImage { .. }
            | PreprocessError::AspectRatio { .. }
            | PreprocessError::Decode { .. }
            | PreprocessError::RawLength { .. } => Code::InvalidArgument,
        },
        ServiceError::QueueFull { .. } | ServiceError::WouldMissDeadline { .. } => {
            Code::ResourceExhausted
        }
        ServiceError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        ServiceError::Internal(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(%error, "gRPC request failed");
        return Status::new(code, "internal error");
    }
    tracing::info!(%error, ?code, "gRPC request refused");
    let mut status = Status::new(code, error.to_string());
    if let Some(pushback) = retry_pushback_ms(error) {
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK, MetadataValue::from(pushback));
    }
    status
}

/// gRPC's server pushback (proposal A6): clients with a retry policy wait this many
/// milliseconds before retrying; the counterpart of REST's `Retry-After`.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// How long a refused request should wait before it is worth sending again: a full queue, a
/// second (as REST's `Retry-After: 1`); work ahead past the latency target, the excess, by
/// when that much of the queue has run. Work ahead past the call's own deadline: -1, which
/// asks the client not to retry, since the deadline covers every attempt and shrinks as fast
/// as the queue drains.
fn retry_pushback_ms(error: &ServiceError) -> Option<i64> {
    match error {
        ServiceError::QueueFull { .. } => Some(1000),
        ServiceError::WouldMissDeadline { bound, .. } if *bound == DEADLINE_BOUND => Some(-1),
        ServiceError::WouldMissDeadline {
            expected_ms,
            budget_ms,
            ..
        } => Some(
            i64::try_from(expected_ms.saturating_sub(*budget_ms))
                .unwrap_or(i64::MAX)
                .max(1),
        ),
        _ => None,
    }
}

/// Parses the `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::TARGET_BOUND;

    #[test]
    fn maps_the_design_table() {
        let image = |source| ServiceError::Image {
            index: None,
            source,
        };
        let bomb = PreprocessError::TooManyPixels {
            width: 1,
            height: 1,
            limit: 0,
        };
        assert_eq!(status(&image(bomb)).code(), Code::InvalidArgument);
        assert_eq!(
            status(&ServiceError::QueueFull {
                model: "m".into(),
                capacity: 1
            })
            .code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            status(&ServiceError::DeadlineExceeded { timeout_ms: 1 }).code(),
            Code::DeadlineExceeded
        );
        // Refusals say when a retry is worth it; other errors do not.
        let pushback = |error: &ServiceError| {
            status(error)
                .metadata()
                .get(RETRY_PUSHBACK)
                .map(|value| value.to_str().unwrap().to_string())
        };
        let full = ServiceError::QueueFull {
            model: "m".into(),
            capacity: 1,
        };
        assert_eq!(pushback(&full).as_deref(), Some("1000"));
        // The same refusal, bounded by the latency target or by the call's own deadline.
        let would_miss = |bound| ServiceError::WouldMissDeadline {
            model: "m".into(),
            expected_ms: 340,
            budget_ms: 125,
            bound,
        };
        let late = would_miss(TARGET_BOUND);
        assert_eq!(status(&late).code(), Code::ResourceExhausted);
        assert_eq!(pushback(&late).as_deref(), Some("215"));
        assert_eq!(pushback(&would_miss(DEADLINE_BOUND)).as_deref(), Some("-1"));
        assert_eq!(pushback(&ServiceError::ShuttingDown), None);
        assert_eq!(
            status(&ServiceError::ShuttingDown).code(),
            Code::Unavailable
        );
        let internal = status(&ServiceError::Internal("secret".into()));
        assert_eq!(
            (internal.code(), internal.message()),
            (Code::Internal, "internal error")
        );
    }

    #[test]
    fn parses_grpc_timeouts() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(
            grpc_timeout(&metadata),
            Some(std::time::Duration::from_millis(250))
        );
        metadata.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(
            grpc_timeout(&metadata),
            Some(std::time::Duration::from_secs(2))
        );
        metadata.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }
}
