//! API errors: every failure leaves as `{ "error": code, "message": text }` with a fitting status.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use protocol::Reason;
use serde::Serialize;
use std::fmt;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_query`, `bad_signature`, a protocol reason (PROTOCOL.md §7).
    pub error: String,
    /// For people; may change.
    pub message: String,
}

/// `Retry-After` of a `rate_limited` answer, in seconds. The exchange refills every account at
/// least one command a second (`market.order_commands_per_account_per_s` is at least 1; it refuses
/// to start otherwise), so one second later there is room for the command again.
pub const RATE_LIMITED_RETRY_AFTER_S: u64 = 1;

/// An error a handler returns. Internal details are logged, never sent.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Sent as `Retry-After` (seconds) when the client may try again later.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), retry_after_s: None }
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// An unexpected failure: the detail goes to the log, the client gets a generic message.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(%detail, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error")
    }

    /// A protocol rejection (from parsing or from the exchange), with the reason code as `error`.
    pub fn from_reason(reason: Reason, message: impl Into<String>) -> Self {
        let error = Self::new(status_of(reason), reason.code(), message);
        match reason {
            Reason::RateLimited => Self { retry_after_s: Some(RATE_LIMITED_RETRY_AFTER_S), ..error },
            _ => error,
        }
    }
}

/// The HTTP status that best describes a protocol rejection.
pub fn status_of(reason: Reason) -> StatusCode {
    match reason {
        Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::MalformedJson
        | Reason::NotAnObject
        | Reason::DuplicateKey
        | Reason::FloatNotAllowed
        | Reason::NullNotAllowed
        | Reason::IntegerOutOfRange
        | Reason::TooDeep
        | Reason::UnknownField
        | Reason::MissingField
        | Reason::WrongType
        | Reason::WrongMessageType
        | Reason::MissingSignature
        | Reason::MalformedSignature => StatusCode::BAD_REQUEST,
        Reason::BadSignature | Reason::InvalidPublicKey | Reason::UnknownKey => StatusCode::UNAUTHORIZED,
        Reason::TopicMismatch | Reason::ZoneMismatch => StatusCode::FORBIDDEN,
        Reason::Replayed
        | Reason::Duplicate
        | Reason::PostOnlyWouldCross
        | Reason::FokNotFillable
        | Reason::TooManyOpenOrders
        | Reason::SelfTradePrevented => StatusCode::CONFLICT,
        Reason::UnknownOrder => StatusCode::NOT_FOUND,
        Reason::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Reason::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after_s {
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(ErrorBody { error: self.code.clone(), message: self.message.clone() })
    }
}

/// The HTTP answer for a registry refusal.
impl From<settlement::registry::RegistryError> for ApiError {
    fn from(error: settlement::registry::RegistryError) -> Self {
        use settlement::registry::RegistryError;
        match &error {
            RegistryError::ZoneExists(_)
            | RegistryError::AccountExists(_)
            | RegistryError::DeviceExists(_)
            | RegistryError::ReplacementExists { .. }
            | RegistryError::TariffInThePast { .. } => ApiError::conflict("conflict", error.to_string()),
            RegistryError::UnknownZone(_) => ApiError::not_found("unknown_zone", error.to_string()),
            RegistryError::UnknownAccount(_) => ApiError::not_found("unknown_account", error.to_string()),
            RegistryError::UnknownDevice(_) => ApiError::not_found("unknown_device", error.to_string()),
            RegistryError::Invalid { .. } | RegistryError::InvalidBand { .. } => {
                ApiError::bad_request("invalid_value", error.to_string())
            }
            RegistryError::BandsOverlap { .. } => ApiError::bad_request("overlapping_bands", error.to_string()),
            RegistryError::Db(_) => ApiError::internal(error),
        }
    }
}

impl From<gridex_store::DbError> for ApiError {
    fn from(error: gridex_store::DbError) -> Self {
        ApiError::internal(error)
    }
}

/// Maps actix's query and path extractor failures to our error shape.
pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default()
        .error_handler(|error, _request| ApiError::bad_request("invalid_query", error.to_string()).into())
}

pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default()
        .error_handler(|error, _request| ApiError::bad_request("invalid_path", error.to_string()).into())
}
