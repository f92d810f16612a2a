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

/// The effective configuration as TOML, each line saying where its value
/// came from; secrets redacted in comment lines, so that the output is a
/// configuration file that gives the same settings but the secrets.
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
        if SECRETS.contains(&id) {
            // A comment: a file made from this output does not set the
            // secret to the text `<redacted>`.
            let _ = writeln!(out, "# {id} = \"<redacted>\"  # {source}");
            continue;
        }
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = |s: &str| -> toml::Value {
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
        // Every argument of `serve` is a key, but the few that say how to
        // read the configuration rather than what it is: a flag added
        // without a key (no long name, or listed in NOT_KEYS by mistake)
        // fails here.
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if NOT_KEYS.contains(&id) {
                continue;
            }
            assert!(
                keys.contains(&id),
                "`tether serve` argument {id} has no configuration key"
            );
        }
        assert_eq!(
            NOT_KEYS,
            ["config", "print_config", "help", "version", "verbose"],
            "a new exception needs a reason"
        );
        for k in [
            "database",
            "listen",
            "max_sessions",
            "require_perm",
            "forward",
            "forward_builtin",
            "no_last_login",
            "log_format",
            // Protocol v2.
            "server_key_file",
            "require_encryption",
        ] {
            assert!(keys.contains(&k), "{k}: {keys:?}");
        }
        assert!(!keys.contains(&"config"));
    }

    #[test]
    fn print_config_has_a_line_for_every_key_and_reads_back() {
        let serve = serve();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "require_encryption = true\nserver_key_file = \"/var/lib/tether/key\"\n\
             secret = \"0123456789abcdef-secret\"\n",
        )
        .unwrap();
        let given = serve.clone().get_matches_from(["serve"]);
        let file = file_args(&path, &serve, &given).unwrap();
        let mut argv: Vec<OsString> = vec!["serve".into()];
        argv.extend(file.args);
        let matches = serve.clone().get_matches_from(argv);
        let printed = print(&serve, &matches, &file.keys);
        for key in keys(&serve) {
            let id = key.get_id().as_str();
            assert!(
                printed
                    .lines()
                    .any(|l| l.starts_with(&format!("{id} = "))
                        || l.starts_with(&format!("# {id} = "))),
                "{id} not in --print-config:\n{printed}"
            );
        }
        for line in [
            "require_encryption = true  # file",
            "server_key_file = \"/var/lib/tether/key\"  # file",
            "# secret = \"<redacted>\"  # file",
        ] {
            assert!(printed.lines().any(|l| l == line), "{line}:\n{printed}");
        }
        assert!(!printed.contains("0123456789abcdef"));
        // What it prints is a configuration file that gives the same.
        std::fs::write(&path, &printed).unwrap();
        let again = file_args(&path, &serve, &given).unwrap();
        let mut argv: Vec<OsString> = vec!["serve".into()];
        argv.extend(again.args);
        let matches = serve.clone().get_matches_from(argv);
        assert!(matches.get_flag("require_encryption"));
        assert_eq!(
            matches.get_one::<std::path::PathBuf>("server_key_file"),
            Some(&"/var/lib/tether/key".into())
        );
        assert_eq!(matches.value_source("secret"), None, "never `<redacted>`");
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
