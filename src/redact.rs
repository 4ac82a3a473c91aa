//! Keeping the Redis password out of logs, error messages and the command line.

use clap::parser::ValueSource;
use clap::ArgMatches;

/// `url` with its password (and any `...password=` query parameter) replaced by `***`,
/// for log lines and error messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL we understand: show nothing of it rather than a secret.
        return "<redacted>".into();
    };
    // The last `@` ends the user info even when a password holds an unescaped `/`, `?`
    // or `@`: better to hide too much than to print part of a password.
    let (userinfo, after) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => (Some(userinfo), after),
        None => (None, rest),
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (host, tail) = after.split_at(end);
    let authority = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => host.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                        format!("{key}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// True when `url` carries a secret that [`redact`] hides.
pub(crate) fn has_secret(url: &str) -> bool {
    redact(url) != url
}

/// Warns when a Redis URL with a password was given as `--redis-url` on the command line
/// (rather than from the environment or a file), where any local user can read it.
pub(crate) fn warn_on_secret_in_argv(matches: &ArgMatches) {
    let mut matches = matches;
    while let Some((_, sub)) = matches.subcommand() {
        matches = sub;
    }
    let Ok(Some(url)) = matches.try_get_one::<String>("redis_url") else {
        return;
    };
    if matches.value_source("redis_url") == Some(ValueSource::CommandLine) && has_secret(url) {
        tracing::warn!(
            url = %redact(url),
            "the Redis password is on the command line, readable by every local user in \
             /proc/PID/cmdline: set VERDICT_REDIS_URL or use --redis-url-file instead"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_and_only_them() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("rediss://app:s3cret@h:6380", "rediss://app:***@h:6380"),
            ("redis://app@h", "redis://app@h"),
            ("redis://:pa/ss@w?rd@h:1", "redis://:***@h:1"),
            (
                "redis-sentinel://h:26379?sentinelPassword=s3cret&node=x",
                "redis-sentinel://h:26379?sentinelPassword=***&node=x",
            ),
            ("s3cret", "<redacted>"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("s3cret"), "{url}");
            assert_eq!(has_secret(url), url != shown, "{url}");
        }
    }
}
