//! The REST error type and its one mapping to status codes and JSON bodies:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ServiceError;
use crate::preprocess::PreprocessError;

/// The JSON body of every REST error (outside `/v2/`).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// snake_case error code, e.g. `invalid_top_k`.
    #[schema(example = "invalid_top_k")]
    pub code: String,
    /// What was wrong, with the limit and the value given.
    #[schema(example = "top_k must be between 1 and 10 (the model's class count), got 0")]
    pub message: String,
}

/// Everything a REST request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the service.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Malformed request (bad JSON, base64, multipart, query, empty body).
    #[error("{message}")]
    BadRequest {
        /// snake_case code.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// Body over `--max-body-bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body did not arrive within `--body-read-timeout-ms`.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout {
        /// The limit.
        timeout_ms: u128,
    },
    /// Content type we do not take.
    #[error(
        "unsupported content type `{0}`; send image bytes (image/* or application/octet-stream), multipart/form-data or application/json"
    )]
    UnsupportedContentType(String),
    /// `--api-key` set and the bearer token missing or wrong.
    #[error("missing or invalid API key (Authorization: Bearer <key>)")]
    Unauthorized,
    /// No such route.
    #[error("no route for {method} {path}")]
    NotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// Route exists, method does not.
    #[error("method {0} not allowed here")]
    MethodNotAllowed(String),
    /// In-flight limit reached.
    #[error("too many requests in flight (limit {limit}); retry later")]
    Overloaded {
        /// `--max-concurrent-requests`.
        limit: usize,
    },
}

impl ApiError {
    /// A malformed-request error.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Service(error) => service_status(error),
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The snake_case code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Service(error) => error.code(),
            Self::BadRequest { code, .. } => code,
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::UnsupportedContentType(_) => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Overloaded { .. } => "overloaded",
        }
    }

    /// The message shown to the client; a 500 shows only "internal error" and the request id.
    pub fn message(&self, request_id: Option<&str>) -> String {
        if self.status() == StatusCode::INTERNAL_SERVER_ERROR {
            match request_id {
                Some(id) => format!("internal error (request id {id})"),
                None => "internal error".into(),
            }
        } else {
            self.to_string()
        }
    }

    /// The response, logging the error once.
    pub fn into_response_with_id(self, request_id: Option<&str>) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::info!(error = %self, status = status.as_u16(), "request refused");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.message(request_id),
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with_id(None)
    }
}

/// The status of each service error; every variant named, so a new one must be mapped.
fn service_status(error: &ServiceError) -> StatusCode {
    match error {
        ServiceError::ModelNotFound { .. } | ServiceError::VersionNotFound { .. } => {
            StatusCode::NOT_FOUND
        }
        ServiceError::ModelNotReady { .. } | ServiceError::ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ServiceError::NoImages
        | ServiceError::InvalidTopK { .. }
        | ServiceError::InvalidPriority { .. }
        | ServiceError::InvalidTensor(_)
        | ServiceError::LoadFailed { .. } => StatusCode::BAD_REQUEST,
        ServiceError::Image { source, .. } => image_status(source),
        ServiceError::QueueFull { .. } | ServiceError::WouldMissDeadline { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        ServiceError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn image_status(error: &PreprocessError) -> StatusCode {
    match error {
        PreprocessError::NoData | PreprocessError::RawLength { .. } => StatusCode::BAD_REQUEST,
        PreprocessError::UnsupportedFormat(_) | PreprocessError::UnknownFormat => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        PreprocessError::TooManyPixels { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        PreprocessError::EmptyImage { .. }
        | PreprocessError::AspectRatio { .. }
        | PreprocessError::Decode { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        PreprocessError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_errors_map_to_the_design_table() {
        let image = |source| {
            ApiError::Service(ServiceError::Image {
                index: Some(1),
                source,
            })
        };
        assert_eq!(
            image(PreprocessError::UnknownFormat).status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let bomb = PreprocessError::TooManyPixels {
            width: 50_000,
            height: 50_000,
            limit: 40_000_000,
        };
        assert_eq!(image(bomb.clone()).status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            image(bomb)
                .to_string()
                .starts_with("image 1: image is 50000×50000")
        );
        let corrupt = PreprocessError::Decode {
            format: "png",
            message: "crc".into(),
        };
        assert_eq!(image(corrupt).status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn internal_errors_hide_details() {
        let error = ApiError::Service(ServiceError::Internal("secret path".into()));
        assert_eq!(
            error.message(Some("abc")),
            "internal error (request id abc)"
        );
    }
}
