//! Static pages: the example app at `/` and GraphiQL at `/graphiql`.
//!
//! When `frontend-example/dist` existed at compile time (`npm run build` in
//! `frontend-example/`), `build.rs` embedded it: `/` is the example app, `/graphiql` a
//! GraphiQL built from the npm `graphiql` package with a graphql-ws fetcher, and
//! `/assets/*` their scripts and styles. Nothing is loaded from a CDN. Otherwise `/` is a
//! short page saying how to build the app, and `/graphiql` is async-graphql's page, which
//! loads GraphiQL from a CDN (a log line says so at start-up).

use async_graphql::http::GraphiQLSource;
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
            "example app not built into this binary (run `npm ci && npm run build` in \
             frontend-example/, then rebuild): / shows a placeholder and /graphiql loads \
             GraphiQL from a CDN"
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
    if let Some(page) = page("/graphiql.html") {
        return page;
    }
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/ws")
            .title("Verdict GraphiQL")
            .finish(),
    )
    .into_response()
}

async fn index() -> Response {
    page("/index.html").unwrap_or_else(|| Html(INDEX).into_response())
}

const INDEX: &str = r#"<!doctype html><meta charset="utf-8"><title>Verdict</title>
<style>body{font:16px system-ui;max-width:40rem;margin:3rem auto;padding:0 1rem}</style>
<h1>Verdict</h1>
<p>Real-time code execution over GraphQL. Open <a href="/graphiql">GraphiQL</a> to submit code and
watch its events live.</p>
<p>The example web app is not built into this binary. Build it with
<code>cd frontend-example &amp;&amp; npm ci &amp;&amp; npm run build</code> and rebuild the server.</p>"#;

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
            assert!(html.contains("npm run build"), "{html}");
        }
    }

    #[tokio::test]
    async fn graphiql_is_self_hosted_when_built() {
        let (status, html) = body(graphiql().await).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("GraphiQL"));
        if embedded() {
            for cdn in ["unpkg", "jsdelivr", "cdnjs", "esm.sh", "https://"] {
                assert!(!html.contains(cdn), "{cdn} in {html}");
            }
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
