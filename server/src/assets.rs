//! Static pages: the example app at `/` and GraphiQL at `/graphiql`.
//!
//! `build.rs` builds `frontend-example/` (when `dist/` is missing or stale, and Node.js is
//! present; without it the build fails saying what to install) and embeds `dist/`: `/` is
//! the example app, `/graphiql` a GraphiQL built from the npm `graphiql` package with a
//! graphql-ws fetcher, and `/assets/*` their scripts and styles. Nothing is loaded from a
//! CDN, ever. Only a binary built with `VERDICT_FRONTEND_DIST=` (empty: without the app,
//! on purpose) serves short pages saying so instead.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::AppState;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/frontend_assets.rs"));
}

/// An embedded file by URL path (`/index.html`, `/assets/main-1234.js`).
fn file(path: &str) -> Option<(&'static str, &'static [u8])> {
    embedded::FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, ct, bytes)| (*ct, *bytes))
}

/// True when the example app was built into this binary.
pub(crate) fn embedded() -> bool {
    file("/index.html").is_some()
}

/// Routes for the static pages.
pub(crate) fn router() -> Router<AppState> {
    if embedded() {
        tracing::debug!(
            files = embedded::FILES.len(),
            "serving the embedded example app at / and a self-hosted GraphiQL at /graphiql"
        );
    } else {
        tracing::info!(
            "built with VERDICT_FRONTEND_DIST= (without the example app): / and /graphiql \
             show placeholders"
        );
    }
    Router::new()
        .route("/", get(index))
        .route("/graphiql", get(graphiql))
        .route("/assets/{*path}", get(asset))
}

fn page(path: &str) -> Option<Response> {
    let (ct, bytes) = file(path)?;
    Some(
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            bytes,
        )
            .into_response(),
    )
}

async fn asset(Path(path): Path<String>) -> Response {
    match file(&format!("/assets/{path}")) {
        // Vite puts a content hash in every file name under assets/.
        Some((ct, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn graphiql() -> Response {
    page("/graphiql.html").unwrap_or_else(|| Html(GRAPHIQL).into_response())
}

async fn index() -> Response {
    page("/index.html").unwrap_or_else(|| Html(INDEX).into_response())
}

const INDEX: &str = r#"<!doctype html><meta charset="utf-8"><title>Verdict</title>
<style>body{font:16px system-ui;max-width:40rem;margin:3rem auto;padding:0 1rem}</style>
<h1>Verdict</h1>
<p>Real-time code execution over GraphQL at <code>/graphql</code> (HTTP and graphql-ws).</p>
<p>This binary was built with <code>VERDICT_FRONTEND_DIST=</code>, without the example app
and GraphiQL. A plain <code>cargo build</code> (with Node.js installed) embeds both.</p>"#;

const GRAPHIQL: &str = r#"<!doctype html><meta charset="utf-8"><title>Verdict GraphiQL</title>
<style>body{font:16px system-ui;max-width:40rem;margin:3rem auto;padding:0 1rem}</style>
<h1>GraphiQL is not built into this binary</h1>
<p>It was built with <code>VERDICT_FRONTEND_DIST=</code>. A plain <code>cargo build</code>
(with Node.js installed) embeds a self-hosted GraphiQL; nothing is loaded from a CDN.</p>"#;

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> (StatusCode, String) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Every `/assets/...` URL that `html` refers to.
    fn asset_urls(html: &str) -> Vec<String> {
        html.split('"')
            .filter(|s| s.starts_with("/assets/"))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn index_is_the_app_or_says_how_to_build_it() {
        let (status, html) = body(index().await).await;
        assert_eq!(status, StatusCode::OK);
        if embedded() {
            assert!(html.contains("id=\"timeline\""), "{html}");
        } else {
            assert!(html.contains("VERDICT_FRONTEND_DIST="), "{html}");
        }
    }

    #[test]
    fn the_app_is_embedded_unless_opted_out() {
        // build.rs builds frontend-example when dist/ is missing: a plain build embeds it.
        if option_env!("VERDICT_FRONTEND_DIST") != Some("") {
            assert!(embedded(), "a plain build must embed frontend-example/dist");
            assert!(file("/graphiql.html").is_some());
        }
    }

    #[tokio::test]
    async fn graphiql_is_self_hosted_when_built() {
        let (status, html) = body(graphiql().await).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("GraphiQL"));
        // Never a CDN, built or not.
        for cdn in [
            "unpkg", "jsdelivr", "cdnjs", "esm.sh", "https://", "http://",
        ] {
            assert!(!html.contains(cdn), "{cdn} in {html}");
        }
        if embedded() {
            assert!(!asset_urls(&html).is_empty(), "{html}");
        }
    }

    #[tokio::test]
    async fn every_referenced_asset_is_served() {
        for page in ["/index.html", "/graphiql.html"] {
            let Some((_, bytes)) = file(page) else {
                continue;
            };
            for url in asset_urls(&String::from_utf8_lossy(bytes)) {
                let path = url.trim_start_matches("/assets/").to_owned();
                let (status, _) = body(asset(Path(path)).await).await;
                assert_eq!(status, StatusCode::OK, "{url} from {page}");
            }
        }
        let (status, _) = body(asset(Path("nope.js".to_owned())).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
