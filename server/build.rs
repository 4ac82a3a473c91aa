//! Embeds the built example app (`frontend-example/dist`, from `npm run build`) into the
//! server when it is present. It generates `$OUT_DIR/frontend_assets.rs`: a list of
//! `(path, content type, bytes)` with `include_bytes!`, so no crate is needed and
//! `cargo build` never runs Node. When the directory is absent the list is empty and the
//! server falls back to a short page (and async-graphql's CDN GraphiQL).
//!
//! `VERDICT_FRONTEND_DIST` points at another directory; set it to an empty string to
//! build without the app even when it is built.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=VERDICT_FRONTEND_DIST");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let example = manifest.join("..").join("frontend-example");
    let dist = match env::var_os("VERDICT_FRONTEND_DIST") {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(PathBuf::from(d)),
        None => Some(example.join("dist")),
    };

    let mut files = Vec::new();
    match dist {
        Some(dist) if dist.join("index.html").is_file() => {
            // A directory is scanned as a whole by cargo: any rebuild of the app re-embeds it.
            println!("cargo:rerun-if-changed={}", dist.display());
            collect(&dist, &dist, &mut files);
        }
        _ => {
            // Not built: watch the example's folder so that a later `npm run build` (which
            // creates dist/ in it) is picked up by the next cargo build. A missing path
            // would make cargo rerun this script on every build.
            if example.is_dir() {
                println!("cargo:rerun-if-changed={}", example.display());
            }
        }
    }
    files.sort();

    let mut out =
        String::from("/// Files of the built example app: (URL path, content type, bytes).\n");
    out.push_str("pub(crate) static FILES: &[(&str, &str, &[u8])] = &[\n");
    for (url, path) in &files {
        let _ = writeln!(
            out,
            "    ({url:?}, {:?}, include_bytes!({:?})),",
            content_type(path),
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(e) = fs::write(out_dir.join("frontend_assets.rs"), out) {
        panic!("cannot write frontend_assets.rs: {e}");
    }
}

/// Every regular file under `dir`, as (URL path from `root`, absolute path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect(root, &path, files);
        } else if kind.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let url: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let abs = fs::canonicalize(&path).unwrap_or(path);
            files.push((format!("/{}", url.join("/")), abs));
        }
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
