//! Embeds the example app and the self-hosted GraphiQL (`frontend-example/dist`) into the
//! server, building them first when needed, so that a plain `cargo build` of a fresh clone
//! serves both with no manual npm step and nothing from a CDN.
//!
//! - `dist/` missing, or built from other sources than today's (a hash of the inputs is
//!   kept in `dist/.verdict-build`): runs `npm ci` (when `node_modules` is missing or older
//!   than the lockfile) and `npm run build` in `frontend-example/`. Without Node.js the
//!   build fails with a message saying what to install; it never falls back to a CDN.
//! - It generates `$OUT_DIR/frontend_assets.rs`: `(path, content type, bytes)` with
//!   `include_bytes!`, so no crate is needed.
//!
//! Cargo reruns this script when a source of the app changes or the stamp disappears
//! (`dist/` deleted, or rebuilt by hand). The stamp's mtime is set to that of the newest
//! input, never "now": a file written while the script runs would otherwise look changed
//! to cargo and the next cargo command (CI runs clippy, then build) would rerun it and
//! compile the server a second time.
//!
//! `VERDICT_FRONTEND_DIST=/dir` embeds a directory built elsewhere, as is;
//! `VERDICT_FRONTEND_DIST=` (empty) builds without the app (`/` and `/graphiql` then say
//! so: still no CDN).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;
use std::{env, fs};

/// What the app is built from, relative to `frontend-example/`.
const INPUTS: &[&str] = &[
    "src",
    "index.html",
    "graphiql.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
];
const STAMP: &str = ".verdict-build";
/// What vite 8 requires (`^20.19.0 || >=22.12.0`).
const NODE_NEEDED: &str = "Node.js 20.19+ or 22.12+ with npm";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=VERDICT_FRONTEND_DIST");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let example = manifest.join("..").join("frontend-example");
    let dist = match env::var_os("VERDICT_FRONTEND_DIST") {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(PathBuf::from(d)),
        None => Some(ensure_built(&example)),
    };

    let mut files = Vec::new();
    if let Some(dist) = &dist {
        if !dist.join("index.html").is_file() {
            panic!(
                "{} has no index.html: build the app there, or unset VERDICT_FRONTEND_DIST",
                dist.display()
            );
        }
        collect(dist, dist, &mut files);
        files.retain(|(url, _)| url != &format!("/{STAMP}"));
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

/// Builds `example/dist` unless it was built from the current inputs; returns it.
fn ensure_built(example: &Path) -> PathBuf {
    let dist = example.join("dist");
    let stamp = dist.join(STAMP);
    for input in INPUTS {
        println!("cargo:rerun-if-changed={}", example.join(input).display());
    }
    println!("cargo:rerun-if-changed={}", stamp.display());

    let (hash, newest) = inputs(example);
    let want = format!("{hash:016x}\n");
    let built = dist.join("index.html").is_file();
    match fs::read_to_string(&stamp) {
        Ok(have) if built && have == want => return dist,
        // Built by hand (`npm run build` removes the stamp): trust it, as before.
        Err(_) if built && env::var_os("CI").is_none() => {
            write_stamp(&stamp, &want, newest);
            return dist;
        }
        _ => {}
    }

    let npm = match node_and_npm() {
        Ok(npm) => npm,
        Err(why) if built => {
            println!(
                "cargo:warning=frontend-example/dist may be stale ({why}); embedding it as it is"
            );
            return dist;
        }
        Err(why) => panic!(
            "\n\nThe server embeds the example app and GraphiQL, built from frontend-example/ \
             with Node.js, and {why}.\nInstall {NODE_NEEDED} (Debian/Ubuntu: NodeSource's \
             `nodejs` package, or `nvm install 22`), then build again.\nTo build without the \
             app instead: VERDICT_FRONTEND_DIST= cargo build\n\n"
        ),
    };
    let modules = example.join("node_modules").join(".package-lock.json");
    let lock_mtime = mtime(&example.join("package-lock.json"));
    if mtime(&modules).is_none_or(|m| lock_mtime.is_some_and(|l| l > m)) {
        run(&npm, &["ci", "--no-audit", "--no-fund"], example);
    }
    run(&npm, &["run", "build"], example);
    if !dist.join("index.html").is_file() {
        panic!("`npm run build` in frontend-example/ did not write dist/index.html");
    }
    write_stamp(&stamp, &want, newest);
    dist
}

/// A hash of every input file (path and bytes) and the newest mtime among them.
fn inputs(example: &Path) -> (u64, Option<SystemTime>) {
    let mut files = Vec::new();
    for input in INPUTS {
        let path = example.join(input);
        if path.is_dir() {
            let mut under = Vec::new();
            collect(&path, &path, &mut under);
            files.extend(under.into_iter().map(|(u, p)| (format!("{input}{u}"), p)));
        } else if path.is_file() {
            files.push(((*input).to_owned(), path));
        }
    }
    files.sort();
    // SipHash with fixed keys: stable across runs of the same toolchain, which is all a
    // stamp needs (a new toolchain at worst rebuilds the app once).
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut newest = None;
    for (name, path) in &files {
        name.hash(&mut hasher);
        fs::read(path).unwrap_or_default().hash(&mut hasher);
        newest = newest.max(mtime(path));
    }
    (hasher.finish(), newest)
}

fn write_stamp(stamp: &Path, content: &str, mtime: Option<SystemTime>) {
    if fs::write(stamp, content).is_err() {
        return;
    }
    if let (Some(t), Ok(file)) = (mtime, fs::File::options().write(true).open(stamp)) {
        let _ = file.set_modified(t);
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `npm`, when `node` is on PATH and new enough; else why not.
fn node_and_npm() -> Result<String, String> {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|_| "`node` is not on PATH".to_owned())?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let ok = (major == 20 && minor >= 19) || (major == 22 && minor >= 12) || major > 22;
    if !ok {
        return Err(format!("node is {version}, too old"));
    }
    match Command::new("npm").arg("--version").output() {
        Ok(o) if o.status.success() => Ok("npm".to_owned()),
        _ => Err("`npm` is not on PATH".to_owned()),
    }
}

/// Runs `npm ARGS` in `dir`; its output goes to stderr (cargo shows it on failure).
fn run(npm: &str, args: &[&str], dir: &Path) {
    eprintln!("running `{npm} {}` in {}", args.join(" "), dir.display());
    let output = Command::new(npm)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {npm}: {e}"));
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        let tail: String = String::from_utf8_lossy(&output.stderr)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "`{npm} {}` in frontend-example/ failed ({}):\n{tail}",
            args.join(" "),
            output.status
        );
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
