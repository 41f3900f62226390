//! Static pages and files built into the binary (ops page, dev demo).

use actix_web::http::header::{self, HeaderValue};
use actix_web::HttpResponse;

/// A built-in file: revalidated on each load, never type-sniffed.
pub fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// A built-in HTML page under a strict Content-Security-Policy, never framed.
pub fn html_page(body: &'static str, csp: &str) -> HttpResponse {
    let mut res = asset("text/html; charset=utf-8", body);
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(csp).unwrap_or(HeaderValue::from_static("default-src 'none'")),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}
