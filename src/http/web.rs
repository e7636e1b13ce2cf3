//! The built-in web page (`GET /`), the OpenAPI document (`GET /openapi.json`) and CORS.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{Html, IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::AppState;

/// The page: self-contained HTML, CSS and JavaScript, no external assets.
const INDEX_HTML: &str = include_str!("web/index.html");

/// A page to drop images and see their top predictions.
#[utoipa::path(get, path = "/", tag = "web", responses((status = 200, description = "The web page", content_type = "text/html")))]
pub async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "web", responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
        .into_response()
}

/// CORS for the listed origins (`*` allows any), or none.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    let request_headers = [
        "content-type",
        "authorization",
        "x-request-id",
        "x-request-timeout-ms",
        "x-priority",
    ];
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(request_headers.map(HeaderName::from_static))
            .expose_headers([
                HeaderName::from_static("server-timing"),
                HeaderName::from_static("x-request-id"),
            ]),
    )
}
