//! The one-shot subcommands: `token`, `languages`, `doctor` and `problems import`.

use verdict_sandbox::{Sandbox, SandboxConfig};

use crate::cli::{CatalogueArgs, ImportArgs, TokenArgs};
use crate::serve::{catalogue, input_policy, problem_store};
use crate::BoxError;

/// `verdict token`: an end-user JWT signed with the HS256 secret.
pub(crate) fn token(args: &TokenArgs) -> Result<(), BoxError> {
    let secret = verdict_server::jwt::read_secret(&args.jwt_hs256_secret_file)?;
    let token = verdict_server::jwt::sign_hs256(
        &secret,
        &args.sub,
        args.ttl,
        args.jwt_issuer.as_deref(),
        args.jwt_audience.as_deref(),
    )?;
    println!("{token}");
    Ok(())
}

/// `verdict languages`: the catalogue, with each toolchain checked.
pub(crate) async fn languages(args: &CatalogueArgs) -> Result<(), BoxError> {
    let catalogue = catalogue(args).await?;
    let mut missing = 0;
    for lang in catalogue.languages() {
        let version = lang.detected_version.clone().unwrap_or_else(|| {
            missing += 1;
            // What to install, and why the toolchain counts as missing.
            let why = lang.missing.as_deref().unwrap_or("not found");
            match lang.package.as_deref() {
                Some(package) => format!("MISSING (install {package}: {why})"),
                None => format!("MISSING ({why})"),
            }
        });
        println!(
            "{:<12} {:<24} {:<8} {}",
            lang.id,
            lang.name,
            if lang.compiled() { "compiled" } else { "" },
            version
        );
    }
    if missing > 0 {
        return Err(format!("{missing} toolchain(s) missing").into());
    }
    Ok(())
}

/// `verdict doctor`: which sandbox layers are active on this machine.
pub(crate) async fn doctor() -> Result<(), BoxError> {
    // Looks only: a diagnosis does not remount cgroup2.
    let config = SandboxConfig {
        favor_dynmods: false,
        ..SandboxConfig::default()
    };
    let sandbox = tokio::task::spawn_blocking(|| Sandbox::new(config)).await??;
    for layer in sandbox.report() {
        println!(
            "{:<20} {:<8} {}",
            layer.name,
            if layer.active { "active" } else { "INACTIVE" },
            layer.detail
        );
    }
    Ok(())
}

/// `verdict problems import`: one Kattis package stored in Redis as a new version.
pub(crate) async fn import(args: &ImportArgs) -> Result<(), BoxError> {
    let redis_url = args.redis.required().await?;
    let problems = problem_store(Some(&redis_url), &args.broker).await?;
    let catalogue = catalogue(&args.catalogue).await?;
    let policy = input_policy(&args.limits, &args.broker)?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| verdict_server::package::default_id(&args.path));
    let stored =
        verdict_server::package::import_path(&args.path, &id, &problems, &policy, &catalogue)
            .await
            .map_err(|e| format!("{}: {e}", args.path.display()))?;
    println!(
        "{} version {}: {} tests, {} groups, max score {}",
        stored.id,
        stored.version,
        stored.tests.len(),
        stored.groups.len(),
        stored.max_score()
    );
    Ok(())
}
