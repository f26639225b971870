//! The web pages a node serves on its client port, embedded in the binary (nothing from a
//! CDN, nothing read from disk at run time):
//!
//! - `GET /`: a landing page that links the dashboard, the docs and the demo;
//! - `GET /dashboard`: the live dashboard (members, per-node numbers, rates, top topics, a
//!   topic inspector), a static page that reads `GET /v1/stats?scope=cluster`, `/v1/topics` and
//!   `/v1/history` and tails topics over `/ws` with the JS client;
//! - `GET /dashboard/…`: its script and style, and the JS client (`murmur-client`, its ES
//!   module build copied into `assets/murmur-client/` by `clients/js/scripts/embed.mjs`).
//!
//! The pages hold no data: everything they show comes from the API, authorised per request
//! (the page asks for a token when the node wants one), so serving them needs no token.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file: its path under `/dashboard/` (or the page it is) and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("assets/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `assets/` (a unit test checks that none is left out).
static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("dashboard.html", HTML),
    asset!("dashboard.js", JS),
    asset!("dashboard.css", CSS),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("murmur-client/backoff.js", JS),
    asset!("murmur-client/client.js", JS),
    asset!("murmur-client/cursor.js", JS),
    asset!("murmur-client/emitter.js", JS),
    asset!("murmur-client/errors.js", JS),
    asset!("murmur-client/index.js", JS),
    asset!("murmur-client/runs.js", JS),
    asset!("murmur-client/subscription.js", JS),
    asset!("murmur-client/types.js", JS),
];

/// Scripts, styles and connections only from this node: a page that cannot load code from
/// elsewhere cannot be made to run it. `connect-src 'self'` covers `ws://` to the same host.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The pages' routes, to be merged into the client port's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { serve("index.html") }))
        .route("/dashboard", get(|| async { serve("dashboard.html") }))
        .route("/dashboard/", get(|| async { serve("dashboard.html") }))
        .route(
            "/dashboard/{*file}",
            get(|Path(file): Path<String>| async move { serve(&file) }),
        )
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

fn serve(path: &str) -> Response {
    let Some(asset) = find(path) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Small files, and a new binary may bring new ones: revalidate rather than cache stale.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("readable assets directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                files_under(&path, base, out);
            } else {
                let relative = path.strip_prefix(base).expect("under the base");
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    /// A file added to `assets/` (a new module of the JS client, say) but not to `ASSETS`
    /// would be a 404 in the browser: the list and the directory must agree.
    #[test]
    fn every_file_under_assets_is_embedded() {
        let base =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/frontdoor/dashboard/assets");
        let mut on_disk = Vec::new();
        files_under(&base, &base, &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn unknown_files_and_paths_that_climb_out_are_not_found() {
        assert_eq!(serve("nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("../mod.rs").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("dashboard.js").status(), StatusCode::OK);
        assert_eq!(
            serve("murmur-client/index.js").headers()[header::CONTENT_TYPE],
            JS
        );
    }
}
