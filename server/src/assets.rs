//! Static pages: the example app at `/` and GraphiQL at `/graphiql`.

use async_graphql::http::GraphiQLSource;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use crate::app::AppState;

/// Routes for the static pages.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/graphiql", get(graphiql))
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/ws")
            .title("Verdict GraphiQL")
            .finish(),
    )
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

const INDEX: &str = r#"<!doctype html><meta charset="utf-8"><title>Verdict</title>
<style>body{font:16px system-ui;max-width:40rem;margin:3rem auto;padding:0 1rem}</style>
<h1>Verdict</h1>
<p>Real-time code execution over GraphQL. Open <a href="/graphiql">GraphiQL</a> to submit code and
watch its events live.</p>
<p>The example web app is not built into this binary. Build it with
<code>cd frontend-example &amp;&amp; npm ci &amp;&amp; npm run build</code> and rebuild the server.</p>"#;
