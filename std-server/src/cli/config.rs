//! `tether serve --config FILE`: a TOML file with a key for every `serve`
//! flag, named as the flag with `_` for `-` (`--max-sessions` is
//! `max_sessions = 10000`). Flags override environment variables, which
//! override the file, which overrides the defaults. An unknown key is an
//! error naming the nearest valid one.
//!
//! The file's keys become the flags they name, added to the command line
//! for the flags that neither the command line nor the environment set, and
//! clap parses the result: a value in the file is checked exactly as the
//! flag's.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// `serve` arguments that are not configuration keys.
const NOT_KEYS: &[&str] = &["config", "print_config", "help", "version", "verbose"];

/// Keys whose values are never printed.
const SECRETS: &[&str] = &["secret", "forward_secret"];

/// The configuration keys: `serve`'s arguments.
fn keys(serve: &Command) -> Vec<&Arg> {
    serve
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !NOT_KEYS.contains(&a.get_id().as_str()))
        .collect()
}

/// The flags the file adds to the command line: for each key whose flag
/// neither the command line nor the environment set.
pub fn file_args(path: &Path, serve: &Command, given: &ArgMatches) -> Result<FileArgs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = keys(serve);
    let mut out = FileArgs::default();
    for (key, value) in &table {
        let Some(arg) = keys.iter().find(|a| a.get_id().as_str() == key) else {
            return Err(unknown_key(path, key, &keys));
        };
        if matches!(
            given.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        out.keys.push(key.clone());
        let out = &mut out.args;
        let long = arg.get_long().unwrap_or(key);
        let bad = |what: &str| format!("{}: key {key}: expected {what}", path.display());
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => {
                out.push(format!("--{long}").into())
            }
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => return Err(bad("true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    out.push(
                        format!(
                            "--{long}={}",
                            scalar(item).ok_or_else(|| bad("a list of values"))?
                        )
                        .into(),
                    );
                }
            }
            (_, value) => out.push(
                format!(
                    "--{long}={}",
                    scalar(value).ok_or_else(|| bad("one value"))?
                )
                .into(),
            ),
        }
    }
    Ok(out)
}

/// What a configuration file adds to the command line.
#[derive(Debug, Default)]
pub struct FileArgs {
    /// The flags.
    pub args: Vec<OsString>,
    /// The keys they come from.
    pub keys: Vec<String>,
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn unknown_key(path: &Path, key: &str, keys: &[&Arg]) -> String {
    let nearest = keys
        .iter()
        .map(|a| a.get_id().as_str())
        .map(|k| (strsim::jaro_winkler(&key.replace('-', "_"), k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match nearest {
        Some((score, k)) if score > 0.7 => format!(
            "{}: unknown key {key:?}; did you mean {k:?}?",
            path.display()
        ),
        _ => format!(
            "{}: unknown key {key:?} (the keys are `tether serve`'s flags with _ for -)",
            path.display()
        ),
    }
}

/// Each key's effective value(s) as given (flag, environment, file or
/// default): what a reload compares to tell which settings changed.
pub type Values = std::collections::BTreeMap<String, Vec<OsString>>;

/// The effective values of `serve`'s keys in `matches`.
pub fn values(serve: &Command, matches: &ArgMatches) -> Values {
    keys(serve)
        .into_iter()
        .map(|arg| {
            let id = arg.get_id().as_str();
            let raw = matches
                .get_raw(id)
                .map(|v| v.map(|s| s.to_os_string()).collect())
                .unwrap_or_default();
            (id.to_string(), raw)
        })
        .collect()
}

/// The keys whose values differ between `old` and `new`.
pub fn changed<'a>(old: &'a Values, new: &'a Values) -> Vec<&'a str> {
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, _)| k.as_str())
        .collect()
}

/// The effective configuration as TOML, secrets redacted, each line saying
/// where its value came from.
pub fn print(serve: &Command, matches: &ArgMatches, from_file: &[String]) -> String {
    let mut out = String::from("# tether serve: effective configuration\n");
    for arg in keys(serve) {
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) if from_file.iter().any(|k| k == id) => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => {
                let _ = writeln!(out, "# {id} = (not set)");
                continue;
            }
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = |s: &str| -> toml::Value {
            if SECRETS.contains(&id) {
                return toml::Value::String("<redacted>".into());
            }
            if id == "database" {
                return toml::Value::String(tether_server::store::redact_url(s));
            }
            match arg.get_action() {
                ArgAction::SetTrue | ArgAction::SetFalse => {
                    toml::Value::Boolean(s.parse().unwrap_or(false))
                }
                _ => number(s).unwrap_or_else(|| toml::Value::String(s.to_string())),
            }
        };
        let value = if matches!(arg.get_action(), ArgAction::Append) {
            toml::Value::Array(raw.iter().map(|s| value(s)).collect())
        } else {
            match raw.first() {
                Some(s) => value(s),
                None => continue,
            }
        };
        let _ = writeln!(out, "{id} = {value}  # {source}");
    }
    out
}

fn number(s: &str) -> Option<toml::Value> {
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return None;
    }
    s.parse::<i64>()
        .map(toml::Value::Integer)
        .ok()
        .or_else(|| s.parse::<f64>().ok().map(toml::Value::Float))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn serve() -> Command {
        let mut c = crate::cli::Cli::command();
        c.build();
        c.find_subcommand("serve").unwrap().clone()
    }

    #[test]
    fn every_flag_of_serve_is_a_key() {
        let serve = serve();
        let keys: Vec<&str> = keys(&serve).iter().map(|a| a.get_id().as_str()).collect();
        for k in [
            "database",
            "listen",
            "max_sessions",
            "require_perm",
            "forward",
            "forward_builtin",
            "no_last_login",
            "log_format",
        ] {
            assert!(keys.contains(&k), "{k}: {keys:?}");
        }
        assert!(!keys.contains(&"config"));
    }

    #[test]
    fn unknown_keys_name_the_nearest() {
        let serve = serve();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "max_sesions = 3\n").unwrap();
        let m = serve.clone().get_matches_from(["serve"]);
        let e = file_args(&path, &serve, &m).map(|a| a.args).unwrap_err();
        assert!(
            e.ends_with("unknown key \"max_sesions\"; did you mean \"max_sessions\"?"),
            "{e}"
        );
        std::fs::write(&path, "max-sessions = 3\n").unwrap();
        let e = file_args(&path, &serve, &m).map(|a| a.args).unwrap_err();
        assert!(e.ends_with("did you mean \"max_sessions\"?"), "{e}");
        std::fs::write(&path, "no_last_login = 3\n").unwrap();
        let e = file_args(&path, &serve, &m).map(|a| a.args).unwrap_err();
        assert!(
            e.ends_with("key no_last_login: expected true or false"),
            "{e}"
        );
    }
}
