//! The HTTP side of the endpoint: response bodies (whole or streamed), docker's JSON errors,
//! query strings and request bodies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::engine::{EngineError, ErrorKind};

/// The largest JSON request body accepted (a container config is a few KiB).
pub const MAX_JSON_BODY: usize = 4 << 20;

/// A response body: nothing, a whole buffer, or chunks as a task produces them. When the
/// client goes away hyper drops the body, and with it the receiver: the producing task sees
/// its sender closed and ends.
#[derive(Debug)]
pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Empty | Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Empty | Body::Full(None) => http_body::SizeHint::with_exact(0),
            Body::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Body::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

/// A response of a streamed body: the sender to produce it with.
pub fn streaming(status: StatusCode, content_type: &str) -> (Response<Body>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(64);
    let resp = Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Body::Stream(rx))
        .unwrap_or_else(|_| Response::new(Body::Empty));
    (resp, tx)
}

/// An API failure: docker's status code and `{"message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn not_implemented(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_IMPLEMENTED, message)
    }

    /// The response docker sends for it (304 has no body).
    pub fn response(&self) -> Response<Body> {
        if self.status == StatusCode::NOT_MODIFIED {
            return empty(StatusCode::NOT_MODIFIED);
        }
        json(self.status, &serde_json::json!({ "message": self.message }))
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotModified => StatusCode::NOT_MODIFIED,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

pub type ApiResult = Result<Response<Body>, ApiError>;

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Some(Bytes::from(body))))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// A response without a body.
pub fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::Empty)
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// A request's query parameters (the last value of a repeated key wins, as Go's `Get`).
#[derive(Debug, Clone, Default)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    pub fn parse<B>(req: &Request<B>) -> Query {
        Query(
            req.uri()
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// A parameter, or `""`.
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }

    /// A parameter if present.
    pub fn opt(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean as docker reads them (`1`, `true`, `True`; anything else but `0`/`false`
    /// and empty is a bad request).
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            "" | "0" | "false" | "False" | "FALSE" => Ok(false),
            "1" | "true" | "True" | "TRUE" => Ok(true),
            other => Err(ApiError::bad_request(format!(
                "invalid value for {key}: {other:?}"
            ))),
        }
    }

    /// An integer parameter, if present.
    pub fn int<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        match self.opt(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}"))),
        }
    }

    /// docker's `filters` parameter: a JSON map of a key to values, either
    /// `{"k":["v"]}` or the old `{"k":{"v":true}}`.
    pub fn filters(&self) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
        let raw = self.get("filters");
        if raw.is_empty() {
            return Ok(BTreeMap::new());
        }
        let v: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filters: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ApiError::bad_request("invalid filters: not an object"))?;
        let mut out = BTreeMap::new();
        for (k, vals) in obj {
            let list: Vec<String> = match vals {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
                serde_json::Value::Object(m) => m
                    .iter()
                    .filter(|(_, on)| on.as_bool().unwrap_or(false))
                    .map(|(s, _)| s.clone())
                    .collect(),
                _ => return Err(ApiError::bad_request(format!("invalid filter {k:?}"))),
            };
            out.insert(k.clone(), list);
        }
        Ok(out)
    }
}

/// docker's "strslice": absent, `null`, a string or a list of strings.
pub fn strslice<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum S {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <Option<S> as serde::Deserialize>::deserialize(d)? {
        None => None,
        Some(S::One(s)) => Some(vec![s]),
        Some(S::Many(v)) => Some(v),
    })
}

/// `null` as the type's default (Go clients send `null` for empty lists and maps).
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Reads and parses a JSON request body (an empty body is `T::default()` where docker
/// allows none).
pub async fn read_json<T: serde::de::DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = read_body(req, MAX_JSON_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {limit} bytes"),
                )
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })
}

/// docker's 8-byte stream header (`[stream, 0, 0, 0, size BE]`) and the payload: the
/// framing of attach, exec and logs streams of sessions without a terminal.
pub fn frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(8 + payload.len());
    b.extend_from_slice(&[stream, 0, 0, 0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    Bytes::from(b)
}

/// RFC 3339 with nanoseconds, as docker prints times; Go's zero time for 0.
pub fn rfc3339(unix_secs: i64) -> String {
    if unix_secs <= 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_stream_and_length() {
        assert_eq!(
            frame(2, b"err\n").as_ref(),
            &[2, 0, 0, 0, 0, 0, 0, 4, b'e', b'r', b'r', b'\n']
        );
    }

    #[test]
    fn queries_flags_and_filters() {
        let req = Request::builder()
            .uri("/containers/json?all=1&limit=3&filters=%7B%22status%22%3A%5B%22exited%22%5D%2C%22label%22%3A%7B%22a%3Db%22%3Atrue%7D%7D")
            .body(())
            .unwrap();
        let q = Query::parse(&req);
        assert!(q.flag("all").unwrap());
        assert!(!q.flag("size").unwrap());
        assert_eq!(q.int::<usize>("limit").unwrap(), Some(3));
        let f = q.filters().unwrap();
        assert_eq!(f["status"], vec!["exited"]);
        assert_eq!(f["label"], vec!["a=b"]);
        let bad = Request::builder().uri("/x?all=yes").body(()).unwrap();
        assert!(Query::parse(&bad).flag("all").is_err());
    }

    #[test]
    fn times_as_docker_prints_them() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20.000000000Z");
    }
}
